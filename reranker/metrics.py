"""Ranking metrics, computed in one place, by ``ir_measures``.

A run maps query id → {document id: score}; qrels map query id → {document id: grade}. Every
figure this package reports (evaluation, training's dev checks, judgments' agreement) comes
from here.
"""

from __future__ import annotations

from collections.abc import Mapping

import ir_measures
from ir_measures import RR, R, nDCG

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

#: what ``reranker eval`` reports, by the names its JSON uses
MEASURES = {"ndcg@10": nDCG @ 10, "mrr@10": RR @ 10, "recall@100": R @ 100}


def score_run(run: Run, qrels: Qrels) -> dict[str, float]:
    """:data:`MEASURES` of ``run``, averaged over its queries."""
    metrics = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, run)
    return {name: float(metrics[measure]) for name, measure in MEASURES.items()}


def ranking_metrics(qrels: Qrels, run: Run) -> dict[str, float]:
    """``nDCG@10`` and ``RR@10`` (training's dev checks), keyed by ``ir_measures``' names."""
    values = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10], qrels, run)
    return {str(m): float(v) for m, v in values.items()}


def ndcg_at_10(qrels: Qrels, run: Run) -> float:
    """Mean NDCG@10 of ``run``."""
    return float(ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10])
