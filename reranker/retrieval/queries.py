"""First-stage request bodies: BM25 over the text fields, kNN over the embedding."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

TEXT_FIELDS: tuple[str, ...] = ("title", "text")
#: the dense_vector field every index of ours holds (es_mappings/docs.json)
VECTOR_FIELD = "embedding"
#: the second embedder's vectors, where an index has them: not searched (no HNSW graph), read
#: for the reranking window only (:mod:`reranker.rerank.rescore`)
RESCORE_VECTOR_FIELD = "rescore_embedding"


def bm25_query(text: str, fields: Sequence[str] = TEXT_FIELDS) -> dict[str, Any]:
    """Lexical relevance: ``combined_fields``, i.e. BM25F over title and text as one field.

    Measured on SciFact test (NDCG@10, no stemming): combined_fields 0.665, cross_fields
    0.656, best_fields with tie_breaker 0.5 0.651, most_fields 0.634. The fields must share
    an analyser, which es_mappings/docs.json guarantees.
    """
    return {"combined_fields": {"query": text, "fields": list(fields)}}


def knn_clause(
    vector: Sequence[float], k: int, num_candidates: int | None = None
) -> dict[str, Any]:
    """Approximate nearest neighbours on ``embedding`` (HNSW), ``k`` hits."""
    candidates = max(num_candidates or 0, 2 * k, 100)
    return {
        "field": VECTOR_FIELD,
        "query_vector": [float(x) for x in vector],
        "k": k,
        "num_candidates": min(candidates, 10_000),
    }


def vectors_query(
    documents: Iterable[tuple[str | None, str]], fields: Sequence[str] = (VECTOR_FIELD,)
) -> dict[str, Any]:
    """A search body that returns the stored vectors (``fields``) of ``documents`` ((index,
    id) pairs; index ``None`` = whichever index the search targets), and nothing else. The
    vectors come back under ``fields`` as doc values (Elasticsearch leaves them out of
    ``_source`` by default): the same float32 values as the fields API gives, printed at
    float32's length, which halves the answer and the time to fetch 100 of them (SciFact's
    bge vectors: 41 → 18 ms a round trip on this machine)."""
    by_index: dict[str | None, dict[str, None]] = defaultdict(dict)  # ordered, no repeats
    for index, doc_id in documents:
        by_index[index][doc_id] = None
    clauses: list[dict[str, Any]] = []
    for index, ids in by_index.items():
        clause: dict[str, Any] = {"ids": {"values": list(ids)}}
        if index is not None:
            clause = {"bool": {"filter": [{"term": {"_index": index}}, clause]}}
        clauses.append(clause)
    return {
        "query": {"bool": {"should": clauses, "minimum_should_match": 1}},
        "size": sum(len(ids) for ids in by_index.values()),
        "_source": False,
        "docvalue_fields": list(fields),
    }


def read_vectors(response: Any, field: str = VECTOR_FIELD) -> dict[tuple[str, str], list[float]]:
    """(index, id) → stored vector of ``field``, from the answer to :func:`vectors_query`
    (documents without one are left out)."""
    found = {}
    for hit in response["hits"]["hits"]:
        vector = (hit.get("fields") or {}).get(field)
        if isinstance(vector, list) and vector:
            # a dense_vector comes back as a list of numbers (older releases: a list of one)
            values = vector[0] if isinstance(vector[0], list) else vector
            found[(str(hit["_index"]), str(hit["_id"]))] = [float(x) for x in values]
    return found
