"""How much of a Stack Exchange answer's popularity can its text predict? (issue 12, item 3)

    PYTHONPATH=. .venv/bin/python benchmarks/popularity_probe.py [--output FILE]

Before training a popularity head, a baseline it has to beat: ridge regressions on
log(1 + max(Score, 0)) of every answer in ../shared/data/stackexchange, 5 folds by a hash of
the document id (each answer predicted by a model that never saw it), Spearman of the
held-out predictions against the real Score, overall and within each site. Feature sets:
metadata (site, answer length, age at the dump) and the frozen all-MiniLM-L6-v2 embedding of
the answer (the shipped embedder, no fine-tuning).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from reranker.corpus import passage_text
from reranker.retrieval.embedder import Embedder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stackexchange" / "corpus.jsonl"
FOLDS = 5
RIDGE = 10.0


def age_days(signals: dict[str, Any]) -> float:
    """An answer's age at its site's dump, in days."""
    dumped = datetime.fromisoformat(signals["dump_date"])
    created = datetime.fromisoformat(signals["CreationDate"])
    return max((dumped - created).days, 0)


def ridge_predict(
    train: np.ndarray, target: np.ndarray, test: np.ndarray, strength: float = RIDGE
) -> np.ndarray:
    """A ridge regression (with an intercept) fitted on ``train`` rows, applied to ``test``."""
    design = np.hstack([train, np.ones((len(train), 1))])
    weights = np.linalg.solve(
        design.T @ design + strength * np.eye(design.shape[1]), design.T @ target
    )
    return np.hstack([test, np.ones((len(test), 1))]) @ weights


def held_out_predictions(features: np.ndarray, target: np.ndarray, fold: np.ndarray) -> np.ndarray:
    predictions = np.zeros(len(target))
    for k in range(FOLDS):
        train, test = fold != k, fold == k
        predictions[test] = ridge_predict(features[train], target[train], features[test])
    return predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    docs = [json.loads(line) for line in DATA.open(encoding="utf-8")]
    texts = [passage_text(doc) for doc in docs]
    signals = [doc["signals"] for doc in docs]
    target = np.log1p(np.clip([float(s.get("Score") or 0) for s in signals], 0, None))
    sites = sorted({s["site"] for s in signals})
    site = np.array([[s["site"] == name for name in sites] for s in signals], dtype=float)
    length = np.log1p(np.array([len(t) for t in texts], dtype=float))[:, None]
    age = np.log1p(np.array([age_days(s) for s in signals], dtype=float))[:, None]
    embedding = Embedder.default().encode(texts, batch_size=32, progress=True)
    fold = np.array([int(hashlib.sha256(d["_id"].encode()).hexdigest(), 16) % FOLDS for d in docs])
    feature_sets = {
        "length": length,
        "age": age,
        "site + length + age": np.hstack([site, length, age]),
        "embedding": embedding,
        "embedding + site + length + age": np.hstack([embedding, site, length, age]),
    }
    result: dict[str, Any] = {"answers": len(docs), "folds": FOLDS, "ridge": RIDGE, "spearman": {}}
    for name, features in feature_sets.items():
        predicted = held_out_predictions(features, target, fold)
        within = {
            s: round(float(spearmanr(predicted[mask], target[mask])[0]), 3)
            for s in sites
            for mask in [np.array([x["site"] == s for x in signals])]
        }
        overall = round(float(spearmanr(predicted, target)[0]), 3)
        result["spearman"][name] = {"overall": overall, "within_site": within}
        print(f"{name:34s} Spearman {overall:.3f}  within site {within}")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
