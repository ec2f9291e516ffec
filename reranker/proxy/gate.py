"""The scoring gate: the one way any request reaches the cross-encoder.

Searches (``_search``, each ``_msearch`` item) and the rerank API pass through the same
gate: admission (a ticket, or 429), the scorer's thread pool with the request's deadline
checked before the call starts, the wait with its grace, and the circuit breaker, told only
about failures that were the scorer's fault: no request shape a client controls can open
the circuit for the others.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from reranker.errors import ModelError
from reranker.proxy import errors
from reranker.proxy.limits import (
    CURRENT_CLIENT,
    DEFAULT_TOKENS_PER_PAIR,
    Admission,
    CircuitBreaker,
    Saturated,
    Ticket,
)
from reranker.proxy.metrics import ProxyMetrics
from reranker.proxy.settings import ProxySettings
from reranker.rerank.pipeline import PipelineResult
from reranker.rerank.scorer import ScoreTimeout

log = logging.getLogger(__name__)

#: a timeout counts as the scorer's fault only when, at the measured rate, the window needed
#: at most this share of the time it had (the scorer then ran over twice as slow as measured)
FAIR_TIMEOUT_SHARE = 0.5

T = TypeVar("T")


class QueueExpired(ScoreTimeout):
    """A scoring call whose request's deadline passed before the scorer got to it."""


@dataclass(frozen=True)
class ScoringFailure:
    """Why a scoring call gave no usable scores, and whether the breaker counts it."""

    reason: str
    timed_out: bool = False
    scorers_fault: bool = True


@dataclass(frozen=True)
class Called(Generic[T]):
    """A scoring call's outcome: its result, or why there is none."""

    result: T | None
    failure: ScoringFailure | None


