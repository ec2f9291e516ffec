"""The final score: relevance blended with first-stage and document signals, explainable per hit.

Features of a candidate, by name (:func:`feature_names_for` gives the canonical order):

* ``relevance`` — the cross-encoder logit through a sigmoid, in [0, 1];
* ``first_stage`` — the first-stage score min-max normalised *within the window* (all equal →
  1.0), in [0, 1]. Being window-relative, it must be logged for training with the same window
  size it will be served with;
* every signal of the :class:`~reranker.signals.SignalConfig`, by its name.

Non-finite inputs (a NaN/inf logit or first-stage score) become that feature's default, 0.0,
and are flagged in the returned :class:`~reranker.signals.FeatureBatch`'s ``defaults_used``.
Blends also sanitise what they are given: non-finite features → 0.0 and values clipped to
±1e9, so a score is always finite.

Two blends behind one :class:`Blend` protocol:

* :class:`LinearBlend` — ``score = bias + Σ wᵢ·xᵢ``; contribution of feature i is ``wᵢ·xᵢ``,
  the base is ``bias``. Negative weights are allowed (penalise a feature, e.g. length).
* :class:`LambdaMartBlend` — a LightGBM ``lambdarank`` booster; the score is the raw margin and
  contributions are the booster's exact TreeSHAP values (``pred_contrib``), the base its
  expected value.

In both, ``base + Σ contributions == score`` to float precision. A blend is stored as one JSON
file (:func:`save_blend` / :func:`load_blend`) with its kind, feature names and a free-form card.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast, runtime_checkable

import numpy as np
import numpy.typing as npt

from reranker.errors import ConfigError, ModelError
from reranker.numeric import sigmoid
from reranker.signals import FeatureBatch, SignalConfig

if TYPE_CHECKING:
    import lightgbm

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

RELEVANCE = "relevance"
FIRST_STAGE = "first_stage"
BASE_FEATURES: tuple[str, ...] = (RELEVANCE, FIRST_STAGE)

FORMAT = "reranker-blend"
FORMAT_VERSION = 1
BLEND_FILE = "blend.json"

_CLIP = 1e9  # features are clipped to ±_CLIP
_MAX_WEIGHT = 1e9  # |weight|, |bias| ≤ this: with clipped features every score is finite
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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
    _check_names(names)
    n = _window_length(relevance_logits, first_stage_scores, signal_batch)
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


def _window_length(*arrays: npt.ArrayLike | FeatureBatch | None) -> int:
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


def _check_names(names: Sequence[str]) -> None:
    if not names:
        raise ConfigError("a blend needs at least one feature")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not _NAME.match(name):
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
    return np.clip(x, -_CLIP, _CLIP)


# ---------------------------------------------------------------------------------------------
# Explanations and the protocol
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """One candidate's score decomposed: ``base + Σ contributions[name] == score``."""

    score: float
    base: float
    values: dict[str, float]
    contributions: dict[str, float]
    defaults: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"score", "base", "features": {name: {"value", "contribution"}},
        "defaults": [names that fell back to their default]}``."""
        return {
            "score": self.score,
            "base": self.base,
            "features": {
                name: {"value": self.values[name], "contribution": self.contributions[name]}
                for name in self.values
            },
            "defaults": list(self.defaults),
        }


@runtime_checkable
class Blend(Protocol):
    """What the pipeline needs from a blend. ``features`` columns follow ``feature_names``."""

    @property
    def kind(self) -> str: ...

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    def score(self, features: npt.ArrayLike) -> FloatArray: ...

    def explain(
        self, features: npt.ArrayLike, *, defaults: npt.ArrayLike | None = None
    ) -> list[Explanation]: ...

    def to_dict(self) -> dict[str, Any]: ...


def _explanations(
    names: tuple[str, ...],
    x: FloatArray,
    contributions: FloatArray,
    base: FloatArray,
    scores: FloatArray,
    defaults: npt.ArrayLike | None,
) -> list[Explanation]:
    flags = np.zeros(x.shape, dtype=bool) if defaults is None else np.asarray(defaults, dtype=bool)
    if flags.shape != x.shape:
        raise ValueError(f"defaults must have shape {x.shape}, got {flags.shape}")
    out: list[Explanation] = []
    for i in range(x.shape[0]):
        out.append(
            Explanation(
                score=float(scores[i]),
                base=float(base[i]),
                values=dict(zip(names, x[i].tolist(), strict=True)),
                contributions=dict(zip(names, contributions[i].tolist(), strict=True)),
                defaults=tuple(name for name, flag in zip(names, flags[i], strict=True) if flag),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Linear blend
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearBlend:
    """``score = bias + Σ weights[name] · x[name]``.

    ``feature_names`` is the column order of the matrices it scores (default: the keys of
    ``weights``); a feature without a weight gets weight 0 (``weights`` is completed with it,
    and explanations show it with contribution 0). Refused with ConfigError: a weight for a
    name not in ``feature_names``, all-zero weights, non-finite or |w| > 1e9 values. Negative
    weights are allowed (they penalise a feature).
    """

    weights: dict[str, float]
    bias: float = 0.0
    feature_names: tuple[str, ...] = ()
    kind: ClassVar[str] = "linear"
    _w: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.weights, Mapping) or not self.weights:
            raise ConfigError("a linear blend needs at least one weight")
        weights = {str(k): _finite_weight(k, v) for k, v in self.weights.items()}
        names = tuple(self.feature_names) or tuple(weights)
        _check_names(names)
        unknown = [name for name in weights if name not in names]
        if unknown:
            raise ConfigError(
                f"weight(s) for unknown feature(s) {', '.join(unknown)}; known: {', '.join(names)}"
            )
        if not any(weights.values()):
            raise ConfigError("blend weights are all zero: every candidate would tie")
        bias = _finite_weight("bias", self.bias)
        weights = {name: weights.get(name, 0.0) for name in names}
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "feature_names", names)
        object.__setattr__(
            self, "_w", np.array([weights.get(n, 0.0) for n in names], dtype=np.float64)
        )

    def _contributions(self, features: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        x = sanitize(features, len(self.feature_names))
        return x, x * self._w

    def score(self, features: npt.ArrayLike) -> FloatArray:
        _, contributions = self._contributions(features)
        return cast(FloatArray, self.bias + contributions.sum(axis=1))

    def explain(
        self, features: npt.ArrayLike, *, defaults: npt.ArrayLike | None = None
    ) -> list[Explanation]:
        x, contributions = self._contributions(features)
        scores = self.bias + contributions.sum(axis=1)
        base = np.full(x.shape[0], self.bias)
        return _explanations(self.feature_names, x, contributions, base, scores, defaults)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "feature_names": list(self.feature_names),
            "weights": dict(self.weights),
            "bias": self.bias,
        }

    def describe(self) -> str:
        """``relevance=1,authority=0.2`` (the :func:`parse_weights` syntax), zero weights left
        out, then ``bias=`` if set."""
        parts = [f"{n}={self.weights[n]:g}" for n in self.feature_names if self.weights.get(n)]
        if self.bias:
            parts.append(f"bias={self.bias:g}")
        return ",".join(parts)


def _finite_weight(name: object, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ConfigError(f"weight of {name!r} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or abs(number) > _MAX_WEIGHT:
        raise ConfigError(f"weight of {name!r} must be finite and at most 1e9 in size")
    return number


def parse_weights(text: str, names: Sequence[str] | None = None) -> LinearBlend:
    """``"relevance=1, authority=0.2"`` → :class:`LinearBlend`. ``bias=`` sets the bias.

    With ``names`` (e.g. :func:`feature_names_for`), a name outside it is an error and the
    blend's ``feature_names`` is ``names`` (unmentioned features weigh 0); without, the blend
    reads just the named features, in the order written.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("blend weights are empty; expected e.g. 'relevance=1,authority=0.2'")
    weights: dict[str, float] = {}
    bias = 0.0
    seen: set[str] = set()
    for item in text.split(","):
        item = item.strip()
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise ConfigError(
                f"bad blend weight {item!r}: expected name=number, e.g. 'relevance=1,authority=0.2'"
            )
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"bad blend weight {item!r}: {raw!r} is not a number") from None
        if key in seen:
            raise ConfigError(f"blend weight {key!r} given twice")
        seen.add(key)
        if key == "bias":
            bias = _finite_weight("bias", value)
            continue
        if names is not None and key not in names:
            raise ConfigError(f"unknown blend feature {key!r}; known: {', '.join(names)}")
        weights[key] = value
    if not weights:
        raise ConfigError("blend weights name no feature, only a bias")
    return LinearBlend(weights=weights, bias=bias, feature_names=tuple(names or ()))


