"""Diversity after reranking: MMR over the window's stored embeddings (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from reranker.errors import SearchError
from reranker.rerank.diversity import (
    Diversity,
    diversify,
    intra_list_similarity,
    mmr_order,
    scaled,
)

# three documents: two near copies (a, a2) and one on another topic (b)
A = [1.0, 0.0, 0.0]
A2 = [0.99, 0.14, 0.0]
B = [0.0, 1.0, 0.0]


@dataclass
class Ranked:
    id: str
    score: float
    vector: list[float] | None
    diversity: dict[str, Any] | None = None


def order(scores: list[float], vectors: list[list[float]], diversity: Diversity) -> list[int]:
    return [p.position for p in mmr_order(scores, np.array(vectors), diversity)]


def test_lambda_one_keeps_the_reranked_order() -> None:
    assert order([3.0, 2.0, 1.0], [A, A2, B], Diversity(1.0)) == [0, 1, 2]


def test_a_near_copy_of_the_top_hit_gives_way_to_another_topic() -> None:
    assert order([3.0, 2.0, 1.0], [A, A2, B], Diversity(0.5)) == [0, 2, 1]


def test_the_top_hit_always_stays_first() -> None:
    for lam in (0.0, 0.3, 0.7):
        assert order([1.0, 3.0, 2.0], [A, A2, B], Diversity(lam))[0] == 1


def test_mmr_values_never_rise_down_the_list() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(40, 8))
    placements = mmr_order(rng.normal(size=40).tolist(), vectors, Diversity(0.6))
    values = [p.mmr for p in placements]
    assert values == sorted(values, reverse=True)
    assert sorted(p.position for p in placements) == list(range(40))


def test_equal_scores_and_vectors_keep_the_window_order() -> None:
    assert order([1.0, 1.0, 1.0], [A, A, A], Diversity(0.5)) == [0, 1, 2]


def test_a_duplicate_above_the_threshold_goes_below_every_distinct_hit() -> None:
    placements = mmr_order([3.0, 2.9, 1.0], np.array([A, A2, B]), Diversity(1.0, 0.95))
    assert [p.position for p in placements] == [0, 2, 1]
    assert placements[2].duplicate_of == 0 and placements[1].duplicate_of is None


def test_no_threshold_collapses_nothing() -> None:
    placements = mmr_order([3.0, 2.9, 1.0], np.array([A, A2, B]), Diversity(1.0))
    assert all(p.duplicate_of is None for p in placements)


def test_diversify_sets_falling_scores_and_explains_each_hit() -> None:
    hits = [Ranked("a", 3.0, A), Ranked("a2", 2.9, A2), Ranked("b", 1.0, B)]
    ordered = diversify(hits, Diversity(0.5, 0.95), explain=True)
    assert [h.id for h in ordered] == ["a", "b", "a2"]
    scores = [h.score for h in ordered]
    assert scores == sorted(scores, reverse=True)
    assert ordered[2].diversity is not None and ordered[2].diversity["duplicate_of"] == "a"
    why = ordered[1].diversity
    assert why is not None and why["penalty"] == pytest.approx(0.5 * why["redundancy"])


def test_without_explain_no_explanation_is_written() -> None:
    hits = [Ranked("a", 3.0, A), Ranked("b", 1.0, B)]
    assert all(h.diversity is None for h in diversify(hits, Diversity(0.5)))


def test_a_hit_without_a_vector_is_similar_to_nothing() -> None:
    hits = [Ranked("a", 3.0, A), Ranked("a2", 2.9, A2), Ranked("none", 2.0, None)]
    ordered = diversify(hits, Diversity(0.5))
    assert [h.id for h in ordered] == ["a", "none", "a2"]


def test_diversity_without_any_embedding_is_an_error() -> None:
    with pytest.raises(SearchError, match="embeddings"):
        diversify([Ranked("a", 1.0, None), Ranked("b", 0.5, None)], Diversity(0.5))


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan")])
def test_lambda_outside_zero_to_one_is_refused(lam: float) -> None:
    with pytest.raises(SearchError, match="lambda"):
        Diversity(lam)


@pytest.mark.parametrize("threshold", [0.0, 1.2, float("nan")])
def test_a_threshold_that_is_not_a_cosine_is_refused(threshold: float) -> None:
    with pytest.raises(SearchError, match="threshold"):
        Diversity(0.8, threshold)


def test_relevance_is_scaled_to_zero_one_over_the_window() -> None:
    assert scaled([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert scaled([5.0, 5.0]).tolist() == [1.0, 1.0]


def test_intra_list_similarity_is_the_mean_cosine_over_pairs() -> None:
    assert intra_list_similarity(np.array([A, A, B])) == pytest.approx(1 / 3)
    assert intra_list_similarity(np.array([A])) == 0.0
