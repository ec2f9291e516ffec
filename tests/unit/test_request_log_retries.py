"""The proxy's background writer (request log and UBI documents) when a bulk request fails: what
a passing failure refuses is sent again with back-off and counted; what cannot pass is
dropped as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from elastic_transport import ConnectionError as TransportConnectionError

from reranker.proxy.metrics import ProxyMetrics
from reranker.proxy.request_log import Queued, RequestLog

pytestmark = pytest.mark.anyio

Answer = Callable[[list[dict[str, Any]]], dict[str, Any]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeBulk:
    """A client whose bulk answers come from ``answers`` in turn (an exception is raised);
    records each request's documents."""

    def __init__(self, *answers: Answer | Exception) -> None:
        self.answers = list(answers)
        self.sent: list[list[dict[str, Any]]] = []
        self.options_given: dict[str, Any] = {}

    def options(self, **options: Any) -> FakeBulk:
        self.options_given.update(options)
        return self

    async def bulk(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        docs = operations[1::2]
        self.sent.append(docs)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer(docs)


def statuses(*codes: int) -> Answer:
    return lambda docs: {"items": [{"create": {"status": code}} for code in codes]}


def all_created(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": [{"create": {"status": 201}} for _ in docs]}


def ubi(n: int) -> Queued:
    return Queued({"n": n}, "ubi_events", f"event-{n}")


def writer(client: FakeBulk, metrics: ProxyMetrics, retries: int = 5) -> RequestLog:
    return RequestLog(client, metrics, retries=retries, backoff_s=0.001)  # type: ignore[arg-type]


def metric(metrics: ProxyMetrics, line: str) -> bool:
    return line in metrics.render().decode()


async def test_a_bulk_lost_with_its_node_is_sent_again_and_written() -> None:
    client = FakeBulk(TransportConnectionError("connection reset"), all_created)
    metrics = ProxyMetrics()
    log = writer(client, metrics)
    await log._write([ubi(1), ubi(2)])
    assert client.sent == [[{"n": 1}, {"n": 2}]] * 2
    assert log.written == 2 and log.dropped == 0
    assert metric(metrics, "reranker_proxy_log_bulk_retries_total 1.0")
    assert metric(metrics, "reranker_proxy_ubi_documents_written_total 2.0")


async def test_only_documents_refused_for_a_passing_reason_are_sent_again() -> None:
    client = FakeBulk(statuses(201, 503, 429, 400), all_created)
    metrics = ProxyMetrics()
    log = writer(client, metrics)
    await log._write([ubi(1), ubi(2), ubi(3), ubi(4)])
    assert client.sent[1] == [{"n": 2}, {"n": 3}]
    assert log.written == 3 and log.dropped == 1
    assert metric(metrics, 'reranker_proxy_ubi_documents_dropped_total{reason="document rejected"}')


async def test_a_ubi_document_refused_as_stored_already_counts_as_written() -> None:
    """Its id is in the index: written by an attempt whose answer was lost, or by
    Elasticsearch retrying the write on a new primary."""
    metrics = ProxyMetrics()
    log = writer(FakeBulk(statuses(409)), metrics)
    await log._write([ubi(1)])
    assert log.written == 1 and log.dropped == 0
    assert metric(metrics, "reranker_proxy_ubi_documents_written_total 1.0")


async def test_a_cluster_gone_for_longer_than_the_retries_drops_the_batch_counted() -> None:
    failures = [TransportConnectionError("refused") for _ in range(3)]
    metrics = ProxyMetrics()
    log = writer(FakeBulk(*failures), metrics, retries=2)
    await log._write([ubi(1), Queued({"n": 2})])
    assert log.written == 0 and log.dropped == 2
    assert metric(metrics, "reranker_proxy_log_bulk_retries_total 2.0")
    assert metric(metrics, 'reranker_proxy_ubi_documents_dropped_total{reason="bulk failed"} 1.0')
    assert metric(metrics, 'reranker_proxy_log_documents_dropped_total{reason="bulk failed"} 1.0')


async def test_the_writer_resends_itself_and_never_lets_the_client_resend_unseen() -> None:
    client = FakeBulk(all_created)
    await writer(client, ProxyMetrics())._write([ubi(1)])
    assert client.options_given["max_retries"] == 0
