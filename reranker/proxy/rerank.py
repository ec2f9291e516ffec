"""The rerank handler: a search with a ``rerank`` object, from its body to the
Elasticsearch-shaped answer.

The client's own query (and kNN on ``embedding`` where the search is hybrid) fetches
``window`` candidates from Elasticsearch; they are fused
(:func:`~reranker.retrieval.first_stage.fuse`),
then reranked by the :class:`~reranker.rerank.pipeline.Pipeline` that
:func:`~reranker.rerank.pipeline.build_pipeline` assembles, in a bounded thread pool, under the
request's deadline, the admission bound and the scorer's circuit breaker. When the scorer is
unavailable, fails or overruns, the answer is the first-stage order with ``degraded`` saying
why (or, with ``fail_open: false``, an error). The answer's ``_score`` is the final score.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from elasticsearch import AsyncElasticsearch
from starlette.requests import Request

from reranker.errors import ConfigError, ModelError
from reranker.es.mappings import embedder_stamp
from reranker.proxy import errors
from reranker.proxy.answer import (
    STAGES,
    Plan,
    answer_model,
    log_document,
    search_answer,
    stage_timings,
)
from reranker.proxy.blends import BlendCatalog, NamedBlend
from reranker.proxy.budget import Budget, scorer_share_s
from reranker.proxy.candidates import (
    FirstStageResult,
    attach_vectors,
    read_hits,
    search_es,
)
from reranker.proxy.errors import ProxyError
from reranker.proxy.gate import ScoringFailure, ScoringGate
from reranker.proxy.limits import (
    Admission,
    CircuitBreaker,
    Ticket,
    estimated_tokens,
)
from reranker.proxy.metrics import ProxyMetrics
from reranker.proxy.probes import IndexProbes
from reranker.proxy.profiles import read_profile
from reranker.proxy.reload import LoadedModels
from reranker.proxy.request import (
    CONSUMED_PARAMS,
    RerankSpec,
    SourceFilter,
    check_compatible,
    extract_query_text,
    first_stage_source,
    knn_filter,
    page,
    parse_rerank,
    source_filter,
)
from reranker.proxy.rescoring import Beside, rescore_for
from reranker.proxy.settings import ProxySettings
from reranker.rerank.capabilities import FromFolder, max_length_of
from reranker.rerank.cascade import Cascade, check_cascade_models
from reranker.rerank.features import (
    COMPUTABLE_IN_PROCESS,
    FeatureUnavailable,
    require_features,
)
from reranker.rerank.passages import PassageScorer, by_passages
from reranker.rerank.personal import Personalization
from reranker.rerank.pipeline import (
    Degraded,
    Pipeline,
    PipelineResult,
    QueryPath,
    build_pipeline,
)
from reranker.rerank.rescore import Rescore
from reranker.rerank.scorer import PairScorer
from reranker.retrieval.embed_cache import TextEncoder, encode_queries
from reranker.retrieval.first_stage import Hit, fuse
from reranker.retrieval.queries import knn_clause

log = logging.getLogger(__name__)

#: with ``fail_open: false``, the error each kind of degradation becomes (the metrics label
#: is the kind itself)
FAIL_CLOSED: dict[str, Callable[[str], ProxyError]] = {
    "timeout": errors.reranker_timeout,
    "error": errors.reranker_unavailable,
    "unavailable": errors.reranker_unavailable,
    "circuit_open": errors.reranker_unavailable,
    "es_partial": errors.reranker_unavailable,
}

Searcher = Callable[[], Awaitable[AsyncElasticsearch]]
"""The client searches run with (credentials restricted to the allow-list)."""
UpstreamHeaders = Callable[[Request], dict[str, str]]
"""The client's headers that go on to Elasticsearch."""
Answer = tuple[dict[str, Any], dict[str, Any] | None]
"""A reranked search's answer, and its request-log document (``None``: not logged)."""
T = TypeVar("T")


