"""Would popularity as click-through help the blend? A linear probe (issue 12, hidden signals)

    PYTHONPATH=. .venv/bin/python benchmarks/clickthrough_probe.py EVENTS.jsonl DEV.jsonl TEST.jsonl
        [--model runs/mt/mt] [--cache runs/ctr-probe] [--output FILE]

The issue's popularity task is click-through prediction. Before building a click-through head
into training, this probe asks whether one could lift the blend at all. The position-based
click model (``reranker judgments``' pbm, fitted by EM) turns the simulated click EVENTS of
Stack Exchange *train* queries into a per-pair attractiveness; pairs examined at least twice
by the model's estimate are kept. A ridge regression from the multi-task encoder's
mean-pooled output of (query, answer) to that attractiveness (weighted as ridge is: each pair
once) is the probe: the click-through head a frozen encoder can give.

DEV and TEST are the ``ltr log-features`` files of ``benchmarks/hidden_signals.py``; every
candidate of their windows gets the probe's prediction as ``predicted_clickthrough``. The
ridge strength and the blends are chosen on DEV only (as there: 30 % of the dev queries
choose between fits) and scored on TEST; ``ceiling`` rows fit on TEST itself, as bounds,
not results. Dev figures are cross-fitted: fit on one half of
the dev queries, score on the other, and the reverse. Pooled outputs are cached under
``--cache`` (encoding 65,000 pairs takes about 40 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from hidden_signals import ceiling_ndcg  # benchmarks/, this script's folder
from popularity_probe import ridge_predict

from reranker.training.ltr import FeatureSet, fit_blend, read_features

SE = Path(__file__).resolve().parents[2] / "shared" / "data" / "stackexchange"
FEATURE = "predicted_clickthrough"
MIN_EXAMINATIONS = 2.0
STRENGTHS = (1.0, 10.0, 100.0)
BASE = ["relevance", "first_stage"]


def pooled(model_dir: Path, texts: list[tuple[str, str]], cache: Path) -> np.ndarray:
    if cache.is_file():
        return np.asarray(np.load(cache))
    import torch
    from popularity_head_refit import pooled_and_head

    from reranker.training.aware_model import load_aware

    torch.set_num_threads(2)
    model, tokenizer = load_aware(model_dir)
    model.eval()
    vectors, _ = pooled_and_head(model, tokenizer, texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def with_feature(features: FeatureSet, column: np.ndarray) -> FeatureSet:
    return FeatureSet(
        names=(*features.names, FEATURE),
        values=np.hstack([features.values, column[:, None]]),
        labels=features.labels,
        groups=features.groups,
        query_ids=features.query_ids,
    )


def cross_fitted(dev: FeatureSet, only: list[str]) -> float:
    """Mean over the two halves of the dev queries of a blend fitted on the other half."""
    first, second = dev.split(0.5)
    total = 0.0
    for fit_on, score_on in ((first, second), (second, first)):
        fit_part, choose_part = fit_on.split(0.3, seed=29)
        blend = fit_blend("linear", fit_part, choose_part, only)
        total += score_on.ndcg(blend.score(score_on.values)) / 2
    return total


def main() -> None:
    from reranker.corpus import passage_text
    from reranker.feedback.judgments import count_clicks, fit_pbm, read_events_file
    from reranker.training.data import _read_jsonl
    from reranker.training.heads import document_sources

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=Path)
    parser.add_argument("dev", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--model", type=Path, default=Path("runs/mt/mt"))
    parser.add_argument("--cache", type=Path, default=Path("runs/ctr-probe"))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    sources = document_sources(SE)
    queries = {str(r["_id"]): str(r["text"]) for _, r in _read_jsonl(SE / "queries.jsonl")}
    counts, _ = count_clicks(read_events_file(args.events))
    fit = fit_pbm(counts)
    assert fit.examinations is not None
    pairs = sorted(p for p in fit.scores if fit.examinations[p] >= MIN_EXAMINATIONS)
    train_x = pooled(
        args.model,
        [(text, passage_text(sources[doc])) for text, doc in pairs],
        args.cache / "train.npy",
    )
    train_y = np.array([fit.scores[p] for p in pairs])
    logs = {"dev": read_features(args.dev)}
    logs["test"] = read_features(args.test, logs["dev"].names)
    windows = {}
    for split, path in (("dev", args.dev), ("test", args.test)):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        texts = [(queries[r["qid"]], passage_text(sources[r["doc_id"]])) for r in rows]
        windows[split] = pooled(args.model, texts, args.cache / f"{split}.npy")

    heads = [n for n in logs["dev"].names if n.startswith("predicted_")]
    variants = {
        "without (relevance + first_stage)": BASE,
        "with predicted click-through": [*BASE, FEATURE],
        "with predicted click-through and the signal heads": [*BASE, FEATURE, *heads],
    }
    result: dict[str, Any] = {
        "note": "simulated clicks (benchmarks/click_recovery.py), not real users",
        "events": str(args.events),
        "model": str(args.model),
        "pairs": len(pairs),
        "pairs_seen": len(fit.scores),
        "by_strength": {},
    }
    best: tuple[float, float] | None = None
    for strength in STRENGTHS:
        dev = with_feature(logs["dev"], ridge_predict(train_x, train_y, windows["dev"], strength))
        row = {name: round(cross_fitted(dev, only), 4) for name, only in variants.items()}
        row["click-through alone (dev)"] = round(dev.ndcg(dev.values[:, -1]), 4)
        result["by_strength"][f"{strength:g}"] = row
        gain = row["with predicted click-through"] - row["without (relevance + first_stage)"]
        if best is None or gain > best[0]:
            best = (gain, strength)
        print(f"ridge {strength:g}: dev (cross-fitted) {row}", flush=True)
    assert best is not None
    strength = best[1]
    dev = with_feature(logs["dev"], ridge_predict(train_x, train_y, windows["dev"], strength))
    test = with_feature(logs["test"], ridge_predict(train_x, train_y, windows["test"], strength))
    fit_part, choose_part = dev.split(0.3)
    result["chosen_strength"] = strength
    result["ndcg@10_test"] = {}
    for name, only in variants.items():
        blend = fit_blend("linear", fit_part, choose_part, only)
        result["ndcg@10_test"][name] = round(test.ndcg(blend.score(test.values)), 4)
    for name, only in variants.items():  # not results: the most any linear blend could do
        result["ndcg@10_test"][f"ceiling: linear fitted on test, {name}"] = ceiling_ndcg(test, only)
    print(json.dumps(result["ndcg@10_test"], indent=1))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
