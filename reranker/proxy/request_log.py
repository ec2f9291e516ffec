"""The request log for Kibana: one document per reranked request into
``<prefix>-YYYY.MM.DD`` (UTC), written in the background in bulk batches.

:meth:`RequestLog.submit` never blocks and never raises: when the bounded queue is full the
document is dropped and counted; a failed bulk request is counted as dropped too. Searching
never waits for the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
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
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.prefix = prefix
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    async def start(self) -> None:
        """Install the index template (best effort) and start the writer."""
        try:
            template = load_template(self.prefix)
            await self.client.options(request_timeout=10).indices.put_index_template(
                name=self.prefix, **template
            )
        except Exception as exc:  # the log must never stop the proxy
            log.warning("could not install the %s index template: %s", self.prefix, exc)
        self._task = asyncio.create_task(self._run(), name="reranker-request-log")

    def submit(self, doc: dict[str, Any]) -> None:
        """Queue ``doc`` (it must carry ``@timestamp``) or drop it if the queue is full."""
        try:
            self.queue.put_nowait(doc)
        except asyncio.QueueFull:
            self._drop(1, "queue full")

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
        left = self.queue.qsize()
        if left:
            self._drop(left, "shutdown")

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

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        operations: list[dict[str, Any]] = []
        for doc in batch:
            stamp = doc.get("@timestamp")
            when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else datetime.now(UTC)
            operations.append({"index": {"_index": daily_index(self.prefix, when)}})
            operations.append(doc)
        try:
            response = await self.client.options(request_timeout=10).bulk(operations=operations)
        except Exception as exc:
            log.warning("request log: a bulk of %d documents failed: %s", len(batch), exc)
            self._drop(len(batch), "bulk failed")
            return
        failed = 0
        if response.get("errors"):
            for item in response.get("items", []):
                result: dict[str, Any] = next(iter(item.values()), {})
                if int(result.get("status", 500)) >= 300:
                    failed += 1
        if failed:
            self._drop(failed, "document rejected")
        self.written += len(batch) - failed
        self.metrics.log_written.inc(len(batch) - failed)

    def _drop(self, count: int, reason: str) -> None:
        self.dropped += count
        self.metrics.log_dropped.labels(reason).inc(count)
