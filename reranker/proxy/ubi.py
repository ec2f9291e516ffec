"""User Behavior Insights (UBI) on the search side: a ``query_id`` for every search answered,
and a query document naming the hits shown and their positions.

The names are UBI's, so tools written for it read what the proxy writes: OpenSearch's UBI
plugin (github.com/opensearch-project/user-behavior-insights: ``ubi_queries`` mapping,
``ext.ubi`` in requests and responses) and the UBI JSON schema 1.3.0 (github.com/o19s/ubi,
``query.request.schema.json``, ``query.response.schema.json``).

- Request: an optional ``ext.ubi`` object with ``query_id`` (the client's own; else the proxy
  makes a UUID), ``user_query``, ``client_id``, ``application``, ``query_attributes`` and
  ``object_id_field`` (only ``_id``: the hit ids are the documents' ``_id``). It is taken off
  the body before Elasticsearch sees it.
- Response: ``ext.ubi.query_id`` on every search answered with status 200, reranked or passed
  through, in ``_search`` and in each ``_msearch`` entry.
- Query document (``ubi_queries``, ``_id`` = ``query_id``, created once): ``timestamp``,
  ``query_id``, ``query`` (the search body as sent, cut at 10,000 characters),
  ``query_response_id``, ``query_response_hit_ids`` (in the order shown), ``user_query``
  (given, else the query's text), ``query_attributes``, ``client_id``, ``application``, and
  the proxy's own ``reranker`` object (``index``, ``from``: hit *i* was at position
  ``from + i + 1``, ``shown``, ``ranker``: ``rerank`` or ``passthrough``, ``model_version``,
  ``degraded``).

The searches are also remembered here (:class:`ShownQueries`, bounded) so that events can be
checked against what was shown (:mod:`reranker.proxy.events`); older ones are read back from
``ubi_queries`` by id (a real-time get).
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from elasticsearch import ApiError, AsyncElasticsearch

from reranker.es.mappings import load_mapping_file
from reranker.feedback.ubi import (
    EXT_NAME,
    MAX_ID_CHARS,
    MAX_QUERY_CHARS,
    MAX_USER_QUERY_CHARS,
    OBJECT_ID_FIELD,
    REQUEST_FIELDS,
    ubi_timestamp,
)
from reranker.proxy import errors
from reranker.proxy.errors import ProxyError
from reranker.proxy.limits import ClientQuotas
from reranker.proxy.metrics import ProxyMetrics
from reranker.proxy.request import extract_query_text
from reranker.proxy.request_log import RequestLog
from reranker.proxy.settings import ProxySettings

log = logging.getLogger(__name__)


def load_templates(queries_index: str, events_index: str) -> dict[str, dict[str, Any]]:
    """The index templates from ``es_mappings/ubi-*-template.json`` for the two indices, by
    template name (the index's own name)."""
    out: dict[str, dict[str, Any]] = {}
    for index, name in (
        (queries_index, "ubi-queries-template.json"),
        (events_index, "ubi-events-template.json"),
    ):
        template = copy.deepcopy(load_mapping_file(name))
        template["index_patterns"] = [index]
        out[index] = template
    return out


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class UbiParams:
    """A search's ``ext.ubi``, checked; ``query_id`` is always set."""

    query_id: str
    supplied: bool = False
    """The client chose the ``query_id``."""
    user_query: str | None = None
    client_id: str | None = None
    user_id: str | None = None
    """Who searched, for personalisation (UBI 1.3.0's event ``user_id``; else ``client_id``)."""
    application: str | None = None
    query_attributes: dict[str, Any] | None = None

    @property
    def subject(self) -> str | None:
        """The user a personal profile is kept for: ``user_id``, else ``client_id``."""
        return self.user_id or self.client_id


def split_ubi(body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The body without ``ext.ubi``, and that object (``None`` if absent)."""
    ext = body.get("ext")
    if not isinstance(ext, dict) or EXT_NAME not in ext:
        return body, None
    rest = dict(body)
    ext = dict(ext)
    raw = ext.pop(EXT_NAME)
    if ext:
        rest["ext"] = ext
    else:
        del rest["ext"]
    return rest, raw


def _id_field(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise errors.bad_request(f"[ext.ubi.{key}] must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise errors.bad_request(
            f"[ext.ubi.{key}] is {len(value)} characters long, beyond UBI's {MAX_ID_CHARS}"
        )
    if any(ord(c) < 32 for c in value):
        raise errors.bad_request(f"[ext.ubi.{key}] must not hold control characters")
    return value


def parse_ubi(raw: Any) -> UbiParams:
    """``ext.ubi`` (``None``: absent) → :class:`UbiParams`; wrong fields are 400s."""
    if raw is None:
        return UbiParams(query_id=str(uuid.uuid4()))
    if not isinstance(raw, dict):
        raise errors.bad_request("[ext.ubi] must be an object")
    unknown = sorted(set(raw) - set(REQUEST_FIELDS))
    if unknown:
        raise errors.bad_request(
            f"unknown field(s) [{', '.join(unknown)}] in [ext.ubi]; "
            f"known: {', '.join(REQUEST_FIELDS)}"
        )
    object_id_field = raw.get("object_id_field")
    if object_id_field is not None and object_id_field != OBJECT_ID_FIELD:
        raise errors.bad_request(
            "[ext.ubi.object_id_field] may only be _id here: the proxy records the hits' _id"
        )
    user_query = raw.get("user_query")
    if user_query is not None:
        if not isinstance(user_query, str):
            raise errors.bad_request("[ext.ubi.user_query] must be a string")
        if len(user_query) > MAX_USER_QUERY_CHARS:
            raise errors.bad_request(
                f"[ext.ubi.user_query] is longer than {MAX_USER_QUERY_CHARS} characters"
            )
    attributes = raw.get("query_attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise errors.bad_request("[ext.ubi.query_attributes] must be an object")
    query_id = _id_field(raw, "query_id")
    return UbiParams(
        query_id=query_id or str(uuid.uuid4()),
        supplied=query_id is not None,
        user_query=user_query,
        client_id=_id_field(raw, "client_id"),
        user_id=_id_field(raw, "user_id"),
        application=_id_field(raw, "application"),
        query_attributes=attributes,
    )


# --------------------------------------------------------------------------- what was shown


@dataclass
class ShownQuery:
    """One search as shown: hit ``i`` of ``hits`` was at position ``start + i + 1``."""

    query_id: str
    timestamp: datetime
    hits: tuple[str, ...]
    start: int = 0
    user_query: str | None = None
    client_id: str | None = None
    application: str | None = None
    #: who made the search (:func:`reranker.proxy.app.client_owner`: a digest of the proxy
    #: API key it came with; ``None`` on a proxy without keys): only they may send its events
    owner: str | None = None
    #: the user the search named (``ext.ubi.user_id``, else ``client_id``): clicks on it
    #: build that user's profile on ``index``, the index expression searched
    subject: str | None = None
    index: str | None = None
    #: keys of the events accepted for it so far (duplicates are refused)
    seen: set[tuple[str, ...]] = field(default_factory=set)

    @property
    def positions(self) -> tuple[int, int]:
        """The first and last position shown (``(start + 1, start)`` when nothing was)."""
        return self.start + 1, self.start + len(self.hits)

    def object_at(self, ordinal: int) -> str | None:
        index = ordinal - self.start - 1
        return self.hits[index] if 0 <= index < len(self.hits) else None

    def position_of(self, object_id: str) -> int | None:
        try:
            return self.start + self.hits.index(object_id) + 1
        except ValueError:
            return None


#: what one remembered search costs besides its ids, in bytes (the objects, the dict slot)
ENTRY_OVERHEAD_BYTES = 600


def entry_bytes(entry: ShownQuery) -> int:
    """An estimate of the memory one remembered search holds: its ids and strings (each with
    CPython's per-object overhead) plus :data:`ENTRY_OVERHEAD_BYTES`."""
    texts = (entry.query_id, entry.user_query, entry.client_id, entry.application, entry.owner)
    strings = sum(len(t) + 50 for t in texts if t)
    return ENTRY_OVERHEAD_BYTES + strings + sum(len(h) + 57 for h in entry.hits)


class ShownQueries:
    """The most recent searches by ``query_id`` (least recently used dropped first), at most
    ``capacity`` of them and ``max_bytes`` of memory (:func:`entry_bytes`; accepted events'
    keys count too)."""

    def __init__(self, capacity: int, max_bytes: int = 64 << 20) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, ShownQuery] = OrderedDict()
        self._sizes: dict[str, int] = {}

    def __contains__(self, query_id: object) -> bool:
        return query_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query_id: str) -> ShownQuery | None:
        entry = self._entries.get(query_id)
        if entry is not None:
            self._entries.move_to_end(query_id)
        return entry

    def add(self, entry: ShownQuery) -> bool:
        """Remember ``entry``; ``False`` (nothing changed) if its id is already known."""
        if entry.query_id in self._entries:
            return False
        self._entries[entry.query_id] = entry
        self._sizes[entry.query_id] = size = entry_bytes(entry)
        self.bytes += size
        self._evict()
        return True

    def grew(self, entry: ShownQuery, added: int) -> None:
        """``entry`` now holds ``added`` more bytes (an accepted event's key)."""
        if entry.query_id in self._sizes:
            self._sizes[entry.query_id] += added
            self.bytes += added
            self._evict()

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.capacity or self.bytes > self.max_bytes):
            query_id, _ = self._entries.popitem(last=False)
            self.bytes -= self._sizes.pop(query_id, 0)


