"""NDCG@10 of the rerank API with the defaults, given each judged query's hybrid top-N as texts.

The question (issue 24): a client of ``POST /rerank`` sends a query and texts, no first-stage
scores. Does the default model, which reads first-stage features, still order those texts at
least as well as the dense cosine of the served embedder alone (the cheapest thing a client
could do with the same texts)?

For every judged query of the split: the hybrid (linear) top-N of the dataset's index, as
``reranker eval`` builds it, becomes a ``/rerank`` request to the real app in process (the
default scorer and embedder, nothing else loaded); its scores, the dense cosine of the same
texts and the hybrid order itself are scored by ir_measures against the qrels.

    python benchmarks/rerank_api_quality.py ../shared/data/scifact --alias beir-scifact \
        --output benchmarks/results/rerank-api-quality-scifact.json

The alias must hold the dataset indexed with the default embedder (``reranker eval`` does it).
"""

from __future__ import annotations

import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

import click
import httpx
from tqdm import tqdm

from reranker.config import Settings
from reranker.corpus import passage_text
from reranker.es.client import make_client
from reranker.evaluation.runs import judged_queries
from reranker.metrics import score_run
from reranker.proxy import ProxySettings, create_app
from reranker.rerank.features import dense_cosines
from reranker.rerank.scorer import default_model_dir, load_scorer
from reranker.retrieval.embedder import Embedder
from reranker.retrieval.first_stage import FirstStage, HybridOptions


async def _rerank_all(
    app: Any, requests: dict[str, tuple[str, list[str], list[str]]], progress: bool
) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            for qid, (query, ids, texts) in tqdm(
                requests.items(), desc="/rerank", unit="q", disable=not progress
            ):
                answer = await http.post(
                    "/rerank", json={"query": query, "texts": texts, "raw_scores": True},
                    timeout=600,
                )  # fmt: skip
                if answer.status_code != 200:
                    raise click.ClickException(f"query {qid}: {answer.status_code} {answer.text}")
                run[qid] = {ids[row["index"]]: float(row["score"]) for row in answer.json()}
    return run


def cascade_order(cheap: dict[str, float], full: dict[str, float], k: int) -> dict[str, float]:
    """``cheap``'s top ``k`` in ``full``'s order, then the rest in ``cheap``'s order, as
    descending run scores."""
    ranked = sorted(cheap, key=lambda d: -cheap[d])
    head = sorted(ranked[:k], key=lambda d: -full[d])
    order = head + ranked[k:]
    return {doc: float(len(order) - i) for i, doc in enumerate(order)}


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--alias", required=True, help="Index holding DATASET (default embedder).")
@click.option("--split", default="test", show_default=True)
@click.option("--window", default=100, show_default=True)
@click.option("--max-queries", type=int, default=None)
@click.option("--variant", default="int8", show_default=True)
@click.option(
    "--cascade-k",
    default=20,
    show_default=True,
    help="Also report the cosine's top K reordered by the API's scores, the rest in cosine "
    "order (what a first-stage cascade over the cosine would answer).",
)
@click.option("--output", type=click.Path(path_type=Path), default=None)
@click.option("--progress/--no-progress", default=True)
def main(
    dataset: Path,
    alias: str,
    split: str,
    window: int,
    max_queries: int | None,
    variant: str,
    cascade_k: int,
    output: Path | None,
    progress: bool,
) -> None:
    settings = Settings.from_env()
    embedder = Embedder.default(settings)
    scorer = load_scorer(default_model_dir(), variant)
    stage = FirstStage(make_client(settings), alias, embedder, with_source=["title", "text"])
    queries, qrels = judged_queries(dataset, split, limit=max_queries)

    requests: dict[str, tuple[str, list[str], list[str]]] = {}
    hybrid_run: dict[str, dict[str, float]] = {}
    dense_run: dict[str, dict[str, float]] = {}
    for qid, text in tqdm(queries.items(), desc="hybrid", unit="q", disable=not progress):
        hits = stage.search(text, "hybrid", window, hybrid=HybridOptions())
        ids = [h.id for h in hits]
        texts = [passage_text(h.source or {}) for h in hits]
        requests[qid] = (text, ids, texts)
        hybrid_run[qid] = {h.id: h.score for h in hits}
        cosines = dense_cosines(embedder, text, texts).tolist() if texts else []
        dense_run[qid] = dict(zip(ids, cosines, strict=True))

    app = create_app(
        ProxySettings(
            es=settings,
            scorer_only=True,
            max_window=max(window, 1),
            max_body_bytes=64 << 20,
            default_timeout_ms=600_000,
            max_timeout_ms=600_000,
        ),
        scorer_factory=lambda: scorer,
        encoder_factory=lambda: embedder,
        load_in_background=False,
    )
    started = time.perf_counter()
    api_run = asyncio.run(_rerank_all(app, requests, progress))
    seconds = time.perf_counter() - started

    cascade_run = {qid: cascade_order(dense_run[qid], api_run[qid], cascade_k) for qid in api_run}
    results = {
        "hybrid order": score_run(hybrid_run, qrels),
        "dense cosine of the same texts": score_run(dense_run, qrels),
        "/rerank (defaults)": score_run(api_run, qrels),
        f"cosine top {cascade_k} reordered by /rerank": score_run(cascade_run, qrels),
    }
    report = {
        "dataset": dataset.name,
        "split": split,
        "queries": len(queries),
        "window": window,
        "first_stage": f"hybrid, linear min-max {HybridOptions().weights}, BM25 + kNN top-N",
        "model": scorer.model_id,
        "variant": variant,
        "embedder": embedder.model_id,
        "results": results,
        "rerank_seconds": round(seconds, 1),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, CPU only",
        "date": time.strftime("%Y-%m-%d"),
    }
    for name, metrics in results.items():
        click.echo(f"{name:<34} ndcg@10 {metrics['ndcg@10']:.4f}  mrr@10 {metrics['mrr@10']:.4f}")
    if output is not None:
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
