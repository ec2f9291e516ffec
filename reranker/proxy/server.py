"""The proxy as an ASGI app (:func:`create_app`: its routes and error handlers) and as a
process (:func:`serve`: uvicorn with the limits a hostile client meets)."""

from __future__ import annotations

import logging

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

log = logging.getLogger(__name__)


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
            # a user's personalisation profiles (reranker.proxy.profiles)
            *ProfilesApi(proxy).routes(),
            Route("/{index}/_search", proxy.search, methods=["GET", "POST"]),
            Route("/_msearch", proxy.msearch, methods=["GET", "POST"]),
            Route("/{index}/_msearch", proxy.msearch, methods=["GET", "POST"]),
        ]
    # the standard rerank endpoints (TEI, Cohere): reranker/proxy/rerank_api.py
    routes += RerankApi(proxy).routes()
    # TEI's /embed with the proxy's embedder (remote embedding): reranker/proxy/embed_api.py
    routes += EmbedApi(proxy).routes()
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
