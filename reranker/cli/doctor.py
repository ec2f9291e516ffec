"""``reranker doctor``: what this machine and cluster offer, and what is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reranker.cli.common import es_client, load_cli_scorer
from reranker.errors import RerankerError

# --------------------------------------------------------------------------- doctor


@click.command("doctor")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Cross-encoder.")
@click.pass_context
def doctor_cmd(ctx: click.Context, model: Path | None) -> None:
    """Report what this machine offers and what the reranker will use: ONNX Runtime
    providers, the cross-encoder and the provider it runs on, the embedder cache, the JDK
    and the cluster. Exits 1 if something needed is missing."""
    import platform

    import onnxruntime

    problems = 0

    def line(name: str, value: str, ok: bool = True) -> None:
        nonlocal problems
        problems += 0 if ok else 1
        click.echo(f"{'ok ' if ok else 'NO '} {name:<14} {value}")

    line("python", platform.python_version())
    available = onnxruntime.get_available_providers()
    line("onnxruntime", f"{onnxruntime.__version__}; providers {', '.join(available)}")
    try:
        scorer = load_cli_scorer(model, None)
        line("cross-encoder", f"{scorer.model_id} {scorer.version} on {scorer.provider}")
    except RerankerError as exc:
        line("cross-encoder", str(exc), ok=False)
    from reranker.models import EMBEDDER_CACHE_NAME

    embedder_dir = ctx.obj.models_dir / EMBEDDER_CACHE_NAME
    line(
        "embedder",
        f"{embedder_dir} ({'assembled' if embedder_dir.is_dir() else 'assembled on first use'})",
    )
    try:
        from reranker.es.distribution import find_java_home

        line("jdk", str(find_java_home()))
    except RerankerError as exc:
        line("jdk", str(exc), ok=False)
    try:
        health = es_client(ctx).cluster.health()
        line("elasticsearch", f"{ctx.obj.es_url}: {health['cluster_name']} is {health['status']}")
    except Exception as exc:  # any failure to reach the cluster is the finding itself
        line("elasticsearch", f"{ctx.obj.es_url} unreachable ({type(exc).__name__})", ok=False)
    if problems:
        sys.exit(1)
