"""Fusion against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reranker.retrieval.fusion import linear, normalize, ranked, rrf


def test_rrf_sums_reciprocal_ranks_across_runs() -> None:
    lexical = {"a": 9.0, "b": 5.0, "c": 1.0}
    dense = {"c": 0.9, "a": 0.8}
    fused = rrf([lexical, dense], rank_constant=60)
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert ranked(fused) == ["a", "c", "b"]


def test_rrf_weights_scale_each_runs_contribution() -> None:
    fused = rrf([{"a": 1.0}, {"b": 1.0}], rank_constant=1, weights=[1.0, 3.0])
    assert fused == {"a": pytest.approx(0.5), "b": pytest.approx(1.5)}


def test_rrf_rejects_rank_constant_below_one() -> None:
    with pytest.raises(ValueError, match="rank_constant"):
        rrf([{"a": 1.0}], rank_constant=0)


def test_minmax_maps_to_unit_interval() -> None:
    assert normalize(np.array([2.0, 4.0, 6.0]), "minmax").tolist() == [0.0, 0.5, 1.0]


def test_minmax_of_equal_scores_is_all_ones() -> None:
    assert normalize(np.array([3.0, 3.0]), "minmax").tolist() == [1.0, 1.0]


def test_zscore_centres_and_scales() -> None:
    values = normalize(np.array([1.0, 2.0, 3.0]), "zscore")
    sd = math.sqrt(2 / 3)
    assert values.tolist() == pytest.approx([-1 / sd, 0.0, 1 / sd])


def test_l2_gives_unit_norm() -> None:
    assert normalize(np.array([3.0, 4.0]), "l2").tolist() == pytest.approx([0.6, 0.8])


def test_unknown_normalization_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize(np.array([1.0]), "softmax")  # type: ignore[arg-type]


def test_linear_fusion_gives_missing_documents_the_runs_floor() -> None:
    lexical = {"a": 10.0, "b": 0.0}
    dense = {"a": 0.2, "c": 0.6}
    fused = linear([lexical, dense], weights=[0.5, 0.5], normalization="minmax")
    # lexical minmax: a=1, b=0, (c missing → 0); dense minmax: a=0, c=1, (b missing → 0)
    assert fused == {"a": pytest.approx(0.5), "b": pytest.approx(0.0), "c": pytest.approx(0.5)}


def test_linear_fusion_rejects_all_zero_weights() -> None:
    with pytest.raises(ValueError, match="all zero"):
        linear([{"a": 1.0}, {"a": 2.0}], weights=[0.0, 0.0])


def test_ranked_breaks_ties_by_id() -> None:
    assert ranked({"b": 1.0, "a": 1.0, "c": 2.0}) == ["c", "a", "b"]


def test_linear_fusion_defaults_to_the_weights_chosen_on_dev_and_rrf_to_equal_ones() -> None:
    from reranker.retrieval.first_stage import DEFAULT_WEIGHTS, HybridOptions

    assert HybridOptions().weights == DEFAULT_WEIGHTS["linear"] == (0.7, 1.0)
    assert HybridOptions(fusion="rrf").weights == (1.0, 1.0)
    assert HybridOptions(weights=(1.0, 1.0)).weights == (1.0, 1.0)
