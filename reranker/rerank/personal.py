"""Personalisation after reranking: a user's profile (the decayed mean of the embeddings of
the documents they clicked, :mod:`reranker.es.profiles`) pulls the documents like those
towards the top.

Each hit gets a ``personal`` feature, the cosine between its stored embedding and the
profile, and its final score becomes ``relevance + weight · personal``, where relevance is
the hit's score (the cross-encoder's logit or the blend) min-max scaled over the window to
[0, 1], as diversity scales it. A user without a profile gets no personal stage at all: the
unpersonalised order and scores, exactly. The weight is learned on clicks (an A/B/n test
over weights, docs/experiments/personalisation.md), or set per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import numpy as np

from reranker.errors import SearchError
from reranker.es.profiles import profile_from_document
from reranker.rerank.diversity import scaled, unit_rows

#: the personal feature's weight when a request names none (docs/experiments/personalisation.md:
#: learned by an A/B test on simulated users' clicks: 2 on SciFact, 1 on Stack Exchange)
DEFAULT_WEIGHT = 1.0
#: the largest weight a request may ask for (the relevance column spans [0, 1])
MAX_WEIGHT = 100.0


@dataclass(frozen=True)
class Personalization:
    """One user's profile as a search reads it: its direction (``vector``), how many clicks
    built it, and the weight of the personal feature."""

    vector: tuple[float, ...]
    weight: float = DEFAULT_WEIGHT
    clicks: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= MAX_WEIGHT:
            raise SearchError(f"the personal weight must be between 0 and {MAX_WEIGHT:g}")
        if not self.vector or not np.isfinite(np.asarray(self.vector)).all():
            raise SearchError("a profile vector must be non-empty and finite")

    def describe(self) -> dict[str, Any]:
        return {"weight": self.weight, "profile_clicks": self.clicks}


def personalization_of(
    source: Mapping[str, Any],
    key: tuple[str | None, str],
    weight: float,
    retention_days: float,
    now: datetime | None = None,
) -> Personalization | None:
    """What a stored profile document (``_source``) gives the search of the user ``key``
    ((proxy client, user)): ``None`` when it is not theirs, holds nothing, or was last
    updated more than ``retention_days`` ago."""
    profile = profile_from_document(source)
    owner, user = key
    if profile is None or (profile.owner, profile.subject) != (owner or "", user):
        return None
    age_days = ((now or datetime.now(UTC)) - profile.as_of).total_seconds() / 86_400
    direction = profile.direction()
    if direction is None or age_days > retention_days:
        return None
    return Personalization(direction, weight, profile.clicks)


class Personalizable(Protocol):
    """A ranked hit as :func:`personalize` reads and updates it."""

    score: float
    vector: list[float] | None
    personal: dict[str, float] | None


H = TypeVar("H", bound=Personalizable)


def similarities(profile: Sequence[float], vectors: Sequence[Sequence[float] | None]) -> np.ndarray:
    """The cosine of each vector with ``profile`` (a missing or zero vector: 0.0)."""
    dims = len(profile)
    rows = np.array(
        [v if v is not None and len(v) == dims else [0.0] * dims for v in vectors],
        dtype=np.float64,
    ).reshape(len(vectors), dims)
    unit = unit_rows(np.asarray([profile], dtype=np.float64))[0]
    out: np.ndarray = unit_rows(rows) @ unit
    return out


def personalize(hits: Sequence[H], personal: Personalization, *, explain: bool = False) -> list[H]:
    """``hits`` (ranked, with their stored vectors) reordered by
    ``scaled score + weight · cosine(vector, profile)``; each hit's ``score`` becomes that
    sum, and with ``explain`` its ``personal`` says how (relevance, similarity, weight,
    contribution). Ties keep the input order."""
    if not hits:
        return []
    relevance = scaled([h.score for h in hits])
    similarity = similarities(personal.vector, [h.vector for h in hits])
    final = relevance + personal.weight * similarity
    order = np.lexsort((np.arange(len(hits)), -final))
    out = []
    for i in order.tolist():
        hit = hits[i]
        hit.score = float(final[i])
        if explain:
            hit.personal = {
                "relevance": float(relevance[i]),
                "similarity": float(similarity[i]),
                "weight": personal.weight,
                "contribution": float(personal.weight * similarity[i]),
            }
        out.append(hit)
    return out
