"""The local Elasticsearch node, against the real node the session fixture starts."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from elasticsearch import Elasticsearch

from reranker.errors import NodeError
from reranker.es.distribution import DEFAULT_ES_VERSION
from reranker.es.node import CLUSTER_NAME, LocalNode, NodeStatus
from tests.conftest import es_client_for

pytestmark = pytest.mark.integration


@pytest.fixture
def local_node(es_node: NodeStatus) -> NodeStatus:
    """The session node, when this session started it (not an external cluster)."""
    if os.environ.get("RERANKER_TEST_ES_URL"):
        pytest.skip("RERANKER_TEST_ES_URL points at an external cluster")
    return es_node


def _same_node(status: NodeStatus) -> LocalNode:
    """A second handle on the session node: same port, found through its pid file."""
    port = urlparse(status.url).port
    assert port is not None
    return LocalNode(port=port)


def _process_exists(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"}


@pytest.fixture
def plain_listener() -> Iterator[int]:
    """A port held by a bare TCP listener that never speaks HTTP."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_up_answers_with_version_and_cluster_name(
    local_node: NodeStatus, es_client: Elasticsearch
) -> None:
    assert local_node.running
    assert local_node.version == DEFAULT_ES_VERSION
    health = es_client.cluster.health()
    assert health["cluster_name"] == CLUSTER_NAME
    assert health["status"] in {"green", "yellow"}


def test_up_secures_the_node_with_a_password_kept_0600(local_node: NodeStatus) -> None:
    import stat
    import urllib.error
    import urllib.request

    from reranker.credentials import credentials_file, read_credentials

    port = urlparse(local_node.url).port
    assert port is not None
    path = credentials_file(port)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    creds = read_credentials(port)
    assert creds is not None and creds.username == "elastic" and len(creds.password) >= 32
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{local_node.url}/_cluster/health", timeout=10)
    assert anonymous.value.code == 401
    with es_client_for(local_node.url) as client:
        assert client.security.authenticate()["username"] == "elastic"


def test_up_twice_is_idempotent(local_node: NodeStatus) -> None:
    again = _same_node(local_node).up()
    assert again.running
    assert again.pid == local_node.pid
    assert "already running" in again.message


def test_port_taken_by_plain_listener_gives_node_error_naming_the_port(
    plain_listener: int, tmp_path: Path
) -> None:
    node = LocalNode(port=plain_listener, home=tmp_path, startup_timeout_s=10)
    with pytest.raises(NodeError, match=rf"port {plain_listener}\b.*in use"):
        node.up()
    assert not (tmp_path / "dist").exists()  # refused before fetching or unpacking anything


def test_down_stops_the_process_and_status_says_not_running(local_node: NodeStatus) -> None:
    # conftest runs this test last: it stops the node every other test shares.
    node = _same_node(local_node)
    assert local_node.pid is not None
    stopped = node.down()
    assert not stopped.running
    assert not _process_exists(local_node.pid)
    after = node.status()
    assert not after.running
    assert after.pid is None
    assert "no node running" in after.message
