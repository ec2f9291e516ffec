"""The first-stage features a first-stage-aware cross-encoder reads beside the text.

Pure functions over one query's candidate window, shared by training (which mines hybrid
candidates in process) and serving (which reads Elasticsearch's scores), so both compute the
same numbers:

- ``fused``: the score that ordered the window (hybrid fusion, or the single first stage),
  min-max normalised within the window → [0, 1]. A model whose head is still zero ranks
  exactly by it, so an untrained first-stage-aware model reproduces the first stage.
- ``bm25``: the lexical score, min-max normalised over the candidates that have one.
- ``dense``: the kNN score (Elasticsearch's ``(1 + cosine) / 2``; min-max makes the affine
  form irrelevant), min-max normalised over the candidates that have one.

A candidate without a stage's score (retrieved by the other list only) gets
:data:`MISSING_VALUE`, the bottom of the normalised range, and is counted: being absent from a
list never looks better than being retrieved last by it.

Where no first stage gave a dense score (a BM25-only search, the rerank API's bare texts), the
cosine is computed in process by the served embedder (:func:`dense_cosines`), the same one
that embeds indices and queries. The rerank API's texts get their BM25 score in process too,
over the request's own texts (:mod:`reranker.retrieval.lexical`), and the two are fused as a
hybrid search fuses them, so the model reads the window it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from reranker.errors import SearchError
from reranker.retrieval.embed_cache import encode_queries
from reranker.retrieval.first_stage import DEFAULT_WEIGHTS
from reranker.retrieval.fusion import linear
from reranker.retrieval.lexical import bm25_scores

if TYPE_CHECKING:
    from reranker.retrieval.embed_cache import TextEncoder

FEATURE_NAMES: tuple[str, ...] = ("fused", "bm25", "dense")
MISSING_VALUE = 0.0
NORMALIZATION = "minmax within the candidate window; missing → 0.0"


@dataclass(frozen=True)
class WindowFeatures:
    """``values[i]`` are candidate ``i``'s features in :data:`FEATURE_NAMES` order."""

    values: np.ndarray
    missing: dict[str, int]
    """Per feature, how many candidates had no score and got :data:`MISSING_VALUE`."""


def _minmax(column: Sequence[float | None]) -> tuple[np.ndarray, int]:
    present = [float(v) for v in column if v is not None and np.isfinite(v)]
    out = np.full(len(column), MISSING_VALUE, dtype=np.float32)
    if not present:
        return out, len(column)
    low, high = min(present), max(present)
    missing = 0
    for i, value in enumerate(column):
        if value is None or not np.isfinite(value):
            missing += 1
        elif high == low:
            out[i] = 1.0
        else:
            out[i] = (float(value) - low) / (high - low)
    return out, missing


def window_features(
    fused: Sequence[float],
    bm25: Sequence[float | None],
    dense: Sequence[float | None],
) -> WindowFeatures:
    """Features of one query's candidates (all three sequences in candidate order)."""
    if not len(fused) == len(bm25) == len(dense):
        raise ValueError(
            f"feature columns differ in length: fused {len(fused)}, bm25 {len(bm25)}, "
            f"dense {len(dense)}"
        )
    columns: dict[str, list[float | None]] = {
        "fused": list(fused),
        "bm25": list(bm25),
        "dense": list(dense),
    }
    values = np.zeros((len(fused), len(FEATURE_NAMES)), dtype=np.float32)
    missing: dict[str, int] = {}
    for j, name in enumerate(FEATURE_NAMES):
        values[:, j], missing[name] = _minmax(columns[name])
    return WindowFeatures(values=values, missing=missing)


def features_from_stage_scores(
    scores: Sequence[float], stage_scores: Sequence[dict[str, float]]
) -> WindowFeatures:
    """Features from the pipeline's view of a window: each hit's first-stage score and its
    per-stage scores (``{"bm25": ..., "dense": ...}``, either may be absent)."""
    return window_features(
        list(scores),
        [s.get("bm25") for s in stage_scores],
        [s.get("dense") for s in stage_scores],
    )


#: the features each first-stage mode can provide
PROVIDED_BY_BASE: dict[str, frozenset[str]] = {
    "bm25": frozenset({"fused", "bm25"}),
    "dense": frozenset({"fused", "dense"}),
    "hybrid": frozenset({"fused", "bm25", "dense"}),
}


#: what an embedder in process can add to any first stage
COMPUTABLE_IN_PROCESS: frozenset[str] = frozenset({"dense"})


def unavailable_features(
    needed: Sequence[str], base: str, *, computable: Sequence[str] = ()
) -> list[str]:
    """The features in ``needed`` that a ``base`` first stage cannot provide, nor
    ``computable`` (what the caller can compute in process) cover."""
    provided = PROVIDED_BY_BASE.get(base, frozenset()) | set(computable)
    return [name for name in needed if name not in provided]


def dense_cosines(encoder: TextEncoder, query: str, passages: Sequence[str]) -> np.ndarray:
    """Cosine similarity of ``query`` with each passage under ``encoder`` (unit vectors)."""
    question = encode_queries(encoder, [query])[0]
    vectors = encoder.encode(list(passages))
    return np.asarray(vectors @ question, dtype=np.float32).reshape(len(passages))


def features_for_texts(encoder: TextEncoder, query: str, passages: Sequence[str]) -> WindowFeatures:
    """Features of texts no first stage scored (the rerank API), computed in process as a
    hybrid search would give them: ``dense`` the embedder's cosine, ``bm25`` BM25 over the
    texts themselves (missing where a text shares no word with the query, as it would be
    missing from Elasticsearch's BM25 list), ``fused`` the two fused by linear min-max at the
    default weights (see docs/experiments/defaults.md, the rerank API)."""
    cosines = dense_cosines(encoder, query, passages).tolist()
    lexical = bm25_scores(query, passages).tolist()
    keys = [str(i) for i in range(len(cosines))]
    matched = {key: score for key, score in zip(keys, lexical, strict=True) if score > 0.0}
    dense = dict(zip(keys, cosines, strict=True))
    fused = linear([matched, dense], weights=DEFAULT_WEIGHTS["linear"])
    bm25 = [matched.get(key) for key in keys]
    return window_features([fused[key] for key in keys], bm25, cosines)


class FeatureUnavailable(SearchError):
    """The cross-encoder reads first-stage features that this first stage cannot provide."""

    def __init__(self, message: str, features: Sequence[str]) -> None:
        super().__init__(message)
        self.features = list(features)


def require_features(needed: Sequence[str], base: str, *, computable: Sequence[str] = ()) -> None:
    """:class:`FeatureUnavailable` naming the features in ``needed`` that ``base`` lacks and
    that are not ``computable`` in process."""
    missing = unavailable_features(needed, base, computable=computable)
    if missing:
        raise FeatureUnavailable(
            f"the cross-encoder reads the first-stage feature(s) {', '.join(missing)}, which a "
            f"{base!r} first stage cannot provide; rerank a hybrid first stage (BM25 + kNN on "
            "an index with embeddings)",
            missing,
        )
