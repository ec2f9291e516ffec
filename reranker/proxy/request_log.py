"""The request log for Kibana: one document per reranked request into
``<prefix>-YYYY.MM.DD`` (UTC), written in the background in bulk batches.

:meth:`RequestLog.submit` never blocks and never raises: when the bounded queue is full the
document is dropped and counted. Searching never waits for the log.

A bulk request that fails as a whole (the cluster unreachable, the node answering it killed,
a timeout) is sent again, and so are the documents it refused for a passing reason (429; a
5xx such as a shard whose primary was on a lost node and is not yet reassigned): up to
``retries`` more times, with exponential back-off from ``backoff_s`` (each retry counted in
``reranker_proxy_log_bulk_retries_total``); what still fails then is dropped and counted.
A request-log document (no fixed ``_id``) may be written twice that way, which the log can
afford. A UBI document refused because its ``_id`` is stored already (409) counts as written:
it is in the index, put there by an attempt whose answer was lost, by Elasticsearch itself
(a write it retries on the new primary after the old one failed mid-request finds the
document it had written) or, for an event resent to a restarted proxy, by the first proxy.

The same queue carries the User Behavior Insights documents (:mod:`reranker.proxy.ubi`):
:meth:`RequestLog.submit_to` queues a document for a named index under a fixed ``_id`` (a
``create``, so Elasticsearch refuses a second document with that id). Those documents are
counted under their own metrics (``reranker_proxy_ubi_documents_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from elasticsearch import AsyncElasticsearch

from reranker.es.mappings import load_mapping_file
from reranker.proxy.metrics import ProxyMetrics

log = logging.getLogger(__name__)


def load_template(prefix: str = "reranker-logs") -> dict[str, Any]:
    """The index template from ``es_mappings/logs-template.json``, for ``prefix-*``."""
    template = copy.deepcopy(load_mapping_file("logs-template.json"))
    template["index_patterns"] = [f"{prefix}-*"]
    return template


def daily_index(prefix: str, when: datetime) -> str:
    return f"{prefix}-{when.astimezone(UTC):%Y.%m.%d}"


@dataclass(frozen=True)
class Queued:
    """One document waiting to be written: a request-log document (``index`` ``None``: the
    day's log index) or a UBI document created under ``doc_id`` in ``index``."""

    doc: dict[str, Any]
    index: str | None = None
    doc_id: str | None = None

    @property
    def stream(self) -> str:
        return "request" if self.index is None else "ubi"


class RequestLog:
    def __init__(
        self,
        client: AsyncElasticsearch,
        metrics: ProxyMetrics,
        *,
        prefix: str = "reranker-logs",
        queue_size: int = 1000,
        batch_size: int = 200,
        flush_s: float = 1.0,
        install_template: bool = True,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.prefix = prefix
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.install_template = install_template
        self.queue: asyncio.Queue[Queued] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    async def start(self) -> None:
        """Install the index template (best effort) and start the writer."""
        if self.install_template:
            try:
                template = load_template(self.prefix)
                await self.client.options(request_timeout=10).indices.put_index_template(
                    name=self.prefix, **template
                )
            except Exception as exc:  # the log must never stop the proxy
                log.warning("could not install the %s index template: %s", self.prefix, exc)
        self._task = asyncio.create_task(self._run(), name="reranker-request-log")

    def submit(self, doc: dict[str, Any]) -> bool:
        """Queue ``doc`` (it must carry ``@timestamp``) or drop it if the queue is full;
        whether it was queued."""
        return self._put(Queued(doc))

    def submit_to(self, index: str, doc_id: str, doc: dict[str, Any]) -> bool:
        """Queue ``doc`` to be created as ``index/_doc/doc_id`` (a UBI document), or drop it
        if the queue is full; whether it was queued."""
        return self._put(Queued(doc, index, doc_id))

    def _put(self, item: Queued) -> bool:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self._drop(1, "queue full", item.stream)
            return False
        return True

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout_s``), then stop the writer."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout=timeout_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while not self.queue.empty():
            self._drop(1, "shutdown", self.queue.get_nowait().stream)

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            loop = asyncio.get_running_loop()
            until = loop.time() + self.flush_s
            while len(batch) < self.batch_size:
                remaining = until - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout=remaining))
                except TimeoutError:
                    break
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _write(self, batch: list[Queued]) -> None:
        """Bulk ``batch``, sending again what failed for a passing reason (see the module)."""
        pending = batch
        for attempt in range(self.retries + 1):
            if attempt:
                self.metrics.log_bulk_retries.inc()
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
            try:
                # no retries in the client: this loop resends, and counts what it resends
                response = await self.client.options(request_timeout=10, max_retries=0).bulk(
                    operations=self._operations(pending)
                )
            except asyncio.CancelledError:
                for item in pending:
                    self._drop(1, "shutdown", item.stream)
                raise
            except Exception as exc:
                log.warning(
                    "request log: a bulk of %d documents failed (attempt %d of %d): %s",
                    len(pending), attempt + 1, self.retries + 1, exc,
                )  # fmt: skip
                failed_reason = "bulk failed"
            else:
                pending = self._settle(pending, response)
                failed_reason = "document rejected"
            if not pending:
                return
        for item in pending:
            self._drop(1, failed_reason, item.stream)

    def _operations(self, batch: list[Queued]) -> list[dict[str, Any]]:
        operations: list[dict[str, Any]] = []
        for item in batch:
            if item.index is None:
                stamp = item.doc.get("@timestamp")
                when = (
                    datetime.fromisoformat(stamp) if isinstance(stamp, str) else datetime.now(UTC)
                )
                operations.append({"index": {"_index": daily_index(self.prefix, when)}})
            else:
                operations.append({"create": {"_index": item.index, "_id": item.doc_id}})
            operations.append(item.doc)
        return operations

    def _settle(self, batch: list[Queued], response: Any) -> list[Queued]:
        """Count what the bulk answer settles; the documents to send again."""
        results: list[dict[str, Any]] = [
            next(iter(entry.values()), {}) for entry in response.get("items", [])
        ]
        again: list[Queued] = []
        for item, result in zip(batch, results, strict=False):
            status = int(result.get("status", 500))
            if status < 300 or (status == 409 and item.index is not None):  # 409: stored
                self._written(item.stream)
            elif status == 429 or status >= 500:
                again.append(item)
            else:
                self._drop(1, "document rejected", item.stream)
        for item in batch[len(results) :]:  # an answer with fewer items than sent
            self._drop(1, "document rejected", item.stream)
        return again

    def _written(self, stream: str) -> None:
        self.written += 1
        if stream == "request":
            self.metrics.log_written.inc()
        else:
            self.metrics.ubi_written.inc()

    def _drop(self, count: int, reason: str, stream: str = "request") -> None:
        self.dropped += count
        if stream == "request":
            self.metrics.log_dropped.labels(reason).inc(count)
        else:
            self.metrics.ubi_dropped.labels(reason).inc(count)
