"""A local 3-node cluster (``reranker es up --nodes 3``) that loses a node to SIGKILL while it
serves searches, loads an index and takes UBI events, and gets it back.

The module starts its own cluster on HTTP ports 9310-9312 (``RERANKER_TEST_CLUSTER_PORT``
names the first; transport ports +100) with fresh data folders, and removes it afterwards.
Each test kills one node mid-run, starts it again and waits until the cluster has its three
nodes back: searches through the proxy all answer 200 (partial results said in ``_shards`` and
``rerank.degraded``), a load finishes with every document or fails with the alias untouched,
and no event the proxy accepted is lost. Indices here have replicas (what ``reranker index
--replicas 1`` would create), so every shard keeps a copy on a surviving node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch
from elasticsearch.helpers import scan

from reranker.corpus import CorpusSource
from reranker.credentials import remove_credentials
from reranker.errors import IndexingError, NodeError
from reranker.es import mappings
from reranker.es.client import make_client
from reranker.es.cluster import LocalCluster, node_name
from reranker.es.indexing import LoadOptions, index_corpus
from reranker.es.processes import pid_alive
from reranker.proxy import ProxySettings
from reranker.retrieval.embedder import Embedder
from tests.conftest import es_settings, require_data
from tests.integration.conftest import SCIFACT, running, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]

NODES = 3
CLIENTS = 32
QUERY = {"match": {"text": "human cells protein expression disease"}}


def first_port() -> int:
    return int(os.environ.get("RERANKER_TEST_CLUSTER_PORT", "9310"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Three nodes of their own, fresh data under /tmp (reachable by the node user as root);
    every folder, credential and certificate removed afterwards."""
    data_root = Path(tempfile.mkdtemp(prefix="reranker-test-cluster-"))
    data_root.chmod(0o755)  # each node's own data folder inside is the node user's
    made = LocalCluster(nodes=NODES, port=first_port(), heap="512m", data_root=data_root)
    try:
        made.up()
        yield made
    finally:
        with contextlib.suppress(NodeError):
            made.down()
        shutil.rmtree(data_root, ignore_errors=True)
        for member in made.members:
            shutil.rmtree(member.node_dir, ignore_errors=True)
            remove_credentials(member.port)
        shutil.rmtree(made.tls_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Elasticsearch]:
    """A client of all three nodes, as every reranker command makes it."""
    made = make_client(es_settings(cluster.url, request_timeout_s=120))
    yield made
    made.close()


@pytest.fixture(autouse=True)
def green(client: Elasticsearch) -> None:
    """Each test starts from three nodes and every shard copy assigned."""
    health = client.cluster.health(
        wait_for_nodes=str(NODES), wait_for_status="green", timeout="180s"
    )
    assert not health["timed_out"], health


def corpus(folder: Path, documents: int) -> CorpusSource:
    """The first ``documents`` SciFact abstracts as a JSONL corpus."""
    rows = []
    with (require_data(SCIFACT) / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) == documents:
                break
    return CorpusSource.open(write_jsonl(folder / f"corpus-{documents}.jsonl", rows))


