"""Evaluation over a BEIR-layout dataset: every judged query through every mode, scored by
``ir_measures`` (NDCG@10, MRR@10, Recall@100)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch
from tqdm import tqdm

from reranker.corpus import CorpusSource, Qrels, load_qrels, load_queries
from reranker.errors import SearchError, SourceError
from reranker.es import mappings
from reranker.es.indexing import IndexResult, LoadOptions, index_corpus, source_digest
from reranker.evaluation.diversity import top_redundancy
from reranker.metrics import MEASURES
from reranker.rerank.pipeline import Pipeline
from reranker.retrieval.embed_cache import EmbeddingCache, TextEncoder
from reranker.retrieval.first_stage import FirstStage, HybridOptions

# A judged query with no hits still counts (as zero) only if it appears in the run.
NO_HIT = "__no_hit__"

Run = dict[str, dict[str, float]]
RunFunction = Callable[[str, str], Mapping[str, float]]


@dataclass
class EvalReport:
    dataset: str
    split: str
    queries: int
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    index: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "queries": self.queries,
            "results": self.results,
            "mean_ms_per_query": self.timings_ms,
            "index": self.index,
        }

    def table(self) -> str:
        header = f"{'mode':<12}" + "".join(f"{name:>12}" for name in MEASURES) + f"{'ms/query':>10}"
        lines = [f"{self.dataset} / {self.split}: {self.queries} queries", header]
        for mode, scores in self.results.items():
            cells = "".join(f"{scores[name]:>12.4f}" for name in MEASURES)
            lines.append(f"{mode:<12}{cells}{self.timings_ms.get(mode, 0.0):>10.1f}")
        return "\n".join(lines)


def judged_queries(
    dataset: Path, split: str, *, limit: int | None = None
) -> tuple[dict[str, str], Qrels]:
    """The split's judged queries that have text, and their judgements; with ``limit``, the
    first ``limit`` of them (in qrels order) and only their judgements."""
    qrels = load_qrels(dataset, split)
    texts = load_queries(dataset)
    queries = {qid: texts[qid] for qid in qrels if qid in texts}
    if not queries:
        raise SourceError(f"no query in {dataset}/queries.jsonl is judged in split {split!r}")
    if limit:
        queries = dict(list(queries.items())[:limit])
    return queries, {qid: qrels[qid] for qid in queries}


def collect_run(
    queries: Mapping[str, str], search: RunFunction, *, progress: bool, label: str
) -> tuple[Run, float]:
    """Run ``search`` for every query; returns the run and mean milliseconds per query."""
    run: Run = {}
    started = time.perf_counter()
    for query_id, text in tqdm(queries.items(), desc=label, unit="q", disable=not progress):
        scores = dict(search(query_id, text))
        run[query_id] = scores or {NO_HIT: 0.0}
    elapsed_ms = (time.perf_counter() - started) * 1000 / max(len(queries), 1)
    return run, elapsed_ms


def first_stage_runners(
    stage: FirstStage,
    queries: Mapping[str, str],
    *,
    depth: int,
    hybrid: HybridOptions,
    vectors: Mapping[str, list[float]],
) -> dict[str, RunFunction]:
    """bm25, dense and hybrid as run functions over precomputed query vectors."""

    def as_run(hits: Sequence[Any]) -> dict[str, float]:
        return {h.id: h.score for h in hits}

    return {
        "bm25": lambda qid, text: as_run(stage.bm25(text, depth)),
        "dense": lambda qid, text: as_run(stage.dense(text, depth, vector=vectors.get(qid))),
        "hybrid": lambda qid, text: as_run(
            stage.hybrid(text, depth, hybrid, vector=vectors.get(qid))
        ),
    }


def pipeline_runner(
    pipeline: Pipeline,
    vectors: Mapping[str, list[float]],
    *,
    redundancy: list[float] | None = None,
) -> RunFunction:
    """The reranking pipeline as a run function: its whole window, in its final order; with
    ``redundancy``, each query's ILS@10 appended to it (the hits carry their embeddings)."""

    def run(query_id: str, text: str) -> dict[str, float]:
        result = pipeline.search(text, k=pipeline.window, vector=vectors.get(query_id))
        if result.degraded:
            raise SearchError(f"query {query_id}: {result.degraded}")
        if redundancy is not None:
            redundancy.append(top_redundancy(result.hits))
        return {h.id: h.score for h in result.hits}

    return run


def query_vectors(stage: FirstStage, queries: Mapping[str, str]) -> dict[str, list[float]]:
    """Every query embedded once, in one batch (empty without an encoder)."""
    if stage.encoder is None:
        return {}
    ids = list(queries)
    return dict(zip(ids, stage.embed([queries[q] for q in ids]), strict=True))


def ensure_dataset_index(
    client: Elasticsearch,
    dataset: Path,
    alias: str,
    encoder: TextEncoder,
    *,
    cache: EmbeddingCache | None,
    force: bool = False,
    progress: bool = True,
    rescorer: TextEncoder | None,
    check_rescore: bool = True,
) -> IndexResult | None:
    """Index the dataset's corpus behind ``alias`` unless it already holds exactly this corpus
    embedded by ``encoder`` and the second embedder ``rescorer`` (``None``: without one;
    ``check_rescore`` false: an index with or without any is reused, as the first stage alone
    does not read those vectors).

    ``signals.jsonl`` beside the corpus, if present, is joined in. Returns None when the
    existing index was reused.
    """
    extra = (dataset / "signals.jsonl",) if (dataset / "signals.jsonl").is_file() else ()
    source = CorpusSource.open(dataset, extra=extra)
    current = mappings.indices_behind_alias(client, alias)
    if current and not force:
        meta = mappings.index_meta(client, current[0])
        if (
            meta.get("source_sha256") == source_digest(source)
            and meta.get("embedder") == encoder.model_id
            and (
                not check_rescore
                or meta.get(mappings.RESCORE_META_KEY) == (rescorer.model_id if rescorer else None)
            )
        ):
            return None

    return index_corpus(
        client,
        source,
        alias,
        encoder,
        cache=cache,
        options=LoadOptions(progress=progress, rescore_encoder=rescorer),
    )
