"""Diversity after reranking: swaps onto the first page and MMR over the window's stored
embeddings (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from reranker.errors import SearchError
from reranker.rerank.diversity import (
    PAGE,
    SWAPS,
    Diversity,
    diversify,
    intra_list_similarity,
    mmr_order,
    relevance_chances,
    scaled,
    swap_order,
    unit_rows,
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
    ordered = diversify(hits, Diversity(0.5, 0.95, "mmr"), explain=True)
    assert [h.id for h in ordered] == ["a", "b", "a2"]
    scores = [h.score for h in ordered]
    assert scores == sorted(scores, reverse=True)
    assert ordered[2].diversity is not None and ordered[2].diversity["duplicate_of"] == "a"
    why = ordered[1].diversity
    assert why is not None and why["penalty"] == pytest.approx(0.5 * why["redundancy"])


def test_without_explain_no_explanation_is_written() -> None:
    hits = [Ranked("a", 3.0, A), Ranked("b", 1.0, B)]
    assert all(h.diversity is None for h in diversify(hits, Diversity(0.5, method="mmr")))


def test_a_hit_without_a_vector_is_similar_to_nothing() -> None:
    hits = [Ranked("a", 3.0, A), Ranked("a2", 2.9, A2), Ranked("none", 2.0, None)]
    ordered = diversify(hits, Diversity(0.5, method="mmr"))
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


# ------------------------------------------------------------------------- swaps (the default)


def crowded_window(rng: np.random.Generator) -> tuple[list[float], np.ndarray]:
    """A confident top hit, then a page of near copies of one topic, then two other topics."""
    copies = np.array(A) + rng.normal(scale=0.05, size=(PAGE + 3, 3))
    vectors = np.vstack([copies, [B, [0.0, 0.0, 1.0]]])
    scores = [8.0, *np.linspace(1.0, 0.5, PAGE + 2).tolist(), 0.4, 0.3]
    return scores, vectors


def page_of(placements: list[Any]) -> list[int]:
    return [p.position for p in placements[:PAGE]]


def test_swaps_at_lambda_one_keep_the_order_and_the_scores() -> None:
    hits = [Ranked(str(i), 3.0 - i, v) for i, v in enumerate([A, A2, B])]
    ordered = diversify(hits, Diversity(1.0), explain=True)
    assert [(h.id, h.score) for h in ordered] == [("0", 3.0), ("1", 2.0), ("2", 1.0)]


def test_an_unsure_copy_on_the_page_gives_way_to_another_topic_below_it() -> None:
    scores, vectors = crowded_window(np.random.default_rng(3))
    placements = swap_order(scores, vectors, Diversity(0.5))
    page = page_of(placements)
    assert page[0] == 0  # the confident hit stays first
    assert {PAGE + 3, PAGE + 4} & set(page)
    assert intra_list_similarity(vectors[page]) < intra_list_similarity(vectors[:PAGE])


def test_a_lambda_close_to_one_swaps_nothing() -> None:
    scores, vectors = crowded_window(np.random.default_rng(3))
    assert page_of(swap_order(scores, vectors, Diversity(0.999))) == list(range(PAGE))


def test_at_most_swaps_hits_come_onto_the_page() -> None:
    scores, vectors = crowded_window(np.random.default_rng(5))
    placements = swap_order(scores, vectors, Diversity(0.0))
    assert 0 < sum(bool(p.swapped_in) for p in placements) <= SWAPS
    assert sorted(p.position for p in placements) == list(range(len(scores)))


def test_hits_left_on_the_page_and_below_it_keep_their_order() -> None:
    scores, vectors = crowded_window(np.random.default_rng(3))
    order = [p.position for p in swap_order(scores, vectors, Diversity(0.5))]
    stayed = [i for i in order[:PAGE] if i < PAGE]
    below = order[PAGE:]
    assert stayed == sorted(stayed) and below == sorted(below)


def test_swapped_scores_fall_down_the_list_and_say_what_came_onto_the_page() -> None:
    scores, vectors = crowded_window(np.random.default_rng(3))
    hits = [Ranked(str(i), s, vectors[i].tolist()) for i, s in enumerate(scores)]
    ordered = diversify(hits, Diversity(0.5), explain=True)
    values = [h.score for h in ordered]
    assert values == sorted(values, reverse=True)
    explained = [h.diversity for h in ordered]
    assert all(w is not None and set(w) >= {"relevance", "swapped_in"} for w in explained)
    assert any(w is not None and w["swapped_in"] for w in explained[:PAGE])
    assert not any(w is not None and w["swapped_in"] for w in explained[PAGE:])


def test_chances_of_relevance_ignore_the_scores_scale_and_fall_below_the_scored_hits() -> None:
    scores = np.linspace(5.0, -5.0, 100)
    to_top = np.full(100, 0.5)
    chances = relevance_chances(scores, to_top)
    assert np.allclose(relevance_chances(10 * scores + 3, to_top), chances)
    assert np.all((chances > 0) & (chances < 1))
    assert np.all(np.diff(chances[20:]) < 0)
    assert chances[0] > chances[19]


def test_a_scored_hit_like_the_top_one_is_likelier_relevant_than_one_unlike_it() -> None:
    scores = np.linspace(5.0, -5.0, 100)
    alike, unlike = np.full(100, 0.9), np.full(100, 0.1)
    more, less = relevance_chances(scores, alike), relevance_chances(scores, unlike)
    assert np.all(more[1:20] > less[1:20])
    assert more[0] == less[0]  # the top hit is the top hit, whatever its vector
    assert np.array_equal(more[20:], less[20:])  # below the scored hits: rank alone


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.9])
def test_a_swap_trades_expected_gain_for_novelty_never_gains_both(lam: float) -> None:
    rng = np.random.default_rng(11)
    discounts = 1.0 / np.log2(np.arange(2, PAGE + 2))
    for _ in range(20):
        scores = np.sort(rng.normal(size=40))[::-1]
        vectors = rng.normal(size=(40, 8))
        unit = unit_rows(vectors)
        chance = relevance_chances(scores, unit @ unit[0])
        page = page_of(swap_order(scores.tolist(), vectors, Diversity(lam)))
        assert chance[page] @ discounts <= chance[:PAGE] @ discounts + 1e-9


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(SearchError, match="method"):
        Diversity(0.8, method="dpp")  # type: ignore[arg-type]


def test_swaps_with_a_threshold_put_a_near_copy_below_every_distinct_hit() -> None:
    scores = [3.0, 2.9, 2.0, 1.0]
    vectors = np.array([A, A2, B, [0.0, 0.0, 1.0]])
    placements = swap_order(scores, vectors, Diversity(1.0, 0.95))
    assert [p.position for p in placements] == [0, 2, 3, 1]
    assert placements[-1].duplicate_of == 0
    assert all(p.duplicate_of is None for p in placements[:-1])
