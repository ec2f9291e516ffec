"""The pair-score cache: a bounded LRU in front of a scorer (pure logic; a counting fake
stands in for the ONNX scorer, whose own behaviour tests/unit/test_scoring.py specifies)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from reranker.rerank.cache import CachedScorer, LruScores
from tests.fakes import FakeScorer


class CountingScorer(FakeScorer):
    """Scores a pair by its passage length (plus the features' sum); counts what it ran."""

    def __init__(self, version: str = "v1", feature_names: tuple[str, ...] = ()) -> None:
        super().__init__(feature_names=feature_names)
        self.version = version

    def scores(self, pairs: Sequence[tuple[str, str]], features: np.ndarray | None) -> np.ndarray:
        scores = np.array([float(len(p)) for _, p in pairs], dtype=np.float32)
        if features is not None:
            scores += np.asarray(features, dtype=np.float32).sum(axis=1)
        return scores


def cached(scorer: CountingScorer, store: LruScores) -> CachedScorer:
    return CachedScorer(scorer, store)  # type: ignore[arg-type]


def test_a_repeated_window_is_served_from_memory_with_the_same_scores() -> None:
    scorer, store = CountingScorer(), LruScores(100)
    pairs = [("q", "alpha"), ("q", "be")]
    first = cached(scorer, store).score(pairs)
    again = cached(scorer, store)
    assert again.covers(pairs)
    second = again.score(pairs)
    assert second.tolist() == first.tolist()
    assert scorer.pairs_run == 2 and again.pairs_scored == 0
    assert (store.hits, store.misses) == (2, 2)


def test_an_edited_document_is_scored_again() -> None:
    scorer, store = CountingScorer(), LruScores(100)
    cached(scorer, store).score([("q", "old text")])
    edited = cached(scorer, store)
    assert not edited.covers([("q", "new text, longer")])
    assert edited.score([("q", "new text, longer")]).tolist() == [16.0]
    assert scorer.pairs_run == 2


def test_another_model_version_never_reads_the_old_scores() -> None:
    store = LruScores(100)
    cached(CountingScorer("v1"), store).score([("q", "text")])
    newer = CountingScorer("v2")
    cached(newer, store).score([("q", "text")])
    assert newer.pairs_run == 1


def test_features_are_part_of_the_key_for_a_first_stage_aware_model() -> None:
    scorer, store = CountingScorer(feature_names=("fused",)), LruScores(100)
    cached(scorer, store).score([("q", "text")], features=np.array([[0.5]]))
    other = cached(scorer, store).score([("q", "text")], features=np.array([[1.0]]))
    assert other.tolist() == [5.0] and scorer.pairs_run == 2


def test_the_least_recently_used_pair_goes_first_when_full() -> None:
    scorer, store = CountingScorer(), LruScores(2)
    cached(scorer, store).score([("q", "a"), ("q", "b")])
    cached(scorer, store).score([("q", "a")])  # a is now the most recent
    cached(scorer, store).score([("q", "c")])  # evicts b
    assert len(store) == 2 and store.evictions == 1
    assert cached(scorer, store).covers([("q", "a"), ("q", "c")])
    assert not cached(scorer, store).covers([("q", "b")])


def test_a_cache_of_no_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="0 = no cache"):
        LruScores(0)


class HeadedScorer(CountingScorer):
    """CountingScorer with two signal heads: popularity = passage length / 10, authority = 0.5."""

    signal_heads = ("popularity", "authority")

    def score_with_signals(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        logits = self.score(pairs, deadline=deadline, features=features)
        popularity = np.array([len(p) / 10 for _, p in pairs], dtype=np.float32)
        return logits, {"popularity": popularity, "authority": np.full(len(pairs), 0.5)}


def test_signal_heads_are_cached_with_their_logit_under_their_own_key() -> None:
    scorer, store = HeadedScorer(), LruScores(100)
    pairs = [("q", "alpha"), ("q", "be")]
    wrapper = cached(scorer, store)
    wrapper.score(pairs)
    assert wrapper.covers(pairs) and not wrapper.covers(pairs, with_signals=True)
    logits, heads = wrapper.score_with_signals(pairs)
    assert wrapper.covers(pairs, with_signals=True)
    again_logits, again_heads = cached(scorer, store).score_with_signals(pairs)
    assert scorer.pairs_run == 4  # plain scores once, scores with heads once, then nothing
    assert again_logits.tolist() == logits.tolist() == [5.0, 2.0]
    assert again_heads["popularity"].tolist() == pytest.approx([0.5, 0.2])
    assert again_heads["authority"].tolist() == heads["authority"].tolist() == [0.5, 0.5]


def test_a_blend_reading_predicted_signals_is_served_from_the_cache_the_second_time() -> None:
    from reranker.blend.blends import LinearBlend
    from reranker.rerank.pipeline import Pipeline
    from reranker.retrieval.first_stage import Hit

    scorer = HeadedScorer()
    blend = LinearBlend(weights={"relevance": 1.0, "predicted_popularity": 1.0})
    pipeline = Pipeline(None, cached(scorer, LruScores(100)), base="bm25", blend=blend)
    hits = [Hit(d, 1.0, {"text": t}) for d, t in (("a", "alpha"), ("b", "be"))]
    assert pipeline.uncached_pairs("q", hits)
    first = pipeline.rerank("q", hits)
    assert not pipeline.uncached_pairs("q", hits)
    second = pipeline.rerank("q", hits)
    assert scorer.pairs_run == 2
    assert [h.predicted for h in second.hits] == [h.predicted for h in first.hits]
