"""RemoteEmbedder's batching, spreading, breakers and fail-over against fake ``/embed``
endpoints (httpx.MockTransport): no sockets, no model; each fake answers /info and /embed as
``reranker serve --embedder-only`` (or a TEI embedding server) does, or fails as told."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from reranker.errors import ModelError
from reranker.rerank.remote import RemoteScorer
from reranker.retrieval.embed_cache import encode_queries
from reranker.retrieval.remote_embedder import RemoteEmbedder, read_vectors
from tests.fakes import FakeEndpoints
from tests.helpers import Clock

DIM = 3
CARD = {"model_id": "minilm@0123456789ab/int8", "dim": DIM, "query_prompt": "query"}
INFO = {
    "model_id": "minilm@0123456789ab/int8",
    "model_type": {"embedding": {"pooling": "mean"}},
    "max_client_batch_size": 100,
    "embedder": CARD,
}
TEXTS = ["a", "bb", "ccc", "dddd", "eeeee"]


def vector_of(text: str, prompt: str | None) -> list[float]:
    """The fakes' embedding: known from the text (and the prompt) alone."""
    return [float(len(text)), 1.0 if prompt == "query" else 0.0, float(ord(text[0]))]


class Fakes(FakeEndpoints):
    """Endpoints ``http://a``, ``http://b``, ...: each embeds by :func:`vector_of`, unless
    ``mode[host]`` says otherwise."""

    def __init__(self, *hosts: str) -> None:
        super().__init__(INFO, *hosts)

    def answer(self, body: dict[str, Any], mode: str) -> httpx.Response:
        vectors = [vector_of(t, body.get("prompt_name")) for t in body["inputs"]]
        if mode == "short":
            vectors = vectors[:-1]
        return httpx.Response(200, json=vectors)

    def embed_hosts(self) -> list[str]:
        return self.hosts_called("/embed")

    def embedder(self, **options: Any) -> RemoteEmbedder:
        return RemoteEmbedder(
            [f"http://{h}" for h in self.mode],
            transport=httpx.MockTransport(self.handler),
            **options,
        )


def expected(texts: list[str], prompt: str | None = None) -> list[list[float]]:
    return [vector_of(t, prompt) for t in texts]


def states(embedder: RemoteEmbedder) -> dict[str, dict[str, Any]]:
    return {e["url"]: e for e in embedder.describe()}


# ------------------------------------------------------------------ embedding


def test_vectors_come_back_in_the_callers_order() -> None:
    embedder = Fakes("a").embedder()
    assert embedder.encode(TEXTS).tolist() == expected(TEXTS)
    assert embedder.encode([]).shape == (0, DIM)


def test_documents_are_sent_without_a_prompt_and_normalised() -> None:
    fakes = Fakes("a")
    fakes.embedder().encode(TEXTS)
    assert fakes.bodies[0] == {
        "inputs": TEXTS,
        "normalize": True,
        "truncate": True,
        "prompt_name": None,
    }


def test_queries_are_embedded_with_the_query_prompt() -> None:
    fakes = Fakes("a")
    embedder = fakes.embedder()
    assert encode_queries(embedder, TEXTS).tolist() == expected(TEXTS, "query")
    assert fakes.bodies[0]["prompt_name"] == "query"


def test_the_embedder_is_named_by_the_endpoints_info() -> None:
    embedder = Fakes("a").embedder()
    assert (embedder.model_id, embedder.dim) == (CARD["model_id"], DIM)


def test_batches_are_cut_to_the_servers_client_batch_size() -> None:
    fakes = Fakes("a")
    fakes.info["a"]["max_client_batch_size"] = 2
    assert fakes.embedder().encode(TEXTS).tolist() == expected(TEXTS)
    assert [b["inputs"] for b in fakes.bodies] == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]


def test_without_a_client_batch_size_in_info_teis_default_of_32_applies() -> None:
    fakes = Fakes("a")
    del fakes.info["a"]["max_client_batch_size"]
    assert fakes.embedder(max_batch=1000).batch == 32


def test_batches_are_spread_across_the_endpoints() -> None:
    fakes = Fakes("a", "b")
    texts = [f"text {i}" for i in range(40)]
    assert fakes.embedder(max_batch=4).encode(texts).tolist() == expected(texts)
    hosts = fakes.embed_hosts()
    assert len(hosts) == 10 and {"a", "b"} == set(hosts)


