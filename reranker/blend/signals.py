"""Per-document ranking signals (authority, freshness, popularity) from ``_source`` fields.

A :class:`SignalConfig` names a few :class:`SignalSpec` objects; :func:`extract` turns a window of
``_source`` documents into a ``(n_docs, n_signals)`` float64 matrix that the blend reads next to
the cross-encoder's relevance. Everything here is pure: no Elasticsearch, no clock unless a
decay's reference is ``"now"`` and no ``now`` is passed.

Transforms (each a small vectorised function below)::

    log1p        log(1 + max(x, 0))                      counts: reputation, views, citations
    saturation   max(x, 0) / (max(x, 0) + pivot)          in [0, 1); 0.5 at x = pivot
    exp_decay    exp(-ln2 · age_days / half_life_days)   1 when new, 0.5 at one half-life
    gauss_decay  exp(-ln2 · (age_days / scale_days)²)    Elasticsearch-style gauss, 0.5 at scale
    identity     x                                        as stored (bools → 1.0 / 0.0)

Rules for bad input (never NaN, never an exception for a document):

* a missing field, ``None``, a non-numeric string (``"abc"``), a non-finite number, a value of
  the wrong type, or a date that does not parse → the spec's ``default`` (a *feature* value, i.e.
  after the transform), and ``defaults_used`` is True for that cell. ``"12"`` parses as 12.
* negative values are clamped to 0 before ``log1p`` and ``saturation`` (a count cannot be
  negative; a negative Stack Exchange ``Score`` counts as no popularity). This is not a default.
* a date after the reference (clock skew, a future ``published_at``) has age 0 → freshness 1.
* a decay whose reference is a ``_source`` field that is missing or unparseable → default.

Dates (``date_format="auto"``, the default) accept:

* ISO-8601 strings with or without a time, fraction and zone (``2014-01-21``,
  ``2014-01-21T20:31:18.540``, ``...Z``, ``...+02:00``), ``YYYY-MM`` (first of the month) and
  ``YYYY`` (January 1);
* a bare year as an integer 1…9999 (SciFact's ``"year": 1998`` → 1998-01-01);
* other numbers as Unix epoch seconds, or epoch milliseconds when ``abs(x) >= 1e11``;
* :class:`datetime.datetime` / :class:`datetime.date` objects.

Times without a zone are taken as UTC. ``date_format`` may instead be ``"iso"``, ``"year"``,
``"epoch_s"``, ``"epoch_ms"`` or a :func:`~datetime.datetime.strptime` pattern (contains ``%``).
A decay's ``reference`` is ``"now"`` (default; the ``now`` argument of :func:`extract`, else the
wall clock), a fixed date (anything starting with a digit must parse as one, with the auto
rules), or a dotted ``_source`` field holding each document's own reference time (Stack
Exchange: ``signals.dump_date``, since every site has its own dump date); reference values are
parsed with the auto rules.

Saturation pivots may be left ``None`` in a config and estimated with :func:`fit_pivots`
(median of the positive values); :func:`extract` refuses a config with an unfitted pivot.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np
import numpy.typing as npt

from reranker.errors import ConfigError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

Transform = Literal["log1p", "saturation", "exp_decay", "gauss_decay", "identity"]
TRANSFORMS: tuple[Transform, ...] = get_args(Transform)
DECAYS: frozenset[str] = frozenset({"exp_decay", "gauss_decay"})
DATE_FORMATS: tuple[str, ...] = ("auto", "iso", "year", "epoch_s", "epoch_ms")

#: Feature names the blend defines itself; a signal may not take them.
RESERVED_NAMES: frozenset[str] = frozenset({"relevance", "first_stage", "bias"})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LN2 = math.log(2.0)
_SECONDS_PER_DAY = 86_400.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_MS_THRESHOLD = 1e11  # |x| ≥ 1e11 → milliseconds (1e11 s would be the year 5138)


# ---------------------------------------------------------------------------------------------
# Transforms: small pure functions over arrays
# ---------------------------------------------------------------------------------------------


def log1p(x: npt.ArrayLike) -> FloatArray:
    """``log(1 + max(x, 0))``."""
    return np.log1p(np.maximum(np.asarray(x, dtype=np.float64), 0.0))


def saturation(x: npt.ArrayLike, pivot: float) -> FloatArray:
    """``max(x, 0) / (max(x, 0) + pivot)``: 0 at 0, 0.5 at the pivot, → 1 for large x."""
    if not (math.isfinite(pivot) and pivot > 0):
        raise ValueError(f"saturation pivot must be finite and > 0, got {pivot!r}")
    v = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    return v / (v + pivot)


def exp_decay(age_days: npt.ArrayLike, half_life_days: float) -> FloatArray:
    """``exp(-ln2 · max(age, 0) / half_life)``: 1 at age 0, 0.5 at one half-life."""
    if not (math.isfinite(half_life_days) and half_life_days > 0):
        raise ValueError(f"half_life_days must be finite and > 0, got {half_life_days!r}")
    age = np.maximum(np.asarray(age_days, dtype=np.float64), 0.0)
    return np.exp(-_LN2 * age / half_life_days)


def gauss_decay(age_days: npt.ArrayLike, scale_days: float) -> FloatArray:
    """``exp(-ln2 · (max(age, 0) / scale)²)``: 1 at age 0, 0.5 at ``scale`` (as ES ``gauss``
    with offset 0 and decay 0.5)."""
    if not (math.isfinite(scale_days) and scale_days > 0):
        raise ValueError(f"scale_days must be finite and > 0, got {scale_days!r}")
    age = np.maximum(np.asarray(age_days, dtype=np.float64), 0.0)
    return np.exp(-_LN2 * np.square(age / scale_days))


def identity(x: npt.ArrayLike) -> FloatArray:
    """The value as stored."""
    return np.asarray(x, dtype=np.float64).copy()


# ---------------------------------------------------------------------------------------------
# Parsing helpers (pure; None means "could not use this value")
# ---------------------------------------------------------------------------------------------


def get_path(source: Any, path: str) -> Any:
    """The value at a dotted path of a ``_source`` mapping, or None.

    A key that itself contains dots (``{"signals.citations": 3}``, as some flattened sources
    have) is found too: at each level the longest matching key wins.
    """
    node = source
    parts = path.split(".")
    i = 0
    while i < len(parts):
        if not isinstance(node, Mapping):
            return None
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in node:
                node = node[key]
                i = j
                break
        else:
            return None
    return node


def to_number(value: Any) -> float | None:
    """A finite float from a number, a bool (1/0) or a numeric string; else None."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except (OverflowError, ValueError, TypeError):
            return None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except (OverflowError, ValueError):
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def parse_time(value: Any, date_format: str = "auto") -> datetime | None:
    """A timezone-aware UTC instant from a field value (see the module doc), or None."""
    try:
        return _parse_time(value, date_format)
    except (ValueError, OverflowError, OSError, TypeError):
        return None


