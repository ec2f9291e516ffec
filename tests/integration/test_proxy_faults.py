"""The proxy when Elasticsearch goes away or slows down: a real second node that is stopped and
started again mid-run, and a TCP relay that delays the cluster's answers.

Expected: ES-shaped 503/504 answers while the cluster is gone or too slow (never a 500, never a
hang past the deadline), ``/_health`` says so, and answers are 200 again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch

from reranker.credentials import remove_credentials
from reranker.es.node import LocalNode, NodeStatus
from reranker.rerank.scorer import Scorer
from reranker.retrieval.embedder import Embedder
from tests.conftest import es_client_for, es_settings, free_port
from tests.helpers import assert_es_error
from tests.integration.conftest import (
    QUERY,
    delete_indices_named_after,
    index_docs,
    proxy_settings,
    running,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def rerank(window: int = 10, **rerank: Any) -> dict[str, Any]:
    return {"query": QUERY, "size": window, "rerank": {"window": window, **rerank}}


# ------------------------------------------------------------------ a node stopped mid-run


@pytest.fixture
def second_node(
    embedder: Embedder, scifact_docs: list[dict[str, Any]]
) -> Iterator[tuple[LocalNode, str]]:
    """A node of its own (the session node must stay up for the other tests), 30 docs."""
    data_dir = Path(tempfile.mkdtemp(prefix="reranker-fault-es-data-"))
    node = LocalNode(port=free_port(), heap="512m", data_dir=data_dir)
    try:
        node.up()
        alias = f"faults-{uuid.uuid4().hex[:8]}"
        with es_client_for(node.url) as client:
            index_docs(client, embedder, scifact_docs[:30], alias, Path(tempfile.mkdtemp()))
        yield node, alias
    finally:
        node.down()
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(node.node_dir, ignore_errors=True)  # a throw-away node on a free port
        remove_credentials(node.port)


@pytest.mark.slow  # a node of its own, started twice: about a minute, a fifth of `-m "not slow"`
async def test_elasticsearch_stopped_and_restarted_mid_run(
    second_node: tuple[LocalNode, str], proxy_scorer: Scorer
) -> None:
    node, alias = second_node
    status = NodeStatus(True, node.url, None, None, node.home, "fault-test node")
    settings = proxy_settings(status, alias, es=es_settings(node.url, request_timeout_s=5))
    answers: list[tuple[float, httpx.Response]] = []
    async with running(settings, proxy_scorer) as http:

        async def client(body: dict[str, Any]) -> None:
            while not stop.is_set():
                answers.append((time.monotonic(), await http.post(f"/{alias}/_search", json=body)))
                await asyncio.sleep(0.05)

        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(client(rerank())),
            asyncio.create_task(client({"query": QUERY, "size": 3})),  # pass-through
        ]
        await asyncio.sleep(1.0)
        stopping_at = time.monotonic()
        await asyncio.to_thread(node.down)
        stopped_at = time.monotonic()
        await asyncio.sleep(1.5)
        health_down = await http.get("/_health")
        starting_at = time.monotonic()
        await asyncio.to_thread(node.up)
        restarted_at = time.monotonic()
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*tasks)
        health_up = await http.get("/_health")

    statuses = {response.status_code for _, response in answers}
    assert statuses <= {200, 502, 503, 504}, statuses
    before = [r for t, r in answers if t < stopping_at]
    during = [r for t, r in answers if stopped_at + 0.5 < t < starting_at]
    after = [r for t, r in answers if t > restarted_at + 0.5]
    assert before and all(r.status_code == 200 for r in before)
    assert during and all(r.status_code in (502, 503, 504) for r in during)
    for response in during:
        assert_es_error(response, response.status_code)
    assert after and all(r.status_code == 200 for r in after)
    assert health_down.status_code == 503
    assert health_down.json()["elasticsearch"]["reachable"] is False
    assert health_up.status_code == 200


# ------------------------------------------------------------------ a slow cluster


class SlowRelay:
    """A TCP relay to Elasticsearch that holds each answer chunk back for ``delay_s``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> SlowRelay:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, slow: bool) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while chunk := await src.read(65536):
                    if slow and self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    dst.write(chunk)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(
            pipe(reader, upstream_writer, False), pipe(upstream_reader, writer, True)
        )


@pytest.fixture
async def relay(es_node: NodeStatus) -> AsyncIterator[SlowRelay]:
    port = int(es_node.url.rsplit(":", 1)[1])
    async with SlowRelay(port) as relay:
        yield relay


@pytest.fixture(scope="module")
def slow_alias(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    alias = f"slow-{uuid.uuid4().hex[:8]}"
    index_docs(es_client, embedder, scifact_docs[:30], alias, tmp_path_factory.mktemp("slow"))
    yield alias
    delete_indices_named_after(es_client, alias)


async def test_a_slow_cluster_gets_504s_within_the_deadline_then_recovers(
    es_node: NodeStatus, relay: SlowRelay, slow_alias: str, proxy_scorer: Scorer
) -> None:
    settings = proxy_settings(
        es_node,
        slow_alias,
        es=es_settings(relay.url, credentials_of=es_node.url, request_timeout_s=1.0),
    )
    async with running(settings, proxy_scorer) as http:
        assert (await http.post(f"/{slow_alias}/_search", json=rerank())).status_code == 200
        relay.delay_s = 3.0
        began = time.monotonic()
        # a small window: the up-front admission check must not refuse it on a busy CPU
        reranked = await http.post(f"/{slow_alias}/_search", json=rerank(window=2, timeout_ms=800))
        reranked_s = time.monotonic() - began
        began = time.monotonic()
        passed = await http.post(f"/{slow_alias}/_search", json={"query": QUERY})
        passed_s = time.monotonic() - began
        relay.delay_s = 0.0
        recovered = await http.post(f"/{slow_alias}/_search", json=rerank())
    assert_es_error(reranked, 504)
    assert reranked_s < 2.0  # the 800 ms budget, not the cluster's 3 s
    assert_es_error(passed, 504)
    assert passed_s < 2.5  # the client's 1 s request timeout
    assert recovered.status_code == 200
    assert recovered.json()["rerank"]["degraded"] is None
