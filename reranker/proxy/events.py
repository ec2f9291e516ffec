"""``POST /_reranker/events``: batches of UBI events (impressions, clicks, ...), each checked
against the search it names and accepted or rejected on its own, with a reason.

The body is NDJSON (one event object per line; a line that is not JSON is that event's
``malformed_json`` rejection) or one JSON array of events. An event has UBI's fields (the UBI
1.3.0 event schema, github.com/o19s/ubi ``schema/1.3.0/event.schema.json``; the
``ubi_events`` mapping of github.com/opensearch-project/user-behavior-insights):

- ``action_name`` — one of UBI's ``impression``, ``click``, ``click_through``, ``add_to_cart``,
  ``purchase``, ``watch``, ``view``;
- ``query_id`` — a ``query_id`` the proxy gave a search (``ext.ubi.query_id``);
- ``timestamp`` — ISO 8601 with a time zone (``2025-02-18T10:00:00.000Z``);
- ``client_id`` and/or ``session_id`` (at least one; each up to 100 characters);
- ``event_attributes.object.object_id`` and ``event_attributes.position.ordinal`` (1-based
  position on the results, as shown: ``from + rank``) — required for ``impression``, ``click``
  and ``click_through``, checked wherever given;
- optional: ``application``, ``user_id``, ``message_type``, ``message``, ``user_query`` and any
  further ``event_attributes``.

Rejection reasons (``items[i].error.type``, with the item's status): ``malformed_json`` (400),
``invalid_event`` (400: a field missing or of the wrong type, said which), ``unknown_action``
(400), ``unknown_query_id`` (404), ``position_out_of_range`` (400: beyond the positions
shown), ``object_not_shown`` (400: the object was not among the hits), ``position_mismatch``
(400: the object was shown at another position), ``future_timestamp`` (400: later than now
plus the allowed clock skew), ``before_query`` (400: earlier than its search less the skew),
``duplicate`` (409: the same ``query_id``, ``action_name``, object and position accepted
before, in this batch or an earlier one), ``queue_full`` (429: valid, but the write queue was
full; send it again). Accepted events are ``202`` ``queued``: they go to Elasticsearch through
the request log's bounded queue (drops counted in ``/metrics``) as ``create`` under an ``_id``
derived from that key, so a resent event is never stored twice.

The answer is 200 with ``{"took", "errors", "accepted", "rejected", "items"}`` (one item per
event, in order) whenever the batch could be read; an empty body, more than
``ubi_max_events`` events or an array body that is not valid JSON is one 400 and nothing is
accepted; when the queries index cannot be read to check query ids, a 503 and nothing is
accepted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from reranker.feedback.ubi import MAX_ID_CHARS, ubi_timestamp
from reranker.proxy import errors
from reranker.proxy.jsonbody import JSON_WHITESPACE, BodyError, loads_strict
from reranker.proxy.ubi import ShownQuery, UbiLog

#: UBI 1.3.0's ``action_name`` values (the schema's enum)
ACTIONS = ("impression", "click", "click_through", "add_to_cart", "purchase", "watch", "view")
#: actions that are about one result, so need its object and position
OBJECT_ACTIONS = ("impression", "click", "click_through")
EVENT_FIELDS = (
    "action_name",
    "query_id",
    "timestamp",
    "client_id",
    "session_id",
    "user_id",
    "application",
    "message_type",
    "message",
    "user_query",
    "event_attributes",
)
MAX_MESSAGE_CHARS = 1024
#: what one accepted event's key adds to its remembered search (a tuple of short strings)
EVENT_KEY_BYTES = 300
MAX_OBJECT_ID_CHARS = 256
#: fields the ``ubi_events`` mapping gives a type: a value Elasticsearch would refuse (an
#: object or a list where a number or a keyword is mapped) is refused here, not dropped later
MAPPED_POSITION = ("x", "y", "page_depth", "scroll_depth", "trail")
MAPPED_OBJECT = ("internal_id", "object_id_field", "name", "description")


@dataclass(frozen=True)
class Rejection:
    """Why one event was not accepted (its item in the answer)."""

    status: int
    kind: str
    reason: str

    def item(self) -> dict[str, Any]:
        return {"status": self.status, "error": {"type": self.kind, "reason": self.reason}}


def _invalid(reason: str) -> Rejection:
    return Rejection(400, "invalid_event", reason)


@dataclass(frozen=True)
class Event:
    """An event whose fields are well-formed (not yet checked against its search)."""

    query_id: str
    action_name: str
    timestamp: datetime
    object_id: str | None
    ordinal: int | None
    doc: dict[str, Any]

    @property
    def key(self) -> tuple[str, ...]:
        """What makes two events the same: one impression, one click... per result shown."""
        if self.object_id is None:
            return (self.query_id, self.action_name, ubi_timestamp(self.timestamp))
        return (self.query_id, self.action_name, self.object_id, str(self.ordinal))

    @property
    def doc_id(self) -> str:
        return hashlib.sha256("\x1f".join(self.key).encode()).hexdigest()[:40]


# --------------------------------------------------------------------------- reading the batch


def read_batch(
    raw: bytes, *, max_events: int, max_depth: int, max_digits: int
) -> list[dict[str, Any] | Rejection]:
    """The batch's events in order: objects, or the rejection of a line that is not one."""
    text_start = raw.lstrip(JSON_WHITESPACE.encode())
    if not text_start:
        raise errors.bad_request("no events: send NDJSON (one event per line) or a JSON array")
    entries: list[dict[str, Any] | Rejection] = []
    if text_start.startswith(b"["):
        value = loads_strict(raw, max_depth=max_depth, max_digits=max_digits, what="events body")
        if not isinstance(value, list):  # pragma: no cover - '[' starts an array
            raise errors.parse_error("the events body must be a JSON array or NDJSON")
        for position, event in enumerate(value):
            entries.append(
                event if isinstance(event, dict) else _invalid(f"event {position} is not an object")
            )
    else:
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip(JSON_WHITESPACE.encode()):
                continue
            try:
                event = loads_strict(
                    line, max_depth=max_depth, max_digits=max_digits, what=f"event on line {number}"
                )
            except BodyError as exc:
                entries.append(Rejection(400, "malformed_json", exc.reason))
                continue
            if not isinstance(event, dict):
                entries.append(Rejection(400, "malformed_json", f"line {number} is not an object"))
                continue
            entries.append(event)
    if len(entries) > max_events:
        raise errors.bad_request(
            f"{len(entries)} events in one batch, beyond this proxy's limit of {max_events}; "
            "nothing was accepted, send smaller batches"
        )
    return entries


