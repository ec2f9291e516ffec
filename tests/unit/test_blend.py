"""Blend: feature building, linear and LambdaMART blends, explanations, learning, persistence."""

from __future__ import annotations

import json
import math
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from reranker.blend.blends import (
    Blend,
    LambdaMartBlend,
    LinearBlend,
    blend_from_dict,
    blend_version,
    load_blend,
    parse_weights,
    read_blend_card,
    save_blend,
)
from reranker.blend.features import build_feature_batch, build_features, feature_names_for, minmax
from reranker.blend.fit import fit_lambdamart, fit_linear, group_sizes, ndcg_at_k
from reranker.blend.signals import SCIFACT, FeatureBatch
from reranker.errors import ConfigError, ModelError
from reranker.numeric import sigmoid

NAMES = ("relevance", "first_stage", "authority")

# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------


def test_sigmoid_hand_values_without_overflow() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sigmoid([0.0, math.log(3.0), -math.log(3.0), 1000.0, -1000.0])
    np.testing.assert_allclose(out, [0.5, 0.75, 0.25, 1.0, 0.0])


def test_minmax_hand_values() -> None:
    np.testing.assert_allclose(minmax([1.0, 3.0, 5.0]), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(minmax([2.0, 2.0]), [1.0, 1.0])
    np.testing.assert_allclose(minmax([1.0, math.nan, 3.0, math.inf]), [0.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(minmax([-1e308, 0.0, 1e308]), [0.0, 0.5, 1.0])
    assert minmax([]).shape == (0,)


def test_build_features_hand_values() -> None:
    batch = FeatureBatch(
        values=np.array([[0.3, 1.0], [0.7, 2.0]]),
        names=("authority", "freshness"),
        defaults_used=np.array([[False, True], [False, False]]),
    )
    x = build_features([0.0, math.log(3.0)], [2.0, 4.0], batch, ("authority", *NAMES[:2]))
    np.testing.assert_allclose(x, [[0.3, 0.5, 0.0], [0.7, 0.75, 1.0]])
    fb = build_feature_batch([0.0, 1.0], [7.0, 9.0], batch, ("freshness", "relevance"))
    assert fb.names == ("freshness", "relevance")
    np.testing.assert_array_equal(fb.defaults_used, [[True, False], [False, False]])


def test_build_features_non_finite_inputs_become_flagged_defaults() -> None:
    fb = build_feature_batch(
        [math.nan, math.inf, 0.0, -math.inf], [1.0, math.nan, 3.0, -math.inf], None, NAMES[:2]
    )
    np.testing.assert_allclose(fb.values, [[0.0, 0.0], [0.0, 0.0], [0.5, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(
        fb.defaults_used, [[True, False], [True, True], [False, False], [True, True]]
    )
    signals = FeatureBatch(values=np.array([[math.nan], [2.0]]), names=("authority",))
    fb = build_feature_batch([0.0, 0.0], None, signals, NAMES)
    np.testing.assert_allclose(fb.values, [[0.5, 0.0, 0.0], [0.5, 0.0, 2.0]])
    np.testing.assert_array_equal(fb.defaults_used[:, 1:], [[True, True], [True, False]])


def test_build_features_errors_and_empty_window() -> None:
    with pytest.raises(ConfigError, match="unknown feature"):
        build_features([0.0], [0.0], None, ("relevance", "authority"))
    with pytest.raises(ConfigError, match="duplicate"):
        build_features([0.0], [0.0], None, ("relevance", "relevance"))
    with pytest.raises(ValueError, match="different lengths"):
        build_features([0.0, 1.0], [0.0], None, ("relevance",))
    assert build_features([], [], None, NAMES[:2]).shape == (0, 2)


def test_feature_names_for() -> None:
    assert feature_names_for(None) == ("relevance", "first_stage")
    assert feature_names_for(SCIFACT) == ("relevance", "first_stage", "authority", "freshness")


# --------------------------------------------------------------------------------------------
# linear blend
# --------------------------------------------------------------------------------------------


def test_linear_blend_hand_values_and_explanation() -> None:
    blend = LinearBlend({"relevance": 1.0, "authority": -0.5}, bias=0.25, feature_names=NAMES)
    assert isinstance(blend, Blend) and blend.kind == "linear"
    x = np.array([[0.5, 0.9, 1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(blend.score(x), [0.25, 1.25])
    (first, _) = blend.explain(x, defaults=[[False, False, True], [False, False, False]])
    assert first.base == 0.25
    assert first.contributions == {"relevance": 0.5, "first_stage": 0.0, "authority": -0.5}
    assert first.values == {"relevance": 0.5, "first_stage": 0.9, "authority": 1.0}
    assert first.defaults == ("authority",)
    as_dict = first.to_dict()
    assert as_dict["features"]["authority"] == {"value": 1.0, "contribution": -0.5}
    assert json.loads(json.dumps(as_dict)) == as_dict


@pytest.mark.parametrize(
    ("weights", "names", "message"),
    [
        ({"relevance": 0.0, "authority": 0.0}, NAMES, "all zero"),
        ({}, NAMES, "at least one"),
        ({"popularity": 1.0}, NAMES, "unknown feature"),
        ({"relevance": math.nan}, NAMES, "finite"),
        ({"relevance": 1e12}, NAMES, "finite"),
        ({"relevance": "1"}, NAMES, "number"),
        ({"relevance": 1.0}, ("relevance", "relevance"), "duplicate"),
    ],
)
def test_linear_blend_config_errors(
    weights: dict[str, Any], names: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        LinearBlend(weights, feature_names=names)


def test_parse_weights() -> None:
    blend = parse_weights(" relevance = 1 , authority=0.2 ,bias=-0.5")
    assert blend.feature_names == ("relevance", "authority")
    assert blend.weights == {"relevance": 1.0, "authority": 0.2} and blend.bias == -0.5
    assert blend.describe() == "relevance=1,authority=0.2,bias=-0.5"
    full = parse_weights("authority=0.2,relevance=1", NAMES)
    assert full.feature_names == NAMES
    np.testing.assert_allclose(full.score([[1.0, 1.0, 1.0]]), [1.2])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("relevance", "expected name=number"),
        ("relevance=", "expected name=number"),
        ("=1", "expected name=number"),
        ("relevance=1,,authority=2", "expected name=number"),
        ("relevance=abc", "not a number"),
        ("relevance=1,relevance=2", "twice"),
        ("bias=0,bias=0,relevance=1", "twice"),
        ("relevance=nan", "finite"),
        ("relevance=inf", "finite"),
        ("relevance=0,authority=0", "all zero"),
        ("bias=1", "only a bias"),
        ("popularity=1", "unknown blend feature"),
        ("relevance=1,bad name=2", "identifier"),
    ],
)
def test_parse_weights_errors(text: str, message: str) -> None:
    names = NAMES if "popularity" in text else None
    with pytest.raises(ConfigError, match=message):
        parse_weights(text, names)


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def linear_case(draw: st.DrawFn) -> tuple[LinearBlend, npt.NDArray[np.float64]]:
    d = draw(st.integers(1, 6))
    names = tuple(f"f{i}" for i in range(d))
    weights = draw(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=d, max_size=d).filter(any)
    )
    bias = draw(st.floats(-1e3, 1e3, allow_nan=False))
    x = draw(hnp.arrays(np.float64, (draw(st.integers(0, 8)), d), elements=finite_or_not))
    return LinearBlend(dict(zip(names, weights, strict=True)), bias=bias, feature_names=names), x


@settings(max_examples=80, deadline=None)
@given(linear_case())
def test_linear_contributions_sum_to_score(case: tuple[LinearBlend, Any]) -> None:
    blend, x = case
    scores = blend.score(x)
    assert scores.shape == (x.shape[0],) and np.isfinite(scores).all()
    for score, explanation in zip(scores, blend.explain(x), strict=True):
        total = explanation.base + math.fsum(explanation.contributions.values())
        assert math.isfinite(total)
        assert total == pytest.approx(score, rel=1e-9, abs=1e-6)
        assert explanation.score == score


# --------------------------------------------------------------------------------------------
# learning on synthetic data: relevance is noisy, authority is informative
# --------------------------------------------------------------------------------------------


def synthetic(
    n_queries: int, seed: int, width: int = 20
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    labels = np.zeros((n_queries, width))
    for q in range(n_queries):
        labels[q, rng.choice(width, size=2, replace=False)] = [2.0, 1.0]
    logits = labels + rng.normal(0.0, 1.5, labels.shape)
    authority = 0.3 * labels + rng.normal(0.0, 0.2, labels.shape)
    first_stage = rng.normal(0.0, 1.0, labels.shape)
    rows = [
        build_features(
            logits[q], first_stage[q], FeatureBatch(authority[q][:, None], ("authority",)), NAMES
        )
        for q in range(n_queries)
    ]
    return np.vstack(rows), labels.ravel(), np.full(n_queries, width, dtype=np.int64)


def test_ndcg_and_group_sizes_hand_values() -> None:
    assert ndcg_at_k([1.0, 0.0], [0, 1], [2]) == pytest.approx(1 / math.log2(3))
    # second group has no relevant row: left out of the mean
    assert ndcg_at_k([0.0, 1.0, 5.0, 4.0], [0, 1, 0, 0], [2, 2]) == pytest.approx(1.0)
    # ties keep row order
    assert ndcg_at_k([0.0, 0.0], [0, 3], [2]) == pytest.approx(7 / math.log2(3) / 7)
    np.testing.assert_array_equal(group_sizes(["a", "a", "b", "c", "c", "c"]), [2, 1, 3])
    with pytest.raises(ValueError, match="contiguous"):
        group_sizes(["a", "b", "a"])
    with pytest.raises(ValueError, match="sum"):
        ndcg_at_k([0.0, 1.0], [0, 1], [3])


def test_fit_linear_beats_relevance_only_and_zero_or_random_weights() -> None:
    x_train, y_train, g_train = synthetic(60, seed=1)
    x_test, y_test, g_test = synthetic(60, seed=2)
    blend = fit_linear(x_train, y_train, g_train, NAMES)
    assert blend.feature_names == NAMES and blend.weights["authority"] > 0
    assert math.fsum(abs(w) for w in blend.weights.values()) == pytest.approx(1.0)
    learned = ndcg_at_k(blend.score(x_test), y_test, g_test)
    relevance_only = ndcg_at_k(x_test[:, 0], y_test, g_test)
    zero = ndcg_at_k(np.zeros(len(y_test)), y_test, g_test)
    rng = np.random.default_rng(0)
    random = ndcg_at_k(x_test @ rng.uniform(-1, 1, 3), y_test, g_test)
    assert learned > relevance_only + 0.05
    assert learned > max(zero, random) + 0.05
    assert fit_linear(x_train, y_train, g_train, NAMES) == blend  # seeded: deterministic


@cache
def trained_lambdamart() -> LambdaMartBlend:
    x_train, y_train, g_train = synthetic(40, seed=3)
    x_dev, y_dev, g_dev = synthetic(20, seed=4)
    return fit_lambdamart(
        x_train, y_train, g_train, x_dev, y_dev, g_dev, NAMES, {"min_data_in_leaf": 10}
    )


def test_fit_lambdamart_beats_relevance_only_and_is_deterministic() -> None:
    blend = trained_lambdamart()
    assert isinstance(blend, Blend) and blend.kind == "lambdamart"
    assert blend.feature_names == NAMES
    x_test, y_test, g_test = synthetic(60, seed=5)
    learned = ndcg_at_k(blend.score(x_test), y_test, g_test)
    relevance_only = ndcg_at_k(x_test[:, 0], y_test, g_test)
    assert learned > relevance_only + 0.05
    trained_lambdamart.cache_clear()
    assert trained_lambdamart().model_string() == blend.model_string()


def test_fit_lambdamart_refuses_non_integer_labels() -> None:
    x, y, g = synthetic(4, seed=6)
    with pytest.raises(ConfigError, match="integer"):
        fit_lambdamart(x, y + 0.5, g, None, None, None, NAMES, num_boost_round=2)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(0, 8), st.just(3)), elements=finite_or_not))
def test_lambdamart_contributions_sum_to_score(x: npt.NDArray[np.float64]) -> None:
    blend = trained_lambdamart()
    scores = blend.score(x)
    assert scores.shape == (x.shape[0],) and np.isfinite(scores).all()
    for score, explanation in zip(scores, blend.explain(x), strict=True):
        total = explanation.base + math.fsum(explanation.contributions.values())
        assert total == pytest.approx(score, rel=1e-9, abs=1e-9)
        assert set(explanation.contributions) == set(NAMES)


# --------------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    x, _, _ = synthetic(3, seed=7)
    linear = LinearBlend({"relevance": 1.0, "authority": 0.2}, bias=0.1, feature_names=NAMES)
    for blend in (linear, trained_lambdamart()):
        path = save_blend(blend, tmp_path / f"{blend.kind}.json", card={"data": "synthetic"})
        loaded = load_blend(path, NAMES)
        assert loaded.kind == blend.kind and loaded.feature_names == NAMES
        np.testing.assert_allclose(loaded.score(x), blend.score(x), rtol=1e-12)
        assert blend_version(loaded) == blend_version(blend)
        assert read_blend_card(path) == {"data": "synthetic"}
    folder = tmp_path / "model"
    folder.mkdir()
    assert save_blend(linear, folder, card={}) == folder / "blend.json"
    assert load_blend(folder, NAMES) == linear


def test_load_refuses_another_feature_set(tmp_path: Path) -> None:
    path = save_blend(trained_lambdamart(), tmp_path / "m.json", card={})
    for expected in (("relevance", "first_stage"), ("first_stage", "relevance", "authority")):
        with pytest.raises(ModelError, match="another feature set"):
            load_blend(path, expected)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read"),
        ('{"kind": "linear"}', "not a reranker blend"),
        (
            '{"format": "reranker-blend", "format_version": 99, "feature_names": ["relevance"]}',
            "format version",
        ),
        (
            '{"format": "reranker-blend", "format_version": 1, "kind": "forest",'
            ' "feature_names": ["relevance"]}',
            "unknown blend kind",
        ),
        (
            '{"format": "reranker-blend", "format_version": 1, "kind": "linear",'
            ' "feature_names": ["relevance"], "weights": {"relevance": 0}}',
            "all zero",
        ),
        (
            '{"format": "reranker-blend", "format_version": 1, "kind": "lambdamart",'
            ' "feature_names": ["relevance"], "model": "garbage"}',
            "not a LightGBM model",
        ),
    ],
)
def test_load_refuses_malformed_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "blend.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ModelError, match=message):
        load_blend(path, ["relevance"])
    with pytest.raises(ModelError, match="no blend model"):
        load_blend(tmp_path / "missing.json", ["relevance"])


def test_model_string_must_match_its_feature_names() -> None:
    data = trained_lambdamart().to_dict()
    data["feature_names"] = ["relevance", "first_stage", "popularity"]
    with pytest.raises(ModelError, match="differ"):
        blend_from_dict(data)


def test_card_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="card"):
        save_blend(parse_weights("relevance=1"), tmp_path / "b.json", card={"x": object()})
    assert not list(tmp_path.iterdir())
