"""The proxy's circuit breaker and admission bounds, with a fake clock."""

from __future__ import annotations

import pytest

from reranker.proxy.limits import Admission, CircuitBreaker, Saturated


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_the_configured_consecutive_failures() -> None:
    breaker = CircuitBreaker(3, 30, clock=Clock())
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(2, 30, clock=Clock())
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state == "closed"


def test_after_the_cooloff_one_trial_call_goes_through_and_success_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 30, clock=clock)
    breaker.failure()
    clock.now += 31
    assert breaker.state == "half-open"
    assert breaker.allow()
    assert not breaker.allow()  # only one trial at a time
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.allow()


def test_a_failed_trial_opens_the_circuit_for_another_cooloff() -> None:
    clock = Clock()
    breaker = CircuitBreaker(5, 30, clock=clock)
    for _ in range(5):
        breaker.failure()
    clock.now += 31
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "open"
    clock.now += 29
    assert not breaker.allow()


def test_a_released_trial_lets_the_next_call_try() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 30, clock=clock)
    breaker.failure()
    clock.now += 31
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_admission_refuses_beyond_the_in_flight_bound_and_frees_on_release() -> None:
    admission = Admission(max_in_flight=2, max_scorer_queue=10)
    first = admission.admit(scoring=True)
    admission.admit(scoring=True)
    with pytest.raises(Saturated, match="in flight"):
        admission.admit(scoring=False)
    first.release()
    first.release()  # idempotent
    assert admission.in_flight == 1
    admission.admit(scoring=False)


def test_scorer_backlog_outlives_the_request_until_scoring_is_done() -> None:
    admission = Admission(max_in_flight=10, max_scorer_queue=1)
    ticket = admission.admit(scoring=True)
    ticket.release()  # the request answered (say, it timed out) but scoring still runs
    with pytest.raises(Saturated, match="cross-encoder"):
        admission.admit(scoring=True)
    admission.admit(scoring=False).release()  # requests that need no scoring still pass
    ticket.scoring_done()
    admission.admit(scoring=True)


def test_admission_refuses_scoring_that_could_not_finish_within_the_budget() -> None:
    admission = Admission(max_in_flight=32, max_scorer_queue=16)
    admission.record(pairs=100, seconds=1.0)  # 100 pairs/s
    first = admission.admit(scoring=True, pairs=100, budget_s=2.0)  # 1 s
    admission.admit(scoring=True, pairs=100, budget_s=2.0)  # 2 s: just fits
    with pytest.raises(Saturated, match=r"200 pairs at 100 pairs/s\) would take 3000 ms"):
        admission.admit(scoring=True, pairs=100, budget_s=2.0)  # 3 s
    admission.admit(scoring=False, pairs=100, budget_s=2.0)  # no scoring: not bounded by it
    first.scoring_done()
    admission.admit(scoring=True, pairs=100, budget_s=2.0)


def test_an_idle_scorer_takes_a_request_even_beyond_its_budget() -> None:
    admission = Admission(max_in_flight=4, max_scorer_queue=4)
    admission.record(pairs=10, seconds=1.0)
    admission.admit(scoring=True, pairs=1000, budget_s=0.5)  # nothing queued: try it


def test_before_any_measurement_only_the_counts_bound_admission() -> None:
    admission = Admission(max_in_flight=4, max_scorer_queue=2)
    admission.admit(scoring=True, pairs=10_000, budget_s=0.001)
    admission.admit(scoring=True, pairs=10_000, budget_s=0.001)
    with pytest.raises(Saturated, match="waiting for the cross-encoder"):
        admission.admit(scoring=True, pairs=1, budget_s=10)


def test_the_measured_rate_is_a_moving_average() -> None:
    admission = Admission(max_in_flight=1, max_scorer_queue=1)
    admission.record(pairs=100, seconds=1.0)
    admission.record(pairs=200, seconds=1.0)
    assert admission.pairs_per_s == pytest.approx(100 + Admission.RATE_SMOOTHING * 100)
    admission.record(pairs=0, seconds=1.0)  # ignored
    assert admission.pairs_per_s == pytest.approx(120)
