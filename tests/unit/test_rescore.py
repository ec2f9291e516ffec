"""The second embedder's cosine beside the cross-encoder's logit (reranker.rerank.rescore), with
stand-ins for Elasticsearch, the model and the embedder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reranker.blend.blends import LinearBlend
from reranker.config import Settings
from reranker.errors import ModelError
from reranker.es import mappings
from reranker.es.indexing import LoadOptions, _actions
from reranker.rerank.cascade import Cascade
from reranker.rerank.pipeline import Pipeline
from reranker.rerank.rescore import (
    DEFAULT_RESCORE_DIR,
    RESCORE_WEIGHT,
    Rescore,
    normalised_cosines,
    rescore_embedder,
)
from reranker.retrieval.first_stage import Hit
from reranker.retrieval.queries import RESCORE_VECTOR_FIELD, VECTOR_FIELD
from tests.fakes import FakeScorer


class AxisEncoder:
    """Embeds every text as a unit vector along the axis its first character names
    ("a" → x, "b" → y, anything else → z); queries the same way."""

    dim = 3
    model_id = "axis@000000000000"

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        axes = {"a": 0, "b": 1}
        out = np.zeros((len(texts), 3), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i, axes.get(text[:1], 2)] = 1.0
        return out

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        return self.encode(texts, batch_size)


class WindowStage:
    """Gives back the listed hits, whatever the query."""

    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits

    def search(self, text: str, mode: str, k: int, **_: Any) -> list[Hit]:
        return [Hit(h.id, h.score, h.source, rescore_vector=h.rescore_vector) for h in self.hits]


def hit(doc_id: str, body: str, vector: list[float] | None, score: float) -> Hit:
    return Hit(doc_id, score, {"title": "", "text": body}, rescore_vector=vector)


def rescoring(hits: list[Hit], **options: Any) -> Pipeline:
    """A pipeline over ``hits`` scored by passage length, with the axis embedder as the
    second embedder."""
    return Pipeline(
        WindowStage(hits),  # type: ignore[arg-type]
        FakeScorer("model"),
        rescore=Rescore(AxisEncoder()),  # type: ignore[arg-type]
        **options,
    )


def test_cosines_are_min_max_normalised_over_the_window() -> None:
    scaled, lacking = normalised_cosines(np.array([1.0, 0.0]), [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert lacking == 0
    assert scaled.tolist() == pytest.approx([1.0, 0.0, np.sqrt(0.5)])


def test_a_window_of_equal_cosines_gives_every_hit_the_top() -> None:
    scaled, _ = normalised_cosines(np.array([1.0, 0.0]), [[2.0, 0.0], [3.0, 0.0]])
    assert scaled.tolist() == [1.0, 1.0]


def test_vectors_that_are_absent_or_of_another_size_are_counted_and_get_zero() -> None:
    scaled, lacking = normalised_cosines(
        np.array([1.0, 0.0]), [[1.0, 0.0], None, [1.0, 0.0, 0.0], [0.0, 1.0]]
    )
    assert lacking == 2
    assert scaled.tolist() == [1.0, 0.0, 0.0, 0.0]


class CountingEncoder(AxisEncoder):
    def __init__(self) -> None:
        self.queries: list[str] = []

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        self.queries.extend(texts)
        return super().encode_queries(texts, batch_size)


def test_a_query_embedded_beforehand_is_not_embedded_again() -> None:
    encoder = CountingEncoder()
    rescore = Rescore(encoder).embedded(["a query"])  # type: ignore[arg-type]
    scaled, _ = rescore.similarities("a query", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert scaled.tolist() == [1.0, 0.0]
    assert encoder.queries == ["a query"]
    rescore.similarities("b query", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert encoder.queries == ["a query", "b query"]  # one it did not know


def test_the_second_embedders_cosine_can_overturn_the_logit() -> None:
    # the length scorer prefers "bbbb" (4) to "a" (1) by 3; the query is along x, which only
    # "a" shares: 15 x (1 - 0) outweighs it
    hits = [hit("long", "bbbb", [0.0, 1.0, 0.0], 2.0), hit("short", "a", [1.0, 0.0, 0.0], 1.0)]
    pipeline = rescoring(hits)
    result = pipeline.search("a query", k=2)
    assert [h.id for h in result.hits] == ["short", "long"]
    assert result.hits[0].score == pytest.approx(1.0 + RESCORE_WEIGHT)
    assert result.hits[0].relevance == 1.0  # the model's own logit stays apart
    assert [h.rescore for h in result.hits] == [1.0, 0.0]
    assert "rescore" in result.timings_ms


def test_a_window_with_a_hit_lacking_a_vector_is_reranked_by_the_logit_alone() -> None:
    hits = [hit("long", "bbbb", [0.0, 1.0, 0.0], 2.0), hit("short", "a", None, 1.0)]
    pipeline = rescoring(hits)
    result = pipeline.search("a query", k=2)
    assert [h.id for h in result.hits] == ["long", "short"]
    assert result.missing_features == {"rescore": 1}
    assert all(h.rescore is None for h in result.hits)


def test_in_a_cascade_the_cosine_reorders_the_head_and_the_tail_stays_below() -> None:
    hits = [
        hit("h1", "bbbb", [0.0, 1.0, 0.0], 3.0),
        hit("h2", "a", [1.0, 0.0, 0.0], 2.0),
        hit("tail", "a", [1.0, 0.0, 0.0], 1.0),
    ]
    pipeline = rescoring(hits, cascade=Cascade(None, 2))
    result = pipeline.search("a query", k=3)
    assert [h.id for h in result.hits] == ["h2", "h1", "tail"]
    assert result.hits[-1].score < min(h.score for h in result.hits[:2])
    assert result.hits[0].relevance == 1.0


def test_the_index_body_stores_second_embedder_vectors_without_a_search_graph() -> None:
    body = mappings.documents_index_body(
        analysis_name="core",
        analysis={},
        dims=384,
        meta={mappings.RESCORE_META_KEY: "bge@abc", "rescore_dims": 3},
    )
    field = body["mappings"]["properties"][RESCORE_VECTOR_FIELD]
    assert field["index"] is False and field["dims"] == 3
    assert field["meta"] == {mappings.EMBEDDER_META_KEY: "bge@abc"}


def test_an_index_body_without_a_second_embedder_has_no_such_field() -> None:
    body = mappings.documents_index_body(analysis_name="core", analysis={}, dims=384, meta={})
    assert RESCORE_VECTOR_FIELD not in body["mappings"]["properties"]


def test_each_document_gets_both_embedders_vectors_and_reuse_keeps_only_matching_ones() -> None:
    docs = [
        {"_id": "1", "title": "", "text": "a", RESCORE_VECTOR_FIELD: [9.0, 9.0, 9.0]},
        {"_id": "2", "title": "", "text": "b", RESCORE_VECTOR_FIELD: [9.0]},
    ]
    options = LoadOptions(progress=False, rescore_encoder=AxisEncoder())  # type: ignore[arg-type]
    actions = list(
        _actions("idx", docs, AxisEncoder(), None, (False, True), options, 2)  # type: ignore[arg-type]
    )
    sources = [a["_source"] for a in actions]
    assert [s[VECTOR_FIELD] for s in sources] == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    # the first document's stored vector is kept; the second's is of another size: re-embedded
    assert [s[RESCORE_VECTOR_FIELD] for s in sources] == [[9.0, 9.0, 9.0], [0.0, 1.0, 0.0]]


def test_none_names_no_second_embedder_and_the_default_is_the_shipped_bge() -> None:
    assert rescore_embedder(Settings(rescore_embedder=Path("none"))) is None
    loaded = rescore_embedder(Settings())
    assert loaded is not None and loaded.model_id.startswith("bge-small-en-v1.5-int8@")
    assert loaded.pooling == "cls" and loaded.model_dir == DEFAULT_RESCORE_DIR


def test_a_missing_second_embedder_folder_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="second embedder folder"):
        rescore_embedder(Settings(rescore_embedder=tmp_path / "absent"))


def test_a_blend_reads_the_models_own_logit_and_the_cosine_is_not_added() -> None:
    hits = [hit("long", "bbbb", [0.0, 1.0, 0.0], 2.0), hit("short", "a", [1.0, 0.0, 0.0], 1.0)]
    blend = LinearBlend(
        weights={"relevance": 1.0, "first_stage": 0.0}, feature_names=("relevance", "first_stage")
    )
    result = rescoring(hits, blend=blend).search("a query", k=2)
    assert [h.id for h in result.hits] == ["long", "short"]  # by length, as fitted
    assert result.rescore is None and all(h.rescore is None for h in result.hits)
