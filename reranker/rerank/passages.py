"""Long documents: a document longer than the cross-encoder reads is split into overlapping
passages, each scored, and the document's score is combined from theirs.

The cross-encoder reads ``max_length`` tokens of a (query, document) pair; what lies beyond is
invisible to it. :class:`PassageScorer` wraps any scorer: it splits each document with the
model's own tokenizer into windows that fit beside the query (half of a window overlapping
the next, so no sentence is only ever seen cut), scores every window as a pair of its own and
combines a document's logits by ``max`` (MaxP in Dai and Callan's "Deeper Text Understanding
for IR with Contextual Neural Language Modeling", 2019) or ``firstmax`` (the mean of the first
window's and the best window's: the opening of a document often says what it is about).
A document that fits is one window, scored as before. Passage boundaries are kept per text
(a bounded memory), so a document seen again is not tokenised again.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from tokenizers import Tokenizer

from reranker.errors import ConfigError, ModelError
from reranker.numeric import sigmoid as sigmoid_of
from reranker.rerank.capabilities import FromFolder, ScoreMemory, max_length_of
from reranker.rerank.scorer import PairScorer

Combine = Literal["max", "firstmax"]
COMBINES: tuple[str, ...] = get_args(Combine)
#: the share of a window that the next one reads again
OVERLAP = 0.5
#: the longest query the split makes room for, in tokens (a longer one is truncated by the
#: scorer anyway, longest first)
QUERY_ROOM = 64


class PassageSplitter:
    """Splits a document into windows of at most ``window`` tokens of ``tokenizer``, each
    starting ``window · (1 − OVERLAP)`` tokens after the one before; remembers the last
    ``capacity`` documents' boundaries."""

    def __init__(self, tokenizer: Tokenizer, window: int, *, capacity: int = 50_000) -> None:
        if window < 8:
            raise ConfigError(f"a passage window of {window} tokens is too short to read")
        self.tokenizer = tokenizer
        self.window = window
        self.step = max(1, int(window * (1 - OVERLAP)))
        self.capacity = capacity
        self._known: OrderedDict[str, tuple[tuple[int, int], ...]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_model(
        cls, model_dir: Path, max_length: int, special_tokens: int = 3
    ) -> PassageSplitter:
        """Windows that fit beside a query of up to :data:`QUERY_ROOM` tokens in a model
        reading ``max_length`` tokens (``special_tokens``: [CLS] and two [SEP])."""
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return cls(tokenizer, max_length - special_tokens - QUERY_ROOM)

    def split(self, text: str) -> list[str]:
        """``text`` as its windows (itself alone when it fits)."""
        return [text[start:end] for start, end in self.boundaries(text)]

    def boundaries(self, text: str) -> tuple[tuple[int, int], ...]:
        with self._lock:
            known = self._known.get(text)
            if known is not None:
                self._known.move_to_end(text)
                return known
        found = self._boundaries(text)
        with self._lock:
            self._known[text] = found
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)
        return found

    def _boundaries(self, text: str) -> tuple[tuple[int, int], ...]:
        offsets = self.tokenizer.encode(text, add_special_tokens=False).offsets
        if len(offsets) <= self.window:
            return ((0, len(text)),)
        spans = []
        for start in range(0, len(offsets), self.step):
            end = min(start + self.window, len(offsets))
            spans.append((offsets[start][0], offsets[end - 1][1]))
            if end == len(offsets):
                break
        return tuple(spans)


def combine(logits: Sequence[float], how: Combine) -> float:
    """A document's logit from its windows' (in document order)."""
    best = max(logits)
    return float(best) if how == "max" else float((logits[0] + best) / 2)


class PassageScorer:
    """A :class:`~reranker.rerank.scorer.PairScorer` that scores long documents by their
    passages (see the module's doc); everything else it asks of ``inner``."""

    def __init__(self, inner: PairScorer, splitter: PassageSplitter, how: Combine = "max") -> None:
        if how not in COMBINES:
            raise ConfigError(f"unknown passage combination {how!r}; use {', '.join(COMBINES)}")
        self.inner = inner
        self.splitter = splitter
        self.how = how

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"PassageScorer({self.inner!r}, window={self.splitter.window}, {self.how})"

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.inner.feature_names

    def expand(
        self, pairs: Sequence[tuple[str, str]], features: np.ndarray | None
    ) -> tuple[list[tuple[str, str]], np.ndarray | None, list[int]]:
        """Every pair's windows as pairs (each with its document's features), and how many
        windows each document has."""
        expanded: list[tuple[str, str]] = []
        counts = []
        for query, passage in pairs:
            windows = self.splitter.split(passage) if passage else [passage]
            expanded.extend((query, w) for w in windows)
            counts.append(len(windows))
        rows = np.repeat(np.arange(len(pairs)), counts)
        return expanded, None if features is None else features[rows], counts

    def uncached(
        self,
        pairs: Sequence[tuple[str, str]],
        features: np.ndarray | None = None,
        *,
        with_signals: bool = False,
    ) -> list[int]:
        """The documents with a window whose score ``inner`` does not remember (all of them
        when it remembers nothing)."""
        if not isinstance(self.inner, ScoreMemory):
            return list(range(len(pairs)))
        expanded, expanded_features, counts = self.expand(pairs, features)
        missing = self.inner.uncached(expanded, expanded_features, with_signals=with_signals)
        owner = np.repeat(np.arange(len(pairs)), counts)
        return sorted({int(owner[row]) for row in missing})

    def score_with_signals(self, *args: Any, **kwargs: Any) -> Any:
        raise ModelError("a multi-task model's signal heads are not read passage by passage")

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        sigmoid: bool = False,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        expanded, expanded_features, counts = self.expand(pairs, features)
        logits = self.inner.score(expanded, deadline=deadline, features=expanded_features)
        if len(logits) != len(expanded):
            return np.asarray(logits)  # the pipeline's check names the fault
        out = np.empty(len(pairs), dtype=np.float32)
        start = 0
        for i, count in enumerate(counts):
            out[i] = combine(logits[start : start + count].tolist(), self.how)
            start += count
        return sigmoid_of(out) if sigmoid else out


@functools.lru_cache(maxsize=8)
def splitter_for(model_dir: Path, max_length: int) -> PassageSplitter:
    """One splitter (and its remembered boundaries) per model folder and length."""
    return PassageSplitter.for_model(model_dir, max_length)


def by_passages(scorer: PairScorer, how: str, *, served: PairScorer | None = None) -> PassageScorer:
    """``served`` (default ``scorer``; e.g. ``scorer`` behind a score cache) reading long
    documents by passages of ``scorer``'s own tokenizer and length; only a model loaded from
    a folder can (a remote scorer truncates where it likes)."""
    length = max_length_of(scorer)
    if not isinstance(scorer, FromFolder) or length is None:
        raise ConfigError("passages need a local model (its tokenizer and max length)")
    splitter = splitter_for(Path(scorer.model_dir), length)
    return PassageScorer(served or scorer, splitter, how)  # type: ignore[arg-type]
