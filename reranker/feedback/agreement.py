"""How far click judgments agree with editorial qrels: Kendall's τ-b over the pairs both
judged, and the precision of the pairs the clicks judged best (``reranker judgments
--compare``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reranker.corpus import Qrels
from reranker.feedback.judgments import Judgments
from reranker.metrics import ndcg_at_10


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's τ-b of two paired samples (ties corrected); ``None`` when either is
    constant. O(n²) in chunks: fine for the tens of thousands of pairs judged here."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    size = len(a)
    concordant = discordant = ties_a = ties_b = 0.0
    chunk = max(1, 1_000_000 // max(size, 1))
    for start in range(0, size, chunk):
        rows = slice(start, min(start + chunk, size))
        da = np.sign(a[rows, None] - a[None, :])
        db = np.sign(b[rows, None] - b[None, :])
        upper = np.arange(size)[None, :] > np.arange(rows.start, rows.stop)[:, None]
        product = (da * db)[upper]
        concordant += float(np.sum(product > 0))
        discordant += float(np.sum(product < 0))
        ties_a += float(np.sum((da == 0)[upper] & (db != 0)[upper]))
        ties_b += float(np.sum((db == 0)[upper] & (da != 0)[upper]))
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    if denominator == 0:
        return None
    return (concordant - discordant) / denominator


def agreement(judgments: Judgments, truth: Qrels) -> dict[str, Any]:
    """How the click judgments agree with editorial qrels (``truth``; unjudged = grade 0),
    over the judged pairs of queries ``truth`` has."""
    scores: list[float] = []
    grades: list[int] = []
    given: list[int] = []
    per_query_tau: list[float] = []
    top_relevant = 0
    queries = 0
    for query_id, judged in sorted(judgments.scores.items()):
        if query_id not in truth:
            continue
        queries += 1
        docs = sorted(judged)
        q_scores = [judged[d] for d in docs]
        q_truth = [max(0, truth[query_id].get(d, 0)) for d in docs]
        scores.extend(q_scores)
        grades.extend(q_truth)
        given.extend(judgments.qrels[query_id][d] for d in docs)
        tau = kendall_tau_b(q_scores, q_truth)
        if tau is not None:
            per_query_tau.append(tau)
        best = max(range(len(docs)), key=lambda i: (q_scores[i], -i))
        top_relevant += int(q_truth[best] > 0)
    if not scores:
        return {"queries": 0, "pairs": 0}
    order = np.argsort(-np.asarray(scores), kind="stable")
    relevant = np.asarray(grades)[order] > 0
    total_relevant = int(relevant.sum())
    precision_at: dict[str, float] = {}
    for k in (10, 50, 100, 200, 500):
        if k <= len(scores):
            precision_at[str(k)] = round(float(relevant[:k].mean()), 4)
    positive = np.asarray(given) > 0
    truly = np.asarray(grades) > 0
    confusion: dict[str, dict[str, int]] = {}
    for judged_grade, true_grade in zip(given, grades, strict=True):
        row = confusion.setdefault(str(true_grade), {})
        row[str(judged_grade)] = row.get(str(judged_grade), 0) + 1
    global_tau = kendall_tau_b(scores, grades)
    by_grade: dict[int, list[float]] = {}
    for score, true_grade in zip(scores, grades, strict=True):
        by_grade.setdefault(true_grade, []).append(score)
    return {
        "queries": queries,
        "pairs": len(scores),
        "relevant_pairs": total_relevant,
        "kendall_tau_b": None if global_tau is None else round(global_tau, 4),
        "kendall_tau_b_per_query_mean": (
            round(float(np.mean(per_query_tau)), 4) if per_query_tau else None
        ),
        "queries_with_tau": len(per_query_tau),
        "top_pair_precision": precision_at,
        "r_precision": (
            round(float(relevant[:total_relevant].mean()), 4) if total_relevant else None
        ),
        "top1_relevant": round(top_relevant / queries, 4),
        "graded_positive_precision": (
            round(float(truly[positive].mean()), 4) if positive.any() else None
        ),
        "graded_positive_recall": (
            round(float(positive[truly].mean()), 4) if truly.any() else None
        ),
        "exact_grade_agreement": round(float(np.mean(np.asarray(given) == np.asarray(grades))), 4),
        "mean_score_by_true_grade": {
            str(g): round(float(np.mean(v)), 4) for g, v in sorted(by_grade.items())
        },
        "confusion_true_by_judged": confusion,
        **_list_quality(judgments, truth),
    }


def _list_quality(judgments: Judgments, truth: Qrels) -> dict[str, Any]:
    """Per judged query, its documents ranked by click score, scored against ``truth``:
    NDCG@10 (every relevant document of the query counts, shown or not), and the share of the
    queries' relevant pairs that the judgments grade ≥ 1 (recovered)."""
    queries = [q for q in judgments.scores if q in truth]
    if not queries:
        return {}
    relevant = [(q, d) for q in queries for d, g in truth[q].items() if g > 0]
    recovered = sum(judgments.qrels[q].get(d, 0) > 0 for q, d in relevant)
    run = {q: {d: float(s) for d, s in judgments.scores[q].items()} for q in queries}
    qrels = {q: {d: int(g) for d, g in truth[q].items()} for q in queries}
    ndcg = ndcg_at_10(qrels, run)
    return {
        "ndcg@10_of_click_ranked_lists": round(float(ndcg), 4),
        "relevant_pairs_of_judged_queries": len(relevant),
        "relevant_pairs_recovered": round(recovered / len(relevant), 4) if relevant else None,
    }
