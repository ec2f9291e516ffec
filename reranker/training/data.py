"""Training data of the cross-encoder: labelled pairs from triples files and BEIR qrels, the
in-process BM25 that mines negatives and dev candidates, and dev sets.

Pure Python and NumPy (no torch): see :mod:`reranker.training.cross_encoder` for the loop that uses
them.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reranker.corpus import read_jsonl
from reranker.errors import SourceError

FORBIDDEN_SPLITS = frozenset({"test"})

# --------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Pair:
    """One labelled (query, passage) pair."""

    query: str
    passage: str
    label: float
    source: str
    query_id: str | None = None


@dataclass
class PairSet:
    """De-duplicated pairs with counts for ``train_info.json``."""

    pairs: list[Pair]
    stats: dict[str, Any]


def listwise_groups(pairs: Sequence[Pair], group_size: int, seed: int) -> list[list[int]]:
    """Groups for the listwise loss, as indices into ``pairs``: for every positive, the
    positive first, then up to ``group_size - 1`` negatives of the same query and source
    (a seeded sample). Positives whose query has no negative are left out."""
    by_query: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for index, pair in enumerate(pairs):
        positives, negatives = by_query.setdefault((pair.source, pair.query), ([], []))
        (positives if pair.label > 0 else negatives).append(index)
    rng = random.Random(f"{seed}:groups")
    groups = []
    for positives, negatives in by_query.values():
        if not negatives:
            continue
        for positive in positives:
            count = min(len(negatives), group_size - 1)
            groups.append([positive, *rng.sample(negatives, count)])
    return groups


@dataclass(frozen=True)
class DataSource:
    """A resolved training or dev input."""

    kind: Literal["triples", "beir"]
    path: Path
    """The triples file, or the BEIR dataset folder."""
    split: str | None = None
    """The qrels split of a BEIR source."""

    def describe(self) -> str:
        return f"{self.path} (split {self.split})" if self.kind == "beir" else str(self.path)


def resolve_source(path: Path, default_split: str) -> DataSource:
    """Classify ``path``: a triples ``.jsonl``, a BEIR ``qrels/<split>.tsv``, or a BEIR folder."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        if not (path / "corpus.jsonl").is_file():
            raise SourceError(f"{path}: a folder must be a BEIR dataset (corpus.jsonl missing)")
        source = DataSource("beir", path, default_split)
    elif path.suffix == ".tsv" and path.parent.name == "qrels":
        source = DataSource("beir", path.parent.parent, path.stem)
    elif path.suffix == ".jsonl":
        if path.name in {"corpus.jsonl", "queries.jsonl"}:
            raise SourceError(
                f"{path}: this is a BEIR {path.stem} file; pass qrels/<split>.tsv or the folder"
            )
        source = DataSource("triples", path)
    else:
        raise SourceError(
            f"{path}: expected a triples .jsonl file, a BEIR qrels/<split>.tsv or a BEIR folder"
        )
    if source.split is not None and source.split.lower() in FORBIDDEN_SPLITS:
        raise SourceError(
            f"{source.describe()}: refusing to use a test split for training or model "
            "selection; evaluate on it with `reranker eval` instead"
        )
    return source


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (header ``query-id corpus-id score``) → ``{query_id: {doc_id: grade}}``."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        with Path(path).open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                parts = line.rstrip("\r\n").split("\t")
                if number == 1 and parts[0] == "query-id":
                    continue
                if parts == [""]:
                    continue
                if len(parts) != 3:
                    raise SourceError(f"{path}:{number}: expected 3 tab-separated columns")
                try:
                    grade = int(float(parts[2]))
                except ValueError as exc:
                    raise SourceError(
                        f"{path}:{number}: score {parts[2]!r} is not a number"
                    ) from exc
                qrels.setdefault(parts[0], {})[parts[1]] = grade
    except OSError as exc:
        raise SourceError(f"{path}: cannot read qrels: {exc}") from exc
    return qrels


def doc_text(doc: dict[str, Any]) -> str:
    """Passage text of a BEIR document: ``title + ". " + text`` (as in the training triples)."""
    title = str(doc.get("title") or "").strip()
    text = str(doc.get("text") or "")
    return f"{title}. {text}" if title else text


