"""The final score: relevance blended with first-stage and document signals, explainable per hit.

Features of a candidate, by name (:func:`~reranker.blend.features.feature_names_for` gives the
canonical order):

* ``relevance`` — the cross-encoder logit through a sigmoid, in [0, 1];
* ``first_stage`` — the first-stage score min-max normalised *within the window* (all equal →
  1.0), in [0, 1]. Being window-relative, it must be logged for training with the same window
  size it will be served with;
* every signal of the :class:`~reranker.blend.signals.SignalConfig`, by its name.

Non-finite inputs (a NaN/inf logit or first-stage score) become that feature's default, 0.0,
and are flagged in the returned :class:`~reranker.blend.signals.FeatureBatch`'s ``defaults_used``.
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
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast, runtime_checkable

import numpy as np
import numpy.typing as npt

from reranker.blend.features import MAX_WEIGHT, FloatArray, check_names, sanitize
from reranker.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import lightgbm

FORMAT = "reranker-blend"
FORMAT_VERSION = 1
BLEND_FILE = "blend.json"


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
        weights = {str(k): finite_weight(k, v) for k, v in self.weights.items()}
        names = tuple(self.feature_names) or tuple(weights)
        check_names(names)
        unknown = [name for name in weights if name not in names]
        if unknown:
            raise ConfigError(
                f"weight(s) for unknown feature(s) {', '.join(unknown)}; known: {', '.join(names)}"
            )
        if not any(weights.values()):
            raise ConfigError("blend weights are all zero: every candidate would tie")
        bias = finite_weight("bias", self.bias)
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


def finite_weight(name: object, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ConfigError(f"weight of {name!r} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or abs(number) > MAX_WEIGHT:
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
            bias = finite_weight("bias", value)
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


def lightgbm_module() -> Any:
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
        check_names(names)
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
        lgb = lightgbm_module()
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
