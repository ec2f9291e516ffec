"""What goes on to Elasticsearch: the proxy's async client, and which of a client's headers
and query parameters are forwarded (bounded, printable ASCII, an allow-list)."""

from __future__ import annotations

import re

from elastic_transport import HttpxAsyncHttpNode
from elasticsearch import AsyncElasticsearch
from starlette.requests import Request

from reranker.errors import ConfigError
from reranker.es.client import client_options
from reranker.proxy import errors
from reranker.proxy.settings import ProxySettings


def make_async_client(settings: ProxySettings) -> AsyncElasticsearch:
    """The proxy's client: the shared auth/TLS options, httpx transport (no aiohttp needed),
    no retry on timeout (the request's deadline is already spent). A connection error or a
    503 is retried on another node, as many times as there are nodes: with one retry, a
    request whose first node answered 503 while a killed node was being tried again (the
    pool revives a dead node after its back-off) failed the search, seen in a 3-node run."""
    options = client_options(settings.es)
    options.update(retry_on_timeout=False, max_retries=max(1, len(settings.es.es_urls)))
    if "ssl_assert_fingerprint" in options:
        # httpx cannot pin a certificate; elastic-transport's aiohttp node can
        try:
            from elastic_transport import AiohttpHttpNode

            return AsyncElasticsearch(
                list(settings.es.es_urls), node_class=AiohttpHttpNode, **options
            )
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                "the proxy pins the cluster's certificate fingerprint only with aiohttp "
                f"installed (pip install aiohttp), or give RERANKER_ES_CA_CERTS instead ({exc})"
            ) from None
    return AsyncElasticsearch(list(settings.es.es_urls), node_class=HttpxAsyncHttpNode, **options)


#: the longest ``X-Opaque-Id`` forwarded to Elasticsearch: a longer one made it answer
#: ``too_long_http_header_exception`` and left the pooled connection hung for other clients
MAX_OPAQUE_ID = 256
#: the longest ``Authorization`` header passed through (an API key or basic credentials)
MAX_AUTHORIZATION = 4096
PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
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
        if not PRINTABLE_ASCII.fullmatch(value):
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
