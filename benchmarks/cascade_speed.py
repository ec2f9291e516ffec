"""Per-query rerank latency of the full cross-encoder alone against cascades, side by side.

    python benchmarks/cascade_speed.py models/reranker-minilm-l6 runs/student-onnx \
        --k 10,20,30,50 --repeats 7 --output benchmarks/results/cascade-speed.json

Windows of 100 real SciFact candidates (test claims, each against 100 abstracts), reranked
through :meth:`reranker.rerank.pipeline.Pipeline.rerank` as the proxy and ``reranker eval`` do (no
score cache): the full model on all 100, and for each k the student on all 100 plus the full
model on the student's top k, and (the cascade's bar) the full model on the first stage's own
top k. Every repeat runs every configuration on every window,
interleaved, so background load hits them alike. Prints (and writes) the median and p90
milliseconds per window of each, and each cascade's ratio to the full model alone; the load
average before and after says how busy the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from reranker.rerank.cascade import Cascade, check_cascade_models
from reranker.rerank.pipeline import Pipeline
from reranker.rerank.scorer import Scorer, load_scorer
from reranker.retrieval.first_stage import Hit

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def windows(count: int, size: int = 100) -> list[tuple[str, list[Hit]]]:
    """``count`` (claim, candidates) windows: test claim i against abstracts i*size.."""
    claims = []
    test_ids = {
        line.split("\t")[0]
        for line in (DATA / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]
    }
    with (DATA / "queries.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["_id"] in test_ids:
                claims.append(row["text"])
            if len(claims) == count:
                break
    docs: list[dict[str, str]] = []
    with (DATA / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            docs.append({"title": row.get("title", ""), "text": row["text"]})
            if len(docs) == count * size:
                break
    return [
        (
            claim,
            [Hit(id=str(j), score=float(size - j), source=docs[i * size + j]) for j in range(size)],
        )
        for i, claim in enumerate(claims)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("full", type=Path)
    parser.add_argument("student", type=Path)
    parser.add_argument("--k", default="10,20,30,50")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    full: Scorer = load_scorer(args.full)
    student: Scorer = load_scorer(args.student)
    check_cascade_models(full, student)
    configs: dict[str, Pipeline] = {"full": Pipeline(None, full, window=100)}
    for k in ks:
        configs[f"cascade k={k}"] = Pipeline(None, full, window=100, cascade=Cascade(student, k))
    configs["student alone"] = Pipeline(None, student, window=100)
    for k in ks:  # the cascade's bar: the full model on the first stage's own top k
        configs[f"full on first-stage top {k}"] = Pipeline(None, full, window=k)
    data = windows(args.windows)
    for pipeline in configs.values():  # warm-up
        pipeline.rerank(data[0][0], data[0][1][: pipeline.window])
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for text, candidates in data:
            for name, pipeline in configs.items():
                began = time.perf_counter()
                result = pipeline.rerank(text, candidates[: pipeline.window], k=100)
                times[name].append((time.perf_counter() - began) * 1000)
                assert result.degraded is None, result.degraded
    load_after = os.getloadavg()
    base = statistics.median(times["full"])
    summary = {
        "full": f"{full.model_id} ({full.variant}, version {full.version})",
        "student": f"{student.model_id} ({student.variant}, version {student.version})",
        "windows": len(data),
        "window": 100,
        "repeats": args.repeats,
        "threads": "onnxruntime default (all cores the process may use)",
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "ms": {
            name: {
                "p50": round(statistics.median(values), 1),
                "p90": round(statistics.quantiles(values, n=10)[-1], 1)
                if len(values) > 1
                else None,
                "ratio_to_full_p50": round(statistics.median(values) / base, 3),
            }
            for name, values in times.items()
        },
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
