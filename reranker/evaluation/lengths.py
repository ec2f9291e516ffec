"""Choosing a cross-encoder's max length: NDCG and speed per length, and the shortest length
within tolerance of the best."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from reranker.evaluation.speed import MAX_LENGTH, Pair
from reranker.models import (
    load_tokenizer,
)

if TYPE_CHECKING:
    from reranker.rerank.scorer import Scorer

# --------------------------------------------------------------------------------------------
# max length


def parse_lengths(text: str) -> list[int]:
    """``--lengths 128,192,256``: distinct positive integers, in the order given."""
    lengths: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise click.BadParameter(f"{part!r} is not a positive integer", param_hint="--lengths")
        if int(part) not in lengths:
            lengths.append(int(part))
    if not lengths:
        raise click.BadParameter("no length given", param_hint="--lengths")
    return lengths


def pair_lengths(scorer: Scorer, pairs: Sequence[Pair]) -> list[int]:
    """Each pair's token count as the scorer feeds it (truncated at its max length)."""
    tokenizer = load_tokenizer(scorer.model_dir / "tokenizer.json", scorer.max_length)
    return [len(e.ids) for e in tokenizer.encode_batch(list(pairs))]


#: how much NDCG@10 a shorter max length may give up against the reference length
LENGTH_TOLERANCE = 0.005


def choose_max_length(
    ndcg: dict[str, dict[int, float]],
    *,
    reference: int = MAX_LENGTH,
    tolerance: float = LENGTH_TOLERANCE,
) -> int:
    """The shortest measured length whose NDCG@10 on every dataset is at least the
    ``reference`` length's minus ``tolerance``; ``ndcg`` is dataset → length → NDCG@10, and
    every dataset must have the reference and the same lengths."""
    if not ndcg:
        raise ValueError("no measurements")
    lengths = {frozenset(by_length) for by_length in ndcg.values()}
    if len(lengths) != 1:
        raise ValueError("every dataset must be measured at the same lengths")
    measured = sorted(next(iter(lengths)))
    if reference not in measured:
        raise ValueError(f"the reference length {reference} was not measured")
    for length in measured:
        if all(by[length] >= by[reference] - tolerance for by in ndcg.values()):
            return length
    return reference  # unreachable: the reference always qualifies


def length_curve(evals: Sequence[dict[str, Any]], speed: dict[str, Any] | None) -> dict[str, Any]:
    """The card's ``max_length_curve`` from ``reranker eval --modes rerank --max-length N
    --output ...`` results (one per dataset and length, all from one model, variant, split,
    first stage and window) and a ``bench lengths`` result: NDCG@10 (and recall@100, MRR@10)
    per dataset and length, ms per 100 pairs per length, and the chosen length."""
    setups = set()
    ndcg: dict[str, dict[int, float]] = {}
    per_dataset: dict[str, dict[str, dict[str, float]]] = {}
    for run in evals:
        encoder = run.get("cross_encoder")
        if not isinstance(encoder, dict) or "rerank" not in run.get("results", {}):
            raise click.ClickException(
                f"{run.get('dataset')}: not an `eval --modes rerank` result with its cross-encoder "
                "(run it again with this version of `reranker eval --output`)"
            )
        setups.add(
            (
                encoder["model"],
                encoder["version"],
                encoder["variant"],
                encoder["rerank_base"],
                encoder["window"],
                run["split"],
            )
        )
        length = int(encoder["max_length"])
        metrics = run["results"]["rerank"]
        ndcg.setdefault(run["dataset"], {})[length] = float(metrics["ndcg@10"])
        per_dataset.setdefault(run["dataset"], {})[str(length)] = {
            name: round(float(value), 4) for name, value in metrics.items()
        }
    if len(setups) != 1:
        raise click.ClickException(f"the eval results come from different setups: {setups}")
    model, version, variant, base, window, split = next(iter(setups))
    chosen = choose_max_length(ndcg)
    curve: dict[str, Any] = {
        "model": model,
        "model_version": version,
        "variant": variant,
        "split": split,
        "first_stage": f"{base} top-{window}",
        "datasets": {
            name: dict(sorted(rows.items(), key=lambda kv: int(kv[0])))
            for name, rows in per_dataset.items()
        },
        "rule": f"the shortest length whose NDCG@10 on every dataset is within "
        f"{LENGTH_TOLERANCE} of {MAX_LENGTH}'s",
        "chosen": chosen,
    }
    if speed is not None:
        curve["speed"] = {
            str(row["max_length"]): {
                "ms_per_100_pairs": round(row["ms"] * 100.0 / speed["pairs"], 1),
                "mean_tokens": row["mean_tokens"],
                "pairs_cut": row["truncated_pairs"],
                "ms_vs_256": row.get("ms_vs_256"),
            }
            for row in speed["results"]
        }
        curve["speed_setup"] = (
            f"{speed['pairs']} SciFact pairs, {speed['variant']}, {speed['threads']} threads, "
            f"median of {speed['repeats']} interleaved repeats, load average "
            f"{speed['machine']['load_average_before']} → {speed['machine']['load_average_after']}"
        )
    return curve
