"""Load driver for the reranking proxy: N concurrent clients for T seconds over SciFact queries.

    python benchmarks/load.py --url http://127.0.0.1:9280 --clients 32 --duration 60
    python benchmarks/load.py --serve MODEL_DIR --clients 4 --duration 10 --window 20
    python benchmarks/load.py --serve models/reranker-minilm-l6 --variant int8 \
        --clients 32 --duration 60 --windows 20,50,100 --request-log

``--serve MODEL_DIR`` starts a proxy in a child process first (on a free port, against
``RERANKER_ES_URL``) and stops it afterwards; otherwise ``--url`` names a running one.
``--windows`` runs one load per window against the same proxy. A 429 answer makes that client
wait ``Retry-After`` seconds, as a well-behaved client would.

``--request-log`` (with ``--serve``) turns the proxy's request log on under a fresh index
prefix and, after the runs, checks that the documents in Elasticsearch number the reranked
answers (every 200 with a ``rerank`` block, warm-ups included) minus the drops that
``/metrics`` reports.

Reports throughput, latency percentiles (as the client saw them), answers by status, degraded
answers by reason, and where the time went, from each answer's ``rerank.took_ms``: the
Elasticsearch round trip, embedding, scoring, the wait for the scorer, and the proxy's own
overhead (total − Elasticsearch − embedding − scoring − scorer wait; the proxy's HTTP handling
and JSON outside that are the client latency minus ``total``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"


@dataclass
class Sample:
    status: int
    latency_ms: float
    took_ms: dict[str, float] = field(default_factory=dict)
    degraded: str | None = None


def load_queries(dataset: Path, split: str) -> list[str]:
    """Texts of the queries judged in ``split`` (all queries if there are no qrels)."""
    queries: dict[str, str] = {}
    with (dataset / "queries.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            queries[str(row["_id"])] = row["text"]
    qrels = dataset / "qrels" / f"{split}.tsv"
    if not qrels.is_file():
        return list(queries.values())
    judged: list[str] = []
    for line in qrels.read_text(encoding="utf-8").splitlines()[1:]:
        qid = line.split("\t")[0]
        if qid in queries and queries[qid] not in judged:
            judged.append(queries[qid])
    return judged


def request_body(text: str, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "query": {"combined_fields": {"query": text, "fields": ["title", "text"]}},
        "size": args.size,
        "_source": ["title"],
    }
    if not args.no_rerank:
        rerank: dict[str, Any] = {"window": args.window}
        if args.hybrid:
            rerank["hybrid"] = {"dense": True, "fusion": args.fusion}
        if args.timeout_ms:
            rerank["timeout_ms"] = args.timeout_ms
        if args.cascade:
            rerank["cascade"] = args.cascade
        body["rerank"] = rerank
    return body


async def client_loop(
    http: httpx.AsyncClient,
    path: str,
    queries: list[str],
    args: argparse.Namespace,
    stop_at: float,
    samples: list[Sample],
    seed: int,
) -> None:
    rng = random.Random(seed)
    while time.perf_counter() < stop_at:
        text = rng.choice(queries)
        started = time.perf_counter()
        try:
            response = await http.post(path, json=request_body(text, args))
        except httpx.HTTPError as exc:
            samples.append(Sample(status=-1, latency_ms=0.0, degraded=type(exc).__name__))
            continue
        latency = (time.perf_counter() - started) * 1000
        sample = Sample(status=response.status_code, latency_ms=latency)
        if response.status_code == 429:
            samples.append(sample)
            await asyncio.sleep(float(response.headers.get("retry-after") or 1))
            continue
        if response.status_code == 200:
            rerank = response.json().get("rerank") or {}
            sample.took_ms = {k: float(v) for k, v in (rerank.get("took_ms") or {}).items()}
            sample.degraded = rerank.get("degraded")
        samples.append(sample)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(array, q)), 2) for q in (50, 95, 99)} | {
        "mean": round(float(array.mean()), 2),
        "max": round(float(array.max()), 2),
    }


def summarise(samples: list[Sample], seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200]
    stages: dict[str, list[float]] = {}
    for sample in ok:
        for stage, ms in sample.took_ms.items():
            stages.setdefault(stage, []).append(ms)
        if sample.took_ms:
            stages.setdefault("http_and_json", []).append(
                max(0.0, sample.latency_ms - sample.took_ms.get("total", sample.latency_ms))
            )
    degraded = Counter(
        (s.degraded or "").split(":")[0] for s in ok if s.degraded
    )  # the reason's head: "reranker timeout", "circuit open", ...
    return {
        "clients": args.clients,
        "distinct_queries": args.queries,
        "score_cache_size": os.environ.get("RERANKER_PROXY_SCORE_CACHE_SIZE", "default"),
        "duration_s": round(seconds, 2),
        "window": None if args.no_rerank else args.window,
        "cascade": None if args.no_rerank else args.cascade,
        "reranked_answers": sum(1 for s in ok if s.took_ms),
        "hybrid": bool(args.hybrid),
        "requests": len(samples),
        "throughput_rps": round(len(samples) / seconds, 2) if seconds else 0.0,
        "latency_ms": percentiles([s.latency_ms for s in ok]),
        "status": dict(Counter(str(s.status) for s in samples)),
        "degraded": sum(degraded.values()),
        "degraded_by_reason": dict(degraded),
        "stage_ms": {name: percentiles(values) for name, values in sorted(stages.items())},
    }


async def run_load(args: argparse.Namespace, url: str) -> dict[str, Any]:
    queries = load_queries(Path(args.data), args.split)[: args.queries]
    if not queries:
        raise SystemExit(f"no queries in {args.data}")
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    headers = {"authorization": f"ApiKey {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=args.request_timeout, headers=headers
    ) as http:
        path = f"/{args.index}/_search"
        warm = await http.post(path, json=request_body(queries[0], args))  # first-call costs
        if warm.status_code != 200:
            raise SystemExit(f"warm-up request failed: {warm.status_code} {warm.text[:500]}")
        samples: list[Sample] = []
        started = time.perf_counter()
        stop_at = started + args.duration
        await asyncio.gather(
            *(
                client_loop(http, path, queries, args, stop_at, samples, seed)
                for seed in range(args.clients)
            )
        )
        elapsed = time.perf_counter() - started
    report = summarise(samples, elapsed, args)
    report["reranked_answers"] += 0 if args.no_rerank else 1  # the warm-up is logged too
    return report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def served_proxy(model_dir: Path, args: argparse.Namespace) -> Iterator[str]:
    """A proxy in a child process (so it does not share this process's event loop)."""
    port = free_port()
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from reranker.proxy import ProxySettings, serve
        from reranker.rerank.scorer import Scorer
        log = {args.log_prefix!r}
        encoder = None
        if {bool(args.hybrid)!r}:
            from reranker.retrieval.embedder import Embedder
            encoder = lambda: Embedder.default(threads={args.threads})
        serve(
            ProxySettings.from_env(
                port={port},
                max_in_flight={args.max_in_flight},
                max_window=max(1000, {max(args.windows)}),
                cascade_model=Path({args.cascade_model!r}) if {bool(args.cascade)!r} else None,
                **({{"request_log": True, "log_index_prefix": log}} if log else {{}}),
            ),
            scorer_factory=lambda: Scorer(
                Path({str(model_dir)!r}), variant={args.variant!r}, threads={args.threads}
            ),
            encoder_factory=encoder,
            log_level="warning",
        )
        """
    )
    with healthy_proxy([sys.executable, "-c", code], port) as url:
        yield url


@contextlib.contextmanager
def healthy_proxy(
    command: list[str], port: int, env: dict[str, str] | None = None, wait_s: float = 120
) -> Iterator[str]:
    """Run ``command`` (a proxy on ``port``) until the block ends; its URL once
    ``/_health`` answers 200."""
    child = subprocess.Popen(command, env=env if env is not None else dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if child.poll() is not None:
                raise SystemExit(f"the proxy exited with status {child.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/_health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the proxy did not become healthy within {wait_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", default="http://127.0.0.1:9280", help="a running proxy")
    target.add_argument("--serve", type=Path, help="start a proxy with this model folder")
    parser.add_argument("--index", default="beir-scifact")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR dataset folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--windows", default=None, help="comma-separated: one run per window")
    parser.add_argument("--request-log", action="store_true", help="with --serve: log check")
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--hybrid", action="store_true", help="BM25 + kNN first stage")
    parser.add_argument("--fusion", default="rrf", choices=["rrf", "linear"])
    parser.add_argument("--no-rerank", action="store_true", help="pass-through baseline")
    parser.add_argument("--timeout-ms", type=int, default=None, help="rerank.timeout_ms")
    parser.add_argument(
        "--cascade", type=int, default=None, help="rerank.cascade: the full model's top K"
    )
    parser.add_argument(
        "--cascade-model",
        default="first-stage",
        help="with --serve and --cascade: the proxy's cascade model (a folder or first-stage)",
    )
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--variant", default="fp32", help="with --serve")
    parser.add_argument("--threads", type=int, default=None, help="with --serve: ORT threads")
    parser.add_argument("--max-in-flight", type=int, default=32, help="with --serve")
    parser.add_argument(
        "--queries",
        type=int,
        default=None,
        help="only the first N queries, drawn again and again (a repeated-query run: with "
        "--serve, RERANKER_PROXY_SCORE_CACHE_SIZE=0 in the environment turns the cache off)",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    try:
        args.windows = [int(w) for w in (args.windows or str(args.window)).split(",")]
    except ValueError:
        parser.error("--windows must be comma-separated integers")
    args.window = args.windows[0]
    args.log_prefix = f"reranker-logs-load{int(time.time())}" if args.request_log else None
    if args.request_log and args.serve is None:
        parser.error("--request-log needs --serve (the proxy is started with the log on)")
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be ≥ 1 and --duration > 0")
    if args.size > min(args.windows) and not args.no_rerank:
        parser.error("--size must not exceed --window")
    return args


def run_windows(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    reports = []
    for window in args.windows:
        args.window = window
        reports.append(asyncio.run(run_load(args, url)))
        print(json.dumps(reports[-1]), file=sys.stderr, flush=True)
    return reports


def metric(url: str, name: str) -> float:
    """The sum of a Prometheus counter's samples (over its labels) from ``/metrics``."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and not line.startswith(f"{name}_created"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def log_check(url: str, prefix: str, reranked: int) -> dict[str, Any]:
    """Wait for the proxy's log queue to drain, then compare Elasticsearch's count."""
    from reranker.config import Settings
    from reranker.es.client import make_client

    settings = Settings.from_env()  # with the local node's generated credentials, if any
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        written = metric(url, "reranker_proxy_log_documents_written_total")
        dropped = metric(url, "reranker_proxy_log_documents_dropped_total")
        if written + dropped >= reranked:
            break
        time.sleep(1)
    with make_client(settings) as es:
        es.indices.refresh(index=f"{prefix}-*")
        count = int(es.count(index=f"{prefix}-*")["count"])
    return {
        "index_pattern": f"{prefix}-*",
        "reranked_answers": reranked,
        "log_documents": count,
        "dropped": dropped,
        "written": written,
        "holds": count == reranked - dropped,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report: dict[str, Any]
    if args.serve is not None:
        with served_proxy(args.serve, args) as url:
            runs = run_windows(args, url)
            report = {"runs": runs}
            if args.log_prefix:
                reranked = sum(r["reranked_answers"] for r in runs)
                report["request_log"] = log_check(url, args.log_prefix, reranked)
    else:
        report = {"runs": run_windows(args, args.url)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