class ScoringGate:
    """Admission, the scorer's pool, deadlines and the breaker, shared by every route."""

    def __init__(
        self,
        settings: ProxySettings,
        metrics: ProxyMetrics,
        admission: Admission,
        breaker: CircuitBreaker,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.admission = admission
        self.breaker = breaker
        self.executor = executor

    def admit_or_429(self, *, scoring: bool, tokens: int, budget_s: float) -> Ticket:
        """An admission ticket, or the 429 (counted) when the proxy is saturated or the
        request's client (:data:`~reranker.proxy.limits.CURRENT_CLIENT`) is over its fair
        share of the scorer."""
        try:
            ticket = self.admission.admit(
                scoring=scoring, tokens=tokens, budget_s=budget_s, client=CURRENT_CLIENT.get()
            )
        except Saturated as exc:
            self.metrics.rejected.inc()
            raise errors.saturated(str(exc), self.settings.retry_after_s) from None
        self.metrics.in_flight.set(self.admission.in_flight)
        return ticket

    async def call_scorer(
        self,
        work: Callable[[], T],
        *,
        tokens: int,
        timeout_ms: int,
        deadline: float,
        ticket: Ticket,
    ) -> Called[T]:
        """Run ``work`` (a scoring call of ``tokens`` estimated tokens,
        :func:`~reranker.proxy.limits.estimated_tokens`, whose breaker slot the caller has
        claimed) in the scorer's pool and wait for it until ``deadline`` plus the grace: its
        result, or why it gave none (the caller tells the breaker, see :meth:`count_failure`,
        since what counts as a failure is the caller's to say). A request cancelled meanwhile
        releases its breaker slot. Shared by the ``_search`` handler and the rerank API."""
        budget_s = deadline - time.monotonic()
        future = self.submit(work, deadline, ticket)
        wait_s = max(0.0, deadline - time.monotonic()) + self.settings.scorer_grace_ms / 1000
        try:
            result = await asyncio.wait_for(asyncio.shield(future), timeout=wait_s)
        except Exception as exc:
            return Called(None, self.failure_of(exc, tokens, timeout_ms, budget_s))
        except BaseException:  # cancelled (the client went away): not the scorer's fault
            self.breaker.release()
            raise
        return Called(result, None)

    def count_failure(self, failure: ScoringFailure) -> None:
        """Tell the breaker about a call that gave no usable scores: a failure only when it was
        the scorer's fault."""
        if failure.scorers_fault:
            self.breaker.failure()
        else:
            self.breaker.release()

    def submit(self, work: Callable[[], T], deadline: float, ticket: Ticket) -> asyncio.Future[T]:
        """``work`` queued on the scorer's pool (refused there if the deadline passed while it
        waited); the ticket's scoring slot is freed when the call ends, even one the request
        stopped waiting for."""

        def call() -> T:
            if time.monotonic() >= deadline:  # abandoned while queued: do not score at all
                raise QueueExpired("the deadline passed while waiting for the scorer")
            return work()

        future = asyncio.get_running_loop().run_in_executor(self.executor, call)
        ticket.submitted = True

        def finished(done: asyncio.Future[T]) -> None:
            ticket.scoring_done()
            if not done.cancelled():
                done.exception()  # retrieved, so an abandoned call logs no warning

        future.add_done_callback(finished)
        return future

    def failure_of(
        self, exc: Exception, tokens: int, timeout_ms: int, budget_s: float
    ) -> ScoringFailure:
        """What a scoring call that raised (or that the request stopped waiting for) was."""
        if isinstance(exc, TimeoutError):
            reason = f"reranker timeout: no scores within {timeout_ms} ms"
            fault = self.timeout_is_scorers_fault(tokens, timeout_ms, budget_s)
            return ScoringFailure(reason, True, fault)
        if isinstance(exc, ModelError):  # fail_open is false, or the call expired in the queue
            timed_out = isinstance(exc, ScoreTimeout)
            if isinstance(exc, QueueExpired):  # overload, not a broken model
                at_fault = False
            elif timed_out:
                at_fault = self.timeout_is_scorers_fault(tokens, timeout_ms, budget_s)
            else:
                at_fault = True
            reason = f"reranker {'timeout' if timed_out else 'error'}: {exc}"
            return ScoringFailure(reason, timed_out, at_fault)
        # a scorer bug (e.g. a wrong number of scores): fail open too
        log.error("the scoring call failed unexpectedly", exc_info=exc)
        return ScoringFailure(f"reranker error: unexpected {type(exc).__name__}")

    def accept(
        self, result: PipelineResult, timeout_ms: int, budget_s: float, tokens: int, pairs: int
    ) -> bool:
        """Whether a finished call's scores can be served (all finite); records its rate (the
        ``tokens`` of the ``pairs`` the model had to score: cached ones cost nothing) and tells
        the breaker how it went."""
        if "rerank" in result.timings_ms and not result.degraded:
            self.admission.record(tokens, result.timings_ms["rerank"] / 1000, pairs)
        if not all(h.relevance is None or math.isfinite(h.relevance) for h in result.hits):
            return False
        if not result.degraded:
            self.breaker.success()
        elif result.degraded.kind != "timeout" or self.timeout_is_scorers_fault(
            tokens, timeout_ms, budget_s
        ):
            self.breaker.failure()
        else:  # its deadline passed mid-window: the request's own budget, not a fault
            self.breaker.release()
        return True

    def timeout_is_scorers_fault(self, tokens: int, timeout_ms: int, budget_s: float) -> bool:
        """Whether a scoring call of ``tokens`` estimated tokens that missed its deadline
        counts against the scorer (the circuit breaker): only when it should have fitted its
        budget with room to spare at the measured tokens/s. A request whose own size or
        ``timeout_ms`` made the timeout inevitable never counts, so no client can open the
        circuit for the others; and since work is measured in tokens, no client can make
        long windows look cheap by having many tiny texts scored first. Before any call was
        measured, only requests at the proxy's defaults (or smaller) count."""
        needed_s = self.admission.seconds_for(tokens)
        if needed_s is None:
            return (
                tokens <= self.settings.default_window * DEFAULT_TOKENS_PER_PAIR
                and timeout_ms >= self.settings.default_timeout_ms
            )
        return needed_s <= FAIR_TIMEOUT_SHARE * budget_s
