"""Fixtures shared by the integration tests: the embedder and small real corpora."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch

from reranker.es.node import NodeStatus
from reranker.proxy import ProxySettings, create_app
from reranker.rerank.scorer import Scorer
from reranker.retrieval.embedder import Embedder
from tests.conftest import es_settings, free_port

REPO = Path(__file__).resolve().parents[2]
# The shared BEIR data sits beside the checkout; RERANKER_DATA points elsewhere.
DATA = Path(os.environ.get("RERANKER_DATA") or REPO.parent / "shared" / "data").resolve()
SCIFACT = DATA / "scifact"


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.default()


@pytest.fixture(scope="session")
def scifact_docs() -> list[dict[str, object]]:
    """The first 120 SciFact documents, as they are on disk."""
    docs = []
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            docs.append(json.loads(line))
            if len(docs) == 120:
                break
    return docs


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def write_mini_scifact(folder: Path, split: str, queries: int, others: int) -> Path:
    """A BEIR folder of SciFact's first ``queries`` judged queries of ``split``, their relevant
    abstracts and ``others`` more abstracts (in corpus order)."""
    lines = (SCIFACT / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    query_ids = list(dict.fromkeys(r[0] for r in rows))[:queries]
    kept = [r for r in rows if r[0] in query_ids]
    relevant = {r[1] for r in kept}
    docs: list[dict[str, object]] = []
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        extra = 0
        for line in handle:
            doc = json.loads(line)
            if doc["_id"] in relevant or extra < others:
                extra += doc["_id"] not in relevant
                docs.append(doc)
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "corpus.jsonl", docs)
    texts = [json.loads(q) for q in (SCIFACT / "queries.jsonl").read_text().splitlines()]
    write_jsonl(folder / "queries.jsonl", [q for q in texts if q["_id"] in query_ids])
    (folder / "qrels").mkdir()
    (folder / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in kept)
    )
    return folder


@pytest.fixture
def alias(es_client: Elasticsearch) -> Iterator[str]:
    """A fresh alias name; every index behind or named after it is deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_indices_named_after(es_client, name)


def delete_indices_named_after(client: Elasticsearch, alias: str) -> None:
    """Wildcard deletes are refused (action.destructive_requires_name), so name each one."""
    names = list(client.indices.get(index=f"{alias}-*", allow_no_indices=True))
    if names:
        client.indices.delete(index=",".join(names), ignore_unavailable=True)


@pytest.fixture(scope="session")
def proxy_xenc_dir(xenc_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped MiniLM with a fresh one-label head, exported for the Scorer (its scores mean
    nothing; the proxy's behaviour is what the proxy tests check)."""
    from export.onnx_export import export_cross_encoder

    out = tmp_path_factory.mktemp("proxy-xenc") / "reranker"
    return export_cross_encoder(xenc_checkpoint_dir, out, name="proxy-test-xenc")


@pytest.fixture(scope="session")
def proxy_scorer(proxy_xenc_dir: Path) -> Scorer:
    return Scorer(proxy_xenc_dir, threads=1)


def index_docs(
    client: Elasticsearch,
    embedder: Embedder,
    docs: list[dict[str, Any]],
    alias: str,
    folder: Path,
    passages: str | None = None,
) -> str:
    """Index ``docs`` behind ``alias`` with ``reranker index``'s code path (``passages``: the
    index's recorded choice for long documents); returns the alias."""
    from reranker.corpus import CorpusSource
    from reranker.es.indexing import LoadOptions, index_corpus

    path = write_jsonl(folder / "docs.jsonl", docs)
    options = LoadOptions(progress=False, passages=passages)
    index_corpus(client, CorpusSource.open(path), alias, embedder, options=options)
    return alias


QUERY = {"match": {"text": "human cells protein expression disease"}}


QUERY_TEXT = "human cells protein expression disease"


@pytest.fixture(scope="module")
def proxy_alias(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, object]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    alias = f"proxytest-{uuid.uuid4().hex[:8]}"
    index_docs(es_client, embedder, scifact_docs, alias, tmp_path_factory.mktemp("proxy-docs"))
    yield alias
    delete_indices_named_after(es_client, alias)
    es_client.options(ignore_status=404).indices.delete_index_template(name=f"{alias}-logs")


@contextmanager
def index_without_embeddings(client: Elasticsearch, name: str) -> Iterator[str]:
    """Two plain documents in a fresh index ``name`` (no ``embedding`` field), deleted after."""
    for i, text in enumerate(["human cells and protein expression", "disease in cells"]):
        client.index(index=name, id=str(i), document={"title": "", "text": text})
    client.indices.refresh(index=name)
    try:
        yield name
    finally:
        client.indices.delete(index=name)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def proxy(
    es_node: NodeStatus, proxy_alias: str, proxy_scorer: Scorer, embedder: Embedder
) -> AsyncIterator[httpx.AsyncClient]:
    """The proxy over ``proxy_alias`` with the test cross-encoder and the default embedder."""
    async with running(proxy_settings(es_node, proxy_alias), proxy_scorer, embedder) as http:
        yield http


def proxy_settings(es_node: NodeStatus, alias: str, **overrides: Any) -> ProxySettings:
    values: dict[str, Any] = {
        "es": es_settings(es_node.url),
        "allowed_indices": (f"{alias}*",),
        "max_window": 50,
        "default_window": 20,
        "default_timeout_ms": 30_000,
    }
    values.update(overrides)
    return ProxySettings(**values)


@asynccontextmanager
async def running(
    settings: ProxySettings,
    scorer: Scorer | None,
    embedder: Embedder | None = None,
    *,
    rescorer: Embedder | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings,
        scorer_factory=(lambda: scorer) if scorer is not None else None,
        encoder_factory=(lambda: embedder) if embedder is not None else None,
        load_in_background=False,
        rescore_factory=(lambda: rescorer) if rescorer is not None else None,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://proxy", timeout=60
        ) as http:
            yield http


def start_serve(port: int, *options: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``reranker serve OPTIONS --port PORT`` as a process of its own, with ``env``."""
    command = [sys.executable, "-c", "from reranker.cli import main; main()", "serve"]
    command += [*options, "--port", str(port), "--log-format", "text"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def start_scorer(port: int) -> subprocess.Popen[bytes]:
    # the survivor takes all CLIENTS at once after its peer dies: its own admission bounds
    # (default queue 16) would answer 429 to some, which is not the fail-over under test
    bounds = {
        "RERANKER_PROXY_MAX_IN_FLIGHT": str(CLIENTS + 4),
        "RERANKER_PROXY_MAX_SCORER_QUEUE": str(CLIENTS + 4),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), **bounds}
    model = ("--scorer-only", "--model", str(SHIPPED), "--variant", "int8")
    return start_serve(port, *model, env=env)


@contextmanager
def serving_processes(
    start: Callable[[int], subprocess.Popen[bytes]], count: int = 2
) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """``count`` processes ``start``ed on free ports, healthy, as (URL, process); killed after
    (those still running)."""
    ports = [free_port() for _ in range(count)]
    processes = [start(port) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, process in zip(urls, processes, strict=True):
            wait_healthy(url, process)
        yield list(zip(urls, processes, strict=True))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def wait_healthy(url: str, process: subprocess.Popen[bytes], limit_s: float = 90) -> None:
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"scorer at {url} exited: {stderr[-2000:]}")
        try:
            if httpx.get(f"{url}/_health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"scorer at {url} did not become healthy")


SHIPPED = REPO / "models" / "reranker-minilm-l6"


CLIENTS = 20