# ---------------------------------------------------------------------------------------------
# LambdaMART blend
# ---------------------------------------------------------------------------------------------


def _lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelError("LambdaMART blends need lightgbm (pip install 'lightgbm>=4')") from exc
    return lightgbm


class LambdaMartBlend:
    """A LightGBM booster over ``feature_names``; the score is its raw margin."""

    kind: ClassVar[str] = "lambdamart"

    def __init__(self, booster: lightgbm.Booster, feature_names: Sequence[str] | None = None):
        names = tuple(feature_names) if feature_names is not None else tuple(booster.feature_name())
        _check_names(names)
        if booster.num_feature() != len(names):
            raise ModelError(
                f"the booster reads {booster.num_feature()} features, {len(names)} names given"
            )
        self.booster = booster
        self._names = names

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._names

    @classmethod
    def from_model_string(cls, model: str, feature_names: Sequence[str]) -> LambdaMartBlend:
        lgb = _lightgbm()
        try:
            booster = lgb.Booster(model_str=model)
        except Exception as exc:  # lightgbm raises LightGBMError (and others) on bad text
            raise ModelError(f"not a LightGBM model: {exc}") from exc
        stored = tuple(booster.feature_name())
        if stored != tuple(feature_names):
            raise ModelError(
                f"the LightGBM model's features {list(stored)} differ from its file's "
                f"feature_names {list(feature_names)}"
            )
        return cls(booster, feature_names)

    def score(self, features: npt.ArrayLike) -> FloatArray:
        x = sanitize(features, len(self._names))
        if x.shape[0] == 0:
            return np.zeros(0)
        raw = np.asarray(self.booster.predict(x, raw_score=True), dtype=np.float64)
        return np.where(np.isfinite(raw), raw, 0.0)

    def explain(
        self, features: npt.ArrayLike, *, defaults: npt.ArrayLike | None = None
    ) -> list[Explanation]:
        x = sanitize(features, len(self._names))
        if x.shape[0] == 0:
            return []
        contrib = np.asarray(self.booster.predict(x, pred_contrib=True), dtype=np.float64)
        contrib = contrib.reshape(x.shape[0], len(self._names) + 1)
        parts, base = contrib[:, :-1], contrib[:, -1]
        scores = base + parts.sum(axis=1)
        return _explanations(self._names, x, parts, base, scores, defaults)

    def model_string(self) -> str:
        return str(self.booster.model_to_string())

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "feature_names": list(self._names),
            "num_trees": int(self.booster.num_trees()),
            "model": self.model_string(),
        }


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------


