"""The query path as one object: first stage → cross-encoder → signals → blend, with
per-stage timings.

Every assembly goes through :func:`build_pipeline` from a :class:`QueryPath`: the CLI
(`reranker search --rerank`, `reranker eval --modes ...,rerank`, `reranker ltr log-features`)
calls :meth:`Pipeline.search`, the proxy (which runs its own async first stage)
:meth:`Pipeline.rerank`; nothing else composes the stages.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from reranker.blend import Blend, blend_version, build_feature_batch
from reranker.corpus import passage_text
from reranker.errors import ConfigError, ModelError, SearchError
from reranker.first_stage import MODES, FirstStage, Hit, HybridOptions
from reranker.first_stage_features import features_from_stage_scores, require_features
from reranker.scoring import PairScorer, ScoreTimeout
from reranker.signals import FeatureBatch, SignalConfig, extract

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from reranker.embed_cache import TextEncoder

log = logging.getLogger(__name__)


@dataclass
class RankedHit:
    """A hit after reranking; ``score`` is the final score, the rest explains it."""

    id: str
    score: float
    source: dict[str, Any] | None
    first_stage_rank: int
    first_stage_score: float
    relevance: float | None = None  # the cross-encoder's logit
    stage_scores: dict[str, float] = field(default_factory=dict)
    features: dict[str, float] | None = None  # the blend's inputs, by name
    explanation: dict[str, Any] | None = None  # each feature's value and contribution


DegradedKind = Literal["timeout", "error", "unavailable", "circuit_open", "es_partial"]


@dataclass(frozen=True)
class Degraded:
    """Why an answer is not what was asked for (first-stage order, partial results): a kind
    to count and map to statuses by, and a reason to show."""

    kind: DegradedKind
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass
class PipelineResult:
    hits: list[RankedHit]
    window: int
    timings_ms: dict[str, float]
    degraded: Degraded | None = None
    model: str | None = None
    blend: str | None = None  # "<kind>@<version>" of the blend that ordered the hits
    missing_features: dict[str, int] = field(default_factory=dict)
    """First-stage features given the documented default (a hit absent from one list), by
    feature; empty unless the model reads first-stage features."""


def check_scores(scores: np.ndarray, expected: int) -> None:
    """A scorer's output must be one finite number per pair, else it counts as its failure."""
    if np.shape(scores) != (expected,):
        raise ModelError(f"the scorer returned {np.shape(scores)} scores for {expected} pairs")
    if not np.isfinite(scores).all():
        raise ModelError("the scorer returned non-finite scores")


