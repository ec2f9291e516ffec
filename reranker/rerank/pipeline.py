"""The query path as one object: first stage → cross-encoder → signals → blend, with
per-stage timings.

Every assembly goes through :func:`build_pipeline` from a :class:`QueryPath`: the CLI
(`reranker search --rerank`, `reranker eval --modes ...,rerank`, `reranker ltr log-features`)
calls :meth:`Pipeline.search`, the proxy (which runs its own async first stage)
:meth:`Pipeline.rerank`; nothing else composes the stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from reranker.blend.blends import Blend, blend_version
from reranker.blend.features import build_feature_batch
from reranker.blend.signals import FeatureBatch, SignalConfig, extract
from reranker.corpus import passage_text
from reranker.errors import ConfigError, ModelError, SearchError
from reranker.rerank.capabilities import ScoreMemory, signal_heads_of
from reranker.rerank.cascade import (
    DEFAULT_CASCADE_K,
    Cascade,
    cascade_order,
    cascade_scores,
    cascade_split,
    check_cascade_models,
    is_first_stage_student,
)
from reranker.rerank.diversity import Diversity, diversify
from reranker.rerank.features import (
    COMPUTABLE_IN_PROCESS,
    PROVIDED_BY_BASE,
    dense_cosines,
    features_from_stage_scores,
    require_features,
)
from reranker.rerank.heads import PREDICTED_PREFIX, predicted_feature
from reranker.rerank.passages import Combine, by_passages
from reranker.rerank.personal import Personalization, personalize
from reranker.rerank.rescore import Rescore
from reranker.rerank.scorer import PairScorer, ScoreTimeout
from reranker.retrieval.first_stage import MODES, FirstStage, Hit, HybridOptions

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from reranker.retrieval.embed_cache import TextEncoder

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
    student: float | None = None  # a cascade's student logit (the whole window)
    stage_scores: dict[str, float] = field(default_factory=dict)
    features: dict[str, float] | None = None  # the blend's inputs, by name
    predicted: dict[str, float] | None = None  # a multi-task model's signal heads, by head
    explanation: dict[str, Any] | None = None  # each feature's value and contribution
    vector: list[float] | None = None  # the stored embedding (diversity reads it)
    diversity: dict[str, Any] | None = None  # why its place (diversity.Placement)
    personal: dict[str, float] | None = None  # its profile similarity and contribution
    rescore: float | None = None  # the second embedder's cosine, normalised over the window


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
    cascade: dict[str, Any] | None = None
    """With a cascade: the student's id and ``k`` (how many hits the full model rescored)."""
    diversity: dict[str, Any] | None = None
    """With diversity: its lambda and duplicate threshold."""
    personal: dict[str, Any] | None = None
    """Personalised: the personal feature's weight and how many clicks built the profile."""
    rescore: dict[str, Any] | None = None
    """Where the second embedder's cosine was added: its id and weight."""


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
        cascade: Cascade | None = None,
        predict_signals: bool = False,
        encoder: TextEncoder | None = None,
        diversity: Diversity | None = None,
        personal: Personalization | None = None,
        rescore: Rescore | None = None,
    ) -> None:
        """``predict_signals`` reads a multi-task model's signal heads into each hit's
        ``predicted`` (a blend reading ``predicted_*`` features turns it on itself).
        ``encoder`` computes the dense score a first-stage-aware model reads where the first
        stage gave none (a BM25-only search). ``diversity`` diversifies the final window
        (swaps or MMR) over the hits' stored vectors (:mod:`reranker.rerank.diversity`);
        ``personal``, before it, adds a user's profile similarity
        (:mod:`reranker.rerank.personal`); ``rescore`` a second embedder's cosine to each
        logit (:mod:`reranker.rerank.rescore`)."""
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
        needed = tuple(scorer.feature_names) if scorer is not None else ()
        computable = tuple(COMPUTABLE_IN_PROCESS) if encoder is not None else ()
        require_features(needed, base, computable=computable)
        self.needs_features = bool(needed)
        self.encoder = encoder
        #: the dense score is computed here, not read from the first stage
        self.computes_dense = "dense" in needed and "dense" not in PROVIDED_BY_BASE.get(
            base, frozenset()
        )
        self.signal_heads: tuple[str, ...] = signal_heads_of(scorer)
        wanted = [
            n[len(PREDICTED_PREFIX) :]
            for n in (blend.feature_names if blend is not None else ())
            if n.startswith(PREDICTED_PREFIX)
        ]
        lacking = [h for h in wanted if h not in self.signal_heads]
        if lacking:
            model = scorer.model_id if scorer is not None else "no model"
            raise SearchError(
                f"the blend reads {', '.join(predicted_feature(h) for h in lacking)}, but "
                f"{model} has no such head (it has: {', '.join(self.signal_heads) or 'none'})"
            )
        self.predict_signals = bool(wanted) or (predict_signals and bool(self.signal_heads))
        self.cascade = cascade
        self.diversity = diversity
        self.personal = personal
        self.rescore = rescore
        if cascade is not None:
            if scorer is None:
                raise SearchError("a cascade needs the full model; no scorer was given")
            if not 1 <= cascade.k <= window:
                raise SearchError(
                    f"the cascade's k must be between 1 and the window ({window}), got {cascade.k}"
                )
            if blend is not None:
                raise SearchError("a cascade cannot be combined with a blend yet")

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
        hits = ranked_hits(candidates)
        degraded = None
        missing: dict[str, int] = {}
        if self.scorer is not None and hits:
            started = time.perf_counter()
            try:
                bonus = self._rescore(text, candidates, hits, missing, timings)
                pairs, features = self.scorer_inputs(text, candidates, missing)
                if self.cascade is not None:
                    first_stage = [h.score for h in candidates]
                    cascaded = self._cascade(pairs, features, first_stage, deadline, timings, bonus)
                elif self.predict_signals:
                    logits, predicted = self.scorer.score_with_signals(  # type: ignore[attr-defined]
                        pairs, deadline=deadline, features=features
                    )
                    check_scores(logits, len(candidates))
                    for i, hit in enumerate(hits):
                        hit.predicted = {h: float(v[i]) for h, v in predicted.items()}
                else:
                    logits = self.scorer.score(pairs, deadline=deadline, features=features)
                    check_scores(logits, len(candidates))
            except ModelError as exc:
                if not self.fail_open:
                    raise
                cause: DegradedKind = "timeout" if isinstance(exc, ScoreTimeout) else "error"
                degraded = Degraded(cause, f"reranker {cause}: {exc}")
                log.warning("scorer failed, first-stage order returned: %s", exc)
            else:
                if self.cascade is not None:
                    order, student, final, relevance = cascaded
                    for i, hit in enumerate(hits):
                        hit.student, hit.score, hit.relevance = student[i], final[i], relevance[i]
                    hits = [hits[i] for i in order]
                    timings["rerank"] = (time.perf_counter() - started) * 1000
                else:
                    combined = logits if bonus is None else logits + bonus
                    for hit, logit, score in zip(
                        hits, logits.tolist(), combined.tolist(), strict=True
                    ):
                        hit.relevance = float(logit)
                        hit.score = float(score)
                    timings["rerank"] = (time.perf_counter() - started) * 1000
                    if self.blend is not None:
                        started = time.perf_counter()
                        self._apply_blend(hits, logits)
                        timings["blend"] = (time.perf_counter() - started) * 1000
                    hits.sort(key=lambda h: (-h.score, h.first_stage_rank))
        if self.personal is not None:
            started = time.perf_counter()
            hits = personalize(hits, self.personal, explain=self.explain)
            timings["personal"] = (time.perf_counter() - started) * 1000
        if self.diversity is not None:
            started = time.perf_counter()
            hits = diversify(hits, self.diversity, explain=self.explain)
            timings["diversity"] = (time.perf_counter() - started) * 1000
        return self._result(hits[:k], timings, degraded, missing)

    def _result(
        self,
        hits: list[RankedHit],
        timings: dict[str, float],
        degraded: Degraded | None,
        missing: dict[str, int],
    ) -> PipelineResult:
        """The reranked ``hits`` with what this pipeline is (model, blend, cascade, diversity)."""
        return PipelineResult(
            hits=hits,
            window=self.window,
            timings_ms=timings,
            degraded=degraded,
            model=self.scorer.model_id if self.scorer else None,
            blend=f"{self.blend.kind}@{blend_version(self.blend)}" if self.blend else None,
            missing_features=missing,
            cascade=(
                {"model": self.cascade.student_id, "k": self.cascade.k}
                if self.cascade is not None
                else None
            ),
            diversity=self.diversity.describe() if self.diversity is not None else None,
            personal=self.personal.describe() if self.personal is not None else None,
            rescore=(
                {"embedder": self.rescore.model_id, "weight": self.rescore.weight}
                if self.rescore is not None and any(h.rescore is not None for h in hits)
                else None
            ),
        )

    def _cascade(
        self,
        pairs: list[tuple[str, str]],
        features: np.ndarray | None,
        first_stage: Sequence[float],
        deadline: float | None,
        timings: dict[str, float],
        bonus: np.ndarray | None = None,
    ) -> tuple[list[int], list[float], list[float], list[float | None]]:
        """The cascade over ``pairs`` (see :class:`Cascade`): the window's positions in
        cascade order, and per position the cheap level's score, the final score and the full
        model's logit (``None`` beyond the top k). ``features`` are the whole window's (a
        first-stage-aware full model reads its head's rows); ``first_stage`` the window's
        first-stage scores, the cheap level when the cascade has no student; ``bonus`` what
        the second embedder adds to each position's logit (:meth:`_rescore`). Timings:
        ``student`` (the full model's share is the rest of ``rerank``)."""
        assert self.cascade is not None and self.scorer is not None
        started = time.perf_counter()
        if self.cascade.scorer is None:
            student = np.asarray(first_stage, dtype=np.float32)
        else:
            student = self.cascade.scorer.score(pairs, deadline=deadline)
        check_scores(student, len(pairs))
        timings["student"] = (time.perf_counter() - started) * 1000
        student_list = [float(x) for x in student.tolist()]
        head, _ = cascade_split(student_list, self.cascade.k)
        full = self.scorer.score(
            [pairs[i] for i in head],
            deadline=deadline,
            features=None if features is None else features[head],
        )
        check_scores(full, len(head))
        logits = [float(x) for x in full.tolist()]
        full_list = (
            logits
            if bonus is None
            else [x + float(bonus[i]) for x, i in zip(logits, head, strict=True)]
        )
        order = cascade_order(student_list, full_list, self.cascade.k)
        final = cascade_scores(student_list, head, full_list)
        relevance: list[float | None] = [None] * len(pairs)
        for i, logit in zip(head, logits, strict=True):
            relevance[i] = logit
        return order, student_list, final, relevance

    def _rescore(
        self,
        text: str,
        candidates: Sequence[Hit],
        hits: Sequence[RankedHit],
        missing: dict[str, int],
        timings: dict[str, float],
    ) -> np.ndarray | None:
        """What the second embedder adds to each candidate's logit: its weight × the cosine
        normalised over the window, also kept in each hit's ``rescore``. ``None`` without a
        second embedder, or when a candidate has no vector of it (counted in
        ``missing["rescore"]``): a window is rescored whole or not at all, so no hit is
        ranked down for lacking a vector. Nor with a blend: it reads the model's own logit,
        as `reranker ltr log-features` logged it for the fit."""
        if self.rescore is None or self.blend is not None:
            return None
        started = time.perf_counter()
        similarity, lacking = self.rescore.similarities(
            text, [h.rescore_vector for h in candidates]
        )
        if lacking:
            missing["rescore"] = lacking
            return None
        for hit, value in zip(hits, similarity.tolist(), strict=True):
            hit.rescore = float(value)
        timings["rescore"] = (time.perf_counter() - started) * 1000
        return np.asarray(self.rescore.weight * similarity, dtype=np.float64)

    def scorer_inputs(
        self, text: str, candidates: Sequence[Hit], missing: dict[str, int] | None = None
    ) -> tuple[list[tuple[str, str]], np.ndarray | None]:
        """The (query, passage) pairs the scorer reads and, for a first-stage-aware model,
        their first-stage features (defaults counted into ``missing``)."""
        pairs = [(text, self.passage(h)) for h in candidates]
        stage_scores = [h.stage_scores for h in candidates]
        if self.needs_features and self.computes_dense:
            assert self.encoder is not None
            cosines = dense_cosines(self.encoder, text, [p for _, p in pairs]).tolist()
            stage_scores = [{**s, "dense": c} for s, c in zip(stage_scores, cosines, strict=True)]
        return pairs, self._features(candidates, stage_scores, {} if missing is None else missing)

    def uncached_pairs(self, text: str, candidates: Sequence[Hit]) -> list[tuple[str, str]]:
        """The pairs reranking ``candidates`` would send to a model: the window's pairs whose
        score is not in the scorer's memory (all of them for a scorer without one; none means
        reranking costs no model call). The proxy admits and times a search by these, not by
        its window, and serves a fully cached one without the scorer's queue."""
        memory = self.scorer if isinstance(self.scorer, ScoreMemory) else None
        if (
            memory is None
            or (self.cascade is not None and self.cascade.scorer is not None)
            or self.computes_dense
        ):
            # no cache to ask (or a model call before it can be asked: a cascade's student,
            # the embedder for the dense feature; never inline): the scoring call's business
            return [(text, self.passage(h)) for h in candidates]
        pairs, features = self.scorer_inputs(text, candidates)
        if self.cascade is None:
            rows = memory.uncached(pairs, features, with_signals=self.predict_signals)
            return [pairs[i] for i in rows]
        head, _ = cascade_split([h.score for h in candidates], self.cascade.k)
        head_pairs = [pairs[i] for i in head]
        rows = memory.uncached(head_pairs, None if features is None else features[head])
        return [head_pairs[i] for i in rows]

    def _features(
        self,
        candidates: Sequence[Hit],
        stage_scores: Sequence[dict[str, float]],
        missing: dict[str, int],
    ) -> np.ndarray | None:
        if not self.needs_features:
            return None
        window = features_from_stage_scores([h.score for h in candidates], stage_scores)
        # a hit missing from one list gets the documented floor; count it, never hide it
        missing.update({name: n for name, n in window.missing.items() if n})
        return window.values

    def _apply_blend(self, hits: list[RankedHit], logits: np.ndarray) -> None:
        assert self.blend is not None
        names = self.blend.feature_names
        signal_batch: FeatureBatch | None = None
        if self.signals is not None and self.signals.signals:
            signal_batch = extract([h.source for h in hits], self.signals)
        signal_batch = with_predictions(signal_batch, hits)
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


