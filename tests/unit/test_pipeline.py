"""The pipeline's composition logic, with stand-ins for Elasticsearch and the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from reranker.blend.blends import LinearBlend
from reranker.errors import ModelError, SearchError
from reranker.rerank.pipeline import Pipeline
from reranker.retrieval.first_stage import Hit
from tests.fakes import FakeScorer


class ListedFirstStage:
    """Returns the given documents in the given order, whatever the query."""

    def __init__(self, docs: list[tuple[str, str]]) -> None:
        self.docs = docs

    def search(self, text: str, mode: str, k: int, **_: Any) -> list[Hit]:
        return [
            Hit(id=doc_id, score=float(len(self.docs) - i), source={"title": "", "text": body})
            for i, (doc_id, body) in enumerate(self.docs[:k])
        ]


class LengthScorer(FakeScorer):
    """Scores a pair by its passage's length; raises if told to."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__("model", fail=fail)


DOCS = [("a", "x"), ("b", "xxx"), ("c", "xx")]
NAMES = ("relevance", "first_stage")


def make(scorer: Any, **kwargs: Any) -> Pipeline:
    return Pipeline(ListedFirstStage(DOCS), scorer, **kwargs)  # type: ignore[arg-type]


def test_reranking_orders_by_cross_encoder_score_and_keeps_first_stage_ranks() -> None:
    result = make(LengthScorer()).search("q", k=3)
    assert [h.id for h in result.hits] == ["b", "c", "a"]
    assert [h.first_stage_rank for h in result.hits] == [2, 3, 1]
    assert result.hits[0].relevance == 3.0
    assert result.degraded is None


def test_scorer_failure_fails_open_to_the_first_stage_order() -> None:
    result = make(LengthScorer(fail=True)).search("q", k=3)
    assert [h.id for h in result.hits] == ["a", "b", "c"]
    assert result.degraded is not None and result.degraded.kind == "error"
    assert "model exploded" in result.degraded.reason


def test_scorer_failure_is_an_error_when_fail_open_is_off() -> None:
    with pytest.raises(ModelError):
        make(LengthScorer(fail=True), fail_open=False).search("q")


def test_window_bounds_what_is_reranked_and_k_what_is_returned() -> None:
    result = make(LengthScorer(), window=2).search("q", k=1)
    assert [h.id for h in result.hits] == ["b"]


def test_unknown_base_mode_is_rejected() -> None:
    with pytest.raises(SearchError, match="unknown first-stage mode"):
        make(LengthScorer(), base="sparse")


def test_a_blend_weighting_only_the_first_stage_restores_its_order() -> None:
    blend = LinearBlend(weights={"relevance": 0.0, "first_stage": 1.0}, feature_names=NAMES)
    result = make(LengthScorer(), blend=blend).search("q", k=3)
    assert [h.id for h in result.hits] == ["a", "b", "c"]
    assert result.blend is not None and result.blend.startswith("linear@")


def test_blend_explanations_account_for_the_final_score() -> None:
    blend = LinearBlend(weights={"relevance": 2.0, "first_stage": 0.5}, feature_names=NAMES)
    result = make(LengthScorer(), blend=blend, explain=True).search("q", k=3)
    for hit in result.hits:
        assert hit.explanation is not None
        parts = hit.explanation["base"] + sum(
            f["contribution"] for f in hit.explanation["features"].values()
        )
        assert parts == pytest.approx(hit.score)


def test_a_blend_without_a_scorer_is_refused() -> None:
    blend = LinearBlend(weights={"relevance": 1.0}, feature_names=NAMES)
    with pytest.raises(SearchError, match="needs the cross-encoder"):
        make(None, blend=blend)


class ShortScorer(LengthScorer):
    """Returns one score too few."""

    def scores(self, pairs: Sequence[tuple[str, str]], features: np.ndarray | None) -> np.ndarray:
        return super().scores(pairs, features)[:-1]


class NanScorer(LengthScorer):
    def scores(self, pairs: Sequence[tuple[str, str]], features: np.ndarray | None) -> np.ndarray:
        return np.full(len(pairs), np.nan, dtype=np.float32)


@pytest.mark.parametrize("scorer", [ShortScorer(), NanScorer()], ids=["short", "nan"])
def test_invalid_scorer_output_fails_open(scorer: LengthScorer) -> None:
    result = make(scorer).search("q", k=3)
    assert [h.id for h in result.hits] == ["a", "b", "c"]
    assert result.degraded is not None and result.degraded.kind == "error"
    assert result.degraded.reason.startswith("reranker error")


class FeatureReadingScorer(FakeScorer):
    """A first-stage-aware stand-in: its score is the fused feature; it keeps what it got."""

    def __init__(self) -> None:
        super().__init__("aware", feature_names=("fused", "bm25", "dense"))

    def scores(self, pairs: Sequence[tuple[str, str]], features: np.ndarray | None) -> np.ndarray:
        assert features is not None
        return np.asarray(features[:, 0], dtype=np.float32)


class StagedFirstStage:
    """Hybrid-like hits: d2 was found by BM25 only."""

    def search(self, text: str, mode: str, k: int, **_: Any) -> list[Hit]:
        return [
            Hit("d1", 2.0, {"text": "one"}, {"bm25": 9.0, "dense": 0.9}),
            Hit("d2", 1.5, {"text": "two"}, {"bm25": 3.0}),
            Hit("d3", 1.0, {"text": "three"}, {"bm25": 1.0, "dense": 0.7}),
        ][:k]


def test_a_first_stage_aware_model_is_refused_over_a_bm25_first_stage() -> None:
    from reranker.rerank.features import FeatureUnavailable

    with pytest.raises(FeatureUnavailable, match="dense") as caught:
        Pipeline(StagedFirstStage(), FeatureReadingScorer(), base="bm25")  # type: ignore[arg-type]
    assert caught.value.features == ["dense"]


def test_the_pipeline_gives_an_aware_model_its_window_features_and_counts_missing_ones() -> None:
    scorer = FeatureReadingScorer()
    pipeline = Pipeline(StagedFirstStage(), scorer, base="hybrid", window=3)  # type: ignore[arg-type]
    result = pipeline.search("q", k=3)
    assert scorer.features is not None
    np.testing.assert_allclose(scorer.features[:, 0], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(scorer.features[:, 1], [1.0, 0.25, 0.0])
    np.testing.assert_allclose(scorer.features[:, 2], [1.0, 0.0, 0.0], atol=1e-6)
    assert result.missing_features == {"dense": 1}
    assert [h.id for h in result.hits] == ["d1", "d2", "d3"]  # fused order kept


def test_without_a_client_the_builder_gives_a_rerank_only_pipeline_as_the_path_says() -> None:
    from reranker.rerank.pipeline import QueryPath, build_pipeline

    path = QueryPath(index="docs", base="bm25", window=3, passage_fields=("text",), fail_open=False)
    pipeline = build_pipeline(path, None, None, scorer=LengthScorer(fail=True))
    assert pipeline.first_stage is None
    assert pipeline.fields == ("text",)
    with pytest.raises(SearchError, match="no first stage"):
        pipeline.search("q")
    hits = ListedFirstStage(DOCS).search("q", "bm25", 3)
    with pytest.raises(ModelError):  # fail_open false: the scorer's error comes through
        pipeline.rerank("q", hits, k=3)
    ranked = build_pipeline(path, None, None, scorer=LengthScorer()).rerank("q", hits, k=3)
    assert [h.id for h in ranked.hits] == ["b", "c", "a"]  # by the text field's length
