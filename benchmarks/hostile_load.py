"""Honest clients beside a hostile one (issue 25): does anyone else notice the attacker?

    PYTHONPATH=. .venv/bin/python benchmarks/hostile_load.py --es-url http://127.0.0.1:9200 \
        [--honest 8 --seconds 60 --output FILE]

Starts ``reranker serve --ubi`` (the defaults: the shipped first-stage-aware cross-encoder,
the fine-tuned embedder, the first-stage cascade) with one API key per client, against
``beir-scifact`` as ``reranker eval`` indexed it. Two phases of ``--seconds`` each, on the same
proxy:

1. **quiet**: ``--honest`` clients, each in a loop: a reranked hybrid search for a SciFact test
   query (window 50, ``ext.ubi.user_query``), then its impressions and a click, then a pause of
   ``--think`` seconds (± half);
2. **attacked**: the same, beside one hostile client that sends issue 25's request shapes in a
   loop, as fast as they are answered: a 1 MiB body of escaped quotes; a 20 KB and a non-ASCII
   ``X-Opaque-Id``; a thousand one-letter texts to ``/rerank``; one passage among 15 junk
   texts to ``/rerank``; events for an honest client's query ids; an ``_msearch`` of ten
   ``size: 10000`` searches and one of two entries sharing a query id; dotted and
   type-changing ``event_attributes``; out-of-range timestamps; ``?format=yaml`` and
   ``?error_trace=true``; 500 events for one of its own searches; and a connection whose
   headers never finish.

Reported per phase: the honest searches' latency percentiles, statuses, degraded answers by
reason (``circuit open`` among them) and events posted, accepted and found in
Elasticsearch afterwards (a lost event is one answered 202 and not stored); the hostile
client's answers by status. The verdict: honest p50 attacked / quiet ≤ 1.2, no honest answer
with the circuit open, no honest event lost, no 5xx to anyone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from load import free_port, healthy_proxy  # benchmarks/load.py (this script's folder)

from reranker.config import Settings
from reranker.corpus import load_qrels, load_queries
from reranker.es.client import make_client

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
HOSTILE_KEY = "hostile-key-0000"


@dataclass
class Honest:
    """What the honest clients saw."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    degraded: Counter[str] = field(default_factory=Counter)
    events_posted: int = 0
    events_accepted: int = 0
    event_refusals: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        array = np.asarray(self.latencies_ms or [0.0])
        return {
            "searches": len(self.latencies_ms),
            "p50_ms": round(float(np.percentile(array, 50)), 1),
            "p90_ms": round(float(np.percentile(array, 90)), 1),
            "p99_ms": round(float(np.percentile(array, 99)), 1),
            "statuses": dict(self.statuses),
            "degraded": dict(self.degraded),
            "events_posted": self.events_posted,
            "events_accepted": self.events_accepted,
            "event_refusals": dict(self.event_refusals),
        }


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def event(query_id: str, action: str, doc: str, position: int, session: str) -> dict[str, Any]:
    return {
        "action_name": action,
        "query_id": query_id,
        "timestamp": now(),
        "session_id": session,
        "application": "hostile-load",
        "event_attributes": {"object": {"object_id": doc}, "position": {"ordinal": position}},
    }