def _short_string(raw: Mapping[str, Any], key: str, limit: int, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"[{where}{key}] must be a non-empty string")
    if len(value) > limit:
        raise ValueError(f"[{where}{key}] is longer than {limit} characters")
    return value


def parse_timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("[timestamp] must be an ISO 8601 date-time string")
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"[timestamp] {value[:40]!r} is not an ISO 8601 date-time "
            "(e.g. 2025-02-18T10:00:00.000Z)"
        ) from None
    if when.tzinfo is None:
        raise ValueError("[timestamp] has no time zone: end it with Z or an offset such as +00:00")
    try:
        return when.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is past year 9999 in UTC
        raise ValueError(f"[timestamp] {value[:40]!r} is out of range in UTC") from None


def check_event(raw: Mapping[str, Any]) -> Event | Rejection:
    """The event's own fields: present, of the right type, within UBI's lengths."""
    unknown = sorted(set(raw) - set(EVENT_FIELDS))
    if unknown:
        return _invalid(
            f"unknown field(s) [{', '.join(unknown)}]; UBI's are {', '.join(EVENT_FIELDS)}"
        )
    action = raw.get("action_name")
    if not isinstance(action, str) or not action:
        return _invalid("[action_name] is required (a string)")
    if action not in ACTIONS:
        return Rejection(
            400,
            "unknown_action",
            f"[action_name] {action[:40]!r} is not one of {', '.join(ACTIONS)}",
        )
    try:
        query_id = _short_string(raw, "query_id", MAX_ID_CHARS, "")
        if query_id is None:
            raise ValueError("[query_id] is required (the ext.ubi.query_id of the search)")
        when = parse_timestamp(raw.get("timestamp"))
        client_id = _short_string(raw, "client_id", MAX_ID_CHARS, "")
        session_id = _short_string(raw, "session_id", MAX_ID_CHARS, "")
        if client_id is None and session_id is None:
            raise ValueError("[client_id] or [session_id] is required")
        for key, limit in (
            ("user_id", MAX_ID_CHARS),
            ("application", MAX_ID_CHARS),
            ("message_type", MAX_ID_CHARS),
            ("message", MAX_MESSAGE_CHARS),
            ("user_query", 4096),
        ):
            value = raw.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                raise ValueError(f"[{key}] must be a string of at most {limit} characters")
        object_id, ordinal = _object_and_position(raw.get("event_attributes"))
    except ValueError as exc:
        return _invalid(str(exc))
    if action in OBJECT_ACTIONS and (object_id is None or ordinal is None):
        return _invalid(
            f"a {action} needs [event_attributes.object.object_id] and "
            "[event_attributes.position.ordinal]"
        )
    doc = {k: v for k, v in raw.items() if v is not None}
    doc["timestamp"] = ubi_timestamp(when)
    if object_id is not None:  # an integer object_id is stored as the string it names
        doc["event_attributes"]["object"]["object_id"] = object_id
    return Event(query_id, action, when, object_id, ordinal, doc)


