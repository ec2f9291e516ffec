"""``"rerank": {"personalize": ...}`` through the proxy, on a real node: clicks accepted by
``POST /_reranker/events`` become a user's profile (``reranker profiles update``), which moves
documents like the ones clicked up for that user, and for nobody else."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from elasticsearch import Elasticsearch

from reranker.cli import main
from reranker.es.node import NodeStatus
from reranker.es.profiles import PROFILE_KIND, SETTLE_S, update_profiles
from reranker.feedback.judgments import CLICK_ACTIONS
from reranker.proxy import ProxySettings
from reranker.rerank.scorer import Scorer
from reranker.retrieval.embedder import Embedder
from tests.integration.conftest import QUERY, proxy_settings, running

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ALICE_KEY, MALLORY_KEY = "alice-key-123", "mallory-key-456"
ALICE = {"authorization": f"ApiKey {ALICE_KEY}"}
MALLORY = {"authorization": f"ApiKey {MALLORY_KEY}"}


@pytest.fixture
def names(es_client: Elasticsearch) -> Iterator[dict[str, str]]:
    """UBI and profiles indices of the test's own, deleted afterwards (templates too)."""
    prefix = f"personaltest-{uuid.uuid4().hex[:8]}"
    found = {k: f"{prefix}-{k}" for k in ("queries", "events", "profiles")}
    yield found
    es_client.options(ignore_status=404).indices.delete(
        index=",".join(found.values()), expand_wildcards="all"
    )
    for name in found.values():
        es_client.options(ignore_status=404).indices.delete_index_template(name=name)


def settings(es_node: NodeStatus, alias: str, names: dict[str, str]) -> ProxySettings:
    return proxy_settings(
        es_node, alias, ubi=True, ubi_queries_index=names["queries"],
        ubi_events_index=names["events"], profiles_index=names["profiles"],
        api_keys=(ALICE_KEY, MALLORY_KEY), log_flush_s=0.1,
    )  # fmt: skip


def body(user: str | None, personalize: Any = None, *, explain: bool = False) -> dict[str, Any]:
    rerank: dict[str, Any] = {"window": 20, "explain": explain}
    if personalize is not None:
        rerank["personalize"] = personalize
    out: dict[str, Any] = {"query": QUERY, "size": 10, "_source": False, "rerank": rerank}
    if user is not None:
        out["ext"] = {"ubi": {"user_id": user, "client_id": f"browser-of-{user}"}}
    return out


