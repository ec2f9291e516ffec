"""``"rerank": {"diversity": ...}`` through the proxy, on a real node: MMR over the window with
the embeddings the index holds."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from elasticsearch import Elasticsearch

from reranker.es.node import NodeStatus
from reranker.rerank.diversity import intra_list_similarity
from reranker.rerank.scorer import Scorer
from reranker.retrieval.embedder import Embedder
from tests.integration.conftest import (
    QUERY,
    delete_indices_named_after,
    index_docs,
    index_without_embeddings,
    proxy_settings,
    running,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def body(diversity: Any = None, *, size: int = 10, explain: bool = False) -> dict[str, Any]:
    rerank: dict[str, Any] = {"window": 20, "explain": explain}
    if diversity is not None:
        rerank["diversity"] = diversity
    return {"query": QUERY, "size": size, "rerank": rerank}


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["_id"] for hit in response.json()["hits"]["hits"]]


def redundancy(es_client: Elasticsearch, alias: str, doc_ids: list[str]) -> float:
    answer = es_client.search(
        index=alias, query={"ids": {"values": doc_ids}}, fields=["embedding"], source=False
    )
    by_id = {h["_id"]: h["fields"]["embedding"] for h in answer["hits"]["hits"]}
    return intra_list_similarity(np.array([by_id[i] for i in doc_ids]))


async def test_lambda_one_keeps_the_reranked_order_and_explains_each_hit(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    plain = await proxy.post(f"/{proxy_alias}/_search", json=body())
    kept = await proxy.post(f"/{proxy_alias}/_search", json=body({"lambda": 1.0}, explain=True))
    assert ids(kept) == ids(plain)
    answer = kept.json()
    assert answer["rerank"]["diversity"] == {
        "method": "swap",
        "lambda": 1.0,
        "duplicate_threshold": None,
    }
    assert answer["rerank"]["took_ms"]["diversity"] >= 0.0
    assert [h["_score"] for h in kept.json()["hits"]["hits"]] == [
        h["_score"] for h in plain.json()["hits"]["hits"]
    ]
    for hit in answer["hits"]["hits"]:
        why = hit["_rerank"]["diversity"]
        assert set(why) == {"relevance", "redundancy", "penalty", "swapped_in"}
        assert why["penalty"] == 0.0 and why["swapped_in"] is False


async def test_mmr_explains_each_hit_by_its_mmr_value(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    response = await proxy.post(
        f"/{proxy_alias}/_search", json=body({"method": "mmr", "lambda": 0.5}, explain=True)
    )
    assert response.status_code == 200, response.text
    for hit in response.json()["hits"]["hits"]:
        why = hit["_rerank"]["diversity"]
        assert set(why) == {"relevance", "redundancy", "penalty", "mmr"}
        assert hit["_score"] == why["mmr"]


@pytest.mark.parametrize("method", ["swap", "mmr"])
async def test_a_low_lambda_makes_the_page_less_redundant_and_keeps_the_top_hit(
    proxy: httpx.AsyncClient, proxy_alias: str, es_client: Elasticsearch, method: str
) -> None:
    plain = ids(await proxy.post(f"/{proxy_alias}/_search", json=body()))
    asked = {"method": method, "lambda": 0.3}
    diverse = ids(await proxy.post(f"/{proxy_alias}/_search", json=body(asked)))
    assert diverse[0] == plain[0]
    assert diverse != plain
    assert redundancy(es_client, proxy_alias, diverse) < redundancy(es_client, proxy_alias, plain)


async def test_scores_still_fall_down_the_diversified_page(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    response = await proxy.post(f"/{proxy_alias}/_search", json=body(True))
    scores = [hit["_score"] for hit in response.json()["hits"]["hits"]]
    assert scores == sorted(scores, reverse=True)


async def test_the_embeddings_read_for_diversity_never_reach_the_client(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    response = await proxy.post(f"/{proxy_alias}/_search", json=body({"lambda": 0.5}))
    for hit in response.json()["hits"]["hits"]:
        assert "embedding" not in (hit.get("_source") or {})
        assert "embedding" not in (hit.get("fields") or {})


async def test_a_near_duplicate_is_collapsed_below_every_distinct_hit(
    es_node: NodeStatus,
    es_client: Elasticsearch,
    embedder: Embedder,
    proxy_scorer: Scorer,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    alias = f"diversitytest-{uuid.uuid4().hex[:8]}"
    docs = [dict(d) for d in scifact_docs[:40]]
    copies = [{**d, "_id": f"{d['_id']}-copy"} for d in docs]
    index_docs(es_client, embedder, docs + copies, alias, tmp_path)
    try:
        async with running(proxy_settings(es_node, alias), proxy_scorer, embedder) as http:
            diversity = {"lambda": 1.0, "duplicate_threshold": 0.99}
            response = await http.post(
                f"/{alias}/_search", json=body(diversity, size=20, explain=True)
            )
        hits = response.json()["hits"]["hits"]
        assert len(hits) == 20
        collapsed = [h for h in hits if "duplicate_of" in h["_rerank"]["diversity"]]
        assert len(collapsed) >= 5
        first_copy = hits.index(collapsed[0])
        assert all("duplicate_of" in h["_rerank"]["diversity"] for h in hits[first_copy:])
        shown = {h["_id"] for h in hits[:first_copy]}
        for hit in collapsed:
            original = hit["_rerank"]["diversity"]["duplicate_of"]
            assert original["_id"] in shown and original["_index"] == hit["_index"]
            assert hit["_id"].removesuffix("-copy") == original["_id"].removesuffix("-copy")
    finally:
        delete_indices_named_after(es_client, alias)


async def test_diversity_on_an_index_without_embeddings_is_a_400(
    proxy: httpx.AsyncClient, proxy_alias: str, es_client: Elasticsearch
) -> None:
    with index_without_embeddings(es_client, f"{proxy_alias}-novectors") as plain:
        response = await proxy.post(f"/{plain}/_search", json=body({"lambda": 0.5}))
        assert response.status_code == 400
        assert "embeddings" in response.json()["error"]["reason"]


async def test_a_bad_diversity_is_an_elasticsearch_shaped_400(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    response = await proxy.post(f"/{proxy_alias}/_search", json=body({"lambda": 2}))
    assert response.status_code == 400
    assert response.json()["error"]["type"]
    assert "lambda" in response.json()["error"]["reason"]


async def test_a_diversified_search_is_logged_with_its_lambda_and_penalties(
    es_node: NodeStatus,
    es_client: Elasticsearch,
    proxy_alias: str,
    proxy_scorer: Scorer,
    embedder: Embedder,
) -> None:
    prefix = f"{proxy_alias}-divlogs"
    settings = proxy_settings(
        es_node, proxy_alias, request_log=True, log_index_prefix=prefix, log_flush_s=0.1
    )
    async with running(settings, proxy_scorer, embedder) as http:
        asked = {"method": "mmr", "lambda": 0.4}
        response = await http.post(f"/{proxy_alias}/_search", json=body(asked))
    assert response.status_code == 200
    es_client.indices.refresh(index=f"{prefix}-*")
    (doc,) = [h["_source"] for h in es_client.search(index=f"{prefix}-*")["hits"]["hits"]]
    assert doc["diversity"] == {**asked, "duplicate_threshold": None}
    penalties = [hit["diversity_penalty"] for hit in doc["hits"]]
    assert penalties[0] == 0.0 and max(penalties) > 0.0
    assert "diversity" in doc["took_ms"]
