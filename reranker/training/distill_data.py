"""Distillation's data: the teacher, the train queries split for checkpoint selection, and
candidate groups mined from the hybrid first stage with the teacher's logits."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from reranker.corpus import load_qrels, load_queries, passage_text
from reranker.errors import ModelError, SourceError
from reranker.models import sha256_file

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from reranker.rerank.scorer import PairScorer, Scorer
    from reranker.retrieval.embed_cache import TextEncoder
    from reranker.training.distill_config import DistillConfig


@dataclass
class CandidateGroup:
    """One query's sampled candidates (in first-stage order) and the teacher's logits."""

    dataset: str
    query_id: str
    query: str
    doc_ids: list[str]
    passages: list[str]
    ranks: list[int]
    """1-based first-stage ranks of the kept candidates."""
    grades: list[int]
    teacher: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(self.query, p) for p in self.passages]


# --------------------------------------------------------------------------------------------
# checks that need no Elasticsearch


def load_teacher(folder: Path) -> Scorer:
    """The teacher as served (its fp32 variant if exported, else the first it has); a
    first-stage-aware model is refused (its scores depend on features the student lacks)."""
    from reranker.rerank.scorer import load_scorer

    if not Path(folder).is_dir():
        raise ModelError(f"{folder}: teacher model folder does not exist")
    scorer = load_scorer(Path(folder))
    if scorer.feature_names:
        raise ModelError(
            f"{folder} is a first-stage-aware model (it reads {', '.join(scorer.feature_names)}); "
            "distil from a plain cross-encoder"
        )
    return scorer


def teacher_record(teacher: Scorer) -> dict[str, Any]:
    """What the student's card says about its teacher."""
    return {
        "model_id": teacher.model_id,
        "version": teacher.version,
        "variant": teacher.variant,
        "path": str(teacher.model_dir.resolve()),
        "tokenizer_sha256": sha256_file(teacher.model_dir / "tokenizer.json"),
        "max_length": teacher.max_length,
        "layers": _teacher_layers(teacher.model_dir),
    }


def _teacher_layers(folder: Path) -> int | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    layers = config.get("num_hidden_layers")
    return int(layers) if isinstance(layers, int) else None


def query_splits(
    dataset: Path, *, dev_max_queries: int, seed: int
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """(train, held-out) qrels of ``dataset``: its ``dev`` split (SciFact: the project's
    seeded hold-out of train) sampled to ``dev_max_queries``, and the train queries not held
    out. Refused when a train query is also a test query."""
    if not (Path(dataset) / "qrels" / "train.tsv").is_file():
        raise SourceError(f"{dataset}: no qrels/train.tsv (distillation trains on train queries)")
    train = load_qrels(dataset, "train")
    try:
        dev = load_qrels(dataset, "dev")
    except SourceError:
        dev = {}
    test_path = Path(dataset) / "qrels" / "test.tsv"
    if test_path.is_file():
        leaked = set(train) & set(load_qrels(dataset, "test"))
        if leaked:
            raise SourceError(f"{dataset}: {len(leaked)} train queries are also test queries")
    train = {q: j for q, j in train.items() if q not in dev}
    dev_ids = sorted(dev)
    if len(dev_ids) > dev_max_queries:
        dev_ids = sorted(random.Random(seed).sample(dev_ids, dev_max_queries))
    return train, {q: dev[q] for q in dev_ids}


def sample_ranks(query_id: str, available: int, top: int, sampled: int, seed: int) -> list[int]:
    """0-based positions kept of a window of ``available`` candidates: the first ``top`` and
    ``sampled`` others drawn at random (seeded by ``seed`` and the query id), in order."""
    head = list(range(min(top, available)))
    rest = list(range(len(head), available))
    drawn = random.Random(f"{seed}:{query_id}").sample(rest, min(sampled, len(rest)))
    return sorted(head + drawn)


# --------------------------------------------------------------------------------------------
# candidates and teacher logits


def mine_candidates(
    dataset: Path,
    qrels: dict[str, dict[str, int]],
    client: Elasticsearch,
    encoder: TextEncoder | None,
    config: DistillConfig,
    *,
    label: str,
    progress: bool = True,
) -> list[CandidateGroup]:
    """Each query's hybrid top-``window`` from the index ``beir-<dataset>`` (the project's
    first stage, no reranking), sampled as :func:`sample_ranks` says."""
    from reranker.rerank.pipeline import QueryPath, build_pipeline

    queries = load_queries(dataset)
    alias = f"beir-{dataset.name.lower()}"
    pipeline = build_pipeline(
        QueryPath(index=alias, window=config.window, rerank=False), client, encoder
    )
    groups: list[CandidateGroup] = []
    qids = [q for q in qrels if q in queries]
    for qid in tqdm(qids, desc=f"{dataset.name} {label}", unit="query", disable=not progress):
        result = pipeline.search(queries[qid], k=config.window)
        hits = result.hits
        if len(hits) < 2:
            continue
        kept = sample_ranks(qid, len(hits), config.top, config.sampled, config.seed)
        groups.append(
            CandidateGroup(
                dataset=dataset.name,
                query_id=qid,
                query=queries[qid],
                doc_ids=[hits[i].id for i in kept],
                passages=[passage_text(hits[i].source or {}) for i in kept],
                ranks=[i + 1 for i in kept],
                grades=[qrels[qid].get(hits[i].id, 0) for i in kept],
            )
        )
    return groups


def score_groups(
    scorer: PairScorer, groups: Sequence[CandidateGroup], *, progress: bool = True, chunk: int = 8
) -> None:
    """Fill each group's ``teacher`` logits (``chunk`` queries per scorer call)."""
    bar = tqdm(
        total=sum(len(g.passages) for g in groups),
        desc="teacher",
        unit="pair",
        disable=not progress,
    )
    with bar:
        for start in range(0, len(groups), chunk):
            part = groups[start : start + chunk]
            pairs = [pair for g in part for pair in g.pairs]
            logits = scorer.score(pairs)
            offset = 0
            for group in part:
                group.teacher = np.asarray(
                    logits[offset : offset + len(group.passages)], dtype=np.float32
                )
                offset += len(group.passages)
            bar.update(len(pairs))
