"""First-stage fusion: reciprocal rank fusion and normalised linear fusion.

Pure functions over ranked lists; no Elasticsearch here. A *run* is a mapping of document id
to score, ranked by score descending.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

Normalization = Literal["minmax", "zscore", "l2"]
NORMALIZATIONS: tuple[Normalization, ...] = ("minmax", "zscore", "l2")


def ranked(run: Mapping[str, float]) -> list[str]:
    """Ids by descending score, ties broken by id for determinism."""
    return sorted(run, key=lambda doc_id: (-run[doc_id], doc_id))


def rrf(
    runs: Sequence[Mapping[str, float]],
    *,
    rank_constant: int = 60,
    weights: Sequence[float] | None = None,
) -> dict[str, float]:
    """Reciprocal rank fusion: ``sum_i w_i / (rank_constant + rank_i(d))``, ranks from 1."""
    if rank_constant < 1:
        raise ValueError("rank_constant must be at least 1")
    weights = _weights(weights, len(runs))
    fused: dict[str, float] = {}
    for run, weight in zip(runs, weights, strict=True):
        for rank, doc_id in enumerate(ranked(run), start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + weight / (rank_constant + rank)
    return fused


def normalize(scores: np.ndarray, method: Normalization) -> np.ndarray:
    """Scores of one run on a common scale.

    ``minmax`` → [0, 1] (all equal → 1); ``zscore`` → mean 0, sd 1 (sd 0 → 0);
    ``l2`` → unit Euclidean norm (all zero → 0).
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return values
    if method == "minmax":
        low, high = float(values.min()), float(values.max())
        return np.ones_like(values) if high == low else (values - low) / (high - low)
    if method == "zscore":
        sd = float(values.std())
        return np.zeros_like(values) if sd == 0 else (values - values.mean()) / sd
    if method == "l2":
        norm = float(np.linalg.norm(values))
        return np.zeros_like(values) if norm == 0 else values / norm
    raise ValueError(f"unknown normalization {method!r}; use one of {', '.join(NORMALIZATIONS)}")


def linear(
    runs: Sequence[Mapping[str, float]],
    *,
    weights: Sequence[float] | None = None,
    normalization: Normalization = "minmax",
) -> dict[str, float]:
    """Weighted sum of normalised scores. A document missing from a run gets that run's
    lowest normalised score, so being absent never beats being retrieved."""
    weights = _weights(weights, len(runs))
    fused: dict[str, float] = {}
    normalised_runs: list[dict[str, float]] = []
    for run in runs:
        ids = list(run)
        values = normalize(np.array([run[i] for i in ids], dtype=np.float64), normalization)
        normalised_runs.append(dict(zip(ids, values.tolist(), strict=True)))
    all_ids = {doc_id for run in runs for doc_id in run}
    for norm_run, weight in zip(normalised_runs, weights, strict=True):
        floor = min(norm_run.values()) if norm_run else 0.0
        for doc_id in all_ids:
            fused[doc_id] = fused.get(doc_id, 0.0) + weight * norm_run.get(doc_id, floor)
    return fused


def _weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights given for {count} runs")
    values = [float(w) for w in weights]
    if any(not np.isfinite(w) or w < 0 for w in values):
        raise ValueError("fusion weights must be finite and non-negative")
    if not any(values):
        raise ValueError("fusion weights are all zero")
    return values
