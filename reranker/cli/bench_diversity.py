"""``reranker bench diversity``: NDCG@10 and the top 10's redundancy against MMR's λ."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from reranker.cli.common import (
    alias_meta,
    alias_rescore,
    es_client,
    parse_diversity,
    query_embedder,
    rescore_encoder,
)


@dataclass(frozen=True)
class DiversityBenchArgs:
    """``diversity_cmd``'s options, as click parsed them."""

    dataset: Path
    split: str
    alias: str | None
    window: int
    lambdas: str
    method: str
    duplicate_threshold: float | None
    max_queries: int | None
    output: Path | None
    progress: bool


def parse_lambdas(raw: str) -> list[float]:
    try:
        lambdas = [float(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("give numbers, e.g. 1,0.9,0.8", param_hint="--lambdas") from None
    if not lambdas or not all(0.0 <= x <= 1.0 for x in lambdas):
        raise click.BadParameter("each lambda lies in [0, 1]", param_hint="--lambdas")
    return lambdas


@click.command("diversity")
@click.option(
    "--dataset",
    type=click.Path(path_type=Path),
    required=True,
    help="BEIR folder (indexed by `reranker eval` first).",
)
@click.option("--split", default="dev", show_default=True, help="qrels split to measure on.")
@click.option("--alias", default=None, help="Alias to search [default: beir-<dataset>].")
@click.option("--window", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--lambdas",
    default="1,0.95,0.93,0.91,0.9,0.89,0.88,0.87,0.86,0.85,0.8",
    show_default=True,
    help="λ values, comma-separated (1 = the reranked order).",
)
@click.option(
    "--method",
    type=click.Choice(["swap", "mmr"]),
    default="swap",
    show_default=True,
    help="How to diversify (see `reranker search --help`).",
)
@click.option(
    "--duplicate-threshold",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=None,
    help="Also collapse hits whose cosine to a hit above reaches this.",
)
@click.option("--max-queries", type=click.IntRange(min=1), default=None, help="The first N only.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the curve as JSON here.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def diversity_cmd(ctx: click.Context, /, **options: Any) -> None:
    """Measure diversity's trade-off on judged queries.

    Every judged query of --split is reranked once the way `reranker eval` reranks by
    default (hybrid top --window, the shipped model, the first-stage cascade), with the
    documents' stored embeddings; then it is diversified by --method at each of --lambdas.
    Reported per λ: NDCG@10, the mean cosine over pairs of the top 10 (ILS@10, lower = more
    diverse) and its change against λ = 1.
    """
    run_diversity_bench(ctx, DiversityBenchArgs(**options))


def run_diversity_bench(ctx: click.Context, a: DiversityBenchArgs) -> None:
    from reranker.evaluation.diversity import curve_point
    from reranker.evaluation.runs import ensure_dataset_index, judged_queries, query_vectors
    from reranker.evaluation.speed import check_dataset, say, write_report
    from reranker.rerank.cascade import DEFAULT_CASCADE_K, FIRST_STAGE_STUDENT
    from reranker.rerank.diversity import Diversity
    from reranker.rerank.pipeline import QueryPath, build_pipeline

    lambdas = parse_lambdas(a.lambdas)
    check_dataset(a.dataset)
    queries, qrels = judged_queries(a.dataset, a.split, limit=a.max_queries)
    alias = a.alias or f"beir-{a.dataset.name.lower()}"
    client = es_client(ctx)
    encoder = query_embedder(ctx)
    rescorer = rescore_encoder(ctx)
    ensure_dataset_index(
        client, a.dataset, alias, encoder, cache=None, progress=a.progress, rescorer=rescorer
    )
    path = QueryPath(
        index=alias,
        window=a.window,
        score_cache=ctx.obj.home / "scores",
        cascade_model=Path(FIRST_STAGE_STUDENT),
        cascade_k=min(DEFAULT_CASCADE_K, a.window),
        diversity=Diversity(1.0),  # the embeddings fetched, the order kept
    )
    rescore = alias_rescore(ctx, alias, alias_meta(client, alias))
    pipeline = build_pipeline(path, client, encoder, rescore=rescore)
    assert pipeline.first_stage is not None
    vectors = query_vectors(pipeline.first_stage, queries)  # in one batch, as `eval` does
    windows = {
        qid: pipeline.search(text, k=a.window, vector=vectors.get(qid)).hits
        for qid, text in tqdm(queries.items(), desc="rerank", unit="q", disable=not a.progress)
    }
    points = [
        curve_point(windows, qrels, parse_diversity(lam, a.duplicate_threshold, a.method))
        for lam in lambdas
    ]
    base = curve_point(windows, qrels, Diversity(1.0))
    say(f"{a.dataset.name} / {a.split}: {len(queries)} queries, window {a.window}")
    say(f"{'lambda':>8}{'ndcg@10':>10}{'Δ':>9}{'ils@10':>9}{'Δ%':>8}{'collapsed':>11}")
    for p in points:
        change = 100 * (p.ils_at_10 - base.ils_at_10) / base.ils_at_10 if base.ils_at_10 else 0.0
        say(
            f"{p.lam:>8.2f}{p.ndcg_at_10:>10.4f}{p.ndcg_at_10 - base.ndcg_at_10:>+9.4f}"
            f"{p.ils_at_10:>9.4f}{change:>+8.1f}{p.collapsed:>11.2f}"
        )
    write_report(
        a.output,
        {
            "dataset": a.dataset.name,
            "split": a.split,
            "queries": len(queries),
            "index": alias,
            "window": a.window,
            "model": pipeline.scorer.model_id if pipeline.scorer is not None else None,
            "embedder": encoder.model_id,
            "first_stage": "hybrid",
            "cascade_k": path.cascade_k,
            "method": a.method,
            "baseline": base.as_json(),
            "curve": [p.as_json() for p in points],
        },
    )