@pytest.fixture(scope="module")
def search_alias(
    client: Elasticsearch, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """120 abstracts in 3 shards with a replica each (no shard lives on one node only)."""
    alias = f"clustersearch-{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("cluster-search")
    index_corpus(client, corpus(folder, 120), alias, embedder, options=quiet())
    yield alias
    delete_named_after(client, alias)


def quiet(**options: Any) -> LoadOptions:
    """Loads without a progress bar, into 3 shards with a replica each (no shard lives on one
    node only)."""
    return LoadOptions(progress=False, shards=3, replicas=1, **options)


def delete_named_after(client: Elasticsearch, alias: str) -> None:
    names = list(client.indices.get(index=f"{alias}-*", allow_no_indices=True))
    if names:
        client.indices.delete(index=",".join(names), ignore_unavailable=True)


# ------------------------------------------------------------------ nodes


def port_of(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def master_port(client: Elasticsearch) -> int:
    rows = client.cat.master(format="json").body
    assert isinstance(rows, list)
    return port_of(rows[0]["node"])


def primary_port(client: Elasticsearch, index: str) -> int:
    """The node holding the primary of ``index`` (one shard), once the index exists and its
    replica is started too: a replica still recovering could not take over from the primary."""
    deadline = time.monotonic() + 120
    while True:
        rows = client.options(ignore_status=404).cat.shards(index=index, format="json").body
        rows = rows if isinstance(rows, list) else []  # 404: not created yet
        if rows and all(row["state"] == "STARTED" for row in rows):
            return port_of(next(row["node"] for row in rows if row["prirep"] == "p"))
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def kill(cluster: LocalCluster, port: int) -> None:
    """SIGKILL the node on ``port``: no shutdown, its connections just drop."""
    pid = cluster.node(port).status().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def rejoin(cluster: LocalCluster, client: Elasticsearch, port: int) -> dict[str, Any]:
    """Start the node again and wait until the cluster counts three nodes, yellow or green."""
    cluster.start_node(port)
    health = dict(
        client.cluster.health(wait_for_nodes=str(NODES), wait_for_status="yellow", timeout="180s")
    )
    assert not health["timed_out"], health
    return health


# ------------------------------------------------------------------ the cluster itself


def test_three_nodes_form_one_cluster_with_transport_tls(
    cluster: LocalCluster, client: Elasticsearch
) -> None:
    nodes = client.nodes.info(metric="settings")["nodes"].values()
    assert sorted(node["name"] for node in nodes) == [node_name(p) for p in cluster.ports]
    for node in nodes:
        transport_ssl = node["settings"]["xpack"]["security"]["transport"]["ssl"]
        assert transport_ssl["enabled"] == "true"
    certificates: list[dict[str, Any]] = client.ssl.certificates().body
    subjects = {entry["subject_dn"] for entry in certificates}
    assert any(re.fullmatch(r"CN=reranker-\d+", subject) for subject in subjects)
    assert sorted(p.name for p in cluster.tls_dir.iterdir()) == sorted(
        [
            "ca.crt",
            "ca.key",
            *(f"{node_name(p)}.{ext}" for p in cluster.ports for ext in ("crt", "key")),
        ]
    )
    assert len(cluster.urls) == NODES


# ------------------------------------------------------------------ (a) searches


@dataclass
class Answers:
    """What the clients got: (time, reranked?, status, body)."""

    rows: list[tuple[float, bool, int, dict[str, Any]]] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[tuple[float, bool, int, dict[str, Any]]]:
        return [row for row in self.rows if start < row[0] < end]


async def search_load(
    http: httpx.AsyncClient, alias: str, stop: asyncio.Event, answers: Answers
) -> Answers:
    """CLIENTS clients searching until ``stop``, into ``answers``: half reranked, half passed
    through."""

    async def searcher(number: int) -> None:
        reranked = number % 2 == 0
        body: dict[str, Any] = {"query": QUERY, "size": 10}
        if reranked:
            body["rerank"] = {"window": 20}
        while not stop.is_set():
            response = await http.post(f"/{alias}/_search", json=body)
            answers.rows.append((time.monotonic(), reranked, response.status_code, response.json()))
            await asyncio.sleep(0.05)

    await asyncio.gather(*(searcher(n) for n in range(CLIENTS)))
    return answers


def load_settings(cluster: LocalCluster, allowed: str, **overrides: Any) -> ProxySettings:
    values: dict[str, Any] = {
        "es": es_settings(cluster.url),
        "allowed_indices": (allowed,),
        "max_window": 50,
        "default_window": 20,
        "default_timeout_ms": 30_000,
        # the load is one client at CLIENTS concurrent requests: neither admission nor
        # fairness should answer it, only the cluster
        "max_in_flight": CLIENTS + 8,
        "fair_share_burst": 0.0,
    }
    values.update(overrides)
    return ProxySettings(**values)


async def test_searches_through_the_proxy_all_answer_while_a_node_is_killed_and_rejoins(
    cluster: LocalCluster, client: Elasticsearch, search_alias: str
) -> None:
    victim = next(port for port in cluster.ports if port != master_port(client))
    async with running(load_settings(cluster, f"{search_alias}*"), None) as http:
        stop = asyncio.Event()
        started = Answers()
        load = asyncio.create_task(search_load(http, search_alias, stop, started))
        await asyncio.sleep(2.0)
        # a cold cluster's first search took 1.7 s in CI: kill once answers come
        while not started.rows and not load.done():
            await asyncio.sleep(0.1)
        killed_at = time.monotonic()
        await asyncio.to_thread(kill, cluster, victim)
        await asyncio.sleep(5.0)
        restarting_at = time.monotonic()
        health = await asyncio.to_thread(rejoin, cluster, client, victim)
        rejoined_at = time.monotonic()
        await asyncio.sleep(2.0)
        stop.set()
        answers = await load

    statuses = {status for _, _, status, _ in answers.rows}
    assert statuses == {200}, [body for _, _, status, body in answers.rows if status != 200][:3]
    partial = sum(1 for *_, body in answers.rows if body["_shards"]["failed"])
    print(f"{len(answers.rows)} searches, {partial} with failed shards")
    assert answers.between(0, killed_at) and answers.between(killed_at, restarting_at)
    assert answers.between(rejoined_at, time.monotonic())
    for _, reranked, _, body in answers.rows:
        assert body["_shards"]["total"] == 3
        if reranked:
            degraded = body["rerank"]["degraded"]  # no cross-encoder here: always degraded
            assert degraded
            if body["_shards"]["failed"]:
                assert "es partial results" in degraded
    assert health["number_of_nodes"] == NODES


# ------------------------------------------------------------------ (b) indexing


def test_a_load_that_loses_the_master_finishes_whole_or_leaves_the_alias_untouched(
    cluster: LocalCluster, client: Elasticsearch, embedder: Embedder, tmp_path: Path
) -> None:
    alias = f"clusterload-{uuid.uuid4().hex[:8]}"
    outcome: dict[str, Any] = {}
    try:
        index_corpus(client, corpus(tmp_path, 20), alias, embedder, options=quiet())
        before = mappings.indices_behind_alias(client, alias)
        source = corpus(tmp_path, 600)

        def load() -> None:
            try:
                options = quiet(bulk_chunk=50, chunk_size=50)
                outcome["result"] = index_corpus(client, source, alias, embedder, options=options)
            except IndexingError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=load)
        thread.start()
        wait_for_documents_loaded(client, alias, before, at_least=100)
        victim = master_port(client)
        kill(cluster, victim)
        thread.join(timeout=900)
        assert not thread.is_alive()
        health = rejoin(cluster, client, victim)
        behind = mappings.indices_behind_alias(client, alias)
        print(f"the load {'finished' if 'result' in outcome else 'failed'}: {outcome}")
        if "result" in outcome:
            assert behind == [outcome["result"].index] and outcome["result"].documents == 600
            assert client.count(index=alias)["count"] == 600
        else:
            assert behind == before, outcome["error"]
            assert client.count(index=alias)["count"] == 20
        assert health["number_of_nodes"] == NODES
    finally:
        delete_named_after(client, alias)


def wait_for_documents_loaded(
    client: Elasticsearch, alias: str, before: list[str], *, at_least: int
) -> None:
    """Until the new index behind no alias yet has taken ``at_least`` documents (counted as
    indexing operations: it is not refreshed during the load)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        stats = client.indices.stats(index=f"{alias}-*", metric="indexing")["indices"]
        taken = sum(
            body["primaries"]["indexing"]["index_total"]
            for name, body in stats.items()
            if name not in before
        )
        if taken >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"the load into {alias} did not reach {at_least} documents")


# ------------------------------------------------------------------ (c) UBI events


async def event_load(http: httpx.AsyncClient, alias: str, stop: asyncio.Event) -> set[str]:
    """CLIENTS clients each searching, then posting an impression and a click for every hit
    shown, until ``stop``; the ids of the events the proxy accepted."""
    accepted: set[str] = set()

    async def client(number: int) -> None:
        while not stop.is_set():
            search = await http.post(
                f"/{alias}/_search", json={"query": QUERY, "size": 5, "from": number % 3}
            )
            hits = [h["_id"] for h in search.json()["hits"]["hits"]] if search.is_success else []
            # a search answered while the killed node's shard fails over may have no hit
            # (partial results): nothing to show, so nothing to click
            if hits:
                query_id = search.json()["ext"]["ubi"]["query_id"]
                events = [
                    ubi_event(query_id, action, doc, position)
                    for position, doc in enumerate(hits, start=number % 3 + 1)
                    for action in ("impression", "click")
                ]
                answer = await http.post("/_reranker/events", content=ndjson(events))
                assert answer.status_code == 200, answer.text
                items = answer.json()["items"]
                accepted.update(item["_id"] for item in items if item["status"] == 202)
            await asyncio.sleep(0.25)

    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return accepted


def ubi_event(query_id: str, action: str, doc: str, position: int) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return {
        "action_name": action,
        "query_id": query_id,
        "timestamp": stamp,
        "session_id": f"session-{query_id[:8]}",
        "event_attributes": {"object": {"object_id": doc}, "position": {"ordinal": position}},
    }


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(event) + "\n" for event in events).encode()


def metric(text: str, name: str, labels: str | None = None) -> float:
    """A counter's value (summed over its labels unless ``labels`` names them)."""
    pattern = (
        rf"^{name}{{{re.escape(labels)}}} (\S+)$" if labels else rf"^{name}(?:{{[^}}]*}})? (\S+)$"
    )
    return sum(float(value) for value in re.findall(pattern, text, re.M))


@dataclass(frozen=True)
class Writer:
    """The proxy's UBI documents by fate, from ``/metrics``."""

    events: float
    """events accepted (202: queued)"""
    queries: float
    """query documents queued (those a full queue refused are not)"""
    written: float
    lost: float
    """dropped after they were queued (a full queue refuses before that)"""
    drops: tuple[str, ...] = ()
    """the dropped documents' metric lines, by reason"""

    @classmethod
    def read(cls, text: str) -> Writer:
        full = metric(text, "reranker_proxy_ubi_documents_dropped_total", 'reason="queue full"')
        refused = metric(text, "reranker_proxy_ubi_events_total", 'outcome="queue_full"')
        return cls(
            events=metric(text, "reranker_proxy_ubi_events_total", 'outcome="accepted"'),
            queries=metric(text, "reranker_proxy_ubi_queries_total") - (full - refused),
            written=metric(text, "reranker_proxy_ubi_documents_written_total"),
            lost=metric(text, "reranker_proxy_ubi_documents_dropped_total") - full,
            drops=tuple(re.findall(r"^reranker_proxy_ubi_documents_dropped_total.*$", text, re.M)),
        )


async def settled(http: httpx.AsyncClient, limit_s: float = 180.0) -> Writer:
    """The writer's counts once every queued document is written or lost."""
    deadline = time.monotonic() + limit_s
    while True:
        counts = Writer.read((await http.get("/metrics")).text)
        done = counts.written + counts.lost >= counts.events + counts.queries
        if done or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.5)