def ranked_hits(candidates: Sequence[Hit]) -> list[RankedHit]:
    """The candidates as ranked hits, their first-stage rank and score kept."""
    return [
        RankedHit(
            id=h.id,
            score=h.score,
            source=h.source,
            first_stage_rank=rank,
            first_stage_score=h.score,
            stage_scores=dict(h.stage_scores),
            vector=h.vector,
        )
        for rank, h in enumerate(candidates, start=1)
    ]


def with_predictions(
    signals: FeatureBatch | None, hits: Sequence[RankedHit]
) -> FeatureBatch | None:
    """``signals`` with one more column per signal head the hits carry a prediction of
    (``predicted_<head>``; a hit without one gets 0.0, flagged as a default)."""
    heads = sorted({h for hit in hits for h in (hit.predicted or {})})
    if not heads:
        return signals
    values = np.array([[(hit.predicted or {}).get(h, np.nan) for h in heads] for hit in hits])
    missing = ~np.isfinite(values)
    values[missing] = 0.0
    names = tuple(predicted_feature(h) for h in heads)
    if signals is None:
        return FeatureBatch(values=values, names=names, defaults_used=missing)
    return FeatureBatch(
        values=np.hstack([signals.values, values]),
        names=(*signals.names, *names),
        defaults_used=np.hstack([signals.defaults_used, missing]),
    )


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
    :mod:`reranker.rerank.remote`)."""
    scorer_api_key: str | None = field(default=None, repr=False)
    """The key those endpoints want (``Settings.scorer_api_key``)."""
    cascade_model: Path | None = None
    """A cascade's student (an exported cross-encoder from `reranker distill`): it scores the
    whole window, the full model only its top ``cascade_k``; ``None`` = no cascade."""
    cascade_k: int | None = None
    """How many of the student's top hits the full model rescores (1..``window``)."""
    passages: Combine | None = None
    """Score documents longer than the model reads by overlapping passages, combined by
    ``max`` or ``firstmax`` (:mod:`reranker.rerank.passages`); ``None`` = truncate."""
    diversity: Diversity | None = None
    """Swaps or MMR over the final window with the index's embeddings; ``None`` = the order
    (λ = 1 still fetches the embeddings, to measure a list's redundancy)."""


