"""User Behavior Insights through the proxy, against a real Elasticsearch node: query ids and
query documents, the events endpoint, and simulated clicks (synthetic users, not real ones)
turned into judgments.

The first 120 SciFact documents are indexed as they are (no embeddings, no cross-encoder:
reranked searches answer in first-stage order, marked degraded, which is all UBI needs).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from elasticsearch import Elasticsearch

from reranker.cli import main
from reranker.corpus import load_qrels, load_queries
from reranker.es.node import NodeStatus
from reranker.feedback.click_sim import UserModel, simulate
from reranker.proxy import ProxySettings
from tests.conftest import es_settings
from tests.integration.conftest import SCIFACT, running

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TEXT = "human cells protein expression disease"
QUERY = {"match": {"text": TEXT}}


@pytest.fixture(scope="module")
def names(es_client: Elasticsearch, scifact_docs: list[dict[str, Any]]) -> Iterator[dict[str, str]]:
    """A fresh documents index and UBI index names; all deleted afterwards."""
    prefix = f"ubitest-{uuid.uuid4().hex[:8]}"
    found = {"docs": f"{prefix}-docs", "queries": f"{prefix}-queries", "events": f"{prefix}-events"}
    operations: list[dict[str, Any]] = []
    for doc in scifact_docs:
        operations.append({"index": {"_index": found["docs"], "_id": doc["_id"]}})
        operations.append({"title": doc["title"], "text": doc["text"]})
    es_client.bulk(operations=operations, refresh=True)
    yield found
    es_client.options(ignore_status=404).indices.delete(index=",".join(found.values()))
    for template in (found["queries"], found["events"]):
        es_client.options(ignore_status=404).indices.delete_index_template(name=template)


@pytest.fixture
def events_index(es_client: Elasticsearch, names: dict[str, str]) -> Iterator[str]:
    """An events index of the test's own (its template too), deleted afterwards."""
    index = f"{names['events']}-{uuid.uuid4().hex[:6]}"
    yield index
    es_client.options(ignore_status=404).indices.delete(index=index)
    es_client.options(ignore_status=404).indices.delete_index_template(name=index)


def settings_for(es_node: NodeStatus, names: dict[str, str], **overrides: Any) -> ProxySettings:
    values: dict[str, Any] = {
        "es": es_settings(es_node.url),
        "allowed_indices": (names["docs"],),
        "max_window": 50,
        "default_window": 20,
        "default_timeout_ms": 30_000,
        "ubi": True,
        "ubi_queries_index": names["queries"],
        "ubi_events_index": names["events"],
        "log_flush_s": 0.1,
    }
    values.update(overrides)
    return ProxySettings(**values)


@asynccontextmanager
async def serving(settings: ProxySettings) -> AsyncIterator[httpx.AsyncClient]:
    """The proxy (no models); leaving it writes what its queue holds."""
    async with running(settings, None) as http:
        yield http


def stored(es_client: Elasticsearch, index: str, size: int = 500) -> list[dict[str, Any]]:
    es_client.indices.refresh(index=index)
    hits = es_client.search(index=index, size=size)["hits"]["hits"]
    return [{"_id": h["_id"], **h["_source"]} for h in hits]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ubi_event(query_id: str, action: str, doc: str, position: int, **extra: Any) -> dict[str, Any]:
    return {
        "action_name": action,
        "query_id": query_id,
        "timestamp": now(),
        "session_id": "session-1",
        "event_attributes": {"object": {"object_id": doc}, "position": {"ordinal": position}},
        **extra,
    }


def ndjson(*events: dict[str, Any]) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in events).encode()


# ------------------------------------------------------------------ query ids


