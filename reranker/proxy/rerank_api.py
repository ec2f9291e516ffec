"""The standard rerank endpoints: a query and texts in, one score per text out.

Two wire formats, so that clients written for other rerankers work unchanged:

- ``POST /rerank`` speaks Hugging Face text-embeddings-inference (TEI):
  ``{"query", "texts", "raw_scores", "return_text", "truncate"}`` →
  ``[{"index", "score"(, "text")}]``, errors ``{"error", "error_type"}``. Elasticsearch's
  ``hugging_face`` rerank service calls it (newer versions send ``documents`` and
  ``return_documents`` instead of ``texts`` and ``return_text``: both are accepted).
- ``POST /v1/rerank`` and ``POST /v2/rerank`` speak Cohere's rerank API (which Jina's and
  Elasticsearch's ``custom`` service templates follow): ``{"query", "documents", "top_n",
  "return_documents"}``, documents as strings or ``{"text", ...}`` →
  ``{"id", "results": [{"index", "relevance_score"(, "document")}], "meta"}``, errors
  ``{"id", "message"}``.
- ``GET /info`` is TEI's model description, with this server's limits added (and its
  embedder's card, ``embedder``, when one is loaded: what a remote embedder reads).

Every text gets a score, reported at the caller's own index (Elasticsearch fails a search when
the count of scores differs from the count of documents); results come best first. Scores are
probabilities (the model's logit through a sigmoid) unless TEI's ``raw_scores`` asks for logits.
Unknown fields are ignored, as TEI (serde without ``deny_unknown_fields``) does.

The requests go through the proxy's own machinery: API keys (``ApiKey <key>``, or ``Bearer
<key>`` as these clients send it), the body limit, admission (429 with ``Retry-After``), the
scorer's pool, deadline (``default_timeout_ms``) and circuit breaker, and the metrics
(``reranker_proxy_requests_total{kind="rerank_api"}``). Unlike ``_search`` there is no
first-stage order to fail open to: a scorer that is missing, failing or late is an error.

A first-stage-aware model (``Scorer.feature_names``, the default) reads first-stage scores;
these requests carry none, so they are computed here as a hybrid search would give them: the
dense score with the served embedder (the cosine of the query and each text), BM25 over the
request's own texts, and the two fused at the default weights, which order the texts for the
model's prior and its cascade (:func:`~reranker.rerank.features.features_for_texts`). Without
a loaded embedder such a model answers 424 (TEI's status for a model that cannot rerank). With
a second embedder loaded (:mod:`reranker.rerank.rescore`), the texts the model scores are
embedded by it too, and its cosine, normalised over them, is added to their logits
(``HEAD_RESCORE_WEIGHT``), as a search of an index that holds its vectors adds it.

Sources read for the shapes and statuses (cited where used):
huggingface/text-embeddings-inference ``router/src/http/types.rs`` (``RerankRequest``,
``Rank``), ``router/src/http/server.rs`` (``rerank``: ```texts` cannot be empty``, ``batch
size N > maximum allowed batch size M``; ``impl From<&ErrorType> for StatusCode``: Validation
→ 413, Tokenizer → 422, Overloaded → 429, Backend → 424, Unhealthy → 503) and
``router/src/lib.rs`` (``Info``, ``ErrorResponse``, ``ErrorType`` serialised by serde as its
variant name); the Cohere Python SDK 5.x (``cohere/raw_base_client.py`` ``rerank`` →
``v1/rerank``, ``cohere/v2/raw_client.py`` → ``v2/rerank``, ``RerankResponse``); the Cohere
API's own error bodies as quoted in langchain4j/langchain4j#770 (400 ``{"message": "invalid
request: list of documents must not be empty"}``) and HKUDS/LightRAG#1813 (``{"id",
"message"}``); elastic/elasticsearch ``x-pack/plugin/inference`` ``HuggingFaceRerankRequestEntity``
and ``HuggingFaceRerankResponseEntity`` (fields ``index``, ``score``/``relevance_score``,
``text``/``document``, any other field an error).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import reranker
from reranker.batching import logits_or_probabilities
from reranker.proxy import errors
from reranker.proxy.errors import ProxyError
from reranker.proxy.http import GuardedProxy, read_body, require_api_key
from reranker.proxy.jsonbody import BodyError, loads_strict
from reranker.proxy.limits import estimated_tokens
from reranker.rerank.cache import CachedScorer
from reranker.rerank.capabilities import Batching, max_length_of
from reranker.rerank.cascade import cascade_scores, cascade_split
from reranker.rerank.features import features_for_texts
from reranker.rerank.pipeline import check_scores
from reranker.rerank.rescore import HEAD_RESCORE_WEIGHT, Rescore
from reranker.retrieval.remote_embedder import embedder_card

if TYPE_CHECKING:
    from reranker.proxy.limits import Admission, CircuitBreaker
    from reranker.proxy.metrics import ProxyMetrics
    from reranker.proxy.reload import LoadedModels
    from reranker.proxy.rerank import RerankHandler
    from reranker.proxy.settings import ProxySettings
    from reranker.rerank.scorer import PairScorer, ServedScorer
    from reranker.retrieval.embed_cache import TextEncoder


class Proxy(GuardedProxy, Protocol):
    """What the rerank endpoints use of the proxy that serves them (``proxy.app.Proxy``):
    its settings, models, admission, breaker, metrics, scorer pool, body limit and guard."""

    models: LoadedModels
    reranking: RerankHandler
    breaker: CircuitBreaker
    admission: Admission
    metrics: ProxyMetrics


log = logging.getLogger(__name__)

#: the ``kind`` label of these requests in ``reranker_proxy_requests_total``
METRICS_KIND = "rerank_api"
#: TEI's ``model_dtype`` for each of our variants
DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}
#: a status for a scorer that cannot or did not score: TEI's ``ErrorType::Backend``
FAILED_DEPENDENCY = 424
#: TEI's ``ErrorType`` (serialised as the variant's name) for each status we answer with;
#: any other is ``Backend``
TEI_ERROR_TYPES = {
    400: "Validation",
    413: "Validation",
    422: "Validation",
    429: "Overloaded",
    503: "Unhealthy",
}


@dataclass(frozen=True)
class RerankCall:
    """One rerank request, whatever its format: the texts to score against the query, and
    how to answer."""

    query: str
    texts: tuple[str, ...]
    #: each document as the caller sent it (Cohere echoes objects back as they came)
    documents: tuple[Any, ...]
    top_n: int | None = None
    return_documents: bool = False
    #: scores through a sigmoid (TEI's default, Cohere's ``relevance_score``); else logits
    probabilities: bool = True


class Dialect:
    """A wire format: how its requests read, its answers and its errors look."""

    name = ""

    def parse(self, body: Any, limit: int) -> RerankCall:
        raise NotImplementedError

    def answer(self, call: RerankCall, scores: np.ndarray) -> Any:
        raise NotImplementedError

    def error(self, exc: ProxyError) -> Response:
        raise NotImplementedError

    def body_error(self, exc: BodyError) -> ProxyError:
        """A body that is not acceptable JSON, as this format's service refuses it."""
        return exc


