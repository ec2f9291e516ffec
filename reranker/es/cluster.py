"""A local cluster of N Elasticsearch nodes on loopback: ``reranker es up --nodes N``.

Each node is a :class:`~reranker.es.node.LocalNode` of its own (its own folder
``nodes/<port>/`` with config, data, logs and pid file, the same distribution, JDK, heap and
service user), on HTTP port ``port + i`` and transport port ``port + 100 + i`` (fixed: they
are the seed hosts), differing from the single node in its ``elasticsearch.yml`` only:

- discovery by ``discovery.seed_hosts`` (every node's transport address) instead of
  ``discovery.type: single-node``; ``cluster.initial_master_nodes`` (every node's name) only
  while no node holds a cluster state yet (the first start), so a later start never
  bootstraps a second cluster;
- **transport TLS** (``xpack.security.transport.ssl``, verification ``full``) with the CA and
  node certificates of :mod:`reranker.es.certificates`, made at the first start and kept in
  ``RERANKER_HOME/credentials/``; HTTP stays plain on loopback like the single node's.

Credentials: every node gets the same generated ``elastic`` password (its keystore's
``bootstrap.password``), stored for each port in
``RERANKER_HOME/credentials/elasticsearch-<port>.json``, so a client reaches any node as it
reaches the single node. :attr:`ClusterStatus.url` names every node, comma-separated:
``RERANKER_ES_URL`` takes that list and the clients fail over between the nodes.

The file realm (the proxy's restricted user, :mod:`reranker.es.file_realm`) is written to
every node's config: :func:`file_realm_of`. Each node's config also holds
``reranker-cluster.json`` (the member ports), from which :func:`cluster_of` finds the whole
cluster given any member's port (``reranker es down|status --port``).

The nodes start together (each in a thread: a node alone waits for its peers to elect a
master) and the cluster is up when every node answers with health yellow or green.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from reranker.credentials import (
    USERNAME,
    LocalCredentials,
    generate_password,
    read_credentials,
    write_credentials,
)
from reranker.errors import NodeError
from reranker.es.certificates import ensure_certificates, tls_dir
from reranker.es.distribution import (
    DEFAULT_ES_VERSION,
    Progress,
    ensure_distribution,
    find_java_home,
)
from reranker.es.file_realm import FileRealm
from reranker.es.node import LocalNode, NodeStatus
from reranker.es.processes import RunAs, port_bindable

MANIFEST = "reranker-cluster.json"
TRANSPORT_OFFSET = 100
MAX_NODES = 9
CERTS = "certs"

T = TypeVar("T")


def node_name(port: int) -> str:
    return f"reranker-{port}"


@dataclass(frozen=True)
class ClusterStatus:
    """Each node's :class:`NodeStatus`, in port order."""

    nodes: tuple[NodeStatus, ...]

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (what ``RERANKER_ES_URL`` takes)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def message(self) -> str:
        up = sum(node.running for node in self.nodes)
        lines = [f"{up} of {len(self.nodes)} nodes of the local cluster run"]
        return "\n".join([*lines, *(f"  {node.message}" for node in self.nodes)])


