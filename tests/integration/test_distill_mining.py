"""`reranker distill` mines its candidates from the project's hybrid first stage in a real
Elasticsearch: the index it mines must hold the corpus embedded by the query embedder."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from elasticsearch import Elasticsearch

from reranker.corpus import CorpusSource
from reranker.es import mappings
from reranker.es.indexing import index_corpus
from reranker.retrieval.embedder import Embedder
from tests.integration.conftest import delete_indices_named_after, write_mini_scifact

pytestmark = pytest.mark.integration
pytest.importorskip("torch")

TEACHER = Path(__file__).resolve().parents[2] / "models" / "reranker-minilm-l6"


class ForeignEmbedder:
    """The query embedder's vectors under another embedder's name: an index built by another
    model, as far as the index's ``_meta`` can tell."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def model_id(self) -> str:
        return "someone-else/another-embedder"

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        return self.inner.encode(texts, batch_size=batch_size, progress=progress)


def test_distill_rebuilds_an_index_of_another_embedders_vectors_before_mining(
    es_client: Elasticsearch, embedder: Embedder, tmp_path: Path
) -> None:
    from reranker.training.distill import distill
    from reranker.training.distill_config import DistillConfig

    dataset = write_mini_scifact(tmp_path / f"distillmini{uuid.uuid4().hex[:8]}", "train", 12, 60)
    alias = f"beir-{dataset.name}"
    try:
        index_corpus(es_client, CorpusSource.open(dataset), alias, ForeignEmbedder(embedder))
        foreign = mappings.indices_behind_alias(es_client, alias)
        assert mappings.index_meta(es_client, foreign[0])["embedder"] != embedder.model_id

        config = DistillConfig(
            teacher=TEACHER,
            datasets=[dataset],
            output_dir=tmp_path / "student",
            layers=1,
            window=20,
            top=5,
            sampled=5,
            max_steps=1,
            eval_every=1,
        )
        info = distill(config, es_client, embedder, progress=False)

        rebuilt = mappings.indices_behind_alias(es_client, alias)
        assert rebuilt != foreign
        assert mappings.index_meta(es_client, rebuilt[0])["embedder"] == embedder.model_id
        assert info["distillation"]["data"][dataset.name]["train_queries"] > 0
    finally:
        delete_indices_named_after(es_client, alias)
