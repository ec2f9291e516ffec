"""``reranker index`` and ``reranker reindex``: a corpus into a new versioned index, then the alias
swap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from reranker.cli.common import embedder_url_option, indexing_tools, rescore_encoder

# --------------------------------------------------------------------------- index


def layout_options(command: Any) -> Any:
    """``--shards`` and ``--replicas`` of the new index."""
    command = click.option(
        "--replicas",
        type=click.IntRange(min=0),
        default=None,
        help="Replicas of each shard [default: the template's, 0 on one node; 1 on a cluster "
        "keeps the data when a node is lost].",
    )(command)
    return click.option(
        "--shards",
        type=click.IntRange(min=1),
        default=None,
        help="Primary shards of the new index [default: the template's, 1; a cluster's choice "
        "by size: docs/operations.md].",
    )(command)


@click.command("index")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--alias", required=True, help="Alias the new index is published under.")
@click.option(
    "--extra",
    "extra",
    multiple=True,
    type=click.Path(path_type=Path),
    help="JSONL of extra fields joined on _id (e.g. signals.jsonl); repeatable [default: a BEIR "
    "folder's own signals.jsonl, as `eval` joins it].",
)
@click.option(
    "--skip-malformed/--abort-on-malformed",
    default=False,
    show_default=True,
    help="Skip malformed lines (each reported) or stop at the first one.",
)
@click.option("--keep-old", is_flag=True, help="Keep the previous index after the alias swap.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option(
    "--passages",
    type=click.Choice(["max", "firstmax"]),
    default=None,
    help="Searches of this index score documents longer than the cross-encoder reads by "
    "overlapping passages unless they ask otherwise (recorded in the index's _meta; choose "
    "on the corpus's dev queries: docs/experiments/passages.md) [default: truncate].",
)
@layout_options
@embedder_url_option
@click.pass_context
def index_cmd(
    ctx: click.Context,
    source: Path,
    alias: str,
    extra: tuple[Path, ...],
    skip_malformed: bool,
    keep_old: bool,
    progress: bool,
    passages: str | None,
    shards: int | None,
    replicas: int | None,
    embedder_urls: tuple[str, ...],
) -> None:
    """Index SOURCE (a BEIR folder or a JSONL file) into a new versioned index behind ALIAS.

    Documents are embedded (ONNX all-MiniLM-L6-v2; through `reranker serve --embedder-only`
    endpoints with --embedder-url) and by the second embedder (bge-small-en-v1.5, whose
    vectors only the reranking stage reads; `reranker --rescore-embedder none index ...` for
    none), bulk-loaded into <alias>-<timestamp>, counted, and only then is the alias swapped
    atomically. Any failure leaves the alias and its current index
    untouched. Re-running on the same source gives the same result.

    A run that was killed or interrupted (Ctrl-C) leaves its new index marked in progress;
    running the same command again resumes it where it stopped, without embedding again
    what was already loaded.
    """
    from reranker.corpus import CorpusSource
    from reranker.es.indexing import LoadOptions, index_corpus

    if not extra and (source / "signals.jsonl").is_file():
        extra = (source / "signals.jsonl",)  # the index `eval` builds of it, and reuses
    corpus = CorpusSource.open(source, extra=extra)
    client, embedder, cache = indexing_tools(ctx, embedder_urls)
    result = index_corpus(
        client,
        corpus,
        alias,
        embedder,
        cache=cache,
        skip_malformed=skip_malformed,
        options=LoadOptions(
            keep_previous=keep_old,
            progress=progress,
            passages=passages,
            shards=shards,
            replicas=replicas,
            rescore_encoder=rescore_encoder(ctx),
        ),
    )
    for skipped in result.skipped:
        click.echo(f"skipped {skipped}", err=True)
    _report_index(result)


@click.command("reindex")
@click.option("--alias", required=True, help="Alias whose index is rebuilt.")
@click.option(
    "--re-embed",
    is_flag=True,
    help="Recompute embeddings instead of copying them (always done when the index was "
    "embedded with another embedder than this command's).",
)
@click.option("--keep-old", is_flag=True, help="Keep the previous index after the alias swap.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@layout_options
@embedder_url_option
@click.pass_context
def reindex_cmd(
    ctx: click.Context,
    alias: str,
    re_embed: bool,
    keep_old: bool,
    progress: bool,
    shards: int | None,
    replicas: int | None,
    embedder_urls: tuple[str, ...],
) -> None:
    """Rebuild the index behind ALIAS from its own documents (scan + bulk), with the current
    mappings, and swap the alias the same safe way as `index`. Without --embedder (or
    RERANKER_EMBEDDER, or an endpoint), the index keeps the embedder it was built with when
    that folder is on this machine, else it gets the default."""
    from reranker.es.indexing import LoadOptions, reindex_alias

    client, embedder, cache = indexing_tools(ctx, embedder_urls, alias=alias)
    result = reindex_alias(
        client,
        alias,
        embedder,
        cache=cache,
        re_embed=re_embed,
        options=LoadOptions(
            keep_previous=keep_old,
            progress=progress,
            shards=shards,
            replicas=replicas,
            rescore_encoder=rescore_encoder(ctx),
        ),
    )
    _report_index(result)


def _report_index(result: Any) -> None:
    previous = ", ".join(result.previous) or "none"
    fate = "deleted" if result.deleted_previous else "kept"
    click.echo(
        f"{result.alias} → {result.index}: {result.documents} documents in "
        f"{result.seconds:.1f}s (previous: {previous}, {fate if result.previous else 'n/a'})"
    )
    if result.resumed_from:
        click.echo(
            f"resumed an interrupted run: {result.resumed_from} documents were already there, "
            f"{result.loaded} embedded and loaded now"
        )
