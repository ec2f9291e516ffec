"""The proxy as an ASGI app (:func:`create_app`: its routes and error handlers) and as a
process (:func:`serve`: uvicorn with the limits a hostile client meets)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from elasticsearch import AsyncElasticsearch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reranker.proxy import errors
from reranker.proxy.app import Proxy
from reranker.proxy.embed_api import EmbedApi
from reranker.proxy.profiles import ProfilesApi
from reranker.proxy.reload import EncoderFactory, ModelLoader, ScorerFactory
from reranker.proxy.rerank_api import RerankApi
from reranker.proxy.settings import ProxySettings
from reranker.retrieval.remote_embedder import RemoteEmbedder

log = logging.getLogger(__name__)

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def create_app(
    settings: ProxySettings,
    *,
    scorer_factory: ScorerFactory | None = None,
    encoder_factory: EncoderFactory | None = None,
    es_client: AsyncElasticsearch | None = None,
    load_in_background: bool = True,
    model_loader: ModelLoader | None = None,
    rescore_factory: EncoderFactory | None = None,
) -> Starlette:
    """The proxy as an ASGI app.

    ``scorer_factory`` builds the cross-encoder :class:`Scorer` and ``encoder_factory`` the
    query embedder (for ``rerank.hybrid.dense``); both run in a thread at start-up, in the
    background by default (``/_health`` answers 503 until the scorer is loaded, and reranked
    searches fail open meanwhile). ``es_client`` replaces the client made from
    ``settings.es`` (it is then not closed by the app). ``rescore_factory`` builds the second
    embedder (:mod:`reranker.rerank.rescore`), for indices that hold its vectors. The
    :class:`Proxy` is at ``app.state.proxy``.
    """
    proxy = Proxy(
        settings,
        scorer_factory=scorer_factory,
        encoder_factory=encoder_factory,
        es_client=es_client,
        load_in_background=load_in_background,
        model_loader=model_loader,
        rescore_factory=rescore_factory,
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

    # a remote embedder's endpoints (``--embedder-url``), beside the remote scorer's
    proxy.metrics.watch_remote_endpoints(lambda: _embedder_endpoints(proxy), role="embedder")
    app = Starlette(
        routes=_routes(proxy, settings),
        exception_handlers={HTTPException: http_error, Exception: http_error},
        lifespan=_closing_remote_embedder(proxy),
    )
    app.state.proxy = proxy
    return app


def _routes(proxy: Proxy, settings: ProxySettings) -> list[Route]:
    embed_api = EmbedApi(proxy)
    metrics = Route("/metrics", proxy.metrics_endpoint, methods=["GET"])
    if settings.embedder_only:
        # the embedder alone: no search, no rerank API, no cross-encoder to reload
        return [metrics, *embed_api.embedder_only_routes()]
    routes = [
        Route("/_health", proxy.health, methods=["GET"]),
        metrics,
        Route("/_reranker/reload", proxy.reload_endpoint, methods=["POST"]),
    ]
    if not settings.scorer_only:
        routes += [
            # User Behavior Insights events (reranker.proxy.events)
            Route("/_reranker/events", proxy.events_endpoint, methods=["POST"]),
            # a user's personalisation profiles (reranker.proxy.profiles)
            *ProfilesApi(proxy).routes(),
            Route("/{index}/_search", proxy.search, methods=["GET", "POST"]),
            Route("/_msearch", proxy.msearch, methods=["GET", "POST"]),
            Route("/{index}/_msearch", proxy.msearch, methods=["GET", "POST"]),
        ]
    # the standard rerank endpoints (TEI, Cohere): reranker/proxy/rerank_api.py
    routes += RerankApi(proxy).routes()
    # TEI's /embed with the proxy's embedder (remote embedding): reranker/proxy/embed_api.py
    return routes + embed_api.routes()


def _closing_remote_embedder(proxy: Proxy) -> Lifespan:
    """The proxy's lifespan, and then a remote embedder's HTTP client and health thread
    closed."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with proxy.lifespan(app):
                yield
        finally:
            encoder = proxy.models.encoder
            if isinstance(encoder, RemoteEmbedder):
                await asyncio.to_thread(encoder.close)

    return lifespan


def _embedder_endpoints(proxy: Proxy) -> list[dict[str, Any]]:
    encoder = proxy.models.encoder
    return encoder.describe() if isinstance(encoder, RemoteEmbedder) else []


def serve(
    settings: ProxySettings,
    *,
    scorer_factory: ScorerFactory | None = None,
    encoder_factory: EncoderFactory | None = None,
    model_loader: ModelLoader | None = None,
    rescore_factory: EncoderFactory | None = None,
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
        rescore_factory=rescore_factory,
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
