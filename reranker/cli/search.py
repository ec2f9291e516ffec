"""``reranker search``: one query through the first stage (and the reranker with ``--rerank``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reranker.cli.common import (
    alias_embedder,
    alias_meta,
    alias_rescore,
    diversity_options,
    es_client,
    hybrid_options,
    parse_diversity,
    parse_hybrid,
    passages_for,
    passages_option,
)
from reranker.config import MODEL_VARIANTS

if TYPE_CHECKING:
    from reranker.rerank.personal import Personalization


def _check_index_embedder(alias: str, meta: dict[str, Any], model_id: str) -> None:
    """Refuse kNN with query vectors of another embedding space than the index's (the
    embedder ``reranker index`` recorded in its ``_meta``; an index without one passes)."""
    from reranker.errors import ConfigError

    recorded = meta.get("embedder")
    if recorded and recorded != model_id:
        raise ConfigError(
            f"{alias} was embedded with {recorded}, and this command embeds queries with "
            f"{model_id}: pass the index's embedder (--embedder), reindex, or use --mode bm25"
        )


def _profile(
    client: Any, index: str, key: tuple[str, str, str], weight: float | None
) -> Personalization | None:
    """The profile of ``key`` (owner, user, alias); ``None`` without one (the plain order,
    said on stderr)."""
    from reranker.es.profiles import DEFAULT_RETENTION_DAYS, profile_id
    from reranker.rerank.personal import DEFAULT_WEIGHT, personalization_of

    owner, user, alias = key
    answer = client.options(ignore_status=404).get(index=index, id=profile_id(*key))
    chosen = DEFAULT_WEIGHT if weight is None else weight
    found = personalization_of(
        answer.get("_source") or {}, (owner, user), chosen, DEFAULT_RETENTION_DAYS
    )
    if found is None:
        click.echo(f"note: {user} has no profile on {alias}: not personalised", err=True)
    return found


@click.command("search")
@click.argument("text")
@click.option("--alias", required=True, help="Index or alias to search.")
@click.option(
    "--mode", type=click.Choice(["bm25", "dense", "hybrid"]), default="hybrid", show_default=True
)
@click.option("--k", default=10, show_default=True, help="Number of hits.")
@hybrid_options
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON lines.")
@click.option(
    "--rerank/--no-rerank",
    default=False,
    show_default=True,
    help="Rerank the first stage's top --window with the cross-encoder.",
)
@click.option("--window", default=100, show_default=True, help="Candidates to rerank.")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Cross-encoder.")
@click.option("--variant", type=click.Choice(MODEL_VARIANTS), default=None, help="Precision.")
@click.option(
    "--cascade-k",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="With --rerank: the cross-encoder rescores the first stage's top K of the window, "
    "the rest keep their first-stage order (chosen on dev queries); 0 scores the whole window.",
)
@passages_option
@diversity_options
@click.option(
    "--personalize",
    "user",
    default=None,
    metavar="USER",
    help="Rerank for USER: their click profile (`reranker profiles update`) pulls documents "
    "like the ones they clicked up; a user without one gets the plain order.",
)
@click.option(
    "--owner",
    default="",
    help="With --personalize: the proxy client whose user it is (its key digest; empty for a "
    "proxy without keys).",
)
@click.option(
    "--profiles-index",
    default="reranker-profiles",
    show_default=True,
    help="With --personalize: where the profiles are.",
)
@click.option(
    "--personal-weight",
    type=click.FloatRange(0, 100),
    default=None,
    help="With --personalize: the personal feature's weight (default: the proxy's).",
)
@click.pass_context
def search_cmd(
    ctx: click.Context,
    text: str,
    alias: str,
    mode: str,
    k: int,
    fusion: str,
    rank_constant: int,
    normalization: str,
    weights: str,
    as_json: bool,
    rerank: bool,
    window: int,
    model: Path | None,
    variant: str | None,
    cascade_k: int,
    passages: str | None,
    diversity: float | None,
    diversity_method: str | None,
    duplicate_threshold: float | None,
    user: str | None,
    owner: str,
    profiles_index: str,
    personal_weight: float | None,
) -> None:
    """Search ALIAS: BM25 over title and text, kNN over the embedding, or both fused; with
    --rerank, the top --window of that first stage reordered by the cross-encoder."""
    from reranker.rerank.cascade import FIRST_STAGE_STUDENT
    from reranker.rerank.pipeline import QueryPath, build_pipeline

    cascade = rerank and 0 < cascade_k < window
    client = es_client(ctx)
    meta = alias_meta(client, alias)  # read once: the embedder, its check, passages
    path = QueryPath(
        index=alias,
        base=mode,
        window=window if rerank else k,
        hybrid=parse_hybrid(fusion, rank_constant, normalization, weights),
        rerank=rerank,
        model=model,
        variant=variant,
        cascade_model=Path(FIRST_STAGE_STUDENT) if cascade else None,
        cascade_k=cascade_k if cascade else None,
        passages=passages_for(meta, passages) if rerank else None,  # type: ignore[arg-type]
        diversity=parse_diversity(diversity, duplicate_threshold, diversity_method),
    )
    # the embedder: kNN, and the dense score a first-stage-aware model reads (BM25 mode too)
    encoder = alias_embedder(ctx, alias, meta) if mode != "bm25" or rerank else None
    if encoder is not None and mode != "bm25":
        _check_index_embedder(alias, meta, encoder.model_id)
    personal = (
        _profile(client, profiles_index, (owner, user, alias), personal_weight) if user else None
    )
    rescore = alias_rescore(ctx, alias, meta) if rerank else None
    pipeline = build_pipeline(path, client, encoder, personal=personal, rescore=rescore)
    result = pipeline.search(text, k=k)
    if result.degraded:
        click.echo(f"warning: {result.degraded}", err=True)
    for rank, hit in enumerate(result.hits, start=1):
        source = hit.source or {}
        if as_json:
            row = {
                "rank": rank,
                "_id": hit.id,
                "_score": hit.score,
                "first_stage_rank": hit.first_stage_rank,
                "stages": hit.stage_scores,
                "title": source.get("title"),
            }
            if hit.relevance is not None:
                row["relevance"] = hit.relevance
            if hit.rescore is not None:
                row["rescore_similarity"] = hit.rescore
            click.echo(json.dumps(row))
        else:
            label = (source.get("title") or source.get("text") or "").replace("\n", " ")[:90]
            moved = f"(was {hit.first_stage_rank:>3})" if rerank else ""
            click.echo(f"{rank:>3}. {hit.score:10.4f} {moved} {hit.id:<24} {label}")
