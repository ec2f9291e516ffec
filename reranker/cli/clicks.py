"""``reranker judgments`` and ``reranker simulate-clicks``: qrels from UBI clicks, and the
simulated users that check them (registered on the main group by :mod:`reranker.cli`)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from reranker.config import Settings
from reranker.errors import ConfigError


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


@dataclass(frozen=True)
class JudgmentsArgs:
    """``judgments_cmd``'s options, as click parsed them."""

    output: Path
    events_file: Path | None
    events_index: str
    application: str | None
    dataset: Path | None
    queries_output: Path | None
    model_name: str
    min_impressions: int
    thresholds: str | None
    max_position: int | None
    max_session_searches: int
    max_owner_share: float
    min_examinations: float
    prior_strength: float
    iterations: int
    compare: Path | None
    report: Path | None


@click.command("judgments")
@click.option(
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The qrels file to write (BEIR TSV), e.g. DATASET/qrels/clicks.tsv.",
)
@click.option(
    "--events",
    "events_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Read the events from this JSONL file (UBI events, or Elasticsearch hits) instead "
    "of Elasticsearch.",
)
@click.option(
    "--events-index",
    default="ubi_events",
    show_default=True,
    help="The events index in Elasticsearch.",
)
@click.option("--application", default=None, help="Only the events of this UBI application.")
@click.option(
    "--dataset",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="BEIR folder whose queries.jsonl gives the query ids (matched on the query text); "
    "without it, ids are ubi-<digest of the text>.",
)
@click.option(
    "--queries-output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the judged queries as queries.jsonl (useful without --dataset).",
)
@click.option(
    "--model",
    "model_name",
    type=click.Choice(["pbm", "coec", "ctr"]),
    default="pbm",
    show_default=True,
    help="Click model: position-based model by EM, clicks over expected clicks, or plain "
    "click rate (no position correction).",
)
@click.option(
    "--min-impressions",
    type=int,
    default=10,
    show_default=True,
    help="Judge only pairs shown at least this often.",
)
@click.option(
    "--thresholds",
    default=None,
    help="Increasing scores for grades 1, 2, ... [default: pbm 0.2,0.5; coec 0.75,2; ctr 0.1,0.3].",
)
@click.option(
    "--max-position",
    type=int,
    default=None,
    help="Ignore events at positions beyond this.",
)
@click.option(
    "--max-session-searches",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="A session (session_id, else client_id, per proxy client) with more searches than "
    "this is taken for a bot and dropped whole. Whatever this is, a session weighs at most "
    "one search per query.",
)
@click.option(
    "--max-owner-share",
    type=click.FloatRange(min=0.5, max=1.0, max_open=True),
    default=0.5,
    show_default=True,
    help="Where several proxy clients (API keys) searched a query, the most of its searches "
    "one client may hold (0.5 to below 1); its later ones are dropped. A query only one "
    "client searched is kept whole.",
)
@click.option(
    "--min-examinations",
    type=float,
    default=0.0,
    show_default=True,
    help="pbm: judge only pairs the model thinks were looked at this often (Σ θ_k over "
    "their impressions).",
)
@click.option(
    "--prior-strength",
    type=float,
    default=2.0,
    show_default=True,
    help="pbm: pseudo-impressions shrinking each pair towards the mean attractiveness.",
)
@click.option("--iterations", type=int, default=1000, show_default=True, help="EM iterations.")
@click.option(
    "--compare",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Editorial qrels (BEIR TSV) to measure the judgments' agreement with (Kendall tau, "
    "precision of the top-judged pairs).",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the summary as JSON here.",
)
@click.pass_context
def judgments_cmd(ctx: click.Context, /, **options: Any) -> None:
    """Graded qrels from UBI impression and click events, by a click model.

    Searches are grouped into queries by their user_query; a (query, document) pair shown at
    least --min-impressions times gets the model's score and a grade by --thresholds. The
    qrels file (BEIR layout: header query-id, corpus-id, score) is written whole or not at
    all; put it in a BEIR folder's qrels/ to use it with `train`, `ltr` and `eval`
    (e.g. --dataset D --output D/qrels/clicks.tsv, then `reranker eval D --split clicks`).
    """
    run_judgments(ctx, JudgmentsArgs(**options))


