"""Scoring pairs with a torch cross-encoder, and its NDCG on a dev set during training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from reranker.batching import head_scores, pad_rows, plan_batches
from reranker.metrics import ranking_metrics
from reranker.training.cross_encoder_config import TrainConfig
from reranker.training.data import (
    DevSet,
    build_dev_set,
)
from reranker.training.toolbox import autocast

Feature = tuple[np.ndarray, np.ndarray | None]


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    passages: Sequence[str],
    max_length: int,
    chunk: int = 2048,
) -> list[Feature]:
    """Tokenise pairs (no padding; the longer side truncated first) into compact arrays."""
    out: list[Feature] = []
    for start in range(0, len(queries), chunk):
        encoded = tokenizer(
            list(queries[start : start + chunk]),
            list(passages[start : start + chunk]),
            truncation="longest_first",
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
        )
        types = encoded.get("token_type_ids")
        for i, ids in enumerate(encoded["input_ids"]):
            out.append(
                (
                    np.asarray(ids, dtype=np.int32),
                    None if types is None else np.asarray(types[i], dtype=np.int8),
                )
            )
    return out


def collate(
    features: Sequence[Feature], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """A batch padded to its longest pair (:func:`~reranker.batching.pad_rows`) as tensors on
    ``device``; token types only where the model has them."""
    arrays = pad_rows(features, pad_id=pad_id)
    if features[0][1] is None:
        del arrays["token_type_ids"]
    return {name: torch.from_numpy(array).to(device) for name, array in arrays.items()}


def score_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    max_length: int,
    batch_size: int = 32,
    bf16: bool = False,
    first_stage: np.ndarray | None = None,
) -> np.ndarray:
    """Relevance logits of ``(query, passage)`` pairs with a torch model (length-sorted
    batches, dynamic padding). Leaves the model in eval mode. ``first_stage`` (one row per
    pair) feeds a first-stage-aware model, which returns its logits as a tensor."""
    device = next(model.parameters()).device
    features = encode_pairs(tokenizer, [q for q, _ in pairs], [p for _, p in pairs], max_length)
    lengths = [len(ids) for ids, _ in features]
    out = np.zeros(len(features), dtype=np.float32)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.train(False)
    with torch.inference_mode():
        for chunk in plan_batches(lengths, batch_size, max_batch_tokens=None):
            batch = collate([features[i] for i in chunk], pad_id, device)
            if first_stage is not None:
                batch["first_stage"] = torch.from_numpy(first_stage[chunk]).to(device)
            with autocast(device, bf16):
                result = model(**batch)
            logits = result if first_stage is not None else result.logits
            out[chunk] = head_scores(logits.float()).cpu().numpy()
    return out


def evaluate_dev(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dev: DevSet,
    *,
    max_length: int,
    batch_size: int = 32,
    bf16: bool = False,
) -> dict[str, float]:
    """Re-rank every dev query's candidates with the model; NDCG@10 and RR@10, and BM25's
    NDCG@10 on the same candidates (``bm25_nDCG@10``)."""
    flat = [
        (qid, doc_id, dev.queries[qid], text)
        for qid, cands in dev.candidates.items()
        for doc_id, text in cands
    ]
    scores = score_pairs(
        model,
        tokenizer,
        [(q, t) for _, _, q, t in flat],
        max_length=max_length,
        batch_size=batch_size,
        bf16=bf16,
    )
    run: dict[str, dict[str, float]] = {}
    for (qid, doc_id, _, _), score in zip(flat, scores, strict=True):
        run.setdefault(qid, {})[doc_id] = float(score)
    metrics = ranking_metrics(dev.qrels, run)
    bm25 = ranking_metrics(dev.qrels, dev.bm25_run)
    metrics["bm25_nDCG@10"] = bm25["nDCG@10"]
    metrics["queries"] = float(len(dev.queries))
    metrics["pairs"] = float(len(flat))
    return metrics


def load_dev_set(config: TrainConfig) -> DevSet | None:
    if config.dev is None:
        return None
    return build_dev_set(
        config.dev,
        negatives=config.dev_negatives,
        max_queries=config.dev_max_queries,
        seed=config.seed,
    )
