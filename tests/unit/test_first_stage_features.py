"""First-stage features: min-max within the window, a counted floor for missing scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from reranker.rerank.features import (
    FEATURE_NAMES,
    MISSING_VALUE,
    dense_cosines,
    features_for_texts,
    features_from_stage_scores,
    unavailable_features,
    window_features,
)


def test_features_are_minmax_normalised_within_the_window() -> None:
    got = window_features([3.0, 2.0, 1.0], [10.0, 20.0, 15.0], [0.9, 0.7, 0.8])
    assert got.values.shape == (3, len(FEATURE_NAMES))
    np.testing.assert_allclose(got.values[:, 0], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(got.values[:, 1], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(got.values[:, 2], [1.0, 0.0, 0.5], atol=1e-6)
    assert got.missing == {"fused": 0, "bm25": 0, "dense": 0}


def test_a_missing_stage_score_gets_the_floor_and_is_counted() -> None:
    got = window_features([2.0, 1.0, 0.5], [5.0, None, 7.0], [None, None, 0.3])
    assert got.values[1, 1] == MISSING_VALUE
    assert got.values[0, 2] == MISSING_VALUE and got.values[1, 2] == MISSING_VALUE
    assert got.values[2, 2] == 1.0  # the only dense score present is the window's top
    assert got.missing == {"fused": 0, "bm25": 1, "dense": 2}


def test_the_fused_feature_keeps_the_first_stage_order() -> None:
    fused = [0.91, 0.5, 0.49, 0.1, -3.0]
    got = features_from_stage_scores(fused, [{"bm25": 1.0}] * len(fused))
    assert list(np.argsort(-got.values[:, 0], kind="stable")) == list(range(len(fused)))


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        window_features([1.0, 2.0], [1.0], [1.0, 2.0])


def test_a_bm25_first_stage_cannot_provide_the_dense_feature() -> None:
    assert unavailable_features(FEATURE_NAMES, "bm25") == ["dense"]
    assert unavailable_features(FEATURE_NAMES, "hybrid") == []
    assert unavailable_features((), "bm25") == []


def test_an_embedder_in_process_can_provide_the_dense_feature_to_any_first_stage() -> None:
    assert unavailable_features(FEATURE_NAMES, "bm25", computable=("dense",)) == []


class UnitVectors:
    """A stand-in embedder: each text's vector is given."""

    dim = 2
    model_id = "table"

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def encode(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        rows = np.array([self.table[t] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


VECTORS = UnitVectors({"q": [1, 0], "near": [1, 0.1], "far": [0, 1], "mid": [1, 1]})


def test_dense_cosines_are_the_query_against_each_passage() -> None:
    cosines = dense_cosines(VECTORS, "q", ["near", "far", "mid"])
    np.testing.assert_allclose(cosines, [0.995, 0.0, 0.7071], atol=1e-3)


def test_texts_without_a_first_stage_are_ordered_by_their_cosine_and_lack_bm25() -> None:
    window = features_for_texts(VECTORS, "q", ["near", "far", "mid"])
    fused, bm25, dense = window.values.T
    np.testing.assert_allclose(fused, dense)
    assert list(np.argsort(-fused)) == [0, 2, 1]
    assert (bm25 == MISSING_VALUE).all() and window.missing["bm25"] == 3
