"""The one fake scorer of the pure-logic tests: the served scorer protocol
(:class:`~reranker.rerank.scorer.ServedScorer`) with scores from a rule, and what it was asked.

Tests subclass :class:`FakeScorer` and override :meth:`FakeScorer.scores` for their rule; they
never redefine the protocol. Tests of the proxy or the rerank API that need real scores wrap a
real :class:`~reranker.rerank.scorer.Scorer` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reranker.errors import ModelError

Pair = tuple[str, str]


class FakeScorer:
    """Scores a pair by its passage's length (override :meth:`scores`); records each call's
    passages; raises :class:`~reranker.errors.ModelError` when ``fail`` is set."""

    version = "v1"
    variant = "int8"
    provider = "CPUExecutionProvider"
    signal_heads: tuple[str, ...] = ()

    def __init__(
        self,
        model_id: str = "fake",
        *,
        feature_names: tuple[str, ...] = (),
        max_length: int | None = None,
        fail: bool = False,
    ) -> None:
        self.model_id = model_id
        self.feature_names = feature_names
        self.max_length = max_length
        self.fail = fail
        self.calls: list[list[str]] = []
        self.pairs_run = 0
        self.features: np.ndarray | None = None

    def scores(self, pairs: Sequence[Pair], features: np.ndarray | None) -> np.ndarray:
        return np.array([float(len(p)) for _, p in pairs], dtype=np.float32)

    def score(
        self,
        pairs: Sequence[Pair],
        *,
        sigmoid: bool = False,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        self.calls.append([p for _, p in pairs])
        self.pairs_run += len(pairs)
        self.features = features
        if self.fail:
            raise ModelError(f"{self.model_id} exploded")
        return np.asarray(self.scores(pairs, features), dtype=np.float32)

    def warmup(self) -> None:
        return None