def run_judgments(ctx: click.Context, a: JudgmentsArgs) -> None:
    from reranker.corpus import load_queries
    from reranker.feedback import judgments as j
    from reranker.feedback.agreement import agreement
    from reranker.training.data import read_qrels

    if a.min_impressions < 1:
        raise ConfigError("--min-impressions must be at least 1")
    cuts = j.parse_thresholds(a.thresholds) if a.thresholds else j.DEFAULT_THRESHOLDS[a.model_name]
    queries = load_queries(a.dataset) if a.dataset is not None else None
    truth = read_qrels(a.compare) if a.compare is not None else None
    if a.events_file is not None:
        events = j.read_events_file(a.events_file)
    else:
        from reranker.es.client import make_client

        settings: Settings = ctx.obj
        events = j.read_events_es(make_client(settings), a.events_index, application=a.application)
    counts, seen = j.count_clicks(
        events,
        max_position=a.max_position,
        max_session_searches=a.max_session_searches,
        max_owner_share=a.max_owner_share,
    )
    j.require_impressions(counts, seen)
    options: dict[str, Any] = {}
    if a.model_name == "pbm":
        options = {"iterations": a.iterations, "prior_strength": a.prior_strength}
    fitted = j.fit(a.model_name, counts, **options)
    judged = j.judge(
        counts,
        fitted,
        min_impressions=a.min_impressions,
        thresholds=cuts,
        dataset_queries=queries,
        min_examinations=a.min_examinations,
    )
    if a.queries_output is not None:
        ids, _ = j.query_ids_for(sorted({t for t, _ in counts.impressions()}), queries)
        kept = {text: qid for text, qid in ids.items() if qid in judged.qrels}
        j.write_atomically(a.queries_output, j.queries_text(kept))
    j.write_atomically(a.output, j.qrels_text(judged.qrels))
    grades: dict[str, int] = {}
    for docs in judged.qrels.values():
        for value in docs.values():
            grades[str(value)] = grades.get(str(value), 0) + 1
    summary: dict[str, Any] = {
        "output": str(a.output),
        "model": a.model_name,
        "thresholds": list(cuts),
        "min_impressions": a.min_impressions,
        "min_examinations": a.min_examinations,
        "max_session_searches": a.max_session_searches,
        "max_owner_share": a.max_owner_share,
        "events": seen.events,
        "searches": seen.searches,
        "impressions": seen.impressions,
        "clicks": seen.clicks,
        "clicks_without_impression": seen.clicks_without_impression,
        "events_skipped": seen.skipped,
        "pairs_seen": judged.pairs_seen,
        "pairs_judged": judged.pairs_kept,
        "queries_judged": len(judged.qrels),
        "queries_not_in_dataset": len(judged.unmatched_queries),
        "grades": dict(sorted(grades.items())),
        "by_position": {str(k): round(v, 4) for k, v in fitted.positions.items()},
        "em": {"iterations": fitted.iterations, "converged": fitted.converged}
        if a.model_name == "pbm"
        else None,
    }
    if truth is not None:
        summary["agreement"] = agreement(judged, truth)
    if a.report is not None:
        j.write_atomically(a.report, json.dumps(summary, indent=2) + "\n")
    _echo_json(summary)


@click.command("simulate-clicks")
@click.argument("dataset", type=click.Path(path_type=Path, file_okay=False))
@click.option("--proxy", required=True, help="The proxy's URL (reranker serve --ubi).")
@click.option("--index", required=True, help="Index or alias to search through the proxy.")
@click.option("--split", default="train", show_default=True, help="qrels split of the queries.")
@click.option("--queries", "n_queries", type=int, default=20, show_default=True)
@click.option("--sessions", type=int, default=10, show_default=True, help="Per query.")
@click.option("--size", type=int, default=10, show_default=True, help="Results shown.")
@click.option("--window", type=int, default=20, show_default=True, help="Rerank window.")
@click.option(
    "--rankers",
    default="bm25,rerank",
    show_default=True,
    help="Comma-separated; sessions of a query cycle through them.",
)
@click.option("--eta", type=float, default=1.0, show_default=True, help="Position bias (1/k)^eta.")
@click.option(
    "--click-probs",
    default="0.05,0.5,0.9",
    show_default=True,
    help="Click probability of an examined result, by qrels grade 0, 1, 2, ...",
)
@click.option("--noise", type=float, default=0.1, show_default=True, help="Gaussian σ.")
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--concurrency", type=int, default=4, show_default=True)
@click.option("--api-key", envvar="RERANKER_SIM_API_KEY", default=None, help="Proxy API key.")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None)
def simulate_clicks_cmd(
    dataset: Path,
    proxy: str,
    index: str,
    split: str,
    n_queries: int,
    sessions: int,
    size: int,
    window: int,
    rankers: str,
    eta: float,
    click_probs: str,
    noise: float,
    seed: int,
    concurrency: int,
    api_key: str | None,
    output: Path | None,
) -> None:
    """Simulated users (not real ones) search DATASET's SPLIT queries through the proxy and
    post impressions and clicks to its /_reranker/events: position bias (1/k)^eta, clicks
    by qrels grade plus noise, seeded. See reranker.feedback.click_sim for the model."""
    import httpx

    from reranker.corpus import load_qrels, load_queries
    from reranker.feedback.click_sim import UserModel, pick_queries, simulate

    try:
        probs = tuple(float(p) for p in click_probs.split(","))
    except ValueError:
        raise ConfigError(f"--click-probs {click_probs!r}: expected numbers") from None
    model = UserModel(eta=eta, click_probs=probs, noise=noise)
    qrels = load_qrels(dataset, split)
    chosen = pick_queries(load_queries(dataset), qrels, n_queries, seed)
    names = [r.strip() for r in rankers.split(",") if r.strip()]
    headers = {"authorization": f"ApiKey {api_key}"} if api_key else None

    async def run() -> Any:
        async with httpx.AsyncClient(base_url=proxy.rstrip("/"), timeout=120) as http:
            return await simulate(
                http,
                index,
                chosen,
                qrels,
                sessions=sessions,
                size=size,
                window=window,
                rankers=names,
                model=model,
                seed=seed,
                concurrency=concurrency,
                headers=headers,
            )

    result = asyncio.run(run()).to_dict()
    result.update(
        dataset=str(dataset),
        split=split,
        queries=len(chosen),
        sessions_per_query=sessions,
        user_model={"eta": eta, "click_probs": list(probs), "noise": noise, "seed": seed},
    )
    if output is not None:
        from reranker.feedback.judgments import write_atomically

        write_atomically(output, json.dumps(result, indent=2) + "\n")
    _echo_json(result)
