"""The proxy against a real Elasticsearch node and a real ONNX cross-encoder.

The cross-encoder is the shipped MiniLM with a fresh one-label head, exported once per session
(its scores mean nothing; the proxy's behaviour is what is tested). 120 SciFact documents are
indexed once per module behind a fresh alias.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from elastic_transport import ObjectApiResponse
from elasticsearch import BadRequestError, Elasticsearch

from reranker.errors import ModelError
from reranker.es.node import NodeStatus
from reranker.proxy import create_app
from reranker.rerank.scorer import Scorer
from reranker.retrieval.embedder import Embedder
from tests.conftest import serving_over_http
from tests.integration.conftest import (
    QUERY,
    QUERY_TEXT,
    index_without_embeddings,
    proxy_settings,
    running,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ fixtures


class FailingScorer(Scorer):
    """Fault injection: the real scorer's identity, but every call raises."""

    def __init__(self, inner: Scorer) -> None:
        self.__dict__.update(inner.__dict__)
        self.calls = 0

    def warmup(self) -> None:
        pass  # the fault is injected into live calls only

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        self.calls += 1
        raise ModelError("injected fault")


class BadOutputScorer(Scorer):
    """Fault injection: scores that are not finite, or too few of them."""

    def __init__(self, inner: Scorer, mode: str) -> None:
        self.__dict__.update(inner.__dict__)
        self.mode = mode

    def warmup(self) -> None:
        pass

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        if self.mode == "nan":
            return np.full(len(pairs), np.nan, dtype=np.float32)
        return np.zeros(len(pairs) - 1, dtype=np.float32)


class SlowScorer(Scorer):
    """The real scorer, after a pause longer than the tests' budgets."""

    def __init__(self, inner: Scorer, pause_s: float) -> None:
        self.__dict__.update(inner.__dict__)
        self.inner = inner
        self.pause_s = pause_s

    def warmup(self) -> None:
        pass

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        time.sleep(self.pause_s)
        return self.inner.score(pairs, **kwargs)


def rerank_body(size: int = 10, **rerank: Any) -> dict[str, Any]:
    return {"query": QUERY, "size": size, "rerank": {"window": 10, **rerank}}


def ids(response: httpx.Response) -> list[str]:
    return [hit["_id"] for hit in response.json()["hits"]["hits"]]


def first_stage_ids(es_client: Elasticsearch, alias: str, k: int) -> list[str]:
    answer = es_client.search(index=alias, query=QUERY, size=k, source=False)
    return [hit["_id"] for hit in answer["hits"]["hits"]]


# ------------------------------------------------------------------ pass-through


async def test_without_rerank_the_answer_is_elasticsearchs_own(
    proxy: httpx.AsyncClient, es_client: Elasticsearch, proxy_alias: str
) -> None:
    body = {"query": QUERY, "size": 5, "_source": ["title"]}
    response = await proxy.post(f"/{proxy_alias}/_search", json=body)
    direct = es_client.search(index=proxy_alias, body=body).body
    assert response.status_code == 200
    assert response.headers["x-elastic-product"] == "Elasticsearch"
    got = response.json()
    got.pop("took")
    direct.pop("took")
    assert got == direct


