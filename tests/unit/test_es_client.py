"""Client options: credentials and TLS verification to the cluster."""

from __future__ import annotations

import importlib.util

import pytest

from reranker.config import Settings
from reranker.errors import ConfigError
from reranker.es.client import client_options, make_client
from reranker.proxy import ProxySettings
from reranker.proxy.upstream import make_async_client

FINGERPRINT = ":".join(["AB"] * 32)


def test_tls_options_apply_to_https_only() -> None:
    secure = client_options(
        Settings(es_url="https://es:9200", es_ca_certs="/ca.pem", es_ca_fingerprint=FINGERPRINT)
    )
    assert secure["verify_certs"] is True and secure["ca_certs"] == "/ca.pem"
    assert secure["ssl_assert_fingerprint"] == FINGERPRINT
    plain = client_options(Settings(es_url="http://es:9200", es_ca_certs="/ca.pem"))
    assert "verify_certs" not in plain and "ca_certs" not in plain


def test_credentials_come_from_settings() -> None:
    assert client_options(Settings(es_api_key="k"))["api_key"] == "k"
    basic = client_options(Settings(es_username="u", es_password="p"))
    assert basic["basic_auth"] == ("u", "p")
    with pytest.raises(ConfigError, match="not both"):
        Settings(es_api_key="k", es_username="u", es_password="p")


def test_a_malformed_fingerprint_is_refused() -> None:
    with pytest.raises(ConfigError, match="64 hex digits"):
        Settings(es_url="https://es:9200", es_ca_fingerprint="abc")


def test_the_sync_client_pins_a_fingerprint() -> None:
    make_client(Settings(es_url="https://es:9200", es_ca_fingerprint=FINGERPRINT)).close()


@pytest.mark.skipif(importlib.util.find_spec("aiohttp") is not None, reason="aiohttp installed")
def test_the_proxy_without_aiohttp_says_how_to_pin_a_fingerprint() -> None:
    settings = ProxySettings(es=Settings(es_url="https://es:9200", es_ca_fingerprint=FINGERPRINT))
    with pytest.raises(ConfigError, match="RERANKER_ES_CA_CERTS"):
        make_async_client(settings)
