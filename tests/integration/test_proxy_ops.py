"""The proxy's blend and model hot reload, against a real Elasticsearch node and real ONNX models.

Reload targets are the shipped model (``models/reranker-minilm-l6``, a trained cross-encoder
that passes the smoke test) and copies of it that are broken on purpose.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch

from reranker.blend.blends import LinearBlend, save_blend
from reranker.es.node import NodeStatus
from reranker.proxy import ProxySettings, create_app
from reranker.rerank.scorer import Scorer
from reranker.retrieval.embedder import Embedder
from tests.conftest import free_port
from tests.integration.conftest import (
    QUERY,
    REPO,
    delete_indices_named_after,
    index_docs,
    proxy_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SHIPPED = REPO / "models" / "reranker-minilm-l6"
SCIFACT_FEATURES = ("relevance", "first_stage", "authority", "freshness")


@pytest.fixture(scope="module")
def papers(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """40 SciFact abstracts with distinct citation counts and years in ``signals``."""
    docs = [
        {**doc, "signals": {"citations": (i * 37) % 400 + i, "year": 1980 + i}}
        for i, doc in enumerate(scifact_docs[:40])
    ]
    alias = f"papers-{uuid.uuid4().hex[:8]}"
    index_docs(es_client, embedder, docs, alias, tmp_path_factory.mktemp("papers"))
    yield alias
    delete_indices_named_after(es_client, alias)


def settings_for(es_node: NodeStatus, alias: str, **overrides: Any) -> ProxySettings:
    return proxy_settings(es_node, alias, signals=((f"{alias}*", "scifact"),), **overrides)


class Running:
    def __init__(self, settings: ProxySettings, loader: Any) -> None:
        self.app = create_app(settings, model_loader=loader, load_in_background=False)
        self.lifespan = self.app.router.lifespan_context(self.app)

    async def __aenter__(self) -> httpx.AsyncClient:
        await self.lifespan.__aenter__()
        transport = httpx.ASGITransport(app=self.app)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://proxy", timeout=60)
        return self.http

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.lifespan.__aexit__(None, None, None)


def loader_from(default: Path, threads: int = 1) -> Any:
    def load(folder: Path | None, variant: str | None) -> Scorer:
        target = folder or default
        chosen = variant or ("int8" if (target / "model.int8.onnx").is_file() else "fp32")
        return Scorer(target, variant=chosen, threads=threads)

    return load


def body(window: int = 20, **rerank: Any) -> dict[str, Any]:
    return {"query": QUERY, "size": window, "rerank": {"window": window, **rerank}}


# ------------------------------------------------------------------ the blend


async def test_a_blend_of_weights_orders_the_window_by_its_features(
    es_node: NodeStatus, papers: str, proxy_xenc_dir: Path
) -> None:
    async with Running(settings_for(es_node, papers), loader_from(proxy_xenc_dir)) as http:
        answer = await http.post(
            f"/{papers}/_search", json=body(blend={"authority": 1}, explain=True)
        )
    assert answer.status_code == 200, answer.text
    hits = answer.json()["hits"]["hits"]
    citations = [hit["_source"]["signals"]["citations"] for hit in hits]
    assert len(hits) == 20 and citations == sorted(citations, reverse=True)
    assert answer.json()["rerank"]["blend"].startswith("linear@")
    for hit in hits:
        explained = hit["_rerank"]["blend"]
        total = explained["base"] + sum(f["contribution"] for f in explained["features"].values())
        assert total == pytest.approx(hit["_score"], abs=1e-9)
        assert set(explained["features"]) == set(SCIFACT_FEATURES)


async def test_a_learned_blend_is_asked_for_by_name(
    es_node: NodeStatus, papers: str, proxy_xenc_dir: Path, tmp_path: Path
) -> None:
    fitted = LinearBlend(weights={"freshness": 1.0}, feature_names=SCIFACT_FEATURES)
    path = save_blend(fitted, tmp_path / "newest.json", card={"signals": "scifact"})
    settings = settings_for(es_node, papers, blends=(("newest", str(path)),))
    async with Running(settings, loader_from(proxy_xenc_dir)) as http:
        answer = await http.post(f"/{papers}/_search", json=body(blend="newest"))
        unknown = await http.post(f"/{papers}/_search", json=body(blend="oldest"))
    years = [hit["_source"]["signals"]["year"] for hit in answer.json()["hits"]["hits"]]
    assert years == sorted(years, reverse=True)
    assert unknown.status_code == 400 and "oldest" in unknown.json()["error"]["reason"]


# ------------------------------------------------------------------ hot reload


def broken_copy(tmp_path: Path) -> Path:
    """The shipped model with one byte of its ONNX file changed: the card's sha256 fails."""
    folder = tmp_path / "broken-model"
    shutil.copytree(SHIPPED, folder)
    onnx = folder / "model.int8.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    return folder


