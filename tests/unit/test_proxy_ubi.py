"""UBI in the proxy without Elasticsearch: ``ext.ubi``, query documents, and every reason an
event is rejected (the endpoint itself against a real node is in
tests/integration/test_proxy_ubi.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reranker.errors import ConfigError
from reranker.feedback.ubi import ubi_timestamp
from reranker.proxy import ProxySettings
from reranker.proxy.errors import ProxyError
from reranker.proxy.events import Event, Rejection, check_against, check_event, read_batch
from reranker.proxy.metrics import ProxyMetrics
from reranker.proxy.request_log import RequestLog
from reranker.proxy.ubi import (
    ShownQueries,
    ShownQuery,
    UbiParams,
    entry_bytes,
    load_templates,
    parse_ubi,
    query_document,
    shown_from_document,
    split_ubi,
)
from tests.helpers import assert_es_error, proxy_client, settings

pytestmark = pytest.mark.anyio

NOW = datetime(2025, 2, 18, 10, 0, 0, tzinfo=UTC)
SKEW = timedelta(seconds=60)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------ ext.ubi


def test_ext_ubi_is_taken_off_the_body_and_other_ext_sections_stay() -> None:
    body = {"query": {}, "ext": {"ubi": {"query_id": "q1"}, "rerank": {"window": 5}}}
    rest, raw = split_ubi(body)
    assert rest == {"query": {}, "ext": {"rerank": {"window": 5}}}
    assert raw == {"query_id": "q1"}
    alone, _ = split_ubi({"query": {}, "ext": {"ubi": {}}})
    assert alone == {"query": {}}
    untouched = {"query": {}}
    assert split_ubi(untouched) == (untouched, None)


def test_a_search_without_a_query_id_gets_a_fresh_one_and_a_client_keeps_its_own() -> None:
    first, second = parse_ubi(None), parse_ubi({})
    assert first.query_id != second.query_id
    assert not first.supplied
    given = parse_ubi({"query_id": "abc-1", "client_id": "c", "user_query": "Toner"})
    assert (given.query_id, given.supplied, given.client_id) == ("abc-1", True, "c")


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ([], "must be an object"),
        ({"queryid": "x"}, "unknown field"),
        ({"query_id": ""}, "non-empty string"),
        ({"query_id": "x" * 101}, "beyond UBI's 100"),
        ({"query_id": "a\nb"}, "control characters"),
        ({"client_id": 7}, "non-empty string"),
        ({"user_query": ["x"]}, "must be a string"),
        ({"query_attributes": "x"}, "must be an object"),
        ({"object_id_field": "sku"}, "only be _id"),
    ],
)
def test_a_bad_ext_ubi_is_a_400_saying_what(raw: Any, words: str) -> None:
    with pytest.raises(ProxyError) as caught:
        parse_ubi(raw)
    assert caught.value.status == 400
    assert words in caught.value.reason


def test_the_query_document_has_ubis_fields_and_reads_back_as_what_was_shown() -> None:
    params = UbiParams("q1", True, "vitamin d", "client-1", "app", {"experiment": "7"})
    shown = ShownQuery("q1", NOW, ("d3", "d1"), start=10, user_query="vitamin d", owner="key-1")
    answer = {"rerank": {"model": {"version": "v9"}, "degraded": None}}
    doc = query_document(params, shown, index="beir-x", body={"size": 2}, answer=answer)
    assert set(doc) >= {
        "timestamp", "query_id", "query", "query_response_id", "query_response_hit_ids",
        "user_query", "query_attributes", "client_id", "application",
    }  # fmt: skip
    assert doc["timestamp"] == "2025-02-18T10:00:00.000Z"
    assert doc["query_response_hit_ids"] == ["d3", "d1"]
    assert doc["reranker"] == {
        "index": "beir-x", "from": 10, "shown": 2, "ranker": "rerank",
        "model_version": "v9", "degraded": False, "owner": "key-1",
    }  # fmt: skip
    back = shown_from_document(json.loads(json.dumps(doc)))
    assert back is not None
    assert (back.hits, back.start, back.timestamp) == (("d3", "d1"), 10, NOW)
    assert back.owner == "key-1"
    assert back.positions == (11, 12)
    assert back.object_at(12) == "d1" and back.position_of("d3") == 11


def test_the_remembered_searches_are_bounded_least_recently_used_first() -> None:
    cache = ShownQueries(2)
    for name in ("a", "b"):
        assert cache.add(ShownQuery(name, NOW, ()))
    assert not cache.add(ShownQuery("a", NOW, ()))
    cache.get("a")
    cache.add(ShownQuery("c", NOW, ()))
    assert "b" not in cache and "a" in cache and len(cache) == 2


def test_the_remembered_searches_are_bounded_in_bytes_as_well_as_in_count() -> None:
    big = tuple(f"doc-{i:06d}" for i in range(1000))
    one = entry_bytes(ShownQuery("q0", NOW, big))
    cache = ShownQueries(100_000, max_bytes=3 * one)
    for name in ("q0", "q1", "q2", "q3"):
        cache.add(ShownQuery(name, NOW, big))
    assert len(cache) == 3 and "q0" not in cache
    assert cache.bytes <= cache.max_bytes
    survivor = cache.get("q3")
    assert survivor is not None
    cache.grew(survivor, one)  # its accepted events count too
    assert cache.bytes <= cache.max_bytes and "q3" in cache


def test_the_templates_name_the_configured_indices_with_ubis_field_names() -> None:
    templates = load_templates("ubi_queries", "ubi_events")
    queries = templates["ubi_queries"]["template"]["mappings"]["properties"]
    events = templates["ubi_events"]["template"]["mappings"]["properties"]
    assert templates["ubi_events"]["index_patterns"] == ["ubi_events"]
    assert queries["query_response_hit_ids"]["type"] == "keyword"
    assert queries["query_attributes"]["type"] == "flattened"  # OpenSearch's flat_object
    position = events["event_attributes"]["properties"]["position"]["properties"]
    assert position["ordinal"]["type"] == "integer"
    assert {"action_name", "query_id", "session_id", "client_id", "timestamp"} <= set(events)


def test_ubi_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        ProxySettings(ubi_events_index="UBI")
    with pytest.raises(ConfigError):
        ProxySettings(ubi_events_index="same", ubi_queries_index="same")


# ------------------------------------------------------------------ events


def good_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "action_name": "click",
        "query_id": "q1",
        "timestamp": "2025-02-18T10:00:05Z",
        "session_id": "s1",
        "event_attributes": {"object": {"object_id": "d1"}, "position": {"ordinal": 2}},
    }
    event.update(changes)
    return event


def checked(**changes: Any) -> Event | Rejection:
    return check_event(good_event(**changes))


def test_a_good_event_is_normalised_to_ubis_timestamp_and_keeps_its_attributes() -> None:
    event = check_event(good_event(timestamp="2025-02-18T11:00:05.5+01:00"))
    assert isinstance(event, Event)
    assert event.doc["timestamp"] == "2025-02-18T10:00:05.500Z"
    assert (event.object_id, event.ordinal, event.action_name) == ("d1", 2, "click")
    numeric = check_event(good_event(event_attributes={"object": {"object_id": 42}}))
    assert isinstance(numeric, Rejection)  # a click needs its position
    cart = good_event(action_name="add_to_cart", event_attributes={"object": {"object_id": 42}})
    view = check_event(cart)
    assert isinstance(view, Event) and view.object_id == "42"


@pytest.mark.parametrize(
    ("changes", "kind", "words"),
    [
        ({"action_name": "hover"}, "unknown_action", "not one of"),
        ({"action_name": None}, "invalid_event", "[action_name] is required"),
        ({"query_id": None}, "invalid_event", "[query_id] is required"),
        ({"timestamp": "yesterday"}, "invalid_event", "not an ISO 8601"),
        ({"timestamp": "2025-02-18T10:00:05"}, "invalid_event", "no time zone"),
        ({"timestamp": 1739872805000}, "invalid_event", "date-time string"),
        ({"timestamp": "9999-12-31T23:59:59-23:59"}, "invalid_event", "out of range"),
        ({"timestamp": "0001-01-01T00:00:00+23:59"}, "invalid_event", "out of range"),
        ({"session_id": None}, "invalid_event", "[client_id] or [session_id]"),
        ({"client_id": "x" * 101}, "invalid_event", "longer than 100"),
        ({"colour": "red"}, "invalid_event", "unknown field"),
        ({"event_attributes": []}, "invalid_event", "must be an object"),
        (
            {"event_attributes": {"object.object_id": "d7", "object": {"object_id": "d1"}}},
            "invalid_event",
            "contain dots",
        ),
        (
            {
                "event_attributes": {
                    "object": {"object_id": "d1", "object_detail": {"a.b": 1}},
                    "position": {"ordinal": 1},
                }
            },
            "invalid_event",
            "contain dots",
        ),
        (
            {
                "event_attributes": {
                    "object": {"object_id": "d", "name": {"nested": 1}},
                    "position": {"ordinal": 1},
                }
            },
            "invalid_event",
            "single value",
        ),
        (
            {
                "event_attributes": {
                    "object": {"object_id": "d"},
                    "position": {"ordinal": 1, "x": []},
                }
            },
            "invalid_event",
            "single value",
        ),
        (
            {"event_attributes": {"object": {"object_id": "d"}, "position": {"ordinal": 0}}},
            "invalid_event",
            "at least 1",
        ),
        (
            {"event_attributes": {"object": {"object_id": "d"}, "position": {"ordinal": True}}},
            "invalid_event",
            "must be an integer",
        ),
        (
            {"event_attributes": {"position": {"ordinal": 1}}},
            "invalid_event",
            "needs [event_attributes.object.object_id]",
        ),
    ],
)
def test_an_ill_formed_event_is_rejected_saying_which_field(
    changes: dict[str, Any], kind: str, words: str
) -> None:
    outcome = checked(**changes)
    assert isinstance(outcome, Rejection)
    assert (outcome.status, outcome.kind) == (400, kind)
    assert words in outcome.reason


def shown() -> ShownQuery:
    return ShownQuery("q1", NOW, ("d0", "d1", "d2"), start=0, user_query="q")


def against(entry: ShownQuery | None = None, **changes: Any) -> Rejection | None:
    event = checked(**changes)
    assert isinstance(event, Event)
    return check_against(event, entry, NOW + timedelta(seconds=10), SKEW)


@pytest.mark.parametrize(
    ("changes", "status", "kind"),
    [
        ({"timestamp": "2025-02-18T10:05:00Z"}, 400, "future_timestamp"),
        ({"timestamp": "2025-02-18T09:58:00Z"}, 400, "before_query"),
        (
            {"event_attributes": {"object": {"object_id": "d1"}, "position": {"ordinal": 4}}},
            400,
            "position_out_of_range",
        ),
        (
            {"event_attributes": {"object": {"object_id": "zz"}, "position": {"ordinal": 1}}},
            400,
            "object_not_shown",
        ),
        (
            {"event_attributes": {"object": {"object_id": "d2"}, "position": {"ordinal": 1}}},
            400,
            "position_mismatch",
        ),
    ],
)
def test_an_event_that_does_not_fit_its_search_is_rejected_with_the_reason(
    changes: dict[str, Any], status: int, kind: str
) -> None:
    outcome = against(shown(), **changes)
    assert outcome is not None
    assert (outcome.status, outcome.kind) == (status, kind)


def test_an_unknown_query_id_is_a_404_item_and_an_accepted_key_a_409_duplicate() -> None:
    outcome = against(None)
    assert outcome is not None and (outcome.status, outcome.kind) == (404, "unknown_query_id")
    entry = shown()
    assert against(entry) is None
    event = checked()
    assert isinstance(event, Event)
    entry.seen.add(event.key)
    again = against(entry, timestamp="2025-02-18T10:00:06Z")  # a resend, a second later
    assert again is not None and (again.status, again.kind) == (409, "duplicate")
    impression = against(entry, action_name="impression")  # same result, other action
    assert impression is None


def test_ndjson_lines_that_are_not_json_objects_are_their_own_rejections() -> None:
    raw = (json.dumps(good_event()) + "\n\n{oops\n[1]\n" + json.dumps(good_event())).encode()
    entries = read_batch(raw, max_events=10, max_depth=8, max_digits=20)
    assert [type(e).__name__ for e in entries] == ["dict", "Rejection", "Rejection", "dict"]
    assert isinstance(entries[1], Rejection) and "line 3" in entries[1].reason
    assert entries[1].kind == "malformed_json"


def test_a_json_array_body_is_a_batch_and_a_broken_one_is_one_400() -> None:
    raw = b"[" + json.dumps(good_event()).encode() + b", 3]"
    entries = read_batch(raw, max_events=5, max_depth=8, max_digits=20)
    assert isinstance(entries[0], dict) and isinstance(entries[1], Rejection)
    with pytest.raises(ProxyError) as caught:
        read_batch(b"[{", max_events=5, max_depth=8, max_digits=20)
    assert caught.value.status == 400


@pytest.mark.parametrize("raw", [b"", b" \n\n", b"{}\n" * 6])
def test_an_empty_or_oversized_batch_is_one_400(raw: bytes) -> None:
    with pytest.raises(ProxyError) as caught:
        read_batch(raw, max_events=5, max_depth=8, max_digits=20)
    assert caught.value.status == 400


# ------------------------------------------------------------------ the app


async def test_the_events_endpoint_is_a_404_saying_so_while_ubi_is_off() -> None:
    async with proxy_client(settings()) as http:
        response = await http.post("/_reranker/events", content=b"{}\n")
    assert_es_error(response, 404, "resource_not_found_exception")
    assert "--ubi" in response.json()["error"]["reason"]


async def test_the_events_endpoint_needs_the_client_api_key() -> None:
    async with proxy_client(settings(api_keys=("k",), ubi=True)) as http:
        response = await http.post("/_reranker/events", content=b"{}\n")
    assert_es_error(response, 401)


async def test_events_for_searches_nobody_can_check_are_a_503_and_none_is_accepted() -> None:
    # the cluster is a closed port: an unknown query id cannot be looked up
    async with proxy_client(settings(ubi=True)) as http:
        response = await http.post("/_reranker/events", json=[good_event()])
    assert_es_error(response, 503)
    assert "nothing was accepted" in response.json()["error"]["reason"]


async def test_a_bad_ext_ubi_is_a_400_before_elasticsearch_is_asked() -> None:
    async with proxy_client(settings(ubi=True)) as http:
        response = await http.post("/docs-1/_search", json={"ext": {"ubi": {"nope": 1}}})
    assert_es_error(response, 400)


def test_a_full_queue_refuses_a_ubi_document_and_counts_it_apart_from_the_request_log() -> None:
    metrics = ProxyMetrics()
    queue = RequestLog(None, metrics, queue_size=1)  # type: ignore[arg-type]
    assert queue.submit_to("ubi_events", "id1", {"n": 1})
    assert not queue.submit_to("ubi_events", "id2", {"n": 2})
    assert not queue.submit({"n": 3})
    text = metrics.render().decode()
    assert 'reranker_proxy_ubi_documents_dropped_total{reason="queue full"} 1.0' in text
    assert 'reranker_proxy_log_documents_dropped_total{reason="queue full"} 1.0' in text


def test_ubi_timestamps_are_utc_milliseconds_with_z() -> None:
    assert ubi_timestamp(datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)) == (
        "2025-01-02T03:04:05.678Z"
    )