class ClusterNode(LocalNode):
    """One node of a :class:`LocalCluster`: a :class:`LocalNode` with seed-host discovery and
    transport TLS (see the module's docstring)."""

    def __init__(self, cluster: LocalCluster, port: int, **kwargs: Any) -> None:
        super().__init__(port=port, **kwargs)
        self.cluster = cluster
        self.name = node_name(port)
        #: whether this start may bootstrap the cluster (no node holds a cluster state yet)
        self.bootstrap = False

    @property
    def data_path(self) -> Path:
        return self.data_dir or self.node_dir / "data"

    def has_cluster_state(self) -> bool:
        return (self.data_path / "_state").is_dir()

    def _transport_port(self) -> int:
        return self.port + TRANSPORT_OFFSET

    def _settings(self, data: Path) -> dict[str, str | int | bool]:
        settings = super()._settings(data)
        settings.pop("discovery.type", None)
        settings["node.name"] = self.name
        settings["discovery.seed_hosts"] = ",".join(
            f"127.0.0.1:{port + TRANSPORT_OFFSET}" for port in self.cluster.ports
        )
        if self.bootstrap:
            settings["cluster.initial_master_nodes"] = ",".join(
                node_name(port) for port in self.cluster.ports
            )
        settings.update(
            {
                "xpack.security.transport.ssl.enabled": True,
                "xpack.security.transport.ssl.verification_mode": "full",
                "xpack.security.transport.ssl.key": f"{CERTS}/{self.name}.key",
                "xpack.security.transport.ssl.certificate": f"{CERTS}/{self.name}.crt",
                "xpack.security.transport.ssl.certificate_authorities": f"{CERTS}/ca.crt",
            }
        )
        return settings

    def _prepare_node_dir(
        self, es_home: Path, java_home: Path, run_as: RunAs | None, skip: set[str]
    ) -> None:
        # before the node folder is handed to the service user (LocalNode chowns all of it)
        config = self.node_dir / "config"
        certs = config / CERTS
        certs.mkdir(parents=True, exist_ok=True)
        source = self.cluster.tls_dir
        for name in ("ca.crt", f"{self.name}.crt", f"{self.name}.key"):
            shutil.copyfile(source / name, certs / name)
            os.chmod(certs / name, 0o600 if name.endswith(".key") else 0o644)
        (config / MANIFEST).write_text(
            json.dumps({"ports": list(self.cluster.ports)}) + "\n", encoding="utf-8"
        )
        super()._prepare_node_dir(es_home, java_home, run_as, skip)


class LocalCluster:
    """``nodes`` local nodes on HTTP ports ``port`` … ``port + nodes - 1`` (see the module)."""

    def __init__(
        self,
        *,
        nodes: int,
        port: int = 9200,
        version: str = DEFAULT_ES_VERSION,
        home: Path | None = None,
        heap: str = "512m",
        data_root: Path | None = None,
        startup_timeout_s: float = 300.0,
    ) -> None:
        if not 2 <= nodes <= MAX_NODES:
            raise NodeError(f"a local cluster has 2 to {MAX_NODES} nodes, not {nodes}")
        if port + nodes - 1 + TRANSPORT_OFFSET > 65535:
            raise NodeError(f"ports {port}…{port + nodes - 1} (+{TRANSPORT_OFFSET}) do not fit")
        self.ports = tuple(range(port, port + nodes))
        self.members = tuple(
            ClusterNode(
                self,
                member,
                version=version,
                home=home,
                heap=heap,
                data_dir=(data_root / str(member)) if data_root else None,
                startup_timeout_s=startup_timeout_s,
            )
            for member in self.ports
        )
        self.tls_dir = tls_dir(port)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(member.url for member in self.members)

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def node(self, port: int) -> ClusterNode:
        for member in self.members:
            if member.port == port:
                return member
        raise NodeError(f"port {port} is not a node of the cluster on {self.ports}")

    def status(self) -> ClusterStatus:
        return ClusterStatus(_each(self.members, lambda member: member.status()))

    def up(self, progress: Progress | None = None) -> ClusterStatus:
        """Start every node that is not running and wait until each answers yellow or green.
        Idempotent, like :meth:`LocalNode.up`; a node that does not come up fails the call
        (the others keep running: ``down`` stops them)."""
        say: Progress = progress or (lambda _msg: None)
        current = self.status().nodes
        if all(node.running for node in current):
            return ClusterStatus(current)
        self._check_folders()
        stopped = [m for m, node in zip(self.members, current, strict=True) if not node.running]
        # a node alive but not answering (no master elected yet) holds its ports already
        self._check_ports(
            [m for m, node in zip(self.members, current, strict=True) if node.pid is None]
        )
        self._prepare(say)
        bootstrap = not any(member.has_cluster_state() for member in self.members)
        for member in stopped:
            member.bootstrap = bootstrap
        say(
            f"starting {len(stopped)} of {len(self.members)} nodes "
            f"({'bootstrapping a new cluster' if bootstrap else 'joining the cluster'})"
        )
        lock = threading.Lock()

        def said(message: str) -> None:
            with lock:
                say(message)

        _each(stopped, lambda member: member.up(said))
        return self.status()

    def start_node(self, port: int, progress: Progress | None = None) -> NodeStatus:
        """Start one stopped node again (it rejoins the cluster through the seed hosts)."""
        member = self.node(port)
        self._prepare(progress or (lambda _msg: None))
        member.bootstrap = not any(other.has_cluster_state() for other in self.members)
        return member.up(progress)

    def down(self) -> ClusterStatus:
        """Stop every node this cluster's folders started (each as :meth:`LocalNode.down`)."""
        return ClusterStatus(_each(self.members, lambda member: member.down()))

    def file_realm(self) -> NodeRealms:
        return NodeRealms([member.file_realm() for member in self.members])

    # -- internals
    def _check_folders(self) -> None:
        """Refuse node folders of another cluster or of a single node: their cluster state
        would keep these nodes from ever forming this cluster."""
        for member in self.members:
            ports = read_manifest(member)
            if ports not in (None, self.ports) or (ports is None and member.has_cluster_state()):
                owner = f"the cluster on {ports}" if ports else "a single node"
                raise NodeError(
                    f"{member.node_dir} holds the data of {owner}; stop it and remove that "
                    f"folder, or choose another --port"
                )

    def _check_ports(self, stopped: Sequence[ClusterNode]) -> None:
        for member in stopped:
            for port in (member.port, member.port + TRANSPORT_OFFSET):
                if not port_bindable(port):
                    raise NodeError(
                        f"port {port} on 127.0.0.1 is in use; node {member.name} needs it "
                        f"(HTTP {member.port}, transport {member.port + TRANSPORT_OFFSET}): "
                        f"choose another --port"
                    )

    def _prepare(self, say: Progress) -> None:
        """What every node shares: the distribution, the certificates, the password."""
        first = self.members[0]
        java_home = find_java_home()
        es_home = ensure_distribution(first.home / "dist", first.version, say)
        names = [member.name for member in self.members]
        ensure_certificates(self.tls_dir, names, es_home, java_home, say)
        stored = [read_credentials(port) for port in self.ports]
        shared = next((c for c in stored if c is not None and c.username == USERNAME), None)
        shared = shared or LocalCredentials(USERNAME, generate_password())
        for port, creds in zip(self.ports, stored, strict=True):
            if creds != shared:
                write_credentials(port, shared)


