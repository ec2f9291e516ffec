"""The proxy: an ASGI app (Starlette) that answers ``/{index}/_search`` like Elasticsearch.

Without a ``rerank`` object a search passes through to Elasticsearch unchanged. With one, the
client's own query (and kNN on ``embedding`` if ``rerank.hybrid.dense``) fetches ``window``
candidates, :class:`~reranker.pipeline.Pipeline` fuses and reranks them in a bounded thread
pool, and the answer is an Elasticsearch search response whose ``_score`` is the final score.
See ``DESIGN.md`` ("The proxy's contract") and :func:`create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from elastic_transport import HttpxAsyncHttpNode
from elasticsearch import AsyncElasticsearch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reranker.config import MODEL_VARIANTS
from reranker.embed_cache import TextEncoder
from reranker.errors import ConfigError, ModelError
from reranker.es.client import client_options
from reranker.es.queries import knn_clause
from reranker.first_stage import fuse
from reranker.first_stage_features import FeatureUnavailable, require_features
from reranker.pipeline import Degraded, Pipeline, PipelineResult, check_scores
from reranker.proxy import errors
from reranker.proxy.blends import BlendCatalog, NamedBlend
from reranker.proxy.errors import ProxyError
from reranker.proxy.first_stage import (
    FirstStageResult,
    read_hits,
    search_es,
    split_key,
)
from reranker.proxy.jsonbody import loads_strict
from reranker.proxy.limits import Admission, CircuitBreaker, Saturated, Ticket
from reranker.proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from reranker.proxy.metrics import ProxyMetrics
from reranker.proxy.msearch import SearchItem, parse_msearch
from reranker.proxy.msearch import concurrency as msearch_concurrency
from reranker.proxy.request import (
    CONSUMED_PARAMS,
    Page,
    RerankSpec,
    SourceFilter,
    check_compatible,
    check_no_scroll,
    extract_query_text,
    filter_source,
    first_stage_source,
    index_allowed,
    knn_filter,
    page,
    parse_rerank,
    source_filter,
    split_rerank,
)
from reranker.proxy.request_log import RequestLog
from reranker.proxy.scoped import ScopedAccess
from reranker.proxy.settings import ProxySettings
from reranker.scoring import Scorer, ScoreTimeout

log = logging.getLogger(__name__)

COMPAT_JSON = "application/vnd.elasticsearch+json;compatible-with=9"
PRODUCT_HEADER = {"X-Elastic-Product": "Elasticsearch"}
ScorerFactory = Callable[[], Scorer]
ModelLoader = Callable[[Path | None, str | None], Scorer]
"""``(model folder, variant)`` → a loaded scorer; ``None`` means the configured default."""
EncoderFactory = Callable[[], TextEncoder]

#: A reloaded model must score these finite, in this count and order of relevance, before it
#: replaces the one serving (a smoke test against a broken or wrong model).
#: Admission assumes the first stage uses up to this fraction of a request's deadline.
SCORER_MARGIN = 0.2
#: the dense_vector field kNN searches; probed (field caps) for the hybrid default
EMBEDDING_FIELD = "embedding"
EMBEDDINGS_PROBE_TTL_S = 60.0
#: a timeout counts as the scorer's fault only when, at the measured rate, the window needed
#: at most this share of the time it had (the scorer then ran over twice as slow as measured)
FAIR_TIMEOUT_SHARE = 0.5

#: with ``fail_open: false``, the error each kind of degradation becomes (the metrics label
#: is the kind itself)
FAIL_CLOSED: dict[str, Callable[[str], ProxyError]] = {
    "timeout": errors.reranker_timeout,
    "error": errors.reranker_unavailable,
    "unavailable": errors.reranker_unavailable,
    "circuit_open": errors.reranker_unavailable,
    "es_partial": errors.reranker_unavailable,
}

SMOKE_QUERY = "what is a qubit in quantum computing"
SMOKE_PASSAGES = (
    "A qubit is the basic unit of quantum information: a two-level quantum system that can be "
    "in a superposition of the states 0 and 1.",
    "Malted barley provides the sugars that yeast ferments into alcohol when brewing beer.",
)


def make_async_client(settings: ProxySettings) -> AsyncElasticsearch:
    """The proxy's client: the shared auth/TLS options, httpx transport (no aiohttp needed),
    no retry on timeout (the request's deadline is already spent)."""
    options = client_options(settings.es)
    options.update(retry_on_timeout=False, max_retries=1)
    if "ssl_assert_fingerprint" in options:
        # httpx cannot pin a certificate; elastic-transport's aiohttp node can
        try:
            from elastic_transport import AiohttpHttpNode

            return AsyncElasticsearch(settings.es.es_url, node_class=AiohttpHttpNode, **options)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                "the proxy pins the cluster's certificate fingerprint only with aiohttp "
                f"installed (pip install aiohttp), or give RERANKER_ES_CA_CERTS instead ({exc})"
            ) from None
    return AsyncElasticsearch(settings.es.es_url, node_class=HttpxAsyncHttpNode, **options)


