"""The click simulator's user model and what it sends, against a fake proxy (simulated
clicks; the run through the real proxy and Elasticsearch is in
tests/integration/test_proxy_ubi.py)."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest

from reranker.errors import ConfigError
from reranker.feedback.click_sim import UserModel, pick_queries, simulate

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_examination_falls_with_position_as_a_power_law() -> None:
    model = UserModel(eta=1.0)
    assert [model.examined(k) for k in (1, 2, 4)] == [1.0, 0.5, 0.25]
    assert UserModel(eta=0.0).examined(9) == 1.0


def test_click_probability_follows_the_grade_and_the_last_value_covers_higher_grades() -> None:
    model = UserModel(click_probs=(0.1, 0.6))
    assert [model.attractiveness(g) for g in (0, 1, 3, -1)] == [0.1, 0.6, 0.6, 0.1]


def test_bad_user_models_are_refused() -> None:
    for kwargs in ({"eta": -1.0}, {"noise": -0.1}, {"click_probs": (1.2,)}, {"click_probs": ()}):
        with pytest.raises(ConfigError):
            UserModel(**kwargs)  # type: ignore[arg-type]


def test_without_noise_relevant_results_are_clicked_more_often_and_top_ones_most() -> None:
    model = UserModel(noise=0.0)
    rng = random.Random(0)
    clicks = [0] * 4
    for _ in range(4000):
        for k, clicked in enumerate(model.session(rng, [0, 2, 0, 2])):
            clicks[k] += clicked
    assert clicks[1] > clicks[3] > clicks[0] > clicks[2]
    assert clicks[1] / 4000 == pytest.approx(0.5 * 0.9, abs=0.03)


def test_queries_are_a_seeded_sample_of_the_judged_ones() -> None:
    queries = {f"q{i}": f"text {i}" for i in range(10)}
    qrels = {f"q{i}": {"d": 1 if i != 3 else 0} for i in range(10)}
    first = pick_queries(queries, qrels, 4, seed=1)
    assert first == pick_queries(queries, qrels, 4, seed=1)
    assert len(first) == 4 and ("q3", "text 3") not in first


class FakeProxy:
    """Answers searches with three hits, remembers the events it was sent."""

    def __init__(self) -> None:
        self.searches: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/_search"):
            body = json.loads(request.content)
            self.searches.append(body)
            hits = [{"_id": f"d{i}"} for i in range(3)]
            answer = {
                "hits": {"hits": hits},
                "ext": {"ubi": {"query_id": f"q{len(self.searches)}"}},
            }
            return httpx.Response(200, json=answer)
        assert request.url.path == "/_reranker/events"
        lines = [json.loads(line) for line in request.content.decode().splitlines()]
        self.events.extend(lines)
        assert len(lines) <= 7  # the batch size given
        items = [{"status": 202, "result": "queued"} for _ in lines]
        return httpx.Response(200, json={"accepted": len(lines), "items": items})


async def simulate_against(fake: FakeProxy, **options: Any) -> dict[str, Any]:
    """Two queries, six sessions each, three hits a search, batches of seven events."""
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(fake), base_url="http://proxy"
    ) as http:
        report = await simulate(
            http,
            "idx",
            [("a", "first query"), ("b", "second query")],
            {"a": {"d0": 2}, "b": {"d2": 1}},
            sessions=6,
            size=3,
            seed=7,
            batch_size=7,
            **options,
        )
    return report.to_dict()


async def run(concurrency: int) -> tuple[FakeProxy, dict[str, Any]]:
    fake = FakeProxy()
    return fake, await simulate_against(fake, concurrency=concurrency)


async def test_every_shown_result_is_an_impression_and_clicks_are_ubi_events() -> None:
    fake, report = await run(concurrency=3)
    assert report["searches"] == 12
    assert report["searches_by_ranker"] == {"bm25": 6, "rerank": 6}
    assert sum("rerank" in s["ext"] for s in fake.searches) == 6
    assert {s["ext"]["ubi"]["user_query"] for s in fake.searches} == {"first query", "second query"}
    impressions = [e for e in fake.events if e["action_name"] == "impression"]
    clicks = [e for e in fake.events if e["action_name"] == "click"]
    assert len(impressions) == 36 and len(clicks) == report["clicks"]
    assert report["events_posted"] == report["events_accepted"] == len(fake.events)
    event = clicks[0]
    assert set(event) >= {"action_name", "query_id", "session_id", "client_id", "timestamp"}
    assert set(event["event_attributes"]) == {"object", "position"}
    assert event["timestamp"].endswith("Z")
    assert "simulated clicks" in report["note"]


async def test_the_same_seed_gives_the_same_clicks_whatever_the_concurrency() -> None:
    def clicked(fake: FakeProxy) -> list[tuple[str, str, int]]:
        session_of = {e["query_id"]: e["session_id"] for e in fake.events}
        return sorted(
            (session_of[e["query_id"]], e["event_attributes"]["object"]["object_id"], 0)
            for e in fake.events
            if e["action_name"] == "click"
        )

    one, _ = await run(concurrency=1)
    four, _ = await run(concurrency=4)
    assert clicked(one) == clicked(four)


class FullQueueProxy(FakeProxy):
    """Refuses each event with ``queue_full`` the first ``refusals`` times it is sent."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals
        self.sent: dict[str, int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/_search"):
            return super().__call__(request)
        items = []
        for line in request.content.decode().splitlines():
            event = json.loads(line)
            key = json.dumps(event, sort_keys=True)
            self.sent[key] = self.sent.get(key, 0) + 1
            if self.sent[key] <= self.refusals:
                items.append({"status": 429, "error": {"type": "queue_full", "reason": "full"}})
            else:
                self.events.append(event)
                items.append({"status": 202, "result": "queued"})
        accepted = sum(1 for item in items if "error" not in item)
        return httpx.Response(200, json={"accepted": accepted, "items": items})


async def test_events_refused_because_the_queue_is_full_are_sent_again_until_stored() -> None:
    fake = FullQueueProxy(refusals=2)
    report = await simulate_against(fake, resend_attempts=3, resend_backoff_s=0.0)
    assert report["events_posted"] == report["events_accepted"] == len(fake.events) > 0
    assert report["events_resent"] == 2 * report["events_posted"]
    assert report["events_rejected"] == {}
    assert set(fake.sent.values()) == {3}


async def test_events_still_refused_after_the_last_resend_count_as_rejected() -> None:
    fake = FullQueueProxy(refusals=5)
    report = await simulate_against(fake, resend_attempts=1, resend_backoff_s=0.0)
    assert report["events_accepted"] == 0 and not fake.events
    assert report["events_rejected"] == {"queue_full": report["events_posted"]}
    assert report["events_resent"] == report["events_posted"]


async def test_a_negative_resend_budget_is_refused() -> None:
    with pytest.raises(ConfigError):
        await simulate_against(FakeProxy(), resend_attempts=-1)
