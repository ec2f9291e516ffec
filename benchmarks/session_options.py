"""ONNX Runtime session options for the shipped int8 cross-encoder, timed side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/session_options.py [--repeats 5] [--output FILE]

The same 100 real SciFact pairs (tests/unit/conftest.py: load_scifact_pairs) through the same
`Scorer` (tokenisation, length-sorted batches), only the session swapped; interleaved repeats,
median per option. Every option must give the same logits (within 1e-4): none changes ranking.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from reranker.rerank.scorer import load_scorer
from tests.unit.conftest import load_scifact_pairs

OPTIONS: dict[str, dict[str, Any]] = {
    "shipped (ENABLE_ALL, 2 threads, arena, spinning)": {},
    "no thread spinning": {"entries": {"session.intra_op.allow_spinning": "0"}},
    "no CPU memory arena": {"arena": False},
    "ENABLE_EXTENDED optimisation level": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED},
    "dynamic block base 4": {"entries": {"session.dynamic_block_base": "4"}},
}


def session(path: str, config: dict[str, Any]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = config.get(
        "level", ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = config.get("arena", True)
    for key, value in config.get("entries", {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    pairs = load_scifact_pairs()
    scorer = load_scorer(variant="int8")
    path = str(scorer.model_dir / scorer.card["variants"]["int8"]["file"])
    sessions = {name: session(path, config) for name, config in OPTIONS.items()}
    times: dict[str, list[float]] = {name: [] for name in OPTIONS}
    reference = None
    for _ in range(args.repeats):
        for name, candidate in sessions.items():
            scorer._session = candidate
            started = time.perf_counter()
            logits = scorer.score(pairs)
            times[name].append(time.perf_counter() - started)
            reference = logits if reference is None else reference
            if not np.allclose(logits, reference, atol=1e-4):
                raise SystemExit(f"{name} changes the logits")
    shipped = statistics.median(next(iter(times.values())))
    result = {
        name: {
            "ms_per_100_pairs": round(statistics.median(t) * 1000 * 100 / len(pairs)),
            "x_shipped": round(statistics.median(t) / shipped, 3),
        }
        for name, t in times.items()
    }
    for name, row in result.items():
        print(f"{name:50s} {row['ms_per_100_pairs']:6d} ms / 100 pairs  ×{row['x_shipped']}")
    if args.output:
        args.output.write_text(
            json.dumps({"pairs": len(pairs), "repeats": args.repeats, "options": result}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