async def test_every_search_answered_gets_a_query_id_and_a_query_document(
    es_node: NodeStatus, es_client: Elasticsearch, names: dict[str, str]
) -> None:
    docs = names["docs"]
    async with serving(settings_for(es_node, names)) as http:
        plain = await http.post(
            f"/{docs}/_search",
            json={"query": QUERY, "size": 5, "ext": {"ubi": {"client_id": "browser-1"}}},
        )
        mine = await http.post(
            f"/{docs}/_search",
            json={
                "query": QUERY,
                "size": 3,
                "from": 2,
                "ext": {"ubi": {"query_id": "client-chosen-1", "user_query": "cells"}},
                "rerank": {"window": 10},
            },
        )
        reused = await http.post(
            f"/{docs}/_search",
            json={"query": QUERY, "ext": {"ubi": {"query_id": "client-chosen-1"}}},
        )
        header = json.dumps({"index": docs})
        multi = await http.post(
            "/_msearch",
            content=f"{header}\n{json.dumps({'query': QUERY, 'size': 2})}\n"
            f"{header}\n{json.dumps({'query': QUERY, 'size': 2, 'rerank': {}})}\n",
            headers={"content-type": "application/x-ndjson"},
        )
    assert plain.status_code == mine.status_code == multi.status_code == 200
    plain_id = plain.json()["ext"]["ubi"]["query_id"]
    assert uuid.UUID(plain_id)
    assert mine.json()["ext"]["ubi"] == {"query_id": "client-chosen-1"}
    assert mine.json()["rerank"]["degraded"]  # no model here: first-stage order
    assert reused.status_code == 400
    assert "already used" in reused.json()["error"]["reason"]
    multi_ids = [r["ext"]["ubi"]["query_id"] for r in multi.json()["responses"]]
    assert len(set(multi_ids)) == 2

    by_id = {d["query_id"]: d for d in stored(es_client, names["queries"])}
    assert set(by_id) == {plain_id, "client-chosen-1", *multi_ids}
    first = by_id[plain_id]
    assert first["_id"] == plain_id
    assert first["query_response_hit_ids"] == [h["_id"] for h in plain.json()["hits"]["hits"]]
    assert first["client_id"] == "browser-1"
    assert first["user_query"] == TEXT  # the query's own text when none is given
    assert first["reranker"]["ranker"] == "passthrough"
    assert "ubi" not in first["query"]  # Elasticsearch never saw ext.ubi either
    chosen = by_id["client-chosen-1"]
    assert chosen["user_query"] == "cells"
    assert chosen["reranker"]["from"] == 2 and chosen["reranker"]["ranker"] == "rerank"
    mapping = es_client.indices.get_mapping(index=names["queries"])[names["queries"]]
    assert mapping["mappings"]["properties"]["query_attributes"]["type"] == "flattened"


# ------------------------------------------------------------------ events


async def test_events_are_checked_one_by_one_and_the_accepted_ones_are_stored_once(
    es_node: NodeStatus, es_client: Elasticsearch, names: dict[str, str]
) -> None:
    async with serving(settings_for(es_node, names)) as http:
        search = await http.post(
            f"/{names['docs']}/_search", json={"query": QUERY, "size": 4, "from": 1}
        )
        query_id = search.json()["ext"]["ubi"]["query_id"]
        hits = [h["_id"] for h in search.json()["hits"]["hits"]]  # positions 2..5
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        batch = (
            ndjson(
                ubi_event(query_id, "impression", hits[0], 2),
                ubi_event(query_id, "click", hits[0], 2, client_id="c1", application="shop"),
                ubi_event(query_id, "impression", hits[3], 6),
                ubi_event(query_id, "impression", hits[1], 2),
                ubi_event(query_id, "impression", "not-a-hit", 3),
                ubi_event("no-such-query", "click", hits[0], 2),
                ubi_event(query_id, "impression", hits[2], 4, timestamp=future),
                ubi_event(query_id, "hover", hits[2], 4),
            )
            + b"{this is not json\n"
        )
        first = await http.post("/_reranker/events", content=batch)
        again = await http.post("/_reranker/events", content=batch)
        metrics = (await http.get("/metrics")).text
    assert first.status_code == 200
    body = first.json()
    kinds = [item.get("error", {}).get("type", item.get("result")) for item in body["items"]]
    assert kinds == [
        "queued",
        "queued",
        "position_out_of_range",
        "position_mismatch",
        "object_not_shown",
        "unknown_query_id",
        "future_timestamp",
        "unknown_action",
        "malformed_json",
    ]
    assert [item["status"] for item in body["items"]][:6] == [202, 202, 400, 400, 400, 404]
    assert (body["accepted"], body["rejected"], body["errors"]) == (2, 7, True)
    assert [item.get("error", {}).get("type") for item in again.json()["items"][:2]] == [
        "duplicate",
        "duplicate",
    ]
    assert 'reranker_proxy_ubi_events_total{outcome="duplicate"} 2.0' in metrics

    events = stored(es_client, names["events"])
    assert len(events) == 2
    click = next(e for e in events if e["action_name"] == "click")
    assert click["query_id"] == query_id
    assert click["user_query"] == TEXT  # from the search it belongs to
    assert click["event_attributes"] == {
        "object": {"object_id": hits[0]},
        "position": {"ordinal": 2},
    }
    assert (click["client_id"], click["application"]) == ("c1", "shop")
    assert click["timestamp"].endswith("Z")


