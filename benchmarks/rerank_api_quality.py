"""NDCG@10 of the rerank API with the defaults, given each judged query's hybrid top-N as texts.

The question (issue 24): a client of ``POST /rerank`` sends a query and texts, no first-stage
scores. Does the default model, which reads first-stage features, still order those texts at
least as well as the dense cosine of the served embedder alone (the cheapest thing a client
could do with the same texts)?

For every judged query of the split: the hybrid (linear) top-N of the dataset's index, as
``reranker eval`` builds it, becomes a ``/rerank`` request to the real app in process, set up
as ``reranker serve`` sets it up (the default scorer, embedder and second embedder, the
first-stage cascade with the top ``--cascade-k`` rescored); its scores, the dense cosine of the
same texts, the fused order the API computes for them (BM25 over the texts and the cosine, no
model) and the hybrid order itself are scored by ir_measures against the qrels.

    python benchmarks/rerank_api_quality.py ../shared/data/scifact --alias beir-scifact \
        --output benchmarks/results/rerank-api-quality-scifact.json

The alias must hold the dataset indexed with the default embedder (``reranker eval`` does it).
"""

from __future__ import annotations

import asyncio
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np
from tqdm import tqdm

from reranker.config import Settings
from reranker.corpus import passage_text
from reranker.es.client import make_client
from reranker.evaluation.runs import judged_queries
from reranker.metrics import score_run
from reranker.proxy import ProxySettings, create_app
from reranker.rerank.cascade import DEFAULT_CASCADE_K, FIRST_STAGE_STUDENT
from reranker.rerank.features import features_for_texts
from reranker.rerank.rescore import rescore_embedder
from reranker.rerank.scorer import default_model_dir, load_scorer
from reranker.retrieval.embedder import Embedder
from reranker.retrieval.first_stage import FirstStage, HybridOptions


class _RememberingEncoder:
    """The served embedder, remembering each call's vectors: the reference orders and the app
    embed the same lists of texts, which would otherwise cost the benchmark its time twice.
    Whole lists are the key, not single texts: the int8 embedder's activations are quantised
    per batch, so a text's vector depends a little on the texts batched with it, and the app
    must see what it would have computed itself."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.vectors: dict[tuple[str, ...], np.ndarray] = {}

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        key = tuple(texts)
        if key not in self.vectors:
            vectors = self.embedder.encode(texts, batch_size=batch_size, progress=progress)
            self.vectors[key] = vectors
        return self.vectors[key]

    def encode_queries(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        return self.embedder.encode_queries(texts, batch_size=batch_size, progress=progress)


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


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--alias", required=True, help="Index holding DATASET (default embedder).")
@click.option("--split", default="test", show_default=True)
@click.option("--window", default=100, show_default=True)
@click.option("--max-queries", type=int, default=None)
@click.option("--variant", default="int8", show_default=True)
@click.option(
    "--cascade-k",
    default=DEFAULT_CASCADE_K,
    show_default=True,
    help="The served cascade: the model rescores the fused order's top K (0: every text).",
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
    embedder = _RememberingEncoder(Embedder.default(settings))
    scorer = load_scorer(default_model_dir(), variant)
    rescorer = rescore_embedder(settings)  # RERANKER_RESCORE_EMBEDDER=none: without it
    client = make_client(settings)
    stage = FirstStage(client, alias, embedder.embedder, with_source=["title", "text"])
    queries, qrels = judged_queries(dataset, split, limit=max_queries)

    requests: dict[str, tuple[str, list[str], list[str]]] = {}
    hybrid_run: dict[str, dict[str, float]] = {}
    dense_run: dict[str, dict[str, float]] = {}
    fused_run: dict[str, dict[str, float]] = {}
    for qid, text in tqdm(queries.items(), desc="hybrid", unit="q", disable=not progress):
        hits = stage.search(text, "hybrid", window, hybrid=HybridOptions())
        ids = [h.id for h in hits]
        texts = [passage_text(h.source or {}) for h in hits]
        requests[qid] = (text, ids, texts)
        hybrid_run[qid] = {h.id: h.score for h in hits}
        features = features_for_texts(embedder, text, texts).values if texts else None
        cosines = [] if features is None else features[:, 2].tolist()
        fused = [] if features is None else features[:, 0].tolist()
        dense_run[qid] = dict(zip(ids, cosines, strict=True))
        fused_run[qid] = dict(zip(ids, fused, strict=True))

    app = create_app(
        ProxySettings(
            es=settings,
            scorer_only=True,
            max_window=max(window, 1),
            max_body_bytes=64 << 20,
            default_timeout_ms=600_000,
            max_timeout_ms=600_000,
            cascade_model=Path(FIRST_STAGE_STUDENT) if cascade_k else None,
            default_cascade=cascade_k or None,
        ),
        scorer_factory=lambda: scorer,
        encoder_factory=lambda: embedder,
        rescore_factory=None if rescorer is None else lambda: rescorer,
        load_in_background=False,
    )
    started = time.perf_counter()
    api_run = asyncio.run(_rerank_all(app, requests, progress))
    seconds = time.perf_counter() - started

    results = {
        "hybrid order": score_run(hybrid_run, qrels),
        "dense cosine of the same texts": score_run(dense_run, qrels),
        "BM25 of the texts fused with the cosine": score_run(fused_run, qrels),
        "/rerank (served defaults)": score_run(api_run, qrels),
    }
    report = {
        "dataset": dataset.name,
        "split": split,
        "queries": len(queries),
        "window": window,
        "first_stage": f"hybrid, linear min-max {HybridOptions().weights}, BM25 + kNN top-N",
        "model": scorer.model_id,
        "cascade_k": cascade_k,
        "variant": variant,
        "embedder": embedder.model_id,
        "second_embedder": None if rescorer is None else rescorer.model_id,
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
