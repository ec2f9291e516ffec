"""The proxy scoring through two real ``reranker serve --scorer-only`` processes, one of them
killed mid-load: every search still answers 200, none is lost, and the survivor reranks the
rest (its peer's in-flight calls fail over to it)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reranker.es.node import NodeStatus
from tests.integration.conftest import (
    CLIENTS,
    QUERY,
    proxy_settings,
    running,
    serving_processes,
    start_scorer,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 3


@pytest.fixture
def scorers() -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    with serving_processes(start_scorer) as started:
        yield started


async def test_a_scorer_killed_mid_load_loses_no_request_and_the_other_serves_the_rest(
    es_node: NodeStatus, proxy_alias: str, scorers: list[tuple[str, subprocess.Popen[bytes]]]
) -> None:
    (url_a, process_a), (url_b, _) = scorers
    settings = proxy_settings(
        es_node,
        proxy_alias,
        scorer_urls=(url_a, url_b),
        score_cache_size=0,  # every search reaches a scorer
        max_in_flight=CLIENTS + 4,
        max_scorer_queue=CLIENTS + 4,
    )
    body = {"query": QUERY, "size": 5, "rerank": {"window": 5}}
    answers: list[httpx.Response] = []
    async with running(settings, None) as http:
        proxy = http._transport.app.state.proxy  # type: ignore[attr-defined]
        remote = proxy.models.scorer
        assert remote is not None and remote.provider == "remote"
        killed = asyncio.Event()
        in_flight_on_a = 0

        async def client() -> None:
            for _ in range(ROUNDS):
                answers.append(await http.post(f"/{proxy_alias}/_search", json=body))

        async def killer() -> None:
            nonlocal in_flight_on_a
            # mid-load, after A has served, and while a scoring call is on it: that call must
            # fail over (A may start late on a busy machine: then B serves the first ones)
            served_by_a = 0
            while len(answers) < CLIENTS // 2 or not in_flight_on_a or served_by_a < 1:
                assert len(answers) < CLIENTS * ROUNDS, "no call was ever in flight on A"
                await asyncio.sleep(0.001)
                a = {e["url"]: e for e in remote.describe()}[url_a]
                in_flight_on_a = a["in_flight"]
                served_by_a = a["requests"] - a["failures"] - a["in_flight"]
            process_a.kill()
            killed.set()

        started = time.monotonic()
        await asyncio.gather(killer(), *(client() for _ in range(CLIENTS)))
        took = time.monotonic() - started
        assert killed.is_set()
        after = [await http.post(f"/{proxy_alias}/_search", json=body) for _ in range(4)]
        health = (await http.get("/_health")).json()
        metrics = (await http.get("/metrics")).text

    # none lost, none failed: every search answered 200
    assert len(answers) == CLIENTS * ROUNDS
    assert [r.status_code for r in answers] == [200] * len(answers)
    degraded = [r.json()["rerank"]["degraded"] for r in answers if r.json()["rerank"]["degraded"]]
    # at most the calls in flight on the killed scorer (they fail over, so usually none)
    assert in_flight_on_a >= 1 and len(degraded) <= in_flight_on_a, (degraded, in_flight_on_a)
    # the survivor reranks the rest, and says which endpoint is down
    assert all(r.status_code == 200 and r.json()["rerank"]["degraded"] is None for r in after)
    endpoints = {e["url"]: e for e in health["scorer_endpoints"]}
    assert endpoints[url_a]["state"] in {"open", "half-open"} and endpoints[url_a]["failures"] >= 1
    assert endpoints[url_b]["state"] == "closed" and endpoints[url_b]["failures"] == 0
    assert endpoints[url_a]["requests"] > endpoints[url_a]["failures"]  # it served before
    assert f'reranker_proxy_remote_scorer_up{{endpoint="{url_b}"}} 1.0' in metrics
    assert took < 60
