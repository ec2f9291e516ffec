"""Do click judgments recover the qrels? **Simulated clicks** (synthetic users, not real ones)
through the real proxy and Elasticsearch, judged by each click model, compared with the
editorial qrels.

    reranker es up && reranker index ../shared/data/scifact --alias beir-scifact
    reranker index ../shared/data/stackexchange --alias beir-stackexchange
    python benchmarks/click_recovery.py --queries 60 --sessions 20 \
        --output benchmarks/results/click-recovery.json

It starts ``reranker serve --ubi`` in a child process (against ``RERANKER_ES_URL``, fresh UBI
index names for this run, the shipped cross-encoder), and per dataset: simulated users
(:mod:`reranker.feedback.click_sim`: position bias ``(1/k)^eta``, click probability by qrels grade
plus
noise, seeded) search a seeded sample of the *train* queries, alternately BM25 (passed
through) and reranked, and post impressions and clicks to ``POST /_reranker/events``; once
Elasticsearch holds every accepted event, the events are read back from ``ubi_events`` and
judged by ``pbm``, ``coec`` and ``ctr`` (:mod:`reranker.feedback.judgments`, as ``reranker
judgments``
does), and each set of judgments is compared with the train qrels (unjudged = 0) over the
pairs it judged: Kendall's τ-b of score against grade, precision of the top-scored pairs,
whether each query's top-scored document is relevant, and agreement of the grades.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from elasticsearch import NotFoundError
from load import free_port, healthy_proxy  # benchmarks/load.py (this script's folder)

from reranker.config import Settings
from reranker.corpus import load_qrels, load_queries
from reranker.es.client import make_client
from reranker.feedback import judgments as j
from reranker.feedback.agreement import agreement
from reranker.feedback.click_sim import NOTE, RANKERS, UserModel, pick_queries, simulate

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@contextlib.contextmanager
def served_proxy(args: argparse.Namespace, indices: dict[str, str]) -> Iterator[str]:
    """``reranker serve --ubi`` in a child process, healthy, until the block ends."""
    port = free_port()
    env = dict(
        os.environ,
        RERANKER_PROXY_UBI_QUERIES_INDEX=indices["queries"],
        RERANKER_PROXY_UBI_EVENTS_INDEX=indices["events"],
    )
    command = [
        sys.executable, "-m", "reranker.cli", "--es-url", args.es_url, "serve",
        "--port", str(port), "--ubi", "--allow", "beir-*", "--variant", args.variant,
        "--no-dense", "--log-format", "text",
    ]  # fmt: skip
    with healthy_proxy(command, port, env, wait_s=180) as url:
        yield url


def wait_for_events(client: Any, index: str, application: str, expected: int) -> int:
    """Elasticsearch's count of the run's events once it stops growing (or reaches
    ``expected``)."""
    last, steady, count = -1, 0, 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(NotFoundError):  # the first bulk may still be on its way
            client.indices.refresh(index=index)
            count = int(
                client.count(index=index, query={"term": {"application": application}})["count"]
            )
        if count >= expected:
            return count
        steady = steady + 1 if count == last else 0
        if steady >= 5:
            return count
        last = count
        time.sleep(1)
    return last


def judge_all(
    client: Any,
    index: str,
    application: str,
    dataset: Path,
    min_impressions: int,
    min_examinations: float,
) -> dict[str, Any]:
    counts, seen = j.count_clicks(j.read_events_es(client, index, application=application))
    j.require_impressions(counts, seen)
    truth = load_qrels(dataset, "train")
    queries = load_queries(dataset)
    out: dict[str, Any] = {
        "events": seen.events,
        "searches": seen.searches,
        "impressions": seen.impressions,
        "clicks": seen.clicks,
    }
    variants = [(model, model, 0.0) for model in j.MODELS]
    variants.append((f"pbm_min_examinations_{min_examinations:g}", "pbm", min_examinations))
    fits = {model: j.fit(model, counts) for model in j.MODELS}
    for key, model, examinations in variants:
        fitted = fits[model]
        judged = j.judge(
            counts,
            fitted,
            min_impressions=min_impressions,
            thresholds=j.DEFAULT_THRESHOLDS[model],
            dataset_queries=queries,
            min_examinations=examinations,
        )
        grades: dict[str, int] = {}
        for docs in judged.qrels.values():
            for value in docs.values():
                grades[str(value)] = grades.get(str(value), 0) + 1
        out[key] = {
            "pairs_judged": judged.pairs_kept,
            "queries_judged": len(judged.qrels),
            "grades": dict(sorted(grades.items())),
            "by_position": {str(k): round(v, 4) for k, v in fitted.positions.items()},
            "agreement": agreement(judged, truth),
        }
        if model == "pbm":
            out[key]["em"] = {"iterations": fitted.iterations, "converged": fitted.converged}
    # the baseline on exactly the pairs the pbm variant kept, for a like-for-like comparison
    looked = fits["pbm"].examinations or {}
    kept = j.ClickCounts(
        {key: n for key, n in counts.rows.items() if looked.get(key[0], 0.0) >= min_examinations}
    )
    same = j.judge(
        kept,
        fits["ctr"],
        min_impressions=min_impressions,
        thresholds=j.DEFAULT_THRESHOLDS["ctr"],
        dataset_queries=queries,
    )
    out[f"ctr_same_pairs_as_pbm_min_examinations_{min_examinations:g}"] = {
        "pairs_judged": same.pairs_kept,
        "agreement": agreement(same, truth),
    }
    return out


async def run_dataset(
    url: str, name: str, args: argparse.Namespace, model: UserModel
) -> dict[str, Any]:
    dataset = args.data / name
    qrels = load_qrels(dataset, "train")
    chosen = pick_queries(load_queries(dataset), qrels, args.queries, args.seed)
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        report = await simulate(
            http,
            f"beir-{name}",
            chosen,
            qrels,
            sessions=args.sessions,
            size=args.size,
            window=args.window,
            rankers=RANKERS,
            model=model,
            seed=args.seed,
            concurrency=args.concurrency,
            application=f"click-recovery-{name}",
        )
    result = report.to_dict()
    result["queries"] = len(chosen)
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--es-url", default=os.environ.get("RERANKER_ES_URL", "http://127.0.0.1:9200")
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--datasets", default="scifact,stackexchange")
    parser.add_argument("--queries", type=int, default=60, help="Train queries per dataset.")
    parser.add_argument("--sessions", type=int, default=20, help="Per query.")
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--window", type=int, default=10, help="Rerank window.")
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--click-probs", default="0.05,0.5,0.9")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--min-impressions", type=int, default=10)
    parser.add_argument(
        "--min-examinations",
        type=float,
        default=4.0,
        help="For the extra pbm variant judged only on pairs looked at this often.",
    )
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--keep-events",
        type=Path,
        default=None,
        help="Also write each dataset's events here (<dataset>-events.jsonl), for "
        "`reranker judgments --events`.",
    )
    args = parser.parse_args()

    model = UserModel(
        eta=args.eta,
        click_probs=tuple(float(p) for p in args.click_probs.split(",")),
        noise=args.noise,
    )
    run = uuid.uuid4().hex[:8]
    indices = {"queries": f"ubi-recovery-{run}-queries", "events": f"ubi-recovery-{run}-events"}
    client = make_client(Settings.from_env(es_url=args.es_url))
    results: dict[str, Any] = {
        "note": NOTE,
        "user_model": {
            "eta": model.eta,
            "click_probs": list(model.click_probs),
            "noise": model.noise,
            "seed": args.seed,
        },
        "sessions_per_query": args.sessions,
        "size": args.size,
        "rankers": list(RANKERS),
        "rerank_window": args.window,
        "min_impressions": args.min_impressions,
        "min_examinations_variant": args.min_examinations,
        "thresholds": {m: list(t) for m, t in j.DEFAULT_THRESHOLDS.items()},
        "datasets": {},
    }
    try:
        with served_proxy(args, indices) as url:
            for name in args.datasets.split(","):
                print(f"{name}: simulating", file=sys.stderr)
                simulated = asyncio.run(run_dataset(url, name, args, model))
                print(json.dumps(simulated), file=sys.stderr)
                if not simulated["events_accepted"]:
                    raise SystemExit(f"{name}: no event was accepted")
                application = f"click-recovery-{name}"
                stored = wait_for_events(
                    client, indices["events"], application, simulated["events_accepted"]
                )
                simulated["events_in_elasticsearch"] = stored
                if args.keep_events is not None:
                    args.keep_events.mkdir(parents=True, exist_ok=True)
                    kept = args.keep_events / f"{name}-events.jsonl"
                    with kept.open("w", encoding="utf-8") as handle:
                        for event in j.read_events_es(
                            client, indices["events"], application=application
                        ):
                            handle.write(json.dumps(event) + "\n")
                print(f"{name}: judging {stored} events", file=sys.stderr)
                judged = judge_all(
                    client,
                    indices["events"],
                    application,
                    args.data / name,
                    args.min_impressions,
                    args.min_examinations,
                )
                results["datasets"][name] = {"simulation": simulated, "judgments": judged}
    finally:
        for index in indices.values():
            client.options(ignore_status=404).indices.delete(index=index)
            client.options(ignore_status=404).indices.delete_index_template(name=index)
    text = json.dumps(results, indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
