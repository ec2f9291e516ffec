"""Diversity after reranking: maximal marginal relevance (MMR) over the window, with the
index's own embeddings.

Carbonell and Goldstein's MMR picks, one position at a time, the hit that maximises
``λ · relevance − (1 − λ) · redundancy``, where relevance is the hit's final score (the
cross-encoder's logit or the blend) min-max scaled over the window to [0, 1], and redundancy
its largest cosine similarity to a hit already placed. ``λ = 1`` keeps the reranked order.
Elasticsearch's ``diversify`` retriever does the same over a vector field; here the vectors
are the ones the index already holds (fetched with the candidates, never recomputed).

A near-duplicate threshold optionally collapses copies: a hit whose cosine to a hit placed
before it reaches the threshold goes below every hit that is not such a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from reranker.errors import SearchError

#: λ when diversity is asked for without one (see docs/experiments/diversity.md)
DEFAULT_LAMBDA = 0.85


@dataclass(frozen=True)
class Diversity:
    """How to diversify: ``lam`` trades relevance (1.0) against novelty (0.0);
    ``duplicate_threshold`` (a cosine in (0, 1]) collapses near-duplicates, ``None`` = never."""

    lam: float = 1.0
    duplicate_threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise SearchError(f"diversity lambda must be between 0 and 1, got {self.lam}")
        threshold = self.duplicate_threshold
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise SearchError(
                f"the duplicate threshold is a cosine in (0, 1], got {self.duplicate_threshold}"
            )

    def describe(self) -> dict[str, Any]:
        return {"lambda": self.lam, "duplicate_threshold": self.duplicate_threshold}


@dataclass(frozen=True)
class Placement:
    """One hit's place in the diversified order and why: its scaled relevance, its largest
    cosine to a hit above it (``redundancy``), the penalty that cost it, its MMR value, and
    the position (in the input) of the hit it duplicates, if it was collapsed (which
    :func:`diversify` explains by that hit's id)."""

    position: int
    relevance: float
    redundancy: float
    penalty: float
    mmr: float
    duplicate_of: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "relevance": self.relevance,
            "redundancy": self.redundancy,
            "penalty": self.penalty,
            "mmr": self.mmr,
        }


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero: similar to nothing)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return unit


def scaled(scores: Sequence[float]) -> np.ndarray:
    """Scores min-max scaled to [0, 1] over the window (all equal: all 1)."""
    values = np.asarray(scores, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high - low <= 0.0:
        return np.ones_like(values)
    return (values - low) / (high - low)


def mmr_order(
    scores: Sequence[float], vectors: np.ndarray, diversity: Diversity
) -> list[Placement]:
    """The window in MMR order (see the module's doc): ``scores`` in any order, one row of
    ``vectors`` per score. Ties go to the higher score, then the earlier position; the MMR
    values of the placements never increase down the list."""
    n = len(scores)
    if n == 0:
        return []
    if vectors.shape[0] != n:
        raise ValueError(f"{vectors.shape[0]} vectors for {n} scores")
    relevance = scaled(scores)
    similarity = unit_rows(np.asarray(vectors, dtype=np.float64))
    similarity = similarity @ similarity.T
    redundancy = np.zeros(n)
    duplicate_of = np.full(n, -1)
    left = np.ones(n, dtype=bool)
    tie_break = -np.asarray(scores, dtype=np.float64)
    placed: list[Placement] = []
    collapsed: list[Placement] = []
    lam = diversity.lam
    for _ in range(n):
        mmr = lam * relevance - (1.0 - lam) * redundancy
        candidates = np.flatnonzero(left)
        best = candidates[np.lexsort((candidates, tie_break[candidates], -mmr[candidates]))[0]]
        left[best] = False
        placement = Placement(
            position=int(best),
            relevance=float(relevance[best]),
            redundancy=float(redundancy[best]),
            penalty=float((1.0 - lam) * redundancy[best]),
            mmr=float(mmr[best]),
            duplicate_of=int(duplicate_of[best]) if duplicate_of[best] >= 0 else None,
        )
        (collapsed if placement.duplicate_of is not None else placed).append(placement)
        if placement.duplicate_of is None:
            threshold = diversity.duplicate_threshold
            if threshold is not None:
                duplicate_of[left & (duplicate_of < 0) & (similarity[best] >= threshold)] = best
            redundancy = np.maximum(redundancy, similarity[best])
    return placed + collapsed


def intra_list_similarity(vectors: np.ndarray) -> float:
    """The mean cosine over distinct pairs of ``vectors`` (a list's redundancy; 0.0 for
    fewer than two)."""
    n = vectors.shape[0]
    if n < 2:
        return 0.0
    unit = unit_rows(np.asarray(vectors, dtype=np.float64))
    similarity = unit @ unit.T
    return float((similarity.sum() - np.trace(similarity)) / (n * (n - 1)))


class Diversifiable(Protocol):
    """A ranked hit as :func:`diversify` reads and updates it."""

    id: str
    score: float
    vector: list[float] | None
    diversity: dict[str, Any] | None


H = TypeVar("H", bound=Diversifiable)


def diversify(hits: Sequence[H], diversity: Diversity, *, explain: bool = False) -> list[H]:
    """``hits`` (ranked, with their stored vectors) in MMR order. Each hit's ``score`` becomes
    its MMR value, so scores still fall down the list (collapsed duplicates below the lowest
    of the rest); with ``explain`` its ``diversity`` says why (:class:`Placement`). A hit
    without a vector is similar to nothing."""
    if not hits:
        return []
    dims = next((len(h.vector) for h in hits if h.vector), 0)
    if dims == 0:
        raise SearchError("diversity needs the documents' embeddings; none was found")
    vectors = np.array([h.vector if h.vector else [0.0] * dims for h in hits])
    placements = mmr_order([h.score for h in hits], vectors, diversity)
    floor = min((p.mmr for p in placements if p.duplicate_of is None), default=0.0)
    ordered = []
    below = 0
    for placement in placements:
        hit = hits[placement.position]
        if placement.duplicate_of is None:
            hit.score = placement.mmr
        else:
            below += 1
            hit.score = floor - below
        if explain:
            why = placement.to_dict()
            if placement.duplicate_of is not None:
                why["duplicate_of"] = hits[placement.duplicate_of].id
            hit.diversity = why
        ordered.append(hit)
    return ordered
