"""The blend's features of a window: relevance, first stage and signals, by name and sanitised."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from reranker.blend.signals import FeatureBatch, SignalConfig
from reranker.errors import ConfigError
from reranker.numeric import sigmoid

if TYPE_CHECKING:
    pass

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

RELEVANCE = "relevance"
FIRST_STAGE = "first_stage"
BASE_FEATURES: tuple[str, ...] = (RELEVANCE, FIRST_STAGE)

CLIP = 1e9  # features are clipped to ±CLIP
MAX_WEIGHT = 1e9  # |weight|, |bias| ≤ this: with clipped features every score is finite
FEATURE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


def feature_names_for(config: SignalConfig | None) -> tuple[str, ...]:
    """``("relevance", "first_stage", *signal names)``: the column order to log and fit with."""
    return BASE_FEATURES + (config.names if config is not None else ())


def minmax(x: npt.ArrayLike) -> FloatArray:
    """Min-max over the finite values to [0, 1]; all equal → 1.0; non-finite → 0.0."""
    v = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(v)
    finite = np.isfinite(v)
    if not finite.any():
        return out
    low, high = float(v[finite].min()), float(v[finite].max())
    if high == low:
        out[finite] = 1.0
    else:  # halved first, so that a span beyond float64 (-1e308 … 1e308) cannot overflow
        out[finite] = (v[finite] / 2 - low / 2) / (high / 2 - low / 2)
    return np.clip(out, 0.0, 1.0)


def build_feature_batch(
    relevance_logits: npt.ArrayLike | None,
    first_stage_scores: npt.ArrayLike | None,
    signal_batch: FeatureBatch | None,
    names: Sequence[str],
) -> FeatureBatch:
    """The blend's feature matrix for one window, columns in ``names`` order, with flags.

    ``relevance = sigmoid(logit)``; ``first_stage = minmax(score)`` within the window. A None
    array (e.g. no first stage score) or a non-finite entry gives 0.0, flagged as a default.
    Unknown or duplicate names → ConfigError; arrays of different lengths → ValueError.
    """
    names = tuple(names)
    check_names(names)
    n = window_length(relevance_logits, first_stage_scores, signal_batch)
    columns: dict[str, tuple[FloatArray, npt.NDArray[np.bool_]]] = {}
    if relevance_logits is not None:
        logits = np.asarray(relevance_logits, dtype=np.float64).reshape(-1)
        bad = ~np.isfinite(logits)
        columns[RELEVANCE] = (np.where(bad, 0.0, sigmoid(np.where(bad, 0.0, logits))), bad)
    else:
        columns[RELEVANCE] = (np.zeros(n), np.ones(n, dtype=bool))
    if first_stage_scores is not None:
        scores = np.asarray(first_stage_scores, dtype=np.float64).reshape(-1)
        columns[FIRST_STAGE] = (minmax(scores), ~np.isfinite(scores))
    else:
        columns[FIRST_STAGE] = (np.zeros(n), np.ones(n, dtype=bool))
    available = {*BASE_FEATURES, *(signal_batch.names if signal_batch is not None else ())}
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ConfigError(
            f"unknown feature(s) {', '.join(unknown)}; available: {', '.join(sorted(available))}"
        )
    values = np.zeros((n, len(names)), dtype=np.float64)
    used = np.zeros((n, len(names)), dtype=bool)
    for j, name in enumerate(names):
        if name in columns:
            values[:, j], used[:, j] = columns[name]
        else:
            assert signal_batch is not None
            k = signal_batch.names.index(name)
            column = signal_batch.values[:, k]
            bad = ~np.isfinite(column)
            values[:, j] = np.where(bad, 0.0, column)
            used[:, j] = signal_batch.defaults_used[:, k] | bad
    return FeatureBatch(values=values, names=names, defaults_used=used)


def build_features(
    relevance_logits: npt.ArrayLike | None,
    first_stage_scores: npt.ArrayLike | None,
    signal_batch: FeatureBatch | None,
    names: Sequence[str],
) -> FloatArray:
    """:func:`build_feature_batch` without the flags: an ``(n, len(names))`` float64 matrix."""
    return build_feature_batch(relevance_logits, first_stage_scores, signal_batch, names).values


def window_length(*arrays: npt.ArrayLike | FeatureBatch | None) -> int:
    lengths = set()
    for array in arrays:
        if array is None:
            continue
        if isinstance(array, FeatureBatch):
            lengths.add(len(array))
        else:
            lengths.add(int(np.asarray(array).reshape(-1).shape[0]))
    if len(lengths) > 1:
        raise ValueError(f"feature inputs of different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def check_names(names: Sequence[str]) -> None:
    if not names:
        raise ConfigError("a blend needs at least one feature")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not FEATURE_NAME.match(name):
            raise ConfigError(f"feature name {name!r} must be an identifier")
        if name == "bias":
            raise ConfigError("'bias' is not a feature name")
        if name in seen:
            raise ConfigError(f"duplicate feature name {name!r}")
        seen.add(name)


def sanitize(features: npt.ArrayLike, n_features: int) -> FloatArray:
    """A float64 ``(n, n_features)`` copy with non-finite → 0.0 and values clipped to ±1e9."""
    x = np.asarray(features, dtype=np.float64)
    if x.size == 0:
        x = x.reshape(0, n_features)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"features must have shape (n, {n_features}), got {x.shape}")
    x = np.where(np.isfinite(x), x, 0.0)
    return np.clip(x, -CLIP, CLIP)
