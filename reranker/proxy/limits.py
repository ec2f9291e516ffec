"""Backpressure, per-client quotas and the scorer's circuit breaker (in-process, event-loop
side)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextvars import ContextVar

#: characters per token assumed when a pair's cost is estimated without tokenising it
#: (WordPiece over English text: about 4), and the special tokens every pair adds
CHARS_PER_TOKEN = 4
SPECIAL_TOKENS = 3
#: tokens per pair assumed before any scoring call was measured
DEFAULT_TOKENS_PER_PAIR = 128
#: a client is never over its fair share of the cross-encoder with less decayed work than it
#: scores in this many seconds (at the measured rate): honest clients searching now and then
#: are never refused because the others happened to be quiet
FAIR_SHARE_FLOOR_S = 3.0


def estimated_tokens(pairs: Sequence[tuple[str, str]], max_length: int | None) -> int:
    """What scoring ``pairs`` costs, in tokens, estimated from their characters and capped
    at the model's ``max_length`` per pair (it truncates the rest). The proxy's admission,
    deadlines and breaker measure work in these units, not in pairs: a thousand one-letter
    texts cost what they cost, and cannot make a window of abstracts look cheap."""
    cap = max_length or 512
    return sum(min(cap, (len(q) + len(p)) // CHARS_PER_TOKEN + SPECIAL_TOKENS) for q, p in pairs)


#: who the request being handled comes from (its API key's digest, else its address): set by
#: the app for each request, read where quotas and fair shares are counted
CURRENT_CLIENT: ContextVar[str | None] = ContextVar("reranker_proxy_client", default=None)


class FairShare:
    """Each client's share of recent work (the cross-encoder's tokens, or the proxy's
    requests), decayed with a time constant of ``horizon_s``.

    While two or more clients have used it within ``horizon_s``, a client whose share of the
    decayed work is above ``burst`` times its equal share (``burst / clients``, at most all
    of it) is over its fair share (:meth:`over`), and the proxy refuses its requests (429)
    until the others catch up. One client alone is never limited, and a client that used
    nothing within ``horizon_s`` is never refused: a heavy client can slow the others by its
    fair share, not more.
    """

    def __init__(
        self,
        horizon_s: float = 10.0,
        burst: float = 2.0,
        *,
        what: str = "the cross-encoder's recent work",
        floor: float = 0.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if horizon_s <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("horizon_s must be positive, burst at least 1, max_clients >= 1")
        self.what = what
        #: decayed work below which a client is never over its share: a client that did
        #: little lately is not limited, however few the others did
        self.floor = floor
        self.horizon_s = horizon_s
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._used: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def _recent(self, now: float) -> dict[str, float]:
        """The decayed work of each client seen within ``horizon_s`` (the active ones);
        forgets the others."""
        current: dict[str, float] = {}
        for client, (tokens, then) in list(self._used.items()):
            if now - then > self.horizon_s:
                del self._used[client]
            else:
                current[client] = tokens * math.exp(-(now - then) / self.horizon_s)
        return current

    def charge(self, client: str, tokens: float) -> None:
        """``client`` is having ``tokens`` tokens scored (negative: fewer than charged)."""
        now = self._clock()
        used, then = self._used.pop(client, (0.0, now))
        used = used * math.exp(-(now - then) / self.horizon_s) + tokens
        self._used[client] = (max(0.0, used), now)
        while len(self._used) > self.max_clients:
            self._used.popitem(last=False)

    def over(self, client: str) -> str | None:
        """Why ``client`` is over its fair share now, or ``None``."""
        current = self._recent(self._clock())
        total = sum(current.values())
        if len(current) < 2 or current.get(client, 0.0) <= max(self.floor, 0.0) or total <= 0:
            return None
        share = current[client] / total
        allowed = min(1.0, self.burst / len(current))
        if share <= allowed:
            return None
        return (
            f"this client had {share:.0%} of {self.what}, above its fair "
            f"share ({allowed:.0%}) while {len(current) - 1} other client(s) use it"
        )


class ClientQuotas:
    """A token bucket per client: ``rate_per_s`` tokens a second, up to ``burst`` saved.

    :meth:`take` spends one of a client's tokens, or says there is none. The clients are
    remembered least recently used first and at most ``max_clients`` of them (a forgotten one
    comes back with a full bucket, as a new client would), so memory stays bounded whatever
    the number of keys or addresses seen. Event-loop side: no locks.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate_per_s, burst and max_clients must be positive")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def take(self, client: str) -> bool:
        """Spend one of ``client``'s tokens; ``False`` (nothing spent) when it has none."""
        now = self._clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate_per_s)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after_s(self) -> float:
        """How long a client that was refused waits for its next token."""
        return 1.0 / self.rate_per_s


