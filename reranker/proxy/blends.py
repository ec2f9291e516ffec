"""What the proxy's ``rerank.blend`` may name: per-index signal configs and named learned blends.

A request's ``blend`` is either an object of linear weights over the feature names of the
index's signal config (``relevance``, ``first_stage`` and e.g. ``authority``, ``freshness``,
``popularity``), or the name of a learned blend loaded at start-up. The signal config of an
index comes from the first ``(pattern, preset-or-file)`` pair whose fnmatch pattern matches it
(none: only ``relevance`` and ``first_stage``); a learned blend reads the signals recorded on
its card, as ``reranker eval --blend`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from reranker.blend.blends import Blend, LinearBlend, load_blend, read_blend_card
from reranker.blend.features import feature_names_for
from reranker.blend.signals import NO_SIGNALS, SignalConfig, load_signal_config
from reranker.errors import ConfigError, ModelError
from reranker.proxy.errors import bad_request


@dataclass(frozen=True)
class NamedBlend:
    name: str
    blend: Blend
    signals: SignalConfig


class BlendCatalog:
    """Signal configs by index pattern and learned blends by name, validated at start-up."""

    def __init__(
        self,
        signals: Sequence[tuple[str, str]] = (),
        blends: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.signals: list[tuple[str, SignalConfig]] = []
        for pattern, source in signals:
            try:
                self.signals.append((pattern, load_signal_config(source)))
            except ConfigError as exc:
                raise ConfigError(f"signals for {pattern!r}: {exc}") from exc
        self.blends: dict[str, NamedBlend] = {}
        for name, path in blends:
            if name in self.blends:
                raise ConfigError(f"blend name {name!r} given twice")
            self.blends[name] = load_named_blend(name, Path(path))

    def signals_for(self, index: str) -> SignalConfig:
        for pattern, config in self.signals:
            if any(fnmatchcase(part, pattern) for part in index.split(",")):
                return config
        return NO_SIGNALS

    def resolve(self, index: str, raw: Any) -> NamedBlend | None:
        """The blend a request asks for (``None``: the cross-encoder's logit orders); a 400
        for anything that is not a known name or valid weights for this index's features."""
        if raw is None:
            return None
        if isinstance(raw, str):
            found = self.blends.get(raw)
            if found is None:
                known = ", ".join(sorted(self.blends)) or "none configured"
                raise bad_request(f"[rerank.blend] {raw!r} is not a learned blend here ({known})")
            return found
        if not isinstance(raw, Mapping):
            raise bad_request(
                "[rerank.blend] must be an object of feature weights or a learned blend's name"
            )
        config = self.signals_for(index)
        return NamedBlend("weights", weights_blend(raw, feature_names_for(config)), config)


def load_named_blend(name: str, path: Path) -> NamedBlend:
    """A learned blend file (``reranker ltr fit``) with the signal config from its card."""
    try:
        card = read_blend_card(path)
        source = card.get("signals")
        config = load_signal_config(source) if source is not None else NO_SIGNALS
        return NamedBlend(name, load_blend(path, feature_names_for(config)), config)
    except (ConfigError, ModelError) as exc:
        raise ConfigError(f"learned blend {name!r} ({path}): {exc}") from exc


def weights_blend(raw: Mapping[str, Any], names: tuple[str, ...]) -> LinearBlend:
    unknown = sorted(str(k) for k in raw if k not in names and k != "bias")
    if unknown:
        raise bad_request(
            f"[rerank.blend] unknown feature(s) {', '.join(unknown)} for this index; "
            f"known: {', '.join(names)}"
        )
    for key, value in raw.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise bad_request(f"[rerank.blend.{key}] must be a finite number, got {value!r}")
    weights = {k: float(v) for k, v in raw.items() if k != "bias"}
    try:
        return LinearBlend(weights=weights, bias=float(raw.get("bias", 0.0)), feature_names=names)
    except ConfigError as exc:
        raise bad_request(f"[rerank.blend] {exc}") from None


def parse_pairs(items: Sequence[str], what: str) -> tuple[tuple[str, str], ...]:
    """``["pattern=value", "value"]`` → ``(("pattern", "value"), ("*", "value"))`` for
    ``--signals``; for ``--blend`` a name is required. Raises ConfigError."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            if what == "blend":
                raise ConfigError(f"--blend {item!r}: expected NAME=PATH")
            key, value = "*", item
        if not key.strip() or not value.strip():
            raise ConfigError(f"--{what} {item!r}: expected KEY=VALUE")
        out.append((key.strip(), value.strip()))
    return tuple(out)