class Proxy:
    """The app's state and handlers; :func:`create_app` wires it into Starlette."""

    def __init__(
        self,
        settings: ProxySettings,
        *,
        scorer_factory: ScorerFactory | None = None,
        encoder_factory: EncoderFactory | None = None,
        es_client: AsyncElasticsearch | None = None,
        load_in_background: bool = True,
        model_loader: ModelLoader | None = None,
    ) -> None:
        self.settings = settings
        if scorer_factory is None and model_loader is not None:
            loader = model_loader
            scorer_factory = lambda: loader(None, None)  # noqa: E731
        self.scorer_factory = scorer_factory
        self.model_loader = model_loader
        self.catalog = BlendCatalog(settings.signals, settings.blends)
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self.encoder_factory = encoder_factory
        self.load_in_background = load_in_background
        self.metrics = ProxyMetrics()
        self.admission = Admission(settings.max_in_flight, settings.max_scorer_queue)
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooloff_s)
        self._embeddings_known: dict[str, tuple[float, bool]] = {}
        self._own_client = es_client is None
        self._es = es_client
        self.scoped: ScopedAccess | None = None
        self.scorer: Scorer | None = None
        self.encoder: TextEncoder | None = None
        self.model_error: str | None = None
        self.encoder_error: str | None = None
        self.loaded = asyncio.Event()
        self.request_log: RequestLog | None = None
        self.executor = ThreadPoolExecutor(settings.scorer_workers, "reranker-scorer")
        self.embed_executor = ThreadPoolExecutor(1, "reranker-embed")
        self._loader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def es(self) -> AsyncElasticsearch:
        if self._es is None:
            raise RuntimeError("the proxy is not started (use the app's lifespan)")
        return self._es

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.loaded = asyncio.Event()
        if self._es is None:
            self._es = make_async_client(self.settings)
        self.scoped = ScopedAccess(self.settings, self.es)
        await self.scoped.start()
        if self.load_in_background:
            self._loader = asyncio.create_task(self._load_models(), name="reranker-load-models")
        else:
            await self._load_models()
        hangup = self._install_sighup()
        if self.settings.request_log:
            self.request_log = RequestLog(
                self.es,
                self.metrics,
                prefix=self.settings.log_index_prefix,
                queue_size=self.settings.log_queue_size,
                batch_size=self.settings.log_batch_size,
                flush_s=self.settings.log_flush_s,
            )
            await self.request_log.start()
        try:
            yield
        finally:
            if hangup:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if self._loader is not None:
                self._loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loader
            if self.request_log is not None:
                await self.request_log.close()
            if self.scoped is not None:
                await self.scoped.close()
            if self._own_client and self._es is not None:
                await self._es.close()
                self._es = None
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.embed_executor.shutdown(wait=False, cancel_futures=True)

    async def _load_models(self) -> None:
        try:
            if self.scorer_factory is not None:
                try:
                    scorer = await asyncio.to_thread(self.scorer_factory)
                    await asyncio.to_thread(scorer.warmup)
                except Exception as exc:  # a model that fails to load leaves the proxy up
                    self.model_error = str(exc) or type(exc).__name__
                    log.error("the cross-encoder could not be loaded: %s", self.model_error)
                else:
                    self._install_scorer(scorer)
            else:
                self.model_error = "no cross-encoder configured"
            if self.encoder_factory is not None and self.settings.enable_dense:
                try:
                    self.encoder = await asyncio.to_thread(self.encoder_factory)
                except Exception as exc:
                    self.encoder_error = str(exc) or type(exc).__name__
                    log.error("the query embedder could not be loaded: %s", self.encoder_error)
        finally:
            self.loaded.set()

    def _install_scorer(self, scorer: Scorer) -> None:
        """Make ``scorer`` the one new requests use; requests already scoring keep theirs."""
        self.scorer = scorer
        self.model_error = None
        self.metrics.model.info(
            {
                "model": scorer.model_id,
                "version": scorer.version,
                "variant": scorer.variant,
                "provider": scorer.provider,
            }
        )

    # ------------------------------------------------------------------ hot reload

    def _install_sighup(self) -> bool:
        """SIGHUP reloads the configured model (where the loop can take signal handlers:
        the main thread of a Unix process)."""
        if self.model_loader is None or not hasattr(signal, "SIGHUP"):
            return False
        loop = asyncio.get_running_loop()

        def hangup() -> None:
            log.info("SIGHUP: reloading the cross-encoder")
            task = loop.create_task(self._reload_logged(), name="reranker-sighup-reload")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, hangup)
        except (NotImplementedError, RuntimeError, ValueError):
            return False
        return True

    async def _reload_logged(self) -> None:
        try:
            outcome = await self.reload()
        except ProxyError as exc:
            log.error("model reload refused: %s", exc.reason)
        else:
            log.info("model reloaded: %s", json.dumps(outcome["model"]))

    async def reload(self, model: Path | None = None, variant: str | None = None) -> dict[str, Any]:
        """Load a model (default: the configured one, re-read from disk), smoke-test it, and
        swap it in atomically; the old one keeps serving until then and stays if anything
        fails (a :class:`ProxyError`: 400 for a model that fails its card check or smoke test,
        409 while another reload runs)."""
        if self.model_loader is None:
            raise errors.bad_request("this proxy was started without a reloadable model")
        if self._reload_lock.locked():
            raise ProxyError(409, "status_exception", "a model reload is already running")
        async with self._reload_lock:
            started = time.perf_counter()
            try:
                scorer = await asyncio.to_thread(self.model_loader, model, variant)
                await asyncio.to_thread(smoke_test, scorer)
            except Exception as exc:
                self.metrics.reloads.labels("refused").inc()
                reason = str(exc) or type(exc).__name__
                log.error("model reload refused: %s", reason)
                raise errors.bad_request(
                    "model reload refused, the current model keeps serving: "
                    + redact_paths(reason, self.settings.model_roots)
                ) from None
            previous = self.scorer
            self._install_scorer(scorer)
            self.breaker.reset()
            self.metrics.reloads.labels("loaded").inc()
            return {
                "acknowledged": True,
                "previous": describe_scorer(previous),
                "model": describe_scorer(scorer),
                "took_ms": round((time.perf_counter() - started) * 1000, 1),
            }

    async def reload_endpoint(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            self._check_admin(request)
            body = parse_body(await self._read_body(request))
            unknown = sorted(set(body) - {"model", "variant"})
            if unknown:
                raise errors.bad_request(
                    f"unknown field(s) {', '.join(unknown)}; use model, variant"
                )
            model, variant = body.get("model"), body.get("variant")
            if model is not None and (not isinstance(model, str) or not model.strip()):
                raise errors.bad_request("[model] must be a model folder path")
            if variant is not None and variant not in MODEL_VARIANTS:
                raise errors.bad_request("[variant] must be one of fp32, int8, fp16")
            folder = self._model_folder(model) if model else None
            outcome = await self.reload(folder, variant)
            return self.respond(request, outcome)

        return await self.guarded(request, handle, lambda: "admin")

    def _model_folder(self, model: str) -> Path:
        """The folder a reload names, which must lie inside a configured model root (a name
        relative to the first root, or a path). The refusal says nothing about what exists."""
        roots = [root.resolve() for root in self.settings.model_roots]
        if not roots:
            raise ProxyError(
                403,
                "security_exception",
                "this proxy has no model roots (RERANKER_PROXY_MODEL_ROOTS, --model-root): "
                "only the configured model can be reloaded",
            )
        try:
            given = Path(model.strip())
            candidate = (given if given.is_absolute() else roots[0] / given).resolve()
        except (OSError, ValueError):  # a NUL byte, a link loop: not a folder in a root
            candidate = None
        for root in roots:
            if candidate is not None and candidate != root and candidate.is_relative_to(root):
                return candidate
        raise ProxyError(
            403,
            "security_exception",
            "[model] must name a folder inside one of this proxy's model roots",
        )

    def _check_admin(self, request: Request) -> None:
        keys = self.settings.admin_api_keys
        if keys:
            require_api_key(request, keys)
            return
        if self.settings.api_keys:
            raise ProxyError(
                403,
                "security_exception",
                "model reload needs an admin API key (RERANKER_PROXY_ADMIN_API_KEYS) when "
                "client API keys are set",
            )
        client = request.client.host if request.client else ""
        if client not in ("127.0.0.1", "::1"):
            raise ProxyError(
                403,
                "security_exception",
                "model reload is only allowed from loopback unless admin API keys are set",
            )

    # ------------------------------------------------------------------ responses

    def respond(
        self,
        request: Request,
        body: Any,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Response:
        accept = request.headers.get("accept", "")
        media = COMPAT_JSON if "vnd.elasticsearch" in accept else "application/json"
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return Response(
            content.encode("utf-8"),
            status_code=status,
            media_type=media,
            headers={**PRODUCT_HEADER, **(headers or {})},
        )

    def error(self, request: Request, exc: ProxyError) -> Response:
        return self.respond(request, exc.body(), exc.status, exc.headers)

    async def guarded(
        self,
        request: Request,
        handler: Callable[[Request], Awaitable[Response]],
        kind: Callable[[], str],
    ) -> Response:
        """Runs a handler; a :class:`ProxyError` becomes its ES-shaped answer and anything
        else an ES-shaped 500 without internals (the traceback goes to the log only).
        The answer is counted under ``kind()`` (read once the handler is done)."""
        try:
            response = await handler(request)
        except ProxyError as exc:
            response = self.error(request, exc)
        except Exception:
            log.exception("unexpected failure on %s %s", request.method, request.url.path)
            response = self.error(request, errors.internal_error())
        self.metrics.requests.labels(kind(), str(response.status_code)).inc()
        return response

    # ------------------------------------------------------------------ endpoints

    async def health(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            es_state: dict[str, Any] = {"reachable": False}
            try:
                health = await self.es.options(request_timeout=2.0).cluster.health()
                es_state = {"reachable": True, "status": health.get("status")}
            except Exception as exc:
                es_state["reason"] = str(exc)[:300]
            model: dict[str, Any] = {"loaded": self.scorer is not None}
            if self.scorer is not None:
                model.update(
                    id=self.scorer.model_id,
                    version=self.scorer.version,
                    variant=self.scorer.variant,
                    provider=self.scorer.provider,
                )
            elif not self.loaded.is_set():
                model["reason"] = "loading"
            elif self.model_error:
                model["reason"] = self.model_error
            ok = bool(es_state["reachable"]) and self.scorer is not None
            if not self._may_see_details(request, self.settings.public_health_details):
                # liveness only: no model, cluster or load details without a key
                return self.respond(
                    request, {"status": "ok" if ok else "unavailable"}, 200 if ok else 503
                )
            body = {
                "status": "ok" if ok else "unavailable",
                "model": model,
                "embedder": {
                    "loaded": self.encoder is not None,
                    **({"reason": self.encoder_error} if self.encoder_error else {}),
                },
                "elasticsearch": es_state,
                "circuit": self.breaker.state,
                "in_flight": self.admission.in_flight,
                "scorer_queue": self.admission.scorer_backlog,
            }
            return self.respond(request, body, 200 if ok else 503)

        return await self.guarded(request, handle, lambda: "health")

    async def metrics_endpoint(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            if not self._may_see_details(request, self.settings.public_metrics):
                raise errors.unauthorized()
            self.metrics.in_flight.set(self.admission.in_flight)
            self.metrics.scorer_queue.set(self.admission.scorer_backlog)
            self.metrics.circuit_open.set(0 if self.breaker.state == "closed" else 1)
            return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

        return await self.guarded(request, handle, lambda: "metrics")

    async def search(self, request: Request) -> Response:
        started = time.perf_counter()
        kind = "search"  # until the body says: passthrough or rerank

        async def handle(request: Request) -> Response:
            nonlocal kind
            self._check_api_key(request)
            index = request.path_params["index"]
            self._check_index(index)
            raw = await self._read_body(request)
            body = self._parse_body(raw)
            rest, spec_raw = split_rerank(body)
            params = dict(request.query_params)
            check_no_scroll(body, params)
            if spec_raw is None:
                kind = "passthrough"
                return await self._passthrough(request, index, raw, params)
            kind = "rerank"
            answer, logged = await self._rerank(request, index, rest, spec_raw, params, started)
            response = self.respond(request, answer)
            self._submit_log(logged, response.status_code)
            return response

        return await self.guarded(request, handle, lambda: kind)

    async def msearch(self, request: Request) -> Response:
        """``_msearch``: every search answered on its own (reranked where it has ``rerank``);
        without any ``rerank`` and with every index allowed, one pass-through request."""

        async def handle(request: Request) -> Response:
            self._check_api_key(request)
            started = time.perf_counter()
            path_index = request.path_params.get("index")
            if path_index is not None:
                self._check_index(path_index)
            raw = await self._read_body(request)
            url_params = dict(request.query_params)
            items = parse_msearch(
                raw,
                path_index,
                url_params,
                max_depth=self.settings.max_json_depth,
                max_digits=self.settings.max_number_digits,
            )
            limit = msearch_concurrency(url_params)
            plain = not any(item.wants_rerank or item.error for item in items)
            allowed = all(self._index_refusal(item.index) is None for item in items)
            if plain and allowed and not any(_scrolls(item) for item in items):
                return await self._passthrough(
                    request, path_index or "", raw, url_params, endpoint="_msearch"
                )
            gate = asyncio.Semaphore(limit)

            async def answer(item: SearchItem) -> tuple[dict[str, Any], dict[str, Any] | None]:
                async with gate:
                    return await self._msearch_item(request, item)

            answered = await asyncio.gather(*(answer(item) for item in items))
            took = round((time.perf_counter() - started) * 1000)
            responses = [entry for entry, _ in answered]
            response = self.respond(request, {"took": took, "responses": responses})
            for entry, logged in answered:
                self._submit_log(logged, int(entry.get("status", 200)))
            return response

        return await self.guarded(request, handle, lambda: "msearch")

    async def _msearch_item(
        self, request: Request, item: SearchItem
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """One search of a multi-search as its ``responses`` entry (errors stay in the entry)
        and its request-log document, if it was reranked."""
        started = time.perf_counter()
        try:
            self._check_index(item.index)
            if item.error is not None:
                raise item.error
            rest, spec_raw = split_rerank(item.body)
            check_no_scroll(item.body, item.params)
            if spec_raw is None:
                status, body = await self._search_upstream(
                    request, item.index, item.raw_body, item.params
                )
                if not isinstance(body, dict):
                    raise errors.bad_gateway("Elasticsearch answered a search with a non-object")
                return {**body, "status": status}, None
            answer, logged = await self._rerank(
                request, item.index, rest, spec_raw, item.params, started
            )
            return {**answer, "status": 200}, logged
        except ProxyError as exc:
            return msearch_error(exc), None
        except Exception:
            log.exception("unexpected failure in a multi-search item on %s", item.index)
            return msearch_error(errors.internal_error()), None

    # ------------------------------------------------------------------ input

    def _check_api_key(self, request: Request) -> None:
        if self.settings.api_keys:
            require_api_key(request, self.settings.api_keys)

    def _may_see_details(self, request: Request, public: bool) -> bool:
        """Whether health details and metrics may be shown: always without keys configured,
        else to a client or admin key (or to anyone when configured public)."""
        keys = (*self.settings.api_keys, *self.settings.admin_api_keys)
        if not keys or public:
            return True
        try:
            require_api_key(request, keys)
        except ProxyError:
            return False
        return True

    def _index_refusal(self, index: str) -> str | None:
        return index_allowed(
            index, self.settings.allowed_indices, remote_clusters=self.settings.remote_clusters
        )

    def _check_index(self, index: str) -> None:
        """403 unless the allow-list (the proxy's second line) admits ``index``."""
        refused = self._index_refusal(index)
        if refused is not None:
            raise errors.forbidden_index(refused)

    def _parse_body(self, raw: bytes) -> dict[str, Any]:
        return parse_body(
            raw,
            max_depth=self.settings.max_json_depth,
            max_digits=self.settings.max_number_digits,
        )

    def _submit_log(self, document: dict[str, Any] | None, status: int) -> None:
        """Queue a reranked request's log document with the status actually sent."""
        if document is not None and self.request_log is not None:
            document["status"] = status
            self.request_log.submit(document)

    async def _searcher(self) -> AsyncElasticsearch:
        """The client searches run with: credentials restricted to the allow-list."""
        if self.scoped is None:
            return self.es
        return await self.scoped.client()

    def _upstream_headers(self, request: Request) -> dict[str, str]:
        """The client's ``Authorization`` goes on to Elasticsearch unless the proxy has its own
        credentials or the header was the proxy's API key."""
        headers: dict[str, str] = {}
        auth = request.headers.get("authorization")
        if auth and not self.settings.es_has_credentials and not self.settings.api_keys:
            headers["authorization"] = auth
        opaque = request.headers.get("x-opaque-id")
        if opaque:
            headers["x-opaque-id"] = opaque
        return headers

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise errors.too_large(limit)
            except ValueError:
                raise errors.bad_request("Content-Length is not a number") from None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise errors.too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ pass-through

    async def _passthrough(
        self,
        request: Request,
        index: str,
        raw: bytes,
        params: dict[str, str],
        endpoint: str = "_search",
    ) -> Response:
        status, body = await self._search_upstream(request, index, raw, params, endpoint)
        return self.respond(request, body, status)

    async def _search_upstream(
        self,
        request: Request,
        index: str,
        raw: bytes,
        params: dict[str, str],
        endpoint: str = "_search",
    ) -> tuple[int, Any]:
        """The client's search body sent on as it is; (status, decoded JSON answer)."""
        started = time.perf_counter()
        try:
            status, body = await search_es(
                await self._searcher(),
                index,
                raw if raw.strip() else None,
                params=params,
                headers=self._upstream_headers(request),
                timeout_s=self.settings.es.request_timeout_s,
                endpoint=endpoint,
            )
        finally:
            self.metrics.passthrough_seconds.observe(time.perf_counter() - started)
        if isinstance(body, (bytes, str)):
            raise errors.bad_gateway("Elasticsearch answered a search with a non-JSON body")
        return status, body

    # ------------------------------------------------------------------ reranking

    async def _rerank(
        self,
        request: Request,
        index: str,
        body: dict[str, Any],
        spec_raw: Any,
        params: dict[str, str],
        started: float,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The reranked search answer (the caller sends it) and its request-log document (the
        caller queues it with the status it sent); refusals are :class:`ProxyError`."""
        spec = parse_rerank(spec_raw, self.settings)
        check_compatible(body, params)
        pages = page(body, params, spec.window)
        if pages.size == 0:  # aggregations only: no hit is shown, so nothing is scored
            return await self._without_hits(request, index, body, params, spec), None
        sources = source_filter(body, params)
        text = spec.query_text or extract_query_text(body.get("query")) or params.get("q")
        if not text or not text.strip():
            raise errors.bad_request(
                "no query text for the cross-encoder: give [rerank.query_text], or a "
                "match / multi_match / combined_fields / query_string query"
            )
        if spec.dense and not self.settings.enable_dense:
            raise errors.bad_request("dense retrieval is switched off on this proxy")
        if spec.dense is None:
            spec = replace(spec, dense=await self._hybrid_by_default(index))
        # what the first stage will really give: kNN needs the embedder too
        self._check_model_features(bool(spec.dense) and self.encoder is not None)
        blend = self.catalog.resolve(index, spec.blend)
        scoring = self.scorer is not None
        scorer_budget_s = spec.timeout_ms / 1000 * (1 - SCORER_MARGIN)
        if scoring and self.admission.pairs_per_s is not None:
            needed_s = spec.window / self.admission.pairs_per_s
            if needed_s > scorer_budget_s:
                raise errors.bad_request(
                    f"[rerank.window] {spec.window} cannot be scored within [rerank.timeout_ms] "
                    f"{spec.timeout_ms}: the cross-encoder scores about "
                    f"{self.admission.pairs_per_s:.0f} pairs/s here, so it needs about "
                    f"{needed_s * 1000:.0f} ms of the {scorer_budget_s * 1000:.0f} ms left for "
                    "scoring; lower the window or raise the timeout"
                )
        try:
            ticket = self.admission.admit(
                scoring=scoring,
                pairs=spec.window,
                # what the scorer can expect: the deadline less Elasticsearch's usual share
                budget_s=scorer_budget_s,
            )
        except Saturated as exc:
            self.metrics.rejected.inc()
            raise errors.saturated(str(exc), self.settings.retry_after_s) from None
        self.metrics.in_flight.set(self.admission.in_flight)
        try:
            return await self._rerank_admitted(
                request, index, body, params, spec, pages, sources, text.strip(), started, ticket,
                blend,
            )  # fmt: skip
        finally:
            ticket.release()
            self.metrics.in_flight.set(self.admission.in_flight)

    async def _hybrid_by_default(self, index: str) -> bool:
        """Hybrid candidates wherever the index has embeddings and this proxy an embedder
        (README: hybrid recall@100 is above BM25's on every dataset measured)."""
        if not self.settings.enable_dense or self.encoder is None:
            return False
        now = time.monotonic()
        known = self._embeddings_known.get(index)
        if known is not None and now - known[0] < EMBEDDINGS_PROBE_TTL_S:
            return known[1]
        try:
            searcher = await self._searcher()  # the client's own view of the index
            caps = await searcher.options(request_timeout=2.0).field_caps(
                index=index, fields=EMBEDDING_FIELD, ignore_unavailable=True, allow_no_indices=True
            )
            types = caps.get("fields", {}).get(EMBEDDING_FIELD, {})
            has = set(types) == {"dense_vector"}
        except Exception as exc:  # no answer → BM25 only, never a failed search
            log.warning("could not tell whether %s has embeddings: %s", index, exc)
            return False
        if len(self._embeddings_known) > 1024:
            self._embeddings_known.clear()
        self._embeddings_known[index] = (now, has)
        return has

    def _check_model_features(self, dense: bool) -> None:
        """400 when the loaded model reads a first-stage feature this search cannot give."""
        if self.scorer is None:
            return
        try:
            require_features(
                getattr(self.scorer, "feature_names", ()), "hybrid" if dense else "bm25"
            )
        except FeatureUnavailable as exc:
            raise errors.bad_request(
                f"the cross-encoder {self.scorer.model_id} reads the first-stage feature(s) "
                f"[{', '.join(exc.features)}], which this search cannot provide: rerank with "
                "[rerank.hybrid.dense] true on an index with embeddings"
            ) from None

    async def _rerank_admitted(
        self,
        request: Request,
        index: str,
        body: dict[str, Any],
        params: dict[str, str],
        spec: RerankSpec,
        pages: Page,
        sources: SourceFilter,
        text: str,
        started: float,
        ticket: Ticket,
        blend: NamedBlend | None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        deadline = time.monotonic() + spec.timeout_ms / 1000
        try:
            first = await self._first_stage(
                request, index, body, params, spec, sources, text, deadline
            )
            degraded = first.degraded()
            if spec.dense and first.dense is None:
                message = "dense retrieval unavailable: the embedder is not loaded"
                degraded.append(Degraded("unavailable", message))
            result, rerank_ms = await self._score(first, spec, text, deadline, ticket, blend)
        finally:
            if not ticket.submitted:  # else the scoring call frees its slot when it ends
                ticket.scoring_done()
        if result.degraded:
            degraded.append(result.degraded)
        for feature, count in result.missing_features.items():
            self.metrics.missing_features.labels(feature).inc(count)
        total_ms = (time.perf_counter() - started) * 1000
        timings = {**first.timings_ms, **rerank_ms, "total": total_ms}
        if "blend" in result.timings_ms:
            timings["blend"] = result.timings_ms["blend"]
        timings["overhead"] = max(
            0.0,
            total_ms
            - timings.get("embed", 0.0)
            - timings.get("es", 0.0)
            - timings.get("rerank", 0.0)
            - timings.get("blend", 0.0)
            - timings.get("scorer_queue", 0.0),
        )
        reason = "; ".join(map(str, degraded)) if degraded else None
        for stage in ("embed", "es", "rerank", "blend", "scorer_queue", "total"):
            if stage in timings:
                self.metrics.stage_seconds.labels(stage).observe(timings[stage] / 1000)
        if reason:
            for item in degraded:
                self.metrics.degraded.labels(item.kind).inc()
        answer = self._answer(first, result, spec, pages, sources, text, timings, reason)
        log.info(
            "reranked",
            extra={
                "index": index,
                "window": spec.window,
                "candidates": len(result.hits),
                "took_ms": {k: round(v, 2) for k, v in timings.items()},
                "degraded": reason,
                "blend": result.blend,
            },
        )
        logged = None
        if self.request_log is not None:
            logged = log_document(
                index,
                text,
                spec,
                pages,
                result,
                timings,
                reason,
                answer,
                top=self.settings.log_top_hits,
                degraded_kind=degraded[0].kind if degraded else None,
            )
        return answer, logged

    async def _without_hits(
        self,
        request: Request,
        index: str,
        body: dict[str, Any],
        params: dict[str, str],
        spec: RerankSpec,
    ) -> dict[str, Any]:
        """``size: 0`` with ``rerank``: Elasticsearch's own answer (aggregations, totals), no
        first-stage window and no scoring; ``rerank.skipped`` says why."""
        forwarded = {k: v for k, v in params.items() if k not in ("from", "size")}
        upstream = {k: v for k, v in body.items() if k != "from"}
        upstream["size"] = 0
        _, answer = await search_es(
            await self._searcher(), index, upstream, params=forwarded,
            headers=self._upstream_headers(request), timeout_s=spec.timeout_ms / 1000,
        )  # fmt: skip
        if not isinstance(answer, dict):
            raise errors.bad_gateway("Elasticsearch answered a search with a non-object")
        scorer = self.scorer
        answer["rerank"] = {
            "model": (
                {"id": scorer.model_id, "version": scorer.version, "variant": scorer.variant}
                if scorer is not None
                else None
            ),
            "window": spec.window,
            "candidates": 0,
            "skipped": "size is 0: no hits to rerank",
            "degraded": None,
        }
        return answer

    async def _first_stage(
        self,
        request: Request,
        index: str,
        body: dict[str, Any],
        params: dict[str, str],
        spec: RerankSpec,
        sources: SourceFilter,
        text: str,
        deadline: float,
    ) -> FirstStageResult:
        budget_ms = max(1, int(spec.timeout_ms * self.settings.es_budget_fraction))
        source = first_stage_source(sources, spec.fields)
        forwarded = {k: v for k, v in params.items() if k not in CONSUMED_PARAMS}
        headers = self._upstream_headers(request)
        searcher = await self._searcher()
        lexical_body = {k: v for k, v in body.items() if k not in ("from", "size", "_source")}
        lexical_body.update(size=spec.window, _source=source, timeout=f"{budget_ms}ms")
        timings: dict[str, float] = {}

        def remaining() -> float:
            return deadline - time.monotonic()

        async def lexical() -> Any:
            if remaining() <= 0:
                raise errors.upstream_timeout("no time left for the first stage")
            _, answer = await search_es(
                searcher, index, lexical_body, params=forwarded, headers=headers,
                timeout_s=remaining(),
            )  # fmt: skip
            return answer

        async def dense() -> Any:
            assert self.encoder is not None
            encoder = self.encoder
            loop = asyncio.get_running_loop()
            began = time.perf_counter()
            vectors = await loop.run_in_executor(self.embed_executor, encoder.encode, [text])
            timings["embed"] = (time.perf_counter() - began) * 1000
            clause = knn_clause([float(x) for x in vectors[0]], spec.window)
            constraint = knn_filter(body.get("query"))
            if constraint is not None:
                clause["filter"] = constraint
            dense_body = {
                "knn": clause,
                "size": spec.window,
                "_source": source,
                "timeout": f"{budget_ms}ms",
            }
            if remaining() <= 0:
                raise errors.upstream_timeout("no time left for the kNN search")
            _, answer = await search_es(
                searcher, index, dense_body,
                params={k: v for k, v in forwarded.items() if k != "q"},
                headers=headers, timeout_s=remaining(),
            )  # fmt: skip
            return answer

        began = time.perf_counter()
        use_dense = spec.dense and self.encoder is not None
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
        )
        timings["es_took"] = float(
            max(result.lexical.took, result.dense.took if result.dense else 0)
        )
        return result

    async def _score(
        self,
        first: FirstStageResult,
        spec: RerankSpec,
        text: str,
        deadline: float,
        ticket: Ticket,
        blend: NamedBlend | None = None,
    ) -> tuple[PipelineResult, dict[str, float]]:
        """Fuse and rerank through :class:`Pipeline` in the scorer's pool; fail open here when
        the scorer is bypassed, fails or overruns. Returns the result and stage timings."""
        if first.dense is not None:
            base = "hybrid"
            candidates = fuse(first.lexical.hits, first.dense.hits, spec.hybrid, spec.window)
        else:
            base, candidates = "bm25", first.lexical.hits[: spec.window]

        def pipeline(scorer: Scorer | None) -> Pipeline:
            return Pipeline(
                None,
                scorer,
                base=base,
                window=spec.window,
                hybrid=spec.hybrid,
                fields=spec.fields,
                fail_open=spec.fail_open,
                blend=blend.blend if blend is not None and scorer is not None else None,
                signals=blend.signals if blend is not None else None,
                explain=spec.explain or self.request_log is not None,
            )

        def unscored(why: Degraded) -> PipelineResult:
            if not spec.fail_open:
                raise FAIL_CLOSED[why.kind](f"reranking was required but: {why}")
            result = pipeline(None).rerank(text, candidates, k=spec.window)
            result.degraded = why
            return result

        if not first.lexical.hits and (first.dense is None or not first.dense.hits):
            return pipeline(None).rerank(text, candidates, k=spec.window), {}
        if self.scorer is None:
            reason = "loading" if not self.loaded.is_set() else (self.model_error or "unknown")
            message = f"reranker unavailable: model not loaded ({reason})"
            return unscored(Degraded("unavailable", message)), {}
        if not self.breaker.allow():
            message = "circuit open: the cross-encoder failed repeatedly"
            return unscored(Degraded("circuit_open", message)), {}
        if time.monotonic() >= deadline:
            self.breaker.release()
            message = "reranker timeout: no time left after the first stage"
            return unscored(Degraded("timeout", message)), {}

        loop = asyncio.get_running_loop()
        scoring = pipeline(self.scorer)

        def call() -> PipelineResult:
            if time.monotonic() >= deadline:  # abandoned while queued: do not score at all
                raise QueueExpired("the deadline passed while waiting for the scorer")
            return scoring.rerank(text, candidates, k=spec.window, deadline=deadline)

        submitted_at = time.perf_counter()
        budget_at_submit = deadline - time.monotonic()
        future = loop.run_in_executor(self.executor, call)
        ticket.submitted = True

        def finished(done: asyncio.Future[PipelineResult]) -> None:
            ticket.scoring_done()
            if not done.cancelled():
                done.exception()  # retrieved, so an abandoned call logs no warning

        future.add_done_callback(finished)
        wait_s = max(0.0, deadline - time.monotonic()) + self.settings.scorer_grace_ms / 1000
        timed_out = True
        scorer_at_fault = True
        try:
            result = await asyncio.wait_for(asyncio.shield(future), timeout=wait_s)
        except TimeoutError:
            reason = f"reranker timeout: no scores within {spec.timeout_ms} ms"
            scorer_at_fault = self._timeout_is_scorers_fault(spec, budget_at_submit)
        except ModelError as exc:  # fail_open is false, or the call expired in the queue
            timed_out = isinstance(exc, ScoreTimeout)
            if isinstance(exc, QueueExpired):  # overload, not a broken model
                scorer_at_fault = False
            elif timed_out:
                scorer_at_fault = self._timeout_is_scorers_fault(spec, budget_at_submit)
            reason = f"reranker {'timeout' if timed_out else 'error'}: {exc}"
        except Exception as exc:  # a scorer bug (e.g. a wrong number of scores): fail open too
            log.error("the scoring call failed unexpectedly", exc_info=exc)
            timed_out = False
            reason = f"reranker error: unexpected {type(exc).__name__}"
        except BaseException:  # cancelled (the client went away): not the scorer's fault
            self.breaker.release()
            raise
        else:
            waited = (time.perf_counter() - submitted_at) * 1000
            scored = result.timings_ms.get("rerank", 0.0)
            if "rerank" in result.timings_ms:
                self.admission.record(len(result.hits), scored / 1000)
            timed_out = False
            reason = "reranker error: invalid output (non-finite scores)"
            if all(h.relevance is None or math.isfinite(h.relevance) for h in result.hits):
                if not result.degraded:
                    self.breaker.success()
                elif result.degraded.kind != "timeout" or (
                    self._timeout_is_scorers_fault(spec, budget_at_submit)
                ):
                    self.breaker.failure()
                else:  # its deadline passed mid-window: the request's own budget, not a fault
                    self.breaker.release()
                return result, {"rerank": scored, "scorer_queue": max(0.0, waited - scored)}
        if scorer_at_fault:
            self.breaker.failure()
        else:
            self.breaker.release()
        why = Degraded("timeout" if timed_out else "error", reason)
        if not spec.fail_open:
            raise FAIL_CLOSED[why.kind](reason)
        result = pipeline(None).rerank(text, candidates, k=spec.window)
        result.degraded = why
        return result, {"scorer_queue": (time.perf_counter() - submitted_at) * 1000}

    def _timeout_is_scorers_fault(self, spec: RerankSpec, budget_s: float) -> bool:
        """Whether a scoring call that missed its deadline counts against the scorer (the
        circuit breaker): only when its window should have fitted its budget with room to
        spare. A request whose own window or ``timeout_ms`` made the timeout inevitable never
        counts, so no client can open the circuit for the others. Before any call was
        measured, only requests at the proxy's defaults (or smaller) count."""
        rate = self.admission.pairs_per_s
        if rate is None:
            return (
                spec.window <= self.settings.default_window
                and spec.timeout_ms >= self.settings.default_timeout_ms
            )
        return spec.window / rate <= FAIR_TIMEOUT_SHARE * budget_s

    def _answer(
        self,
        first: FirstStageResult,
        result: PipelineResult,
        spec: RerankSpec,
        pages: Page,
        sources: SourceFilter,
        text: str,
        timings: dict[str, float],
        degraded: str | None,
    ) -> dict[str, Any]:
        hits: list[dict[str, Any]] = []
        window_hits = result.hits
        for rank, hit in enumerate(
            window_hits[pages.start : pages.start + pages.size], start=pages.start + 1
        ):
            out = dict(first.raw_hit(hit.id))
            index, doc_id = split_key(hit.id)
            out["_index"], out["_id"], out["_score"] = index, doc_id, hit.score
            out.pop("_source", None)
            filtered = filter_source(hit.source, sources)
            if filtered is not None:
                out["_source"] = filtered
            if spec.explain:
                out["_rerank"] = {
                    "rank": rank,
                    "first_stage_rank": hit.first_stage_rank,
                    "first_stage_score": hit.first_stage_score,
                    "stage_scores": dict(hit.stage_scores),
                    "cross_encoder_logit": hit.relevance,
                    "final_score": hit.score,
                }
                if hit.explanation is not None:
                    out["_rerank"]["blend"] = hit.explanation
            hits.append(out)
        lexical = first.lexical.body
        timed_out = first.lexical.timed_out or bool(first.dense and first.dense.timed_out)
        answer: dict[str, Any] = {
            "took": round(timings["total"]),
            "timed_out": timed_out,
            "_shards": first.lexical.shards,
            "hits": {
                "total": lexical.get("hits", {}).get("total"),
                "max_score": max((h.score for h in window_hits), default=None),
                "hits": hits,
            },
        }
        for key in ("aggregations", "suggest"):
            if key in lexical:
                answer[key] = lexical[key]
        scorer = self.scorer
        answer["rerank"] = {
            "model": (
                {"id": scorer.model_id, "version": scorer.version, "variant": scorer.variant}
                if scorer is not None
                else None
            ),
            "query_text": text,
            "window": spec.window,
            "candidates": len(window_hits),
            "first_stage": "hybrid" if first.dense is not None else "bm25",
            **({"fusion": spec.hybrid.fusion} if first.dense is not None else {}),
            "blend": result.blend,
            "took_ms": {k: round(v, 3) for k, v in timings.items()},
            "degraded": degraded,
        }
        return answer


def require_api_key(request: Request, keys: tuple[str, ...]) -> None:
    """401 unless ``Authorization: ApiKey <key>`` names one of ``keys`` (constant-time)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    given = key.strip().encode()
    if scheme.lower() != "apikey" or not given:
        raise errors.unauthorized()
    if not any(hmac.compare_digest(given, k.encode()) for k in keys):
        raise errors.unauthorized()


def msearch_error(exc: ProxyError) -> dict[str, Any]:
    """A failed search's ``responses`` entry: its ES-shaped error body with its status."""
    return {**exc.body(), "status": exc.status}


def parse_body(raw: bytes, *, max_depth: int = 64, max_digits: int = 40) -> dict[str, Any]:
    """The request body as a JSON object (empty → ``{}``); 400 otherwise (see
    :func:`~reranker.proxy.jsonbody.loads_strict` for what is refused)."""
    if not raw.strip(b" \t\r\n"):
        return {}
    body = loads_strict(raw, max_depth=max_depth, max_digits=max_digits)
    if not isinstance(body, dict):
        raise errors.parse_error("request body must be a JSON object")
    return body


def _scrolls(item: SearchItem) -> bool:
    try:
        check_no_scroll(item.body, item.params)
    except ProxyError:
        return True
    return False


class QueueExpired(ScoreTimeout):
    """A scoring call whose request's deadline passed before the scorer got to it."""


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/[^\s'\"(),;:<>]*")
_HEX_RUN = re.compile(r"\b[0-9a-fA-F]{16,}\b")


def redact_paths(reason: str, roots: tuple[Path, ...]) -> str:
    """``reason`` with every absolute path outside ``roots`` replaced by ``<path>``, paths
    inside a root shown relative to it, and long hex runs (hashes) replaced by ``<hash>``: a
    reload error must not tell a client which files exist or what they hash to."""
    resolved = [root.resolve() for root in roots]

    def replace(match: re.Match[str]) -> str:
        path = Path(match.group(0))
        for root in resolved:
            if path == root or path.is_relative_to(root):
                return str(path.relative_to(root)) or "."
        return "<path>"

    return _HEX_RUN.sub("<hash>", _ABSOLUTE_PATH.sub(replace, reason))


def describe_scorer(scorer: Scorer | None) -> dict[str, Any] | None:
    if scorer is None:
        return None
    return {
        "id": scorer.model_id,
        "version": scorer.version,
        "variant": scorer.variant,
        "provider": scorer.provider,
    }


def smoke_test(scorer: Scorer) -> None:
    """Raise unless ``scorer`` gives finite scores, one per pair, the relevant passage first."""
    scorer.warmup()
    scores = scorer.score([(SMOKE_QUERY, passage) for passage in SMOKE_PASSAGES])
    check_scores(scores, len(SMOKE_PASSAGES))
    if not scores[0] > scores[1]:
        raise ModelError(
            f"smoke test failed: the model scores an off-topic passage ({scores[1]:.3f}) above "
            f"the answer ({scores[0]:.3f})"
        )


def log_document(
    index: str,
    text: str,
    spec: RerankSpec,
    pages: Page,
    result: PipelineResult,
    timings: dict[str, float],
    degraded: str | None,
    answer: dict[str, Any],
    *,
    top: int = 10,
    degraded_kind: str | None = None,
) -> dict[str, Any]:
    """The request-log document (see ``es_mappings/logs-template.json``)."""
    model = answer["rerank"]["model"]
    logged: list[dict[str, Any]] = []
    for rank, hit in enumerate(result.hits[:top], start=1):
        hit_index, doc_id = split_key(hit.id)
        logged.append(
            {
                "_id": doc_id,
                "_index": hit_index,
                "rank": rank,
                "first_stage_rank": hit.first_stage_rank,
                "moved": hit.first_stage_rank - rank,
                "score": hit.score,
                "first_stage_score": hit.first_stage_score,
                "logit": hit.relevance,
                **(
                    {
                        "contributions": {
                            name: item["contribution"]
                            for name, item in hit.explanation["features"].items()
                        }
                    }
                    if hit.explanation is not None
                    else {}
                ),
            }
        )
    return {
        "@timestamp": datetime.now(UTC).isoformat(),
        "index": index,
        "query_text": text,
        "window": spec.window,
        "candidates": len(result.hits),
        "from": pages.start,
        "size": pages.size,
        "first_stage": answer["rerank"]["first_stage"],
        "fusion": answer["rerank"].get("fusion"),
        "blend": answer["rerank"].get("blend"),
        "status": 200,  # replaced by the status actually sent (Proxy._submit_log)
        "model": {"id": model["id"], "version": model["version"]} if model else None,
        "took_ms": {k: round(v, 3) for k, v in timings.items()},
        "degraded": degraded,
        "degraded_kind": degraded_kind,
        "hits": logged,
    }


def create_app(
    settings: ProxySettings,
    *,
    scorer_factory: ScorerFactory | None = None,
    encoder_factory: EncoderFactory | None = None,
    es_client: AsyncElasticsearch | None = None,
    load_in_background: bool = True,
    model_loader: ModelLoader | None = None,
) -> Starlette:
    """The proxy as an ASGI app.

    ``scorer_factory`` builds the cross-encoder :class:`Scorer` and ``encoder_factory`` the
    query embedder (for ``rerank.hybrid.dense``); both run in a thread at start-up, in the
    background by default (``/_health`` answers 503 until the scorer is loaded, and reranked
    searches fail open meanwhile). ``es_client`` replaces the client made from
    ``settings.es`` (it is then not closed by the app). The :class:`Proxy` is at
    ``app.state.proxy``.
    """
    proxy = Proxy(
        settings,
        scorer_factory=scorer_factory,
        encoder_factory=encoder_factory,
        es_client=es_client,
        load_in_background=load_in_background,
        model_loader=model_loader,
    )

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "GET, POST")
            error = errors.method_not_allowed(request.method, request.url.path, allowed)
        elif isinstance(exc, HTTPException) and exc.status_code == 404:
            error = errors.not_found(request.url.path)
        else:
            if not isinstance(exc, HTTPException):
                log.error("unexpected failure", exc_info=exc)
            error = errors.internal_error()
        proxy.metrics.requests.labels("other", str(error.status)).inc()
        return proxy.error(request, error)

    app = Starlette(
        routes=[
            Route("/_health", proxy.health, methods=["GET"]),
            Route("/metrics", proxy.metrics_endpoint, methods=["GET"]),
            Route("/_reranker/reload", proxy.reload_endpoint, methods=["POST"]),
            Route("/{index}/_search", proxy.search, methods=["GET", "POST"]),
            Route("/_msearch", proxy.msearch, methods=["GET", "POST"]),
            Route("/{index}/_msearch", proxy.msearch, methods=["GET", "POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: http_error},
        lifespan=proxy.lifespan,
    )
    app.state.proxy = proxy
    return app


def serve(
    settings: ProxySettings,
    *,
    scorer_factory: ScorerFactory | None = None,
    encoder_factory: EncoderFactory | None = None,
    model_loader: ModelLoader | None = None,
    log_level: str = "info",
    access_log: bool = False,
    json_logs: bool = True,
) -> None:
    """Run the proxy with uvicorn on ``settings.host:settings.port`` until interrupted;
    SIGHUP (or ``POST /_reranker/reload``) reloads the model when ``model_loader`` is given."""
    import uvicorn

    from reranker.proxy.logs import log_config

    app = create_app(
        settings,
        scorer_factory=scorer_factory,
        encoder_factory=encoder_factory,
        model_loader=model_loader,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=log_config(log_level, json_logs),
        access_log=access_log,
        server_header=False,
    )