@dataclass(frozen=True)
class SearchRequest:
    """One search with ``rerank``, as the client sent it (``body`` without ``rerank``)."""

    request: Request
    index: str
    body: dict[str, Any]
    params: dict[str, str]
    started: float  # time.perf_counter() when the search arrived
    #: the user the search's ``ext.ubi`` named (``user_id``, else ``client_id``; UBI on only)
    user: str | None = None
    #: the proxy client that sent it (:func:`reranker.proxy.clients.owner_of`)
    owner: str | None = None


@dataclass(frozen=True)
class Window:
    """The fused candidates of one search and the pipelines that rerank them."""

    index: str
    text: str
    spec: RerankSpec
    base: str
    candidates: Sequence[Hit]
    blend: NamedBlend | None
    explain: bool
    #: the served embedder, for a first-stage-aware model's dense score where kNN gave none
    encoder: TextEncoder | None = None
    #: the searching user's profile (``None``: not personalised)
    personal: Personalization | None = None
    #: the second embedder, when the index holds its vectors and the window carries them
    rescore: Rescore | None = None

    def pipeline(self, scorer: PairScorer | None, cascade: Cascade | None = None) -> Pipeline:
        """The search's pipeline, by the one builder; no scorer: the first-stage order."""
        path = QueryPath(
            index=self.index,
            base=self.base,
            window=self.spec.window,
            hybrid=self.spec.hybrid,
            rerank=scorer is not None,
            passage_fields=self.spec.fields,
            fail_open=self.spec.fail_open,
            diversity=self.spec.diversity,
        )
        named = self.blend
        return build_pipeline(
            path,
            None,  # the proxy fetched the candidates itself
            self.encoder,
            scorer=scorer,
            blend=named.blend if named is not None and scorer is not None else None,
            signals=named.signals if named is not None else None,
            explain=self.explain,
            cascade=cascade if scorer is not None else None,
            personal=self.personal,
            rescore=self.rescore,
        )

    def first_stage_order(self, why: Degraded | None = None) -> PipelineResult:
        """The candidates in first-stage order, ``degraded`` by ``why``."""
        result = self.pipeline(None).rerank(self.text, self.candidates, k=self.spec.window)
        if why is not None:
            result.degraded = why
        return result

    def unscored(self, why: Degraded) -> PipelineResult:
        """The first-stage order when the scorer was never called; the :data:`FAIL_CLOSED`
        error instead with ``fail_open: false``."""
        if not self.spec.fail_open:
            raise FAIL_CLOSED[why.kind](f"reranking was required but: {why}")
        return self.first_stage_order(why)


