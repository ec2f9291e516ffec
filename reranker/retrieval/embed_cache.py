"""A persistent cache of document embeddings, keyed by model and text.

Embedding a corpus is the slow part of indexing on a CPU; re-indexing the same corpus with the
same model (idempotent re-runs, ``reindex``, evaluation set-up) then costs only the bulk load.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


class TextEncoder(Protocol):
    """What indexing needs of an embedder (``reranker.retrieval.embedder.Embedder`` is one)."""

    @property
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray: ...


@runtime_checkable
class QueryEncoder(Protocol):
    """An encoder that embeds queries differently from documents (an instruction before
    them): :class:`Embedder` is one."""

    def encode_queries(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray: ...


def encode_queries(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    """``texts`` embedded as queries: with the encoder's query instruction where it has one
    (:class:`QueryEncoder`), else as any text."""
    if isinstance(encoder, QueryEncoder):
        return encoder.encode_queries(texts)
    result: np.ndarray = encoder.encode(texts)
    return result


def cache_name(encoder: Any) -> str:
    """The name of ``encoder``'s vectors in a cache: its model id, marked when it embeds one
    text at a time (an int8 graph whose vectors would depend on their batchmates), since the
    same model gave batch-dependent vectors before, and a cache filled then must not serve
    them now."""
    one_text = "+one-text" if getattr(encoder, "one_text_per_run", False) else ""
    return f"{encoder.model_id}{one_text}"


class EmbeddingCache:
    """Float32 vectors in one SQLite file per model."""

    def __init__(self, folder: Path, model_id: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in model_id)
        self.path = folder / f"{safe}.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB)")

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()

    def get_many(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        keys = list({self.key(t) for t in texts})
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, vec FROM vectors WHERE key IN ({marks})", chunk
                ).fetchall()
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        rows = [
            (self.key(t), np.ascontiguousarray(v, dtype=np.float32).tobytes())
            for t, v in zip(texts, vectors, strict=True)
        ]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def encode_with_cache(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache: EmbeddingCache | None,
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """Embeddings for ``texts`` in order, computing only those the cache lacks."""
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    if cache is None:
        return encoder.encode(texts, batch_size=batch_size)
    known = cache.get_many(texts)
    missing = [t for t in dict.fromkeys(texts) if cache.key(t) not in known]
    if missing:
        fresh = encoder.encode(missing, batch_size=batch_size)
        cache.put_many(missing, fresh)
        known.update({cache.key(t): v for t, v in zip(missing, fresh, strict=True)})
    return np.stack([known[cache.key(t)] for t in texts]).astype(np.float32, copy=False)
