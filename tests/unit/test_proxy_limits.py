"""The proxy's circuit breaker and admission bounds, with a fake clock."""

from __future__ import annotations

import pytest

from reranker.proxy.limits import (
    DEFAULT_TOKENS_PER_PAIR,
    SPECIAL_TOKENS,
    Admission,
    CircuitBreaker,
    ClientQuotas,
    FairShare,
    Saturated,
    estimated_tokens,
)
from tests.helpers import Clock


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
    admission.record(tokens=1000, seconds=1.0)  # 1000 tokens/s
    first = admission.admit(scoring=True, tokens=1000, budget_s=2.0)  # 1 s
    admission.admit(scoring=True, tokens=1000, budget_s=2.0)  # 2 s: just fits
    with pytest.raises(Saturated, match=r"2000 tokens at 1000 tokens/s\) would take 3000 ms"):
        admission.admit(scoring=True, tokens=1000, budget_s=2.0)  # 3 s
    admission.admit(scoring=False, tokens=1000, budget_s=2.0)  # no scoring: not bounded by it
    first.scoring_done()
    admission.admit(scoring=True, tokens=1000, budget_s=2.0)


def test_a_ticket_resized_to_its_uncached_work_frees_the_backlog_for_others() -> None:
    admission = Admission(max_in_flight=32, max_scorer_queue=16)
    admission.record(tokens=1000, seconds=1.0)
    ticket = admission.admit(scoring=True, tokens=1900, budget_s=2.0)  # its window, unknown
    with pytest.raises(Saturated):
        admission.admit(scoring=True, tokens=1000, budget_s=2.0)
    ticket.resize(100)  # most of its pairs were in the score cache
    admission.admit(scoring=True, tokens=1000, budget_s=2.0)


def test_an_idle_scorer_takes_a_request_even_beyond_its_budget() -> None:
    admission = Admission(max_in_flight=4, max_scorer_queue=4)
    admission.record(tokens=10, seconds=1.0)
    admission.admit(scoring=True, tokens=1000, budget_s=0.5)  # nothing queued: try it


def test_before_any_measurement_only_the_counts_bound_admission() -> None:
    admission = Admission(max_in_flight=4, max_scorer_queue=2)
    admission.admit(scoring=True, tokens=10_000, budget_s=0.001)
    admission.admit(scoring=True, tokens=10_000, budget_s=0.001)
    with pytest.raises(Saturated, match="waiting for the cross-encoder"):
        admission.admit(scoring=True, tokens=1, budget_s=10)


def test_the_measured_rate_and_tokens_per_pair_are_moving_averages() -> None:
    admission = Admission(max_in_flight=1, max_scorer_queue=1)
    admission.record(tokens=100, seconds=1.0, pairs=1)
    admission.record(tokens=200, seconds=1.0, pairs=1)
    assert admission.tokens_per_s == pytest.approx(100 + Admission.RATE_SMOOTHING * 100)
    admission.record(tokens=0, seconds=1.0)  # ignored
    assert admission.tokens_per_s == pytest.approx(120)
    start = DEFAULT_TOKENS_PER_PAIR
    after_first = start + Admission.RATE_SMOOTHING * (100 - start)
    expected = after_first + Admission.RATE_SMOOTHING * (200 - after_first)
    assert admission.tokens_per_pair == pytest.approx(expected)


def test_work_is_estimated_in_tokens_capped_per_pair_at_the_models_length() -> None:
    tiny = [("q", "a")] * 1000
    abstracts = [("vitamin d", "word " * 400)] * 10
    assert estimated_tokens(tiny, 256) == 1000 * SPECIAL_TOKENS
    assert estimated_tokens(abstracts, 256) == 10 * 256
    # a thousand one-letter texts cost about what 12 abstracts cost, not 100 times more
    assert estimated_tokens(tiny, 256) < 2 * estimated_tokens(abstracts, 256)


def test_a_client_quota_refills_at_its_rate_up_to_its_burst() -> None:
    now = [0.0]
    quotas = ClientQuotas(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [quotas.take("a") for _ in range(4)] == [True, True, True, False]
    assert quotas.take("b")  # another client has its own bucket
    now[0] += 0.5  # one token back
    assert [quotas.take("a") for _ in range(2)] == [True, False]
    now[0] += 100.0  # never more than the burst
    assert [quotas.take("a") for _ in range(4)] == [True, True, True, False]


def test_client_quotas_remember_a_bounded_number_of_clients() -> None:
    quotas = ClientQuotas(rate_per_s=0.001, burst=1, max_clients=2)
    assert quotas.take("a") and quotas.take("b") and quotas.take("c")
    assert len(quotas._buckets) == 2
    assert quotas.take("a")  # forgotten, so back with a full bucket
    assert not quotas.take("c")


def test_one_client_alone_is_never_over_its_fair_share() -> None:
    fair = FairShare(horizon_s=10.0, burst=2.0, clock=lambda: 0.0)
    fair.charge("batch-job", 1_000_000)
    assert fair.over("batch-job") is None


def test_a_client_above_twice_its_equal_share_is_over_while_others_use_the_scorer() -> None:
    now = [0.0]
    fair = FairShare(horizon_s=10.0, burst=2.0, clock=lambda: now[0])
    for honest in ("a", "b", "c"):
        fair.charge(honest, 1000)
    fair.charge("heavy", 2000)  # 2000 / 5000 = 40%, under 2 / 4 = 50%
    assert fair.over("heavy") is None
    fair.charge("heavy", 2000)  # 4000 / 7000 = 57%
    assert "fair share" in (fair.over("heavy") or "")
    assert fair.over("a") is None
    now[0] += 11.0  # nobody used it within the horizon: nobody counts as active any more
    assert fair.over("heavy") is None


def test_admission_refuses_scoring_to_a_client_over_its_fair_share_and_only_to_it() -> None:
    admission = Admission(8, 8, FairShare(horizon_s=10.0, burst=1.0))
    admission.admit(scoring=True, tokens=100, client="a").release()
    admission.admit(scoring=True, tokens=900, client="heavy").release()
    with pytest.raises(Saturated, match="fair share"):
        admission.admit(scoring=True, tokens=100, client="heavy")
    admission.admit(scoring=True, tokens=100, client="a").release()
    admission.admit(scoring=False, client="heavy").release()  # a pass-through costs no scoring


def test_a_client_with_little_recent_work_is_never_over_its_share() -> None:
    fair = FairShare(horizon_s=10.0, burst=2.0, floor=20.0, clock=lambda: 0.0)
    fair.charge("quiet", 1)
    fair.charge("quieter", 1)
    fair.charge("occasional", 15)  # 88% of very little
    assert fair.over("occasional") is None
    fair.charge("occasional", 10)  # above the floor, and 93% (allowed: 2 / 3)
    assert fair.over("occasional") is not None