def scorer_for(path: QueryPath) -> PairScorer:
    """The cross-encoder ``path`` names, behind the logit cache when it has one."""
    from reranker.rerank.cache import CachedScorer
    from reranker.rerank.remote import RemoteScorer
    from reranker.rerank.scorer import ServedScorer, load_scorer

    scorer: ServedScorer
    if path.scorer_urls:
        if path.max_length is not None:
            raise ConfigError(
                "a max length applies to a local model: a remote scorer truncates at its own"
            )
        scorer = RemoteScorer(path.scorer_urls, api_key=path.scorer_api_key)
    else:
        scorer = load_scorer(path.model, path.variant, max_length=path.max_length)
    served: PairScorer = scorer
    if path.score_cache is not None:
        served = CachedScorer.on_disk(scorer, path.score_cache)
    if path.passages is not None:
        if path.scorer_urls:
            raise ConfigError("passages need a local model: a remote scorer truncates at its own")
        served = by_passages(served, path.passages)
    return served


def cascade_for(path: QueryPath, full: PairScorer | None = None) -> Cascade | None:
    """The cascade ``path`` names (``None`` without ``cascade_model``): the student loaded,
    behind the logit cache when ``path.score_cache`` is set, and checked against ``full``
    (when given) by :func:`check_cascade_models`."""
    if path.cascade_model is None:
        if path.cascade_k is not None:
            raise ConfigError("a cascade k needs a cascade model (cascade_model)")
        return None
    from reranker.rerank.cache import CachedScorer
    from reranker.rerank.scorer import load_scorer

    k = path.cascade_k if path.cascade_k is not None else DEFAULT_CASCADE_K
    if not 1 <= k <= path.window:
        raise ConfigError(
            f"the cascade's k must be between 1 and the window ({path.window}), got {k}"
        )
    if is_first_stage_student(path.cascade_model):
        return Cascade(None, k)
    student = load_scorer(path.cascade_model)
    if full is not None:
        check_cascade_models(full, student)
    if path.score_cache is None:
        return Cascade(student, k)
    return Cascade(CachedScorer.on_disk(student, path.score_cache), k)


