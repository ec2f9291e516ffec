"""Issue 25: what one client can do to the others, against a real secured node and a real
``reranker serve`` process: bounded searches per ``_msearch`` and hits per search, and
connections that send their headers or body too slowly are cut off."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from reranker.es.node import NodeStatus
from reranker.rerank.scorer import Scorer
from tests.conftest import free_port
from tests.integration.conftest import QUERY, proxy_settings, running, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "reranker-minilm-l6"


@pytest.fixture
async def proxy(es_node: NodeStatus, proxy_alias: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = proxy_settings(es_node, proxy_alias, max_msearch_searches=5, max_hits=50)
    async with running(settings, None) as http:
        yield http


async def test_an_msearch_with_more_searches_than_the_limit_is_a_400(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    line = b'{}\n{"query": {"match_all": {}}, "size": 1}\n'
    headers = {"content-type": "application/x-ndjson"}
    many = await proxy.post(f"/{proxy_alias}/_msearch", content=line * 6, headers=headers)
    few = await proxy.post(f"/{proxy_alias}/_msearch", content=line * 5, headers=headers)
    assert many.status_code == 400
    assert "6 searches, beyond this proxy's limit of 5" in many.json()["error"]["reason"]
    assert few.status_code == 200 and len(few.json()["responses"]) == 5


async def test_a_search_asking_for_more_hits_than_the_limit_is_a_400_passed_through_or_not(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    huge = await proxy.post(f"/{proxy_alias}/_search", json={"query": QUERY, "size": 10_000})
    paged = await proxy.post(f"/{proxy_alias}/_search?size=30&from=30", json={"query": QUERY})
    within = await proxy.post(f"/{proxy_alias}/_search", json={"query": QUERY, "size": 50})
    entries = await proxy.post(
        f"/{proxy_alias}/_msearch",
        content=b'{}\n{"size": 5000}\n{}\n{"size": 3}\n',
        headers={"content-type": "application/x-ndjson"},
    )
    assert huge.status_code == 400 and "limit of 50 hits" in huge.json()["error"]["reason"]
    assert paged.status_code == 400
    assert within.status_code == 200
    assert [r["status"] for r in entries.json()["responses"]] == [400, 200]


@pytest.fixture(scope="module")
def slow_limits_server() -> Iterator[int]:
    """A real ``reranker serve --scorer-only`` (no Elasticsearch needed) with a 1 s header
    deadline and a 1 s body deadline."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RERANKER_PROXY_HEADER_TIMEOUT_S": "1",
        "RERANKER_PROXY_BODY_TIMEOUT_S": "1",
    }
    command = [sys.executable, "-c", "from reranker.cli import main; main()", "serve"]
    command += ["--scorer-only", "--model", str(SHIPPED), "--variant", "int8"]
    command += ["--port", str(port), "--log-format", "text"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """What the server sent before closing the connection, and when it closed (seconds)."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return received, float("inf")
    return received, time.monotonic() - started


def test_a_connection_that_never_finishes_its_headers_is_closed(slow_limits_server: int) -> None:
    with socket.create_connection(("127.0.0.1", slow_limits_server)) as sock:
        sock.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        _, closed_after = read_until_closed(sock, limit_s=15)
    assert closed_after < 10  # the 1 s deadline, with room for a loaded machine
    # and the server still answers everyone else
    assert (
        httpx.get(f"http://127.0.0.1:{slow_limits_server}/_health", timeout=10).status_code == 200
    )


def test_a_body_that_never_arrives_in_full_is_a_408(slow_limits_server: int) -> None:
    with socket.create_connection(("127.0.0.1", slow_limits_server)) as sock:
        sock.sendall(
            b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"query": '
        )
        received, _ = read_until_closed(sock, limit_s=15)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"did not arrive within 1 s" in received


class PacedScorer(Scorer):
    """The real scorer at a pace proportional to the work, as a CPU scores: a fixed cost per
    pair plus a cost per character (a stand-in for a busy machine, deterministic)."""

    def __init__(self, inner: Scorer, per_pair_s: float, per_char_s: float) -> None:
        self.__dict__.update(inner.__dict__)
        self.inner = inner
        self.per_pair_s = per_pair_s
        self.per_char_s = per_char_s

    def warmup(self) -> None:
        pass

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        chars = sum(len(q) + len(p) for q, p in pairs)
        time.sleep(self.per_pair_s * len(pairs) + self.per_char_s * chars)
        return self.inner.score(pairs, **kwargs)


async def test_tiny_rerank_api_texts_cannot_make_long_windows_open_the_circuit_for_others(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer
) -> None:
    # 1,000 one-letter texts take 2 s here: 500 pairs/s, which made a window of 50 abstracts
    # (4 s of work) look like 0.1 s, so its timeout counted as the scorer's fault
    paced = PacedScorer(proxy_scorer, per_pair_s=0.002, per_char_s=0.00005)
    settings = proxy_settings(
        es_node,
        proxy_alias,
        max_window=1000,
        breaker_failures=3,
        breaker_cooloff_s=60,
        score_cache_size=0,
    )
    hurried = {"query": QUERY, "size": 5, "rerank": {"window": 50, "timeout_ms": 1200}}
    async with running(settings, paced) as http:
        tiny = await http.post("/rerank", json={"query": "q", "texts": ["a"] * 1000})
        answers = [await http.post(f"/{proxy_alias}/_search", json=hurried) for _ in range(5)]
        proxy = http._transport.app.state.proxy  # type: ignore[attr-defined]
        state = proxy.breaker.state
        honest = await http.post(
            f"/{proxy_alias}/_search", json={"query": QUERY, "size": 5, "rerank": {"window": 5}}
        )
    assert tiny.status_code == 200
    for answer in answers:  # refused up front (400) or timed out (200, degraded): never a fault
        assert answer.status_code in (200, 400), answer.text
        assert "circuit open" not in answer.text
    assert state == "closed"
    assert honest.status_code == 200
    assert honest.json()["rerank"]["degraded"] is None