def group_sizes(query_ids: Sequence[Any]) -> IntArray:
    """Sizes of runs of equal consecutive query ids (rows must be grouped by query)."""
    sizes: list[int] = []
    seen: set[Any] = set()
    previous: Any = object()
    for qid in query_ids:
        if sizes and qid == previous:
            sizes[-1] += 1
            continue
        if qid in seen:
            raise ValueError(f"rows of query {qid!r} are not contiguous")
        seen.add(qid)
        sizes.append(1)
        previous = qid
    return np.array(sizes, dtype=np.int64)


def _check_groups(n: int, groups: npt.ArrayLike) -> IntArray:
    g = np.asarray(groups, dtype=np.int64).reshape(-1)
    if (g <= 0).any() or int(g.sum()) != n:
        raise ValueError(f"group sizes must be positive and sum to the {n} rows")
    return g


class _Padded:
    """Rows grouped by query as a padded (G, L, d) tensor, for fast vectorised NDCG."""

    def __init__(self, x: FloatArray, y: FloatArray, groups: IntArray, k: int) -> None:
        n_groups, width = len(groups), int(groups.max()) if len(groups) else 0
        starts = np.concatenate([[0], np.cumsum(groups)[:-1]]).astype(np.int64)
        self.mask = np.arange(width)[None, :] < groups[:, None]
        rows = np.where(self.mask, starts[:, None] + np.arange(width)[None, :], 0)
        self.x = np.where(self.mask[..., None], x[rows], 0.0)
        self.gain = np.where(self.mask, np.exp2(y[rows]) - 1.0, 0.0)
        self.k = k
        self.discount = 1.0 / np.log2(np.arange(2, min(k, width) + 2))
        ideal = -np.sort(-self.gain, axis=1)[:, : len(self.discount)]
        self.idcg = ideal @ self.discount
        self.valid = self.idcg > 0
        self.n_groups = n_groups

    def ndcg(self, scores: FloatArray) -> float:
        """Mean NDCG@k over groups with at least one relevant row; ties keep row order."""
        if not self.valid.any():
            return 0.0
        s = np.where(self.mask, scores, -np.inf)
        order = np.argsort(-s, axis=1, kind="stable")[:, : len(self.discount)]
        gains = np.take_along_axis(self.gain, order, axis=1)
        dcg = gains @ self.discount
        return float(np.mean(dcg[self.valid] / self.idcg[self.valid]))

    def linear_scores(self, w: FloatArray) -> FloatArray:
        return cast(FloatArray, self.x @ w)


