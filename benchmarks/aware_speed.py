"""Side-by-side scoring speed of two exported cross-encoders (same pairs, interleaved repeats).

    python benchmarks/aware_speed.py models/reranker-minilm-l6 models/reranker-minilm-l6-aware

100 real SciFact pairs (one test claim against the first 100 abstracts), int8, 2 threads,
batches as the Scorer makes them; a first-stage-aware model gets random window features.
Prints the median seconds per 100 pairs of each model and their ratio.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from reranker.rerank.scorer import Scorer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def main(first: str, second: str, repeats: int = 7) -> None:
    query = json.loads((DATA / "queries.jsonl").open(encoding="utf-8").readline())["text"]
    docs = []
    with (DATA / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            docs.append(f"{row.get('title', '')} {row['text']}".strip())
            if len(docs) == 100:
                break
    pairs = [(query, d) for d in docs]
    scorers = [Scorer(Path(m), variant="int8", threads=2) for m in (first, second)]
    features = np.random.default_rng(0).random((len(pairs), 3), dtype=np.float32)
    times: list[list[float]] = [[], []]
    for s in scorers:  # warm up
        s.score(pairs, features=features if s.feature_names else None)
    for _ in range(repeats):
        for i, s in enumerate(scorers):
            began = time.perf_counter()
            s.score(pairs, features=features if s.feature_names else None)
            times[i].append(time.perf_counter() - began)
    medians = [statistics.median(t) for t in times]
    result = {
        "pairs": len(pairs),
        "repeats": repeats,
        "median_s": {m: round(v, 4) for m, v in zip((first, second), medians, strict=True)},
        "second_over_first": round(medians[1] / medians[0], 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