def stored_ids(client: Elasticsearch, index: str) -> set[str]:
    client.indices.refresh(index=index)
    return {
        hit["_id"]
        for hit in scan(client, index=index, query={"query": {"match_all": {}}}, _source=False)
    }


async def test_no_event_the_proxy_accepted_is_lost_when_the_events_primary_is_killed(
    cluster: LocalCluster, client: Elasticsearch, search_alias: str
) -> None:
    prefix = f"clusterubi-{uuid.uuid4().hex[:8]}"
    queries, events = f"{prefix}-queries", f"{prefix}-events"
    settings = load_settings(
        cluster,
        f"{search_alias}*",
        ubi=True,
        ubi_queries_index=queries,
        ubi_events_index=events,
        log_flush_s=0.1,
        ubi_client_events_per_s=100_000.0,
    )
    try:
        async with running(settings, None) as http:
            stop = asyncio.Event()
            load = asyncio.create_task(event_load(http, search_alias, stop))
            await asyncio.sleep(3.0)
            victim = await asyncio.to_thread(primary_port, client, events)
            await asyncio.to_thread(kill, cluster, victim)
            await asyncio.sleep(5.0)
            health = await asyncio.to_thread(rejoin, cluster, client, victim)
            stop.set()
            accepted = await load
            counts = await settled(http)
            retries = metric(
                (await http.get("/metrics")).text, "reranker_proxy_log_bulk_retries_total"
            )
        print(
            f"events accepted {counts.events:.0f}, query documents {counts.queries:.0f}, "
            f"written {counts.written:.0f}, bulk retries {retries:.0f}"
        )
        assert accepted and counts.events == len(accepted)
        assert stored_ids(client, events) == accepted
        assert counts.lost == 0, counts
        assert len(stored_ids(client, queries)) == counts.queries
        assert health["number_of_nodes"] == NODES
    finally:
        client.options(ignore_status=404).indices.delete(index=f"{queries},{events}")
        for template in (queries, events):
            client.options(ignore_status=404).indices.delete_index_template(name=template)