async def test_pass_through_keeps_query_parameters_and_error_status(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    response = await proxy.get(f"/{proxy_alias}/_search", params={"q": "cells", "size": "3"})
    assert response.status_code == 200
    assert len(response.json()["hits"]["hits"]) == 3
    bad = await proxy.post(f"/{proxy_alias}/_search", json={"query": {"matchx": {}}})
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "parsing_exception"


async def test_missing_index_inside_the_allow_list_is_elasticsearchs_404(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    response = await proxy.post(f"/{proxy_alias}-missing/_search", json={})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "index_not_found_exception"


# ------------------------------------------------------------------ reranked answers


async def test_reranked_answer_is_the_window_reordered_by_the_cross_encoder(
    proxy: httpx.AsyncClient, es_client: Elasticsearch, proxy_alias: str, proxy_scorer: Scorer
) -> None:
    body = rerank_body(explain=True, hybrid=False)
    response = await proxy.post(f"/{proxy_alias}/_search", json=body)
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"took", "timed_out", "_shards", "hits", "rerank"}
    hits = body["hits"]["hits"]
    assert sorted(h["_id"] for h in hits) == sorted(first_stage_ids(es_client, proxy_alias, 10))
    scores = [h["_score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert body["hits"]["max_score"] == scores[0]
    assert body["hits"]["total"]["value"] >= 10
    for hit in hits:
        assert hit["_index"].startswith(proxy_alias)
        assert set(hit["_source"]) >= {"title", "text"}
        explained = hit["_rerank"]
        assert explained["cross_encoder_logit"] == hit["_score"] == explained["final_score"]
        assert 1 <= explained["first_stage_rank"] <= 10
    top = hits[0]["_source"]
    logit = proxy_scorer.score([(QUERY_TEXT, f"{top['title']} {top['text']}".strip())])[0]
    assert hits[0]["_score"] == pytest.approx(float(logit), abs=1e-4)
    rerank = body["rerank"]
    assert rerank["model"]["id"] == "proxy-test-xenc"
    assert rerank["model"]["version"] == proxy_scorer.version
    assert rerank["window"] == 10
    assert rerank["degraded"] is None
    assert rerank["query_text"] == QUERY_TEXT
    assert set(rerank["took_ms"]) >= {"es", "rerank", "total"}


async def test_pages_partition_the_reranked_window(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    whole = await proxy.post(f"/{proxy_alias}/_search", json=rerank_body())
    first = rerank_body(size=5)
    second = rerank_body(size=5)
    second["from"] = 5
    page1 = await proxy.post(f"/{proxy_alias}/_search", json=first)
    page2 = await proxy.post(f"/{proxy_alias}/_search", json=second)
    assert ids(page1) + ids(page2) == ids(whole)


async def test_page_beyond_the_window_is_a_400(proxy: httpx.AsyncClient, proxy_alias: str) -> None:
    body = rerank_body()
    body.update({"from": 8, "size": 5})
    response = await proxy.post(f"/{proxy_alias}/_search", json=body)
    assert response.status_code == 400
    assert "window" in response.json()["error"]["reason"]


async def test_window_beyond_the_configured_limit_is_a_400(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    response = await proxy.post(f"/{proxy_alias}/_search", json=rerank_body(window=51))
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "illegal_argument_exception"


async def test_source_filtering_is_respected_while_the_scorer_reads_its_fields(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    body = rerank_body()
    body["_source"] = ["title"]
    titled = await proxy.post(f"/{proxy_alias}/_search", json=body)
    body["_source"] = False
    bare = await proxy.post(f"/{proxy_alias}/_search", json=body)
    assert all(set(h["_source"]) == {"title"} for h in titled.json()["hits"]["hits"])
    assert all("_source" not in h for h in bare.json()["hits"]["hits"])
    assert ids(titled) == ids(bare)  # same scores: the passage text did not change


async def test_hybrid_fuses_bm25_and_knn_before_reranking(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    body = rerank_body(explain=True, hybrid={"dense": True, "fusion": "rrf"})
    response = await proxy.post(f"/{proxy_alias}/_search", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["rerank"]["first_stage"] == "hybrid"
    assert "embed" in answer["rerank"]["took_ms"]
    stages = [set(h["_rerank"]["stage_scores"]) for h in answer["hits"]["hits"]]
    assert any("dense" in s for s in stages)


async def test_an_index_with_embeddings_is_reranked_over_the_hybrid_list_by_default(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    response = await proxy.post(f"/{proxy_alias}/_search", json=rerank_body(explain=True))
    assert response.status_code == 200
    answer = response.json()
    assert answer["rerank"]["first_stage"] == "hybrid"
    assert answer["rerank"]["fusion"] == "linear"
    assert "embed" in answer["rerank"]["took_ms"]


class FailingEmbedder:
    """The served embedder as a remote one none of whose endpoints answers: it knows its
    model (its id matches the index's stamp), but every query embedding fails."""

    def __init__(self, real: Embedder) -> None:
        self.model_id, self.dim = real.model_id, real.dim

    def encode(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        raise ModelError("no embedder endpoint answered")


async def test_a_failing_query_embedder_gives_bm25_candidates_and_says_why(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer, embedder: Embedder
) -> None:
    settings = proxy_settings(es_node, proxy_alias)
    async with running(settings, proxy_scorer, FailingEmbedder(embedder)) as http:  # type: ignore[arg-type]
        response = await http.post(f"/{proxy_alias}/_search", json=rerank_body())
    assert response.status_code == 200
    answer = response.json()
    assert answer["rerank"]["first_stage"] == "bm25"
    assert "query embedder failed" in answer["rerank"]["degraded"]
    assert answer["hits"]["hits"]


async def test_an_index_without_embeddings_is_reranked_over_bm25_by_default(
    proxy: httpx.AsyncClient, proxy_alias: str, es_client: Elasticsearch
) -> None:
    with index_without_embeddings(es_client, f"{proxy_alias}-plain") as plain:
        response = await proxy.post(f"/{plain}/_search", json=rerank_body())
        assert response.status_code == 200
        assert response.json()["rerank"]["first_stage"] == "bm25"
        assert response.json()["rerank"]["degraded"] is None


async def test_an_index_embedded_by_another_model_gets_bm25_and_a_400_for_explicit_knn(
    proxy: httpx.AsyncClient, proxy_alias: str, es_client: Elasticsearch, embedder: Embedder
) -> None:
    """kNN with our query vectors against another embedding space would rank at random."""
    foreign = f"{proxy_alias}-foreign"
    stamp = {"embedder": "someone-else@0123456789ab/int8"}
    vector = {"type": "dense_vector", "dims": embedder.dim, "meta": stamp}
    es_client.indices.create(index=foreign, mappings={"properties": {"embedding": vector}})
    for i, text in enumerate(["human cells and protein expression", "disease in cells"]):
        doc = {"title": "", "text": text, "embedding": [0.1] * embedder.dim}
        es_client.index(index=foreign, id=str(i), document=doc)
    es_client.indices.refresh(index=foreign)
    try:
        by_default = await proxy.post(f"/{foreign}/_search", json=rerank_body())
        assert by_default.status_code == 200
        assert by_default.json()["rerank"]["first_stage"] == "bm25"
        explicit = await proxy.post(f"/{foreign}/_search", json=rerank_body(hybrid={"dense": True}))
        assert explicit.status_code == 400
        assert "embedded with someone-else@0123456789ab/int8" in explicit.json()["error"]["reason"]
        # the alias built with this embedder carries its stamp and stays hybrid
        mapping = es_client.indices.get_mapping(index=proxy_alias)
        (only,) = mapping.body.values()
        assert only["mappings"]["properties"]["embedding"]["meta"] == {
            "embedder": embedder.model_id
        }
    finally:
        es_client.indices.delete(index=foreign)


class FeatureSpyScorer(Scorer):
    """The real scorer posing as a first-stage-aware model: it records the features it gets
    and adds the fused one to its logits."""

    def __init__(self, inner: Scorer) -> None:
        self.__dict__.update(inner.__dict__)
        self.inner = inner
        self._feature_names = ("fused", "bm25", "dense")
        self.seen: list[np.ndarray] = []

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        features = kwargs.pop("features")
        self.seen.append(features)
        logits: np.ndarray = self.inner.score(pairs, **kwargs) + features[:, 0]
        return logits


async def test_a_first_stage_aware_model_reads_hybrid_features_from_both_lists(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer, embedder: Embedder
) -> None:
    scorer = FeatureSpyScorer(proxy_scorer)
    async with running(proxy_settings(es_node, proxy_alias), scorer, embedder) as http:
        served = await http.post(f"/{proxy_alias}/_search", json=rerank_body(explain=True))
        metrics = (await http.get("/metrics")).text
    assert served.status_code == 200
    assert served.json()["rerank"]["first_stage"] == "hybrid"
    features = scorer.seen[-1]
    assert features.shape == (10, 3)
    assert features[:, 0].max() == 1.0 and features[:, 0].min() == 0.0
    stages = [h["_rerank"]["stage_scores"] for h in served.json()["hits"]["hits"]]
    absent = sum(("bm25" not in s) + ("dense" not in s) for s in stages)
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("reranker_proxy_first_stage_features_missing_total{")
    )
    assert counted == absent  # a hit absent from one list got the default, and was counted


async def test_a_bm25_only_search_gets_the_dense_feature_from_the_served_embedder(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer, embedder: Embedder
) -> None:
    scorer = FeatureSpyScorer(proxy_scorer)
    async with running(proxy_settings(es_node, proxy_alias), scorer, embedder) as http:
        served = await http.post(f"/{proxy_alias}/_search", json=rerank_body(hybrid=False))
    assert served.status_code == 200, served.text
    assert served.json()["rerank"]["first_stage"] == "bm25"
    dense = scorer.seen[-1][:, 2]
    # every candidate has its cosine (none missing), min-max normalised over the window
    assert dense.max() == 1.0 and dense.min() == 0.0 and len(set(dense.tolist())) == 10


async def test_a_bm25_only_search_without_an_embedder_cannot_feed_an_aware_model(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer
) -> None:
    scorer = FeatureSpyScorer(proxy_scorer)
    async with running(proxy_settings(es_node, proxy_alias), scorer, None) as http:
        refused = await http.post(f"/{proxy_alias}/_search", json=rerank_body(hybrid=False))
    assert refused.status_code == 400
    assert "dense" in refused.json()["error"]["reason"]


async def test_query_text_can_be_given_explicitly(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    body = {"query": {"match_all": {}}, "size": 3, "rerank": {"window": 5, "query_text": "cells"}}
    response = await proxy.post(f"/{proxy_alias}/_search", json=body)
    assert response.status_code == 200
    assert response.json()["rerank"]["query_text"] == "cells"


async def test_reranked_index_outside_the_allow_list_is_a_403(
    proxy: httpx.AsyncClient,
) -> None:
    response = await proxy.post("/beir-scifact/_search", json=rerank_body())
    assert response.status_code == 403


async def test_malformed_json_is_a_400(proxy: httpx.AsyncClient, proxy_alias: str) -> None:
    response = await proxy.post(f"/{proxy_alias}/_search", content=b'{"rerank": {')
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "parsing_exception"


# ------------------------------------------------------------------ _msearch


def msearch_body(*lines: dict[str, Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def msearch(proxy: httpx.AsyncClient, path: str, *lines: dict[str, Any]) -> httpx.Response:
    return await proxy.post(
        path, content=msearch_body(*lines), headers={"content-type": "application/x-ndjson"}
    )


@pytest.mark.parametrize("on_path", [True, False], ids=["index-in-path", "index-in-headers"])
async def test_msearch_without_rerank_is_elasticsearchs_own_answer(
    proxy: httpx.AsyncClient, es_client: Elasticsearch, proxy_alias: str, on_path: bool
) -> None:
    header = {} if on_path else {"index": proxy_alias}
    searches = [header, {"query": QUERY, "size": 3}, {"index": proxy_alias}, {"size": 2}]
    path = f"/{proxy_alias}/_msearch" if on_path else "/_msearch"
    response = await msearch(proxy, path, *searches)
    direct = es_client.msearch(index=proxy_alias, searches=searches).body
    assert response.status_code == 200
    got = response.json()
    for answer in (got, direct):
        answer.pop("took")
        for item in answer["responses"]:
            item.pop("took")
    assert got == direct


async def test_msearch_reranks_the_searches_that_ask_and_passes_the_others_through(
    proxy: httpx.AsyncClient, es_client: Elasticsearch, proxy_alias: str
) -> None:
    single = await proxy.post(f"/{proxy_alias}/_search", json=rerank_body())
    response = await msearch(
        proxy, "/_msearch", {"index": proxy_alias}, {"query": QUERY, "size": 10},
        {"index": proxy_alias}, rerank_body(),
    )  # fmt: skip
    assert response.status_code == 200
    plain, reranked = response.json()["responses"]
    assert plain["status"] == reranked["status"] == 200
    assert "rerank" not in plain
    assert [h["_id"] for h in plain["hits"]["hits"]] == first_stage_ids(es_client, proxy_alias, 10)
    assert reranked["rerank"]["window"] == 10
    assert [h["_id"] for h in reranked["hits"]["hits"]] == ids(single)


async def test_a_failing_search_in_msearch_is_its_own_entry_and_the_others_still_answer(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    too_wide = rerank_body()
    too_wide["rerank"]["window"] = 10_000
    response = await msearch(
        proxy, "/_msearch",
        {"index": "not-allowed"}, rerank_body(),
        {"index": proxy_alias}, too_wide,
        {"index": f"{proxy_alias}-missing"}, {"query": QUERY},
        {"index": proxy_alias}, {"query": QUERY, "rerank": None},
        {"index": proxy_alias}, rerank_body(),
    )  # fmt: skip
    assert response.status_code == 200
    forbidden, bad, missing, null_rerank, fine = response.json()["responses"]
    assert null_rerank["status"] == 400
    assert forbidden["status"] == 403
    assert forbidden["error"]["type"] == "security_exception"
    assert bad["status"] == 400
    assert "window" in bad["error"]["reason"]
    assert missing["status"] == 404
    assert missing["error"]["type"] == "index_not_found_exception"
    assert fine["status"] == 200
    assert len(fine["hits"]["hits"]) == 10


async def test_a_malformed_msearch_body_is_one_400(
    proxy: httpx.AsyncClient, proxy_alias: str
) -> None:
    response = await proxy.post(
        f"/{proxy_alias}/_msearch",
        content=b'{}\n{"query": {"match_all": {}}}\n{}\n',
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["type"] == "parsing_exception"
    assert "line 3" in body["error"]["reason"]


async def test_msearch_on_an_index_outside_the_allow_list_is_a_403(
    proxy: httpx.AsyncClient,
) -> None:
    response = await msearch(proxy, "/not-allowed/_msearch", {}, {"query": QUERY})
    assert response.status_code == 403


# ------------------------------------------------------------------ failing open


async def test_scorer_error_gives_first_stage_order_marked_degraded(
    es_node: NodeStatus, es_client: Elasticsearch, proxy_alias: str, proxy_scorer: Scorer
) -> None:
    async with running(proxy_settings(es_node, proxy_alias), FailingScorer(proxy_scorer)) as http:
        response = await http.post(f"/{proxy_alias}/_search", json=rerank_body())
        metrics = (await http.get("/metrics")).text
    assert response.status_code == 200
    assert ids(response) == first_stage_ids(es_client, proxy_alias, 10)
    degraded = response.json()["rerank"]["degraded"]
    assert degraded is not None and "injected fault" in degraded
    assert 'reranker_proxy_degraded_total{reason="error"} 1.0' in metrics


@pytest.mark.parametrize("mode", ["nan", "short"])
async def test_invalid_scorer_output_gives_first_stage_order_marked_degraded(
    mode: str,
    es_node: NodeStatus,
    es_client: Elasticsearch,
    proxy_alias: str,
    proxy_scorer: Scorer,
) -> None:
    scorer = BadOutputScorer(proxy_scorer, mode)
    async with running(proxy_settings(es_node, proxy_alias), scorer) as http:
        response = await http.post(f"/{proxy_alias}/_search", json=rerank_body())
    assert response.status_code == 200
    assert ids(response) == first_stage_ids(es_client, proxy_alias, 10)
    assert response.json()["rerank"]["degraded"].startswith("reranker error")


async def test_scorer_error_without_fail_open_is_a_503(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer
) -> None:
    async with running(proxy_settings(es_node, proxy_alias), FailingScorer(proxy_scorer)) as http:
        response = await http.post(f"/{proxy_alias}/_search", json=rerank_body(fail_open=False))
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == 503
    assert "injected fault" in body["error"]["reason"]


async def test_scorer_past_its_deadline_fails_open_as_a_timeout(
    es_node: NodeStatus, es_client: Elasticsearch, proxy_alias: str, proxy_scorer: Scorer
) -> None:
    slow = SlowScorer(proxy_scorer, pause_s=3.0)
    async with running(proxy_settings(es_node, proxy_alias), slow) as http:
        started = time.perf_counter()
        response = await http.post(f"/{proxy_alias}/_search", json=rerank_body(timeout_ms=1000))
        elapsed = time.perf_counter() - started
        strict = await http.post(
            f"/{proxy_alias}/_search", json=rerank_body(timeout_ms=1000, fail_open=False)
        )
    assert response.status_code == 200
    assert elapsed < 2.5  # answered at the deadline, not when the scorer finished
    assert "timeout" in response.json()["rerank"]["degraded"]
    assert ids(response) == first_stage_ids(es_client, proxy_alias, 10)
    assert strict.status_code in (429, 504)  # the abandoned call may still hold the queue


async def test_repeated_scorer_failures_open_the_circuit(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer
) -> None:
    failing = FailingScorer(proxy_scorer)
    settings = proxy_settings(es_node, proxy_alias, breaker_failures=2, breaker_cooloff_s=60)
    async with running(settings, failing) as http:
        for _ in range(2):
            await http.post(f"/{proxy_alias}/_search", json=rerank_body())
        response = await http.post(f"/{proxy_alias}/_search", json=rerank_body())
        health = (await http.get("/_health")).json()
    assert failing.calls == 2  # the third request did not reach the scorer
    assert response.status_code == 200
    assert response.json()["rerank"]["degraded"].startswith("circuit open")
    assert health["circuit"] == "open"


async def test_a_saturated_proxy_answers_429(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer
) -> None:
    settings = proxy_settings(es_node, proxy_alias, max_in_flight=1)
    async with running(settings, proxy_scorer) as http:
        proxy = http._transport.app.state.proxy  # type: ignore[attr-defined]
        held = proxy.admission.admit(scoring=True)
        try:
            response = await http.post(f"/{proxy_alias}/_search", json=rerank_body())
        finally:
            held.release()
            held.scoring_done()
        after = await http.post(f"/{proxy_alias}/_search", json=rerank_body(size=5, window=5))
    assert response.status_code == 429
    assert response.headers["retry-after"]
    assert after.status_code == 200


# ------------------------------------------------------------------ health, log


async def test_health_reports_model_and_cluster(proxy: httpx.AsyncClient) -> None:
    response = await proxy.get("/_health")
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["loaded"] is True
    assert body["elasticsearch"]["reachable"] is True


async def test_each_reranked_request_is_logged_for_kibana(
    es_node: NodeStatus, es_client: Elasticsearch, proxy_alias: str, proxy_scorer: Scorer
) -> None:
    prefix = f"{proxy_alias}-logs"
    settings = proxy_settings(
        es_node, proxy_alias, request_log=True, log_index_prefix=prefix, log_flush_s=0.1
    )
    async with running(settings, proxy_scorer) as http:
        response = await http.post(f"/{proxy_alias}/_search", json=rerank_body(3, window=5))
    assert response.status_code == 200
    # leaving the app flushed the queue
    es_client.indices.refresh(index=f"{prefix}-*")
    docs = es_client.search(index=f"{prefix}-*", size=5)["hits"]["hits"]
    assert len(docs) == 1
    doc = docs[0]["_source"]
    assert doc["query_text"] == QUERY_TEXT
    assert doc["window"] == 5
    assert doc["model"]["version"] == proxy_scorer.version
    assert len(doc["hits"]) == 5
    assert {"rank", "first_stage_rank", "logit"} <= set(doc["hits"][0])
    assert docs[0]["_index"] == f"{prefix}-{time.strftime('%Y.%m.%d', time.gmtime())}"


# ------------------------------------------------------------------ the official client


@pytest.fixture
def proxy_server(es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer) -> Iterator[str]:
    app = create_app(
        proxy_settings(es_node, proxy_alias),
        scorer_factory=lambda: proxy_scorer,
        load_in_background=False,
    )
    with serving_over_http(app) as url:
        yield url


def test_official_client_searches_through_the_proxy(proxy_server: str, proxy_alias: str) -> None:
    with Elasticsearch(proxy_server, request_timeout=60) as client:
        plain = client.search(index=proxy_alias, query=QUERY, size=5)
        reranked = client.search(
            index=proxy_alias, query=QUERY, size=5, ext={"rerank": {"window": 10}}
        )
        as_body = client.search(
            index=proxy_alias, body={"query": QUERY, "size": 5, "rerank": {"window": 10}}
        )
        with pytest.raises(BadRequestError) as refused:
            client.search(index=proxy_alias, query=QUERY, size=20, ext={"rerank": {"window": 10}})
    assert isinstance(plain, ObjectApiResponse)
    assert isinstance(reranked, ObjectApiResponse)
    assert len(plain["hits"]["hits"]) == 5
    assert "rerank" not in plain
    assert reranked["rerank"]["window"] == 10
    assert [h["_id"] for h in as_body["hits"]["hits"]] == [
        h["_id"] for h in reranked["hits"]["hits"]
    ]
    assert refused.value.status_code == 400
    assert "window" in str(refused.value)


def test_official_client_multi_searches_through_the_proxy(
    proxy_server: str, proxy_alias: str
) -> None:
    with Elasticsearch(proxy_server, request_timeout=60) as client:
        answer = client.msearch(
            index=proxy_alias,
            searches=[{}, {"query": QUERY, "size": 5}, {}, rerank_body(size=5)],
        )
    plain, reranked = answer["responses"]
    assert isinstance(answer, ObjectApiResponse)
    assert len(plain["hits"]["hits"]) == len(reranked["hits"]["hits"]) == 5
    assert "rerank" not in plain
    assert reranked["rerank"]["window"] == 10


async def test_a_repeated_search_is_scored_from_the_cache_without_queueing(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer, embedder: Embedder
) -> None:
    async with running(proxy_settings(es_node, proxy_alias), proxy_scorer, embedder) as http:
        first = await http.post(f"/{proxy_alias}/_search", json=rerank_body())
        again = await http.post(f"/{proxy_alias}/_search", json=rerank_body())
        metrics = (await http.get("/metrics")).text
    assert first.status_code == again.status_code == 200
    assert ids(again) == ids(first)
    scores = [h["_score"] for h in again.json()["hits"]["hits"]]
    assert scores == [h["_score"] for h in first.json()["hits"]["hits"]]
    lookups = {
        line.split('result="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("reranker_proxy_score_cache_lookups_total{")
    }
    assert lookups == {"hit": 10.0, "miss": 10.0}
    assert "reranker_proxy_score_cache_pairs 10.0" in metrics


async def test_a_rerank_call_among_junk_texts_cannot_change_what_a_search_ranks(
    es_node: NodeStatus, es_client: Elasticsearch, proxy_alias: str, embedder: Embedder
) -> None:
    """Issue 25, item 9: with the shipped int8 model a pair's score does not depend on its
    batchmates, so what a ``/rerank`` call among junk texts caches is what a search would
    have computed. (With the per-tensor int8 that shipped before, the cached scores moved by
    up to 0.59 and reordered the search.)"""
    scorer = Scorer(REPO / "models" / "reranker-minilm-l6", variant="int8", threads=1)
    settings = proxy_settings(es_node, proxy_alias)
    async with running(settings, scorer, embedder) as http:  # a fresh cache: nothing poisoned
        clean = (await http.post(f"/{proxy_alias}/_search", json=rerank_body())).json()
    hits = [hit["_id"] for hit in clean["hits"]["hits"]]
    docs = es_client.mget(index=proxy_alias, ids=hits)["docs"]
    passages = [f"{d['_source']['title']} {d['_source']['text']}".strip() for d in docs]
    junk = [f"junk {i} " * (i + 1) for i in range(15)]
    async with running(settings, scorer, embedder) as http:
        for passage in passages:  # one real passage among 15 junk texts, each cached
            cached = await http.post(
                "/rerank", json={"query": QUERY_TEXT, "texts": [passage, *junk]}
            )
            assert cached.status_code == 200
        after = (await http.post(f"/{proxy_alias}/_search", json=rerank_body())).json()
        metrics = (await http.get("/metrics")).text
    # 10 passages and 15 junk texts missed once; the search missed none
    assert 'reranker_proxy_score_cache_lookups_total{result="miss"} 25.0' in metrics
    assert [h["_id"] for h in after["hits"]["hits"]] == hits
    np.testing.assert_allclose(
        [h["_score"] for h in after["hits"]["hits"]],
        [h["_score"] for h in clean["hits"]["hits"]],
        atol=1e-4,
    )


async def test_a_cache_size_of_zero_turns_the_cache_off(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer, embedder: Embedder
) -> None:
    settings = proxy_settings(es_node, proxy_alias, score_cache_size=0)
    async with running(settings, proxy_scorer, embedder) as http:
        await http.post(f"/{proxy_alias}/_search", json=rerank_body())
        metrics = (await http.get("/metrics")).text
    assert "reranker_proxy_score_cache" not in metrics
