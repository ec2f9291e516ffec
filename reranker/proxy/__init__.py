"""The reranking proxy (``reranker serve``): Elasticsearch's ``_search`` API with a ``rerank``
option. :func:`create_app` builds the ASGI app, :func:`serve` runs it with uvicorn."""

from reranker.proxy.server import create_app, serve
from reranker.proxy.settings import ProxySettings

__all__ = ["ProxySettings", "create_app", "serve"]