def ndcg_at_k(
    scores: npt.ArrayLike, labels: npt.ArrayLike, groups: npt.ArrayLike, k: int = 10
) -> float:
    """Mean NDCG@k (gain 2^label − 1, log2 discount) over the groups that have a relevant row.

    Rows are grouped by query in consecutive runs of the given sizes; ties keep row order.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    g = _check_groups(len(s), groups)
    if len(y) != len(s):
        raise ValueError("scores and labels differ in length")
    if len(s) == 0:
        return 0.0
    padded = _Padded(s[:, None], y, g, k)
    return padded.ndcg(padded.x[..., 0])


_STEPS = (0.002, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def fit_linear(
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    groups: npt.ArrayLike,
    names: Sequence[str],
    *,
    k: int = 10,
    max_passes: int = 25,
    restarts: int = 2,
    seed: int = 13,
) -> LinearBlend:
    """Weights that maximise mean NDCG@k on the training groups, by coordinate ascent
    (Metzler & Croft 2007).

    Columns are standardised first, so step sizes mean the same for every feature. Starts from
    relevance only (when ``relevance`` is a feature) plus ``restarts`` seeded random starts;
    each pass visits the coordinates in a seeded random order and, for each, keeps the best of
    ``w_j ± step`` over a fixed step grid if it raises NDCG. Stops when a pass gains nothing.
    The weights are mapped back to raw feature scale and L1-normalised (ranking is invariant to
    positive scaling and to the bias, which is 0). Deterministic for a given seed.
    """
    names = tuple(names)
    _check_names(names)
    x = np.asarray(X, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] != labels.shape[0]:
        raise ValueError(f"X must be (n, {len(names)}) with one label per row")
    g = _check_groups(x.shape[0], groups)
    x = sanitize(x, len(names))
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    padded = _Padded((x - mean) / std, labels, g, k)
    rng = np.random.default_rng(seed)
    d = len(names)

    starts: list[FloatArray] = []
    if RELEVANCE in names:
        start = np.zeros(d)
        start[names.index(RELEVANCE)] = 1.0
        starts.append(start)
    else:
        starts.append(np.ones(d) / d)
    for _ in range(restarts):
        start = rng.uniform(-1.0, 1.0, size=d)
        starts.append(start / np.abs(start).sum())

    best_w, best_score = starts[0], -1.0
    for start in starts:
        w = start.copy()
        score = padded.ndcg(padded.linear_scores(w))
        for _ in range(max_passes):
            improved = False
            for j in rng.permutation(d):
                for step in _STEPS:
                    for sign in (1.0, -1.0):
                        trial = w.copy()
                        trial[j] += sign * step
                        if not np.any(trial):
                            continue
                        value = padded.ndcg(padded.linear_scores(trial))
                        if value > score + 1e-12:
                            w, score, improved = trial, value, True
            if not improved:
                break
        if score > best_score + 1e-12:
            best_w, best_score = w, score

    raw = best_w / std
    total = float(np.abs(raw).sum())
    if total == 0 or not math.isfinite(total):  # cannot happen with a non-zero start
        raw, total = np.ones(d), float(d)
    raw = raw / total
    return LinearBlend(
        weights={name: float(v) for name, v in zip(names, raw, strict=True)},
        bias=0.0,
        feature_names=names,
    )


#: Defaults of :func:`fit_lambdamart`; ``params`` entries override them.
LAMBDAMART_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "learning_rate": 0.05,
    "num_leaves": 15,
    "max_depth": 6,
    "min_data_in_leaf": 20,
    "min_sum_hessian_in_leaf": 1e-3,
    "lambda_l2": 1.0,
    "feature_pre_filter": False,
    "seed": 13,
    "deterministic": True,
    "force_col_wise": True,
    "num_threads": 1,
    "verbose": -1,
}


def fit_lambdamart(
    X_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    groups_train: npt.ArrayLike,
    X_dev: npt.ArrayLike | None,
    y_dev: npt.ArrayLike | None,
    groups_dev: npt.ArrayLike | None,
    names: Sequence[str],
    params: Mapping[str, Any] | None = None,
    *,
    num_boost_round: int = 500,
    early_stopping_rounds: int = 50,
) -> LambdaMartBlend:
    """LightGBM LambdaMART (``lambdarank``) with early stopping on dev NDCG@10.

    Labels must be non-negative integer grades (ConfigError otherwise). Small trees, seeded,
    ``deterministic=True``, one thread (see :data:`LAMBDAMART_PARAMS`). Without a dev set it
    trains ``num_boost_round`` rounds. The returned booster holds only the best iteration.
    """
    lgb = _lightgbm()
    names = tuple(names)
    _check_names(names)
    x_train, labels_train, g_train = _ranking_set(X_train, y_train, groups_train, names, "train")
    merged = {**LAMBDAMART_PARAMS, **(params or {})}
    train = lgb.Dataset(x_train, label=labels_train, group=g_train, feature_name=list(names))
    valid_sets: list[Any] = []
    callbacks: list[Any] = []
    if X_dev is not None:
        if y_dev is None or groups_dev is None:
            raise ValueError("a dev set needs X, y and groups")
        x_dev, labels_dev, g_dev = _ranking_set(X_dev, y_dev, groups_dev, names, "dev")
        valid_sets.append(lgb.Dataset(x_dev, label=labels_dev, group=g_dev, reference=train))
        callbacks.append(
            lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False)
        )
    try:
        booster = lgb.train(
            merged,
            train,
            num_boost_round=num_boost_round,
            valid_sets=valid_sets,
            valid_names=["dev"] * len(valid_sets),
            callbacks=callbacks,
        )
    except lgb.basic.LightGBMError as exc:
        raise ConfigError(f"LightGBM refused the training set: {exc}") from exc
    best = booster.best_iteration if booster.best_iteration > 0 else -1
    trimmed = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return LambdaMartBlend(trimmed, names)


def _ranking_set(
    X: npt.ArrayLike, y: npt.ArrayLike, groups: npt.ArrayLike, names: tuple[str, ...], what: str
) -> tuple[FloatArray, IntArray, IntArray]:
    x = np.asarray(X, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] != labels.shape[0]:
        raise ValueError(f"{what}: X must be (n, {len(names)}) with one label per row")
    if x.shape[0] == 0:
        raise ConfigError(f"{what}: no rows to learn from")
    if not np.all(np.isfinite(labels)) or (labels < 0).any() or (labels % 1 != 0).any():
        raise ConfigError(f"{what}: labels must be non-negative integer grades")
    g = _check_groups(x.shape[0], groups)
    return sanitize(x, len(names)), labels.astype(np.int64), g


# ---------------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------------


def blend_from_dict(data: Mapping[str, Any]) -> Blend:
    """Inverse of ``blend.to_dict()``; ModelError for anything malformed."""
    kind = data.get("kind")
    names = data.get("feature_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelError("blend: 'feature_names' must be a list of strings")
    try:
        if kind == LinearBlend.kind:
            weights = data.get("weights")
            if not isinstance(weights, dict):
                raise ModelError("linear blend: 'weights' must be an object")
            return LinearBlend(
                weights=weights, bias=data.get("bias", 0.0), feature_names=tuple(names)
            )
        if kind == LambdaMartBlend.kind:
            model = data.get("model")
            if not isinstance(model, str):
                raise ModelError("lambdamart blend: 'model' must be the LightGBM model text")
            return LambdaMartBlend.from_model_string(model, names)
    except ConfigError as exc:
        raise ModelError(f"blend: {exc}") from exc
    raise ModelError(f"unknown blend kind {kind!r}; expected linear or lambdamart")


def blend_version(blend: Blend) -> str:
    """sha256[:12] of the blend's canonical JSON: a version id for responses and logs."""
    text = json.dumps(blend.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _blend_file(path: Path) -> Path:
    return path / BLEND_FILE if path.is_dir() else path


def save_blend(blend: Blend, path: Path, *, card: Mapping[str, Any]) -> Path:
    """Write the blend as one JSON file (into ``path/blend.json`` if ``path`` is a folder),
    atomically. Returns the file written. ``card`` is free-form JSON (data, split, metrics…)."""
    target = _blend_file(Path(path))
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **blend.to_dict(),
        "version": blend_version(blend),
        "card": dict(card),
    }
    try:
        text = json.dumps(document, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"blend card is not JSON-serialisable: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_blend_card(path: Path) -> dict[str, Any]:
    """The card of a saved blend, without building the model."""
    card = _read_document(_blend_file(Path(path))).get("card", {})
    return card if isinstance(card, dict) else {}


def _read_document(target: Path) -> dict[str, Any]:
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"no blend model at {target}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"blend model {target} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(f"{target} is not a reranker blend file")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{target}: blend format version {data.get('format_version')!r}, "
            f"this reranker reads {FORMAT_VERSION}"
        )
    return data


def load_blend(path: Path, expected_features: Sequence[str]) -> Blend:
    """Load a blend saved by :func:`save_blend`; ModelError if its feature names (in order)
    differ from ``expected_features`` — a model file from another feature set."""
    target = _blend_file(Path(path))
    data = _read_document(target)
    names = data.get("feature_names")
    expected = list(expected_features)
    if names != expected:
        raise ModelError(
            f"blend model {target} was fitted on features {names}, "
            f"but this configuration provides {expected}: a model file from another feature set"
        )
    return blend_from_dict(data)
