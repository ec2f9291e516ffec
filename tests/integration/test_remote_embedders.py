"""Indexing and query embedding through two real ``reranker serve --embedder-only`` processes,
one of them killed mid-run: the index gets the in-process vectors of the same batches (within
1e-6) and records the in-process embedder's id, so the proxy's kNN checks hold for it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from elasticsearch import Elasticsearch

from reranker.cli import main
from reranker.corpus import CorpusSource, passage_text
from reranker.es import mappings
from reranker.es.indexing import LoadOptions, index_corpus
from reranker.es.node import NodeStatus
from reranker.retrieval.embedder import Embedder
from reranker.retrieval.remote_embedder import RemoteEmbedder
from tests.conftest import SCIFACT, require_data
from tests.integration.conftest import (
    QUERY,
    QUERY_TEXT,
    REPO,
    proxy_settings,
    running,
    serving_processes,
    start_serve,
    write_jsonl,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DOCUMENTS = 200
#: texts per request: 25 requests for the corpus, so the kill lands mid-run
BATCH = 8
#: the killed embedder answers this many requests first
ANSWERED_BEFORE_KILL = 3


def start_embedder(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RERANKER_EMBEDDER_URLS", None)  # an embedder-only server embeds in process
    return start_serve(port, "--embedder-only", env=env)


@pytest.fixture(scope="module")
def embedders() -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    with serving_processes(start_embedder) as started:
        yield started


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    """The first 200 SciFact abstracts."""
    with require_data(SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(DOCUMENTS), handle, strict=False)]


class KillAfter(httpx.HTTPTransport):
    """Real HTTP, except that ``victim`` is killed (SIGKILL) once it has answered ``count``
    embedding requests, while the others may be in flight on it."""

    def __init__(self, victim_url: str, victim: subprocess.Popen[bytes], count: int) -> None:
        super().__init__()
        self.victim_url, self.victim, self.left = victim_url, victim, count

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/embed" and str(request.url).startswith(self.victim_url):
            response.read()
            self.left -= 1
            if self.left == 0:
                self.victim.kill()
        return response


def stored_vectors(client: Elasticsearch, alias: str, ids: list[str]) -> np.ndarray:
    return np.array(
        [
            client.get(index=alias, id=doc_id, source_exclude_vectors=False)["_source"]["embedding"]
            for doc_id in ids
        ],
        dtype=np.float32,
    )


def in_process_by_request(embedder: Embedder, documents: list[dict[str, Any]]) -> np.ndarray:
    """The documents embedded in this process in the batches the requests carried: the int8
    embedder's vectors depend on what shares their batch (its activations are quantised per
    batch; up to ~0.02 apart measured), and ``/embed`` promises the in-process vectors of the
    same batch."""
    texts = [passage_text(d) for d in documents]
    return np.concatenate(
        [embedder.encode(texts[start : start + BATCH]) for start in range(0, len(texts), BATCH)]
    )


def test_indexing_through_two_embedders_one_killed_mid_run_stores_the_in_process_vectors(
    es_client: Elasticsearch,
    embedder: Embedder,
    documents: list[dict[str, Any]],
    embedders: list[tuple[str, subprocess.Popen[bytes]]],
    tmp_path: Path,
    alias: str,
) -> None:
    (url_a, process_a), (url_b, _) = embedders
    transport = KillAfter(url_a, process_a, ANSWERED_BEFORE_KILL)
    remote = RemoteEmbedder([url_a, url_b], max_batch=BATCH, transport=transport)
    assert (remote.model_id, remote.dim) == (embedder.model_id, embedder.dim)
    source = CorpusSource.open(write_jsonl(tmp_path / "docs.jsonl", documents))
    result = index_corpus(es_client, source, alias, remote, options=LoadOptions(progress=False))
    endpoints = {e["url"]: e for e in remote.describe()}
    remote.close()

    assert process_a.poll() is not None, "the embedder was never killed"
    assert result.documents == DOCUMENTS
    assert es_client.count(index=alias)["count"] == DOCUMENTS
    # the dead one failed (each failure went over to b) after it had served; b did the rest
    killed, survivor = endpoints[url_a], endpoints[url_b]
    assert killed["failures"] >= 1
    assert killed["requests"] - killed["failures"] >= ANSWERED_BEFORE_KILL
    assert survivor["failures"] == 0 and survivor["requests"] > ANSWERED_BEFORE_KILL
    stored = stored_vectors(es_client, alias, [str(d["_id"]) for d in documents])
    assert np.abs(stored - in_process_by_request(embedder, documents)).max() <= 1e-6
    assert mappings.index_meta(es_client, alias)["embedder"] == embedder.model_id


async def test_reranker_index_and_the_proxy_embed_through_the_endpoints_as_in_process(
    es_node: NodeStatus,
    embedder: Embedder,
    documents: list[dict[str, Any]],
    embedders: list[tuple[str, subprocess.Popen[bytes]]],
    tmp_path: Path,
    alias: str,
    es_client: Elasticsearch,
) -> None:
    url_b = embedders[1][0]  # the other may have been killed
    path = write_jsonl(tmp_path / "docs.jsonl", documents[:40])
    command = ["--es-url", es_node.url, "index", str(path), "--alias", alias, "--no-progress"]
    indexed = CliRunner().invoke(main, [*command, "--embedder-url", url_b])
    assert indexed.exit_code == 0, indexed.output
    assert mappings.index_meta(es_client, alias)["embedder"] == embedder.model_id

    remote = RemoteEmbedder([url_b])
    remote_query = remote.encode_queries([QUERY_TEXT])
    assert np.abs(remote_query - embedder.encode_queries([QUERY_TEXT])).max() <= 1e-6
    body = {"query": QUERY, "size": 5, "rerank": {"window": 5, "hybrid": {"dense": True}}}
    settings = proxy_settings(es_node, alias)
    # queries embedded in process and remotely: both in this index's embedding space (the
    # proxy closes the remote embedder when it stops)
    for encoder in (embedder, remote):
        async with running(settings, None, encoder) as http:
            response = await http.post(f"/{alias}/_search", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["rerank"]["first_stage"] == "hybrid"
