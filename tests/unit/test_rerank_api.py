"""The standard rerank endpoints (TEI's ``/rerank``, Cohere's ``/v1/rerank`` and ``/v2/rerank``,
``/info``) against the shipped cross-encoder, in process: shapes, scores, bad input in each
format's own error shape, keys, admission, the breaker and the deadline.

Elasticsearch is a closed port: these endpoints never need it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from reranker.config import Settings
from reranker.errors import ModelError
from reranker.proxy import ProxySettings, create_app
from reranker.rerank.features import dense_cosines, features_for_texts
from reranker.rerank.rescore import DEFAULT_RESCORE_DIR, HEAD_RESCORE_WEIGHT
from reranker.rerank.scorer import Scorer
from reranker.retrieval.embedder import Embedder
from tests.helpers import QUERY, SHIPPED, SHIPPED_AWARE, TEXTS, proxy_client

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(SHIPPED, variant="int8", threads=1)


def api_settings(**overrides: Any) -> ProxySettings:
    values: dict[str, Any] = {
        "es": Settings(es_url="http://127.0.0.1:9", request_timeout_s=1),
        "scorer_only": True,
        "max_window": 10,
        "default_window": 10,
        "max_body_bytes": 4096,
    }
    values.update(overrides)
    return ProxySettings(**values)


@asynccontextmanager
async def serving(
    scorer: Any,
    settings: ProxySettings | None = None,
    encoder: Embedder | None = None,
    rescorer: Embedder | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    async with proxy_client(
        settings or api_settings(), scorer=scorer, encoder=encoder, rescorer=rescorer
    ) as http:
        yield http


@pytest.fixture
async def api(scorer: Scorer) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(scorer) as http:
        yield http


def expected(scorer: Scorer, texts: Sequence[str], *, sigmoid: bool = True) -> list[float]:
    return [float(s) for s in scorer.score([(QUERY, t) for t in texts], sigmoid=sigmoid)]


# ------------------------------------------------------------------ answers


async def test_tei_rerank_scores_every_text_at_its_own_index_best_first(
    api: httpx.AsyncClient, scorer: Scorer
) -> None:
    response = await api.post("/rerank", json={"query": QUERY, "texts": TEXTS})
    assert response.status_code == 200
    ranks = response.json()
    assert sorted(r["index"] for r in ranks) == list(range(len(TEXTS)))
    assert [set(r) for r in ranks] == [{"index", "score"}] * len(TEXTS)
    scores = [r["score"] for r in ranks]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(s, float) and 0.0 < s < 1.0 for s in scores)  # sigmoid by default
    want = expected(scorer, TEXTS)
    for rank in ranks:
        assert rank["score"] == pytest.approx(want[rank["index"]], abs=1e-6)
    assert {ranks[0]["index"], ranks[1]["index"]} == {1, 3}  # the two about qubits


async def test_tei_raw_scores_are_logits_and_return_text_echoes_each_text(
    api: httpx.AsyncClient, scorer: Scorer
) -> None:
    body = {"query": QUERY, "texts": TEXTS, "raw_scores": True, "return_text": True}
    ranks = (await api.post("/rerank", json=body)).json()
    want = expected(scorer, TEXTS, sigmoid=False)
    for rank in ranks:
        assert list(rank) == ["index", "text", "score"]  # TEI's Rank field order
        assert rank["text"] == TEXTS[rank["index"]]
        assert rank["score"] == pytest.approx(want[rank["index"]], abs=1e-5)


async def test_tei_rerank_takes_the_spelling_newer_elasticsearch_sends(
    api: httpx.AsyncClient,
) -> None:
    """Elasticsearch's hugging_face rerank entity sends ``documents``/``return_documents`` (and
    ``top_n``, which TEI ignores: Elasticsearch cuts the list itself)."""
    body = {"query": QUERY, "documents": TEXTS, "return_documents": True, "top_n": 1}
    ranks = (await api.post("/rerank", json=body)).json()
    assert len(ranks) == len(TEXTS)
    assert all(r["text"] == TEXTS[r["index"]] for r in ranks)


async def test_cohere_v1_answers_results_id_and_meta_with_documents_as_sent(
    api: httpx.AsyncClient, scorer: Scorer
) -> None:
    documents: list[Any] = [TEXTS[0], {"text": TEXTS[1], "id": "b"}, TEXTS[2], {"text": TEXTS[3]}]
    body = {
        "query": QUERY,
        "documents": documents,
        "top_n": 2,
        "return_documents": True,
        "model": "rerank-english-v3.0",  # named, and ignored like any field we do not use
        "rank_fields": ["text"],
        "max_chunks_per_doc": 10,
    }
    response = await api.post("/v1/rerank", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"id", "results", "meta"}
    assert answer["meta"] == {"api_version": {"version": "1"}}
    results = answer["results"]
    assert [r["index"] for r in results] == [1, 3] or [r["index"] for r in results] == [3, 1]
    want = expected(scorer, TEXTS)
    for result in results:
        assert result["relevance_score"] == pytest.approx(want[result["index"]], abs=1e-6)
    by_index = {r["index"]: r["document"] for r in results}
    assert by_index[1] == {"text": TEXTS[1], "id": "b"}
    assert by_index[3] == {"text": TEXTS[3]}


async def test_cohere_v2_scores_all_documents_and_leaves_document_out_unless_asked(
    api: httpx.AsyncClient,
) -> None:
    body = {"model": "any", "query": QUERY, "documents": TEXTS, "max_tokens_per_doc": 512}
    answer = (await api.post("/v2/rerank", json=body)).json()
    assert answer["meta"] == {"api_version": {"version": "2"}}
    assert sorted(r["index"] for r in answer["results"]) == list(range(len(TEXTS)))
    assert all(set(r) == {"index", "relevance_score"} for r in answer["results"])


async def test_a_top_n_beyond_the_count_returns_every_document(api: httpx.AsyncClient) -> None:
    body = {"query": QUERY, "documents": TEXTS, "top_n": 50}
    answer = (await api.post("/v1/rerank", json=body)).json()
    assert len(answer["results"]) == len(TEXTS)


async def test_scores_are_json_floats_even_when_whole(api: httpx.AsyncClient) -> None:
    text = (await api.post("/v2/rerank", json={"query": QUERY, "documents": TEXTS})).text
    assert '"relevance_score":0,' not in text and '"relevance_score":1,' not in text
    assert all(isinstance(r["relevance_score"], float) for r in httpx.Response(200, text=text)
               .json()["results"])  # fmt: skip


# ------------------------------------------------------------------ bad input

TOO_MANY = [f"text {i}" for i in range(11)]  # the limit is max_window: 10 here

#: (path, body, status, the error text it carries): the README's table, row by row
BAD_INPUT: list[tuple[str, Any, int, str]] = [
    ("/rerank", {"query": QUERY, "texts": []}, 413, "`texts` cannot be empty"),
    ("/rerank", {"query": QUERY, "texts": TOO_MANY}, 413, "batch size 11 > maximum allowed"),
    ("/rerank", {"query": QUERY, "texts": ["a", 3]}, 422, "texts[1]: invalid type: integer"),
    ("/rerank", {"texts": ["a"]}, 422, "missing field `query`"),
    ("/rerank", {"query": QUERY}, 422, "missing field `texts`"),
    ("/rerank", {"query": 7, "texts": ["a"]}, 422, "query: invalid type: integer `7`"),
    ("/rerank", {"query": QUERY, "texts": ["a"], "raw_scores": "yes"}, 422, "raw_scores"),
    ("/rerank", [QUERY], 422, "expected struct RerankRequest"),
    ("/rerank", b'{"query": ', 400, "not valid JSON"),
    ("/rerank", {"query": "x" * 5000, "texts": ["a"]}, 413, "larger than the proxy's limit"),
    ("/v1/rerank", {"query": QUERY, "documents": []}, 400, "list of documents must not be empty"),
    ("/v2/rerank", {"query": QUERY, "documents": TOO_MANY}, 400, "too many documents: 11"),
    ("/v1/rerank", {"query": QUERY, "documents": ["a", 3]}, 400, "documents[1] must be a string"),
    ("/v1/rerank", {"query": QUERY, "documents": [{"title": "a"}]}, 400, "documents[0] must"),
    ("/v2/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0}, 400, "top_n must be a"),
    ("/v2/rerank", {"query": QUERY, "documents": ["a"], "top_n": "2"}, 400, "top_n must be a"),
    ("/v1/rerank", {"documents": ["a"]}, 400, "query is required"),
    ("/v2/rerank", {"query": " ", "documents": ["a"]}, 400, "query is required"),
    ("/v1/rerank", {"query": QUERY, "documents": "a"}, 400, "documents is required"),
    ("/v2/rerank", b"[1, 2", 400, "invalid request: the request body is not valid JSON"),
    ("/v2/rerank", {"query": "x" * 5000, "documents": ["a"]}, 413, "larger than the proxy's"),
]


def assert_tei_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert text in body["error"]
    # router/src/lib.rs ErrorType, serialised by serde as the variant's name
    assert body["error_type"] in {"Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer"}


def assert_cohere_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"id", "message"}
    assert text in body["message"]


@pytest.mark.parametrize(("path", "body", "status", "text"), BAD_INPUT)
async def test_bad_input_is_the_error_each_formats_own_service_answers(
    api: httpx.AsyncClient, path: str, body: Any, status: int, text: str
) -> None:
    if isinstance(body, bytes):
        response = await api.post(path, content=body)
    else:
        response = await api.post(path, json=body)
    if path == "/rerank":
        assert_tei_error(response, status, text)
        if status in (413, 422):
            assert response.json()["error_type"] == "Validation"
    else:
        assert_cohere_error(response, status, text)


async def test_wrong_method_and_unknown_paths_are_not_rerank_answers(
    api: httpx.AsyncClient,
) -> None:
    assert (await api.get("/rerank")).status_code == 405
    assert (await api.post("/v3/rerank", json={})).status_code == 404


# ------------------------------------------------------------------ keys, limits, failures


async def test_api_keys_are_the_proxys_own_sent_as_apikey_or_bearer(scorer: Scorer) -> None:
    body = {"query": QUERY, "documents": TEXTS[:2]}
    async with serving(scorer, api_settings(api_keys=("s3cret",))) as http:
        for header in ("ApiKey s3cret", "Bearer s3cret", "bearer s3cret"):
            ok = await http.post("/v2/rerank", json=body, headers={"authorization": header})
            assert ok.status_code == 200, header
        missing = await http.post("/v2/rerank", json=body)
        wrong = await http.post("/v1/rerank", json=body, headers={"authorization": "Bearer no"})
        basic = await http.post(
            "/rerank", json={"query": QUERY, "texts": ["a"]}, headers={"authorization": "Basic x"}
        )
        info = await http.get("/info")
    assert_cohere_error(missing, 401, "invalid api token")
    assert_cohere_error(wrong, 401, "invalid api token")
    assert basic.status_code == 401 and basic.content == b""  # TEI's middleware: a bare 401
    assert info.status_code == 401


async def test_a_saturated_server_answers_429_with_retry_after_in_each_format(
    scorer: Scorer,
) -> None:
    async with serving(scorer, api_settings(max_in_flight=1)) as http:
        proxy = http._transport.app.state.proxy  # type: ignore[attr-defined]
        held = proxy.admission.admit(scoring=False)
        try:
            tei = await http.post("/rerank", json={"query": QUERY, "texts": TEXTS})
            cohere = await http.post("/v2/rerank", json={"query": QUERY, "documents": TEXTS})
        finally:
            held.release()
        after = await http.post("/v2/rerank", json={"query": QUERY, "documents": TEXTS})
        metrics = (await http.get("/metrics")).text
    assert_tei_error(tei, 429, "saturated")
    assert tei.json()["error_type"] == "Overloaded"
    assert_cohere_error(cohere, 429, "saturated")
    assert tei.headers["retry-after"] == cohere.headers["retry-after"] == "1"
    assert after.status_code == 200
    assert "reranker_proxy_rejected_total 2.0" in metrics
    assert 'reranker_proxy_requests_total{kind="rerank_api",status="429"} 2.0' in metrics


class FailingScorer:
    """The shipped scorer's identity; every call raises."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.version = inner.version
        self.variant = inner.variant
        self.provider = inner.provider
        self.feature_names: tuple[str, ...] = ()

    def warmup(self) -> None:
        pass

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        raise ModelError("injected fault")


