"""Per-token int8 (export/rowwise_int8.py) against the shipped per-tensor int8, side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/rowwise_int8.py --per-tensor DIR [--output FILE]

``DIR`` is a model folder with a per-tensor int8 variant: the shipped one as it was before its
conversion, e.g. ``mkdir -p /tmp/pt && cp models/reranker-minilm-l6/{config,tokenizer}.json
/tmp/pt && git show 552f263:models/reranker-minilm-l6/model.int8.onnx > /tmp/pt/model.int8.onnx
&& git show 552f263:models/reranker-minilm-l6/reranker.json > /tmp/pt/reranker.json``.
Converts a temporary copy of it (``export.rowwise_int8.convert_folder``), then, with the same
Scorer settings for both:

- batch spread: 5 SciFact pairs, each scored alone and in 20 random batches of 16 (random
  batchmates, some truncated); the largest difference of a pair's logit across them;
- agreement: Pearson correlation and mean absolute difference of the two models' logits on
  100 SciFact pairs of one query;
- speed: the 100 pairs, the two models interleaved, 5 repeats each; the ratio of the means.

Quality on a full test split is ``reranker eval`` with ``--model`` the rewritten folder
(``benchmarks/results/rowwise-int8-scifact.json`` says how it was run).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.rowwise_int8 import convert_folder
from reranker.rerank.scorer import Scorer

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
QUERY = "vitamin D deficiency and multiple sclerosis risk"


def rewritten_copy(per_tensor: Path, folder: Path) -> Path:
    target = folder / "reranker-minilm-l6-rowwise"
    shutil.copytree(per_tensor, target)
    convert_folder(target)
    return target


def batch_spread(scorer: Scorer, pairs: list[tuple[str, str]], texts: list[str]) -> float:
    rng = random.Random(0)
    worst = 0.0
    for target in pairs[:5]:
        seen = [float(scorer.score([target])[0])]
        for _ in range(20):
            mates = [
                (rng.choice(["x", QUERY, "bone density"]), t[: rng.randint(5, 2000)])
                for t in rng.sample(texts, 15)
            ]
            batch = [target, *mates]
            rng.shuffle(batch)
            seen.append(float(scorer.score(batch)[batch.index(target)]))
        worst = max(worst, max(seen) - min(seen))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-tensor", type=Path, required=True)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    with CORPUS.open(encoding="utf-8") as lines:
        docs = [json.loads(line) for line, _ in zip(lines, range(400), strict=False)]
    texts = [f"{d.get('title', '')} {d['text']}".strip() for d in docs]
    pairs = [(QUERY, t) for t in texts[:100]]
    with tempfile.TemporaryDirectory() as work:
        models = {
            "per_tensor": Scorer(args.per_tensor, variant="int8"),
            "per_token": Scorer(rewritten_copy(args.per_tensor, Path(work)), variant="int8"),
        }
        for scorer in models.values():
            scorer.warmup()
        result: dict[str, Any] = {
            "batch_spread": {k: batch_spread(s, pairs, texts[100:]) for k, s in models.items()}
        }
        a, b = (models[k].score(pairs) for k in ("per_tensor", "per_token"))
        result["agreement"] = {
            "pearson": float(np.corrcoef(a, b)[0, 1]),
            "mean_abs_diff": float(np.abs(a - b).mean()),
        }
        seconds = {k: 0.0 for k in models}
        for _ in range(5):
            for name, scorer in models.items():
                started = time.perf_counter()
                scorer.score(pairs)
                seconds[name] += (time.perf_counter() - started) / 5
        result["speed"] = {
            "ms_per_100_pairs": {k: round(v * 1000, 1) for k, v in seconds.items()},
            "per_token_over_per_tensor": round(seconds["per_token"] / seconds["per_tensor"], 3),
        }
    print(json.dumps(result, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
