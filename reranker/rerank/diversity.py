"""Diversity after reranking, with the index's own embeddings: the page chosen by swaps (the
default) or maximal marginal relevance (MMR) over the window.

The swap method (``method="swap"``) treats the first page (the top ``PAGE`` hits) as a
whole: it trades ``λ · expected DCG@10 − (1 − λ) · ILS@10``, the page's expected gain against
its redundancy (the mean cosine over its pairs, what ``ILS@10`` measures), and makes at most
``SWAPS`` exchanges of a hit on the page for one below it, each the one that raises that
value most, none that lowers it. The expected gain needs each hit's chance of being relevant:
a logistic model of its rank, its score's place among the top ``SCORED_DEPTH`` scores (the
cross-encoder's, where a cascade scores only those) and its cosine to the top hit (the
documents relevant to a query resemble one another), and a falling prior by rank below
them, both fitted on the dev queries of SciFact and Stack Exchange with the shipped model
(docs/experiments/diversity.md). A hit the model is sure of is rarely worth exchanging; an
unsure hit much like the rest of the page is. Swapped-in hits take the page's place their
chance gives them; the rest of the window keeps its order below the page. ``λ = 1`` keeps
the reranked order.

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
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from reranker.errors import SearchError

Method = Literal["swap", "mmr"]
METHODS: tuple[Method, ...] = ("swap", "mmr")
#: the method when none is named, and each method's λ when none is given: chosen on the dev
#: queries of SciFact and Stack Exchange (docs/experiments/diversity.md)
DEFAULT_METHOD: Method = "swap"
DEFAULT_LAMBDAS: dict[Method, float] = {"swap": 0.86, "mmr": 0.85}
DEFAULT_LAMBDA = DEFAULT_LAMBDAS[DEFAULT_METHOD]

#: the page the swap method diversifies, and at most how many exchanges it makes
PAGE = 10
SWAPS = 2
#: the swap method's chance of relevance: over the top SCORED_DEPTH hits, a logistic model
#: of (log rank, score − the top score, the score's z within those hits, the cosine to the
#: top hit, 1); below them a prior a · rank^−b. Fitted on SciFact's and Stack Exchange's dev
#: windows of the shipped model (hybrid top 100, cascade 20): the logistic by 20,000 steps
#: of gradient descent at rate 0.1 from zero, the prior by maximum likelihood
#: (docs/experiments/diversity.md).
SCORED_DEPTH = 20
RELEVANCE_COEFFICIENTS = (0.179, 1.654, 1.072, 1.454, -3.620)
RANK_PRIOR = (0.630, 1.475)


@dataclass(frozen=True)
class Diversity:
    """How to diversify: ``lam`` trades relevance (1.0) against novelty (0.0);
    ``duplicate_threshold`` (a cosine in (0, 1]) collapses near-duplicates, ``None`` = never."""

    lam: float = 1.0
    duplicate_threshold: float | None = None
    method: Method = DEFAULT_METHOD

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SearchError(
                f"diversity method must be one of {', '.join(METHODS)}, got {self.method!r}"[:200]
            )
        if not 0.0 <= self.lam <= 1.0:
            raise SearchError(f"diversity lambda must be between 0 and 1, got {self.lam}")
        threshold = self.duplicate_threshold
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise SearchError(
                f"the duplicate threshold is a cosine in (0, 1], got {self.duplicate_threshold}"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "lambda": self.lam,
            "duplicate_threshold": self.duplicate_threshold,
        }


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
    """The value the hit is ordered by (its MMR value; with swaps, its place's value)."""
    duplicate_of: int | None = None
    swapped_in: bool | None = None
    """With swaps: whether it came onto the page from below (``None`` with MMR)."""

    def to_dict(self) -> dict[str, Any]:
        why: dict[str, Any] = {
            "relevance": self.relevance,
            "redundancy": self.redundancy,
            "penalty": self.penalty,
        }
        if self.swapped_in is None:
            why["mmr"] = self.mmr
        else:
            why["swapped_in"] = self.swapped_in
        return why


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


def relevance_chances(scores: Sequence[float], to_top: np.ndarray) -> np.ndarray:
    """Each hit's chance of being relevant, for ``scores`` in ranked order and ``to_top``
    each hit's cosine to the first (see the module's doc: the logistic model over the top
    ``SCORED_DEPTH``, the rank prior below). The scores are min-max scaled over the window
    first, so the model's own scale does not matter."""
    values = scaled(scores) if len(scores) else np.zeros(0)
    ranks = np.arange(1, len(values) + 1, dtype=np.float64)
    a, b = RANK_PRIOR
    chances: np.ndarray = np.minimum(a * ranks**-b, 1.0)
    head = values[:SCORED_DEPTH]
    if len(head):
        spread = head.std()
        z = (head - head.mean()) / spread if spread > 0 else np.zeros_like(head)
        similar = np.asarray(to_top[: len(head)], dtype=np.float64).copy()
        similar[0] = 1.0  # the top hit is itself, even when it has no vector
        w_rank, w_gap, w_z, w_top, bias = RELEVANCE_COEFFICIENTS
        logit = (
            w_rank * np.log(ranks[: len(head)])
            + w_gap * (head - head[0])
            + w_z * z
            + w_top * similar
            + bias
        )
        chances[: len(head)] = 1.0 / (1.0 + np.exp(-logit))
    return chances


def swap_order(
    scores: Sequence[float], vectors: np.ndarray, diversity: Diversity
) -> list[Placement]:
    """The window with its first page chosen by swaps (see the module's doc): ``scores`` in
    ranked order, one row of ``vectors`` per score. The page's hits that stay keep their
    order, a hit swapped in goes where its chance of relevance places it among them, and the
    window below the page keeps its order (swapped-out hits at their places in it)."""
    n = len(scores)
    if vectors.shape[0] != n:
        raise ValueError(f"{vectors.shape[0]} vectors for {n} scores")
    unit = unit_rows(np.asarray(vectors, dtype=np.float64))
    similarity = unit @ unit.T
    chance = relevance_chances(scores, similarity[0]) if n else np.zeros(0)
    page = list(range(min(PAGE, n)))
    if diversity.lam < 1.0 and n > len(page) >= 2:
        redundancy_weight = (1.0 - diversity.lam) / diversity.lam if diversity.lam > 0 else 1e9
        for _ in range(SWAPS):
            exchange = _best_exchange(page, chance, similarity, redundancy_weight)
            if exchange is None:
                break
            page = exchange
    on_page = set(page)
    order = page + [i for i in range(n) if i not in on_page]
    return _swap_placements(order, len(page), chance, similarity, diversity)


def _mean_pair_similarity(similarity: np.ndarray, items: Sequence[int]) -> float:
    k = len(items)
    if k < 2:
        return 0.0
    block = similarity[np.ix_(items, items)]
    return float((block.sum() - np.trace(block)) / (k * (k - 1)))


def _best_exchange(
    page: list[int], chance: np.ndarray, similarity: np.ndarray, weight: float
) -> list[int] | None:
    """The page after the one exchange (a hit on it for one below) that raises its value
    most, ``None`` when none raises it. Only trades count: an exchange that would raise the
    page's expected gain is not made, because the reranked order, not the chances, says what
    is more relevant (chances that disagree with it cost NDCG on dev). Vectorised over the
    hits below for each hit on it."""
    k = len(page)
    on_page = set(page)
    below = np.array([i for i in range(len(chance)) if i not in on_page])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    block = similarity[np.ix_(page, page)]
    pair_sum = (block.sum() - np.trace(block)) / 2.0
    pair_count = k * (k - 1) / 2.0
    current_gain = float(chance[page] @ discounts)
    current = current_gain - weight * pair_sum / pair_count
    best: tuple[float, list[int]] | None = None
    for j in range(k):
        rest = page[:j] + page[j + 1 :]
        p_rest = chance[rest]
        # the newcomer's place: after every hit left on the page at least as likely
        place = (p_rest[None, :] >= chance[below][:, None]).sum(axis=1)
        before = np.concatenate(([0.0], np.cumsum(p_rest * discounts[: k - 1])))
        after = np.concatenate((np.cumsum((p_rest * discounts[1:])[::-1])[::-1], [0.0]))
        gain = before[place] + chance[below] * discounts[place] + after[place]
        pairs = (
            pair_sum
            - (block[j].sum() - block[j, j])
            + similarity[np.ix_(below, np.asarray(rest))].sum(1)
        )
        value = gain - weight * pairs / pair_count
        value[gain > current_gain + 1e-12] = -np.inf
        top = int(np.argmax(value))
        if value[top] > current + 1e-12 and (best is None or value[top] > best[0]):
            newcomer = int(below[top])
            cut = int(place[top])
            best = (float(value[top]), [*rest[:cut], newcomer, *rest[cut:]])
    return None if best is None else best[1]


def _swap_placements(
    order: list[int],
    page_size: int,
    chance: np.ndarray,
    similarity: np.ndarray,
    diversity: Diversity,
) -> list[Placement]:
    """Placements in ``order``: each page hit's redundancy is its mean cosine to the rest of
    the page, each hit below it its mean cosine to the page; values fall strictly down the
    list (the chances, each capped just below the one above), so scores keep the order."""
    page = order[:page_size]
    values = chance[order].copy()
    for place in range(1, len(values)):  # strictly falling: equal scores would let a reader
        values[place] = min(values[place], values[place - 1] - 1e-6)  # re-sort ties by id
    placements = []
    for place, i in enumerate(order):
        others = [j for j in page if j != i]
        redundancy = float(similarity[i, others].mean()) if others else 0.0
        placements.append(
            Placement(
                position=i,
                relevance=float(chance[i]),
                redundancy=redundancy,
                penalty=(1.0 - diversity.lam) * redundancy,
                mmr=float(values[place]),
                swapped_in=place < page_size and i >= PAGE,  # it was below the page
            )
        )
    return _collapsed(placements, similarity, diversity.duplicate_threshold)


def _collapsed(
    placements: list[Placement], similarity: np.ndarray, threshold: float | None
) -> list[Placement]:
    """With a duplicate threshold: each hit whose cosine to a kept hit above it reaches the
    threshold goes below every kept hit, in its order."""
    if threshold is None:
        return placements
    kept: list[Placement] = []
    copies: list[Placement] = []
    kept_rows: list[int] = []
    for placement in placements:
        close = np.flatnonzero(similarity[placement.position, kept_rows] >= threshold)
        if len(close):
            copies.append(replace(placement, duplicate_of=kept_rows[int(close[0])]))
        else:
            kept.append(placement)
            kept_rows.append(placement.position)
    return kept + copies


def intra_list_similarity(vectors: np.ndarray) -> float:
    """The mean cosine over distinct pairs of ``vectors`` (a list's redundancy; 0.0 for
    fewer than two)."""
    unit = unit_rows(np.asarray(vectors, dtype=np.float64))
    return _mean_pair_similarity(unit @ unit.T, range(vectors.shape[0]))


class Diversifiable(Protocol):
    """A ranked hit as :func:`diversify` reads and updates it."""

    id: str
    score: float
    vector: list[float] | None
    diversity: dict[str, Any] | None


H = TypeVar("H", bound=Diversifiable)


def diversify(hits: Sequence[H], diversity: Diversity, *, explain: bool = False) -> list[H]:
    """``hits`` (ranked, with their stored vectors) in the order ``diversity`` asks for. Each
    hit's ``score`` becomes the value it is ordered by (its MMR value; with swaps, its chance
    of relevance capped by those above), so scores still fall down the list (collapsed
    duplicates below the lowest of the rest); with ``explain`` its ``diversity`` says why
    (:class:`Placement`). At λ = 1 without a duplicate threshold the order and the scores are
    kept (so a second pass at another λ reads the reranked scores). A hit without a vector
    is similar to nothing."""
    if not hits:
        return []
    dims = next((len(h.vector) for h in hits if h.vector), 0)
    if dims == 0:
        raise SearchError("diversity needs the documents' embeddings; none was found")
    vectors = np.array([h.vector if h.vector else [0.0] * dims for h in hits])
    order = swap_order if diversity.method == "swap" else mmr_order
    placements = order([h.score for h in hits], vectors, diversity)
    keep_scores = diversity.lam == 1.0 and diversity.duplicate_threshold is None
    floor = min((p.mmr for p in placements if p.duplicate_of is None), default=0.0)
    ordered = []
    below = 0
    for placement in placements:
        hit = hits[placement.position]
        if placement.duplicate_of is not None:
            below += 1
            hit.score = floor - below
        elif not keep_scores:
            hit.score = placement.mmr
        if explain:
            why = placement.to_dict()
            if placement.duplicate_of is not None:
                why["duplicate_of"] = hits[placement.duplicate_of].id
            hit.diversity = why
        ordered.append(hit)
    return ordered
