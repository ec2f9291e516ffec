"""The proxy app without Elasticsearch or a model: routing, error shapes, auth, limits.

Elasticsearch is a closed port on localhost, so every upstream call fails fast with a
connection error (no network needed).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from reranker.config import Settings
from reranker.proxy import create_app
from reranker.proxy.candidates import FirstStageResult, read_hits
from reranker.proxy.errors import ProxyError, error_body
from reranker.proxy.metrics import ProxyMetrics
from reranker.proxy.request_log import RequestLog
from tests.helpers import assert_es_error, closed_port, heartbeat, proxy_client, settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with proxy_client(settings()) as http:
        yield http


def test_error_body_has_elasticsearchs_shape() -> None:
    assert error_body(400, "x", "why") == {
        "error": {"root_cause": [{"type": "x", "reason": "why"}], "type": "x", "reason": "why"},
        "status": 400,
    }


async def test_unknown_path_is_an_es_shaped_404(client: httpx.AsyncClient) -> None:
    assert_es_error(await client.get("/docs-1/_doc/7"), 404)
    assert_es_error(await client.delete("/docs-1"), 404)


async def test_wrong_method_on_search_is_an_es_shaped_405(client: httpx.AsyncClient) -> None:
    response = await client.put("/docs-1/_search", json={})
    assert_es_error(response, 405)
    assert "POST" in response.headers["allow"]


async def test_index_outside_the_allow_list_is_a_403(client: httpx.AsyncClient) -> None:
    assert_es_error(await client.post("/secret/_search", json={}), 403, "security_exception")
    assert_es_error(await client.post("/docs-1,secret/_search", json={}), 403)


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/docs-1/_search", content=b'{"query": ')
    assert_es_error(response, 400, "parsing_exception")


async def test_body_that_is_not_an_object_is_a_400(client: httpx.AsyncClient) -> None:
    assert_es_error(await client.post("/docs-1/_search", json=[1, 2]), 400)


async def test_body_over_the_size_limit_is_a_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/docs-1/_search", json={"q": "x" * 5000})
    assert_es_error(response, 413)


async def test_unknown_rerank_field_is_a_400_before_elasticsearch_is_asked(
    client: httpx.AsyncClient,
) -> None:
    body = {"query": {"match": {"text": "x"}}, "rerank": {"windows": 10}}
    assert_es_error(await client.post("/docs-1/_search", json=body), 400)


async def test_missing_query_text_is_a_400(client: httpx.AsyncClient) -> None:
    body = {"query": {"match_all": {}}, "rerank": {}}
    response = await client.post("/docs-1/_search", json=body)
    assert_es_error(response, 400)
    assert "query text" in response.json()["error"]["reason"]


async def test_elasticsearch_unreachable_is_a_503(client: httpx.AsyncClient) -> None:
    assert_es_error(await client.post("/docs-1/_search", json={}), 503)
    body = {"query": {"match": {"text": "x"}}, "rerank": {"window": 10}}
    assert_es_error(await client.post("/docs-1/_search", json=body), 503)


async def test_health_is_503_without_model_or_cluster(client: httpx.AsyncClient) -> None:
    response = await client.get("/_health")
    assert response.status_code == 503
    body = response.json()
    assert body["model"]["loaded"] is False
    assert body["elasticsearch"]["reachable"] is False


async def test_metrics_are_prometheus_text_with_the_proxy_series(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/secret/_search", json={})
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'reranker_proxy_requests_total{kind="search",status="403"} 1.0' in text
    for name in ("stage_seconds", "in_flight", "degraded", "rejected", "log_documents_dropped"):
        assert f"reranker_proxy_{name}" in text


async def test_compatible_accept_header_gets_the_compatible_content_type(
    client: httpx.AsyncClient,
) -> None:
    headers = {"accept": "application/vnd.elasticsearch+json; compatible-with=9"}
    response = await client.post("/secret/_search", json={}, headers=headers)
    assert response.headers["content-type"].startswith("application/vnd.elasticsearch+json")


async def test_in_flight_bound_gives_a_fast_429_with_retry_after() -> None:
    async with proxy_client(settings(max_in_flight=1)) as http:
        proxy = http._transport.app.state.proxy  # type: ignore[attr-defined]
        held = proxy.admission.admit(scoring=False)
        try:
            body = {"query": {"match": {"text": "x"}}, "rerank": {"window": 10}}
            response = await http.post("/docs-1/_search", json=body)
        finally:
            held.release()
        assert_es_error(response, 429, "es_rejected_execution_exception")
        assert response.headers["retry-after"] == "1"
        metrics = (await http.get("/metrics")).text
        assert "reranker_proxy_rejected_total 1.0" in metrics


async def test_proxy_api_key_is_required_when_configured() -> None:
    async with proxy_client(settings(api_keys=("s3cret",))) as http:
        assert_es_error(await http.post("/docs-1/_search", json={}), 401, "security_exception")
        wrong = {"authorization": "ApiKey nope"}
        assert_es_error(await http.post("/docs-1/_search", json={}, headers=wrong), 401)
        right = {"authorization": "ApiKey s3cret"}
        # past the key check: the (closed) cluster answers
        assert_es_error(await http.post("/docs-1/_search", json={}, headers=right), 503)


async def test_unexpected_failure_is_an_es_shaped_500_without_internals(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = client._transport.app.state.proxy  # type: ignore[attr-defined]

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(proxy, "_passthrough", explode)
    response = await client.post("/docs-1/_search", json={})
    assert_es_error(response, 500)
    assert "secret" not in response.text
    assert "Traceback" not in response.text


def test_partial_results_from_elasticsearch_are_reported() -> None:
    body = {
        "timed_out": False,
        "_shards": {"total": 3, "successful": 2, "skipped": 0, "failed": 1},
        "hits": {"hits": []},
    }
    result = FirstStageResult(lexical=read_hits(body, "bm25"))
    assert [(d.kind, d.reason) for d in result.degraded()] == [
        ("es_partial", "es partial results: 1 of 3 shards failed")
    ]
    body["timed_out"] = True
    assert "timed out" in FirstStageResult(lexical=read_hits(body, "bm25")).degraded()[0].reason


def test_a_search_response_without_hits_is_a_502() -> None:
    with pytest.raises(ProxyError) as caught:
        read_hits({"took": 1}, "bm25")
    assert caught.value.status == 502


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (kernel backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


async def test_elasticsearch_not_answering_in_time_is_a_504(silent_port: int) -> None:
    es = Settings(es_url=f"http://127.0.0.1:{silent_port}", request_timeout_s=0.3)
    async with proxy_client(settings(es=es)) as http:
        assert_es_error(await http.post("/docs-1/_search", json={}), 504, "timeout_exception")
        body = {"query": {"match": {"text": "x"}}, "rerank": {"window": 10, "timeout_ms": 300}}
        assert_es_error(await http.post("/docs-1/_search", json=body), 504)


def test_a_full_request_log_queue_drops_and_counts_instead_of_blocking() -> None:
    metrics = ProxyMetrics()
    request_log = RequestLog(None, metrics, queue_size=1)  # type: ignore[arg-type]
    request_log.submit({"n": 1})
    request_log.submit({"n": 2})
    assert request_log.dropped == 1
    text = metrics.render().decode()
    assert 'reranker_proxy_log_documents_dropped_total{reason="queue full"} 1.0' in text


def _request(headers: dict[str, str]) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/docs-1/_search",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


def test_client_authorization_passes_through_unless_the_proxy_has_credentials() -> None:
    auth = {"authorization": "Basic dXNlcjpwdw=="}
    open_proxy = create_app(settings()).state.proxy
    assert open_proxy._upstream_headers(_request(auth)) == auth
    with_key = Settings(es_url="http://127.0.0.1:9200", es_api_key="k")
    configured = create_app(settings(es=with_key)).state.proxy
    assert configured._upstream_headers(_request(auth)) == {}
    keyed = create_app(settings(api_keys=("s3cret",))).state.proxy
    assert keyed._upstream_headers(_request({"authorization": "ApiKey s3cret"})) == {}


async def test_with_credentials_searches_wait_for_restricted_ones_and_say_why_not() -> None:
    with_key = Settings(es_url=f"http://127.0.0.1:{closed_port()}", es_api_key="k")
    async with proxy_client(settings(es=with_key)) as http:
        answer = await http.post("/docs-1/_search", json={})
    assert_es_error(answer, 503)  # unreachable: no restricted credentials, so no search


async def test_scoped_credentials_follow_the_settings() -> None:
    from reranker.proxy.scoped import ScopedAccess, role_descriptor

    with_key = Settings(es_url="http://127.0.0.1:9", es_api_key="k")
    open_proxy = ScopedAccess(settings(), None)  # type: ignore[arg-type]
    unscoped = ScopedAccess(settings(es=with_key, scoped_credentials=False), None)  # type: ignore[arg-type]
    scoped = ScopedAccess(settings(es=with_key), None)  # type: ignore[arg-type]
    assert (open_proxy.mode, unscoped.mode, scoped.mode) == ("client", "proxy", "pending")
    assert role_descriptor(("b-*", "a-*", "a-*")) == {
        "cluster": [],
        "indices": [{"names": ["a-*", "b-*"], "privileges": ["read"]}],
    }


async def test_without_a_key_health_is_liveness_only_and_metrics_401() -> None:
    async with proxy_client(settings(api_keys=("s3cret",))) as http:
        live = await http.get("/_health")
        metrics = await http.get("/metrics")
        keyed = await http.get("/metrics", headers={"authorization": "ApiKey s3cret"})
    assert live.status_code == 503 and live.json() == {"status": "unavailable"}
    assert_es_error(metrics, 401)
    assert keyed.status_code == 200


async def test_a_model_reading_the_dense_score_answers_503_while_the_embedder_loads() -> None:
    """Not yet (503, retry) rather than never (400): the shipped first-stage-aware model is
    loaded, the embedder is not; the readiness check says unavailable meanwhile."""
    import asyncio
    import threading
    from pathlib import Path

    from reranker.rerank.scorer import Scorer

    aware = Path(__file__).resolve().parents[2] / "models" / "reranker-minilm-l6-aware"
    release = threading.Event()

    def slow_embedder() -> Any:
        release.wait(30)
        raise RuntimeError("never mind")

    app = create_app(
        settings(),
        scorer_factory=lambda: Scorer(aware, variant="int8", threads=1),
        encoder_factory=slow_embedder,
    )
    try:
        async with app.router.lifespan_context(app):
            models = app.state.proxy.models
            for _ in range(300):
                if models.scorer is not None:
                    break
                await asyncio.sleep(0.05)
            assert models.scorer is not None and not models.loaded.is_set()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
                # dense asked for, and the default (kNN wherever the index has embeddings,
                # which cannot be known before the embedder is there)
                for rerank in ({"hybrid": {"dense": True}}, {}):
                    body = {"query": {"match": {"text": "x"}}, "rerank": rerank}
                    response = await http.post("/docs-1/_search", json=body)
                    assert_es_error(response, 503, "reranker_unavailable_exception")
                    assert "still loading" in response.json()["error"]["reason"]
                health = await http.get("/_health")
                # the cluster is unreachable here too: the body says the embedder is what the
                # model waits on, beside a loaded cross-encoder
                assert health.status_code == 503
                assert health.json()["model"]["loaded"] is True
                assert health.json()["embedder"] == {"loaded": False}
            release.set()
    finally:
        release.set()


@pytest.mark.parametrize(
    "hostile",
    [
        '"' + '\\"' * 500_000,  # was quadratic in the nesting pre-check: hours at 1 MiB
        '"' + '\\"' * 500_000 + "\\",
        "[]" * 500_000,
        '{"a": "' + "[" * 1_000_000 + '"',  # brackets inside a string, object unclosed
    ],
    ids=["escaped-quotes", "escaped-quotes-lone-backslash", "flat-brackets", "brackets-in-string"],
)
async def test_a_hostile_body_at_the_size_limit_is_refused_without_holding_the_loop(
    hostile: str,
) -> None:
    limit = 2 * 1024 * 1024
    async with proxy_client(settings(max_body_bytes=limit)) as http, heartbeat() as held:
        answer = await http.post(
            "/docs-a/_search",
            content=hostile.encode(),
            headers={"content-type": "application/json"},
        )
    assert answer.status_code == 400
    held.check()  # linear checks take milliseconds; the quadratic one held it for minutes


async def test_the_heartbeat_counts_cpu_work_that_holds_the_loop() -> None:
    import time

    async with heartbeat() as held:
        started = time.thread_time()
        while time.thread_time() - started < 0.15:  # busy on the loop, no await
            pass
    assert held.cpu_s >= 0.12
    with pytest.raises(AssertionError, match="CPU"):
        held.check()


async def test_the_heartbeat_leaves_out_a_garbage_collection_of_the_whole_heap() -> None:
    import gc
    import time

    heap = [[n] for n in range(1_500_000)]  # a heap whose full collection takes a while
    async with heartbeat() as held:
        started = time.thread_time()
        gc.collect()
        collected_s = time.thread_time() - started
    del heap
    assert collected_s > held.cpu_s + 0.02, (collected_s, held.cpu_s)


async def test_a_client_flooding_the_proxy_waits_then_gets_429s_and_the_others_do_not() -> None:
    keys = ("key-a-0001", "key-b-0002", "key-flood-3")
    async with proxy_client(settings(api_keys=keys)) as http:

        async def events(key: str) -> httpx.Response:
            return await http.post("/_reranker/events", headers={"authorization": f"ApiKey {key}"})

        for key in keys[:2]:
            assert (await events(key)).status_code == 404  # UBI is off here
        answers = [await events(keys[2]) for _ in range(25)]
        statuses = [a.status_code for a in answers]
        assert statuses[:20] == [404] * 20  # under the floor: never refused
        assert statuses[-1] == 429
        assert "fair share" in answers[-1].json()["error"]["reason"]
        assert (await events(keys[0])).status_code == 404  # the others are served as before