async def test_reload_swaps_the_model_while_searches_keep_answering(
    es_node: NodeStatus, papers: str, proxy_xenc_dir: Path
) -> None:
    shipped_version = Scorer(SHIPPED, variant="int8").version
    settings = settings_for(es_node, papers, model_roots=(SHIPPED.parent,))
    async with Running(settings, loader_from(proxy_xenc_dir)) as http:
        before = (await http.post(f"/{papers}/_search", json=body(10))).json()["rerank"]
        stop = asyncio.Event()
        answers: list[httpx.Response] = []

        async def client() -> None:
            while not stop.is_set():
                answers.append(await http.post(f"/{papers}/_search", json=body(10)))

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(0.5)
        reload = await http.post("/_reranker/reload", json={"model": str(SHIPPED)})
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
        after = (await http.post(f"/{papers}/_search", json=body(10))).json()["rerank"]
        metrics = (await http.get("/metrics")).text
    assert reload.status_code == 200, reload.text
    assert reload.json()["previous"]["version"] == before["model"]["version"]
    assert after["model"]["version"] == shipped_version != before["model"]["version"]
    assert answers and all(a.status_code == 200 for a in answers)
    assert all(a.json()["rerank"]["degraded"] is None for a in answers)
    assert 'reranker_proxy_model_reloads_total{outcome="loaded"} 1.0' in metrics


async def test_reload_refuses_a_model_whose_card_does_not_match(
    es_node: NodeStatus, papers: str, proxy_xenc_dir: Path, tmp_path: Path
) -> None:
    broken = broken_copy(tmp_path)
    settings = settings_for(es_node, papers, model_roots=(tmp_path,))
    async with Running(settings, loader_from(proxy_xenc_dir)) as http:
        before = (await http.post(f"/{papers}/_search", json=body(10))).json()["rerank"]
        refused = await http.post("/_reranker/reload", json={"model": str(broken)})
        after = await http.post(f"/{papers}/_search", json=body(10))
    assert refused.status_code == 400
    assert "sha256" in refused.json()["error"]["reason"]
    assert after.status_code == 200
    assert after.json()["rerank"]["model"] == before["model"]
    assert after.json()["rerank"]["degraded"] is None


def wait_for(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"reranker serve exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer 200")


def reloads(base: str, outcome: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f'reranker_proxy_model_reloads_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for_reloads(base: str, outcome: str, count: float) -> None:
    deadline = time.monotonic() + 60
    while reloads(base, outcome) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {outcome} reload counted")
        time.sleep(0.2)


def test_sighup_reloads_a_running_server_and_keeps_the_old_model_on_failure(
    es_node: NodeStatus, papers: str, tmp_path: Path
) -> None:
    folder = tmp_path / "served-model"
    shutil.copytree(SHIPPED, folder)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "reranker.cli", "--es-url", es_node.url, "serve"]
    command += ["--port", str(port), "--model", str(folder), "--variant", "int8", "--no-dense"]
    log_file = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "RERANKER_PROXY_ALLOWED_INDICES": f"{papers}*"},
        stderr=log_file,
    )
    try:
        wait_for(f"{base}/_health", process)
        os.kill(process.pid, signal.SIGHUP)
        wait_for_reloads(base, "loaded", 1)

        onnx = folder / "model.int8.onnx"
        onnx.write_bytes(onnx.read_bytes()[:-1])  # truncated: the card check must refuse it
        os.kill(process.pid, signal.SIGHUP)
        wait_for_reloads(base, "refused", 1)

        answer = httpx.post(f"{base}/{papers}/_search", json=body(10), timeout=60)
        assert answer.status_code == 200
        assert answer.json()["rerank"]["degraded"] is None
        assert httpx.get(f"{base}/_health").json()["model"]["loaded"] is True
    finally:
        process.terminate()
        process.wait(timeout=30)
        log_file.close()
    events = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()]
    messages = [event["message"] for event in events]  # every line is one JSON object
    assert "reranked" in messages
    assert any(m.startswith("model reloaded") for m in messages)
    assert any(m.startswith("model reload refused") for m in messages)
