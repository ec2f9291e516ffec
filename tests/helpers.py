"""Helpers the unit tests share: a proxy on an in-process transport, Elasticsearch-shaped
error checks, a settable clock, and sample rerank texts."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from reranker.config import Settings
from reranker.proxy import create_app
from reranker.proxy.settings import ProxySettings

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings(**overrides: Any) -> ProxySettings:
    es = Settings(es_url=f"http://127.0.0.1:{closed_port()}", request_timeout_s=2)
    values: dict[str, Any] = {"es": es, "allowed_indices": ("docs-*",), "max_body_bytes": 4096}
    values.update(overrides)
    return ProxySettings(**values)


@asynccontextmanager
async def proxy_client(proxy_settings: ProxySettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(proxy_settings, load_in_background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
            yield http


def assert_es_error(response: httpx.Response, status: int, error_type: str | None = None) -> None:
    assert response.status_code == status
    assert response.headers["x-elastic-product"] == "Elasticsearch"
    body = response.json()
    assert body["status"] == status
    assert set(body["error"]) >= {"root_cause", "type", "reason"}
    assert body["error"]["root_cause"][0]["type"] == body["error"]["type"]
    if error_type:
        assert body["error"]["type"] == error_type


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


#: the shipped cross-encoders, and a query with texts to rerank (one of them off topic)
SHIPPED = REPO / "models" / "reranker-minilm-l6"


SHIPPED_AWARE = REPO / "models" / "reranker-minilm-l6-aware"

QUERY = "what is a qubit in quantum computing"


TEXTS = [
    "Malted barley provides the sugars that yeast ferments into alcohol.",
    "A qubit is the basic unit of quantum information, a two-level quantum system.",
    "Paris is the capital of France.",
    "Quantum computers use qubits, which can be in a superposition of 0 and 1.",
]
