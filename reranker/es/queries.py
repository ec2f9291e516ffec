"""First-stage request bodies: BM25 over the text fields, kNN over the embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TEXT_FIELDS: tuple[str, ...] = ("title", "text")


def bm25_query(text: str, fields: Sequence[str] = TEXT_FIELDS) -> dict[str, Any]:
    """Lexical relevance: ``multi_match`` summing the per-field BM25 scores.

    ``most_fields`` scores a document by every field that matches, which is what a
    title + body corpus wants (BEIR's Elasticsearch baseline indexes both fields too).
    """
    return {"multi_match": {"query": text, "fields": list(fields), "type": "most_fields"}}


def knn_clause(
    vector: Sequence[float], k: int, num_candidates: int | None = None
) -> dict[str, Any]:
    """Approximate nearest neighbours on ``embedding`` (HNSW), ``k`` hits."""
    candidates = max(num_candidates or 0, 2 * k, 100)
    return {
        "field": "embedding",
        "query_vector": [float(x) for x in vector],
        "k": k,
        "num_candidates": min(candidates, 10_000),
    }