def _parse_time(value: Any, date_format: str) -> datetime | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if date_format == "auto":
        if isinstance(value, str):
            return _parse_time_string(value.strip())
        number = to_number(value)
        return None if number is None else _from_number(number)
    if date_format == "iso":
        return _parse_iso(value.strip()) if isinstance(value, str) else None
    if date_format in ("year", "epoch_s", "epoch_ms"):
        number = to_number(value)
        if number is None:
            return None
        if date_format == "year":
            return _from_year(number)
        seconds = number / 1000.0 if date_format == "epoch_ms" else number
        return _EPOCH + timedelta(seconds=seconds)
    if isinstance(value, str):  # a strptime pattern
        return _utc(datetime.strptime(value.strip(), date_format))
    return None


_YEAR = re.compile(r"\d{4}\Z")
_YEAR_MONTH = re.compile(r"(\d{4})-(\d{2})\Z")
_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?\Z")


@lru_cache(maxsize=4096)
def _parse_time_string(text: str) -> datetime | None:
    # Cached: per-site reference dates (dump_date) repeat on every document of a window.
    try:
        if _YEAR.match(text):
            return datetime(int(text), 1, 1, tzinfo=UTC)
        match = _YEAR_MONTH.match(text)
        if match:
            return datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC)
        if _NUMBER.match(text):
            return _from_number(float(text))
        return _parse_iso(text)
    except (ValueError, OverflowError, OSError):
        return None


