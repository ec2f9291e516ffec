"""Hybrid candidate mining: for each judged query, the first stage's window as serving builds
it (BM25 and dense top-k fused by the same functions), and listwise groups drawn from it."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reranker.corpus import passage_text, read_jsonl
from reranker.rerank.features import (
    features_from_stage_scores,
)
from reranker.retrieval.first_stage import Hit, HybridOptions, fuse
from reranker.training.data import BM25
from reranker.training.heads import (
    SignalTargets,
)

# --------------------------------------------------------------------------------------------
# hybrid candidates, mined in process


@dataclass
class QueryWindow:
    """One query's candidate window in first-stage order, with its features and labels."""

    query_id: str
    query: str
    doc_ids: list[str]
    features: np.ndarray
    grades: list[int]


@dataclass
class HybridData:
    """A BEIR dataset's windows for some queries, plus the first stage's own metrics."""

    name: str
    passages: dict[str, str]
    windows: list[QueryWindow]
    qrels: dict[str, dict[str, int]]
    recall: float
    """Fraction of judged-relevant documents inside the window."""
    targets: SignalTargets | None = None
    """Signal heads' targets per document (multi-task training only)."""


def _embed(texts: Sequence[str], embedder: Any, cache_dir: Path | None) -> np.ndarray:
    from reranker.retrieval.embed_cache import EmbeddingCache, cache_name, encode_with_cache

    cache = EmbeddingCache(cache_dir, cache_name(embedder)) if cache_dir is not None else None
    try:
        return encode_with_cache(embedder, list(texts), cache)
    finally:
        if cache is not None:
            cache.close()


def mine_hybrid_windows(
    dataset: Path,
    splits: Mapping[str, dict[str, dict[str, int]]],
    *,
    window: int = 100,
    depth: int = 100,
    cache_dir: Path | None = None,
) -> dict[str, HybridData]:
    """Hybrid top-``window`` for each query of each split's qrels (the corpus is read, indexed
    and embedded once): BM25 top-``depth`` and dense top-``depth``, fused and turned into
    features by the same functions serving uses (:func:`~reranker.retrieval.first_stage.fuse`,
    linear
    min-max fusion; :func:`~reranker.rerank.features.features_from_stage_scores`)."""
    from reranker.retrieval.embedder import Embedder

    corpus_rows = {str(row["_id"]): row for _, row in read_jsonl(dataset / "corpus.jsonl")}
    queries = {
        str(row["_id"]): str(row["text"]) for _, row in read_jsonl(dataset / "queries.jsonl")
    }
    doc_ids = list(corpus_rows)
    passages = {d: passage_text(corpus_rows[d]) for d in doc_ids}
    texts = [passages[d] for d in doc_ids]
    bm25 = BM25(texts)
    embedder = Embedder.default()
    doc_vectors = _embed(texts, embedder, cache_dir)
    options = HybridOptions(fusion="linear", depth=depth)
    out: dict[str, HybridData] = {}
    for split, qrels in splits.items():
        qids = [q for q in qrels if q in queries]
        query_vectors = _embed(
            [embedder.query_prefix + queries[q] for q in qids], embedder, cache_dir
        )
        windows = []
        found = total = 0
        for qid, qvec in zip(qids, query_vectors, strict=True):
            lexical = [Hit(doc_ids[i], s) for i, s in bm25.top_k(queries[qid], depth)]
            cosine = doc_vectors @ qvec
            dense = [
                Hit(doc_ids[i], float(cosine[i]))
                for i in np.argsort(-cosine, kind="stable")[:depth]
            ]
            hits = fuse(lexical, dense, options, window)
            features = features_from_stage_scores(
                [h.score for h in hits], [h.stage_scores for h in hits]
            )
            judged = qrels[qid]
            relevant = {d for d, g in judged.items() if g > 0}
            found += len(relevant & {h.id for h in hits})
            total += len(relevant)
            windows.append(
                QueryWindow(
                    query_id=qid,
                    query=queries[qid],
                    doc_ids=[h.id for h in hits],
                    features=features.values,
                    grades=[judged.get(h.id, 0) for h in hits],
                )
            )
        out[split] = HybridData(
            name=dataset.name,
            passages=passages,
            windows=windows,
            qrels={q: qrels[q] for q in qids},
            recall=found / total if total else 0.0,
        )
    return out


@dataclass
class Group:
    query: str
    doc_ids: list[str]
    features: np.ndarray
    """rows in group order; the first member is the positive"""


def listwise_hybrid_groups(
    windows: Sequence[QueryWindow],
    *,
    group_size: int,
    hard: int,
    skip_around: int,
    hard_depth: int,
    seed: int,
) -> list[Group]:
    """Per positive inside its window: the positive, ``hard`` negatives from ranks
    1..``hard_depth`` that are at least ``skip_around + 1`` ranks away from every positive,
    and the rest from deeper in the window."""
    rng = random.Random(seed)
    groups = []
    for w in windows:
        positive_ranks = [r for r, g in enumerate(w.grades) if g > 0]
        if not positive_ranks:
            continue
        negatives = [r for r, g in enumerate(w.grades) if g <= 0]
        near = {
            r
            for p in positive_ranks
            for r in range(p - skip_around, p + skip_around + 1)
            if r not in positive_ranks
        }
        top = [r for r in negatives if r < hard_depth and r not in near]
        deep = [r for r in negatives if r >= hard_depth]
        for p in positive_ranks:
            picked = rng.sample(top, min(hard, len(top)))
            rest = group_size - 1 - len(picked)
            picked += rng.sample(deep, min(rest, len(deep)))
            if len(picked) < group_size - 1:
                spare = [r for r in negatives if r not in picked]
                picked += rng.sample(spare, min(group_size - 1 - len(picked), len(spare)))
            if not picked:
                continue
            rows = [p, *picked]
            groups.append(Group(w.query, [w.doc_ids[r] for r in rows], w.features[rows]))
    return groups