class RerankHandler:
    """Runs searches with ``rerank``: validation, admission, the first stage, scoring under
    the breaker, the answer and its request-log document. Owns the scorer's and the
    embedder's thread pools (:meth:`close` stops them)."""

    def __init__(
        self,
        settings: ProxySettings,
        metrics: ProxyMetrics,
        models: LoadedModels,
        admission: Admission,
        breaker: CircuitBreaker,
        *,
        searcher: Searcher,
        upstream_headers: UpstreamHeaders,
        admin: Callable[[], AsyncElasticsearch] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models = models
        self.admission = admission
        self.breaker = breaker
        self.catalog = BlendCatalog(settings.signals, settings.blends)
        self.executor = ThreadPoolExecutor(settings.scorer_workers, "reranker-scorer")
        # remote embedding waits on the network: overlap those calls as remote scoring does
        embedders = 4 if settings.es.embedder_urls else 1
        self.embed_executor = ThreadPoolExecutor(embedders, "reranker-embed")
        # the second embedder's query, beside the first stage's
        self.rescore_executor = ThreadPoolExecutor(1, "reranker-rescore")
        self.gate = ScoringGate(settings, metrics, admission, breaker, self.executor)
        self._searcher = searcher
        self._upstream_headers = upstream_headers
        self._admin = admin  # the proxy's own client: profiles are read with it, never a client's
        #: index expression → (when probed, usable for kNN, the other embedder its vectors
        #: came from if not ours)
        self.probes = IndexProbes(searcher)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.embed_executor.shutdown(wait=False, cancel_futures=True)
        self.rescore_executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ admission

    async def rerank(self, search: SearchRequest, spec_raw: Any, *, logged: bool) -> Answer:
        """The reranked search answer (the caller sends it) and, when ``logged``, its
        request-log document (the caller queues it with the status it sent); refusals are
        :class:`ProxyError`."""
        spec = parse_rerank(spec_raw, self.settings)
        check_compatible(search.body, search.params)
        pages = page(search.body, search.params, spec.window)
        if pages.size == 0:  # aggregations only: no hit is shown, so nothing is scored
            return await self._without_hits(search, spec), None
        sources = source_filter(search.body, search.params)
        text = self._query_text(search, spec)
        if spec.personal_weight is not None and search.user is None:
            raise errors.bad_request(
                "[rerank.personalize] needs to know the user: give [ext.ubi.user_id] (or "
                "client_id) on a proxy with UBI on (--ubi)"
            )
        if spec.dense and not self.settings.enable_dense:
            raise errors.bad_request("dense retrieval is switched off on this proxy")
        if spec.dense is None:
            spec = replace(spec, dense=(await self._index_embeddings(search.index))[0])
        elif spec.dense and self.models.encoder is not None:
            _, foreign = await self._index_embeddings(search.index)
            if foreign:
                raise errors.bad_request(
                    f"[{search.index}] was embedded with {foreign}; this proxy embeds queries "
                    f"with {embedder_stamp(self.models.encoder.model_id)}, so kNN would "
                    "compare different embedding spaces: reindex with this embedder, or serve "
                    "with the index's (--embedder)"
                )
        # what the first stage will really give: kNN needs the embedder too
        dense = bool(spec.dense) and self.models.encoder is not None
        if not dense and not self.models.loaded.is_set():
            # the embedder is still loading (so kNN is off and the index's embeddings unknown):
            # for a model that reads the dense score this is "not yet" (503, retry), not
            # "never" (400)
            self._check_model_features(dense, loading=True)
        self._check_model_features(dense)
        served = self.models.scorer
        if not spec.passages_given and isinstance(served, FromFolder):
            spec = replace(spec, passages=await self.probes.passages(search.index))
        if spec.passages is not None and served is not None and not isinstance(served, FromFolder):
            raise errors.bad_request(
                "[rerank.passages] needs a local model: this proxy scores through remote scorers"
            )
        blend = self.catalog.resolve(search.index, spec.blend)
        spec = self._with_default_cascade(spec, blend)
        if spec.cascade is not None:
            self._check_cascade(blend)
        ticket = self._admit(spec)
        plan = Plan(spec, pages, sources, text, blend)
        try:
            return await self._rerank_admitted(search, plan, ticket, logged=logged)
        finally:
            ticket.release()
            self.metrics.in_flight.set(self.admission.in_flight)

    @staticmethod
    def _query_text(search: SearchRequest, spec: RerankSpec) -> str:
        """The text the cross-encoder reads: ``rerank.query_text``, else the query's."""
        text = (
            spec.query_text
            or extract_query_text(search.body.get("query"))
            or search.params.get("q")
        )
        if not text or not text.strip():
            raise errors.bad_request(
                "no query text for the cross-encoder: give [rerank.query_text], or a "
                "match / multi_match / combined_fields / query_string query"
            )
        return text.strip()

    def _admit(self, spec: RerankSpec) -> Ticket:
        """A slot for this search (429 when the proxy is saturated). Whether its window can
        be scored in time is decided once the window is known (:meth:`_refuse_unscorable`):
        pairs already in the score cache cost nothing."""
        scoring = self.models.scorer is not None
        expected = round(spec.window * self.admission.tokens_per_pair)  # texts not known yet
        return self.gate.admit_or_429(
            scoring=scoring, tokens=expected, budget_s=scorer_share_s(spec.timeout_ms)
        )

    def _refuse_unscorable(self, spec: RerankSpec, uncached: int, tokens: int) -> None:
        """400 when, at the measured rate, the ``uncached`` pairs of this window (those the
        model must score, ``tokens`` tokens) cannot be scored within the request's timeout."""
        needed_s = self.admission.seconds_for(tokens)
        if needed_s is None:
            return
        budget_s = scorer_share_s(spec.timeout_ms)
        if needed_s > budget_s:
            raise errors.bad_request(
                f"[rerank.window] {spec.window} cannot be scored within [rerank.timeout_ms] "
                f"{spec.timeout_ms}: {uncached} of its pairs are not in the score cache, and "
                f"at the cross-encoder's measured {self.admission.tokens_per_s:.0f} tokens/s "
                f"here they need about {needed_s * 1000:.0f} ms of the "
                f"{budget_s * 1000:.0f} ms left for scoring; lower the window or raise the "
                "timeout"
            )

    async def _index_embeddings(self, index: str) -> tuple[bool, str | None]:
        """Whether kNN suits the index, and the foreign embedder when it does not
        (:meth:`~reranker.proxy.probes.IndexProbes.embeddings`)."""
        if not self.settings.enable_dense or self.models.encoder is None:
            return False, None
        return await self.probes.embeddings(index, self.models.encoder.model_id)

    def _check_model_features(self, dense: bool, *, loading: bool = False) -> None:
        """400 when the loaded model reads a first-stage feature this search cannot give;
        503 instead while the embedder that would give it is ``loading``."""
        scorer = self.models.scorer
        if scorer is None:
            return
        computable = COMPUTABLE_IN_PROCESS if self.models.encoder is not None else frozenset()
        try:
            require_features(
                scorer.feature_names,
                "hybrid" if dense else "bm25",
                computable=tuple(computable),
            )
        except FeatureUnavailable as exc:
            if loading:
                raise errors.reranker_unavailable(
                    f"the cross-encoder {scorer.model_id} reads [{', '.join(exc.features)}] "
                    "and the query embedder is still loading; retry shortly"
                ) from None
            raise errors.bad_request(
                f"the cross-encoder {scorer.model_id} reads the first-stage feature(s) "
                f"[{', '.join(exc.features)}], which this search cannot provide: rerank with "
                "[rerank.hybrid.dense] true on an index with embeddings"
            ) from None

    def _with_default_cascade(self, spec: RerankSpec, blend: NamedBlend | None) -> RerankSpec:
        """``spec`` with the proxy's default cascade where the request named none, asked
        for no blend, and a cascade model is there to honour it."""
        k = self.settings.default_cascade
        if k is None or not spec.cascade_default or blend is not None:
            return spec
        if self.models.student is None and not self.models.first_stage_student:
            return spec
        return replace(spec, cascade=min(k, spec.window))

    def _check_cascade(self, blend: NamedBlend | None) -> None:
        """400 when ``rerank.cascade`` cannot be honoured: no cascade model loaded (nor the
        first stage configured as the cheap level), a blend asked for too, or a student the
        loaded cross-encoder cannot lead (other tokenizer or max_length, a first-stage-aware
        student)."""
        student = self.models.student
        if student is None and not self.models.first_stage_student:
            raise errors.bad_request(
                f"[rerank.cascade] needs a cascade model, and this proxy has none "
                f"({self.models.student_error}): start it with --cascade-model "
                "(RERANKER_PROXY_CASCADE_MODEL)"
            )
        if blend is not None:
            raise errors.bad_request("[rerank.cascade] cannot be combined with a blend yet")
        scorer = self.models.scorer
        if scorer is None:
            return  # no cross-encoder: the search degrades to the first-stage order anyway
        try:
            check_cascade_models(scorer, student)
        except ConfigError as exc:
            raise errors.bad_request(f"[rerank.cascade] {exc}") from None

    # ------------------------------------------------------------------ one admitted search

    async def _rerank_admitted(
        self, search: SearchRequest, plan: Plan, ticket: Ticket, *, logged: bool
    ) -> Answer:
        spec = plan.spec
        budget = Budget.start(spec.timeout_ms, self.settings.es_budget_fraction)
        # a blend reads the model's own logit (what it was fitted on): no second embedder
        rescoring = Beside(None if plan.blend is not None else self._rescore(search.index, plan))
        try:
            first = await self._first_stage(search, spec, plan.sources, plan.text, budget)
            degraded = first.degraded()
            if spec.dense and first.dense is None:
                why = first.dense_failure or "the embedder is not loaded"
                message = f"dense retrieval unavailable: {why}"
                degraded.append(Degraded("unavailable", message))
            window = self._window(search.index, first, plan, explain=spec.explain or logged)
            personal = await self._profile(search, spec, degraded)
            rescore = await rescoring.result()
            window = replace(
                window, encoder=self.models.encoder, personal=personal, rescore=rescore
            )
            embeddings = spec.diversity is not None or personal is not None
            if embeddings or rescore is not None:
                began = time.perf_counter()
                await self._attach_vectors(
                    search, window.candidates, budget, embeddings=embeddings, rescore=rescore
                )
                first.timings_ms["es"] += (time.perf_counter() - began) * 1000
            result, rerank_ms = await self._score(window, first, budget, ticket)
        finally:
            rescoring.abandon()  # done unless the first stage failed
            if not ticket.submitted:  # else the scoring call frees its slot when it ends
                ticket.scoring_done()
        if result.degraded:
            degraded.append(result.degraded)
        for feature, count in result.missing_features.items():
            self.metrics.missing_features.labels(feature).inc(count)
        timings = stage_timings(first, result, rerank_ms, search.started)
        reason = "; ".join(map(str, degraded)) if degraded else None
        self._observe(timings)
        if reason:
            for item in degraded:
                self.metrics.degraded.labels(item.kind).inc()
        scorer = self.models.scorer
        answer = search_answer(first, result, plan, timings, reason, scorer)
        log.info(
            "reranked",
            extra={
                "index": search.index,
                "window": spec.window,
                "candidates": len(result.hits),
                "took_ms": {k: round(v, 2) for k, v in timings.items()},
                "degraded": reason,
                "blend": result.blend,
            },
        )
        if not logged:
            return answer, None
        document = log_document(
            search.index,
            plan.text,
            spec,
            plan.pages,
            result,
            timings,
            reason,
            answer,
            top=self.settings.log_top_hits,
            degraded_kind=degraded[0].kind if degraded else None,
        )
        return answer, document

    def _observe(self, timings: dict[str, float]) -> None:
        """Stage times into the metrics."""
        for stage in (*STAGES, "total"):
            if stage in timings:
                self.metrics.stage_seconds.labels(stage).observe(timings[stage] / 1000)

    @staticmethod
    def _window(index: str, first: FirstStageResult, plan: Plan, *, explain: bool) -> Window:
        """The candidates: lexical and kNN hits fused (hybrid), or the lexical ones (BM25)."""
        spec = plan.spec
        if first.dense is not None:
            base = "hybrid"
            candidates = fuse(first.lexical.hits, first.dense.hits, spec.hybrid, spec.window)
        else:
            base, candidates = "bm25", first.lexical.hits[: spec.window]
        return Window(index, plan.text, spec, base, candidates, plan.blend, explain)

    async def _without_hits(self, search: SearchRequest, spec: RerankSpec) -> dict[str, Any]:
        """``size: 0`` with ``rerank``: Elasticsearch's own answer (aggregations, totals), no
        first-stage window and no scoring; ``rerank.skipped`` says why."""
        forwarded = {k: v for k, v in search.params.items() if k not in ("from", "size")}
        upstream = {k: v for k, v in search.body.items() if k != "from"}
        upstream["size"] = 0
        _, answer = await search_es(
            await self._searcher(), search.index, upstream, params=forwarded,
            headers=self._upstream_headers(search.request), timeout_s=spec.timeout_ms / 1000,
        )  # fmt: skip
        if not isinstance(answer, dict):
            raise errors.bad_gateway("Elasticsearch answered a search with a non-object")
        answer["rerank"] = {
            "model": answer_model(self.models.scorer),
            "window": spec.window,
            "candidates": 0,
            "skipped": "size is 0: no hits to rerank",
            "degraded": None,
        }
        return answer

    # ------------------------------------------------------------------ first stage

    async def _first_stage(
        self,
        search: SearchRequest,
        spec: RerankSpec,
        sources: SourceFilter,
        text: str,
        budget: Budget,
    ) -> FirstStageResult:
        source = first_stage_source(sources, spec.fields)
        forwarded = {k: v for k, v in search.params.items() if k not in CONSUMED_PARAMS}
        headers = self._upstream_headers(search.request)
        searcher = await self._searcher()
        body = search.body
        lexical_body = {k: v for k, v in body.items() if k not in ("from", "size", "_source")}
        lexical_body.update(size=spec.window, _source=source, timeout=budget.es_timeout)
        timings: dict[str, float] = {}
        failures: list[str] = []

        async def lexical() -> Any:
            if budget.expired():
                raise errors.upstream_timeout("no time left for the first stage")
            _, answer = await search_es(
                searcher, search.index, lexical_body, params=forwarded, headers=headers,
                timeout_s=budget.remaining_s(),
            )  # fmt: skip
            return answer

        async def dense() -> Any:
            encoder = self.models.encoder
            assert encoder is not None
            loop = asyncio.get_running_loop()
            began = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(
                    self.embed_executor, encode_queries, encoder, [text]
                )
            except ModelError as exc:  # a remote embedder none of whose endpoints answered
                failures.append(f"the query embedder failed: {exc}")
                return None
            finally:
                timings["embed"] = (time.perf_counter() - began) * 1000
            clause = knn_clause([float(x) for x in vectors[0]], spec.window)
            constraint = knn_filter(body.get("query"))
            if constraint is not None:
                clause["filter"] = constraint
            dense_body = {
                "knn": clause,
                "size": spec.window,
                "_source": source,
                "timeout": budget.es_timeout,
            }
            if budget.expired():
                raise errors.upstream_timeout("no time left for the kNN search")
            _, answer = await search_es(
                searcher, search.index, dense_body,
                params={k: v for k, v in forwarded.items() if k != "q"},
                headers=headers, timeout_s=budget.remaining_s(),
            )  # fmt: skip
            return answer

        began = time.perf_counter()
        use_dense = spec.dense and self.models.encoder is not None
        if use_dense:
            lexical_answer, dense_answer = await asyncio.gather(lexical(), dense())
        else:
            lexical_answer, dense_answer = await lexical(), None
        wall = (time.perf_counter() - began) * 1000
        timings["es"] = max(0.0, wall - timings.get("embed", 0.0))
        result = FirstStageResult(
            lexical=read_hits(lexical_answer, "bm25"),
            dense=read_hits(dense_answer, "dense") if dense_answer is not None else None,
            timings_ms=timings,
            dense_failure=failures[0] if failures else None,
        )
        timings["es_took"] = float(
            max(result.lexical.took, result.dense.took if result.dense else 0)
        )
        return result

    async def _profile(
        self, search: SearchRequest, spec: RerankSpec, degraded: list[Degraded]
    ) -> Personalization | None:
        """The user's profile (:func:`~reranker.proxy.profiles.read_profile`); ``None``: not
        asked for, or none. Unreadable: the unpersonalised order, said in ``degraded``."""
        if spec.personal_weight is None or search.user is None or self._admin is None:
            return None
        try:
            return await read_profile(
                self._admin(), self.settings, owner=search.owner, user=search.user,
                index=search.index, weight=spec.personal_weight,
            )  # fmt: skip
        except Exception as exc:
            degraded.append(Degraded("unavailable", f"the user's profile is unreadable: {exc}"))
            return None

    async def _attach_vectors(
        self,
        search: SearchRequest,
        candidates: Sequence[Hit],
        budget: Budget,
        *,
        embeddings: bool,
        rescore: Rescore | None,
    ) -> None:
        """The candidates' stored embeddings (``embeddings``: for diversity and
        personalisation) and second-embedder vectors (with ``rescore``), in one search."""
        if budget.expired():
            raise errors.upstream_timeout("no time left to fetch the documents' embeddings")
        await attach_vectors(
            await self._searcher(), search.index, candidates,
            headers=self._upstream_headers(search.request), timeout_s=budget.remaining_s(),
            embeddings=embeddings, rescore=rescore is not None,
        )  # fmt: skip

    def _rescore(self, index: str, plan: Plan) -> asyncio.Future[Rescore | None] | None:
        """The second embedder for ``index``'s window, started now (the query embedded
        while the first stage runs); ``None`` without a cross-encoder to add it to."""
        if self.models.scorer is None:
            return None
        rescorer, probes = self.models.rescorer, self.probes
        started = rescore_for(rescorer, probes, self.rescore_executor, index, plan.text)
        return asyncio.ensure_future(started)

    # ------------------------------------------------------------------ scoring

    async def _score(
        self, window: Window, first: FirstStageResult, budget: Budget, ticket: Ticket
    ) -> tuple[PipelineResult, dict[str, float]]:
        """Rerank the window through its pipeline in the scorer's pool; fail open here when
        the scorer is bypassed, fails or overruns. Returns the result and stage timings."""
        if not first.lexical.hits and (first.dense is None or not first.dense.hits):
            return window.first_stage_order(), {}
        scorer = self.models.scorer
        if scorer is None:
            reason = self.models.unavailable_reason()
            message = f"reranker unavailable: model not loaded ({reason})"
            return window.unscored(Degraded("unavailable", message)), {}

        spec = window.spec
        cached = self.models.cached(scorer)
        if spec.passages is not None:
            cached = by_passages(scorer, spec.passages, served=cached)
        student = self.models.student
        cascade = None
        if spec.cascade is not None and student is not None:
            cascade = Cascade(self.models.cached(student), spec.cascade)
        elif spec.cascade is not None and self.models.first_stage_student:
            cascade = Cascade(None, spec.cascade)
        scoring = window.pipeline(cached, cascade)
        candidates, text = window.candidates, window.text
        uncached = scoring.uncached_pairs(text, candidates) if candidates else []
        if candidates and not uncached:
            # every pair's score is in memory: no model call, so no queue and no breaker
            result = scoring.rerank(text, candidates, k=spec.window)
            return result, {"rerank": result.timings_ms.get("rerank", 0.0), "scorer_queue": 0.0}
        if isinstance(cached, PassageScorer):  # each window of a long document is a pair
            uncached = cached.expand(uncached, None)[0]
        tokens = estimated_tokens(uncached, max_length_of(scorer))
        self._refuse_unscorable(spec, len(uncached), tokens)
        ticket.resize(tokens)
        if not self.breaker.allow():
            message = "circuit open: the cross-encoder failed repeatedly"
            return window.unscored(Degraded("circuit_open", message)), {}
        if budget.expired():
            self.breaker.release()
            message = "reranker timeout: no time left after the first stage"
            return window.unscored(Degraded("timeout", message)), {}
        submitted_at = time.perf_counter()
        budget_at_submit = budget.remaining_s()
        called = await self.gate.call_scorer(
            lambda: scoring.rerank(text, candidates, k=spec.window, deadline=budget.deadline),
            tokens=tokens,
            timeout_ms=spec.timeout_ms,
            deadline=budget.deadline,
            ticket=ticket,
        )
        failure = called.failure
        if called.result is not None:
            result = called.result
            waited = (time.perf_counter() - submitted_at) * 1000
            if self.gate.accept(result, spec.timeout_ms, budget_at_submit, tokens, len(uncached)):
                scored = result.timings_ms.get("rerank", 0.0)
                return result, {"rerank": scored, "scorer_queue": max(0.0, waited - scored)}
            failure = ScoringFailure("reranker error: invalid output (non-finite scores)")
        assert failure is not None
        self.gate.count_failure(failure)
        why = Degraded("timeout" if failure.timed_out else "error", failure.reason)
        if not spec.fail_open:
            raise FAIL_CLOSED[why.kind](failure.reason)
        result = window.first_stage_order(why)
        return result, {"scorer_queue": (time.perf_counter() - submitted_at) * 1000}
