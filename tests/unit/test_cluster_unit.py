"""The local cluster's configuration, without starting it: each node's settings, the ports,
the manifest that ties the node folders together, the file realm written to every node, the
certificates' instances, several URLs in one setting, and the CLI's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from reranker.cli import main
from reranker.config import Settings
from reranker.credentials import LocalCredentials, credentials_for_url, write_credentials
from reranker.errors import ConfigError, NodeError
from reranker.es.certificates import instances_yaml, missing_certificates
from reranker.es.cluster import MANIFEST, ClusterStatus, LocalCluster, NodeRealms, cluster_of
from reranker.es.file_realm import FileRealm
from reranker.es.node import NodeStatus


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Node folders and credentials under ``tmp_path``, whoever runs the tests."""
    monkeypatch.setenv("RERANKER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RERANKER_ES_SYSTEM_DIR", str(tmp_path / "system"))
    return tmp_path


def three(home: Path, port: int = 9400) -> LocalCluster:
    return LocalCluster(nodes=3, port=port, home=home / "es")


def test_nodes_take_consecutive_http_ports_and_transport_ports_100_above(home: Path) -> None:
    cluster = three(home)
    assert cluster.ports == (9400, 9401, 9402)
    assert [m._transport_port() for m in cluster.members] == [9500, 9501, 9502]
    assert cluster.url == "http://127.0.0.1:9400,http://127.0.0.1:9401,http://127.0.0.1:9402"


def test_a_member_finds_its_peers_by_seed_hosts_not_single_node_discovery(home: Path) -> None:
    settings = three(home).node(9401)._settings(home / "data")
    assert "discovery.type" not in settings
    assert settings["discovery.seed_hosts"] == "127.0.0.1:9500,127.0.0.1:9501,127.0.0.1:9502"
    assert settings["node.name"] == "reranker-9401"
    assert settings["transport.port"] == 9501


def test_only_a_first_start_names_the_initial_master_nodes(home: Path) -> None:
    member = three(home).node(9400)
    assert "cluster.initial_master_nodes" not in member._settings(home / "data")
    member.bootstrap = True
    assert member._settings(home / "data")["cluster.initial_master_nodes"] == (
        "reranker-9400,reranker-9401,reranker-9402"
    )


def test_a_member_turns_transport_tls_on_with_its_own_certificate(home: Path) -> None:
    settings = three(home).node(9402)._settings(home / "data")
    assert settings["xpack.security.enabled"] is True
    assert settings["xpack.security.transport.ssl.enabled"] is True
    assert settings["xpack.security.transport.ssl.verification_mode"] == "full"
    assert settings["xpack.security.transport.ssl.certificate"] == "certs/reranker-9402.crt"
    assert settings["xpack.security.transport.ssl.key"] == "certs/reranker-9402.key"
    assert settings["xpack.security.transport.ssl.certificate_authorities"] == "certs/ca.crt"


@pytest.mark.parametrize("nodes", [1, 10])
def test_a_cluster_has_two_to_nine_nodes(home: Path, nodes: int) -> None:
    with pytest.raises(NodeError, match="2 to 9 nodes"):
        LocalCluster(nodes=nodes, port=9400, home=home / "es")


def write_manifest(cluster: LocalCluster) -> None:
    for member in cluster.members:
        (member.node_dir / "config").mkdir(parents=True)
        (member.node_dir / "config" / MANIFEST).write_text(json.dumps({"ports": cluster.ports}))


def test_any_members_port_finds_the_whole_cluster(home: Path) -> None:
    write_manifest(three(home))
    found = cluster_of(9402, home=home / "es")
    assert found is not None and found.ports == (9400, 9401, 9402)


def test_a_single_nodes_folder_belongs_to_no_cluster(home: Path) -> None:
    (home / "es" / "nodes" / "9400" / "config").mkdir(parents=True)
    assert cluster_of(9400, home=home / "es") is None