def _parse_iso(text: str) -> datetime | None:
    if not text or not text[0].isdigit():
        return None
    return _utc(datetime.fromisoformat(text))


def _from_number(number: float) -> datetime | None:
    if not math.isfinite(number):
        return None
    if number.is_integer() and 1 <= number <= 9999:
        return _from_year(number)
    seconds = number / 1000.0 if abs(number) >= _EPOCH_MS_THRESHOLD else number
    return _EPOCH + timedelta(seconds=seconds)


def _from_year(number: float) -> datetime | None:
    if not number.is_integer() or not 1 <= number <= 9999:
        return None
    return datetime(int(number), 1, 1, tzinfo=UTC)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalSpec:
    """One feature computed from one ``_source`` field; validated on construction.

    ``default`` is the *feature* value (after the transform) used when the field is unusable.
    Parameters that do not apply to the transform (a pivot on ``log1p``, a half-life on
    ``gauss_decay``) are refused, to catch typos in hand-written configs.
    """

    name: str
    field: str
    transform: Transform
    pivot: float | None = None
    half_life_days: float | None = None
    scale_days: float | None = None
    reference: str | None = None
    default: float = 0.0
    date_format: str = "auto"

    def __post_init__(self) -> None:
        where = f"signal {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(
                f"signal name {self.name!r} must be an identifier ([A-Za-z_][A-Za-z0-9_]*)"
            )
        if self.name in RESERVED_NAMES:
            raise ConfigError(f"{where}: the name is reserved for the blend")
        if (
            not isinstance(self.field, str)
            or not self.field
            or any(not part for part in self.field.split("."))
        ):
            raise ConfigError(f"{where}: field must be a dotted path like 'signals.citations'")
        if self.transform not in TRANSFORMS:
            raise ConfigError(
                f"{where}: unknown transform {self.transform!r}; use one of {', '.join(TRANSFORMS)}"
            )
        _check_finite(where, "default", self.default)
        for name in ("pivot", "half_life_days", "scale_days"):
            value = getattr(self, name)
            if value is not None:
                _check_finite(where, name, value)
                if value <= 0:
                    raise ConfigError(f"{where}: {name} must be > 0, got {value!r}")
        allowed = {
            "saturation": {"pivot"},
            "exp_decay": {"half_life_days", "reference", "date_format"},
            "gauss_decay": {"scale_days", "reference", "date_format"},
        }.get(self.transform, set())
        for name in ("pivot", "half_life_days", "scale_days", "reference"):
            if getattr(self, name) is not None and name not in allowed:
                raise ConfigError(f"{where}: {name} does not apply to {self.transform}")
        if self.date_format != "auto" and "date_format" not in allowed:
            raise ConfigError(f"{where}: date_format does not apply to {self.transform}")
        if self.transform == "exp_decay" and self.half_life_days is None:
            raise ConfigError(f"{where}: exp_decay needs half_life_days")
        if self.transform == "gauss_decay" and self.scale_days is None:
            raise ConfigError(f"{where}: gauss_decay needs scale_days")
        if not isinstance(self.date_format, str) or (
            self.date_format not in DATE_FORMATS and "%" not in self.date_format
        ):
            raise ConfigError(
                f"{where}: date_format must be one of {', '.join(DATE_FORMATS)} "
                f"or a strptime pattern, got {self.date_format!r}"
            )
        if self.reference is not None:
            _reference_kind(self)  # raises ConfigError if malformed

    @property
    def is_decay(self) -> bool:
        return self.transform in DECAYS

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from their defaults, JSON-ready."""
        out: dict[str, Any] = {
            "name": self.name,
            "field": self.field,
            "transform": self.transform,
        }
        for spec_field in fields(self)[3:]:
            value = getattr(self, spec_field.name)
            if value != spec_field.default:
                out[spec_field.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignalSpec:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a signal must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"signal {data.get('name')!r}: unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        missing = [k for k in ("name", "field", "transform") if k not in data]
        if missing:
            raise ConfigError(f"signal {data.get('name')!r}: missing {', '.join(missing)}")
        kwargs = dict(data)
        for key in ("pivot", "half_life_days", "scale_days", "default"):
            if key in kwargs and kwargs[key] is not None:
                value = kwargs[key]
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise ConfigError(f"signal {data['name']!r}: {key} must be a number")
                kwargs[key] = float(value)
        for key in ("name", "field", "transform", "reference", "date_format"):
            if key in kwargs and kwargs[key] is not None and not isinstance(kwargs[key], str):
                raise ConfigError(f"signal {data['name']!r}: {key} must be a string")
        return cls(**kwargs)


def _check_finite(where: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ConfigError(f"{where}: {name} must be finite, got {value!r}")


def _reference_kind(spec: SignalSpec) -> tuple[str, datetime | None]:
    """("now", None) | ("fixed", instant) | ("field", None)."""
    ref = spec.reference
    if ref is None or ref == "now":
        return "now", None
    if not ref or ref[0].isdigit() or ref[0] in "+-":
        moment = parse_time(ref)
        if moment is None:
            raise ConfigError(f"signal {spec.name!r}: reference {ref!r} is not a date")
        return "fixed", moment
    if any(not part for part in ref.split(".")):
        raise ConfigError(
            f"signal {spec.name!r}: reference {ref!r} must be 'now', a date or a dotted field"
        )
    return "field", None


@dataclass(frozen=True)
class SignalConfig:
    """The signals of one corpus, in feature-column order. Names are unique."""

    signals: tuple[SignalSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "signals", tuple(self.signals))
        seen: set[str] = set()
        for spec in self.signals:
            if not isinstance(spec, SignalSpec):
                raise ConfigError(f"not a SignalSpec: {spec!r}")
            if spec.name in seen:
                raise ConfigError(f"duplicate signal name {spec.name!r}")
            seen.add(spec.name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.signals)

    @property
    def source_fields(self) -> tuple[str, ...]:
        """Every ``_source`` path read (fields and field references), for ``_source`` filters."""
        paths: list[str] = []
        for spec in self.signals:
            candidates = [spec.field]
            if spec.reference is not None and _reference_kind(spec)[0] == "field":
                candidates.append(spec.reference)
            paths.extend(p for p in candidates if p not in paths)
        return tuple(paths)

    @property
    def needs_fit(self) -> bool:
        """True while some saturation pivot is None (call :func:`fit_pivots`)."""
        return any(s.transform == "saturation" and s.pivot is None for s in self.signals)

    def to_dict(self) -> dict[str, Any]:
        return {"signals": [spec.to_dict() for spec in self.signals]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignalConfig:
        """``{"signals": [{"name", "field", "transform", ...}, ...]}``."""
        if not isinstance(data, Mapping):
            raise ConfigError("a signal config must be an object with a 'signals' list")
        unknown = sorted(set(data) - {"signals"})
        if unknown:
            raise ConfigError(f"signal config: unknown key(s) {', '.join(unknown)}")
        items = data.get("signals")
        if not isinstance(items, list | tuple):
            raise ConfigError("signal config: 'signals' must be a list")
        return cls(tuple(SignalSpec.from_dict(item) for item in items))


def load_signal_config(source: str | Path | Mapping[str, Any]) -> SignalConfig:
    """A config from a preset name (``"stackexchange"``, ``"scifact"``, ``"none"``), a JSON
    file path, or an already-parsed dict."""
    if isinstance(source, Mapping):
        return SignalConfig.from_dict(source)
    if isinstance(source, str) and source.lower() in PRESETS:
        return PRESETS[source.lower()]
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"signal config {str(source)!r} is neither a preset ({', '.join(PRESETS)}) "
            "nor an existing file"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"signal config {path}: {exc}") from exc
    return SignalConfig.from_dict(data)


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureBatch:
    """Signal features of a window: ``values[i, j]`` is signal ``names[j]`` of document ``i``;
    ``defaults_used[i, j]`` says that cell holds the spec's default (field unusable)."""

    values: FloatArray
    names: tuple[str, ...]
    defaults_used: BoolArray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim != 2:
            values = values.reshape(-1, len(self.names)) if self.names else values.reshape(0, 0)
        if values.shape[1] != len(self.names):
            raise ValueError(f"values have {values.shape[1]} columns for {len(self.names)} names")
        object.__setattr__(self, "values", values)
        if self.defaults_used.shape != values.shape:
            if self.defaults_used.size:
                raise ValueError("defaults_used must have the shape of values")
            object.__setattr__(self, "defaults_used", np.zeros(values.shape, dtype=bool))

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def column(self, name: str) -> FloatArray:
        try:
            return self.values[:, self.names.index(name)]
        except ValueError:
            raise KeyError(f"no signal {name!r}; have {', '.join(self.names)}") from None

    @property
    def defaults_count(self) -> npt.NDArray[np.int64]:
        """Per document, how many signals fell back to their default."""
        return cast(npt.NDArray[np.int64], self.defaults_used.sum(axis=1).astype(np.int64))


