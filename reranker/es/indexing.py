"""The index path: a corpus (or the current index) into a new versioned index, then an alias swap.

Order of work, and why: validate the whole source first (a malformed line aborts before
Elasticsearch is touched), create ``<alias>-<timestamp>``, embed and bulk-load in chunks,
refresh, check the count, and only then swap the alias in one atomic request. Any failure
before the swap deletes the new index and leaves the alias and its index as they were.

A run that is killed (SIGKILL, a lost machine) or interrupted (Ctrl-C) instead leaves its new
index behind, marked ``in_progress`` in its ``_meta``: running the same ``index`` again (same
source files, same embedder, same alias) resumes it. It restarts at the first document of
the source that the index lacks (ids checked in source order, :data:`RESUME_CHECK` at a time;
the bulk requests go one after another, so what was loaded is a prefix of the source plus
part of the request in flight), embeds and sends only from there, then counts and swaps as
always. Documents are written by ``_id``, so one sent twice is still one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch
from elasticsearch import helpers as es_helpers
from elasticsearch.exceptions import ApiError, TransportError
from tqdm import tqdm

from reranker import __version__
from reranker.corpus import CorpusSource, Document, passage_text
from reranker.errors import IndexingError, MalformedLineError
from reranker.es import mappings
from reranker.retrieval.embed_cache import (
    EmbeddingCache,
    TextEncoder,
    cache_name,
    encode_with_cache,
)
from reranker.retrieval.queries import RESCORE_VECTOR_FIELD, VECTOR_FIELD

SOURCE_FIELDS_RESERVED = {"_id", VECTOR_FIELD, RESCORE_VECTOR_FIELD}
#: source ids checked per request when finding where an interrupted load stopped
RESUME_CHECK = 1000

log = logging.getLogger(__name__)


@dataclass
class IndexResult:
    alias: str
    index: str
    documents: int
    skipped: list[MalformedLineError] = field(default_factory=list)
    previous: list[str] = field(default_factory=list)
    deleted_previous: bool = False
    seconds: float = 0.0
    resumed_from: int = 0
    """Documents an interrupted run had loaded, not read again (0: a fresh load)."""
    loaded: int = 0
    """Documents this run embedded and sent."""


@dataclass(frozen=True)
class LoadOptions:
    chunk_size: int = 256
    embed_batch_size: int = 32
    keep_previous: bool = False
    progress: bool = True
    bulk_max_retries: int = 5
    bulk_chunk: int = 500
    """Documents per bulk request."""
    shards: int | None = None
    """Primary shards of the new index (``None``: the template's); a cluster's choice by size
    (docs/operations.md)."""
    replicas: int | None = None
    """Replicas of each shard (``None``: the template's); 1 on a cluster keeps the data when
    a node is lost."""
    passages: str | None = None
    """How searches of the new index score documents longer than the cross-encoder reads,
    unless they say otherwise (``max``, ``firstmax``; recorded in its ``_meta``); ``None``:
    they truncate."""
    rescore_encoder: TextEncoder | None = None
    """A second embedder: each document's vector of it is stored (not searched) for the
    reranking stage (:mod:`reranker.rerank.rescore`); ``None``: none."""


def source_digest(source: CorpusSource) -> str:
    """sha256 over the corpus and extra files: tells whether an index is of this source."""
    digest = hashlib.sha256()
    for path in (source.corpus_path, *source.extra_paths):
        digest.update(str(path.name).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def index_corpus(
    client: Elasticsearch,
    source: CorpusSource,
    alias: str,
    encoder: TextEncoder,
    *,
    cache: EmbeddingCache | None = None,
    skip_malformed: bool = False,
    options: LoadOptions | None = None,
) -> IndexResult:
    """Build a new index of ``source`` behind ``alias``. See the module docstring."""
    options = options or LoadOptions()
    mappings.validate_alias_name(alias)
    report = source.count(skip_malformed=skip_malformed)  # raises on the first bad line
    if report.documents == 0:
        raise IndexingError(f"{source.corpus_path} holds no documents")
    meta = {
        "source": str(source.corpus_path.resolve()),
        "extra": [str(p.resolve()) for p in source.extra_paths],
        "source_sha256": source_digest(source),
        **({mappings.PASSAGES_META_KEY: options.passages} if options.passages else {}),
    }
    result = _load_and_swap(
        client,
        alias,
        encoder,
        documents=lambda: source.documents(skip_malformed=skip_malformed),
        expected=report.documents,
        meta=meta,
        cache=cache,
        reuse_embeddings=False,
        options=options,
        resumable=True,
    )
    result.skipped = report.skipped
    return result


def reindex_alias(
    client: Elasticsearch,
    alias: str,
    encoder: TextEncoder,
    *,
    cache: EmbeddingCache | None = None,
    re_embed: bool = False,
    options: LoadOptions | None = None,
) -> IndexResult:
    """Rebuild the index behind ``alias`` from its own documents, with today's mappings."""
    options = options or LoadOptions()
    current = mappings.indices_behind_alias(client, alias)
    if not current:
        raise IndexingError(f"alias {alias!r} does not exist; nothing to reindex")
    expected = int(client.count(index=alias)["count"])
    old_meta = mappings.index_meta(client, current[0])
    kept = {"source", "extra", "source_sha256", mappings.PASSAGES_META_KEY}
    meta = {k: v for k, v in old_meta.items() if k in kept}
    meta["reindexed_from"] = current
    rescorer = options.rescore_encoder
    # the second embedder's vectors are a space of their own: kept whenever it is the same
    # model (unless --re-embed), whatever happens to the embedder's
    reuse_rescore = (
        not re_embed
        and rescorer is not None
        and old_meta.get(mappings.RESCORE_META_KEY) == rescorer.model_id
    )
    # vectors of another embedder are of another space: copying them under this embedder's
    # name would make every kNN search of the new index wrong
    re_embed = re_embed or old_meta.get("embedder") != encoder.model_id

    def scanned() -> Iterator[Document]:
        # Elasticsearch 9 leaves vectors out of _source unless asked for them.
        hits = es_helpers.scan(
            client,
            index=alias,
            query={"query": {"match_all": {}}},
            source_exclude_vectors=False,
        )
        for hit in hits:
            doc: Document = dict(hit["_source"])
            doc["_id"] = hit["_id"]
            yield doc

    return _load_and_swap(
        client,
        alias,
        encoder,
        documents=scanned,
        expected=expected,
        meta=meta,
        cache=cache,
        reuse_embeddings=not re_embed,
        options=options,
        reuse_rescore=reuse_rescore,
    )


def _load_and_swap(
    client: Elasticsearch,
    alias: str,
    encoder: TextEncoder,
    *,
    documents: Callable[[], Iterable[Document]],
    expected: int,
    meta: dict[str, Any],
    cache: EmbeddingCache | None,
    reuse_embeddings: bool,
    options: LoadOptions,
    resumable: bool = False,
    reuse_rescore: bool = False,
) -> IndexResult:
    """Load into a new index (or resume an interrupted one), count, swap; see the module."""
    started = time.monotonic()
    previous = mappings.indices_behind_alias(client, alias)
    model_dir = getattr(encoder, "model_dir", None)  # an embedder in process has its folder
    full_meta = {
        **meta,
        **({"embedder_dir": str(Path(model_dir).resolve())} if model_dir is not None else {}),
        "embedder": encoder.model_id,
        "dims": encoder.dim,
        **_rescore_meta(options.rescore_encoder),
        "documents": expected,
        "reranker_version": __version__,
    }
    layout = (options.shards, options.replicas)
    new_index, resumed = _target_index(client, alias, encoder, full_meta, resumable, layout)
    try:
        start = loaded_prefix(client, new_index, documents()) if resumed else 0
        if resumed:
            log.warning("resuming %s at document %d of %d", new_index, start, expected)
        remaining = itertools.islice(documents(), start, None)
        actions = _actions(
            new_index,
            remaining,
            encoder,
            cache,
            (reuse_embeddings, reuse_rescore),
            options,
            expected - start,
        )
        loaded = _bulk_load(client, actions, options)
        client.indices.put_settings(index=new_index, settings={"index": {"refresh_interval": None}})
        client.indices.refresh(index=new_index)
        counted = int(client.count(index=new_index)["count"])
        if counted != expected or start + loaded != expected:
            raise IndexingError(
                f"count check failed: read {expected} documents, loaded {start + loaded}, "
                f"the new index holds {counted}"
            )
        mappings.swap_alias(client, alias, new_index, previous)
    except BaseException as exc:
        _abandon(client, new_index, alias, exc, keep=resumable)
        raise
    if resumable:  # live now (an index behind an alias is never resumed); the flag is history
        with contextlib.suppress(ApiError, TransportError):
            current = mappings.index_meta(client, new_index)
            current.pop("in_progress", None)
            client.indices.put_mapping(index=new_index, meta={"reranker": current})
    deleted = False
    if previous and not options.keep_previous:
        client.indices.delete(index=",".join(previous), ignore_unavailable=True)
        deleted = True
    return IndexResult(
        alias=alias,
        index=new_index,
        documents=expected,
        previous=previous,
        deleted_previous=deleted,
        seconds=time.monotonic() - started,
        resumed_from=start,
        loaded=loaded,
    )


def _target_index(
    client: Elasticsearch,
    alias: str,
    encoder: TextEncoder,
    meta: dict[str, Any],
    resumable: bool,
    layout: tuple[int | None, int | None] = (None, None),
) -> tuple[str, bool]:
    """The index to load into, and whether it is an interrupted load of this very source and
    embedder (when ``resumable`` and one exists) rather than a new index."""
    if resumable:
        partial = unfinished_index(client, alias, meta)
        if partial is not None:
            return partial, True
    analysis_name, analysis = mappings.choose_analysis(client)
    new_index = mappings.versioned_index_name(client, alias)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    body = mappings.documents_index_body(
        analysis_name=analysis_name,
        analysis=analysis,
        dims=encoder.dim,
        meta={**meta, "created_at": created, **({"in_progress": True} if resumable else {})},
        shards=layout[0],
        replicas=layout[1],
    )
    try:
        client.indices.create(index=new_index, **body)
    except (ApiError, TransportError) as exc:
        raise IndexingError(f"could not create index {new_index}: {_reason(exc)}") from exc
    return new_index, False


def loaded_prefix(client: Elasticsearch, index: str, documents: Iterable[Document]) -> int:
    """How many of ``documents``, from the first, ``index`` holds without a gap: where an
    interrupted load resumes."""
    client.indices.refresh(index=index)
    done = 0
    iterator = iter(documents)
    while batch := [str(d["_id"]) for d in itertools.islice(iterator, RESUME_CHECK)]:
        found = client.search(
            index=index, query={"ids": {"values": batch}}, size=len(batch), source=False
        )
        present = {hit["_id"] for hit in found["hits"]["hits"]}
        for doc_id in batch:
            if doc_id not in present:
                return done
            done += 1
    return done


def unfinished_index(client: Elasticsearch, alias: str, meta: dict[str, Any]) -> str | None:
    """The newest index an interrupted ``index`` run left for ``alias``: named like the
    alias's versions, behind no alias, ``in_progress``, of the same source digest, embedder
    and document count as ``meta``."""
    try:
        found = client.indices.get(index=f"{alias}-*", expand_wildcards="open")
    except (ApiError, TransportError):
        return None
    version = re.compile(re.escape(alias) + r"-\d{14}(-\d+)?")
    keys = ("source_sha256", "embedder", mappings.RESCORE_META_KEY, "documents")
    matches = []
    for name, body in found.items():
        theirs = body.get("mappings", {}).get("_meta", {}).get("reranker", {})
        if (
            version.fullmatch(name)
            and not body.get("aliases")
            and theirs.get("in_progress")
            and all(theirs.get(k) == meta.get(k) for k in keys)
        ):
            matches.append(name)
    return max(matches) if matches else None


def _abandon(
    client: Elasticsearch, index: str, alias: str, exc: BaseException, *, keep: bool
) -> None:
    """After a failed load: an interruption of a resumable load keeps the new index (the
    next run resumes it); anything else deletes it. The alias is never touched. Raises the
    error an Elasticsearch failure means, else returns (the caller re-raises ``exc``)."""
    if keep and isinstance(exc, KeyboardInterrupt | SystemExit):
        log.warning("interrupted: %s kept; run the same command to resume", index)
        return
    _delete_quietly(client, index)
    if isinstance(exc, ApiError | TransportError) and not isinstance(exc, IndexingError):
        raise IndexingError(
            f"indexing into {index} failed: {_reason(exc)}; alias {alias!r} unchanged"
        ) from exc


def _actions(
    index: str,
    documents: Iterable[Document],
    encoder: TextEncoder,
    cache: EmbeddingCache | None,
    reuse: tuple[bool, bool],
    options: LoadOptions,
    expected: int,
) -> Iterator[dict[str, Any]]:
    """Bulk actions for ``documents``, embedded in chunks; ``reuse``: whether a document's
    stored vector (the embedder's, the second embedder's) is kept where it has one."""
    bar = tqdm(total=expected, unit="doc", desc="embed+load", disable=not options.progress)
    iterator = iter(documents)
    rescorer = options.rescore_encoder
    try:
        while chunk := list(itertools.islice(iterator, options.chunk_size)):
            _embed_chunk(chunk, VECTOR_FIELD, encoder, cache, reuse[0], options)
            if rescorer is not None:
                _embed_chunk(chunk, RESCORE_VECTOR_FIELD, rescorer, None, reuse[1], options)
            for doc in chunk:
                source = {k: v for k, v in doc.items() if k not in SOURCE_FIELDS_RESERVED}
                source[VECTOR_FIELD] = doc[VECTOR_FIELD]
                if rescorer is not None:
                    source[RESCORE_VECTOR_FIELD] = doc[RESCORE_VECTOR_FIELD]
                yield {"_index": index, "_id": doc["_id"], "_source": source}
            bar.update(len(chunk))
    finally:
        bar.close()


def _bulk_load(
    client: Elasticsearch, actions: Iterator[dict[str, Any]], options: LoadOptions
) -> int:
    loaded = 0
    for ok, item in es_helpers.streaming_bulk(
        client,
        actions,
        chunk_size=options.bulk_chunk,
        max_retries=options.bulk_max_retries,
        initial_backoff=1,
        max_backoff=30,
        raise_on_error=False,
    ):
        if not ok:
            detail = item.get("index", item)
            error = detail.get("error", {})
            reason = error.get("reason", error) if isinstance(error, dict) else error
            raise IndexingError(
                f"document {detail.get('_id')!r} was rejected ({detail.get('status')}): {reason}"
            )
        loaded += 1
    return loaded


def _embed_chunk(
    chunk: list[Document],
    field: str,
    encoder: TextEncoder,
    cache: EmbeddingCache | None,
    reuse: bool,
    options: LoadOptions,
) -> None:
    """Set ``field`` of each document in ``chunk`` to its vector by ``encoder`` (kept where
    ``reuse`` and the document already has one of the right size)."""
    needs = [
        i for i, doc in enumerate(chunk) if not (reuse and _has_vector(doc, encoder.dim, field))
    ]
    if not needs:
        return
    vectors = encode_with_cache(
        encoder,
        [passage_text(chunk[i]) for i in needs],
        cache,
        batch_size=options.embed_batch_size,
    )
    for i, vector in zip(needs, vectors, strict=True):
        chunk[i][field] = vector.tolist()


def _rescore_meta(rescorer: TextEncoder | None) -> dict[str, Any]:
    """What an index's ``_meta`` says of its second embedder (nothing without one)."""
    if rescorer is None:
        return {}
    return {mappings.RESCORE_META_KEY: rescorer.model_id, "rescore_dims": rescorer.dim}


def _has_vector(doc: Document, dim: int, field: str = VECTOR_FIELD) -> bool:
    vector = doc.get(field)
    return isinstance(vector, list) and len(vector) == dim


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        info = exc.info if isinstance(exc.info, dict) else {}
        error = info.get("error", {})
        if isinstance(error, dict) and error.get("reason"):
            return f"{error.get('type')}: {error['reason']}"
    return str(exc)


def _delete_quietly(client: Elasticsearch, index: str) -> None:
    with contextlib.suppress(ApiError, TransportError):
        client.indices.delete(index=index, ignore_unavailable=True)


def default_cache(home: Path, encoder: TextEncoder) -> EmbeddingCache:
    return EmbeddingCache(home / "embeddings", cache_name(encoder))
