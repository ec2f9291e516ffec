"""Reading corpora, queries and judgements in the BEIR layout (or a plain JSONL file).

A *source* is either a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``)
or a single JSONL file of documents. Documents are ``{"_id", "title"?, "text", ...}``; any other
keys are kept and land in ``_source`` (``signals`` is indexed, the rest is stored only).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reranker.errors import MalformedLineError, SourceError

Document = dict[str, Any]
Qrels = dict[str, dict[str, int]]


@dataclass
class ReadReport:
    """What a pass over a source saw: documents accepted and lines skipped (with why)."""

    documents: int = 0
    skipped: list[MalformedLineError] = field(default_factory=list)


@dataclass(frozen=True)
class CorpusSource:
    """A corpus on disk, plus optional files of extra per-document fields joined on ``_id``."""

    corpus_path: Path
    extra_paths: tuple[Path, ...] = ()

    @classmethod
    def open(cls, source: Path, extra: tuple[Path, ...] = ()) -> CorpusSource:
        """Resolve SOURCE (a BEIR folder or a JSONL file) and check every file is readable."""
        source = Path(source)
        if source.is_dir():
            corpus_path = source / "corpus.jsonl"
            if not corpus_path.is_file():
                raise SourceError(
                    f"{source} is a folder without corpus.jsonl (BEIR layout expected)"
                )
        elif source.is_file():
            corpus_path = source
        else:
            raise SourceError(f"source {source} does not exist")
        for path in (corpus_path, *extra):
            _check_readable(path)
        return cls(corpus_path=corpus_path, extra_paths=tuple(Path(p) for p in extra))

    def documents(
        self, *, skip_malformed: bool = False, report: ReadReport | None = None
    ) -> Iterator[Document]:
        """Yield documents in file order, extra fields merged in.

        A malformed line raises :class:`MalformedLineError` with its line number, or, with
        ``skip_malformed``, is recorded in ``report.skipped`` and left out.
        """
        report = report if report is not None else ReadReport()
        extras = self._load_extras()
        seen: set[str] = set()
        for line_number, raw in _numbered_raw_lines(self.corpus_path):
            try:
                doc = parse_document(_decode(raw))
                if doc["_id"] in seen:
                    raise ValueError(f"duplicate _id {doc['_id']!r}")
            except ValueError as exc:
                error = MalformedLineError(str(self.corpus_path), line_number, str(exc))
                if not skip_malformed:
                    raise error from None
                report.skipped.append(error)
                continue
            seen.add(doc["_id"])
            for key, value in extras.get(doc["_id"], {}).items():
                doc[key] = value
            report.documents += 1
            yield doc

    def count(self, *, skip_malformed: bool = False) -> ReadReport:
        """Validate the whole source without keeping it; the report says how many documents."""
        report = ReadReport()
        for _ in self.documents(skip_malformed=skip_malformed, report=report):
            pass
        return report

    def _load_extras(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for path in self.extra_paths:
            for line_number, line in _numbered_lines(path):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise MalformedLineError(
                        str(path), line_number, f"invalid JSON: {exc.msg}"
                    ) from None
                if not isinstance(row, dict) or not isinstance(row.get("_id"), str | int):
                    raise MalformedLineError(
                        str(path), line_number, "expected an object with an _id"
                    )
                fields = {k: v for k, v in row.items() if k != "_id"}
                merged.setdefault(str(row["_id"]), {}).update(fields)
        return merged


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The non-blank lines of a JSONL file as JSON objects, with 1-based line numbers; a line
    that is not one is a :class:`MalformedLineError`, a file that cannot be read a
    :class:`SourceError`."""
    try:
        for line_number, line in _numbered_lines(path):
            try:
                row = parse_object(line)
            except ValueError as exc:
                raise MalformedLineError(str(path), line_number, str(exc)) from None
            yield line_number, row
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from exc


def parse_object(line: str) -> dict[str, Any]:
    """One JSONL line → its JSON object; ``ValueError`` says what is wrong with it."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    return row


def parse_document(line: str) -> Document:
    """One corpus line → a document; ``ValueError`` says what is wrong with it."""
    doc = parse_object(line)
    doc_id = doc.get("_id", doc.get("id"))
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise ValueError("missing or empty _id")
    if len(doc_id.encode()) > 512:
        raise ValueError("_id longer than 512 bytes (Elasticsearch's limit)")
    title = doc.get("title", "")
    text = doc.get("text")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise ValueError("title must be a string")
    if not isinstance(text, str):
        raise ValueError("missing text (a string)")
    if not (title.strip() or text.strip()):
        raise ValueError("title and text are both empty")
    doc.pop("id", None)
    doc["_id"] = doc_id
    doc["title"] = title
    doc["text"] = text
    return doc


def passage_text(doc: Document) -> str:
    """The text a model reads for a document: title and body, as BEIR's dense baselines do."""
    title = str(doc.get("title") or "").strip()
    text = str(doc.get("text") or "").strip()
    return f"{title} {text}".strip() if title else text