def extract(
    sources: Sequence[Mapping[str, Any] | None],
    config: SignalConfig,
    *,
    now: datetime | None = None,
) -> FeatureBatch:
    """Signal features of each ``_source`` (None or a non-mapping counts as empty).

    ``now`` is the reference of decays whose reference is ``"now"`` (naive → UTC); without it
    the wall clock is read once per call.
    """
    if config.needs_fit:
        unfitted = [
            s.name for s in config.signals if s.transform == "saturation" and s.pivot is None
        ]
        raise ConfigError(
            f"saturation pivot of {', '.join(unfitted)} is not set; call fit_pivots() first"
        )
    n, m = len(sources), len(config.signals)
    values = np.empty((n, m), dtype=np.float64)
    used = np.zeros((n, m), dtype=bool)
    now_utc = _utc(now) if now is not None else None
    for j, spec in enumerate(config.signals):
        if spec.is_decay:
            raw, ok = _ages(sources, spec, now_utc)
        else:
            raw, ok = _numbers(sources, spec.field)
        column = np.full(n, spec.default, dtype=np.float64)
        if ok.any():
            column[ok] = _apply(spec, raw[ok])
        bad = ~ok | ~np.isfinite(column)
        column[bad] = spec.default
        values[:, j] = column
        used[:, j] = bad
    return FeatureBatch(values=values, names=config.names, defaults_used=used)