def ranked(scores: np.ndarray, top_n: int | None = None) -> list[tuple[int, float]]:
    """``(index, score)`` best first (ties in the caller's order), the first ``top_n``."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    if top_n is not None:
        order = order[:top_n]
    return [(i, float(scores[i])) for i in order]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Response(content.encode("utf-8"), status, headers=headers, media_type="application/json")


# ---------------------------------------------------------------------------------------- TEI


def serde_kind(value: Any) -> str:
    """How serde_json names a JSON value in ``invalid type: ...`` (TEI's 422 messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)[:60]}"
    return "sequence" if isinstance(value, list) else "map"


class Tei(Dialect):
    """Hugging Face text-embeddings-inference's ``/rerank``."""

    name = "tei"

    @staticmethod
    def _undecodable(reason: str) -> ProxyError:
        # axum's Json extractor: a body that parses but does not fit RerankRequest is a 422
        return ProxyError(
            422, "Validation", f"Failed to deserialize the JSON body into the target type: {reason}"
        )

    def body_error(self, exc: BodyError) -> ProxyError:
        if exc.syntax:  # axum: "Failed to parse the request body as JSON" → 400
            return ProxyError(400, "Validation", exc.reason)
        return self._undecodable(exc.reason)

    def parse(self, body: Any, limit: int) -> RerankCall:
        if not isinstance(body, dict):
            raise self._undecodable(
                f"invalid type: {serde_kind(body)}, expected struct RerankRequest"
            )
        if "query" not in body:
            raise self._undecodable("missing field `query`")
        query = body["query"]
        if not isinstance(query, str):
            raise self._undecodable(f"query: invalid type: {serde_kind(query)}, expected a string")
        # Elasticsearch's newer hugging_face rerank entity sends `documents`/`return_documents`
        field = "texts" if "texts" in body or "documents" not in body else "documents"
        if field not in body:
            raise self._undecodable("missing field `texts`")
        texts = body[field]
        if not isinstance(texts, list):
            raise self._undecodable(
                f"{field}: invalid type: {serde_kind(texts)}, expected a sequence"
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise self._undecodable(
                    f"{field}[{i}]: invalid type: {serde_kind(text)}, expected a string"
                )
        flags = {}
        for name in ("truncate", "raw_scores", "return_text", "return_documents"):
            value = body.get(name)
            if value is not None and not isinstance(value, bool):
                raise self._undecodable(
                    f"{name}: invalid type: {serde_kind(value)}, expected a boolean"
                )
            flags[name] = bool(value)
        # server.rs `rerank`: both are ErrorType::Validation, which TEI answers with 413
        if not texts:
            raise ProxyError(413, "Validation", "`texts` cannot be empty")
        if len(texts) > limit:
            raise ProxyError(
                413, "Validation", f"batch size {len(texts)} > maximum allowed batch size {limit}"
            )
        return RerankCall(
            query=query,
            texts=tuple(texts),
            documents=tuple(texts),
            return_documents=flags["return_text"] or flags["return_documents"],
            probabilities=not flags["raw_scores"],
        )

    def answer(self, call: RerankCall, scores: np.ndarray) -> Any:
        # types.rs `Rank`: index, text (skipped when None), score
        return [
            {"index": i, **({"text": call.texts[i]} if call.return_documents else {}), "score": s}
            for i, s in ranked(scores)
        ]

    def error(self, exc: ProxyError) -> Response:
        if exc.status == 401:  # TEI's auth middleware: a bare 401
            return Response(status_code=401)
        kind = TEI_ERROR_TYPES.get(exc.status, "Backend")
        return json_response({"error": exc.reason, "error_type": kind}, exc.status, exc.headers)


# ------------------------------------------------------------------------------------- Cohere


class Cohere(Dialect):
    """Cohere's ``/v1/rerank`` and ``/v2/rerank`` (Jina's ``/v1/rerank`` is the same shape,
    though Jina returns documents by default and Cohere, whose default this follows, not)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.name = f"cohere_v{version}"

    @staticmethod
    def invalid(reason: str) -> ProxyError:
        return ProxyError(400, "invalid_request", f"invalid request: {reason}")

    def body_error(self, exc: BodyError) -> ProxyError:
        return self.invalid(exc.reason)

    def parse(self, body: Any, limit: int) -> RerankCall:
        if not isinstance(body, dict):
            raise self.invalid("the body must be a JSON object")
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise self.invalid("query is required and must be a non-empty string")
        documents = body.get("documents")
        if not isinstance(documents, list):
            raise self.invalid("documents is required and must be a list")
        if not documents:
            raise self.invalid("list of documents must not be empty")
        if len(documents) > limit:
            raise self.invalid(
                f"too many documents: {len(documents)}, this server reranks at most {limit} "
                "per request"
            )
        texts = []
        for i, document in enumerate(documents):
            text = document.get("text") if isinstance(document, dict) else document
            if not isinstance(text, str):
                raise self.invalid(
                    f"documents[{i}] must be a string or an object with a string text field"
                )
            texts.append(text)
        top_n = body.get("top_n")
        if top_n is not None and (
            isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1
        ):
            raise self.invalid("top_n must be a positive integer")
        return_documents = body.get("return_documents")
        if return_documents is not None and not isinstance(return_documents, bool):
            raise self.invalid("return_documents must be a boolean")
        return RerankCall(
            query=query,
            texts=tuple(texts),
            documents=tuple(documents),
            # "defaults to the length of the documents"; more than that returns them all
            top_n=None if top_n is None else min(top_n, len(texts)),
            return_documents=bool(return_documents),
        )

    def answer(self, call: RerankCall, scores: np.ndarray) -> Any:
        results = []
        for i, score in ranked(scores, call.top_n):
            result: dict[str, Any] = {"index": i, "relevance_score": score}
            if call.return_documents:  # omitted, not null, when not asked (strict clients)
                document = call.documents[i]
                result["document"] = document if isinstance(document, dict) else {"text": document}
            results.append(result)
        return {
            "id": str(uuid.uuid4()),
            "results": results,
            "meta": {"api_version": {"version": self.version}},
        }

    def error(self, exc: ProxyError) -> Response:
        reason = "invalid api token" if exc.status == 401 else exc.reason
        body = {"id": str(uuid.uuid4()), "message": reason}
        return json_response(body, exc.status, exc.headers)


# ----------------------------------------------------------------------------------- handlers


def check_client_key(request: Request, settings: ProxySettings) -> None:
    """The proxy's client keys, as ``ApiKey <key>`` or ``Bearer <key>`` (how TEI, Cohere's
    SDK and Elasticsearch's inference services send a key)."""
    if settings.api_keys:
        require_api_key(request, settings.api_keys, schemes=("apikey", "bearer"))


class RerankApi:
    """The rerank endpoints of one :class:`~reranker.proxy.app.Proxy`."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def routes(self) -> list[Route]:
        return [
            Route("/rerank", self.endpoint(Tei()), methods=["POST"]),
            Route("/v1/rerank", self.endpoint(Cohere("1")), methods=["POST"]),
            Route("/v2/rerank", self.endpoint(Cohere("2")), methods=["POST"]),
            Route("/info", self.info, methods=["GET"]),
        ]

    def endpoint(self, dialect: Dialect) -> Callable[[Request], Awaitable[Response]]:
        async def rerank(request: Request) -> Response:
            async def handle(request: Request) -> Response:
                return await self._answer(request, dialect)

            return await self.proxy.guarded(request, handle, lambda: METRICS_KIND)

        return rerank

    async def _answer(self, request: Request, dialect: Dialect) -> Response:
        """The answer in ``dialect``'s shape: its scores, or its error (never the proxy's
        Elasticsearch-shaped one)."""
        started = time.perf_counter()
        try:
            self.check_key(request)
            settings = self.proxy.settings
            raw = await read_body(
                request, settings.max_body_bytes, timeout_s=settings.body_timeout_s
            )
            try:
                body = loads_strict(
                    raw, max_depth=settings.max_json_depth, max_digits=settings.max_number_digits
                )
            except BodyError as exc:
                raise dialect.body_error(exc) from None
            call = dialect.parse(body, settings.max_window)
            scores = await self.score(call)
            answer = json_response(dialect.answer(call, scores))
        except ProxyError as exc:
            return dialect.error(exc)
        except Exception:
            log.exception("unexpected failure on %s %s", request.method, request.url.path)
            return dialect.error(errors.internal_error())
        self.proxy.metrics.stage_seconds.labels("total").observe(time.perf_counter() - started)
        return answer

    def check_key(self, request: Request) -> None:
        check_client_key(request, self.proxy.settings)

    async def score(self, call: RerankCall) -> np.ndarray:
        """One score per text, in the caller's order: admitted, in the scorer's pool, under
        the deadline and the breaker; a :class:`ProxyError` when it cannot be had."""
        models = self.proxy.models
        scorer, encoder = self._served()
        aware = encoder is not None and bool(scorer.feature_names)
        handler = self.proxy.reranking
        settings = self.proxy.settings
        timeout_ms = settings.default_timeout_ms
        pairs = [(call.query, text) for text in call.texts]
        tokens = estimated_tokens(pairs, max_length_of(scorer))
        ticket = handler.gate.admit_or_429(scoring=True, tokens=tokens, budget_s=timeout_ms / 1000)
        try:
            if not self.proxy.breaker.allow():
                raise errors.reranker_unavailable(
                    "circuit open: the cross-encoder failed repeatedly"
                )
            deadline = time.monotonic() + timeout_ms / 1000
            took: list[float] = []

            cached = models.cached(scorer)

            cascade_k = self.cascade_k(len(pairs)) if aware else None
            rescore = self._rescore() if aware else None

            def work() -> np.ndarray:
                began = time.perf_counter()
                if aware:
                    assert encoder is not None
                    scores = self._aware_scores(call, cached, encoder, cascade_k, rescore, deadline)
                else:
                    scores = cached.score(pairs, sigmoid=call.probabilities, deadline=deadline)
                took.append(time.perf_counter() - began)
                check_scores(scores, len(pairs))  # else the scorer's failure (424)
                return scores

            submitted = time.perf_counter()
            called = await handler.gate.call_scorer(
                work, tokens=tokens, timeout_ms=timeout_ms, deadline=deadline, ticket=ticket
            )
            if called.result is None:
                assert called.failure is not None
                handler.gate.count_failure(called.failure)
                if called.failure.timed_out:
                    raise errors.reranker_timeout(called.failure.reason)
                raise ProxyError(FAILED_DEPENDENCY, "backend", called.failure.reason)
            self.proxy.breaker.success()
            # cached pairs cost nothing
            scored = cached.pairs_scored if isinstance(cached, CachedScorer) else len(pairs)
            self.proxy.admission.record(round(tokens * scored / len(pairs)), took[0], scored)
            stages = self.proxy.metrics.stage_seconds
            stages.labels("rerank").observe(took[0])
            stages.labels("scorer_queue").observe(
                max(0.0, time.perf_counter() - submitted - took[0])
            )
            return called.result
        finally:
            if not ticket.submitted:
                ticket.scoring_done()
            ticket.release()
            self.proxy.metrics.in_flight.set(self.proxy.admission.in_flight)

    @staticmethod
    def _aware_scores(
        call: RerankCall,
        scorer: PairScorer,
        encoder: TextEncoder,
        cascade_k: int | None,
        rescore: Rescore | None,
        deadline: float,
    ) -> np.ndarray:
        """A first-stage-aware model's scores, as a hybrid search's reranking stage gives
        them: the features computed from the texts; the fused order the cheap level, whose
        top ``cascade_k`` (all texts without a cascade) the model scores; with ``rescore``,
        the second embedder's cosine over those texts added to their logits."""
        pairs = [(call.query, text) for text in call.texts]
        features = features_for_texts(encoder, call.query, call.texts).values
        cheap = features[:, 0].tolist()
        head = list(range(len(pairs))) if cascade_k is None else cascade_split(cheap, cascade_k)[0]
        logits = scorer.score([pairs[i] for i in head], deadline=deadline, features=features[head])
        check_scores(logits, len(head))
        full = np.asarray(logits, dtype=np.float64)
        if rescore is not None:
            full = full + rescore.bonus_for_texts(call.query, [call.texts[i] for i in head])
        final = np.asarray(cascade_scores(cheap, head, full.tolist()), np.float32)
        return logits_or_probabilities(final, probabilities=call.probabilities)

    def _rescore(self) -> Rescore | None:
        """The second embedder's cosine, added for a first-stage-aware model as a search of an
        index holding its vectors adds it (a plain model's logits stay its own: a
        :class:`~reranker.rerank.remote.RemoteScorer` reads them as such)."""
        rescorer = self.proxy.models.rescorer
        return None if rescorer is None else Rescore(rescorer, weight=HEAD_RESCORE_WEIGHT)

    def _served(self) -> tuple[ServedScorer, TextEncoder | None]:
        """The scorer this server serves, and the embedder when the scorer reads the dense
        score (503 without a scorer; 424 for a first-stage-aware one without its embedder)."""
        models = self.proxy.models
        scorer = models.scorer
        if scorer is None:
            raise errors.reranker_unavailable(
                f"reranker unavailable: model not loaded ({models.unavailable_reason()})"
            )
        if not scorer.feature_names:
            return scorer, None
        if models.encoder is None:
            raise ProxyError(
                FAILED_DEPENDENCY,
                "model_type",
                f"the cross-encoder {scorer.model_id} is first-stage-aware: it reads the dense "
                "score, which this server computes with its embedder, and the embedder is not "
                f"loaded ({models.encoder_error or self._encoder_state()})",
            )
        return scorer, models.encoder

    def cascade_k(self, texts: int) -> int | None:
        """The cascade a first-stage-aware model's request gets: the proxy's default k
        (``default_cascade``, with the first stage as the cheap level: here the fused BM25 and
        cosine of the texts), when it is below the count of texts; else ``None``, every text
        scored."""
        k = self.proxy.settings.default_cascade
        if k is None or not self.proxy.models.first_stage_student or k >= texts:
            return None
        return k

    def _rescore_card(self, scorer: ServedScorer) -> dict[str, Any]:
        rescore = self._rescore() if scorer.feature_names else None
        if rescore is None:
            return {}
        return {"rescore": {"embedder": rescore.model_id, "weight": rescore.weight}}

    def _encoder_state(self) -> str:
        return "loading" if not self.proxy.models.loaded.is_set() else "none configured"

    async def info(self, request: Request) -> Response:
        """TEI's ``GET /info`` (``router/src/lib.rs`` ``Info``), plus this server's limits."""

        async def handle(request: Request) -> Response:
            dialect = Tei()
            try:
                self.check_key(request)
                return json_response(self.describe())
            except ProxyError as exc:
                return dialect.error(exc)

        return await self.proxy.guarded(request, handle, lambda: "info")

    def describe(self) -> dict[str, Any]:
        models, settings = self.proxy.models, self.proxy.settings
        scorer = models.scorer
        if scorer is None:
            raise errors.reranker_unavailable(
                f"reranker unavailable: model not loaded ({models.unavailable_reason()})"
            )
        variant = scorer.variant
        return {
            "model_id": scorer.model_id,
            "model_sha": scorer.version,
            "model_dtype": DTYPES.get(variant, variant),
            "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
            "max_concurrent_requests": settings.max_in_flight,
            "max_input_length": max_length_of(scorer),
            "max_batch_tokens": scorer.max_batch_tokens if isinstance(scorer, Batching) else None,
            "max_batch_requests": scorer.max_batch_size if isinstance(scorer, Batching) else None,
            "max_client_batch_size": settings.max_window,
            "auto_truncate": True,
            "tokenization_workers": settings.scorer_workers,
            "version": reranker.__version__,
            "sha": None,
            "docker_label": None,
            # beyond TEI's Info
            "model_version": scorer.version,
            "variant": variant,
            "provider": scorer.provider,
            "first_stage_features": list(scorer.feature_names),
            # the second embedder a first-stage-aware model's scores include (rerank.rescore)
            **self._rescore_card(scorer),
            "limits": {
                "max_documents": settings.max_window,
                "max_body_bytes": settings.max_body_bytes,
                "timeout_ms": settings.default_timeout_ms,
                "max_in_flight": settings.max_in_flight,
                "max_scorer_queue": settings.max_scorer_queue,
            },
            "endpoints": ["/rerank", "/v1/rerank", "/v2/rerank"]
            + (["/embed"] if models.encoder is not None else []),
            # the embedder /embed uses: what a remote embedder reads (reranker.retrieval
            # .remote_embedder), absent while it is not loaded
            **({"embedder": embedder_card(models.encoder)} if models.encoder is not None else {}),
        }