async def search(
    http: httpx.AsyncClient, alias: str, user: str | None, personalize: Any = None,
    headers: dict[str, str] = ALICE, explain: bool = False,
) -> dict[str, Any]:  # fmt: skip
    response = await http.post(
        f"/{alias}/_search", json=body(user, personalize, explain=explain), headers=headers
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def ranked(answer: dict[str, Any]) -> list[tuple[str, float]]:
    return [(hit["_id"], hit["_score"]) for hit in answer["hits"]["hits"]]


async def click_last(http: httpx.AsyncClient, answer: dict[str, Any], times: int = 1) -> str:
    """Click the last hit shown (``times`` clicks, one per search id) and return its id."""
    hits = answer["hits"]["hits"]
    doc, position = hits[-1]["_id"], len(hits)
    event = {
        "action_name": "click",
        "query_id": answer["ext"]["ubi"]["query_id"],
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "session_id": "session-1",
        "client_id": "whoever-the-event-claims",
        "event_attributes": {"object": {"object_id": doc}, "position": {"ordinal": position}},
    }
    response = await http.post(
        "/_reranker/events",
        content=(json.dumps(event) + "\n").encode(),
        headers={**ALICE, "content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
    return str(doc)


def update(es_client: Elasticsearch, names: dict[str, str], clicks: int) -> dict[str, Any]:
    """Wait for the proxy to have written ``clicks`` click events, then update profiles."""
    deadline = time.monotonic() + 30
    # 404 until the proxy's writer creates the index, 503 while its shard starts
    waiting = es_client.options(ignore_status=(404, 503), retry_on_status=())
    while time.monotonic() < deadline:
        waiting.indices.refresh(index=names["events"])
        found = waiting.count(index=names["events"])
        if found.get("count", 0) >= clicks:
            break
        time.sleep(0.2)
    report = update_profiles(
        es_client, events_index=names["events"], profiles_index=names["profiles"], settle_s=0
    )
    return report.__dict__


async def test_a_user_without_a_profile_gets_exactly_the_unpersonalised_answer(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer, embedder: Embedder,
    names: dict[str, str],
) -> None:  # fmt: skip
    async with running(settings(es_node, proxy_alias, names), proxy_scorer, embedder) as http:
        plain = await search(http, proxy_alias, "newcomer")
        personal = await search(http, proxy_alias, "newcomer", True)
    assert ranked(personal) == ranked(plain)
    assert personal["rerank"]["personalize"] == {"applied": False}


async def test_clicks_move_similar_documents_up_for_that_user_and_nobody_else(
    es_node: NodeStatus, es_client: Elasticsearch, proxy_alias: str, proxy_scorer: Scorer,
    embedder: Embedder, names: dict[str, str],
) -> None:  # fmt: skip
    async with running(settings(es_node, proxy_alias, names), proxy_scorer, embedder) as http:
        first = await search(http, proxy_alias, "alice-user")
        clicked = await click_last(http, first)
        plain_bob = await search(http, proxy_alias, "bob")
        plain_alice_of_mallory = await search(http, proxy_alias, "alice-user", headers=MALLORY)
    report = update(es_client, names, 1)
    assert report["clicks_used"] == 1 and report["profiles_updated"] == 1
    async with running(settings(es_node, proxy_alias, names), proxy_scorer, embedder) as http:
        mine = await search(http, proxy_alias, "alice-user", {"weight": 5.0}, explain=True)
        bob = await search(http, proxy_alias, "bob", {"weight": 5.0})
        mallorys = await search(http, proxy_alias, "alice-user", {"weight": 5.0}, headers=MALLORY)
    order = [doc for doc, _ in ranked(mine)]
    assert order.index(clicked) < len(first["hits"]["hits"]) - 1  # it moved up
    assert mine["rerank"]["personalize"] == {"applied": True, "weight": 5.0, "profile_clicks": 1}
    top = mine["hits"]["hits"][order.index(clicked)]["_rerank"]["personal"]
    assert top["similarity"] == pytest.approx(1.0, abs=1e-3)  # the clicked document itself
    # another user of the same client, and the same user id under another client: untouched
    assert ranked(bob) == ranked(plain_bob)
    assert ranked(mallorys) == ranked(plain_alice_of_mallory)


async def test_a_client_deletes_its_users_profile_and_cannot_delete_another_clients(
    es_node: NodeStatus, es_client: Elasticsearch, proxy_alias: str, proxy_scorer: Scorer,
    embedder: Embedder, names: dict[str, str],
) -> None:  # fmt: skip
    async with running(settings(es_node, proxy_alias, names), proxy_scorer, embedder) as http:
        await click_last(http, await search(http, proxy_alias, "carol"))
    update(es_client, names, 1)
    async with running(settings(es_node, proxy_alias, names), proxy_scorer, embedder) as http:
        refused = await http.delete("/_reranker/profiles/carol")
        by_mallory = await http.delete("/_reranker/profiles/carol", headers=MALLORY)
        still = await search(http, proxy_alias, "carol", True)
        by_alice = await http.delete("/_reranker/profiles/carol", headers=ALICE)
        gone = await search(http, proxy_alias, "carol", True)
    assert refused.status_code == 401
    assert by_mallory.status_code == 200 and by_mallory.json() == {"deleted": 0}
    assert still["rerank"]["personalize"]["applied"] is True
    assert by_alice.json() == {"deleted": 1}
    assert gone["rerank"]["personalize"] == {"applied": False}


async def test_the_profiles_index_cannot_be_searched_through_the_proxy(
    es_node: NodeStatus, es_client: Elasticsearch, proxy_alias: str, names: dict[str, str]
) -> None:
    update(es_client, names, 0)  # the profiles index exists (a checkpoint document in it)
    lax = dataclasses.replace(settings(es_node, proxy_alias, names), allowed_indices=("*",))
    async with running(lax, None) as http:
        by_name = await http.post(f"/{names['profiles']}/_search", json={}, headers=ALICE)
        hidden = await http.post(
            "/*/_search?expand_wildcards=all", json={"size": 100}, headers=ALICE
        )
        plain = await http.post("/*/_search", json={"size": 1000}, headers=ALICE)
    assert by_name.status_code == 403
    assert hidden.status_code == 403
    assert plain.status_code == 200
    assert all(h["_index"] != names["profiles"] for h in plain.json()["hits"]["hits"])


async def test_personalisation_without_a_user_is_a_400(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer, embedder: Embedder,
    names: dict[str, str],
) -> None:  # fmt: skip
    async with running(settings(es_node, proxy_alias, names), proxy_scorer, embedder) as http:
        response = await http.post(f"/{proxy_alias}/_search", json=body(None, True), headers=ALICE)
    assert response.status_code == 400
    assert "ext.ubi.user_id" in response.json()["error"]["reason"]


async def test_the_update_command_reads_only_what_is_new(
    es_node: NodeStatus, es_client: Elasticsearch, proxy_alias: str, proxy_scorer: Scorer,
    embedder: Embedder, names: dict[str, str],
) -> None:  # fmt: skip
    async with running(settings(es_node, proxy_alias, names), proxy_scorer, embedder) as http:
        await click_last(http, await search(http, proxy_alias, "frank"))
    await asyncio.sleep(SETTLE_S + 0.5)  # the command leaves the last seconds' events for later

    def run() -> dict[str, Any]:
        result = CliRunner().invoke(
            main,
            ["--es-url", es_node.url, "profiles", "update", "--events-index", names["events"],
             "--profiles-index", names["profiles"]],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        report: dict[str, Any] = json.loads(result.output)
        return report

    first, second = run(), run()
    assert first["received_through"] <= second["received_through"]
    assert first["clicks_read"] == 1 and first["profiles_updated"] == 1
    assert second["clicks_read"] == 0
    assert (
        es_client.indices.get_settings(index=names["profiles"])[names["profiles"]]["settings"][
            "index"
        ]["hidden"]
        == "true"
    )


async def test_the_search_command_reranks_for_a_user_with_their_profile(
    es_node: NodeStatus, es_client: Elasticsearch, proxy_alias: str, proxy_scorer: Scorer,
    embedder: Embedder, names: dict[str, str],
) -> None:  # fmt: skip
    async with running(settings(es_node, proxy_alias, names), proxy_scorer, embedder) as http:
        clicked = await click_last(http, await search(http, proxy_alias, "dave"))
    update(es_client, names, 1)
    owner = "key-" + hashlib.sha256(ALICE_KEY.encode()).hexdigest()[:16]

    def top(*extra: str) -> list[str]:
        result = CliRunner().invoke(
            main,
            ["--es-url", es_node.url, "search", QUERY["match"]["text"], "--alias", proxy_alias,
             "--mode", "hybrid", "--k", "20", "--json", *extra],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return [json.loads(line)["_id"] for line in result.stdout.splitlines()]

    personal = ["--profiles-index", names["profiles"], "--personal-weight", "5"]
    plain = top()
    mine = top("--personalize", "dave", "--owner", owner, *personal)
    stranger = top("--personalize", "erin", "--owner", owner, *personal)
    assert mine[0].endswith(clicked) and plain[0] != mine[0]
    assert stranger == plain


async def test_the_simulation_runs_end_to_end_and_new_users_are_left_alone(
    es_node: NodeStatus, es_client: Elasticsearch, proxy_alias: str, proxy_scorer: Scorer,
    embedder: Embedder, names: dict[str, str], scifact_docs: list[dict[str, Any]],
) -> None:  # fmt: skip
    """``reranker simulate-personal``'s phases, tiny: 3 users, topics from 2 clusters."""
    from reranker.corpus import load_qrels, load_queries
    from reranker.evaluation.personal import Plan, PreferenceModel, Simulation, run_simulation
    from tests.integration.conftest import SCIFACT

    indexed = {str(d["_id"]) for d in scifact_docs}
    qrels = {q: g for q, g in load_qrels(SCIFACT, "train").items() if set(g) & indexed}
    texts = load_queries(SCIFACT)
    queries = [(q, texts[q]) for q in qrels][:12]
    topics = {doc: f"topic-{i % 2}" for i, doc in enumerate(sorted(indexed))}
    plan = Plan(users=3, history=3, fit=5, later=2, new_users=2, window=10, concurrency=2)
    splits = {"history": queries[:4], "fit": queries[4:10], "later": queries[10:]}
    lax = dataclasses.replace(settings(es_node, proxy_alias, names), api_keys=())
    async with running(lax, proxy_scorer, embedder) as http:
        sim = Simulation(http, proxy_alias, qrels, topics, PreferenceModel(), plan)

        async def update_after(accepted: int) -> dict[str, Any]:
            # in a thread: the proxy's writer shares this event loop and must flush meanwhile
            return await asyncio.to_thread(update, es_client, names, accepted)

        report = await run_simulation(sim, splits, update_after)
    assert report["failed_searches"] == 0
    assert report["profile_update"]["clicks_used"] == report["clicks_accepted"]
    assert report["learned_weight"] in {0.0, 0.5, 1.0, 2.0, 4.0}
    fresh = report["new_users"]
    assert fresh["identical_orders"] == fresh["sessions"] and fresh["personalised_sessions"] == 0
    # the profiles are this run's users' alone: a rerun never inherits an earlier run's clicks
    es_client.indices.refresh(index=names["profiles"])
    stored = es_client.search(
        index=names["profiles"], query={"term": {"kind": PROFILE_KIND}}, size=100
    )["hits"]["hits"]
    # only a user who clicked has a profile; with a window of 10 one may click nothing
    es_client.indices.refresh(index=names["events"])
    clickers = es_client.search(
        index=names["events"], size=0, query={"terms": {"action_name": list(CLICK_ACTIONS)}},
        aggs={"users": {"terms": {"field": "reranker.subject", "size": 100}}},
    )["aggregations"]["users"]["buckets"]  # fmt: skip
    this_run = {f"sim-person-{report['run']}-{plan.seed}-{i}" for i in range(plan.users)}
    subjects = {hit["_source"]["subject"] for hit in stored}
    assert subjects and subjects == {b["key"] for b in clickers} & this_run
    assert subjects <= this_run
