"""The proxy's routes: an ASGI app (Starlette) that answers ``/{index}/_search`` like
Elasticsearch.

Without a ``rerank`` object a search passes through to Elasticsearch unchanged; with one,
:class:`~reranker.proxy.rerank.RerankHandler` answers it. Here are the app's lifecycle, its
endpoints (search, multi-search, health, metrics, model reload), API keys and the index
allow-list, body limits and the Elasticsearch-shaped responses; the loaded models and their
hot reload are in :mod:`reranker.proxy.reload`. With UBI on, searches get a ``query_id`` and
``POST /_reranker/events`` takes impressions and clicks (:mod:`reranker.proxy.ubi`,
:mod:`reranker.proxy.events`). See :func:`create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from elastic_transport import HttpxAsyncHttpNode
from elasticsearch import AsyncElasticsearch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reranker.config import MODEL_VARIANTS
from reranker.errors import ConfigError
from reranker.es.client import client_options
from reranker.proxy import errors
from reranker.proxy.candidates import search_es
from reranker.proxy.errors import ProxyError
from reranker.proxy.events import accept_events
from reranker.proxy.http import parse_body, require_api_key
from reranker.proxy.limits import Admission, CircuitBreaker
from reranker.proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from reranker.proxy.metrics import ProxyMetrics
from reranker.proxy.msearch import SearchItem, parse_msearch
from reranker.proxy.msearch import concurrency as msearch_concurrency
from reranker.proxy.reload import EncoderFactory, LoadedModels, ModelLoader, ScorerFactory
from reranker.proxy.request import (
    asked_hits,
    check_hits,
    check_no_scroll,
    index_allowed,
    split_rerank,
)
from reranker.proxy.request_log import RequestLog
from reranker.proxy.rerank import Answer, RerankHandler, SearchRequest
from reranker.proxy.rerank_api import RerankApi
from reranker.proxy.scoped import ScopedAccess
from reranker.proxy.settings import ProxySettings
from reranker.proxy.ubi import UbiLog, UbiParams

log = logging.getLogger(__name__)

COMPAT_JSON = "application/vnd.elasticsearch+json;compatible-with=9"
PRODUCT_HEADER = {"X-Elastic-Product": "Elasticsearch"}


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
        if settings.scorer_urls and scorer_factory is None:
            scorer_factory = remote_scorer_factory(settings)
            if settings.scorer_workers == 1:  # remote calls wait on the network: overlap them
                settings = dataclasses.replace(
                    settings, scorer_workers=4 * len(settings.scorer_urls)
                )
        self.settings = settings
        self.load_in_background = load_in_background
        self.metrics = ProxyMetrics()
        self.admission = Admission(settings.max_in_flight, settings.max_scorer_queue)
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooloff_s)
        self.models = LoadedModels(
            settings,
            self.metrics,
            self.breaker,
            scorer_factory=scorer_factory,
            encoder_factory=encoder_factory,
            model_loader=model_loader,
        )
        self.metrics.watch_remote_endpoints(self._remote_endpoints)
        self.reranking = RerankHandler(
            settings,
            self.metrics,
            self.models,
            self.admission,
            self.breaker,
            searcher=self._searcher,
            upstream_headers=self._upstream_headers,
        )
        self._own_client = es_client is None
        self._es = es_client
        self.scoped: ScopedAccess | None = None
        self.request_log: RequestLog | None = None
        self.ubi: UbiLog | None = None
        self._loader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def es(self) -> AsyncElasticsearch:
        if self._es is None:
            raise RuntimeError("the proxy is not started (use the app's lifespan)")
        return self._es

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.models.loaded = asyncio.Event()
        cluster = not self.settings.scorer_only  # scorer-only: no Elasticsearch at all
        if cluster and self._es is None:
            self._es = make_async_client(self.settings)
        if cluster:
            self.scoped = ScopedAccess(self.settings, self.es)
            await self.scoped.start()
        if self.load_in_background:
            self._loader = asyncio.create_task(self.models.load(), name="reranker-load-models")
        else:
            await self.models.load()
        hangup = self.models.install_sighup()
        if (self.settings.request_log or self.settings.ubi) and cluster:
            # one bounded queue for the request log and the UBI documents
            self.request_log = RequestLog(
                self.es,
                self.metrics,
                prefix=self.settings.log_index_prefix,
                queue_size=self.settings.log_queue_size,
                batch_size=self.settings.log_batch_size,
                flush_s=self.settings.log_flush_s,
                install_template=self.settings.request_log,
            )
            await self.request_log.start()
        if self.settings.ubi and self.request_log is not None:
            self.ubi = UbiLog(self.settings, self.metrics, self.es, self.request_log)
            await self.ubi.start()
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
            self.reranking.close()
            closing = getattr(self.models.scorer, "close", None)
            if callable(closing):  # a remote scorer's HTTP client and health thread
                await asyncio.to_thread(closing)

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
            folder = self.models.model_folder(model) if model else None
            outcome = await self.models.reload(folder, variant)
            return self.respond(request, outcome)

        return await self.guarded(request, handle, lambda: "admin")

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
            check_forwarded_headers(request)
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
            if self.settings.scorer_only:
                es_state = {"reachable": None, "reason": "scorer-only: no Elasticsearch"}
            else:
                try:
                    health = await self.es.options(request_timeout=2.0).cluster.health()
                    es_state = {"reachable": True, "status": health.get("status")}
                except Exception as exc:
                    es_state["reason"] = str(exc)[:300]
            models = self.models
            scorer = models.scorer
            model: dict[str, Any] = {"loaded": scorer is not None}
            if scorer is not None:
                model.update(
                    id=scorer.model_id,
                    version=scorer.version,
                    variant=scorer.variant,
                    provider=scorer.provider,
                )
            elif not models.loaded.is_set():
                model["reason"] = "loading"
            elif models.model_error:
                model["reason"] = models.model_error
            # ready once every load has finished (a model reading the dense score needs the
            # embedder too), and a cross-encoder is there
            ok = (
                (self.settings.scorer_only or bool(es_state["reachable"]))
                and scorer is not None
                and models.loaded.is_set()
            )
            if not self._may_see_details(request, self.settings.public_health_details):
                # liveness only: no model, cluster or load details without a key
                return self.respond(
                    request, {"status": "ok" if ok else "unavailable"}, 200 if ok else 503
                )
            body = {
                "status": "ok" if ok else "unavailable",
                "model": model,
                "embedder": {
                    "loaded": models.encoder is not None,
                    **({"reason": models.encoder_error} if models.encoder_error else {}),
                },
                "elasticsearch": es_state,
                "circuit": self.breaker.state,
                **(
                    {"scorer_endpoints": self._remote_endpoints()}
                    if self.settings.scorer_urls
                    else {}
                ),
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
            params = client_params(request)
            check_hits(body, params, self.settings.max_hits)
            body, ubi = await self._ubi_begin(body)
            try:
                rest, spec_raw = split_rerank(body)
                check_no_scroll(body, params)
                if spec_raw is None:
                    kind = "passthrough"
                    if ubi is None:
                        return await self._passthrough(request, index, raw, params)
                    upstream = raw if ubi[1] else json.dumps(body).encode()
                    status, plain = await self._search_upstream(request, index, upstream, params)
                    self._ubi_finish(request, ubi, index, body, params, status, plain)
                    return self.respond(request, plain, status)
                kind = "rerank"
                search = SearchRequest(request, index, rest, params, started)
                answer, logged = await self._rerank(search, spec_raw)
                self._ubi_finish(request, ubi, index, body, params, 200, answer)
            finally:
                self._ubi_release(ubi)
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
            url_params = client_params(request)
            items = parse_msearch(
                raw,
                path_index,
                url_params,
                max_depth=self.settings.max_json_depth,
                max_digits=self.settings.max_number_digits,
            )
            if len(items) > self.settings.max_msearch_searches:
                raise errors.bad_request(
                    f"the _msearch body holds {len(items)} searches, beyond this proxy's limit "
                    f"of {self.settings.max_msearch_searches}"
                )
            limit = msearch_concurrency(url_params)
            # with UBI on, every search is answered (and given its query_id) on its own
            plain = self.ubi is None and not any(
                item.wants_rerank
                or item.error
                or asked_hits(item.body, item.params) > self.settings.max_hits
                for item in items
            )
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
            check_hits(item.body, item.params, self.settings.max_hits)
            body, ubi = await self._ubi_begin(item.body)
            try:
                rest, spec_raw = split_rerank(body)
                check_no_scroll(body, item.params)
                if spec_raw is None:
                    upstream = item.raw_body if ubi is None or ubi[1] else json.dumps(body).encode()
                    status, plain = await self._search_upstream(
                        request, item.index, upstream, item.params
                    )
                    if not isinstance(plain, dict):
                        raise errors.bad_gateway(
                            "Elasticsearch answered a search with a non-object"
                        )
                    self._ubi_finish(request, ubi, item.index, body, item.params, status, plain)
                    return {**plain, "status": status}, None
                search = SearchRequest(request, item.index, rest, item.params, started)
                answer, logged = await self._rerank(search, spec_raw)
                self._ubi_finish(request, ubi, item.index, body, item.params, 200, answer)
                return {**answer, "status": 200}, logged
            finally:
                self._ubi_release(ubi)
        except ProxyError as exc:
            return msearch_error(exc), None
        except Exception:
            log.exception("unexpected failure in a multi-search item on %s", item.index)
            return msearch_error(errors.internal_error()), None

    async def _rerank(self, search: SearchRequest, spec_raw: Any) -> Answer:
        """A search with ``rerank``: its answer, and its log document when requests are
        logged (the caller queues it with the status it sent)."""
        logged = self.settings.request_log and self.request_log is not None
        return await self.reranking.rerank(search, spec_raw, logged=logged)

    # ------------------------------------------------------------------ UBI events

    async def events_endpoint(self, request: Request) -> Response:
        """``POST /_reranker/events``: a batch of UBI events (see :mod:`reranker.proxy.events`)."""

        async def handle(request: Request) -> Response:
            self._check_api_key(request)
            if self.ubi is None:
                raise ProxyError(
                    404,
                    "resource_not_found_exception",
                    "UBI event logging is off on this proxy (start it with --ubi, or "
                    "RERANKER_PROXY_UBI=true)",
                )
            raw = await self._read_body(request)
            return self.respond(
                request, await accept_events(self.ubi, raw, owner=self._owner(request))
            )

        return await self.guarded(request, handle, lambda: "events")

    async def _ubi_begin(
        self, body: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[UbiParams, bool] | None]:
        """With UBI on: the body without ``ext.ubi``, and the search's UBI parameters with
        whether the body is unchanged (so its raw bytes may go on as they are). Its
        ``query_id`` is reserved until :meth:`_ubi_release`."""
        if self.ubi is None:
            return body, None
        rest, params = await self.ubi.begin(body)
        return rest, (params, rest is body)

    def _ubi_release(self, ubi: tuple[UbiParams, bool] | None) -> None:
        if ubi is not None and self.ubi is not None:
            self.ubi.release(ubi[0])

    def _ubi_finish(
        self,
        request: Request,
        ubi: tuple[UbiParams, bool] | None,
        index: str,
        body: dict[str, Any],
        params: dict[str, str],
        status: int,
        answer: Any,
    ) -> None:
        """A search answered with 200 gets its ``query_id`` and query document, owned by
        the client that made it."""
        if ubi is not None and self.ubi is not None and status == 200 and isinstance(answer, dict):
            self.ubi.finish(ubi[0], index, body, params, answer, owner=self._owner(request))

    def _owner(self, request: Request) -> str | None:
        """Who the client is, for binding behaviour data to it: a digest of the proxy API key
        it authenticated with (the key itself is never stored); ``None`` on a proxy without
        keys, where clients are indistinguishable."""
        if not self.settings.api_keys:
            return None
        _, _, key = request.headers.get("authorization", "").partition(" ")
        return "key-" + hashlib.sha256(key.strip().encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ input

    def _remote_endpoints(self) -> list[dict[str, Any]]:
        """Each remote scorer endpoint's breaker state and counters (none for a local model)."""
        describe = getattr(self.models.scorer, "describe", None)
        return list(describe()) if callable(describe) else []

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
        # checked at the door (check_forwarded_headers): short, printable ASCII. Surrounding
        # spaces are dropped: HTTP forbids them in a value (uvicorn's parser strips them; an
        # ASGI server that does not would hand them on), and the client library fails such a
        # request as a *connection* error, taking the node out of its pool for everyone
        auth = (request.headers.get("authorization") or "").strip()
        if auth and not self.settings.es_has_credentials and not self.settings.api_keys:
            headers["authorization"] = auth
        opaque = (request.headers.get("x-opaque-id") or "").strip()
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
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise errors.too_large(limit)
                    chunks.append(chunk)
        except TimeoutError:
            raise ProxyError(
                408,
                "request_timeout_exception",
                f"the request body did not arrive within {self.settings.body_timeout_s:g} s",
            ) from None
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
        return status, errors.scrub_internals(body)