def load_beir(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A BEIR folder's ``(corpus {doc_id: passage}, queries {query_id: text})``."""
    folder = Path(folder)
    corpus = {str(row["_id"]): doc_text(row) for _, row in read_jsonl(folder / "corpus.jsonl")}
    queries = {str(row["_id"]): str(row["text"]) for _, row in read_jsonl(folder / "queries.jsonl")}
    return corpus, queries


def _test_query_ids(paths: Sequence[Path]) -> set[str]:
    ids: set[str] = set()
    for path in paths:
        ids.update(read_qrels(path))
    return ids


def _sibling_test_qrels(triples_path: Path, sources: set[str]) -> list[Path]:
    """Test qrels of the datasets named by the triples' sources (``scifact-train`` →
    ``<data>/scifact/qrels/test.tsv``), where such a folder sits beside the triples' folder."""
    found = []
    for source in sorted(sources):
        dataset = source.rsplit("-", 1)[0]
        candidate = triples_path.resolve().parent.parent / dataset / "qrels" / "test.tsv"
        if candidate.is_file():
            found.append(candidate)
    return found


class _PairCollector:
    """De-duplicates pairs by (query, passage); a pair seen with both labels stays positive."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str], int] = {}
        self.pairs: list[Pair] = []
        self.duplicates = 0
        self.conflicts = 0

    def add(self, pair: Pair) -> None:
        key = (pair.query, pair.passage)
        existing = self.index.get(key)
        if existing is None:
            self.index[key] = len(self.pairs)
            self.pairs.append(pair)
            return
        self.duplicates += 1
        if self.pairs[existing].label != pair.label:
            self.conflicts += 1
            if pair.label > self.pairs[existing].label:
                self.pairs[existing] = pair


def _triples_pairs(
    path: Path,
    collector: _PairCollector,
    exclude_sources: set[str],
    test_qrels: Sequence[Path],
) -> dict[str, Any]:
    rows = 0
    excluded = 0
    by_source: Counter[str] = Counter()
    query_ids: dict[str, set[str]] = {}
    before = len(collector.pairs)
    for number, row in read_jsonl(path):
        missing = [key for key in ("query", "positive", "negative") if not row.get(key)]
        if missing:
            raise SourceError(f"{path}:{number}: missing or empty {', '.join(missing)}")
        source = str(row.get("source") or path.stem)
        if re.split(r"[-_. ]", source.lower())[-1] in FORBIDDEN_SPLITS:
            raise SourceError(f"{path}:{number}: source {source!r} is a test split; refusing it")
        rows += 1
        if source in exclude_sources:
            excluded += 1
            continue
        by_source[source] += 1
        query_id = row.get("query_id")
        qid = None if query_id is None else str(query_id)
        if qid is not None:
            query_ids.setdefault(source, set()).add(qid)
        query = str(row["query"])
        collector.add(Pair(query, str(row["positive"]), 1.0, source, qid))
        collector.add(Pair(query, str(row["negative"]), 0.0, source, qid))
    if rows == 0:
        raise SourceError(f"{path}: no triples")
    checks = [*test_qrels, *_sibling_test_qrels(path, set(query_ids))]
    for qrels_path in dict.fromkeys(checks):
        test_ids = _test_query_ids([qrels_path])
        for source, ids in query_ids.items():
            leaked = ids & test_ids
            if leaked:
                example = ", ".join(sorted(leaked)[:5])
                raise SourceError(
                    f"{path}: {len(leaked)} query ids of source {source!r} appear in the test "
                    f"qrels {qrels_path} (e.g. {example}); refusing to train on test queries"
                )
    return {
        "path": str(path),
        "kind": "triples",
        "rows": rows,
        "excluded_rows": excluded,
        "rows_by_source": dict(sorted(by_source.items())),
        "pairs_added": len(collector.pairs) - before,
        "test_qrels_checked": [str(p) for p in dict.fromkeys(checks)],
    }


def _beir_pairs(
    source: DataSource,
    collector: _PairCollector,
    negatives_per_positive: int,
    depth: int,
    seed: int,
    test_qrels: Sequence[Path],
) -> dict[str, Any]:
    assert source.split is not None
    qrels_path = source.path / "qrels" / f"{source.split}.tsv"
    if not qrels_path.is_file():
        raise SourceError(f"{source.path}: no qrels for split {source.split!r} ({qrels_path})")
    qrels = read_qrels(qrels_path)
    checks = list(test_qrels)
    own_test = source.path / "qrels" / "test.tsv"
    if own_test.is_file():
        checks.append(own_test)
    leaked = set(qrels) & _test_query_ids(checks)
    if leaked:
        raise SourceError(
            f"{qrels_path}: {len(leaked)} queries also appear in test qrels "
            f"(e.g. {', '.join(sorted(leaked)[:5])}); refusing to train on test queries"
        )
    corpus, queries = load_beir(source.path)
    doc_ids = list(corpus)
    bm25 = BM25([corpus[d] for d in doc_ids])
    rng = random.Random(f"{seed}:{source.path.name}:{source.split}")
    name = f"{source.path.name}-{source.split}"
    before = len(collector.pairs)
    missing_docs = 0
    for qid, judged in qrels.items():
        if qid not in queries:
            raise SourceError(f"{qrels_path}: query {qid!r} is not in queries.jsonl")
        query = queries[qid]
        positives = [d for d, g in judged.items() if g > 0 and d in corpus]
        missing_docs += sum(1 for d in judged if d not in corpus)
        for doc_id in positives:
            collector.add(Pair(query, corpus[doc_id], 1.0, name, qid))
        for doc_id, grade in judged.items():
            if grade <= 0 and doc_id in corpus:
                collector.add(Pair(query, corpus[doc_id], 0.0, name, qid))
        if not positives or negatives_per_positive == 0:
            continue
        pool = [doc_ids[i] for i, _ in bm25.top_k(query, depth + len(judged))]
        pool = [d for d in pool if d not in judged][:depth]
        count = min(len(pool), negatives_per_positive * len(positives))
        for doc_id in rng.sample(pool, count):
            collector.add(Pair(query, corpus[doc_id], 0.0, name, qid))
    return {
        "path": str(qrels_path),
        "kind": "beir",
        "split": source.split,
        "queries": len(qrels),
        "judged_docs_missing_from_corpus": missing_docs,
        "pairs_added": len(collector.pairs) - before,
        "negatives_per_positive": negatives_per_positive,
        "bm25_depth": depth,
    }


def load_training_pairs(
    files: Sequence[Path],
    *,
    exclude_sources: Sequence[str] = (),
    test_qrels: Sequence[Path] = (),
    negatives_per_positive: int = 3,
    bm25_depth: int = 30,
    seed: int = 13,
) -> PairSet:
    """Read every training source into de-duplicated labelled pairs (see the module docstring)."""
    collector = _PairCollector()
    per_file = []
    excluded = set(exclude_sources)
    for path in files:
        source = resolve_source(Path(path), "train")
        if source.kind == "triples":
            per_file.append(_triples_pairs(source.path, collector, excluded, test_qrels))
        else:
            per_file.append(
                _beir_pairs(source, collector, negatives_per_positive, bm25_depth, seed, test_qrels)
            )
    pairs = collector.pairs
    if not pairs:
        raise SourceError("no training pairs left (every source excluded?)")
    labels = Counter(p.label for p in pairs)
    if labels[1.0] == 0 or labels[0.0] == 0:
        raise SourceError("training pairs need both positives and negatives")
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(f"{p.query}\x1f{p.passage}\x1f{p.label}\x1e".encode())
    stats = {
        "files": per_file,
        "pairs": len(pairs),
        "positives": labels[1.0],
        "negatives": labels[0.0],
        "pairs_by_source": dict(sorted(Counter(p.source for p in pairs).items())),
        "duplicates_removed": collector.duplicates,
        "label_conflicts": collector.conflicts,
        "excluded_sources": sorted(excluded),
        "digest": digest.hexdigest(),
    }
    return PairSet(pairs, stats)


# --------------------------------------------------------------------------------------------
# BM25 (dev candidates and BEIR negatives; the product's first stage is Elasticsearch)

_TOKEN = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "will",
        "with",
        "you",
        "your",
    }
)


def bm25_tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens, a small English stop list removed, no stemming."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


class BM25:
    """Okapi BM25 over an in-memory list of passages (Lucene's idf, ``log(1 + (N-df+.5)/(df+.5))``).

    Small and exact: an inverted index of NumPy arrays, scored term by term. It serves dev
    candidate generation and BEIR negative mining for a few thousand documents; it is not a
    first stage for the product (that is Elasticsearch).
    """

    def __init__(self, passages: Sequence[str], k1: float = 0.9, b: float = 0.4) -> None:
        self.k1 = k1
        self.b = b
        self.size = len(passages)
        lengths = np.zeros(self.size, dtype=np.float64)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for index, passage in enumerate(passages):
            counts = Counter(bm25_tokenize(passage))
            lengths[index] = sum(counts.values())
            for term, count in counts.items():
                docs, tfs = postings.setdefault(term, ([], []))
                docs.append(index)
                tfs.append(count)
        avgdl = float(lengths.mean()) if self.size and lengths.mean() > 0 else 1.0
        self._norm = k1 * (1.0 - b + b * lengths / avgdl)
        self._postings = {
            term: (np.asarray(docs, dtype=np.int64), np.asarray(tfs, dtype=np.float64))
            for term, (docs, tfs) in postings.items()
        }

    def idf(self, term: str) -> float:
        posting = self._postings.get(term)
        df = 0 if posting is None else len(posting[0])
        return math.log(1.0 + (self.size - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for ``query`` (repeated query terms count once each)."""
        out = np.zeros(self.size, dtype=np.float64)
        for term in bm25_tokenize(query):
            posting = self._postings.get(term)
            if posting is None:
                continue
            docs, tfs = posting
            out[docs] += self.idf(term) * tfs * (self.k1 + 1.0) / (tfs + self._norm[docs])
        return out

    def top_k(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best ``(passage index, score)`` with a positive score, best first (ties by
        index)."""
        scores = self.scores(query)
        candidates = np.flatnonzero(scores > 0)
        order = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
        return [(int(i), float(scores[i])) for i in order]


# --------------------------------------------------------------------------------------------
# dev evaluation


@dataclass
class DevSet:
    """Dev queries with their candidate passages (judged docs + unjudged BM25 top docs)."""

    name: str
    queries: dict[str, str]
    candidates: dict[str, list[tuple[str, str]]]
    """query id → [(doc id, passage)]"""
    qrels: dict[str, dict[str, int]]
    bm25_run: dict[str, dict[str, float]]


def build_dev_set(
    path: Path, *, negatives: int = 20, max_queries: int | None = 200, seed: int = 13
) -> DevSet:
    """Candidates per dev query = its judged documents + the top ``negatives`` unjudged BM25
    documents. Refuses a test split."""
    source = resolve_source(Path(path), "dev")
    if source.kind != "beir":
        raise SourceError(f"{path}: a dev set must be a BEIR qrels file or folder")
    assert source.split is not None
    qrels_path = source.path / "qrels" / f"{source.split}.tsv"
    if not qrels_path.is_file():
        raise SourceError(f"{source.path}: no qrels for split {source.split!r}")
    qrels = read_qrels(qrels_path)
    corpus, queries = load_beir(source.path)
    qids = sorted(q for q, judged in qrels.items() if any(g > 0 for g in judged.values()))
    if max_queries is not None and len(qids) > max_queries:
        qids = sorted(random.Random(seed).sample(qids, max_queries))
    doc_ids = list(corpus)
    index = {d: i for i, d in enumerate(doc_ids)}
    bm25 = BM25([corpus[d] for d in doc_ids])
    candidates: dict[str, list[tuple[str, str]]] = {}
    bm25_run: dict[str, dict[str, float]] = {}
    for qid in qids:
        if qid not in queries:
            raise SourceError(f"{qrels_path}: query {qid!r} is not in queries.jsonl")
        judged = {d for d in qrels[qid] if d in corpus}
        scores = bm25.scores(queries[qid])
        top = [doc_ids[i] for i, _ in bm25.top_k(queries[qid], negatives + len(qrels[qid]))]
        chosen = sorted(judged) + [d for d in top if d not in judged][:negatives]
        candidates[qid] = [(d, corpus[d]) for d in chosen]
        bm25_run[qid] = {d: float(scores[index[d]]) for d in chosen}
    return DevSet(
        name=f"{source.path.name}-{source.split}",
        queries={q: queries[q] for q in qids},
        candidates=candidates,
        qrels={q: qrels[q] for q in qids},
        bm25_run=bm25_run,
    )
