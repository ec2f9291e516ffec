"""What some scorers can do and others cannot, as protocols: a remote scorer has no card, a
plain model no signal heads, only a cached one remembers scores. Code asks by ``isinstance``,
never by probing attribute names; every scorer is a
:class:`~reranker.rerank.scorer.PairScorer` first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Truncating(Protocol):
    """A scorer that says how many tokens of a pair it reads (a remote one may not know)."""

    @property
    def max_length(self) -> int | None: ...


@runtime_checkable
class PositionLimited(Protocol):
    """A model whose position embeddings bound the tokens it can read at all."""

    @property
    def max_positions(self) -> int: ...


@runtime_checkable
class Batching(Protocol):
    """A scorer that runs the model itself, in batches bounded by tokens and by pairs."""

    @property
    def max_batch_tokens(self) -> int: ...

    @property
    def max_batch_size(self) -> int: ...


@runtime_checkable
class Carded(Protocol):
    """A model loaded from a local folder, with its card (what the folder holds, its sha256)."""

    @property
    def card(self) -> dict[str, Any]: ...


@runtime_checkable
class FromFolder(Protocol):
    """A model loaded from a local folder (whose blends and card sit beside it)."""

    @property
    def model_dir(self) -> Path: ...


@runtime_checkable
class MultiHead(Protocol):
    """A multi-task model: the names of its signal heads (ONNX outputs after ``logits``)."""

    @property
    def signal_heads(self) -> tuple[str, ...]: ...


@runtime_checkable
class ScoreMemory(Protocol):
    """A scorer with scores in memory (:class:`~reranker.rerank.cache.CachedScorer`): which
    pairs a call would still send to the model."""

    def uncached(
        self,
        pairs: Sequence[tuple[str, str]],
        features: np.ndarray | None = None,
        *,
        with_signals: bool = False,
    ) -> list[int]: ...


def max_length_of(scorer: object) -> int | None:
    """The scorer's ``max_length``, or ``None`` where it does not say."""
    return scorer.max_length if isinstance(scorer, Truncating) else None


def signal_heads_of(scorer: object) -> tuple[str, ...]:
    """The scorer's signal heads (none for a single-task or remote model)."""
    return tuple(scorer.signal_heads) if isinstance(scorer, MultiHead) else ()
