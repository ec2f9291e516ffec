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
  the predictions stand in for);
* with a click-through head (``predicted_clickthrough``, which has no real counterpart), the
  same with its prediction, alone and beside the signal heads'.

NDCG@10 is computed over the logged window (the candidates the first stage returned), by the
blend code serving uses (``Blend.score``).

``newest answers without votes`` rows hide the vote count where it really is missing: for the
newest fifth of the test documents (by ``freshness``, i.e. creation date; whatever their
labels), ``popularity`` is 0, as the index holds for an answer nobody has voted on yet. The
blend fitted with the real signals is scored as it is, and with those documents' popularity
filled by ``predicted_popularity``.

``ndcg@10_test_eval_scale`` scores the same blends as ``reranker eval`` does (every judged
document of the split counts, also those outside the window).

``ceiling: linear fitted on test`` rows fit each linear blend on TEST itself (in-sample, more
random restarts): not results, an upper bound on what any linear blend of those features can
gain on these queries, whoever fits it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reranker.blend.fit import fit_linear
from reranker.corpus import load_qrels
from reranker.metrics import score_run
from reranker.rerank.heads import CLICK_HEAD, PREDICTED_PREFIX, predicted_feature
from reranker.training.ltr import FeatureSet, fit_blend, read_features

DEV_FRACTION = 0.3
CEILING_RESTARTS = 6
NEWEST_SHARE = 0.2
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def eval_scale(path: Path) -> Callable[[np.ndarray], float]:
    """NDCG@10 as ``reranker eval`` computes it, for scores of the rows of feature file
    ``path``: the window in the scores' order against every judged document of the split
    (``ir_measures``), so a query whose relevant documents the first stage missed counts, and
    counts against it. The split comes from the file's ``.meta.json``."""
    meta = json.loads(path.with_name(path.name + ".meta.json").read_text(encoding="utf-8"))
    qrels = load_qrels(DATA / meta["dataset"], meta["split"])
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    pairs = [(str(r["qid"]), str(r["doc_id"])) for r in rows]
    # ties keep the window's order, as FeatureSet.ndcg does (ir_measures would break them by
    # document id, which moves LambdaMART's many tied scores)
    tie_break = np.arange(len(rows)) * 1e-9

    def ndcg(scores: np.ndarray) -> float:
        run: dict[str, dict[str, float]] = {}
        ranked = np.asarray(scores, dtype=np.float64) - tie_break
        for (query_id, doc_id), score in zip(pairs, ranked, strict=True):
            run.setdefault(query_id, {})[doc_id] = float(score)
        return score_run(run, qrels)["ndcg@10"]

    return ndcg


def ceiling_ndcg(test: FeatureSet, only: list[str]) -> float:
    """NDCG@10 of a linear blend of ``only`` fitted on ``test`` itself: not a result, the most
    any linear blend of those features can reach on these queries."""
    columns = [test.names.index(n) for n in only]
    fitted = fit_linear(
        test.values[:, columns], test.labels, test.groups, only, restarts=CEILING_RESTARTS
    )
    return round(test.ndcg(fitted.score(test.values[:, columns])), 4)


def newest_without_votes(features: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """``features.values`` with the newest :data:`NEWEST_SHARE` of the documents' popularity
    set to 0 (no votes yet), and the same with their predicted popularity instead."""
    freshness = features.values[:, features.names.index("freshness")]
    cut = np.quantile(np.unique(freshness), 1.0 - NEWEST_SHARE)
    newest = freshness >= cut
    popularity = features.names.index("popularity")
    hidden = features.values.copy()
    hidden[newest, popularity] = 0.0
    filled = hidden.copy()
    predicted = features.values[:, features.names.index(f"{PREDICTED_PREFIX}popularity")]
    filled[newest, popularity] = predicted[newest]
    return hidden, filled


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
    signals = [predicted_feature(n) for n in real]
    base = ["relevance", "first_stage"]
    variants = {
        "relevance alone": ["relevance"],
        "without (relevance + first_stage)": base,
        "with predicted signals": base + signals,
        "with real signals (not hidden)": base + real,
    }
    clicks = predicted_feature(CLICK_HEAD)
    if clicks in dev.names:  # a click-through head: no real counterpart in the index
        variants["with predicted click-through"] = [*base, clicks]
        variants["with predicted signals and click-through"] = [*base, *signals, clicks]
    fit_part, choose_part = dev.split(DEV_FRACTION)
    result: dict[str, Any] = {
        "dev": str(args.dev),
        "test": str(args.test),
        "dev_queries": len(dev.query_ids),
        "test_queries": len(test.query_ids),
        "ndcg@10_test": {},
        "ndcg@10_test_eval_scale": {},
        "blends": {},
    }
    on_eval_scale = eval_scale(args.test)

    def record(key: str, scores: np.ndarray) -> None:
        result["ndcg@10_test"][key] = window = round(test.ndcg(scores), 4)
        result["ndcg@10_test_eval_scale"][key] = full = round(on_eval_scale(scores), 4)
        print(f"{key:55s} test NDCG@10 {window:.4f} (eval scale {full:.4f})")

    linear: dict[str, Any] = {}
    for kind in ("linear", "lambdamart"):
        for name, only in variants.items():
            if kind == "lambdamart" and len(only) == 1:
                continue
            blend = fit_blend(kind, fit_part, choose_part, only)
            key = f"{kind}: {name}"
            record(key, blend.score(test.values))
            result["blends"][key] = blend.to_dict() if kind == "linear" else {"features": only}
            if kind == "linear":
                linear[name] = blend
    if "popularity" in real and "freshness" in test.names:
        with_real = linear["with real signals (not hidden)"]
        hidden, filled = newest_without_votes(test)
        record("newest answers without votes: real-signal blend, popularity 0",
               with_real.score(hidden))  # fmt: skip
        record("newest answers without votes: the same, predicted popularity filled in",
               with_real.score(filled))  # fmt: skip
    for name, only in variants.items():
        if len(only) == 1:
            continue
        key = f"ceiling: linear fitted on test, {name}"
        result["ndcg@10_test"][key] = ceiling_ndcg(test, only)
        print(f"{key:55s} test NDCG@10 {result['ndcg@10_test'][key]:.4f}")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