def ndjson(*rows: dict[str, Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def search_body(text: str) -> dict[str, Any]:
    return {
        "query": {"combined_fields": {"query": text, "fields": ["title", "text"]}},
        "size": 10,
        "_source": ["title"],
        "rerank": {"window": 50, "hybrid": {"dense": True}},
        "ext": {"ubi": {"user_query": text}},
    }


async def honest_client(
    url: str, key: str, queries: list[str], stop_at: float, think_s: float, seen: Honest,
    shared_ids: list[str], seed: int,
) -> None:  # fmt: skip
    rng = random.Random(seed)
    headers = {"authorization": f"ApiKey {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        while time.perf_counter() < stop_at:
            text = rng.choice(queries)
            started = time.perf_counter()
            answer = await http.post("/beir-scifact/_search", json=search_body(text))
            seen.latencies_ms.append((time.perf_counter() - started) * 1000)
            seen.statuses[answer.status_code] += 1
            if answer.status_code == 200:
                body = answer.json()
                reason = (body.get("rerank") or {}).get("degraded")
                if reason:
                    seen.degraded[str(reason)] += 1
                query_id = body["ext"]["ubi"]["query_id"]
                shared_ids.append(query_id)
                hits = [h["_id"] for h in body["hits"]["hits"][:3]]
                session = f"{key}-{uuid.uuid4().hex[:6]}"
                rows = [
                    event(query_id, "impression", d, i + 1, session) for i, d in enumerate(hits)
                ]
                rows.append(event(query_id, "click", hits[0], 1, session))
                posted = await http.post("/_reranker/events", content=ndjson(*rows))
                seen.events_posted += len(rows)
                if posted.status_code != 200:
                    reason = posted.json().get("error", {}).get("reason", "")[:100]
                    seen.event_refusals[f"batch {posted.status_code}: {reason}"] += len(rows)
                for item in posted.json().get("items", []):
                    if item.get("status") == 202:
                        seen.events_accepted += 1
                    else:
                        seen.event_refusals[str(item.get("error", {}).get("type"))] += 1
            await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))


def hostile_requests(honest_ids: list[str], own_id: str | None) -> list[dict[str, Any]]:
    """Issue 25's shapes, one request each (``httpx`` keyword arguments plus method/path)."""
    stolen = honest_ids[-1] if honest_ids else "none"
    plain = {"query": {"match": {"text": "cell"}}, "size": 3}
    ubi_plain = {**plain, "ext": {"ubi": {"query_id": f"dup-{uuid.uuid4().hex[:8]}"}}}
    events_for = own_id or stolen
    flood = [
        {**event(events_for, "purchase", "x", 1, "h"), "timestamp": f"{now()[:-4]}{i % 1000:03d}Z"}
        for i in range(500)
    ]
    tiny = [chr(97 + i % 26) for i in range(1000)]
    return [
        {"path": "/beir-scifact/_search", "content": b'"' + b'\\"' * 500_000,
         "headers": {"content-type": "application/json"}},
        {"path": "/beir-scifact/_search", "json": plain, "headers": {"x-opaque-id": "x" * 20_000}},
        {"path": "/beir-scifact/_search", "json": plain,
         "headers": {"x-opaque-id": "caf\u00e9".encode()}},
        {"path": "/rerank", "json": {"query": "q", "texts": tiny}},
        {"path": "/rerank", "json": {"query": "vitamin D and bone density",
         "texts": ["Vitamin D supplements raise bone mineral density in older adults."]
         + [f"junk {i}" for i in range(15)]}},
        {"path": "/_reranker/events", "content": ndjson(event(stolen, "click", "1", 1, "s"),
                                                         event(stolen, "click", "1", 7, "s"))},
        {"path": "/beir-scifact/_msearch", "content": ndjson(*[{}, {"size": 10000}] * 10),
         "headers": {"content-type": "application/x-ndjson"}},
        {"path": "/beir-scifact/_msearch", "content": ndjson({}, ubi_plain, {}, ubi_plain),
         "headers": {"content-type": "application/x-ndjson"}},
        {"path": "/_reranker/events", "content": ndjson(
            {**event(events_for, "click", "1", 1, "s"),
             "event_attributes": {"object.object_id": "d1"}},
            {**event(events_for, "click", "1", 1, "s"), "event_attributes": {"extra": {"a": 1}}},
            {**event(events_for, "click", "1", 1, "s"), "timestamp": "9999-12-31T23:59:59-23:59"},
            {**event(events_for, "click", "1", 1, "s"), "timestamp": "0001-01-01T00:00:00+23:59"})},
        {"path": "/beir-scifact/_search", "json": plain, "params": {"format": "yaml"}},
        {"path": "/beir-scifact/_search", "json": {"query": {"bad": {}}},
         "params": {"error_trace": "true"}},
        {"path": "/_reranker/events", "content": ndjson(*flood)},
    ]  # fmt: skip


def half_open_connection(url: str) -> socket.socket:
    """A connection whose request headers never finish (the proxy should close it)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /beir-scifact/_search HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return sock


async def hostile_client(
    url: str, stop_at: float, honest_ids: list[str], seen: Counter[str]
) -> None:
    headers = {"authorization": f"ApiKey {HOSTILE_KEY}"}
    sockets: list[socket.socket] = []
    own_id: str | None = None
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        while time.perf_counter() < stop_at:
            if len(sockets) < 20:
                with contextlib.suppress(OSError):
                    sockets.append(half_open_connection(url))
            mine = await http.post("/beir-scifact/_search", json=search_body("cell biology"))
            seen[f"own search {mine.status_code}"] += 1
            if mine.status_code == 200:
                own_id = mine.json()["ext"]["ubi"]["query_id"]
            for shape, request in enumerate(hostile_requests(honest_ids, own_id)):
                if time.perf_counter() >= stop_at:
                    break
                path = request.pop("path")
                extra = request.pop("headers", {})
                try:
                    answer = await http.post(path, headers={**headers, **extra}, **request)
                    seen[f"shape {shape}: {answer.status_code}"] += 1
                except httpx.HTTPError as exc:
                    seen[f"shape {shape}: {type(exc).__name__}"] += 1
    for sock in sockets:
        sock.close()


async def phase(
    url: str, args: argparse.Namespace, queries: list[str], attacked: bool
) -> dict[str, Any]:
    stop_at = time.perf_counter() + args.seconds
    seen = Honest()
    hostile: Counter[str] = Counter()
    ids: list[str] = []
    tasks = [
        honest_client(url, f"honest-key-{i:04d}", queries, stop_at, args.think, seen, ids, i)
        for i in range(args.honest)
    ]
    attacker = None
    if attacked:  # its own process: its client-side work must not delay the honest clients'
        ids_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"hostile-ids-{os.getpid()}.json"
        tasks.append(share_ids(ids, ids_file, stop_at))
        attacker = await asyncio.create_subprocess_exec(
            *(["nice", "-n", str(args.attacker_nice)] if args.attacker_nice else []),
            sys.executable, __file__, "--attack", url, "--seconds", str(args.seconds),
            "--ids-file", str(ids_file), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
    await asyncio.gather(*tasks)
    if attacker is not None:
        out, _ = await attacker.communicate()
        hostile.update(json.loads(out or b"{}"))
    return {"honest": seen.summary(), "hostile": dict(sorted(hostile.items()))}


async def share_ids(ids: list[str], path: Path, stop_at: float) -> None:
    """Hand the honest clients' query ids to the attacker (who would learn them somehow)."""
    while time.perf_counter() < stop_at:
        path.write_text(json.dumps(ids[-20:]), encoding="utf-8")
        await asyncio.sleep(0.5)


def attack(url: str, seconds: float, ids_file: Path) -> None:
    """The hostile client alone (run in a child process); its answers, counted, on stdout."""
    seen: Counter[str] = Counter()
    ids: list[str] = []

    async def run() -> None:
        stop_at = time.perf_counter() + seconds

        async def refresh() -> None:
            while time.perf_counter() < stop_at:
                with contextlib.suppress(OSError, ValueError):
                    ids[:] = json.loads(ids_file.read_text(encoding="utf-8"))
                await asyncio.sleep(0.5)

        await asyncio.gather(refresh(), hostile_client(url, stop_at, ids, seen))

    asyncio.run(run())
    print(json.dumps(seen))


def stored_events(es_url: str, index: str) -> int:
    os.environ["RERANKER_ES_URL"] = es_url  # the node's own credentials come with its URL
    client = make_client(Settings.from_env())
    time.sleep(3)  # the proxy's queue flushes within a second; let it
    client.indices.refresh(index=index)
    query = {"bool": {"filter": [{"term": {"application": "hostile-load"}},
                                 {"prefix": {"session_id": "honest-key-"}}]}}  # fmt: skip
    return int(client.count(index=index, query=query)["count"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--ids-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--es-url", default=os.environ.get("RERANKER_ES_URL", "http://127.0.0.1:9200")
    )
    parser.add_argument("--honest", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=2.0, help="an honest client's pause (s)")
    parser.add_argument(
        "--attacker-nice",
        type=int,
        default=0,
        help="run the attacker's process at this niceness (it shares these cores; a real one "
        "sends from its own machine)",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.attack:
        attack(args.attack, args.seconds, args.ids_file)
        return
    dataset = DATA / "scifact"
    texts = load_queries(dataset)
    queries = [texts[q] for q in load_qrels(dataset, "test")]
    run = uuid.uuid4().hex[:8]
    events_index = f"hostile-load-{run}-events"
    keys = [f"honest-key-{i:04d}" for i in range(args.honest)] + [HOSTILE_KEY]
    env = dict(
        os.environ,
        RERANKER_PROXY_API_KEYS=",".join(keys),
        RERANKER_PROXY_UBI_QUERIES_INDEX=f"hostile-load-{run}-queries",
        RERANKER_PROXY_UBI_EVENTS_INDEX=events_index,
    )
    port = free_port()
    command = [
        sys.executable, "-m", "reranker.cli", "--es-url", args.es_url, "serve",
        "--port", str(port), "--ubi", "--allow", "beir-scifact", "--log-format", "text",
    ]  # fmt: skip
    result: dict[str, Any] = {
        "honest_clients": args.honest,
        "seconds": args.seconds,
        "think_s": args.think,
        "load_average_before": os.getloadavg(),
    }
    with healthy_proxy(command, port, env, wait_s=240) as url:
        for text in queries[:5]:  # warm the scorer, the embedder and Elasticsearch's caches
            httpx.post(f"{url}/beir-scifact/_search", json=search_body(text), timeout=60,
                       headers={"authorization": f"ApiKey {keys[0]}"})  # fmt: skip
        result["quiet"] = asyncio.run(phase(url, args, queries, attacked=False))
        result["attacked"] = asyncio.run(phase(url, args, queries, attacked=True))
        health = httpx.get(f"{url}/_health", timeout=10).status_code
    stored = stored_events(args.es_url, events_index)
    accepted = (
        result["quiet"]["honest"]["events_accepted"]
        + result["attacked"]["honest"]["events_accepted"]
    )
    quiet, attacked = result["quiet"]["honest"], result["attacked"]["honest"]
    five_xx = [
        s for p in ("quiet", "attacked") for s in result[p]["honest"]["statuses"] if s >= 500
    ]
    five_xx += [k for k in result["attacked"]["hostile"] if k.split(": ")[-1].startswith("5")]
    result["verdict"] = {
        "p50_ratio": round(attacked["p50_ms"] / quiet["p50_ms"], 3),
        "circuit_open_answers": sum(n for r, n in attacked["degraded"].items() if "circuit" in r),
        "honest_events_accepted": accepted,
        "honest_events_stored": stored,
        "honest_events_lost": accepted - stored,
        "5xx": five_xx,
        "health_after": health,
    }
    verdict = result["verdict"]
    result["verdict"]["passed"] = bool(
        verdict["p50_ratio"] <= 1.2 and not verdict["circuit_open_answers"]
        and verdict["honest_events_lost"] == 0 and not five_xx
    )  # fmt: skip
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
