"""What the proxy learns about an index before reranking a search of it, by field caps (which
the client's read-only credentials may call), cached per index for a while: whether kNN with
the served embedder suits it, and how it scores long documents."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from elasticsearch import AsyncElasticsearch

from reranker.es.mappings import EMBEDDER_META_KEY, PASSAGES_META_KEY, embedder_stamp
from reranker.retrieval.queries import VECTOR_FIELD

log = logging.getLogger(__name__)

#: how long what a probe found is trusted
PROBE_TTL_S = 60.0
#: indices remembered per probe before the memory is cleared
MAX_REMEMBERED = 1024
T = TypeVar("T")


class IndexProbes:
    """The probes of one proxy; ``searcher`` gives the client's own view of the cluster."""

    def __init__(self, searcher: Callable[[], Awaitable[AsyncElasticsearch]]) -> None:
        self._searcher = searcher
        self._known: dict[tuple[str, str], tuple[float, Any]] = {}

    async def _cached(self, kind: str, index: str, probe: Callable[[], Awaitable[T]]) -> T:
        now = time.monotonic()
        known = self._known.get((kind, index))
        if known is not None and now - known[0] < PROBE_TTL_S:
            value: T = known[1]
            return value
        value = await probe()
        if len(self._known) > MAX_REMEMBERED:
            self._known.clear()
        self._known[(kind, index)] = (now, value)
        return value

    async def embeddings(self, index: str, embedder_id: str) -> tuple[bool, str | None]:
        """Whether kNN with the embedder ``embedder_id`` suits the index (the hybrid default
        wherever it does; docs/experiments/first-stage.md: hybrid recall@100 is above BM25's
        on every dataset measured), and the other embedder the index's vectors came from when
        that is why not. No answer: BM25 only, never a failed search."""

        async def probe() -> tuple[bool, str | None]:
            try:
                caps = await (await self._searcher()).options(request_timeout=2.0).field_caps(
                    index=index, fields=VECTOR_FIELD, ignore_unavailable=True,
                    allow_no_indices=True,
                )  # fmt: skip
            except Exception as exc:
                log.warning("could not tell whether %s has embeddings: %s", index, exc)
                return False, None
            types = caps.get("fields", {}).get(VECTOR_FIELD, {})
            has = set(types) == {"dense_vector"}
            stamped = (types.get("dense_vector") or {}).get("meta", {}).get(EMBEDDER_META_KEY)
            ours = embedder_stamp(embedder_id)
            if has and stamped and set(stamped) != {ours}:
                # vectors of another embedding space: kNN with our query vectors would rank
                # at random, so this index gets BM25 candidates
                log.warning("%s was embedded with %s, this proxy embeds with %s: BM25 only",
                            index, ", ".join(stamped), ours)  # fmt: skip
                return False, ", ".join(stamped)
            return has, None

        return await self._cached(f"embeddings:{embedder_id}", index, probe)

    async def passages(self, index: str) -> str | None:
        """The passage combination ``index`` was indexed with (``reranker index --passages``,
        kept in the ``text`` field's metadata); ``None`` when it has none, the indices behind
        it disagree, or no answer came (truncate, never a failed search)."""

        async def probe() -> str | None:
            try:
                caps = (
                    await (await self._searcher())
                    .options(request_timeout=2.0)
                    .field_caps(
                        index=index, fields="text", ignore_unavailable=True, allow_no_indices=True
                    )
                )
            except Exception as exc:
                log.warning("could not read how %s scores long documents: %s", index, exc)
                return None
            text = (caps.get("fields") or {}).get("text") or {}
            found = (text.get("text") or {}).get("meta", {}).get(PASSAGES_META_KEY)
            return str(found[0]) if isinstance(found, list) and len(found) == 1 else None

        return await self._cached("passages", index, probe)
