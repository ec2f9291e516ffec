"""Would a closed-form popularity head do better than the jointly trained one? (issue 12)

    PYTHONPATH=. .venv/bin/python benchmarks/popularity_head_refit.py [CHECKPOINT]

CHECKPOINT (default runs/mt/mt/last) is a multi-task torch checkpoint. Ridge regressions on
its encoder's mean-pooled output of (own question, answer) for the 2,170 training answers,
against the popularity target, for three ridge strengths. Each is scored by Spearman against
the real Score on the 666 test-judged answers, beside the trained head on the same answers.
The strength is not chosen on held-out data: the three values only show the range.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from popularity_probe import ridge_predict  # benchmarks/, this script's folder
from scipy.stats import spearmanr
from signal_heads import judged_pairs

from reranker.corpus import passage_text
from reranker.training.aware_model import load_aware
from reranker.training.data import _read_jsonl, read_qrels
from reranker.training.heads import document_sources, judged_documents, signal_targets

SE = Path(__file__).resolve().parents[2] / "shared" / "data" / "stackexchange"


def pooled_and_head(
    model: Any, tokenizer: Any, texts: list[tuple[str, str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled encoder output and the trained popularity head, per (query, passage)."""
    vectors, heads = [], []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            chunk = texts[start : start + 32]
            encoded = tokenizer(
                [q for q, _ in chunk],
                [p for _, p in chunk],
                truncation="longest_first",
                max_length=192,
                padding=True,
                return_tensors="pt",
            )
            hidden = model.encoder(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            vectors.append(pooled.numpy())
            heads.append(torch.sigmoid(model.signal_heads["popularity"](pooled)).numpy().ravel())
    return np.vstack(vectors), np.concatenate(heads)


def main() -> None:
    torch.set_num_threads(2)
    model, tokenizer = load_aware(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mt/mt/last"))
    model.eval()
    sources = document_sources(SE)
    queries = {str(r["_id"]): str(r["text"]) for _, r in _read_jsonl(SE / "queries.jsonl")}
    held = judged_documents([read_qrels(SE / "qrels" / f"{s}.tsv") for s in ("dev", "test")])
    targets = signal_targets(SE, ("popularity",), held)
    train, test = judged_pairs(SE, "train"), judged_pairs(SE, "test")

    def texts(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(queries[q], passage_text(sources[d])) for q, d in pairs]

    x_train, _ = pooled_and_head(model, tokenizer, texts(train))
    x_test, head = pooled_and_head(model, tokenizer, texts(test))
    y_train = targets.rows([d for _, d in train])[0][:, 0]
    scores = [float(sources[d]["signals"].get("Score") or 0) for _, d in test]
    truth = np.log1p(np.clip(scores, 0, None))
    result = {"trained_head": round(float(spearmanr(head, truth)[0]), 3)}
    for strength in (1.0, 10.0, 100.0):
        predicted = ridge_predict(x_train, y_train, x_test, strength)
        result[f"ridge_refit_{strength:g}"] = round(float(spearmanr(predicted, truth)[0]), 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