def load_queries(dataset: Path) -> dict[str, str]:
    """``queries.jsonl`` of a BEIR folder → {query id: text}."""
    path = Path(dataset) / "queries.jsonl"
    _check_readable(path)
    queries: dict[str, str] = {}
    for line_number, line in _numbered_lines(path):
        try:
            row = json.loads(line)
            query_id, text = str(row["_id"]), row["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise MalformedLineError(str(path), line_number, 'expected {"_id", "text"}') from None
        if not isinstance(text, str):
            raise MalformedLineError(str(path), line_number, "query text must be a string")
        queries[query_id] = text
    return queries


def available_splits(dataset: Path) -> list[str]:
    qrels_dir = Path(dataset) / "qrels"
    return sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []


DEV_HOLDOUT_FRACTION = 0.2
DEV_HOLDOUT_SEED = 13


def held_out_ids(ids: Iterable[str], fraction: float, seed: int, salt: str = "") -> set[str]:
    """The ids a seeded hash puts aside, about ``fraction`` of them, stably across runs and
    files. ``salt`` keeps a second split (e.g. a blend's selection split) independent of a
    first one with the same seed."""

    def held(qid: str) -> bool:
        digest = hashlib.sha256(f"{seed}:{salt}{qid}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction

    return {qid for qid in ids if held(qid)}


def split_queries(qrels: Qrels, fraction: float, seed: int) -> tuple[Qrels, Qrels]:
    """(rest, held-out): a seeded hash of the query id puts ``fraction`` of queries aside."""
    held = held_out_ids(qrels, fraction, seed)
    rest = {q: j for q, j in qrels.items() if q not in held}
    return rest, {q: j for q, j in qrels.items() if q in held}


def load_qrels(dataset: Path, split: str) -> Qrels:
    """``qrels/<split>.tsv`` (header ``query-id corpus-id score``) → {query: {doc: grade}}.

    A dataset without a dev split (SciFact) answers ``dev`` with the train queries that
    first-stage-aware training holds out for checkpoint selection (``DEV_HOLDOUT_FRACTION`` by
    a hash seeded with ``DEV_HOLDOUT_SEED``): queries no model was trained on, so blends can be
    fitted on them without the cross-encoder's training fit leaking into its features.
    """
    path = Path(dataset) / "qrels" / f"{split}.tsv"
    if split == "dev" and not path.is_file() and (path.parent / "train.tsv").is_file():
        return split_queries(load_qrels(dataset, "train"), DEV_HOLDOUT_FRACTION, DEV_HOLDOUT_SEED)[
            1
        ]
    if not path.is_file():
        splits = available_splits(dataset)
        have = ", ".join(splits) if splits else "none"
        raise SourceError(f"{dataset} has no qrels for split {split!r} (splits available: {have})")
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for line_number, row in enumerate(reader, start=1):
            if line_number == 1 and row and row[0] == "query-id":
                continue
            if not row:
                continue
            try:
                query_id, doc_id, grade = row[0], row[1], int(row[2])
            except (IndexError, ValueError):
                raise MalformedLineError(
                    str(path), line_number, "expected query-id, corpus-id, score"
                ) from None
            qrels.setdefault(query_id, {})[doc_id] = grade
    if not qrels:
        raise SourceError(f"{path} holds no judgements")
    return qrels


def _check_readable(path: Path) -> None:
    try:
        with Path(path).open("rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        raise SourceError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise SourceError(f"{path} is a folder, not a file") from None
    except PermissionError:
        raise SourceError(f"{path} is not readable (permission denied)") from None


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start}: {exc.reason})") from None


def _numbered_raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines as bytes, with 1-based line numbers."""
    with Path(path).open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield line_number, raw


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with 1-based numbers; bytes that are not UTF-8 are a malformed line."""
    for line_number, raw in _numbered_raw_lines(path):
        try:
            yield line_number, _decode(raw)
        except ValueError as exc:
            raise MalformedLineError(str(path), line_number, str(exc)) from None
