"""``reranker adapt``: the embedder adapted to an index's own documents, without labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from reranker.cli.common import (
    alias_embedder,
    alias_meta,
    es_client,
    hybrid_options,
    parse_hybrid,
    rescore_encoder,
)


@click.command("adapt")
@click.option("--alias", required=True, help="Alias whose documents the embedder adapts to.")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for embedder/ (the adapted model) and adapt.json (the report) "
    "[default: RERANKER_HOME/models/adapted-<alias>].",
)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0.5),
    default=15.0,
    show_default=True,
    help="Wall-clock budget for the whole run: reading, mining, the teacher, training and "
    "the checks.",
)
@click.option(
    "--max-documents",
    type=click.IntRange(min=50),
    default=20_000,
    show_default=True,
    help="Documents read from the index (pseudo-queries come from these).",
)
@click.option(
    "--held-out",
    type=click.IntRange(min=10),
    default=1000,
    show_default=True,
    help="Pseudo-queries kept out of training for the check (at most a fifth of the "
    "documents; with 1,000, one standard error of the top-1 rate is about 0.015).",
)
@click.option("--batch-size", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--lr", type=float, default=3e-5, show_default=True)
@click.option(
    "--margin-weight",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Weight of the margin-MSE term (the teacher's soft labels) beside the in-batch loss "
    "[default 0: on DBpedia's check, 0.1 at batch 32 lost to the embedder as it was; the "
    "teacher still keeps the negatives it prefers to the source from being pushed away].",
)
@click.option(
    "--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps."
)
@click.option(
    "--reindex",
    is_flag=True,
    help="When the adapted model wins the check, rebuild the alias with it (re-embedding "
    "every document; the swap is atomic, a failure leaves the alias as it was).",
)
@click.option(
    "--teacher",
    type=click.Path(path_type=Path),
    default=None,
    help="Cross-encoder folder whose scores are the soft labels [default: the shipped one, "
    "as searches use].",
)
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--seed", default=13, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@hybrid_options
@click.pass_context
def adapt_cmd(
    ctx: click.Context,
    alias: str,
    output: Path | None,
    minutes: float,
    max_documents: int,
    held_out: int,
    batch_size: int,
    lr: float,
    margin_weight: float,
    max_steps: int | None,
    reindex: bool,
    teacher: Path | None,
    threads: int | None,
    seed: int,
    progress: bool,
    fusion: str,
    rank_constant: int,
    normalization: str,
    weights: str | None,
) -> None:
    """Adapt the embedder to the documents behind ALIAS, with no queries and no labels.

    Pseudo-queries come from the documents themselves (a title for its body; a sentence for
    the rest of its document), negatives from the current hybrid first stage, soft labels
    from the current cross-encoder as teacher (margin-MSE, as GPL does). Training stops at
    --minutes. The check needs no labels: on pseudo-queries it never trained on, how often
    the hybrid list ranks their source first. The adapted model is kept only if it beats the
    embedder as it is; otherwise nothing is written but the report, and the exit code is 0.

    Search with the adapted model after reindexing: `reranker --embedder OUTPUT/embedder
    reindex --alias ALIAS` (or --reindex here). The index records the embedder's folder:
    search, eval and reindex on ALIAS embed with it when no --embedder is named; serve needs
    --embedder. Needs the train extra.
    """
    import logging

    from reranker.rerank.pipeline import QueryPath, build_pipeline
    from reranker.training.adapt import AdaptConfig, adapt

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for chatty in ("elastic_transport", "elasticsearch", "httpx"):  # a line per request
        logging.getLogger(chatty).setLevel(logging.WARNING)
    hybrid = parse_hybrid(fusion, rank_constant, normalization, weights)
    client = es_client(ctx)
    embedder = alias_embedder(ctx, alias, alias_meta(client, alias))
    target = output or ctx.obj.home / "models" / f"adapted-{alias}"
    config = AdaptConfig(
        alias=alias,
        output=target,
        minutes=minutes,
        max_documents=max_documents,
        held_out=held_out,
        batch_size=batch_size,
        lr=lr,
        margin_weight=margin_weight,
        max_steps=max_steps,
        hybrid=hybrid,
        seed=seed,
        threads=threads,
        progress=progress,
    )
    path = QueryPath(index=alias, hybrid=hybrid, model=teacher)
    pipeline = build_pipeline(path, client, embedder)
    report = adapt(config, client, embedder, pipeline)
    _say_and_reindex(ctx, report, target, reindex, progress)


def _say_and_reindex(
    ctx: click.Context, report: dict[str, Any], target: Path, reindex: bool, progress: bool
) -> None:
    """What the run kept; with ``reindex`` and an adapted model, the alias rebuilt with it."""
    alias = report["alias"]
    before = report["history"][0]["top1"]
    after = report["chosen"]["top1"]
    click.echo(
        f"held-out pseudo-queries ranked first: {before:.4f} before, {after:.4f} kept "
        f"({report['steps']} steps, {report['seconds']:.0f} s, {report['cpu_seconds']:.0f} "
        f"CPU-s); report: {target / 'adapt.json'}"
    )
    if report["kept"] == "original":
        click.echo(f"the embedder as it is ranks best ({report['stopped']}): nothing to use")
        return
    adapted = target / "embedder"
    if not reindex:
        click.echo(
            f"adapted embedder: {adapted}\nuse it: reranker --embedder {adapted} reindex "
            f"--alias {alias}"
        )
        return
    from reranker.es.indexing import LoadOptions, reindex_alias
    from reranker.retrieval.embedder import Embedder

    # another embedder than the index's: reindex_alias embeds every document again
    options = LoadOptions(progress=progress, rescore_encoder=rescore_encoder(ctx))
    result = reindex_alias(es_client(ctx), alias, Embedder(adapted), options=options)
    click.echo(
        f"{alias} → {result.index}: {result.documents} documents embedded with {adapted}; "
        f"search with: reranker --embedder {adapted} ..."
    )