def remote_scorer_factory(settings: ProxySettings) -> ScorerFactory:
    """Builds the :class:`~reranker.rerank.remote.RemoteScorer` over ``settings.scorer_urls``:
    waits up to 30 s for a first endpoint to answer ``/info``, then health-checks every 5 s."""
    from reranker.rerank.remote import RemoteScorer

    def build() -> RemoteScorer:
        return RemoteScorer(
            settings.scorer_urls,
            api_key=settings.scorer_api_key,
            timeout_s=settings.default_timeout_ms / 1000,
            failures=min(3, settings.breaker_failures),
            cooloff_s=min(5.0, settings.breaker_cooloff_s),
            wait_s=30.0,
            health_interval_s=5.0,
        )

    return build


def msearch_error(exc: ProxyError) -> dict[str, Any]:
    """A failed search's ``responses`` entry: its ES-shaped error body with its status."""
    return {**exc.body(), "status": exc.status}


def _scrolls(item: SearchItem) -> bool:
    try:
        check_no_scroll(item.body, item.params)
    except ProxyError:
        return True
    return False


#: the longest ``X-Opaque-Id`` forwarded to Elasticsearch: a longer one made it answer
#: ``too_long_http_header_exception`` and left the pooled connection hung for other clients
MAX_OPAQUE_ID = 256
#: the longest ``Authorization`` header passed through (an API key or basic credentials)
MAX_AUTHORIZATION = 4096
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
#: query parameters never forwarded: Elasticsearch's Java stack traces are internals
DROPPED_PARAMS = ("error_trace",)


