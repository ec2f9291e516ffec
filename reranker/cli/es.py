"""``reranker es up|down|status``: the local Elasticsearch node."""

from __future__ import annotations

import sys
from typing import Any

import click

from reranker.cli.common import F, RerankerGroup

# --------------------------------------------------------------------------- es


@click.group(cls=RerankerGroup)
def es() -> None:
    """Manage the local single-node Elasticsearch (the embedded default).

    The node runs on 127.0.0.1 with Elasticsearch's security on: the `elastic` user's
    generated password is kept (mode 0600) in RERANKER_HOME/credentials/, where every
    reranker command and the proxy find it. It runs the integ-test-zip distribution fetched
    from Maven Central with `mvn`; distribution, JDK and data are cached under RERANKER_HOME
    (default ~/.cache/reranker).
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


@es.command("up")
@_node_options
@click.option("--heap", default="1g", show_default=True, help="JVM heap (-Xms and -Xmx).")
@click.option(
    "--no-security",
    is_flag=True,
    help="Opt out: start the node with security off (anyone on this machine can read and "
    "change every index; the proxy's allow-list is then the only guard).",
)
def es_up(port: int, version: str | None, heap: str, no_security: bool) -> None:
    """Fetch (once), start and wait for the local node. Does nothing if it already runs.

    Security is on: the `elastic` user's password is generated on the first start and kept
    in RERANKER_HOME/credentials/elasticsearch-<port>.json (mode 0600)."""
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


@es.command("down")
@_node_options
def es_down(port: int, version: str | None) -> None:
    """Stop the local node started by `es up` (only that one, found by its pid file)."""
    status = _node(port, version).down()
    click.echo(status.message)


@es.command("status")
@_node_options
def es_status(port: int, version: str | None) -> None:
    """Say whether the local node runs; exit 3 if it does not."""
    status = _node(port, version).status()
    click.echo(status.message)
    click.echo(f"node folder (config, data, logs): {status.home}")
    if not status.running:
        sys.exit(3)