def build_pipeline(
    path: QueryPath,
    client: Elasticsearch | None,
    encoder: TextEncoder | None,
    *,
    scorer: PairScorer | None = None,
    blend: Blend | None = None,
    signals: SignalConfig | None = None,
    explain: bool = False,
    cascade: Cascade | None = None,
    personal: Personalization | None = None,
    rescore: Rescore | None = None,
) -> Pipeline:
    """The query path as ``path`` says: the first stage on ``path.index`` (reading the text
    fields and the signals' source fields; none without a ``client``: the caller fetches the
    candidates and calls :meth:`Pipeline.rerank`), the cross-encoder (``scorer`` if given, to
    share one between pipelines, else loaded from ``path.model``/``path.variant``, behind the
    logit cache when ``path.score_cache`` is set), then the blend. A cascade is ``cascade`` if
    given (to share a student between pipelines), else the one ``path`` names
    (:func:`cascade_for`). ``rescore``: the second embedder, for an index that holds its
    vectors (:mod:`reranker.rerank.rescore`)."""
    stage = None
    if client is not None:
        fields = [*path.source_fields, *(signals.source_fields if signals is not None else ())]
        stage = FirstStage(
            client,
            path.index,
            encoder,
            with_source=list(dict.fromkeys(fields)),
            with_vectors=path.diversity is not None or personal is not None,
            with_rescore_vectors=rescore is not None and path.rerank,
        )
    if scorer is None and path.rerank:
        scorer = scorer_for(path)
    if cascade is None and path.rerank:
        cascade = cascade_for(path, scorer)
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
        cascade=cascade if path.rerank else None,
        encoder=encoder,
        diversity=path.diversity,
        personal=personal,
        rescore=rescore if path.rerank else None,
    )