def check_forwarded_headers(request: Request) -> None:
    """400 for a header the proxy would forward to Elasticsearch that is too long or not
    printable ASCII (``X-Opaque-Id``, ``Authorization``): it must never reach the shared
    connections, and a non-ASCII one could not be sent at all."""
    for name, limit in (("x-opaque-id", MAX_OPAQUE_ID), ("authorization", MAX_AUTHORIZATION)):
        value = request.headers.get(name)
        if value is None:
            continue
        if len(value) > limit:
            raise errors.bad_request(f"the [{name}] header is longer than {limit} characters")
        if not _PRINTABLE_ASCII.fullmatch(value):
            raise errors.bad_request(f"the [{name}] header must be printable ASCII")


def client_params(request: Request) -> dict[str, str]:
    """The URL parameters a search forwards: ``error_trace`` dropped (no stack traces to
    clients); ``format`` other than JSON refused (the proxy reads and answers JSON only)."""
    params = {k: v for k, v in request.query_params.items() if k not in DROPPED_PARAMS}
    response_format = params.pop("format", None)
    if response_format is not None and response_format.lower() != "json":
        raise errors.bad_request(
            f"[format] {response_format[:20]!r} is not supported: this proxy answers JSON only"
        )
    return params


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

    routes = [
        Route("/_health", proxy.health, methods=["GET"]),
        Route("/metrics", proxy.metrics_endpoint, methods=["GET"]),
        Route("/_reranker/reload", proxy.reload_endpoint, methods=["POST"]),
    ]
    if not settings.scorer_only:
        routes += [
            # User Behavior Insights events (reranker.proxy.events)
            Route("/_reranker/events", proxy.events_endpoint, methods=["POST"]),
            Route("/{index}/_search", proxy.search, methods=["GET", "POST"]),
            Route("/_msearch", proxy.msearch, methods=["GET", "POST"]),
            Route("/{index}/_msearch", proxy.msearch, methods=["GET", "POST"]),
        ]
    # the standard rerank endpoints (TEI, Cohere): reranker/proxy/rerank_api.py
    routes += RerankApi(proxy).routes()
    app = Starlette(
        routes=routes,
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
    from reranker.proxy.connections import protocol_with_header_timeout

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_with_header_timeout(settings.header_timeout_s),
        log_level=log_level,
        log_config=log_config(log_level, json_logs),
        access_log=access_log,
        server_header=False,
    )
