"""``"rerank": {"passages": ...}`` through the proxy, on a real node and a real ONNX model:
long documents scored by their passages."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from elasticsearch import Elasticsearch

from reranker.cli import main
from reranker.es.mappings import index_meta
from reranker.es.node import NodeStatus
from reranker.rerank.scorer import Scorer
from reranker.retrieval.embedder import Embedder
from tests.integration.conftest import (
    QUERY,
    delete_indices_named_after,
    index_docs,
    proxy_settings,
    running,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def logits(response: httpx.Response) -> dict[str, float]:
    assert response.status_code == 200, response.text
    return {h["_id"]: h["_rerank"]["cross_encoder_logit"] for h in response.json()["hits"]["hits"]}


def body(passages: Any) -> dict[str, Any]:
    rerank = {"window": 10, "explain": True, "cascade": False, "passages": passages}
    return {"query": QUERY, "size": 10, "rerank": rerank}


async def test_a_documents_best_passage_scores_it_and_firstmax_never_more(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    best = await proxy.post(f"/{proxy_alias}/_search", json=body("max"))
    assert best.json()["rerank"]["passages"] == "max"
    first_and_best = logits(await proxy.post(f"/{proxy_alias}/_search", json=body("firstmax")))
    by_max = logits(best)
    assert set(by_max) == set(first_and_best)
    # (first + best) / 2 never exceeds the best; it falls short where a later passage wins
    assert all(first_and_best[d] <= by_max[d] + 1e-5 for d in by_max)
    assert any(first_and_best[d] < by_max[d] - 1e-4 for d in by_max)


async def test_truncation_stays_the_default(proxy: httpx.AsyncClient, proxy_alias: str) -> None:
    plain = await proxy.post(f"/{proxy_alias}/_search", json=body(False))
    assert "passages" not in plain.json()["rerank"]
    assert logits(plain)


async def test_unknown_passages_are_an_elasticsearch_shaped_400(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    response = await proxy.post(f"/{proxy_alias}/_search", json=body("sum"))
    assert response.status_code == 400
    assert "passages" in response.json()["error"]["reason"]


@pytest.fixture(scope="module")
def firstmax_alias(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The test documents indexed with ``--passages firstmax``."""
    alias = f"passagetest-{uuid.uuid4().hex[:8]}"
    index_docs(es_client, embedder, scifact_docs[:40], alias, tmp_path_factory.mktemp("p"),
               passages="firstmax")  # fmt: skip
    yield alias
    delete_indices_named_after(es_client, alias)


async def test_an_index_recorded_with_passages_is_read_by_passages_unless_a_search_says_no(
    es_node: NodeStatus, es_client: Elasticsearch, firstmax_alias: str, proxy_scorer: Scorer,
    embedder: Embedder,
) -> None:  # fmt: skip
    assert index_meta(es_client, firstmax_alias)["passages"] == "firstmax"
    unsaid = {"query": QUERY, "size": 5, "rerank": {"window": 10, "cascade": False}}
    async with running(proxy_settings(es_node, firstmax_alias), proxy_scorer, embedder) as http:
        recorded = await http.post(f"/{firstmax_alias}/_search", json=unsaid)
        refused = await http.post(f"/{firstmax_alias}/_search", json=body(False))
    assert recorded.status_code == 200 and recorded.json()["rerank"]["passages"] == "firstmax"
    assert "passages" not in refused.json()["rerank"]


def test_reindexing_keeps_the_recorded_passages(
    es_node: NodeStatus, es_client: Elasticsearch, firstmax_alias: str
) -> None:
    result = CliRunner().invoke(
        main, ["--es-url", es_node.url, "reindex", "--alias", firstmax_alias, "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert index_meta(es_client, firstmax_alias)["passages"] == "firstmax"
