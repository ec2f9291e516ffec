"""Elasticsearch client factory: auth, TLS and retries in one place."""

from __future__ import annotations

from typing import Any

from elasticsearch import Elasticsearch

from reranker.config import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments shared by the sync and async clients."""
    options: dict[str, Any] = {
        "request_timeout": settings.request_timeout_s,
        "retry_on_timeout": True,
        "max_retries": 3,
    }
    if settings.es_api_key:
        options["api_key"] = settings.es_api_key
    elif settings.es_username is not None and settings.es_password is not None:
        options["basic_auth"] = (settings.es_username, settings.es_password)
    if settings.es_url.startswith("https"):
        options["verify_certs"] = settings.es_verify_certs
        if settings.es_ca_certs:
            options["ca_certs"] = settings.es_ca_certs
        if settings.es_ca_fingerprint:
            options["ssl_assert_fingerprint"] = settings.es_ca_fingerprint
    return options


def make_client(settings: Settings) -> Elasticsearch:
    return Elasticsearch(list(settings.es_urls), **client_options(settings))
