"""The README's first-screen commands run as written, on a real node: the reranked search the
quickstart leaves you with, and the proxy answering the README's curl body.

The commands are read from the README's block after "The node keeps running:" (so an edit there
is what is tested); a 60-document slice of SciFact stands behind the ``beir-scifact`` alias of
the test node, and the proxy's port comes from ``RERANKER_PROXY_PORT`` (the README's 9280
may be taken on a developer's machine).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch

from reranker.es.node import NodeStatus
from reranker.retrieval.embedder import Embedder
from tests.conftest import free_port
from tests.integration.conftest import delete_indices_named_after, index_docs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALIAS = "beir-scifact"


def readme_commands() -> list[str]:
    """The lines of the README's block that follows "The node keeps running:" (comments cut,
    continuation lines joined)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"The node keeps running:\s*```bash\n(.*?)```", text, re.S)
    assert block is not None, "the README's quickstart block is gone"
    joined = block.group(1).replace("-d '\n", "-d '")  # the curl body's continuation
    return [re.split(r"\s+#\s", line)[0].strip() for line in joined.splitlines() if line.strip()]


def command(prefix: str) -> str:
    found = [c for c in readme_commands() if c.startswith(prefix)]
    assert len(found) == 1, f"the README's block has no single {prefix!r} line: {found}"
    return found[0]


@pytest.fixture(scope="module")
def scifact_alias(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, object]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    if es_client.indices.exists_alias(name=ALIAS):
        delete_indices_named_after(es_client, ALIAS)
    index_docs(es_client, embedder, scifact_docs[:60], ALIAS, tmp_path_factory.mktemp("readme"))
    yield ALIAS
    delete_indices_named_after(es_client, ALIAS)


def cli_env(es_node: NodeStatus, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RERANKER_ES_URL": es_node.url, **extra}


def reranker_argv(line: str) -> list[str]:
    words = shlex.split(line)
    assert words[0] == "reranker"
    return [sys.executable, "-c", "from reranker.cli import main; main()", *words[1:]]


def test_the_readme_search_reranks_the_quickstart_alias(
    es_node: NodeStatus, scifact_alias: str
) -> None:
    line = command("reranker search")
    assert f"--alias {scifact_alias}" in line and "--rerank" in line
    done = subprocess.run(
        reranker_argv(line), env=cli_env(es_node), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [row.split(".")[0].strip() for row in done.stdout.splitlines() if row.strip()]
    assert ranks[:3] == ["1", "2", "3"]
    assert "(was" in done.stdout  # reranked: each hit says its first-stage rank


def test_the_readme_proxy_answers_the_readme_curl_body(
    es_node: NodeStatus, scifact_alias: str
) -> None:
    port = free_port()
    serve = subprocess.Popen(
        reranker_argv(command("reranker serve")),
        env=cli_env(es_node, RERANKER_PROXY_PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    curl = shlex.split(command("curl"))
    path = next(w for w in curl if "/_search" in w).split(":9280", 1)[1]
    body: dict[str, Any] = json.loads(curl[curl.index("-d") + 1])
    try:
        health: dict[str, Any] = {}
        give_up = time.monotonic() + 180
        while time.monotonic() < give_up and serve.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_health", timeout=2).json()
                if health.get("model", {}).get("loaded") and health.get("embedder", {}).get(
                    "loaded"
                ):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        assert serve.poll() is None, (serve.stderr.read() if serve.stderr else b"")[-2000:]
        answer = httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        reply = answer.json()
        assert 1 <= len(reply["hits"]["hits"]) <= body["size"], reply["rerank"]
        assert reply["rerank"]["degraded"] is None, reply["rerank"]
        assert reply["rerank"]["model"]["id"] == "reranker-minilm-l6-aware"
    finally:
        serve.terminate()
        serve.wait(timeout=30)