class SlowScorer(FailingScorer):
    def __init__(self, inner: Scorer, pause_s: float) -> None:
        super().__init__(inner)
        self.pause_s = pause_s

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        time.sleep(self.pause_s)
        return self.inner.score(pairs, **kwargs)


async def test_a_failing_scorer_is_a_424_and_opens_the_circuit(scorer: Scorer) -> None:
    settings = api_settings(breaker_failures=2, breaker_cooloff_s=60)
    body = {"query": QUERY, "texts": TEXTS}
    async with serving(FailingScorer(scorer), settings) as http:
        first = await http.post("/rerank", json=body)
        second = await http.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS})
        third = await http.post("/rerank", json=body)
    assert_tei_error(first, 424, "injected fault")
    assert first.json()["error_type"] == "Backend"
    assert_cohere_error(second, 424, "injected fault")
    assert_tei_error(third, 503, "circuit open")
    assert third.json()["error_type"] == "Unhealthy"


async def test_a_scorer_past_the_deadline_is_a_504(scorer: Scorer) -> None:
    settings = api_settings(default_timeout_ms=200, scorer_grace_ms=50)
    async with serving(SlowScorer(scorer, 1.0), settings) as http:
        started = time.monotonic()
        late = await http.post("/v2/rerank", json={"query": QUERY, "documents": TEXTS})
        waited = time.monotonic() - started
    assert_cohere_error(late, 504, "timeout")
    assert waited < 0.9  # answered at the deadline, not when the scorer finished