def _object_and_position(attributes: Any) -> tuple[str | None, int | None]:
    if attributes is None:
        return None, None
    if not isinstance(attributes, dict):
        raise ValueError("[event_attributes] must be an object")
    _plain_keys(attributes, "event_attributes")
    object_id: str | None = None
    ordinal: int | None = None
    obj = attributes.get("object")
    if obj is not None:
        if not isinstance(obj, dict):
            raise ValueError("[event_attributes.object] must be an object")
        _scalars(obj, MAPPED_OBJECT, "event_attributes.object")
        if obj.get("object_detail") is not None and not isinstance(obj["object_detail"], dict):
            raise ValueError("[event_attributes.object.object_detail] must be an object")
        value = obj.get("object_id")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ValueError("[event_attributes.object.object_id] must be a string or an integer")
        if len(value) > MAX_OBJECT_ID_CHARS:
            raise ValueError(
                f"[event_attributes.object.object_id] is longer than {MAX_OBJECT_ID_CHARS} "
                "characters"
            )
        object_id = value
    position = attributes.get("position")
    if position is not None:
        if not isinstance(position, dict):
            raise ValueError("[event_attributes.position] must be an object")
        _scalars(position, MAPPED_POSITION, "event_attributes.position")
        value = position.get("ordinal")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("[event_attributes.position.ordinal] must be an integer")
            if value < 1:
                raise ValueError(
                    "[event_attributes.position.ordinal] must be at least 1 (positions are 1-based)"
                )
            ordinal = value
    return object_id, ordinal


