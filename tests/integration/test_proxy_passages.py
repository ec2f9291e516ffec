"""``"rerank": {"passages": ...}`` through the proxy, on a real node and a real ONNX model:
long documents scored by their passages."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.conftest import QUERY

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