async def test_a_full_write_queue_refuses_events_one_by_one_and_every_event_is_accounted_for(
    es_node: NodeStatus,
    es_client: Elasticsearch,
    names: dict[str, str],
    events_index: str,
) -> None:
    """Events sent = events written + events refused (counted, 429 `queue_full`, to resend)."""
    settings = settings_for(es_node, names, log_queue_size=3, ubi_events_index=events_index)
    async with serving(settings) as http:
        search = await http.post(f"/{names['docs']}/_search", json={"query": QUERY, "size": 8})
        query_id = search.json()["ext"]["ubi"]["query_id"]
        hits = [h["_id"] for h in search.json()["hits"]["hits"]]
        batch = [ubi_event(query_id, "impression", d, i) for i, d in enumerate(hits, start=1)]
        batch += [ubi_event(query_id, "click", d, i) for i, d in enumerate(hits, start=1)]
        answer = (await http.post("/_reranker/events", content=ndjson(*batch))).json()
        metrics = (await http.get("/metrics")).text
    kinds = [item.get("error", {}).get("type", item.get("result")) for item in answer["items"]]
    refused = kinds.count("queue_full")
    assert set(kinds) == {"queued", "queue_full"}
    assert 1 <= answer["accepted"] <= 3 and refused >= len(batch) - 3
    assert answer["accepted"] + refused == len(batch) == 2 * len(hits)
    assert all(i["status"] == 429 for i in answer["items"] if "error" in i)
    assert f'reranker_proxy_ubi_events_total{{outcome="queue_full"}} {float(refused)}' in metrics
    assert len(stored(es_client, events_index)) == answer["accepted"]


async def test_a_restarted_proxy_checks_events_against_the_stored_query_documents(
    es_node: NodeStatus, names: dict[str, str]
) -> None:
    settings = settings_for(es_node, names)
    async with serving(settings) as http:
        search = await http.post(f"/{names['docs']}/_search", json={"query": QUERY, "size": 3})
    query_id = search.json()["ext"]["ubi"]["query_id"]
    last = search.json()["hits"]["hits"][2]["_id"]
    async with serving(settings) as http:  # a new process: it remembers no search
        answer = await http.post(
            "/_reranker/events",
            json=[
                ubi_event(query_id, "click", last, 3),
                ubi_event(query_id, "click", last, 4),
            ],
        )
    items = answer.json()["items"]
    assert items[0]["status"] == 202
    assert items[1]["error"]["type"] == "position_out_of_range"


# ------------------------------------------------------------------ simulated clicks


