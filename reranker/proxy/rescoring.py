"""The second embedder for one search (:mod:`reranker.rerank.rescore`), started beside the
first stage: whether the index holds its vectors (field caps, cached) and then the query
embedded in a thread of its own, so that reranking the window does not wait for either."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from reranker.errors import ModelError
from reranker.rerank.rescore import Rescore

if TYPE_CHECKING:
    from reranker.proxy.probes import IndexProbes
    from reranker.retrieval.embed_cache import TextEncoder

log = logging.getLogger(__name__)


async def rescore_for(
    rescorer: TextEncoder | None, probes: IndexProbes, executor: Executor, index: str, text: str
) -> Rescore | None:
    """``rescorer`` for reranking ``index``'s window, with ``text`` embedded; ``None`` without
    one or when the index lacks its vectors. An embedder that fails on the query leaves it
    to the pipeline, which embeds it again and fails open."""
    if rescorer is None or not await probes.rescore_vectors(index, rescorer.model_id):
        return None
    rescore = Rescore(rescorer)
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, rescore.embedded, [text])
    except ModelError as exc:
        log.warning("the second embedder failed on the query: %s", exc)
        return rescore


class Beside:
    """An awaitable started now and awaited later (:meth:`result`); :meth:`abandon` when the
    work it was beside failed first (cancelled, or its own error marked seen)."""

    def __init__(self, task: asyncio.Future[Rescore | None] | None) -> None:
        self._task = task

    async def result(self) -> Rescore | None:
        return None if self._task is None else await self._task

    def abandon(self) -> None:
        if self._task is None:
            return
        if not self._task.done():
            self._task.cancel()
        elif not self._task.cancelled():
            self._task.exception()