def transform_values(spec: SignalSpec, raw: npt.ArrayLike) -> FloatArray:
    """Apply ``spec``'s transform to raw numbers (ages in days for decays)."""
    return _apply(spec, np.asarray(raw, dtype=np.float64))


def _apply(spec: SignalSpec, raw: FloatArray) -> FloatArray:
    transforms: dict[str, Callable[[FloatArray], FloatArray]] = {
        "log1p": log1p,
        "identity": identity,
        "saturation": lambda x: saturation(x, _required(spec.pivot, spec, "pivot")),
        "exp_decay": lambda x: exp_decay(x, _required(spec.half_life_days, spec, "half_life")),
        "gauss_decay": lambda x: gauss_decay(x, _required(spec.scale_days, spec, "scale_days")),
    }
    return transforms[spec.transform](raw)


def _required(value: float | None, spec: SignalSpec, what: str) -> float:
    if value is None:
        raise ConfigError(f"signal {spec.name!r}: {what} is not set")
    return value


def _numbers(sources: Sequence[Any], path: str) -> tuple[FloatArray, BoolArray]:
    raw = np.zeros(len(sources), dtype=np.float64)
    ok = np.zeros(len(sources), dtype=bool)
    for i, source in enumerate(sources):
        number = to_number(get_path(source, path))
        if number is not None:
            raw[i] = number
            ok[i] = True
    return raw, ok