async def test_simulated_clicks_through_the_proxy_become_judgments_that_favour_the_relevant(
    es_node: NodeStatus, es_client: Elasticsearch, names: dict[str, str], tmp_path: Path
) -> None:
    """Simulated users (synthetic, seeded) on four SciFact train queries whose relevant
    document is among the 120 indexed."""
    qrels = load_qrels(SCIFACT, "train")
    texts = load_queries(SCIFACT)
    listed = es_client.search(index=names["docs"], size=200, source=False)["hits"]["hits"]
    indexed = {hit["_id"] for hit in listed}
    chosen = [q for q in qrels if set(qrels[q]) & indexed][:4]
    async with serving(settings_for(es_node, names)) as http:
        report = await simulate(
            http,
            names["docs"],
            [(q, texts[q]) for q in chosen],
            qrels,
            sessions=12,
            size=5,
            window=10,
            model=UserModel(noise=0.05),
            seed=3,
            batch_size=40,
        )
    assert report.searches == 48 and report.failed_searches == 0
    assert report.accepted == report.events_posted and not report.rejected
    es_client.indices.refresh(index=names["events"])

    output = tmp_path / "scifact-clicks" / "qrels" / "clicks.tsv"
    result = CliRunner().invoke(
        main,
        [
            "--es-url", es_node.url, "judgments", "--events-index", names["events"],
            "--dataset", str(SCIFACT), "--output", str(output), "--min-impressions", "3",
            "--compare", str(SCIFACT / "qrels" / "train.tsv"),
            "--application", "click-simulator",  # the other tests' events are not its
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["events"] == report.events_posted
    assert summary["searches"] == 48
    judged = load_qrels(output.parent.parent, "clicks")
    assert set(judged) <= set(chosen)
    agreement = summary["agreement"]
    assert agreement["relevant_pairs"] >= 1
    assert agreement["kendall_tau_b"] > 0  # relevant documents score above the others


# ------------------------------------------------------------------ hostile clients (issue 25)


async def test_two_msearch_entries_with_one_query_id_answer_once_and_refuse_the_other(
    es_node: NodeStatus, names: dict[str, str]
) -> None:
    query_id = f"twin-{uuid.uuid4().hex[:8]}"
    entry = {"query": QUERY, "size": 3, "ext": {"ubi": {"query_id": query_id}}}
    body = ndjson({}, entry, {}, entry)
    async with serving(settings_for(es_node, names)) as http:
        answer = await http.post(
            f"/{names['docs']}/_msearch",
            content=body,
            headers={"content-type": "application/x-ndjson"},
        )
    statuses = sorted(r["status"] for r in answer.json()["responses"])
    assert statuses == [200, 400]
    refused = next(r for r in answer.json()["responses"] if r["status"] == 400)
    assert "already used" in refused["error"]["reason"]


async def test_a_query_id_stored_before_a_restart_cannot_be_given_to_another_search(
    es_node: NodeStatus, es_client: Elasticsearch, names: dict[str, str]
) -> None:
    query_id = f"kept-{uuid.uuid4().hex[:8]}"
    search = {"query": QUERY, "size": 3, "ext": {"ubi": {"query_id": query_id}}}
    settings = settings_for(es_node, names)
    async with serving(settings) as http:
        first = await http.post(f"/{names['docs']}/_search", json=search)
    es_client.indices.refresh(index=names["queries"])
    async with serving(settings) as http:  # a new process: it remembers no search
        reused = await http.post(f"/{names['docs']}/_search", json=search)
    assert first.status_code == 200
    assert reused.status_code == 400
    assert "already used" in reused.json()["error"]["reason"]


async def test_events_for_another_clients_search_are_refused_as_if_the_query_were_unknown(
    es_node: NodeStatus, es_client: Elasticsearch, names: dict[str, str]
) -> None:
    alice = {"authorization": "ApiKey alice-key-123"}
    mallory = {"authorization": "ApiKey mallory-key-456"}
    settings = settings_for(es_node, names, api_keys=("alice-key-123", "mallory-key-456"))
    async with serving(settings) as http:
        search = await http.post(
            f"/{names['docs']}/_search", json={"query": QUERY, "size": 3}, headers=alice
        )
        query_id = search.json()["ext"]["ubi"]["query_id"]
        first = search.json()["hits"]["hits"][0]["_id"]
        forged = await http.post(
            "/_reranker/events",
            content=ndjson(
                ubi_event(query_id, "click", first, 1),
                ubi_event(query_id, "click", first, 7),  # would reveal what was shown
            ),
            headers=mallory,
        )
        own = await http.post(
            "/_reranker/events",
            content=ndjson(ubi_event(query_id, "click", first, 1)),
            headers=alice,
        )
    forged_items = forged.json()["items"]
    assert [i["error"]["type"] for i in forged_items] == ["unknown_query_id"] * 2
    for item in forged_items:  # nothing about positions, documents or when it ran
        assert first not in json.dumps(item) and "position" not in item["error"]["reason"]
    assert own.json()["items"][0]["status"] == 202
    stored_query = es_client.get(index=names["queries"], id=query_id)["_source"]
    assert stored_query["reranker"]["owner"].startswith("key-")
    assert "alice-key-123" not in json.dumps(stored_query)


async def test_event_timestamps_out_of_range_in_utc_are_400s_not_a_500_for_the_batch(
    es_node: NodeStatus, names: dict[str, str]
) -> None:
    async with serving(settings_for(es_node, names)) as http:
        search = await http.post(f"/{names['docs']}/_search", json={"query": QUERY, "size": 2})
        query_id = search.json()["ext"]["ubi"]["query_id"]
        first = search.json()["hits"]["hits"][0]["_id"]
        answer = await http.post(
            "/_reranker/events",
            content=ndjson(
                ubi_event(query_id, "click", first, 1, timestamp="9999-12-31T23:59:59-23:59"),
                ubi_event(query_id, "click", first, 1, timestamp="0001-01-01T00:00:00+23:59"),
                ubi_event(query_id, "impression", first, 1),
            ),
        )
    assert answer.status_code == 200
    items = answer.json()["items"]
    assert [i["status"] for i in items] == [400, 400, 202]
    assert all("out of range" in i["error"]["reason"] for i in items[:2])


async def test_one_clients_attribute_types_never_get_another_clients_events_rejected(
    es_node: NodeStatus,
    es_client: Elasticsearch,
    names: dict[str, str],
    events_index: str,
) -> None:
    settings = settings_for(es_node, names, ubi_events_index=events_index)
    async with serving(settings) as http:
        search = await http.post(f"/{names['docs']}/_search", json={"query": QUERY, "size": 2})
        query_id = search.json()["ext"]["ubi"]["query_id"]
        first, second = (h["_id"] for h in search.json()["hits"]["hits"])

        def event(doc: str, at: int, attributes: dict[str, Any]) -> dict[str, Any]:
            made = ubi_event(query_id, "click", doc, at)
            made["event_attributes"]["object"]["object_detail"] = attributes["detail"]
            made["event_attributes"]["extra"] = attributes["extra"]
            return made

        poisoner = await http.post(
            "/_reranker/events",
            content=ndjson(event(first, 1, {"detail": {"price": {"eur": 1}}, "extra": {"a": 1}})),
        )
        victim = await http.post(
            "/_reranker/events",
            content=ndjson(event(second, 2, {"detail": {"price": "cheap"}, "extra": 5})),
        )
    assert poisoner.json()["items"][0]["status"] == 202
    assert victim.json()["items"][0]["status"] == 202
    events = stored(es_client, events_index)
    assert len(events) == 2  # both written: no field took a type from the first client
    ids = sorted(e["event_attributes"]["object"]["object_id"] for e in events)
    assert ids == sorted([first, second])


async def test_a_flood_of_events_for_one_search_stops_at_its_quota(
    es_node: NodeStatus, names: dict[str, str]
) -> None:
    settings = settings_for(es_node, names, ubi_max_events_per_search=20)
    async with serving(settings) as http:
        search = await http.post(f"/{names['docs']}/_search", json={"query": QUERY, "size": 2})
        query_id = search.json()["ext"]["ubi"]["query_id"]
        flood = [
            {**ubi_event(query_id, "purchase", "x", 1), "event_attributes": {}}
            | {"timestamp": f"{now()[:-4]}{i:03d}Z"}
            for i in range(30)
        ]
        answer = await http.post("/_reranker/events", content=ndjson(*flood))
    items = answer.json()["items"]
    assert [i["status"] for i in items].count(202) == 20
    refused = [i for i in items if i["status"] == 429]
    assert len(refused) == 10
    assert {i["error"]["type"] for i in refused} == {"search_event_quota"}


async def test_a_client_inventing_sessions_cannot_outgrade_what_other_clients_clicked(
    es_node: NodeStatus, es_client: Elasticsearch, names: dict[str, str], events_index: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Alice's 4 users click the second hit; Mallory, in 12 invented sessions of one key,
    clicks the first. Without a cap on one client's share the first would be graded above."""
    alice = {"authorization": "ApiKey alice-key-123"}
    mallory = {"authorization": "ApiKey mallory-key-456"}
    settings = settings_for(
        es_node, names, api_keys=("alice-key-123", "mallory-key-456"), ubi_events_index=events_index
    )
    search = {"query": QUERY, "size": 2, "ext": {"ubi": {"user_query": TEXT}}}
    async with serving(settings) as http:
        for who, sessions, clicked in ((alice, 4, 2), (mallory, 12, 1)):
            for session in range(sessions):
                answer = await http.post(f"/{names['docs']}/_search", json=search, headers=who)
                query_id = answer.json()["ext"]["ubi"]["query_id"]
                hits = [h["_id"] for h in answer.json()["hits"]["hits"]]
                extra = {"session_id": f"{who['authorization'][7:12]}-{session}"}
                posted = await http.post(
                    "/_reranker/events",
                    content=ndjson(
                        ubi_event(query_id, "impression", hits[0], 1, **extra),
                        ubi_event(query_id, "impression", hits[1], 2, **extra),
                        ubi_event(query_id, "click", hits[clicked - 1], clicked, **extra),
                    ),
                    headers=who,
                )
                assert posted.json()["accepted"] == 3
    es_client.indices.refresh(index=events_index)
    output = tmp_path / "clicks.tsv"
    result = CliRunner().invoke(
        main,
        [
            "--es-url", es_node.url, "judgments", "--events-index", events_index,
            "--model", "ctr", "--min-impressions", "1", "--output", str(output),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["searches"] == 8  # Mallory keeps as many as the others together
    grades = {
        doc: int(g)
        for _, doc, g in (r.split("\t") for r in output.read_text().split("\n")[1:] if r)
    }
    forged, truth = hits
    assert grades[forged] <= grades[truth]


async def test_a_client_over_its_event_rate_is_refused_and_the_others_are_not(
    es_node: NodeStatus, names: dict[str, str]
) -> None:
    alice = {"authorization": "ApiKey alice-key-123"}
    mallory = {"authorization": "ApiKey mallory-key-456"}
    settings = settings_for(
        es_node, names, api_keys=("alice-key-123", "mallory-key-456"),
        ubi_max_events=10, ubi_client_events_per_s=0.01,
    )  # fmt: skip

    sent = iter(range(1000))  # each event its own millisecond: none is a duplicate

    def flood(query_id: str, count: int) -> bytes:
        return ndjson(
            *(
                {**ubi_event(query_id, "purchase", "x", 1), "event_attributes": {}}
                | {"timestamp": f"{now()[:-4]}{next(sent):03d}Z"}
                for _ in range(count)
            )
        )

    async with serving(settings) as http:
        ids = {}
        for name, who in (("alice", alice), ("mallory", mallory)):
            search = await http.post(
                f"/{names['docs']}/_search", json={"query": QUERY, "size": 2}, headers=who
            )
            ids[name] = search.json()["ext"]["ubi"]["query_id"]
        first = await http.post(
            "/_reranker/events", content=flood(ids["mallory"], 8), headers=mallory
        )
        second = await http.post(
            "/_reranker/events", content=flood(ids["mallory"], 5), headers=mallory
        )
        honest = await http.post("/_reranker/events", content=flood(ids["alice"], 3), headers=alice)
    assert first.json()["accepted"] == 8
    assert [i["status"] for i in second.json()["items"]] == [202, 202, 429, 429, 429]
    assert {i["error"]["type"] for i in second.json()["items"][2:]} == {"client_event_quota"}
    assert honest.json()["accepted"] == 3