def _page_start(body: Mapping[str, Any], params: Mapping[str, str]) -> int:
    """``from`` of a search Elasticsearch (or the proxy) answered with 200: valid by then."""
    value: Any = body.get("from", params.get("from", 0))
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def hit_ids(answer: Mapping[str, Any]) -> tuple[str, ...]:
    hits = answer.get("hits")
    listed = hits.get("hits") if isinstance(hits, dict) else None
    if not isinstance(listed, list):
        return ()
    return tuple(str(h.get("_id")) for h in listed if isinstance(h, dict) and "_id" in h)


def query_document(
    params: UbiParams,
    shown: ShownQuery,
    *,
    index: str,
    body: Mapping[str, Any],
    answer: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``ubi_queries`` document of a search answered with ``answer``."""
    rerank = answer.get("rerank")
    model = rerank.get("model") if isinstance(rerank, dict) else None
    query = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    doc: dict[str, Any] = {
        "timestamp": ubi_timestamp(shown.timestamp),
        "query_id": params.query_id,
        "query": query[:MAX_QUERY_CHARS],
        "query_response_id": str(uuid.uuid4()),
        "query_response_hit_ids": list(shown.hits),
        "user_query": shown.user_query,
        "query_attributes": params.query_attributes or {},
        "client_id": params.client_id,
        "user_id": params.user_id,
        "application": params.application,
        "reranker": {
            "index": index,
            "from": shown.start,
            "shown": len(shown.hits),
            "ranker": "rerank" if isinstance(rerank, dict) else "passthrough",
            "model_version": model.get("version") if isinstance(model, dict) else None,
            "degraded": bool(rerank.get("degraded")) if isinstance(rerank, dict) else False,
            "owner": shown.owner,
        },
    }
    return doc


def shown_from_document(source: Mapping[str, Any]) -> ShownQuery | None:
    """A query document read back from ``ubi_queries``; ``None`` if it is not one of ours."""
    try:
        query_id = str(source["query_id"])
        when = datetime.fromisoformat(str(source["timestamp"]).replace("Z", "+00:00"))
        hits = tuple(str(h) for h in source.get("query_response_hit_ids") or ())
        own = source.get("reranker") or {}
        start = int(own.get("from") or 0)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return ShownQuery(
        query_id=query_id,
        timestamp=when,
        hits=hits,
        start=start,
        user_query=source.get("user_query"),
        client_id=source.get("client_id"),
        application=source.get("application"),
        owner=own.get("owner"),
        subject=source.get("user_id") or source.get("client_id"),
        index=own.get("index"),
    )


# --------------------------------------------------------------------------- the proxy's state


class UbiLog:
    """The proxy's UBI side: ``ext.ubi`` in, ``query_id`` out, query documents into the
    request log's queue, and the searches remembered for checking events."""

    def __init__(
        self,
        settings: ProxySettings,
        metrics: ProxyMetrics,
        client: AsyncElasticsearch,
        writer: RequestLog,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.client = client
        self.writer = writer
        self.queries_index = settings.ubi_queries_index
        self.events_index = settings.ubi_events_index
        self.shown = ShownQueries(settings.ubi_cache_size, settings.ubi_cache_bytes)
        #: events accepted per client over time (:attr:`ProxySettings.ubi_client_events_per_s`)
        self.quotas = ClientQuotas(settings.ubi_client_events_per_s, settings.ubi_max_events)
        #: query ids of searches begun and not yet finished (two at once may not share one)
        self._pending: set[str] = set()

    async def start(self) -> None:
        """Install the two index templates, and their new fields into indices that exist
        (best effort: the proxy starts regardless)."""
        for name, template in load_templates(self.queries_index, self.events_index).items():
            try:
                await self.client.options(request_timeout=10).indices.put_index_template(
                    name=name, **template
                )
            except Exception as exc:
                log.warning("could not install the %s index template: %s", name, exc)
            try:  # an index made by an older template gets the fields added since
                client = self.client.options(request_timeout=10)
                if await client.indices.exists(index=name):
                    properties = template["template"]["mappings"]["properties"]
                    await client.indices.put_mapping(index=name, properties=properties)
            except Exception as exc:
                log.warning("could not bring the %s mapping up to date: %s", name, exc)

    async def begin(self, body: dict[str, Any]) -> tuple[dict[str, Any], UbiParams]:
        """The body Elasticsearch gets (``ext.ubi`` taken off) and the search's UBI
        parameters; a 400 for a bad ``ext.ubi`` or a ``query_id`` already used: by a search
        remembered here, by one running now (another ``_msearch`` entry too), or by one stored
        in the queries index (a restarted proxy remembers nothing). The id stays reserved
        until :meth:`finish` or :meth:`release`."""
        rest, raw = split_ubi(body)
        params = parse_ubi(raw)
        query_id = params.query_id
        used = errors.bad_request(
            f"[ext.ubi.query_id] {query_id} was already used by another search; "
            "give every search its own query_id"
        )
        if params.supplied and (query_id in self.shown or query_id in self._pending):
            raise used
        self._pending.add(query_id)  # before the look-up: a concurrent twin is refused above
        if params.supplied:
            try:
                stored = await self._stored(query_id)
            except ProxyError:
                self._pending.discard(query_id)
                raise
            if stored:
                self._pending.discard(query_id)
                raise used
        return rest, params

    def release(self, params: UbiParams) -> None:
        """The search that reserved ``params.query_id`` ended without being shown."""
        self._pending.discard(params.query_id)

    async def _stored(self, query_id: str) -> bool:
        """Whether the queries index holds ``query_id`` (a real-time get); a 503 when it
        cannot be read, since the id could then not be checked."""
        try:
            return bool(
                await self.client.options(request_timeout=10).exists(
                    index=self.queries_index, id=query_id
                )
            )
        except ApiError as exc:
            if exc.meta.status == 404:  # no queries index yet
                return False
            raise self._unreadable(exc, "check a query_id") from None
        except Exception as exc:
            raise self._unreadable(exc, "check a query_id") from None

    def finish(
        self,
        params: UbiParams,
        index: str,
        body: Mapping[str, Any],
        url_params: Mapping[str, str],
        answer: dict[str, Any],
        owner: str | None = None,
    ) -> None:
        """Put ``ext.ubi.query_id`` into a search's answer (status 200), remember what it
        showed (and who asked: ``owner``) and queue its query document."""
        self._pending.discard(params.query_id)
        ext = answer.get("ext")
        ext = dict(ext) if isinstance(ext, dict) else {}
        ext[EXT_NAME] = {"query_id": params.query_id}
        answer["ext"] = ext
        rerank = answer.get("rerank")
        text = params.user_query
        if text is None and isinstance(rerank, dict) and isinstance(rerank.get("query_text"), str):
            text = rerank["query_text"]
        if text is None:
            text = extract_query_text(body.get("query")) or url_params.get("q")
        shown = ShownQuery(
            query_id=params.query_id,
            timestamp=datetime.now(UTC),
            hits=hit_ids(answer),
            start=_page_start(body, url_params),
            user_query=text[:MAX_USER_QUERY_CHARS] if text else None,
            client_id=params.client_id,
            application=params.application,
            owner=owner,
            subject=params.subject,
            index=index,
        )
        if not self.shown.add(shown):
            log.warning("query_id %s was given to two searches at once", params.query_id)
        doc = query_document(params, shown, index=index, body=body, answer=answer)
        self.metrics.ubi_queries.inc()
        self.writer.submit_to(self.queries_index, params.query_id, doc)

    async def lookup(self, query_ids: Iterable[str]) -> dict[str, ShownQuery]:
        """The searches behind ``query_ids``: remembered ones, then the rest read back from
        the queries index (real time); ids found nowhere are absent. A 503 when the index
        cannot be read (nothing can be checked then)."""
        found: dict[str, ShownQuery] = {}
        missing: list[str] = []
        for query_id in dict.fromkeys(query_ids):
            entry = self.shown.get(query_id)
            if entry is not None:
                found[query_id] = entry
            else:
                missing.append(query_id)
        if not missing:
            return found
        try:
            answer = await self.client.options(request_timeout=10).mget(
                index=self.queries_index, ids=missing
            )
        except ApiError as exc:
            if exc.meta.status == 404:  # no queries index yet: none of them is known
                return found
            raise self._unreadable(exc, "check events") from None
        except Exception as exc:
            raise self._unreadable(exc, "check events") from None
        for doc in answer.get("docs", []):
            if not doc.get("found"):
                continue
            entry = shown_from_document(doc.get("_source") or {})
            if entry is not None and entry.query_id in missing:
                self.shown.add(entry)
                found[entry.query_id] = self.shown.get(entry.query_id) or entry
        return found

    def _unreadable(self, exc: Exception, what: str) -> ProxyError:
        log.warning("could not read %s to %s: %s", self.queries_index, what, exc)
        return errors.upstream_unavailable(
            f"cannot {what} now: the queries index [{self.queries_index}] could not be "
            "read; nothing was accepted, send the request again"
        )