def _ages(
    sources: Sequence[Any], spec: SignalSpec, now: datetime | None
) -> tuple[FloatArray, BoolArray]:
    """Age in days of each document's date against its reference (≥ 0), and usability."""
    kind, fixed = _reference_kind(spec)
    if kind == "now":
        fixed = now if now is not None else datetime.now(UTC)
    ages = np.zeros(len(sources), dtype=np.float64)
    ok = np.zeros(len(sources), dtype=bool)
    for i, source in enumerate(sources):
        moment = parse_time(get_path(source, spec.field), spec.date_format)
        if moment is None:
            continue
        reference = fixed
        if kind == "field":
            reference = parse_time(get_path(source, cast(str, spec.reference)))
        if reference is None:
            continue
        ages[i] = max((reference - moment).total_seconds() / _SECONDS_PER_DAY, 0.0)
        ok[i] = True
    return ages, ok


def fit_pivots(sources: Iterable[Mapping[str, Any] | None], config: SignalConfig) -> SignalConfig:
    """``config`` with every unset saturation pivot estimated as the median of the field's
    positive values over ``sources`` (1.0 when there are none). Set pivots are kept."""
    todo = [s for s in config.signals if s.transform == "saturation" and s.pivot is None]
    if not todo:
        return config
    docs = list(sources)
    pivots: dict[str, float] = {}
    for spec in todo:
        raw, ok = _numbers(docs, spec.field)
        positive = raw[ok & (raw > 0)]
        pivots[spec.name] = float(np.median(positive)) if positive.size else 1.0
    return SignalConfig(
        tuple(
            replace(spec, pivot=pivots[spec.name]) if spec.name in pivots else spec
            for spec in config.signals
        )
    )


# ---------------------------------------------------------------------------------------------
# Presets. Leakage: never ParentId, AcceptedAnswerId, accepted flags or VoteTypeId 1 counts.
# ---------------------------------------------------------------------------------------------

#: Stack Exchange answers (``signals`` object in each corpus doc). Pivots are the medians of the
#: positive values over the three shipped sites (OwnerReputation 595, Score 3). Negative scores
#: are clamped to 0 by ``saturation``. Ages are per site, against ``signals.dump_date``.
STACKEXCHANGE = SignalConfig(
    (
        SignalSpec("authority", "signals.OwnerReputation", "saturation", pivot=600.0),
        SignalSpec("popularity", "signals.Score", "saturation", pivot=3.0),
        SignalSpec("views", "signals.QuestionViewCount", "log1p"),
        SignalSpec(
            "freshness",
            "signals.CreationDate",
            "exp_decay",
            half_life_days=365.0,
            reference="signals.dump_date",
        ),
    )
)

#: SciFact abstracts (``signals.jsonl`` joined into ``_source.signals``). Citations median of
#: positives is 181; ``year`` is a bare year (→ Jan 1) aged against 2026-01-01 (when the
#: citation counts were collected) with a 10-year half-life. No popularity: it would be the same
#: citation count again.
SCIFACT = SignalConfig(
    (
        SignalSpec("authority", "signals.citations", "saturation", pivot=180.0),
        SignalSpec(
            "freshness",
            "signals.year",
            "exp_decay",
            half_life_days=3652.5,
            reference="2026-01-01",
        ),
    )
)

NO_SIGNALS = SignalConfig(())

PRESETS: dict[str, SignalConfig] = {
    "stackexchange": STACKEXCHANGE,
    "scifact": SCIFACT,
    "none": NO_SIGNALS,
}