class NodeRealms:
    """The same file-realm users and roles in every node's config: each node authenticates
    and authorises with its own files (a search's shard requests are authorised on the
    nodes holding the shards, by role name)."""

    def __init__(self, realms: Sequence[FileRealm]) -> None:
        self.realms = tuple(realms)

    def __len__(self) -> int:
        return len(self.realms)

    def grant(self, username: str, password: str, role: str, role_body: dict[str, Any]) -> bool:
        """:meth:`FileRealm.grant` on every node; whether any node's files changed."""
        changed = [realm.grant(username, password, role, role_body) for realm in self.realms]
        return any(changed)


def read_manifest(node: LocalNode) -> tuple[int, ...] | None:
    """The member ports a node's config names, or ``None`` for a single node's folder."""
    try:
        data = json.loads((node.node_dir / "config" / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ports = data.get("ports") if isinstance(data, dict) else None
    if isinstance(ports, list) and ports and all(isinstance(p, int) for p in ports):
        return tuple(ports)
    return None


def cluster_of(port: int, **options: Any) -> LocalCluster | None:
    """The local cluster the node folder of ``port`` belongs to (``options`` as
    :class:`LocalCluster` takes them), or ``None`` when it is a single node's or none."""
    ports = read_manifest(LocalNode(port=port, home=options.get("home")))
    if ports is None or len(ports) < 2:
        return None
    return LocalCluster(nodes=len(ports), port=ports[0], **options)


def file_realm_of(port: int) -> NodeRealms:
    """The file realms of the local node on ``port``: every node's when it is a cluster's."""
    cluster = cluster_of(port)
    if cluster is None:
        return NodeRealms([LocalNode(port=port).file_realm()])
    return cluster.file_realm()


def _each(members: Sequence[ClusterNode], action: Callable[[ClusterNode], T]) -> tuple[T, ...]:
    """``action`` on every member at once; the first failure is raised after all finished,
    naming every node that failed."""
    with ThreadPoolExecutor(max_workers=len(members)) as pool:
        futures = [pool.submit(action, member) for member in members]
    failures = [
        (member, future.exception())
        for member, future in zip(members, futures, strict=True)
        if future.exception() is not None
    ]
    if failures:
        detail = "\n".join(f"{member.name}: {error}" for member, error in failures)
        raise NodeError(f"{len(failures)} of {len(members)} nodes failed:\n{detail}")
    return tuple(future.result() for future in futures)
