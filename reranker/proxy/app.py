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
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from elasticsearch import AsyncElasticsearch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from reranker.config import MODEL_VARIANTS
from reranker.proxy import errors
from reranker.proxy.candidates import search_es
from reranker.proxy.clients import check_request_share, client_of, fair_shares, owner_of
from reranker.proxy.errors import ProxyError
from reranker.proxy.events import accept_events
from reranker.proxy.http import may_see_details, parse_body, read_body, require_api_key
from reranker.proxy.limits import CURRENT_CLIENT, Admission, CircuitBreaker
from reranker.proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from reranker.proxy.metrics import ProxyMetrics
from reranker.proxy.msearch import SearchItem, msearch_error, parse_msearch
from reranker.proxy.msearch import concurrency as msearch_concurrency
from reranker.proxy.profiles import profiles_refusal
from reranker.proxy.reload import (
    EncoderFactory,
    LoadedModels,
    ModelLoader,
    ScorerFactory,
    thaw_heap,
)
from reranker.proxy.request import (
    asked_hits,
    check_hits,
    check_no_scroll,
    index_allowed,
    split_rerank,
)
from reranker.proxy.request_log import RequestLog
from reranker.proxy.rerank import Answer, RerankHandler, SearchRequest
from reranker.proxy.scoped import ScopedAccess
from reranker.proxy.settings import ProxySettings
from reranker.proxy.ubi import UbiLog, UbiParams
from reranker.proxy.upstream import check_forwarded_headers, client_params, make_async_client
from reranker.rerank.remote import RemoteScorer

log = logging.getLogger(__name__)

