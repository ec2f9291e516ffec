"""RemoteScorer's spreading, breakers and fail-over against fake endpoints (httpx.MockTransport):
no sockets, no model; each fake answers /info and /rerank as TEI does, or fails as told."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from reranker.errors import ModelError
from reranker.rerank.remote import RemoteScorer, scores_by_index
from tests.fakes import FakeEndpoints
from tests.helpers import Clock

INFO = {"model_id": "xenc", "model_version": "v1", "variant": "int8", "max_client_batch_size": 100}


class Fakes(FakeEndpoints):
    """Endpoints ``http://a``, ``http://b``, ...: each scores a text by its length (so the
    expected logits are known), unless ``mode[host]`` says otherwise."""

    def __init__(self, *hosts: str) -> None:
        super().__init__(INFO, *hosts)

    def answer(self, body: dict[str, Any], mode: str) -> httpx.Response:
        texts = body["texts"]
        ranked = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        answer = [{"index": i, "score": float(len(texts[i]))} for i in ranked]
        if mode == "short":
            answer = answer[:-1]
        return httpx.Response(200, json=answer)

    def rerank_hosts(self) -> list[str]:
        return self.hosts_called("/rerank")

    def scorer(self, **options: Any) -> RemoteScorer:
        return RemoteScorer(
            [f"http://{h}" for h in self.mode],
            transport=httpx.MockTransport(self.handler),
            **options,
        )


PAIRS = [("q", "a"), ("q", "ccc"), ("q", "bb")]


def expected_logits(pairs: list[tuple[str, str]]) -> list[float]:
    return [float(len(p)) for _, p in pairs]


# ------------------------------------------------------------------ scoring


def test_scores_come_back_in_the_callers_order_from_a_best_first_answer() -> None:
    fakes = Fakes("a")
    scorer = fakes.scorer()
    assert scorer.score(PAIRS).tolist() == expected_logits(PAIRS)
    assert fakes.bodies[0]["raw_scores"] is True  # logits, as the in-process model gives
    probs = scorer.score(PAIRS, sigmoid=True)
    assert np.allclose(probs, 1 / (1 + np.exp(-np.array(expected_logits(PAIRS)))))
    assert scorer.score([]).shape == (0,)


def test_the_model_is_named_by_the_endpoints_info() -> None:
    scorer = Fakes("a").scorer()
    assert (scorer.model_id, scorer.version, scorer.variant) == ("xenc", "v1", "int8")
    assert scorer.feature_names == ()


def test_each_query_is_one_request_and_long_lists_are_cut_to_the_servers_batch_limit() -> None:
    fakes = Fakes("a")
    fakes.info["a"]["max_client_batch_size"] = 2
    pairs = [("q1", "a"), ("q2", "bbbb"), ("q1", "ccc"), ("q1", "dd")]
    assert fakes.scorer().score(pairs).tolist() == expected_logits(pairs)
    assert [(b["query"], b["texts"]) for b in fakes.bodies] == [
        ("q1", ["a", "ccc"]),
        ("q1", ["dd"]),
        ("q2", ["bbbb"]),
    ]


def test_an_api_key_is_sent_as_a_bearer_token() -> None:
    fakes = Fakes("a")
    fakes.scorer(api_key="s3cret").score(PAIRS)
    assert all(h["authorization"] == "Bearer s3cret" for h in fakes.headers)


# ------------------------------------------------------------------ spreading and fail-over


def test_requests_are_spread_round_robin_across_healthy_endpoints() -> None:
    fakes = Fakes("a", "b")
    scorer = fakes.scorer()
    for _ in range(4):
        scorer.score(PAIRS)
    assert sorted(fakes.rerank_hosts()) == ["a", "a", "b", "b"]


@pytest.mark.parametrize("failure", ["down", "500", "timeout", "short"])
def test_a_failing_endpoint_fails_over_to_another_and_no_call_fails(failure: str) -> None:
    fakes = Fakes("a", "b")
    scorer = fakes.scorer(failures=2, cooloff_s=60)
    fakes.mode["a"] = failure
    for _ in range(6):
        assert scorer.score(PAIRS).tolist() == expected_logits(PAIRS)
    # two failures open a's breaker; after that every call goes straight to b
    assert fakes.rerank_hosts().count("a") == 2
    states = {e["url"]: e for e in scorer.describe()}
    assert states["http://a"]["state"] == "open" and states["http://a"]["failures"] == 2
    assert states["http://b"]["state"] == "closed" and states["http://b"]["requests"] == 6


def test_an_open_endpoint_gets_one_probe_after_the_cooloff_and_rejoins_on_success() -> None:
    fakes, clock = Fakes("a", "b"), Clock()
    scorer = fakes.scorer(failures=1, cooloff_s=10, clock=clock)
    fakes.mode["a"] = "500"
    for _ in range(3):
        scorer.score(PAIRS)
    assert fakes.rerank_hosts().count("a") == 1
    clock.now += 11  # cooled off: the next call probes a first
    fakes.mode["a"] = "ok"
    scorer.score(PAIRS)
    assert fakes.rerank_hosts()[-1] == "a"
    assert {e["url"]: e["state"] for e in scorer.describe()}["http://a"] == "closed"


def test_a_failed_probe_opens_the_breaker_for_another_cooloff() -> None:
    fakes, clock = Fakes("a", "b"), Clock()
    scorer = fakes.scorer(failures=1, cooloff_s=10, clock=clock)
    fakes.mode["a"] = "down"
    scorer.score(PAIRS)
    clock.now += 11
    assert scorer.score(PAIRS).tolist() == expected_logits(PAIRS)  # probe failed, over to b
    clock.now += 4
    assert {e["url"]: e["state"] for e in scorer.describe()}["http://a"] == "open"


def test_when_no_endpoint_answers_the_call_raises_a_model_error_naming_each() -> None:
    fakes = Fakes("a", "b")
    scorer = fakes.scorer(failures=1, cooloff_s=60)
    fakes.mode.update(a="500", b="down")
    with pytest.raises(ModelError, match="no remote scorer answered") as raised:
        scorer.score(PAIRS)
    assert "http://a" in str(raised.value) and "http://b" in str(raised.value)
    with pytest.raises(ModelError, match="breaker is open"):
        scorer.score(PAIRS)  # both open now: no request is even tried


def test_a_wrong_count_of_scores_from_the_only_endpoint_is_an_error() -> None:
    fakes = Fakes("a")
    fakes.mode["a"] = "short"
    with pytest.raises(ModelError, match="2 scores for 3 texts"):
        fakes.scorer().score(PAIRS)


def test_an_overloaded_endpoint_is_skipped_without_counting_against_it() -> None:
    fakes = Fakes("a", "b")
    scorer = fakes.scorer(failures=1)
    fakes.mode["a"] = "429"
    for _ in range(3):
        assert scorer.score(PAIRS).tolist() == expected_logits(PAIRS)
    states = {e["url"]: e for e in scorer.describe()}
    assert states["http://a"]["state"] == "closed" and states["http://a"]["failures"] == 0


def test_a_request_the_endpoint_refuses_as_bad_is_raised_without_fail_over() -> None:
    fakes = Fakes("a", "b")
    fakes.mode.update(a="400", b="400")
    with pytest.raises(ModelError, match="refused: 400"):
        fakes.scorer().score(PAIRS)
    assert len(fakes.rerank_hosts()) == 1


def test_a_passed_deadline_is_a_timeout_without_a_request() -> None:
    from reranker.rerank.scorer import ScoreTimeout

    fakes = Fakes("a")
    with pytest.raises(ScoreTimeout):
        fakes.scorer().score(PAIRS, deadline=0.0)
    assert fakes.rerank_hosts() == []


# ------------------------------------------------------------------ construction and health


def test_endpoints_serving_different_model_versions_are_refused() -> None:
    fakes = Fakes("a", "b")
    fakes.info["b"]["model_version"] = "v2"
    with pytest.raises(ModelError, match=r"disagree on the model.*v1.*v2"):
        fakes.scorer()


def test_a_first_stage_aware_remote_model_is_refused() -> None:
    fakes = Fakes("a")
    fakes.info["a"]["first_stage_features"] = ["bm25", "dense"]
    with pytest.raises(ModelError, match="first-stage-aware"):
        fakes.scorer()


def test_an_endpoint_down_at_start_begins_open_and_the_others_serve() -> None:
    fakes = Fakes("a", "b")
    fakes.mode["a"] = "down"
    scorer = fakes.scorer(cooloff_s=60)
    assert {e["url"]: e["state"] for e in scorer.describe()}["http://a"] == "open"
    scorer.score(PAIRS)
    assert fakes.rerank_hosts() == ["b"]


def test_no_endpoint_answering_info_is_a_clear_error() -> None:
    fakes = Fakes("a")
    fakes.mode["a"] = "down"
    with pytest.raises(ModelError, match="no remote scorer answered GET /info"):
        fakes.scorer()


@pytest.mark.parametrize("urls", [[], ["ftp://a"], ["http://a", "http://a/"]])
def test_bad_endpoint_lists_are_refused(urls: list[str]) -> None:
    with pytest.raises(ModelError):
        RemoteScorer(urls, transport=httpx.MockTransport(Fakes("a").handler))


def test_a_health_check_brings_back_a_recovered_endpoint_and_keeps_out_another_model() -> None:
    fakes, clock = Fakes("a", "b"), Clock()
    scorer = fakes.scorer(failures=1, cooloff_s=600, clock=clock)
    fakes.mode["a"] = "down"
    scorer.check_health()
    assert {e["url"]: e["state"] for e in scorer.describe()}["http://a"] == "open"
    fakes.mode["a"] = "ok"
    scorer.check_health()
    assert {e["url"]: e["state"] for e in scorer.describe()}["http://a"] == "closed"
    fakes.info["b"]["model_version"] = "v2"  # restarted with another model
    scorer.check_health()
    assert {e["url"]: e["state"] for e in scorer.describe()}["http://b"] == "mismatch"
    for _ in range(3):
        scorer.score(PAIRS)
    assert set(fakes.rerank_hosts()) == {"a"}


# ------------------------------------------------------------------ the answer's shape


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"error": "x"}, "expected a list"),
        ([{"index": 0, "score": 1.0}, {"index": 0, "score": 2.0}], "scored twice"),
        ([{"index": 0, "score": 1.0}, {"index": 5, "score": 2.0}], "not one of 0..1"),
        ([{"index": 0, "score": 1.0}, {"index": 1, "score": "high"}], "not a number"),
        ([{"index": 0, "score": 1.0}, {"index": 1, "score": float("inf")}], "not finite"),
    ],
)
def test_malformed_answers_are_refused(body: Any, reason: str) -> None:
    with pytest.raises(ModelError, match=reason):
        scores_by_index(body, 2)


def test_the_proxy_reads_scorer_urls_and_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reranker.config import Settings
    from reranker.proxy.settings import ProxySettings

    monkeypatch.setenv("RERANKER_PROXY_SCORER_URLS", "http://a:9281, http://b:9281")
    monkeypatch.setenv("RERANKER_PROXY_SCORER_API_KEY", "k")
    settings = ProxySettings.from_env(es=Settings(es_url="http://127.0.0.1:9"))
    assert settings.scorer_urls == ("http://a:9281", "http://b:9281")
    assert settings.scorer_api_key == "k"