class Pipeline:
    """First-stage recall of ``window`` candidates, reranked by ``scorer`` when there is one,
    then ordered by ``blend`` over the cross-encoder's score, the first-stage score and the
    ``signals`` when a blend is given (without one, the cross-encoder's logit is the score).

    If the scorer fails and ``fail_open`` is set, the first-stage order comes back with
    ``degraded`` saying why, never an empty list.
    """

    def __init__(
        self,
        first_stage: FirstStage | None,
        scorer: PairScorer | None = None,
        *,
        base: str = "bm25",
        window: int = 100,
        hybrid: HybridOptions | None = None,
        fields: Sequence[str] = ("title", "text"),
        fail_open: bool = True,
        blend: Blend | None = None,
        signals: SignalConfig | None = None,
        explain: bool = False,
    ) -> None:
        if base not in MODES:
            raise SearchError(f"unknown first-stage mode {base!r}; use one of {', '.join(MODES)}")
        if window < 1:
            raise SearchError("window must be at least 1")
        self.first_stage = first_stage
        self.scorer = scorer
        self.base = base
        self.window = window
        self.hybrid = hybrid or HybridOptions()
        self.fields = tuple(fields)
        self.fail_open = fail_open
        self.blend = blend
        self.signals = signals
        self.explain = explain
        if blend is not None and scorer is None:
            raise SearchError("a blend needs the cross-encoder's scores; no scorer was given")
        needed = tuple(getattr(scorer, "feature_names", ())) if scorer is not None else ()
        require_features(needed, base)
        self.needs_features = bool(needed)

    def search(
        self,
        text: str,
        *,
        k: int = 10,
        vector: Sequence[float] | None = None,
        deadline: float | None = None,
    ) -> PipelineResult:
        if self.first_stage is None:
            raise SearchError("this pipeline has no first stage: give it candidates (rerank)")
        started = time.perf_counter()
        candidates = self.first_stage.search(
            text, self.base, max(self.window, k), hybrid=self.hybrid, vector=vector
        )
        first_stage_ms = (time.perf_counter() - started) * 1000
        result = self.rerank(text, candidates, k=k, deadline=deadline)
        result.timings_ms = {"first_stage": first_stage_ms, **result.timings_ms}
        return result

    def rerank(
        self,
        text: str,
        candidates: Sequence[Hit],
        *,
        k: int = 10,
        deadline: float | None = None,
    ) -> PipelineResult:
        """Rerank candidates a first stage already fetched (in its order): cross-encoder,
        then the blend; fail open as :meth:`search` does."""
        timings: dict[str, float] = {}
        hits = [
            RankedHit(
                id=h.id,
                score=h.score,
                source=h.source,
                first_stage_rank=rank,
                first_stage_score=h.score,
                stage_scores=dict(h.stage_scores),
            )
            for rank, h in enumerate(candidates, start=1)
        ]
        degraded = None
        missing: dict[str, int] = {}
        if self.scorer is not None and hits:
            started = time.perf_counter()
            try:
                pairs, features = self.scorer_inputs(text, candidates, missing)
                logits = self.scorer.score(pairs, deadline=deadline, features=features)
                check_scores(logits, len(candidates))
            except ModelError as exc:
                if not self.fail_open:
                    raise
                cause: DegradedKind = "timeout" if isinstance(exc, ScoreTimeout) else "error"
                degraded = Degraded(cause, f"reranker {cause}: {exc}")
                log.warning("scorer failed, first-stage order returned: %s", exc)
            else:
                for hit, logit in zip(hits, logits.tolist(), strict=True):
                    hit.relevance = float(logit)
                    hit.score = float(logit)
                timings["rerank"] = (time.perf_counter() - started) * 1000
                if self.blend is not None:
                    started = time.perf_counter()
                    self._apply_blend(hits, logits)
                    timings["blend"] = (time.perf_counter() - started) * 1000
                hits.sort(key=lambda h: (-h.score, h.first_stage_rank))
        return PipelineResult(
            hits=hits[:k],
            window=self.window,
            timings_ms=timings,
            degraded=degraded,
            model=self.scorer.model_id if self.scorer else None,
            blend=f"{self.blend.kind}@{blend_version(self.blend)}" if self.blend else None,
            missing_features=missing,
        )

    def scorer_inputs(
        self, text: str, candidates: Sequence[Hit], missing: dict[str, int] | None = None
    ) -> tuple[list[tuple[str, str]], np.ndarray | None]:
        """The (query, passage) pairs the scorer reads and, for a first-stage-aware model,
        their first-stage features (defaults counted into ``missing``)."""
        pairs = [(text, self.passage(h)) for h in candidates]
        return pairs, self._features(candidates, {} if missing is None else missing)

    def scores_cached(self, text: str, candidates: Sequence[Hit]) -> bool:
        """Whether the scorer has every candidate's score in memory already (a
        :class:`~reranker.scoring.CachedScorer` over an LRU), so reranking costs no model
        call: the proxy then skips the scorer's queue."""
        covers = getattr(self.scorer, "covers", None)
        if covers is None or not candidates:
            return False
        pairs, features = self.scorer_inputs(text, candidates)
        return bool(covers(pairs, features))

    def _features(self, candidates: Sequence[Hit], missing: dict[str, int]) -> np.ndarray | None:
        if not self.needs_features:
            return None
        window = features_from_stage_scores(
            [h.score for h in candidates], [h.stage_scores for h in candidates]
        )
        # a hit missing from one list gets the documented floor; count it, never hide it
        missing.update({name: n for name, n in window.missing.items() if n})
        return window.values

    def _apply_blend(self, hits: list[RankedHit], logits: np.ndarray) -> None:
        assert self.blend is not None
        names = self.blend.feature_names
        signal_batch: FeatureBatch | None = None
        if self.signals is not None and self.signals.signals:
            signal_batch = extract([h.source for h in hits], self.signals)
        batch = build_feature_batch(
            logits, [h.first_stage_score for h in hits], signal_batch, names
        )
        scores = self.blend.score(batch.values)
        explanations = (
            self.blend.explain(batch.values, defaults=batch.defaults_used) if self.explain else None
        )
        for i, hit in enumerate(hits):
            hit.score = float(scores[i])
            hit.features = dict(zip(names, batch.values[i].tolist(), strict=True))
            if explanations is not None:
                hit.explanation = explanations[i].to_dict()

    def passage(self, hit: Hit) -> str:
        """The text the cross-encoder reads: the configured fields of ``_source``, joined."""
        source = hit.source or {}
        if self.fields == ("title", "text"):
            return passage_text(source)
        return " ".join(str(source.get(f) or "").strip() for f in self.fields).strip()


