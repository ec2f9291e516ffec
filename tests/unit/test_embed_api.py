"""TEI's ``POST /embed`` on the proxy: the vectors the embedder gives in process, TEI's shapes
for answers and errors; ``--embedder-only`` (only /embed, /info, /_health, /metrics) and the
embedder's card in ``/info``. The real default embedder, no Elasticsearch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from reranker.retrieval.embed_cache import encode_queries
from reranker.retrieval.embedder import Embedder
from tests.helpers import proxy_client, settings

pytestmark = pytest.mark.anyio

TEXTS = ["Vitamin D deficiency and bone fractures", "Gene expression in human cells", "x"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.default()


@pytest.fixture
async def http(embedder: Embedder) -> AsyncIterator[httpx.AsyncClient]:
    limits = settings(max_window=8, default_window=8)
    async with proxy_client(limits, encoder=embedder) as client:
        yield client


async def test_embed_gives_the_vectors_of_the_embedder_in_process(
    http: httpx.AsyncClient, embedder: Embedder
) -> None:
    response = await http.post("/embed", json={"inputs": TEXTS})
    assert response.status_code == 200
    assert np.abs(np.array(response.json()) - embedder.encode(TEXTS)).max() <= 1e-6


async def test_one_string_is_one_vector(http: httpx.AsyncClient, embedder: Embedder) -> None:
    response = await http.post("/embed", json={"inputs": TEXTS[0]})
    (vector,) = response.json()
    assert len(vector) == embedder.dim


async def test_the_query_prompt_embeds_as_the_first_stage_embeds_queries(
    http: httpx.AsyncClient, embedder: Embedder
) -> None:
    response = await http.post("/embed", json={"inputs": TEXTS, "prompt_name": "query"})
    expected = encode_queries(embedder, TEXTS)
    assert np.abs(np.array(response.json()) - expected).max() <= 1e-6


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"inputs": []}, 422),
        ({"inputs": [1, 2]}, 422),
        ({"texts": ["a"]}, 422),
        ({"inputs": ["a"], "colour": 1}, 422),
        ({"inputs": ["a"] * 9}, 413),
        ({"inputs": ["a"], "normalize": False}, 400),
        ({"inputs": ["a"], "prompt_name": "passage"}, 422),
        (["a"], 422),
    ],
)
async def test_a_request_outside_teis_embed_request_gets_teis_error_shape(
    http: httpx.AsyncClient, body: Any, status: int
) -> None:
    response = await http.post("/embed", json=body)
    assert response.status_code == status
    assert set(response.json()) == {"error", "error_type"}


async def test_embed_needs_a_client_key_when_the_proxy_has_keys(embedder: Embedder) -> None:
    async with proxy_client(settings(api_keys=("s3cret",)), encoder=embedder) as http:
        assert (await http.post("/embed", json={"inputs": "a"})).status_code == 401
        keyed = {"authorization": "Bearer s3cret"}
        assert (await http.post("/embed", json={"inputs": "a"}, headers=keyed)).status_code == 200


async def test_without_an_embedder_embed_is_a_503() -> None:
    async with proxy_client(settings()) as http:
        response = await http.post("/embed", json={"inputs": "a"})
    assert response.status_code == 503
    assert "embedder" in response.json()["error"]


# ------------------------------------------------------------------ --embedder-only


@pytest.fixture
async def embedder_only(embedder: Embedder) -> AsyncIterator[httpx.AsyncClient]:
    only = settings(embedder_only=True, max_window=8, default_window=8)
    async with proxy_client(only, encoder=embedder) as http:
        yield http


async def test_an_embedder_only_server_embeds_as_the_proxy_does(
    embedder_only: httpx.AsyncClient, embedder: Embedder
) -> None:
    response = await embedder_only.post("/embed", json={"inputs": TEXTS})
    assert np.abs(np.array(response.json()) - embedder.encode(TEXTS)).max() <= 1e-6


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/docs-1/_search"),
        ("POST", "/rerank"),
        ("POST", "/v2/rerank"),
        ("POST", "/_reranker/reload"),
        ("POST", "/_msearch"),
    ],
)
async def test_an_embedder_only_server_has_no_search_rerank_or_reload_routes(
    embedder_only: httpx.AsyncClient, method: str, path: str
) -> None:
    assert (await embedder_only.request(method, path, json={})).status_code == 404


async def test_an_embedder_only_servers_info_names_the_embedder_in_teis_shape(
    embedder_only: httpx.AsyncClient, embedder: Embedder
) -> None:
    info = (await embedder_only.get("/info")).json()
    assert info["model_id"] == embedder.model_id
    assert info["model_type"] == {"embedding": {"pooling": embedder.pooling}}
    assert info["max_client_batch_size"] == 8
    assert info["embedder"] == {
        "model_id": embedder.model_id,
        "dim": embedder.dim,
        "max_input_length": embedder.max_length,
        "query_prompt": "query",
    }


async def test_an_embedder_only_server_is_healthy_with_its_embedder_and_no_cluster(
    embedder_only: httpx.AsyncClient, embedder: Embedder
) -> None:
    response = await embedder_only.get("/_health")
    assert response.status_code == 200
    body = response.json()
    assert body["embedder"] == {"loaded": True, "id": embedder.model_id, "dim": embedder.dim}
    assert body["elasticsearch"]["reachable"] is None
    assert (await embedder_only.get("/metrics")).status_code == 200


async def test_an_embedder_only_server_without_its_embedder_is_unhealthy() -> None:
    async with proxy_client(settings(embedder_only=True)) as http:
        assert (await http.get("/_health")).status_code == 503
        assert (await http.get("/info")).status_code == 503


def test_embedder_only_is_a_server_without_elasticsearch() -> None:
    assert settings(embedder_only=True).scorer_only


async def test_the_proxys_info_names_its_embedder_beside_the_cross_encoder(
    embedder: Embedder,
) -> None:
    from reranker.rerank.scorer import load_scorer
    from tests.helpers import SHIPPED

    scorer = load_scorer(SHIPPED, "int8")
    async with proxy_client(settings(scorer_only=True), scorer=scorer, encoder=embedder) as http:
        info = (await http.get("/info")).json()
    assert info["model_id"] == scorer.model_id
    assert info["embedder"]["model_id"] == embedder.model_id
    assert info["embedder"]["dim"] == embedder.dim
