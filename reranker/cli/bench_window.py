"""``reranker bench window``: a window's rerank latency, one change at a time (model, length,
cascade), on real windows of an indexed dataset."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import numpy as np

from reranker.cli.common import alias_meta, alias_rescore
from reranker.evaluation.lengths import parse_lengths
from reranker.evaluation.peaks import load_average, machine_info
from reranker.evaluation.speed import (
    GAP_S,
    WindowStep,
    check_dataset,
    percentile_ms,
    say,
    window_ladder,
    write_report,
)
from reranker.rerank.capabilities import max_length_of


@dataclass(frozen=True)
class WindowBenchArgs:
    """``window_cmd``'s options, as click parsed them."""

    dataset: Path
    index: str | None
    n_queries: int
    window: int
    baseline: Path | None
    model: Path | None
    lengths: str
    cascade_k: int
    variant: str
    output: Path | None


@click.command("window")
@click.option(
    "--dataset",
    type=click.Path(path_type=Path),
    required=True,
    help="BEIR folder whose test queries are searched (indexed by `reranker eval` first).",
)
@click.option("--index", default=None, help="Alias to search [default: beir-<dataset>].")
@click.option("--queries", "n_queries", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--window", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    default=None,
    help="The model the ladder starts from [default: the shipped reranker-minilm-l6].",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="The model it ends with [default: the shipped reranker-minilm-l6-aware].",
)
@click.option(
    "--lengths",
    default="256,192",
    show_default=True,
    help="Max lengths of --model, one step each, in order.",
)
@click.option(
    "--cascade-k",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="The last step: the first stage ranks the window, --model rescores its top K.",
)
@click.option("--variant", default="int8", show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the results as JSON here.",
)
@click.pass_context
def window_cmd(ctx: click.Context, /, **options: Any) -> None:
    """Time the reranking of whole first-stage windows, one change at a time.

    Each of --queries test queries is searched once (hybrid top --window, from the index
    `reranker eval` built); then every step of the ladder reranks that same window, the steps
    interleaved query by query, with no score cache: the baseline model; --model at each of
    --lengths; --model with the first stage as a cascade's cheap level (its top --cascade-k
    rescored). Reported per step: p50 and p90 milliseconds per window (tokenisation,
    features and ordering included; the search and the query's embeddings are not: the
    proxy embeds the query for the second embedder beside the first stage, and its time is
    reported apart), the ratio to the baseline and to the step before (that change's share),
    and NDCG@10 over these queries (a small sample: `reranker eval` gives the full figures).
    """
    run_window_bench(ctx, WindowBenchArgs(**options))


def run_window_bench(ctx: click.Context, a: WindowBenchArgs) -> None:
    from reranker.es.client import make_client
    from reranker.evaluation.runs import judged_queries
    from reranker.models import SHIPPED_MODELS_DIR
    from reranker.retrieval.embedder import Embedder

    baseline = a.baseline or SHIPPED_MODELS_DIR / "reranker-minilm-l6"
    model = a.model or SHIPPED_MODELS_DIR / "reranker-minilm-l6-aware"
    chosen = parse_lengths(a.lengths)
    check_dataset(a.dataset)
    if a.cascade_k > a.window:
        raise click.BadParameter(f"must be at most --window ({a.window})", param_hint="--cascade-k")
    queries, qrels = judged_queries(a.dataset, "test", limit=a.n_queries)
    alias = a.index or f"beir-{a.dataset.name.lower()}"
    client = make_client(ctx.obj)
    encoder = Embedder.default(ctx.obj)
    rescore = alias_rescore(ctx, alias, alias_meta(client, alias))
    # the proxy embeds the query for the second embedder beside the first stage: like the
    # first stage's query vector, it is not part of reranking the window (timed apart)
    rescore, query_seconds = _embedded_queries(rescore, list(queries.values()))
    steps = window_ladder(baseline, model, chosen, a.cascade_k, rescore=rescore is not None)
    pipelines = [
        _pipeline(step, a, alias, client, encoder, rescore if step.rescore else None)
        for step in steps
    ]
    stage = pipelines[0].first_stage
    assert stage is not None
    stage.with_rescore_vectors = rescore is not None  # the window carries them for every step
    vectors = dict(zip(queries, stage.embed(list(queries.values())), strict=True))
    windows = {
        qid: stage.search(text, "hybrid", a.window, hybrid=pipelines[0].hybrid, vector=vectors[qid])
        for qid, text in queries.items()
    }
    say(f"{len(windows)} windows of up to {a.window} from {alias}; {len(steps)} steps")
    load_before = load_average()
    for pipeline in pipelines:  # one untimed window each: sessions warm
        first = next(iter(queries))
        pipeline.rerank(queries[first], windows[first], k=10)
    seconds: list[list[float]] = [[] for _ in steps]
    runs: list[dict[str, dict[str, float]]] = [{} for _ in steps]
    for n, (qid, text) in enumerate(queries.items(), start=1):
        for i, pipeline in enumerate(pipelines):
            time.sleep(GAP_S)
            started = time.perf_counter()
            result = pipeline.rerank(text, windows[qid], k=a.window)
            seconds[i].append(time.perf_counter() - started)
            if result.degraded is not None:
                raise click.ClickException(f"{steps[i].name}: {result.degraded.reason}")
            runs[i][qid] = {h.id: float(len(result.hits) - r) for r, h in enumerate(result.hits)}
        if n % 10 == 0 or n == len(queries):
            say(
                f"{n}/{len(queries)} windows: "
                + ", ".join(
                    f"{s.name} {percentile_ms(seconds[i], 50):.0f} ms" for i, s in enumerate(steps)
                )
            )
    rows = _rows(steps, pipelines, seconds, runs, qrels)
    _report(a, alias, len(queries), rows, load_before, query_seconds or None)