def test_an_api_key_is_sent_as_a_bearer_token() -> None:
    fakes = Fakes("a")
    fakes.embedder(api_key="s3cret").encode(TEXTS)
    assert all(h["authorization"] == "Bearer s3cret" for h in fakes.headers)


def test_a_tei_embedding_server_is_named_by_its_model_and_sha_and_measured() -> None:
    fakes = Fakes("a")
    fakes.info["a"] = {
        "model_id": "BAAI/bge-small-en-v1.5",
        "model_sha": "5c38ec7c405ec4b44b94cc5a9bb96e735b38267a",
        "model_type": {"embedding": {"pooling": "cls"}},
    }
    embedder = fakes.embedder()
    assert embedder.model_id == "BAAI/bge-small-en-v1.5@5c38ec7c405e"
    assert embedder.dim == DIM  # from a first embedding: TEI's /info does not say it


# ------------------------------------------------------------------ fail-over


@pytest.mark.parametrize("failure", ["down", "500", "timeout", "short"])
def test_a_failing_endpoint_fails_over_to_another_and_no_batch_fails(failure: str) -> None:
    fakes = Fakes("a", "b")
    embedder = fakes.embedder(failures=2, cooloff_s=60, concurrency=1)
    fakes.mode["a"] = failure
    for _ in range(6):
        assert embedder.encode(TEXTS).tolist() == expected(TEXTS)
    # two failures open a's breaker; after that every batch goes straight to b
    assert fakes.embed_hosts().count("a") == 2
    assert states(embedder)["http://a"]["state"] == "open"
    assert states(embedder)["http://b"]["requests"] == 6


def test_an_open_endpoint_gets_one_probe_after_the_cooloff_and_rejoins_on_success() -> None:
    fakes, clock = Fakes("a", "b"), Clock()
    embedder = fakes.embedder(failures=1, cooloff_s=10, clock=clock)
    fakes.mode["a"] = "500"
    for _ in range(3):
        embedder.encode(TEXTS)
    assert fakes.embed_hosts().count("a") == 1
    clock.now += 11
    fakes.mode["a"] = "ok"
    embedder.encode(TEXTS)
    assert fakes.embed_hosts()[-1] == "a"
    assert states(embedder)["http://a"]["state"] == "closed"


def test_an_overloaded_endpoint_is_skipped_without_counting_against_it() -> None:
    fakes = Fakes("a", "b")
    embedder = fakes.embedder(failures=1)
    fakes.mode["a"] = "429"
    for _ in range(3):
        assert embedder.encode(TEXTS).tolist() == expected(TEXTS)
    assert states(embedder)["http://a"]["state"] == "closed"
    assert states(embedder)["http://a"]["failures"] == 0


def test_when_no_endpoint_embeds_a_batch_the_call_raises_a_model_error_naming_each() -> None:
    fakes = Fakes("a", "b")
    embedder = fakes.embedder(failures=1, cooloff_s=60)
    fakes.mode.update(a="500", b="down")
    with pytest.raises(ModelError, match="no remote embedder answered") as raised:
        embedder.encode(TEXTS)
    assert "http://a" in str(raised.value) and "http://b" in str(raised.value)


def test_when_a_batch_fails_the_batches_not_yet_started_are_not_sent() -> None:
    fakes = Fakes("a")
    # a breaker that never opens: every batch started is a request
    embedder = fakes.embedder(failures=1000, attempts=1, max_batch=1, concurrency=2)
    fakes.mode["a"] = "500"
    with pytest.raises(ModelError):
        embedder.encode([f"t{i}" for i in range(50)])
    assert len(fakes.embed_hosts()) < 10


def test_a_request_the_endpoint_refuses_as_bad_is_raised_without_fail_over() -> None:
    fakes = Fakes("a", "b")
    fakes.mode.update(a="400", b="400")
    with pytest.raises(ModelError, match="refused: 400"):
        fakes.embedder().encode(TEXTS)
    assert len(fakes.embed_hosts()) == 1


# ------------------------------------------------------------------ construction and health


def test_endpoints_serving_different_embedders_are_refused() -> None:
    fakes = Fakes("a", "b")
    fakes.info["b"]["embedder"]["model_id"] = "other@ffffffffffff"
    with pytest.raises(ModelError, match=r"disagree on the model.*minilm.*other"):
        fakes.embedder()


def test_an_endpoint_without_an_embedder_is_refused() -> None:
    fakes = Fakes("a")
    fakes.info["a"] = {"model_id": "xenc", "model_type": {"reranker": {}}}
    with pytest.raises(ModelError, match="serves no embedder"):
        fakes.embedder()