class CircuitBreaker:
    """Opens after ``failures`` consecutive scorer failures; stays open for ``cooloff_s``.

    Then it is half-open: one trial call goes through (the others still bypass the scorer);
    its success closes the circuit, its failure opens it for another cool-off.
    """

    def __init__(
        self,
        failures: int,
        cooloff_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.threshold = failures
        self.cooloff_s = cooloff_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self.cooloff_s:
            return "open"
        return "half-open"

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def allow(self) -> bool:
        """Whether this call may use the scorer (and, half-open, claim the one trial)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._trial_running = False

    def failure(self) -> None:
        self._consecutive += 1
        if self._trial_running or self._consecutive >= self.threshold:
            self._opened_at = self._clock()
        self._trial_running = False

    def release(self) -> None:
        """A claimed call ended without using the scorer (neither success nor failure)."""
        self._trial_running = False

    def reset(self) -> None:
        """Close the circuit: a new model gets a fresh start."""
        self.success()


class Saturated(Exception):
    """The proxy is at a bound; the message names which."""


class Admission:
    """Bounds reranked requests in flight and the scorer's backlog; try-acquire only.

    :meth:`admit` returns a :class:`Ticket` at once or raises :class:`Saturated` (the caller
    answers 429). Everything runs on the event loop with no await between check and update,
    so plain counters are the semaphore. The backlog counts requests whose scoring is queued
    or still running, including calls a request stopped waiting for; ``ticket.scoring_done()``
    frees that slot.

    Deadline-aware: once scoring calls have been timed (:meth:`record`), a request is also
    refused when the work already waiting for the cross-encoder, plus its own, would take
    longer than its budget at the measured rate. It could only time out and fail open after
    holding a slot; a fast 429 tells the client to come back instead. Work is counted in
    tokens (:func:`estimated_tokens`), so the rate does not depend on the length of the
    texts that happened to be scored last.
    """

    #: weight of the newest measurement in the moving averages (rate, tokens per pair)
    RATE_SMOOTHING = 0.2

    def __init__(
        self, max_in_flight: int, max_scorer_queue: int, fair: FairShare | None = None
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_scorer_queue = max_scorer_queue
        #: each client's share of the scorer's recent work (``None``: no per-client limit)
        self.fair = fair
        self._in_flight = 0
        self._backlog = 0
        self._backlog_tokens = 0
        self.tokens_per_s: float | None = None
        #: what a pair has cost on average, for requests whose texts are not known yet
        self.tokens_per_pair: float = DEFAULT_TOKENS_PER_PAIR

    def record(self, tokens: int, seconds: float, pairs: int = 0) -> None:
        """A scoring call of ``tokens`` tokens (``pairs`` pairs) took ``seconds`` (its own
        run time)."""
        if tokens <= 0 or seconds <= 0:
            return
        rate = tokens / seconds
        if self.tokens_per_s is None:
            self.tokens_per_s = rate
        else:
            self.tokens_per_s += self.RATE_SMOOTHING * (rate - self.tokens_per_s)
        if pairs > 0:
            self.tokens_per_pair += self.RATE_SMOOTHING * (tokens / pairs - self.tokens_per_pair)
        if self.fair is not None:
            self.fair.floor = self.tokens_per_s * FAIR_SHARE_FLOOR_S

    def seconds_for(self, tokens: int) -> float | None:
        """Seconds ``tokens`` take at the measured rate (``None`` before any measurement)."""
        return None if self.tokens_per_s is None else tokens / self.tokens_per_s

    def expected_wait_s(self, tokens: int) -> float | None:
        """Seconds until ``tokens`` more tokens would be scored, at the measured rate."""
        return self.seconds_for(self._backlog_tokens + tokens)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def scorer_backlog(self) -> int:
        return self._backlog

    def admit(
        self,
        *,
        scoring: bool,
        tokens: int = 0,
        budget_s: float | None = None,
        client: str | None = None,
    ) -> Ticket:
        if scoring and client is not None and self.fair is not None:
            unfair = self.fair.over(client)
            if unfair is not None:
                raise Saturated(unfair)
        if self._in_flight >= self.max_in_flight:
            raise Saturated(f"{self._in_flight} reranked requests in flight")
        if scoring and self._backlog >= self.max_scorer_queue:
            raise Saturated(f"{self._backlog} requests waiting for the cross-encoder")
        wait = self.expected_wait_s(tokens) if scoring else None
        if wait is not None and budget_s is not None and wait > budget_s and self._backlog:
            raise Saturated(
                f"the cross-encoder's backlog ({self._backlog_tokens} tokens at "
                f"{self.tokens_per_s:.0f} tokens/s) would take {wait * 1000:.0f} ms, beyond "
                f"this request's {budget_s * 1000:.0f} ms"
            )
        self._in_flight += 1
        if scoring:
            self._backlog += 1
            self._backlog_tokens += tokens
            if client is not None and self.fair is not None:
                self.fair.charge(client, tokens)
        return Ticket(self, scoring, tokens, client)

    def _release(self) -> None:
        self._in_flight -= 1

    def _scoring_done(self, tokens: int) -> None:
        self._backlog -= 1
        self._backlog_tokens -= tokens


class Ticket:
    """One admitted request: ``release()`` when it answers, ``scoring_done()`` when its scoring
    (if any) is over. Both are idempotent."""

    def __init__(
        self, admission: Admission, scoring: bool, tokens: int = 0, client: str | None = None
    ) -> None:
        self._admission = admission
        self._client = client
        self._released = False
        self._scoring = scoring
        self._tokens = tokens
        #: set once the scoring call is handed to the pool; it then calls scoring_done itself
        self.submitted = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release()

    def resize(self, tokens: int) -> None:
        """The request turned out to need ``tokens`` tokens scored (its window's pairs less
        those the score cache answers): the backlog counts those."""
        if self._scoring and tokens != self._tokens:
            self._admission._backlog_tokens += tokens - self._tokens
            fair = self._admission.fair
            if self._client is not None and fair is not None:
                fair.charge(self._client, tokens - self._tokens)
            self._tokens = tokens

    def scoring_done(self) -> None:
        if self._scoring:
            self._scoring = False
            self._admission._scoring_done(self._tokens)
