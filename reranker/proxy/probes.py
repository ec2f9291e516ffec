"""What the proxy learns about an index before reranking a search of it, by field caps (which
the client's read-only credentials may call), cached per index for a while: whether kNN with
the served embedder suits it, and how it scores long documents."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from elasticsearch import AsyncElasticsearch

from reranker.es.mappings import EMBEDDER_META_KEY, PASSAGES_META_KEY, embedder_stamp
from reranker.retrieval.queries import RESCORE_VECTOR_FIELD, VECTOR_FIELD

log = logging.getLogger(__name__)

#: how long what a probe found is trusted
PROBE_TTL_S = 60.0
#: indices remembered per probe before the memory is cleared
MAX_REMEMBERED = 1024


class IndexProbes:
    """The probes of one proxy; ``searcher`` gives the client's own view of the cluster. One
    field-caps request per index (``embedding`` and ``text`` together) answers both."""

    def __init__(self, searcher: Callable[[], Awaitable[AsyncElasticsearch]]) -> None:
        self._searcher = searcher
        self._known: dict[str, tuple[float, dict[str, Any]]] = {}
        self._warned: set[str] = set()  # indices whose foreign embedder was logged

    async def _fields(self, index: str) -> dict[str, Any] | None:
        """The field caps of ``embedding`` and ``text`` in ``index`` (cached a while);
        ``None`` when Elasticsearch gave no answer (not cached: asked again next time)."""
        now = time.monotonic()
        known = self._known.get(index)
        if known is not None and now - known[0] < PROBE_TTL_S:
            return known[1]
        try:
            caps = await (await self._searcher()).options(request_timeout=2.0).field_caps(
                index=index, fields=[VECTOR_FIELD, RESCORE_VECTOR_FIELD, "text"],
                ignore_unavailable=True,
                allow_no_indices=True,
            )  # fmt: skip
        except Exception as exc:
            log.warning("could not read the fields of %s: %s", index, exc)
            return None
        fields: dict[str, Any] = dict(caps.get("fields") or {})
        if len(self._known) > MAX_REMEMBERED:
            self._known.clear()
            self._warned.clear()
        self._known[index] = (now, fields)
        return fields

    async def embeddings(self, index: str, embedder_id: str) -> tuple[bool, str | None]:
        """Whether kNN with the embedder ``embedder_id`` suits the index (the hybrid default
        wherever it does; docs/experiments/first-stage.md: hybrid recall@100 is above BM25's
        on every dataset measured), and the other embedder the index's vectors came from when
        that is why not. No answer: BM25 only, never a failed search."""
        fields = await self._fields(index)
        if fields is None:
            return False, None
        types = fields.get(VECTOR_FIELD, {})
        has = set(types) == {"dense_vector"}
        stamped = (types.get("dense_vector") or {}).get("meta", {}).get(EMBEDDER_META_KEY)
        ours = embedder_stamp(embedder_id)
        if has and stamped and set(stamped) != {ours}:
            # vectors of another embedding space: kNN with our query vectors would rank at
            # random, so this index gets BM25 candidates
            if index not in self._warned:
                self._warned.add(index)
                log.warning("%s was embedded with %s, this proxy embeds with %s: BM25 only",
                            index, ", ".join(stamped), ours)  # fmt: skip
            return False, ", ".join(stamped)
        return has, None

    async def rescore_vectors(self, index: str, embedder_id: str) -> bool:
        """Whether every index behind ``index`` holds second-embedder vectors of
        ``embedder_id`` (``rescore_embedding``, its stamp in the field's metadata); no answer:
        no (the window is reranked without them, never a failed search)."""
        fields = await self._fields(index)
        types = (fields or {}).get(RESCORE_VECTOR_FIELD, {})
        vectors = types.get("dense_vector") or {}
        stamped = vectors.get("meta", {}).get(EMBEDDER_META_KEY)
        complete = set(types) == {"dense_vector"} and not vectors.get("indices")
        return complete and stamped == [embedder_stamp(embedder_id)]

    async def passages(self, index: str) -> str | None:
        """The passage combination ``index`` was indexed with (``reranker index --passages``,
        kept in the ``text`` field's metadata); ``None`` when it has none, the indices behind
        it disagree, or no answer came (truncate, never a failed search)."""
        fields = await self._fields(index)
        text = (fields or {}).get("text") or {}
        found = (text.get("text") or {}).get("meta", {}).get(PASSAGES_META_KEY)
        return str(found[0]) if isinstance(found, list) and len(found) == 1 else None
