"""A reranked search's time, as one value: the deadline every stage checks, the share of it
Elasticsearch is told it has, and what admission expects to be left for the scorer.

A request's ``rerank.timeout_ms`` starts the clock when the search is admitted. The first
stage's searches carry Elasticsearch's own ``timeout`` (``es_fraction`` of the request's time),
so that a slow shard answers partial results instead of eating the scorer's share; admission
and the "can this window be scored in time" check assume the first stage leaves the scorer at
least ``1 - SCORER_MARGIN`` of the request's time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: Admission assumes the first stage uses up to this fraction of a request's time.
SCORER_MARGIN = 0.2


def scorer_share_s(timeout_ms: int) -> float:
    """What the scorer can expect of a request's ``timeout_ms``: all but the first stage's
    usual share."""
    return timeout_ms / 1000 * (1 - SCORER_MARGIN)


@dataclass(frozen=True)
class Budget:
    """One admitted search's time: ``deadline`` on the monotonic clock."""

    timeout_ms: int
    deadline: float
    es_fraction: float

    @classmethod
    def start(cls, timeout_ms: int, es_fraction: float) -> Budget:
        """The budget of a search admitted now."""
        return cls(timeout_ms, time.monotonic() + timeout_ms / 1000, es_fraction)

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.remaining_s() <= 0

    @property
    def es_timeout(self) -> str:
        """Elasticsearch's own ``timeout`` for the first stage's searches."""
        return f"{max(1, int(self.timeout_ms * self.es_fraction))}ms"