COMPAT_JSON = "application/vnd.elasticsearch+json;compatible-with=9"
PRODUCT_HEADER = {"X-Elastic-Product": "Elasticsearch"}


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    """One search answered: a status and an answer body (with its request-log document when
    it was reranked), or Elasticsearch's own response, streamed as it came."""

    status: int
    answer: Any
    logged: dict[str, Any] | None = None
    streamed: Response | None = None


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
        rescore_factory: EncoderFactory | None = None,
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
        scorer_share, self.request_share = fair_shares(settings)
        self.admission = Admission(settings.max_in_flight, settings.max_scorer_queue, scorer_share)
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooloff_s)
        self.models = LoadedModels(
            settings,
            self.metrics,
            self.breaker,
            scorer_factory=scorer_factory,
            encoder_factory=encoder_factory,
            model_loader=model_loader,
            rescore_factory=rescore_factory,
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
            admin=lambda: self.es,
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
            if isinstance(self.models.scorer, RemoteScorer):  # its HTTP client, health thread
                await asyncio.to_thread(self.models.scorer.close)
            thaw_heap()

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
        who = client_of(request, self.settings)
        client = CURRENT_CLIENT.set(who)
        try:
            check_forwarded_headers(request)
            await check_request_share(self.request_share, request, who, self.settings)
            response = await handler(request)
        except ProxyError as exc:
            response = self.error(request, exc)
        except Exception:
            log.exception("unexpected failure on %s %s", request.method, request.url.path)
            response = self.error(request, errors.internal_error())
        finally:
            CURRENT_CLIENT.reset(client)
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

        def said(value: str) -> None:
            nonlocal kind
            kind = value

        async def handle(request: Request) -> Response:
            self._check_api_key(request)
            index = request.path_params["index"]
            self._check_index(index, request.query_params)  # before the body is read
            raw = await self._read_body(request)
            body = self._parse_body(raw)
            params = client_params(request)
            outcome = await self._one_search(
                request, index, body, raw, params, started, stream=True, kind=said
            )
            if outcome.streamed is not None:
                return outcome.streamed
            response = self.respond(request, outcome.answer, outcome.status)
            self._submit_log(outcome.logged, response.status_code)
            return response

        return await self.guarded(request, handle, lambda: kind)

    async def _one_search(
        self,
        request: Request,
        index: str,
        body: dict[str, Any],
        raw: bytes,
        params: dict[str, str],
        started: float,
        *,
        stream: bool = False,
        kind: Callable[[str], None] = lambda _: None,
    ) -> SearchOutcome:
        """One search, the body of ``_search`` or one ``_msearch`` item: passed through to
        Elasticsearch without ``rerank`` (``stream``: its response as it came, when nothing
        needs reading), reranked with it; its UBI ``query_id`` is held meanwhile and recorded
        once it answered. ``kind`` hears which of the two it is once the body says."""
        check_hits(body, params, self.settings.max_hits)
        body, ubi = await self._ubi_begin(body)
        try:
            rest, spec_raw = split_rerank(body)
            check_no_scroll(body, params)
            if spec_raw is None:
                kind("passthrough")
                if stream and ubi is None:
                    streamed = await self._passthrough(request, index, raw, params)
                    return SearchOutcome(streamed.status_code, None, streamed=streamed)
                upstream = raw if ubi is None or ubi[1] else json.dumps(body).encode()
                status, plain = await self._search_upstream(request, index, upstream, params)
                self._ubi_finish(request, ubi, index, body, params, status, plain)
                return SearchOutcome(status, plain)
            kind("rerank")
            user = ubi[0].subject if ubi is not None else None
            owner = owner_of(request, self.settings)
            search = SearchRequest(request, index, rest, params, started, user, owner)
            answer, logged = await self._rerank(search, spec_raw)
            self._ubi_finish(request, ubi, index, body, params, 200, answer)
            return SearchOutcome(200, answer, logged)
        finally:
            self._ubi_release(ubi)

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
            allowed = all(self._index_refusal(item.index, item.params) is None for item in items)
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
            self._check_index(item.index, item.params)
            if item.error is not None:
                raise item.error
            outcome = await self._one_search(
                request, item.index, item.body, item.raw_body, item.params, started
            )
            if not isinstance(outcome.answer, dict):
                raise errors.bad_gateway("Elasticsearch answered a search with a non-object")
            return {**outcome.answer, "status": outcome.status}, outcome.logged
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
            owner = owner_of(request, self.settings)
            answer = await accept_events(self.ubi, raw, owner=owner, client=CURRENT_CLIENT.get())
            return self.respond(request, answer)

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
            self.ubi.finish(
                ubi[0], index, body, params, answer, owner=owner_of(request, self.settings)
            )

    # ------------------------------------------------------------------ input

    def _remote_endpoints(self) -> list[dict[str, Any]]:
        """Each remote scorer endpoint's breaker state and counters (none for a local model)."""
        scorer = self.models.scorer
        return scorer.describe() if isinstance(scorer, RemoteScorer) else []

    def _check_api_key(self, request: Request) -> None:
        if self.settings.api_keys:
            require_api_key(request, self.settings.api_keys)

    def _may_see_details(self, request: Request, public: bool) -> bool:
        return may_see_details(request, self.settings, public)

    def _index_refusal(self, index: str, params: Mapping[str, str] | None = None) -> str | None:
        """The part of ``index`` the allow-list refuses, or that reaches the profiles index."""
        refused = profiles_refusal(index, params or {}, self.settings)
        if refused is not None:
            return refused
        return index_allowed(
            index, self.settings.allowed_indices, remote_clusters=self.settings.remote_clusters
        )

    def _check_index(self, index: str, params: Mapping[str, str] | None = None) -> None:
        """403 unless the allow-list (the proxy's second line) admits ``index``."""
        refused = self._index_refusal(index, params)
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
        return await read_body(
            request, self.settings.max_body_bytes, timeout_s=self.settings.body_timeout_s
        )

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


def _scrolls(item: SearchItem) -> bool:
    try:
        check_no_scroll(item.body, item.params)
    except ProxyError:
        return True
    return False
