"""Blends for documents whose signals are hidden: do a multi-task model's predicted signals
help? (issue 12, item 3)

    PYTHONPATH=. .venv/bin/python benchmarks/hidden_signals.py DEV.jsonl TEST.jsonl
        [--output FILE]

DEV and TEST are `reranker ltr log-features` files of one dataset written with a multi-task
model (`--model` an export with signal heads), so each row has ``relevance``, ``first_stage``,
the real signals and ``predicted_<head>``. Every blend is fitted on DEV only (its seeded 30 %
of the queries choose between fits, as `ltr fit --dev-fraction 0.3` does) and scored on TEST:

* ``without``: relevance + first_stage (what a blend has when the signals are hidden);
* ``with predicted``: the same plus the heads' predictions;
* ``with real signals``: relevance + first_stage + the real signals (not hidden: the ceiling
  the predictions stand in for).

NDCG@10 is computed over the logged window (the candidates the first stage returned), by the
blend code serving uses (``Blend.score``).

``ceiling: linear fitted on test`` rows fit each linear blend on TEST itself (in-sample, more
random restarts): not results, an upper bound on what any linear blend of those features can
gain on these queries, whoever fits it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from reranker.blend import fit_linear
from reranker.ltr import fit_blend, read_features
from reranker.task_heads import PREDICTED_PREFIX

DEV_FRACTION = 0.3
CEILING_RESTARTS = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dev", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    dev = read_features(args.dev)
    test = read_features(args.test, dev.names)
    predicted = [n for n in dev.names if n.startswith(PREDICTED_PREFIX)]
    if not predicted:
        parser.error(f"{args.dev} has no predicted_* features: log it with a multi-task model")
    real = [
        n[len(PREDICTED_PREFIX) :] for n in predicted if n[len(PREDICTED_PREFIX) :] in dev.names
    ]
    base = ["relevance", "first_stage"]
    variants = {
        "relevance alone": ["relevance"],
        "without (relevance + first_stage)": base,
        "with predicted signals": base + predicted,
        "with real signals (not hidden)": base + real,
    }
    fit_part, choose_part = dev.split(DEV_FRACTION)
    result: dict[str, Any] = {
        "dev": str(args.dev),
        "test": str(args.test),
        "dev_queries": len(dev.query_ids),
        "test_queries": len(test.query_ids),
        "ndcg@10_test": {},
        "blends": {},
    }
    for kind in ("linear", "lambdamart"):
        for name, only in variants.items():
            if kind == "lambdamart" and len(only) == 1:
                continue
            blend = fit_blend(kind, fit_part, choose_part, only)
            key = f"{kind}: {name}"
            result["ndcg@10_test"][key] = round(test.ndcg(blend.score(test.values)), 4)
            result["blends"][key] = blend.to_dict() if kind == "linear" else {"features": only}
            print(f"{key:55s} test NDCG@10 {result['ndcg@10_test'][key]:.4f}")
    for name, only in variants.items():
        if len(only) == 1:
            continue
        columns = [test.names.index(n) for n in only]
        fitted = fit_linear(
            test.values[:, columns], test.labels, test.groups, only, restarts=CEILING_RESTARTS
        )
        key = f"ceiling: linear fitted on test, {name}"
        result["ndcg@10_test"][key] = round(test.ndcg(fitted.score(test.values[:, columns])), 4)
        print(f"{key:55s} test NDCG@10 {result['ndcg@10_test'][key]:.4f}")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