def _report(
    a: WindowBenchArgs,
    alias: str,
    queries: int,
    rows: list[dict[str, Any]],
    load_before: Any,
    query_seconds: list[float] | None,
) -> None:
    """The table, and the JSON report with ``--output``."""
    payload: dict[str, Any] = {
        "dataset": str(a.dataset),
        "index": alias,
        "queries": queries,
        "window": a.window,
        "variant": a.variant,
        "score_cache": False,
        "results": rows,
        "rescore_query_p50_ms": None
        if query_seconds is None
        else round(percentile_ms(query_seconds, 50), 1),
        "machine": {**machine_info(), "load_average_before": load_before, "after": load_average()},
    }
    click.echo(
        f"{queries} windows of {a.window} ({alias}), {a.variant}, no score cache; "
        f"load average {load_before} → {load_average()}"
    )
    click.echo(f"{'step':<28}{'p50 ms':>9}{'p90 ms':>9}{'x base':>8}{'x prev':>8}{'NDCG@10':>9}")
    for row in rows:
        click.echo(
            f"{row['step']:<28}{row['p50_ms']:>9.1f}{row['p90_ms']:>9.1f}"
            f"{row['x_baseline']:>8.3f}{row['x_previous']:>8.3f}{row['ndcg@10']:>9.4f}"
        )
    if query_seconds is not None:
        click.echo(
            f"the second embedder's query, beside the first stage (not in the steps): p50 "
            f"{payload['rescore_query_p50_ms']:.1f} ms"
        )
    write_report(a.output, payload)


def _embedded_queries(rescore: Any, texts: list[str]) -> tuple[Any, list[float]]:
    """``rescore`` with every query embedded, and the seconds each took."""
    if rescore is None:
        return None, []
    vectors, seconds = {}, []
    for text in texts:
        started = time.perf_counter()
        vectors[text] = rescore.query_vector(text)
        seconds.append(time.perf_counter() - started)
    return replace(rescore, query_vectors=vectors), seconds


def _pipeline(
    step: WindowStep, a: WindowBenchArgs, alias: str, client: Any, encoder: Any, rescore: Any
) -> Any:
    """The pipeline of one step of the ladder, its scorer loaded as ``serve`` loads it."""
    from reranker.rerank.pipeline import QueryPath, build_pipeline
    from reranker.rerank.scorer import load_scorer

    scorer = load_scorer(step.model, a.variant, max_length=step.max_length)  # as serve loads
    path = QueryPath(
        index=alias,
        window=a.window,
        model=step.model,
        variant=a.variant,
        max_length=step.max_length,
        cascade_model=Path("first-stage") if step.cascade_k else None,
        cascade_k=step.cascade_k,
    )
    return build_pipeline(path, client, encoder, scorer=scorer, rescore=rescore)


def _rows(
    steps: list[WindowStep],
    pipelines: list[Any],
    seconds: list[list[float]],
    runs: list[dict[str, dict[str, float]]],
    qrels: Any,
) -> list[dict[str, Any]]:
    """Each step's latency (p50, p90, mean; ratios to the baseline and the step before) and
    NDCG@10 on the windows it reranked."""
    from reranker.metrics import ranking_metrics

    rows = []
    for i, step in enumerate(steps):
        length = max_length_of(pipelines[i].scorer)
        p50 = percentile_ms(seconds[i], 50)
        row: dict[str, Any] = {
            "step": step.name,
            "model": str(step.model),
            "max_length": length,
            "cascade_k": step.cascade_k,
            "p50_ms": round(p50, 1),
            "p90_ms": round(percentile_ms(seconds[i], 90), 1),
            "mean_ms": round(float(np.mean(seconds[i])) * 1000.0, 1),
            "ndcg@10": round(ranking_metrics(qrels, runs[i])["nDCG@10"], 4),
        }
        row["x_baseline"] = round(p50 / percentile_ms(seconds[0], 50), 3)
        row["x_previous"] = round(p50 / percentile_ms(seconds[max(0, i - 1)], 50), 3)
        rows.append(row)
    return rows
