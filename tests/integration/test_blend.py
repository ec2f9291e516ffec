"""The blend in a real query: Elasticsearch, the shipped cross-encoder, real signal fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from reranker.blend.blends import parse_weights
from reranker.blend.features import feature_names_for
from reranker.blend.signals import SCIFACT
from reranker.corpus import CorpusSource
from reranker.es.indexing import LoadOptions, index_corpus
from reranker.rerank.pipeline import Pipeline
from reranker.rerank.scorer import Scorer
from reranker.retrieval.embedder import Embedder
from reranker.retrieval.first_stage import FirstStage
from tests.integration.conftest import write_jsonl

pytestmark = pytest.mark.integration

DOCS: list[dict[str, Any]] = [
    {
        "_id": "direct",
        "title": "Vitamin D supplementation and fracture risk",
        "text": "Vitamin D supplementation reduced hip fracture risk in older adults.",
        "signals": {"citations": 3, "year": 2001},
    },
    {
        "_id": "related",
        "title": "Calcium, vitamin D and bone health",
        "text": "Calcium intake with vitamin D was associated with bone density in adults.",
        "signals": {"citations": 12, "year": 2003},
    },
    {
        "_id": "landmark",
        "title": "Vitamin D status in a large cohort",
        "text": "Serum vitamin D was measured in a cohort of adults.",
        "signals": {"citations": 25000, "year": 2002},
    },
]


@pytest.fixture(scope="module")
def shipped_scorer() -> Scorer:
    # the plain cross-encoder: these blends read its relevance alone (no first-stage features)
    return Scorer(
        Path(__file__).resolve().parents[2] / "models" / "reranker-minilm-l6", variant="int8"
    )


def ranking(
    client: Elasticsearch, alias: str, embedder: Embedder, scorer: Scorer, weights: str
) -> list[str]:
    stage = FirstStage(
        client, alias, embedder, with_source=["title", "text", *SCIFACT.source_fields]
    )
    blend = parse_weights(weights, feature_names_for(SCIFACT))
    pipeline = Pipeline(stage, scorer, window=10, blend=blend, signals=SCIFACT, explain=True)
    result = pipeline.search("Does vitamin D supplementation prevent fractures?", k=3)
    assert result.degraded is None
    for hit in result.hits:
        assert hit.explanation is not None
        total = hit.explanation["base"] + sum(
            f["contribution"] for f in hit.explanation["features"].values()
        )
        assert total == pytest.approx(hit.score)
    return [h.id for h in result.hits]


def test_a_hand_set_authority_weight_moves_a_highly_cited_paper_up(
    es_client: Elasticsearch,
    embedder: Embedder,
    shipped_scorer: Scorer,
    tmp_path: Path,
    alias: str,
) -> None:
    source = CorpusSource.open(write_jsonl(tmp_path / "docs.jsonl", DOCS))
    index_corpus(es_client, source, alias, embedder, options=LoadOptions(progress=False))
    relevance_only = ranking(es_client, alias, embedder, shipped_scorer, "relevance=1")
    with_authority = ranking(es_client, alias, embedder, shipped_scorer, "relevance=1,authority=5")
    assert relevance_only.index("landmark") > 0
    assert with_authority[0] == "landmark"