@pytest.fixture(scope="module")
def aware() -> Scorer:
    return Scorer(SHIPPED_AWARE, variant="int8", threads=1)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.default(Settings(home=Path("/nonexistent")), threads=1)


async def test_a_first_stage_aware_model_reads_the_dense_score_the_embedder_computes(
    aware: Scorer, embedder: Embedder
) -> None:
    async with serving(aware, encoder=embedder) as http:
        tei = await http.post("/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True})
        cohere = await http.post("/v2/rerank", json={"query": QUERY, "documents": TEXTS})
        info = (await http.get("/info")).json()
    assert tei.status_code == 200 and cohere.status_code == 200
    features = features_for_texts(embedder, QUERY, TEXTS).values
    want = aware.score([(QUERY, t) for t in TEXTS], features=features)
    got = {row["index"]: row["score"] for row in tei.json()}
    assert np.allclose([got[i] for i in range(len(TEXTS))], want, atol=1e-4)
    assert [row["index"] for row in cohere.json()["results"]][:2] in ([1, 3], [3, 1])
    assert info["first_stage_features"] == list(aware.feature_names)


async def test_with_a_default_cascade_the_model_rescores_the_fused_orders_top_k_only(
    aware: Scorer, embedder: Embedder
) -> None:
    settings = api_settings(cascade_model=Path("first-stage"), default_cascade=2)
    async with serving(aware, settings, encoder=embedder) as http:
        tei = await http.post("/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True})
    assert tei.status_code == 200, tei.text
    features = features_for_texts(embedder, QUERY, TEXTS).values
    by_fused = sorted(range(len(TEXTS)), key=lambda i: -features[i, 0])
    head, tail = by_fused[:2], by_fused[2:]
    logits = aware.score([(QUERY, TEXTS[i]) for i in head], features=features[head])
    got = {row["index"]: row["score"] for row in tei.json()}
    assert np.allclose([got[i] for i in head], logits, atol=1e-4)
    assert max(got[i] for i in tail) < min(got[i] for i in head)
    assert [row["index"] for row in tei.json()][2:] == tail  # the tail keeps the fused order


@pytest.fixture(scope="module")
def second_embedder() -> Embedder:
    return Embedder(DEFAULT_RESCORE_DIR, max_length=128, threads=1)


async def test_a_second_embedder_adds_its_cosine_over_the_scored_head_to_the_logits(
    aware: Scorer, embedder: Embedder, second_embedder: Embedder
) -> None:
    settings = api_settings(cascade_model=Path("first-stage"), default_cascade=3)
    async with serving(aware, settings, encoder=embedder, rescorer=second_embedder) as http:
        tei = await http.post("/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True})
        info = (await http.get("/info")).json()
    assert tei.status_code == 200, tei.text
    features = features_for_texts(embedder, QUERY, TEXTS).values
    head = sorted(range(len(TEXTS)), key=lambda i: -features[i, 0])[:3]
    logits = aware.score([(QUERY, TEXTS[i]) for i in head], features=features[head])
    query = second_embedder.encode_queries([QUERY])[0]
    cosines = second_embedder.encode([TEXTS[i] for i in head]) @ query
    normalised = (cosines - cosines.min()) / np.ptp(cosines)
    got = {row["index"]: row["score"] for row in tei.json()}
    want = logits + HEAD_RESCORE_WEIGHT * normalised
    assert np.allclose([got[i] for i in head], want, atol=1e-3)
    assert info["rescore"] == {"embedder": second_embedder.model_id, "weight": HEAD_RESCORE_WEIGHT}


async def test_a_plain_models_logits_stay_its_own_beside_a_second_embedder(
    scorer: Scorer, second_embedder: Embedder
) -> None:
    async with serving(scorer, rescorer=second_embedder) as http:
        tei = await http.post("/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True})
        info = (await http.get("/info")).json()
    got = {row["index"]: row["score"] for row in tei.json()}
    want = expected(scorer, TEXTS, sigmoid=False)
    assert np.allclose([got[i] for i in range(len(TEXTS))], want, atol=1e-4)
    assert "rescore" not in info


async def test_the_texts_get_bm25_over_the_request_and_the_hybrid_fusion(
    embedder: Embedder,
) -> None:
    features = features_for_texts(embedder, QUERY, TEXTS).values
    fused, bm25, dense = features[:, 0], features[:, 1], features[:, 2]
    # "what is a qubit in quantum computing": text 0 shares no word with it (missing: 0.0);
    # text 2 shares only "is" and scores lowest of those that match, the bottom of min-max;
    # text 3 shares "quantum", "in" and "a" ("qubits" is not "qubit"), text 1 the most
    assert bm25[0] == bm25[2] == 0.0
    assert bm25[1] == 1.0 and 0.0 < bm25[3] < 1.0
    cosines = dense_cosines(embedder, QUERY, TEXTS)
    assert np.argsort(-dense).tolist() == np.argsort(-cosines).tolist()
    assert np.allclose(
        fused,
        (0.7 * bm25 + dense - (0.7 * bm25 + dense).min()) / np.ptp(0.7 * bm25 + dense),
        atol=1e-6,
    )


async def test_texts_sharing_no_word_with_the_query_are_ordered_by_the_cosine(
    embedder: Embedder,
) -> None:
    features = features_for_texts(embedder, "zzyzx", TEXTS).values
    assert (features[:, 1] == 0.0).all()
    assert np.argsort(-features[:, 0]).tolist() == np.argsort(-features[:, 2]).tolist()


async def test_a_first_stage_aware_model_without_an_embedder_is_a_424(aware: Scorer) -> None:
    async with serving(aware) as http:
        tei = await http.post("/rerank", json={"query": QUERY, "texts": TEXTS})
        cohere = await http.post("/v2/rerank", json={"query": QUERY, "documents": TEXTS})
    assert_tei_error(tei, 424, "first-stage-aware")
    assert tei.json()["error_type"] == "Backend"
    assert_cohere_error(cohere, 424, "embedder is not loaded")


async def test_without_a_model_every_endpoint_says_unavailable() -> None:
    async with serving(None) as http:
        tei = await http.post("/rerank", json={"query": QUERY, "texts": TEXTS})
        cohere = await http.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS})
        info = await http.get("/info")
        health = await http.get("/_health")
    assert_tei_error(tei, 503, "model not loaded")
    assert tei.json()["error_type"] == "Unhealthy"
    assert_cohere_error(cohere, 503, "model not loaded")
    assert_tei_error(info, 503, "model not loaded")
    assert health.status_code == 503


# ------------------------------------------------------------------ info, modes, metrics


async def test_info_describes_the_model_and_limits_in_teis_shape(
    api: httpx.AsyncClient, scorer: Scorer
) -> None:
    info = (await api.get("/info")).json()
    tei_fields = {
        "model_id", "model_sha", "model_dtype", "model_type", "max_concurrent_requests",
        "max_input_length", "max_batch_tokens", "max_batch_requests", "max_client_batch_size",
        "auto_truncate", "tokenization_workers", "version", "sha", "docker_label",
    }  # fmt: skip
    assert tei_fields <= set(info)
    assert info["model_id"] == scorer.model_id
    assert info["model_version"] == scorer.version
    assert info["model_dtype"] == "int8"
    assert "reranker" in info["model_type"]
    assert info["max_input_length"] == scorer.max_length
    assert info["max_client_batch_size"] == info["limits"]["max_documents"] == 10
    assert info["limits"]["max_body_bytes"] == 4096
    assert info["first_stage_features"] == []


async def test_scorer_only_serves_no_search_and_is_healthy_without_a_cluster(
    api: httpx.AsyncClient,
) -> None:
    health = await api.get("/_health")
    assert health.status_code == 200
    assert health.json()["elasticsearch"]["reachable"] is None
    search = await api.post("/docs/_search", json={"query": {"match_all": {}}})
    assert search.status_code == 404


async def test_the_full_proxy_serves_the_rerank_api_beside_search(scorer: Scorer) -> None:
    settings = api_settings(scorer_only=False)
    async with serving(scorer, settings) as http:
        ranked = await http.post("/v2/rerank", json={"query": QUERY, "documents": TEXTS})
        search = await http.post("/docs/_search", json={})
    assert ranked.status_code == 200
    assert search.status_code == 503  # routed to the (closed) cluster: search is served


async def test_rerank_requests_are_counted_and_timed_in_the_proxy_metrics(
    api: httpx.AsyncClient,
) -> None:
    await api.post("/rerank", json={"query": QUERY, "texts": TEXTS})
    await api.post("/v2/rerank", json={"query": QUERY, "documents": []})
    metrics = (await api.get("/metrics")).text
    assert 'reranker_proxy_requests_total{kind="rerank_api",status="200"} 1.0' in metrics
    assert 'reranker_proxy_requests_total{kind="rerank_api",status="400"} 1.0' in metrics
    assert 'reranker_proxy_stage_seconds_count{stage="rerank"} 1.0' in metrics
    assert "reranker_proxy_in_flight 0.0" in metrics


async def test_health_is_ready_only_once_the_warm_up_inference_has_run(scorer: Scorer) -> None:
    import asyncio
    import threading

    release = threading.Event()
    warmed: list[bool] = []

    class SlowToWarm(Scorer):
        def __init__(self, inner: Scorer) -> None:
            self.__dict__.update(inner.__dict__)
            self.inner = inner

        def warmup(self) -> None:
            release.wait(30)
            self.inner.warmup()  # a real inference: the full batch of the longest pairs
            warmed.append(True)

    app = create_app(
        api_settings(), scorer_factory=lambda: SlowToWarm(scorer), load_in_background=True
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scorer") as http:
            warming = await http.get("/_health")
            refused = await http.post("/rerank", json={"query": QUERY, "texts": TEXTS})
            release.set()
            for _ in range(300):
                ready = await http.get("/_health")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.05)
    assert warming.status_code == 503
    assert warming.json()["model"] == {"loaded": False, "reason": "loading"}
    assert refused.status_code == 503
    assert ready.status_code == 200 and warmed == [True]