def _plain_keys(value: Any, where: str) -> None:
    """Refuse a key with a dot (or an empty one) anywhere below ``where``: Elasticsearch reads
    ``"object.object_id"`` as a path, so it would merge into ``object.object_id`` and turn the
    stored id into a list."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, list):
            stack.extend((inner, path) for inner in item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                if not key or "." in key:
                    raise ValueError(
                        f"[{path}] holds the key {key[:40]!r}: keys may not be empty or "
                        "contain dots (Elasticsearch would read them as paths)"
                    )
                stack.append((inner, f"{path}.{key}"))


def _scalars(raw: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        value = raw.get(key)
        if isinstance(value, (dict, list)):
            raise ValueError(f"[{where}.{key}] must be a single value, not {type(value).__name__}")


# --------------------------------------------------------------------------- against the search


def stamp(shown: ShownQuery, now: datetime) -> dict[str, Any]:
    """What the proxy adds to an accepted event (``reranker``): who made its search
    (``owner``: judgments weigh clients by it), the user and index the search named (the
    profile a click builds: never what the event itself claims) and when it was received
    (the profile job reads events by it)."""
    own: dict[str, Any] = {"received": ubi_timestamp(now)}
    if shown.owner is not None:
        own["owner"] = shown.owner
    if shown.subject is not None:
        own["subject"] = shown.subject
    if shown.index is not None:
        own["index"] = shown.index
    return own


def check_against(
    event: Event, shown: ShownQuery | None, now: datetime, skew: timedelta
) -> Rejection | None:
    """Whether ``event`` fits the search it names: known, in time, shown where it says."""
    if shown is None:
        return Rejection(
            404,
            "unknown_query_id",
            f"no search with query_id {event.query_id} (use the ext.ubi.query_id of a search "
            "answered by this proxy)",
        )
    if event.timestamp > now + skew:
        return Rejection(
            400,
            "future_timestamp",
            f"[timestamp] {ubi_timestamp(event.timestamp)} is in the future (now "
            f"{ubi_timestamp(now)}, {skew.total_seconds():.0f}s of clock skew allowed)",
        )
    if event.timestamp < shown.timestamp - skew:
        return Rejection(
            400,
            "before_query",
            f"[timestamp] {ubi_timestamp(event.timestamp)} is before its search "
            f"({ubi_timestamp(shown.timestamp)})",
        )
    if event.ordinal is not None:
        first, last = shown.positions
        if not first <= event.ordinal <= last:
            where = f"positions {first}-{last}" if last >= first else "no hits"
            return Rejection(
                400,
                "position_out_of_range",
                f"position {event.ordinal} was not shown: query {event.query_id} showed {where}",
            )
    if event.object_id is not None:
        at = shown.position_of(event.object_id)
        if at is None:
            return Rejection(
                400,
                "object_not_shown",
                f"object {event.object_id[:60]} was not among the hits of query {event.query_id}",
            )
        if event.ordinal is not None and shown.object_at(event.ordinal) != event.object_id:
            return Rejection(
                400,
                "position_mismatch",
                f"object {event.object_id[:60]} was shown at position {at}, not {event.ordinal}",
            )
    if event.key in shown.seen:
        return Rejection(
            409,
            "duplicate",
            f"this {event.action_name} of query {event.query_id} was already accepted",
        )
    return None


async def accept_events(
    ubi: UbiLog, raw: bytes, *, owner: str | None = None, client: str | None = None
) -> dict[str, Any]:
    """Check every event of the batch ``raw`` and queue the good ones; the answer's body.
    An event for a search another client (``owner``) made is refused as if the query id were
    unknown: its answer says nothing about what that search showed. Each event that passes
    its checks spends one of ``client``'s quota (its owner, else its address): none left is
    429 ``client_event_quota``."""
    started = time.perf_counter()
    settings = ubi.settings
    entries = read_batch(
        raw,
        max_events=settings.ubi_max_events,
        max_depth=settings.max_json_depth,
        max_digits=settings.max_number_digits,
    )
    checked = [entry if isinstance(entry, Rejection) else check_event(entry) for entry in entries]
    searches = await ubi.lookup(e.query_id for e in checked if isinstance(e, Event))
    now = datetime.now(UTC)
    skew = timedelta(seconds=settings.ubi_clock_skew_s)
    per_search = settings.ubi_max_events_per_search
    items: list[dict[str, Any]] = []
    accepted = 0
    for entry in checked:
        outcome: Rejection | None
        if isinstance(entry, Rejection):
            outcome = entry
        else:
            shown = searches.get(entry.query_id)
            if shown is not None and shown.owner != owner:
                shown = None  # another client's search: indistinguishable from no search
            outcome = check_against(entry, shown, now, skew)
            if outcome is None and shown is not None and len(shown.seen) >= per_search:
                outcome = Rejection(
                    429,
                    "search_event_quota",
                    f"query {entry.query_id} already has {per_search} events, this proxy's "
                    "limit for one search",
                )
            if outcome is None and not ubi.quotas.take(client or owner or ""):
                outcome = Rejection(
                    429,
                    "client_event_quota",
                    f"this client sent events faster than {settings.ubi_client_events_per_s:g} "
                    f"a second for longer than a burst of {settings.ubi_max_events}; send this "
                    f"event again in {ubi.quotas.retry_after_s():.2g} s",
                )
            if outcome is None and shown is not None:
                doc = dict(entry.doc)
                if shown.user_query is not None:
                    doc["user_query"] = shown.user_query
                doc["reranker"] = stamp(shown, now)
                if ubi.writer.submit_to(ubi.events_index, entry.doc_id, doc):
                    shown.seen.add(entry.key)
                    ubi.shown.grew(shown, EVENT_KEY_BYTES)
                    accepted += 1
                    ubi.metrics.ubi_events.labels("accepted").inc()
                    items.append({"status": 202, "result": "queued", "_id": entry.doc_id})
                    continue
                outcome = Rejection(
                    429, "queue_full", "the proxy's write queue is full; send this event again"
                )
        assert outcome is not None
        ubi.metrics.ubi_events.labels(outcome.kind).inc()
        items.append(outcome.item())
    return {
        "took": round((time.perf_counter() - started) * 1000),
        "errors": accepted < len(items),
        "accepted": accepted,
        "rejected": len(items) - accepted,
        "items": items,
    }
