"""Diversity's price and gain on judged queries: NDCG@10 and the top 10's intra-list similarity
(ILS@10) against MMR's λ, from one reranking pass per query (each λ only reorders the same
scored window, so the whole curve costs one evaluation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from reranker.corpus import Qrels
from reranker.metrics import score_run
from reranker.rerank.diversity import Diversity, diversify, intra_list_similarity
from reranker.rerank.pipeline import RankedHit

#: how deep a list's redundancy is measured (the page a user reads)
ILS_DEPTH = 10


def top_redundancy(hits: Sequence[RankedHit], depth: int = ILS_DEPTH) -> float:
    """ILS of the top ``depth`` hits that carry a vector (0.0 when fewer than two do)."""
    vectors = [h.vector for h in hits[:depth] if h.vector]
    return intra_list_similarity(np.array(vectors)) if len(vectors) > 1 else 0.0


@dataclass(frozen=True)
class CurvePoint:
    lam: float
    duplicate_threshold: float | None
    ndcg_at_10: float
    ils_at_10: float
    collapsed: float
    """Hits collapsed as near-duplicates per query (mean)."""

    def as_json(self) -> dict[str, float | None]:
        return {
            "lambda": self.lam,
            "duplicate_threshold": self.duplicate_threshold,
            "ndcg@10": self.ndcg_at_10,
            "ils@10": self.ils_at_10,
            "collapsed_per_query": self.collapsed,
        }


def curve_point(
    windows: Mapping[str, Sequence[RankedHit]], qrels: Qrels, diversity: Diversity
) -> CurvePoint:
    """NDCG@10 and mean ILS@10 of every query's reranked window diversified by
    ``diversity`` (the windows themselves are left as they are)."""
    run: dict[str, dict[str, float]] = {}
    redundancy = []
    collapsed = 0
    for query_id, hits in windows.items():
        ordered = diversify([replace(h) for h in hits], diversity, explain=True) if hits else []
        run[query_id] = {h.id: h.score for h in ordered} or {"__no_hit__": 0.0}
        redundancy.append(top_redundancy(ordered))
        collapsed += sum(1 for h in ordered if h.diversity and "duplicate_of" in h.diversity)
    return CurvePoint(
        lam=diversity.lam,
        duplicate_threshold=diversity.duplicate_threshold,
        ndcg_at_10=score_run(run, qrels)["ndcg@10"],
        ils_at_10=float(np.mean(redundancy)) if redundancy else 0.0,
        collapsed=collapsed / max(len(windows), 1),
    )
