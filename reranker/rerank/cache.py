"""A scorer's logit cache: scores of (query, passage) pairs kept in memory (LRU) or on disk,
keyed by model, max length and text."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from reranker.batching import (
    logits_or_probabilities,
)
from reranker.rerank.capabilities import signal_heads_of
from reranker.rerank.scorer import ServedScorer, length_tag
from reranker.retrieval.embed_cache import EmbeddingCache


class ScoreStore(Protocol):
    """Where :class:`CachedScorer` keeps logits: ``key`` maps a pair's text to the stored key."""

    def key(self, text: str) -> str: ...

    def get_many(self, texts: Sequence[str]) -> dict[str, np.ndarray]: ...

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None: ...


class LruScores:
    """A bounded in-memory store of pair logits, least recently used first out, with hit and
    miss counters (``/metrics``). ``capacity`` pairs; thread-safe (the proxy's scorer pool and
    its event loop both read it)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("an LRU score cache needs a capacity of at least 1 (0 = no cache)")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for key in (self.key(t) for t in texts):
                value = self._items.get(key)
                if value is None:
                    self.misses += 1
                    continue
                self.hits += 1
                self._items.move_to_end(key)
                found[key] = value
        return found

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                key = self.key(text)
                self._items[key] = np.array(vector, dtype=np.float32).reshape(-1)
                self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.evictions += 1

    def covers(self, texts: Sequence[str]) -> bool:
        """Whether every text is stored (counters untouched: a look, not a use)."""
        return not self.missing(texts)

    def missing(self, texts: Sequence[str]) -> list[int]:
        """The positions of ``texts`` not stored (counters untouched: a look, not a use)."""
        with self._lock:
            return [i for i, t in enumerate(texts) if self.key(t) not in self._items]


class CachedScorer:
    """A :class:`~reranker.rerank.scorer.Scorer` with a cache of its logits in front.

    Two stores: :meth:`on_disk` (SQLite; evaluation and feature logging, so that re-running a
    dataset costs no cross-encoder time) and :class:`LruScores` (the proxy: a repeated query
    over the same documents skips the scorer). A key is the model's id, version and variant,
    the query text, the passage text (so an edited document is scored again) and, for a
    first-stage-aware model, the features: everything the score depends on.
    """

    def __init__(
        self, scorer: ServedScorer, store: ScoreStore, *, model_in_key: bool = True
    ) -> None:
        self.scorer = scorer
        self.cache = store
        #: pairs the model itself scored in this wrapper's calls (the rest came from the cache)
        self.pairs_scored = 0
        # a store shared by models keys by model; one of the model's own (a file named after
        # it) does not need to, and its existing files were written without
        model = f"{scorer.model_id}\x1f{scorer.version}\x1f{scorer.variant}\x1f"
        self._prefix = f"{model}{length_tag(scorer)}\x1f" if model_in_key else ""

    @staticmethod
    def disk_name(scorer: ServedScorer) -> str:
        """The disk store's name: ``scores-<model id>-<version>-<variant>``, plus
        ``-len<N>`` when the scorer truncates at another length than the old files were
        written at (:func:`length_tag`), so those files keep hitting."""
        tag = length_tag(scorer)
        base = f"scores-{scorer.model_id}-{scorer.version}-{scorer.variant}"
        return f"{base}-{tag}" if tag else base

    @classmethod
    def on_disk(cls, scorer: ServedScorer, folder: Path) -> CachedScorer:
        return cls(scorer, EmbeddingCache(folder, cls.disk_name(scorer)), model_in_key=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scorer, name)

    def __repr__(self) -> str:
        return f"CachedScorer({self.scorer!r})"

    def _keys(self, pairs: Sequence[tuple[str, str]], columns: np.ndarray | None) -> list[str]:
        keys = [f"{self._prefix}{query}\x1f{passage}" for query, passage in pairs]
        if columns is not None:  # a first-stage-aware model's score depends on them too
            keys = [f"{k}\x1f{row.tobytes().hex()}" for k, row in zip(keys, columns, strict=True)]
        return keys

    def _columns(self, features: np.ndarray | None) -> np.ndarray | None:
        if self.scorer.feature_names and features is not None:
            return np.asarray(features, dtype=np.float32)
        return None

    def covers(
        self,
        pairs: Sequence[tuple[str, str]],
        features: np.ndarray | None = None,
        *,
        with_signals: bool = False,
    ) -> bool:
        """Whether every pair's logit (with ``with_signals``: and its signal heads) is cached
        (an in-memory store only; else False)."""
        return not self.uncached(pairs, features, with_signals=with_signals)

    def uncached(
        self,
        pairs: Sequence[tuple[str, str]],
        features: np.ndarray | None = None,
        *,
        with_signals: bool = False,
    ) -> list[int]:
        """The positions of the pairs the model would have to score: those whose logit (with
        ``with_signals``: and heads) is not in memory; every pair for an on-disk store."""
        if not isinstance(self.cache, LruScores):
            return list(range(len(pairs)))
        keys = self._keys(pairs, self._columns(features))
        return self.cache.missing(self._with_heads(keys) if with_signals else keys)

    def _with_heads(self, keys: list[str]) -> list[str]:
        heads = ",".join(signal_heads_of(self.scorer))
        return [f"{key}\x1fheads={heads}" for key in keys]

    def score_with_signals(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:meth:`Scorer.score_with_signals` behind the cache: a pair's logit and its heads'
        predictions are stored together, under their own key."""
        heads: tuple[str, ...] = signal_heads_of(self.scorer)
        columns = self._columns(features)

        def compute(rows: list[int]) -> np.ndarray:
            logits, predicted = self.scorer.score_with_signals(  # type: ignore[attr-defined]
                [pairs[i] for i in rows],
                deadline=deadline,
                features=None if columns is None else columns[rows],
            )
            return np.column_stack([logits, *(predicted[h] for h in heads)])

        keys = self._with_heads(self._keys(pairs, columns))
        table = self._cached_rows(keys, 1 + len(heads), compute)
        return table[:, 0].copy(), {h: table[:, j + 1].copy() for j, h in enumerate(heads)}

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        sigmoid: bool = False,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        columns = self._columns(features)

        def compute(rows: list[int]) -> np.ndarray:
            return self.scorer.score(
                [pairs[i] for i in rows],
                deadline=deadline,
                features=None if columns is None else columns[rows],
            )

        logits = self._cached_rows(self._keys(pairs, columns), 1, compute)[:, 0].copy()
        return logits_or_probabilities(logits, probabilities=sigmoid)

    def _cached_rows(
        self, keys: list[str], width: int, compute: Callable[[list[int]], np.ndarray]
    ) -> np.ndarray:
        """A ``(len(keys), width)`` table: the stored rows where the cache has them, the rest
        from ``compute(missing positions)`` (the model), stored for next time."""
        known = self.cache.get_many(keys)
        missing = [i for i, key in enumerate(keys) if self.cache.key(key) not in known]
        self.pairs_scored += len(missing)
        if missing:
            fresh = np.asarray(compute(missing), dtype=np.float32).reshape(len(missing), width)
            self.cache.put_many([keys[i] for i in missing], fresh)
            known.update({self.cache.key(keys[i]): fresh[j] for j, i in enumerate(missing)})
        rows = [known[self.cache.key(key)] for key in keys]
        return np.array(rows, dtype=np.float32).reshape(len(keys), width)
