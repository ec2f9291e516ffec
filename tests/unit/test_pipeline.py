"""The pipeline's composition logic, with stand-ins for Elasticsearch and the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from reranker.blend import LinearBlend
from reranker.errors import ModelError, SearchError
from reranker.first_stage import Hit
from reranker.pipeline import Pipeline


class ListedFirstStage:
    """Returns the given documents in the given order, whatever the query."""

    def __init__(self, docs: list[tuple[str, str]]) -> None:
        self.docs = docs

    def search(self, text: str, mode: str, k: int, **_: Any) -> list[Hit]:
        return [
            Hit(id=doc_id, score=float(len(self.docs) - i), source={"title": "", "text": body})
            for i, (doc_id, body) in enumerate(self.docs[:k])
        ]


class LengthScorer:
    """Scores a pair by its passage's length; raises if told to."""

    model_id = "length"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def score(self, pairs: Sequence[tuple[str, str]], **_: Any) -> np.ndarray:
        if self.fail:
            raise ModelError("model exploded")
        return np.array([len(p) for _, p in pairs], dtype=np.float32)


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
    assert result.degraded is not None and "model exploded" in result.degraded


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

    def score(self, pairs: Sequence[tuple[str, str]], **_: Any) -> np.ndarray:
        return super().score(pairs)[:-1]


class NanScorer(LengthScorer):
    def score(self, pairs: Sequence[tuple[str, str]], **_: Any) -> np.ndarray:
        return np.full(len(pairs), np.nan, dtype=np.float32)


@pytest.mark.parametrize("scorer", [ShortScorer(), NanScorer()], ids=["short", "nan"])
def test_invalid_scorer_output_fails_open(scorer: LengthScorer) -> None:
    result = make(scorer).search("q", k=3)
    assert [h.id for h in result.hits] == ["a", "b", "c"]
    assert result.degraded is not None and result.degraded.startswith("reranker error")
