"""Session fixtures for the integration tests: one real Elasticsearch node per test session.

``es_node`` starts a :class:`~reranker.es.node.LocalNode` on port 9250 (``RERANKER_TEST_ES_PORT``
overrides) with a fresh data folder and security on, so it never touches the node a user runs
on 9200, and stops it when the session ends. With ``RERANKER_TEST_ES_URL`` set, that cluster
is used instead and nothing is started or stopped.

Credentials: the node's generated ``elastic`` password is kept in
``RERANKER_HOME/credentials/elasticsearch-<port>.json``, which ``Settings.from_env`` (and so
the CLI run in-process or as a subprocess) reads for a loopback URL on that port;
:func:`es_settings` gives tests the same settings object. For an external cluster,
``RERANKER_ES_API_KEY`` or ``RERANKER_ES_USERNAME``/``RERANKER_ES_PASSWORD`` apply.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from reranker.config import Settings
from reranker.es.client import client_options
from reranker.es.node import LocalNode, NodeStatus

#: the shared benchmarks beside the repository (``../shared/data``; ``RERANKER_DATA`` overrides)
DATA = Path(
    os.environ.get("RERANKER_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
).resolve()
SCIFACT = DATA / "scifact"


def require_data(path: Path) -> Path:
    """``path``, a file or folder of the shared data. Where it is missing a test is skipped on a
    developer's machine but fails in CI (``CI`` set): CI must run what the data tests check."""
    if path.exists():
        return path
    message = f"shared data not found: {path}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI runs every data test; fetch ../shared/data)")
    pytest.skip(message)


# Tests that stop the session node run after every other test (they are in test_node.py).
RUN_LAST = ("test_down_stops_the_process_and_status_says_not_running",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.name.split("[")[0] in RUN_LAST)


def es_test_port() -> int:
    return int(os.environ.get("RERANKER_TEST_ES_PORT", "9250"))


def es_settings(url: str, *, credentials_of: str | None = None, **overrides: Any) -> Settings:
    """Settings for ``url`` with the credentials the package itself would use for the cluster
    at ``credentials_of`` (default ``url``; a relay in front of a node passes the node's)."""
    base = Settings.from_env(es_url=credentials_of or url)
    return dataclasses.replace(base, es_url=url, **overrides)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving_over_http(app: Any) -> Iterator[str]:
    """``app`` (ASGI) served by uvicorn on a free loopback port in a thread, lifespan and all,
    for clients that need real HTTP; yields its base URL and stops it afterwards."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def es_client_for(url: str, **options: Any) -> Elasticsearch:
    """A sync client with the cluster's credentials."""
    settings = es_settings(url)
    return Elasticsearch(url, **{**client_options(settings), "request_timeout": 60, **options})


@pytest.fixture(scope="session")
def es_node() -> Iterator[NodeStatus]:
    external = os.environ.get("RERANKER_TEST_ES_URL")
    if external:
        yield NodeStatus(
            running=True,
            url=external.rstrip("/"),
            pid=None,
            version=None,
            home=Path(),
            message="external cluster from RERANKER_TEST_ES_URL",
        )
        return
    # Under /tmp so that the unprivileged node user can reach it when the tests run as root.
    data_dir = Path(tempfile.mkdtemp(prefix="reranker-test-es-data-"))
    node = LocalNode(port=es_test_port(), heap="512m", data_dir=data_dir)
    try:
        yield node.up()
    finally:
        node.down()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def es_client(es_node: NodeStatus) -> Iterator[Elasticsearch]:
    client = es_client_for(es_node.url)
    yield client
    client.close()


# Real weights, shared by unit and integration tests.


@pytest.fixture(scope="session")
def minilm_weights_dir() -> Path:
    from reranker.errors import ModelError
    from reranker.models import shipped_weights_dir

    try:
        return shipped_weights_dir()
    except ModelError as exc:
        pytest.skip(f"shipped weights not installed: {exc}")


@pytest.fixture(scope="session")
def xenc_checkpoint_dir(minilm_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local sequence-classification checkpoint: MiniLM body, a fresh one-label head."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import shutil

    torch.manual_seed(1234)
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(minilm_weights_dir), num_labels=1, local_files_only=True
    )
    out = tmp_path_factory.mktemp("xenc-checkpoint")
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(minilm_weights_dir / name, out / name)
    (out / "train_info.json").write_text(
        json.dumps(
            {
                "base_model": "sentence-transformers/all-MiniLM-L6-v2",
                "data": "none (fresh head, for tests)",
                "epochs": 0,
            }
        ),
        encoding="utf-8",
    )
    return out