@dataclass(frozen=True)
class QueryPath:
    """Everything a query path is assembled from (CLI search, eval, ltr logging, the proxy):
    one settings object, so every caller builds the same pipeline."""

    index: str
    base: str = "hybrid"
    window: int = 100
    hybrid: HybridOptions = field(default_factory=HybridOptions)
    rerank: bool = True
    model: Path | None = None
    """The cross-encoder folder; ``None`` = ``RERANKER_MODEL`` or the shipped model."""
    variant: str | None = None
    max_length: int | None = None
    """Tokens the cross-encoder reads per (query, passage) pair, truncated longest-first;
    ``None`` = the model card's ``max_length``. Only for a local model (a remote scorer
    truncates at its own length)."""
    score_cache: Path | None = None
    """Where logits are cached (evaluation and feature logging); ``None`` = no cache."""
    source_fields: tuple[str, ...] = ("title", "text")
    """The ``_source`` fields the first stage fetches."""
    passage_fields: tuple[str, ...] = ("title", "text")
    """The ``_source`` fields the cross-encoder reads, joined (see :meth:`Pipeline.passage`)."""
    fail_open: bool = True
    """A failing scorer gives the first-stage order (``degraded``) instead of an error."""
    scorer_urls: tuple[str, ...] = ()
    """Rerank endpoints to score through instead of loading ``model`` (see
    :mod:`reranker.remote_scorer`)."""


def scorer_for(path: QueryPath) -> PairScorer:
    """The cross-encoder ``path`` names, behind the logit cache when it has one."""
    from reranker.remote_scorer import RemoteScorer
    from reranker.scoring import CachedScorer, ServedScorer, load_scorer

    scorer: ServedScorer
    if path.scorer_urls:
        if path.max_length is not None:
            raise ConfigError(
                "a max length applies to a local model: a remote scorer truncates at its own"
            )
        scorer = RemoteScorer(
            path.scorer_urls, api_key=os.environ.get("RERANKER_PROXY_SCORER_API_KEY")
        )
    else:
        scorer = load_scorer(path.model, path.variant, max_length=path.max_length)
    if path.score_cache is None:
        return scorer
    return CachedScorer.on_disk(scorer, path.score_cache)


def build_pipeline(
    path: QueryPath,
    client: Elasticsearch | None,
    encoder: TextEncoder | None,
    *,
    scorer: PairScorer | None = None,
    blend: Blend | None = None,
    signals: SignalConfig | None = None,
    explain: bool = False,
) -> Pipeline:
    """The query path as ``path`` says: the first stage on ``path.index`` (reading the text
    fields and the signals' source fields; none without a ``client``: the caller fetches the
    candidates and calls :meth:`Pipeline.rerank`), the cross-encoder (``scorer`` if given, to
    share one between pipelines, else loaded from ``path.model``/``path.variant``, behind the
    logit cache when ``path.score_cache`` is set), then the blend."""
    stage = None
    if client is not None:
        fields = [*path.source_fields, *(signals.source_fields if signals is not None else ())]
        stage = FirstStage(client, path.index, encoder, with_source=list(dict.fromkeys(fields)))
    if scorer is None and path.rerank:
        scorer = scorer_for(path)
    return Pipeline(
        stage,
        scorer if path.rerank else None,
        base=path.base,
        window=path.window,
        hybrid=path.hybrid,
        fields=path.passage_fields,
        fail_open=path.fail_open,
        blend=blend,
        signals=signals if blend is not None else None,
        explain=explain,
    )
