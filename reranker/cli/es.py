"""``reranker es up|down|status``: the local Elasticsearch node."""

from __future__ import annotations

import sys
from typing import Any

import click

from reranker.cli.common import F, RerankerGroup

# --------------------------------------------------------------------------- es


@click.group(cls=RerankerGroup)
def es() -> None:
    """Manage the local Elasticsearch (the embedded default): one node, or a cluster.

    The nodes run on 127.0.0.1 with Elasticsearch's security on: the `elastic` user's
    generated password is kept (mode 0600) in RERANKER_HOME/credentials/, where every
    reranker command and the proxy find it. It runs the integ-test-zip distribution fetched
    from Maven Central with `mvn`; distribution, JDK and data are cached under RERANKER_HOME
    (default ~/.cache/reranker). `es up --nodes N` starts N nodes as one cluster (transport
    TLS, certificates made once); `es down` and `es status` then act on all of them.
    """


def _node_options(func: F) -> F:
    func = click.option("--port", default=9200, show_default=True, help="HTTP port.")(func)
    func = click.option(
        "--es-version", "version", default=None, help="Elasticsearch 9.x version to run."
    )(func)
    return func


def _node(port: int, version: str | None, heap: str | None = None, *, security: bool = True) -> Any:
    from reranker.es.distribution import DEFAULT_ES_VERSION
    from reranker.es.node import LocalNode

    kwargs: dict[str, Any] = {
        "port": port,
        "version": version or DEFAULT_ES_VERSION,
        "security": security,
    }
    if heap:
        kwargs["heap"] = heap
    return LocalNode(**kwargs)


def _cluster(port: int, version: str | None, heap: str | None = None) -> Any | None:
    """The local cluster whose node folders include ``port``'s, or ``None``."""
    from reranker.es.cluster import cluster_of
    from reranker.es.distribution import DEFAULT_ES_VERSION

    options: dict[str, Any] = {"version": version or DEFAULT_ES_VERSION}
    if heap:
        options["heap"] = heap
    return cluster_of(port, **options)


@es.command("up")
@_node_options
@click.option("--heap", default="1g", show_default=True, help="JVM heap (-Xms and -Xmx).")
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=None,
    help="Nodes: N > 1 starts a cluster on HTTP ports PORT … PORT+N-1 (transport PORT+100 …), "
    "transport TLS on [default: the cluster's size when PORT is one of its nodes, else 1].",
)
@click.option(
    "--no-security",
    is_flag=True,
    help="Opt out: start the node with security off (anyone on this machine can read and "
    "change every index; the proxy's allow-list is then the only guard).",
)
def es_up(port: int, version: str | None, heap: str, nodes: int | None, no_security: bool) -> None:
    """Fetch (once), start and wait for the local node. Does nothing if it already runs.

    Security is on: the `elastic` user's password is generated on the first start and kept
    in RERANKER_HOME/credentials/elasticsearch-<port>.json (mode 0600)."""
    cluster = _cluster(port, version, heap)
    if cluster is not None and nodes is not None and nodes != len(cluster.ports):
        raise click.UsageError(
            f"port {port} is a node of the {len(cluster.ports)}-node local cluster on ports "
            f"{cluster.ports[0]}…{cluster.ports[-1]}: start it with --nodes "
            f"{len(cluster.ports)}, or `es down` it and remove its node folders first"
        )
    if (nodes or 1) > 1 or cluster is not None:
        if no_security:
            raise click.UsageError("a local cluster always runs with security on")
        _cluster_up(cluster or _new_cluster(port, version, heap, nodes or 1))
        return
    if no_security:
        click.echo(
            "warning: starting Elasticsearch with security OFF (--no-security): no "
            "authentication, no authorization; every local process can read and change "
            "every index",
            err=True,
        )
    node = _node(port, version, heap, security=not no_security)
    status = node.up(progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"Elasticsearch {status.version} is up at {status.url} (pid {status.pid})")
    click.echo(f"node folder (config, data, logs): {status.home}")
    if not no_security:
        from reranker.credentials import credentials_file

        click.echo(f"security on: user elastic, password in {credentials_file(port)}")
    click.echo(
        f"use it: export RERANKER_ES_URL={status.url}   stop it: reranker es down --port {port}"
    )


def _new_cluster(port: int, version: str | None, heap: str, nodes: int) -> Any:
    from reranker.es.cluster import LocalCluster
    from reranker.es.distribution import DEFAULT_ES_VERSION

    return LocalCluster(nodes=nodes, port=port, version=version or DEFAULT_ES_VERSION, heap=heap)


def _cluster_up(cluster: Any) -> None:
    from reranker.credentials import credentials_file

    status = cluster.up(progress=lambda msg: click.echo(msg, err=True))
    click.echo(status.message)
    for node in status.nodes:
        click.echo(f"node folder (config, data, logs): {node.home}")
    first = cluster.ports[0]
    click.echo(
        f"security on: user elastic, password in {credentials_file(first)} (the same for "
        f"every node); transport TLS certificates in {cluster.tls_dir}"
    )
    click.echo(
        f"use it: export RERANKER_ES_URL={status.url}   stop it: reranker es down --port {first}"
    )


@es.command("down")
@_node_options
def es_down(port: int, version: str | None) -> None:
    """Stop the local node started by `es up` (only that one, found by its pid file); every
    node of the cluster when PORT is a node of a local cluster."""
    cluster = _cluster(port, version)
    status = (cluster or _node(port, version)).down()
    click.echo(status.message)


@es.command("status")
@_node_options
def es_status(port: int, version: str | None) -> None:
    """Say whether the local node runs (each node, for a cluster); exit 3 if one does not."""
    cluster = _cluster(port, version)
    status = (cluster or _node(port, version)).status()
    click.echo(status.message)
    for node in getattr(status, "nodes", (status,)):
        click.echo(f"node folder (config, data, logs): {node.home}")
    if not status.running:
        sys.exit(3)
