"""What ``reranker adapt`` learns and checks from, made from documents alone: pseudo-queries
(a title for its body, a sentence cut out for the rest of its document, a span), hard
negatives from a first-stage window, and the label-free check (the share of held-out
pseudo-queries whose source the hybrid list ranks first, over the corpus with each held-out
source stripped of its query). Pure, apart from the in-process BM25 the check searches with.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from reranker.retrieval.first_stage import Hit, HybridOptions, fuse
from reranker.training.data import BM25

PseudoKind = Literal["title", "sentence", "span"]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


@dataclass(frozen=True)
class PseudoQuery:
    doc_id: str
    query: str
    positive: str
    """The document's text the query was made from (for a sentence: without that sentence)."""
    kind: PseudoKind


def sentences(text: str) -> list[str]:
    """``text`` split after ., ! or ? followed by a capital, a digit or an opening mark."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def pseudo_query(
    doc_id: str,
    title: str,
    text: str,
    rng: random.Random,
    *,
    title_fraction: float = 0.5,
    min_words: int = 4,
    max_words: int = 30,
) -> PseudoQuery | None:
    """One pseudo-query for a document (see the module's doc); ``None`` when it is too short
    to give one (under 12 words of body)."""
    title = " ".join(title.split())
    body = " ".join(text.split())
    words = body.split()
    if len(words) < 12:
        return None
    if title and rng.random() < title_fraction:
        return PseudoQuery(doc_id, title, body, "title")
    parts = sentences(body)
    fitting = [i for i, s in enumerate(parts) if min_words <= len(s.split()) <= max_words]
    if len(parts) >= 2 and fitting:
        cut = rng.choice(fitting)
        rest = " ".join(s for i, s in enumerate(parts) if i != cut)
        return PseudoQuery(doc_id, parts[cut], _titled(title, rest), "sentence")
    length = rng.randint(6, min(14, len(words) // 2))
    start = rng.randrange(0, len(words) - length + 1)
    span = " ".join(words[start : start + length])
    rest = " ".join(words[:start] + words[start + length :])
    return PseudoQuery(doc_id, span, _titled(title, rest), "span")


def _titled(title: str, body: str) -> str:
    return f"{title} {body}" if title else body


def hard_negatives(window: Sequence[str], source: str, depth: int) -> list[str]:
    """The ``window``'s doc ids above ``depth`` other than ``source``, in order."""
    return [d for d in window[:depth] if d != source]


def top1_rate(ranked: dict[str, list[str]], sources: dict[str, str]) -> float:
    """The fraction of pseudo-queries (id → ranked doc ids) whose source ranks first."""
    if not ranked:
        return 0.0
    return sum(1 for q, ids in ranked.items() if ids and ids[0] == sources[q]) / len(ranked)


def split_held_out(
    queries: Sequence[PseudoQuery], n: int, seed: int
) -> tuple[list[PseudoQuery], list[PseudoQuery]]:
    """(training, held-out): ``n`` pseudo-queries (at most a fifth) drawn by ``seed``."""
    order = list(queries)
    random.Random(seed).shuffle(order)
    n = min(n, len(order) // 5)
    return order[n:], order[:n]


def check_passages(
    ids: Sequence[str], passages: Sequence[str], held_out: Sequence[PseudoQuery]
) -> list[str]:
    """The corpus the check searches: each held-out pseudo-query's source replaced by what is
    left of it without the query (its body for a title, the rest for a sentence), so that no
    source holds its query word for word and the check measures more than exact matching."""
    positives = {pq.doc_id: pq.positive for pq in held_out}
    return [positives.get(doc_id, text) for doc_id, text in zip(ids, passages, strict=True)]


@dataclass
class PseudoQueryCheck:
    """The held-out pseudo-queries, their BM25 windows over the check's corpus, and which
    rows of the corpus are held-out sources."""

    queries: list[PseudoQuery]
    ids: list[str]
    passages: list[str]
    lexical: dict[str, list[Hit]]
    rows: list[int]

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        passages: Sequence[str],
        held_out: list[PseudoQuery],
        depth: int,
    ) -> PseudoQueryCheck:
        corpus = check_passages(ids, passages, held_out)
        bm25 = BM25(corpus)
        lexical = {
            pq.doc_id: [Hit(ids[i], s) for i, s in bm25.top_k(pq.query, depth)] for pq in held_out
        }
        row = {doc_id: i for i, doc_id in enumerate(ids)}
        return cls(held_out, list(ids), corpus, lexical, [row[pq.doc_id] for pq in held_out])

    def score(
        self, query_vectors: np.ndarray, doc_vectors: np.ndarray, hybrid: HybridOptions, depth: int
    ) -> float:
        """Top-1 rate of the held-out pseudo-queries' sources in the hybrid list."""
        ranked: dict[str, list[str]] = {}
        for pq, vector in zip(self.queries, query_vectors, strict=True):
            cosines = doc_vectors @ vector
            top = np.argsort(-cosines, kind="stable")[:depth]
            dense = [Hit(self.ids[i], float(cosines[i])) for i in top]
            fused = fuse(self.lexical[pq.doc_id], dense, hybrid, depth)
            ranked[pq.doc_id] = [h.id for h in fused]
        return round(top1_rate(ranked, {pq.doc_id: pq.doc_id for pq in self.queries}), 4)