def test_folders_holding_a_single_nodes_data_are_refused(home: Path) -> None:
    cluster = three(home)
    (cluster.node(9401).data_path / "_state").mkdir(parents=True)
    with pytest.raises(NodeError, match="holds the data of a single node"):
        cluster._check_folders()


def test_folders_of_another_cluster_are_refused(home: Path) -> None:
    write_manifest(LocalCluster(nodes=2, port=9401, home=home / "es"))
    with pytest.raises(NodeError, match=r"the cluster on \(9401, 9402\)"):
        three(home)._check_folders()


def test_the_proxys_user_is_granted_on_every_nodes_file_realm(tmp_path: Path) -> None:
    configs = [tmp_path / f"config-{i}" for i in range(3)]
    for config in configs:
        config.mkdir()
    realms = NodeRealms([FileRealm(config) for config in configs])
    role = {"indices": [{"names": ["docs-*"], "privileges": ["read"]}]}
    assert len(realms) == 3
    assert realms.grant("reranker-proxy-1", "secret", "reranker_proxy_1", role)
    assert all(
        FileRealm(c).has_user("reranker-proxy-1", "secret", "reranker_proxy_1", role)
        for c in configs
    )
    assert not realms.grant("reranker-proxy-1", "secret", "reranker_proxy_1", role)


def test_the_status_counts_the_running_nodes_and_names_every_url() -> None:
    up = NodeStatus(True, "http://127.0.0.1:9400", 1, "9.5.3", Path(), "runs")
    down = NodeStatus(False, "http://127.0.0.1:9401", None, None, Path(), "no node running")
    status = ClusterStatus((up, down))
    assert not status.running
    assert status.url == "http://127.0.0.1:9400,http://127.0.0.1:9401"
    assert status.message.splitlines()[0] == "1 of 2 nodes of the local cluster run"


def test_certificates_are_made_for_loopback_only_and_only_where_missing(tmp_path: Path) -> None:
    text = instances_yaml(["reranker-9400"])
    assert 'name: "reranker-9400"' in text and '"127.0.0.1"' in text and '"localhost"' in text
    (tmp_path / "reranker-9400.crt").write_text("x")
    (tmp_path / "reranker-9400.key").write_text("x")
    assert missing_certificates(tmp_path, ["reranker-9400", "reranker-9401"]) == ["reranker-9401"]


# ------------------------------------------------------------------ several URLs


def test_the_es_url_takes_every_nodes_url_comma_separated() -> None:
    settings = Settings(es_url="http://127.0.0.1:9400, http://127.0.0.1:9401")
    assert settings.es_urls == ("http://127.0.0.1:9400", "http://127.0.0.1:9401")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9400,ftp://x", "http://a:1,https://b:2", ","])
def test_every_url_must_be_http_or_https_and_all_of_one_scheme(url: str) -> None:
    with pytest.raises(ConfigError):
        Settings(es_url=url)


def test_a_clusters_credentials_are_found_from_its_first_url() -> None:
    write_credentials(9400, LocalCredentials("elastic", "pw"))
    found = credentials_for_url("http://127.0.0.1:9400,http://127.0.0.1:9401")
    assert found == LocalCredentials("elastic", "pw")


# ------------------------------------------------------------------ the CLI


def test_es_up_refuses_a_cluster_without_security() -> None:
    result = CliRunner().invoke(
        main, ["es", "up", "--port", "9400", "--nodes", "3", "--no-security"]
    )
    assert result.exit_code == 2
    assert "always runs with security on" in result.output


def test_es_up_refuses_another_size_for_an_existing_cluster(home: Path) -> None:
    write_manifest(LocalCluster(nodes=3, port=9400))  # the default home, under RERANKER_HOME
    result = CliRunner().invoke(main, ["es", "up", "--port", "9401", "--nodes", "2"])
    assert result.exit_code == 2
    assert "3-node local cluster on ports 9400…9402" in result.output