def test_a_remote_scorer_pointed_at_an_embedder_is_refused() -> None:
    fakes = Fakes("a")
    with pytest.raises(ModelError, match="embedding model"):
        RemoteScorer(["http://a"], transport=httpx.MockTransport(fakes.handler))


def test_an_endpoint_down_at_start_begins_open_and_the_others_embed() -> None:
    fakes = Fakes("a", "b")
    fakes.mode["a"] = "down"
    embedder = fakes.embedder(cooloff_s=60)
    assert states(embedder)["http://a"]["state"] == "open"
    embedder.encode(TEXTS)
    assert fakes.embed_hosts() == ["b"]


def test_no_endpoint_answering_info_is_a_clear_error() -> None:
    fakes = Fakes("a")
    fakes.mode["a"] = "down"
    with pytest.raises(ModelError, match="no remote embedder answered GET /info"):
        fakes.embedder()


def test_a_health_check_keeps_out_an_endpoint_restarted_with_another_embedder() -> None:
    fakes = Fakes("a", "b")
    embedder = fakes.embedder()
    fakes.info["b"]["embedder"]["dim"] = 768
    embedder.pool.check_health()
    assert states(embedder)["http://b"]["state"] == "mismatch"
    for _ in range(3):
        embedder.encode(TEXTS)
    assert set(fakes.embed_hosts()) == {"a"}


# ------------------------------------------------------------------ the answer's shape


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"error": "x"}, "expected a list"),
        ([[1.0, 2.0, 3.0]], "1 vectors for 2 texts"),
        ([[1.0, 2.0, 3.0], [1.0, 2.0]], "not lists of numbers of one length"),
        ([[1.0, 2.0], [1.0, 2.0]], r"shape \(2, 2\)"),
        ([[1.0, 2.0, 3.0], [1.0, "x", 3.0]], "not lists of numbers"),
        ([[1.0, 2.0, 3.0], [1.0, float("nan"), 3.0]], "not finite"),
    ],
)
def test_malformed_answers_are_refused(body: Any, reason: str) -> None:
    with pytest.raises(ModelError, match=reason):
        read_vectors(body, 2, DIM)


def test_indexing_and_serving_read_embedder_urls_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reranker.config import Settings

    monkeypatch.setenv("RERANKER_EMBEDDER_URLS", "http://a:9290, http://b:9290,")
    monkeypatch.setenv("RERANKER_EMBEDDER_API_KEY", "k")
    settings = Settings.from_env(es_url="http://127.0.0.1:9")
    assert settings.embedder_urls == ("http://a:9290", "http://b:9290")
    assert settings.embedder_api_key == "k"


def test_vectors_parse_to_float32_exactly_as_the_server_sent_them() -> None:
    sent = np.array([[0.1, -0.25, 1e-8]], dtype=np.float32)
    parsed = read_vectors(json.loads(json.dumps(sent.tolist())), 1, 3)
    assert parsed.dtype == np.float32 and np.array_equal(parsed, sent)


def test_an_embedder_only_server_refuses_to_embed_through_other_endpoints() -> None:
    from click.testing import CliRunner

    from reranker.cli import main

    command = ["serve", "--embedder-only", "--embedder-url", "http://127.0.0.1:9"]
    result = CliRunner().invoke(main, ["--es-url", "http://127.0.0.1:9", *command])
    assert result.exit_code == 2, result.output
    assert "embeds in process" in result.output


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_proxys_metrics_show_each_remote_embedder_endpoint() -> None:
    from tests.helpers import proxy_client, settings

    fakes = Fakes("a", "b")
    fakes.mode["b"] = "down"
    async with proxy_client(settings(), encoder=fakes.embedder(cooloff_s=60)) as http:
        metrics = (await http.get("/metrics")).text
    assert 'reranker_proxy_remote_embedder_up{endpoint="http://a"} 1.0' in metrics
    assert 'reranker_proxy_remote_embedder_up{endpoint="http://b"} 0.0' in metrics


def test_a_local_and_a_remote_embedder_at_once_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from reranker.cli import main

    url = "http://127.0.0.1:9"
    source = tmp_path / "docs.jsonl"
    source.write_text('{"_id": "1", "title": "", "text": "a document"}\n', encoding="utf-8")
    command = ["--es-url", url, "--embedder", str(tmp_path), "index", str(source),
               "--alias", "docs", "--embedder-url", url]  # fmt: skip
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2, result.output
    assert "give one of them" in result.output
