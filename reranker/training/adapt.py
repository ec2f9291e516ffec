"""Adapting the embedder to an index's own documents, with no labels (``reranker adapt``).

Users have their corpus, never its qrels. This module builds training data from the
documents alone, as GPL does, without a query generator (none ships offline):

- **pseudo-queries**: a document's title for its body where it has one (half of them; the
  other half, and every untitled document, as below); otherwise one sentence cut from the
  document for the rest of it (the inverse cloze task); a one-sentence document gives a
  span of words instead;
- **negatives** from the current hybrid first stage (Elasticsearch BM25 + kNN with the
  index's embedder, fused as searches are): the pseudo-query's window ranks above
  ``negative_depth`` other than its source; a pseudo-query whose source is not in its window
  is dropped;
- **soft labels** from the current cross-encoder as teacher: it scores the query with its
  source and with each negative (with the window's first-stage features where the model
  reads them), and the student learns the teacher's margins (margin-MSE, GPL's loss) beside
  a multiple-negatives loss over the batch; a negative the teacher scores above the source
  is not pushed away (it is likely relevant too).

The check needs no labels either: held-out pseudo-queries (never trained on) are searched
through the hybrid list (in-process BM25 top 100 fused with exact cosines) over the corpus
with each held-out source replaced by its text without the query (else BM25 finds every
source by its own words), and the fraction whose source ranks first is compared. Training
runs in time slices inside ``minutes``; after each, the check: a slice that does not beat
the best so far stops the run, and the original embedder is kept when nothing beat it.

Importing this module imports torch and transformers (the ``train`` extra).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from elasticsearch import Elasticsearch
from elasticsearch import helpers as es_helpers
from tqdm.auto import tqdm

from reranker.corpus import passage_text
from reranker.errors import ConfigError, IndexingError, ModelError, SourceError
from reranker.es import mappings
from reranker.models import ENCODER_CARD, read_card, write_json_atomic
from reranker.rerank.pipeline import Pipeline
from reranker.retrieval.embedder import Embedder
from reranker.retrieval.first_stage import Hit, HybridOptions, fuse
from reranker.retrieval.queries import VECTOR_FIELD
from reranker.training.data import BM25
from reranker.training.embedder import EmbedderTrainConfig, _BiEncoder
from reranker.training.losses import in_batch_loss, margin_mse_loss
from reranker.training.toolbox import (
    backward_step,
    package_versions,
    seed_everything,
)

log = logging.getLogger(__name__)

PseudoKind = Literal["title", "sentence", "span"]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class AdaptConfig:
    alias: str
    output: Path
    minutes: float = 20.0
    """Wall-clock budget for the whole run (reading, mining, teacher, training, checks)."""
    max_documents: int = 20_000
    """Documents read (the first ones by id order of a scan); pseudo-queries come from these."""
    held_out: int = 1000
    """Pseudo-queries kept for the check (at most a fifth of the documents)."""
    negatives: int = 3
    """Hard negatives the teacher scores per pseudo-query (one is sampled per step)."""
    negative_depth: int = 30
    window: int = 100
    batch_size: int = 16
    lr: float = 3e-5
    warmup_fraction: float = 0.1
    scale: float = 20.0
    margin_weight: float = 0.0
    """Weight of the margin-MSE term (student ``scale``·cosine margins against the teacher's
    logit margins) beside the multiple-negatives loss."""
    title_fraction: float = 0.5
    """Of documents with a title, the share whose pseudo-query is the title."""
    slices: int = 2
    """Training time slices, each followed by the check."""
    max_steps: int | None = None
    query_max_length: int = 64
    passage_max_length: int = 256
    hybrid: HybridOptions = field(default_factory=HybridOptions)
    seed: int = 13
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ConfigError("--minutes must be positive")
        if self.held_out < 10:
            raise ConfigError("the check needs at least 10 held-out pseudo-queries")
        if self.negatives < 1 or self.batch_size < 2 or self.slices < 1:
            raise ConfigError("negatives and slices must be ≥ 1, the batch size ≥ 2")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("--max-steps must be at least 1")
        if not 0.0 <= self.title_fraction <= 1.0:
            raise ConfigError("the title fraction must be in [0, 1]")


# --------------------------------------------------------------------------------------------
# pure parts: pseudo-queries, negatives, the loss


@dataclass(frozen=True)
class PseudoQuery:
    doc_id: str
    query: str
    positive: str
    """The document's text the query was made from (for a sentence: without that sentence)."""
    kind: PseudoKind


def sentences(text: str) -> list[str]:
    """``text`` split after ., ! or ? followed by a capital, a digit or an opening mark."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def pseudo_query(
    doc_id: str,
    title: str,
    text: str,
    rng: random.Random,
    *,
    title_fraction: float = 0.5,
    min_words: int = 4,
    max_words: int = 30,
) -> PseudoQuery | None:
    """One pseudo-query for a document (see the module's doc); ``None`` when it is too short
    to give one (under 12 words of body)."""
    title = " ".join(title.split())
    body = " ".join(text.split())
    words = body.split()
    if len(words) < 12:
        return None
    if title and rng.random() < title_fraction:
        return PseudoQuery(doc_id, title, body, "title")
    parts = sentences(body)
    fitting = [i for i, s in enumerate(parts) if min_words <= len(s.split()) <= max_words]
    if len(parts) >= 2 and fitting:
        cut = rng.choice(fitting)
        rest = " ".join(s for i, s in enumerate(parts) if i != cut)
        return PseudoQuery(doc_id, parts[cut], _titled(title, rest), "sentence")
    length = rng.randint(6, min(14, len(words) // 2))
    start = rng.randrange(0, len(words) - length + 1)
    span = " ".join(words[start : start + length])
    rest = " ".join(words[:start] + words[start + length :])
    return PseudoQuery(doc_id, span, _titled(title, rest), "span")


def _titled(title: str, body: str) -> str:
    return f"{title} {body}" if title else body


def hard_negatives(window: Sequence[str], source: str, depth: int) -> list[str]:
    """The ``window``'s doc ids above ``depth`` other than ``source``, in order."""
    return [d for d in window[:depth] if d != source]


def top1_rate(ranked: dict[str, list[str]], sources: dict[str, str]) -> float:
    """The fraction of pseudo-queries (id → ranked doc ids) whose source ranks first."""
    if not ranked:
        return 0.0
    return sum(1 for q, ids in ranked.items() if ids and ids[0] == sources[q]) / len(ranked)


def split_held_out(
    queries: Sequence[PseudoQuery], n: int, seed: int
) -> tuple[list[PseudoQuery], list[PseudoQuery]]:
    """(training, held-out): ``n`` pseudo-queries (at most a fifth) drawn by ``seed``."""
    order = list(queries)
    random.Random(seed).shuffle(order)
    n = min(n, len(order) // 5)
    return order[n:], order[:n]


# --------------------------------------------------------------------------------------------
# data from the index


@dataclass
class _Documents:
    ids: list[str]
    titles: list[str]
    texts: list[str]
    passages: list[str]
    vectors: np.ndarray
    index: str


def _read_documents(client: Elasticsearch, alias: str, limit: int, progress: bool) -> _Documents:
    behind = mappings.indices_behind_alias(client, alias)
    total = min(limit, int(client.count(index=alias)["count"]))
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    vectors: list[list[float]] = []
    hits = es_helpers.scan(
        client,
        index=alias,
        query={"query": {"match_all": {}}, "sort": ["_doc"]},
        source_exclude_vectors=False,
        preserve_order=True,
    )
    with tqdm(total=total, desc="reading", unit="doc", disable=not progress) as bar:
        for hit in hits:
            source = hit.get("_source") or {}
            vector = source.get(VECTOR_FIELD)
            if not isinstance(vector, list) or not vector:
                continue
            ids.append(str(hit["_id"]))
            titles.append(str(source.get("title") or ""))
            texts.append(str(source.get("text") or ""))
            vectors.append([float(x) for x in vector])
            bar.update(1)
            if len(ids) >= limit:
                break
    if len(ids) < 50:
        raise SourceError(f"{alias}: {len(ids)} documents with embeddings; adapting needs ≥ 50")
    docs = [{"title": t, "text": x} for t, x in zip(titles, texts, strict=True)]
    matrix = np.asarray(vectors, dtype=np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return _Documents(ids, titles, texts, [passage_text(d) for d in docs], matrix, behind[0])


@dataclass(frozen=True)
class _Example:
    query: PseudoQuery
    negatives: tuple[str, ...]
    """Passage texts of the mined negatives."""
    teacher_positive: float
    teacher_negatives: tuple[float, ...]


def _mine_and_label(
    queries: Sequence[PseudoQuery],
    pipeline: Pipeline,
    docs: _Documents,
    config: AdaptConfig,
    rng: random.Random,
    deadline: float,
) -> tuple[list[_Example], dict[str, int]]:
    """Each pseudo-query's window, negatives and the teacher's scores (stops at ``deadline``
    with what it has)."""
    assert pipeline.first_stage is not None and pipeline.scorer is not None
    passages = dict(zip(docs.ids, docs.passages, strict=True))
    stats = {"searched": 0, "source_not_in_window": 0, "no_negative": 0}
    examples: list[_Example] = []
    for pq in tqdm(queries, desc="mining + teacher", unit="query", disable=not config.progress):
        if time.monotonic() > deadline:
            break
        stats["searched"] += 1
        window = pipeline.first_stage.search(
            pq.query, "hybrid", config.window, hybrid=config.hybrid
        )
        order = [h.id for h in window]
        if pq.doc_id not in order:
            stats["source_not_in_window"] += 1
            continue
        # a negative must be one of the documents read (--max-documents may read fewer)
        pool = [d for d in hard_negatives(order, pq.doc_id, config.negative_depth) if d in passages]
        if not pool:
            stats["no_negative"] += 1
            continue
        chosen = rng.sample(pool, min(config.negatives, len(pool)))
        rows = [order.index(pq.doc_id), *(order.index(d) for d in chosen)]
        _, features = pipeline.scorer_inputs(pq.query, window)
        pairs = [(pq.query, pq.positive), *((pq.query, passages[d]) for d in chosen)]
        scores = pipeline.scorer.score(pairs, features=None if features is None else features[rows])
        examples.append(
            _Example(
                pq,
                tuple(passages[d] for d in chosen),
                float(scores[0]),
                tuple(float(s) for s in scores[1:]),
            )
        )
    return examples, stats


# --------------------------------------------------------------------------------------------
# the check


def check_passages(
    ids: Sequence[str], passages: Sequence[str], held_out: Sequence[PseudoQuery]
) -> list[str]:
    """The corpus the check searches: each held-out pseudo-query's source replaced by what is
    left of it without the query (its body for a title, the rest for a sentence), so that no
    source holds its query word for word and the check measures more than exact matching."""
    positives = {pq.doc_id: pq.positive for pq in held_out}
    return [positives.get(doc_id, text) for doc_id, text in zip(ids, passages, strict=True)]


@dataclass
class _Check:
    """The held-out pseudo-queries, their BM25 windows over the check's corpus, and which
    rows of the corpus are held-out sources."""

    queries: list[PseudoQuery]
    ids: list[str]
    passages: list[str]
    lexical: dict[str, list[Hit]]
    rows: list[int]

    @classmethod
    def build(cls, docs: _Documents, held_out: list[PseudoQuery], depth: int) -> _Check:
        passages = check_passages(docs.ids, docs.passages, held_out)
        bm25 = BM25(passages)
        lexical = {
            pq.doc_id: [Hit(docs.ids[i], s) for i, s in bm25.top_k(pq.query, depth)]
            for pq in held_out
        }
        row = {doc_id: i for i, doc_id in enumerate(docs.ids)}
        return cls(held_out, docs.ids, passages, lexical, [row[pq.doc_id] for pq in held_out])

    def score(
        self, query_vectors: np.ndarray, doc_vectors: np.ndarray, hybrid: HybridOptions, depth: int
    ) -> float:
        """Top-1 rate of the held-out pseudo-queries' sources in the hybrid list."""
        ranked: dict[str, list[str]] = {}
        for pq, vector in zip(self.queries, query_vectors, strict=True):
            cosines = doc_vectors @ vector
            top = np.argsort(-cosines, kind="stable")[:depth]
            dense = [Hit(self.ids[i], float(cosines[i])) for i in top]
            fused = fuse(self.lexical[pq.doc_id], dense, hybrid, depth)
            ranked[pq.doc_id] = [h.id for h in fused]
        return round(top1_rate(ranked, {pq.doc_id: pq.doc_id for pq in self.queries}), 4)


# --------------------------------------------------------------------------------------------
# the run


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def torch_base(embedder: Embedder, workdir: Path) -> Path:
    """A Hugging Face folder holding ``embedder``'s weights: its own if it has them, else
    rebuilt from its ONNX graph (:mod:`export.onnx_to_torch`; an int8 graph dequantised)."""
    folder = embedder.model_dir
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    from reranker.training.cross_encoder_config import default_base_model

    variants: dict[str, Any] = read_card(folder, ENCODER_CARD).get("variants") or {}
    if any(v.get("external_data") for v in variants.values()):
        # the stock all-MiniLM-L6-v2: a weight-free graph beside the weights package's files
        return default_base_model()
    from export.onnx_to_torch import to_hugging_face

    target = workdir / "base-hf"
    if target.exists():
        shutil.rmtree(target)
    to_hugging_face(folder, target)
    return target


class _Schedule:
    """Linear warm-up then linear decay to zero at ``total`` steps, where ``total`` is set
    once the step time is known (the run is bounded by time, not by steps)."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int, total: int) -> None:
        self.warmup = max(1, warmup)
        self.total = max(total, self.warmup + 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


def _batches(
    examples: Sequence[_Example], size: int, rng: random.Random
) -> Iterator[list[_Example]]:
    while True:
        order = list(examples)
        rng.shuffle(order)
        for start in range(0, len(order) - size + 1, size):
            yield order[start : start + size]


def _step(
    student: _BiEncoder,
    batch: Sequence[_Example],
    rng: random.Random,
    config: AdaptConfig,
    optimizers: tuple[Any, Any],
) -> float:
    student.model.train()
    picks = [rng.randrange(len(e.negatives)) for e in batch]
    queries = student.embed(
        student.as_queries([e.query.query for e in batch]), config.query_max_length
    )
    texts = [e.query.positive for e in batch] + [
        e.negatives[p] for e, p in zip(batch, picks, strict=True)
    ]
    passages = student.embed(texts, config.passage_max_length)
    n = len(batch)
    device = student.device
    teacher_pos = torch.tensor([e.teacher_positive for e in batch], device=device)
    teacher_neg = torch.tensor(
        [e.teacher_negatives[p] for e, p in zip(batch, picks, strict=True)], device=device
    )
    # a negative the teacher puts above the source is likely relevant too: not pushed away
    relevant = torch.zeros((n, 2 * n), dtype=torch.bool, device=device)
    rows = torch.arange(n, device=device)
    relevant[rows, n + rows] = teacher_neg >= teacher_pos
    contrastive = in_batch_loss(queries, passages, relevant, config.scale)
    positive = config.scale * (queries * passages[:n]).sum(-1)
    negative = config.scale * (queries * passages[n:]).sum(-1)
    # margin-MSE over each (source, negative) pair, the distillation's loss
    margin = margin_mse_loss(
        torch.stack([positive, negative], 1).flatten(),
        torch.stack([teacher_pos, teacher_neg], 1).flatten(),
        [2] * n,
    )
    return backward_step(
        contrastive + config.margin_weight * margin, student.model, optimizers, 1.0
    )


def adapt(
    config: AdaptConfig,
    client: Elasticsearch,
    embedder: Embedder,
    pipeline: Pipeline,
    *,
    export: Callable[[Path, Path, str], Embedder] | None = None,
) -> dict[str, Any]:
    """Adapt ``embedder`` (the index's own) to the documents behind ``config.alias``; the
    report (also ``output/adapt.json``). ``pipeline`` is the current query path: its first
    stage mines negatives, its scorer is the teacher. The adapted model is written to
    ``output/embedder`` only when the check improved; see the module's doc."""
    started = time.monotonic()
    cpu_started = _cpu_seconds()
    deadline = started + 60.0 * config.minutes
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    if pipeline.first_stage is None or pipeline.scorer is None:
        raise ConfigError("adapting needs the first stage and a cross-encoder (the teacher)")
    if not mappings.indices_behind_alias(client, config.alias):
        raise IndexingError(f"alias {config.alias!r} does not exist; index a corpus first")
    meta = mappings.index_meta(client, config.alias)
    recorded = meta.get("embedder")
    if recorded and recorded != embedder.model_id:
        raise ConfigError(
            f"{config.alias} was embedded with {recorded}, not {embedder.model_id}: "
            "name the index's embedder with --embedder"
        )
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    rng = random.Random(config.seed)
    docs = _read_documents(client, config.alias, config.max_documents, config.progress)

    made = [
        pseudo_query(i, t, x, rng, title_fraction=config.title_fraction)
        for i, t, x in zip(docs.ids, docs.titles, docs.texts, strict=True)
    ]
    pseudo = [pq for pq in made if pq is not None]
    if len(pseudo) < 50:
        raise SourceError(f"{config.alias}: only {len(pseudo)} documents long enough to adapt on")
    training, held_out = split_held_out(pseudo, config.held_out, config.seed)
    kinds = {k: sum(1 for pq in pseudo if pq.kind == k) for k in ("title", "sentence", "span")}

    # the check's fixed parts: its corpus and BM25 windows, and the embedder as it is (the
    # index's vectors, the held-out sources' rows encoded without their queries)
    check = _Check.build(docs, held_out, config.window)
    held_texts = [pq.query for pq in held_out]
    base_vectors = docs.vectors.copy()
    base_vectors[check.rows] = embedder.encode([check.passages[r] for r in check.rows])
    base_score = check.score(
        embedder.encode_queries(held_texts), base_vectors, config.hybrid, config.window
    )
    del base_vectors
    log.info("held-out top-1 before adapting: %.4f", base_score)
    sample = check.passages[: min(200, len(check.passages))]
    t0 = time.monotonic()
    embedder.encode(sample)
    encode_seconds = (time.monotonic() - t0) * len(docs.passages) / len(sample)

    # mining and the teacher get at most a third of the budget
    mine_deadline = started + 60.0 * config.minutes / 3
    examples, mining = _mine_and_label(training, pipeline, docs, config, rng, mine_deadline)
    if len(examples) < config.batch_size:
        raise SourceError(
            f"{config.alias}: {len(examples)} pseudo-queries found their source in the first "
            f"stage's window; adapting needs at least {config.batch_size}"
        )

    base_dir = torch_base(embedder, work)
    train_config = EmbedderTrainConfig(
        datasets=[Path(config.alias)],
        output=work,
        base_model=base_dir,
        query_max_length=config.query_max_length,
        passage_max_length=config.passage_max_length,
        threads=config.threads,
    )
    student = _BiEncoder(base_dir, train_config)
    card_name = f"{embedder.card.get('name', embedder.model_dir.name)}-adapted-{config.alias}"
    export_fn = export or _export
    # each slice's check costs an export and an encoding of the corpus
    reserve = 1.3 * encode_seconds + 40.0
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=config.lr, weight_decay=0.01)
    per_epoch = max(1, len(examples) // config.batch_size)
    schedule = _Schedule(optimizer, math.ceil(config.warmup_fraction * per_epoch), per_epoch)
    batches = _batches(examples, config.batch_size, rng)
    history: list[dict[str, Any]] = [{"step": 0, "top1": base_score}]
    best: dict[str, Any] = history[0]
    step = 0
    stopped = "budget"
    train_seconds = 0.0
    bar = tqdm(desc="adapting", unit="step", disable=not config.progress)
    for n in range(1, config.slices + 1):
        slice_end = time.monotonic() + max(
            0.0, (deadline - time.monotonic() - (config.slices - n + 1) * reserve)
        ) / (config.slices - n + 1)
        first_step_at = time.monotonic()
        losses: list[float] = []
        while time.monotonic() < slice_end and (
            config.max_steps is None or step < config.max_steps * n // config.slices
        ):
            loss = _step(student, next(batches), rng, config, (optimizer, schedule.scheduler))
            step += 1
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if step == 3 and config.max_steps is None:
                per_step = (time.monotonic() - first_step_at) / 3
                budget = max(0.0, deadline - time.monotonic() - config.slices * reserve)
                schedule.total = max(schedule.warmup + 1, 3 + int(budget / per_step))
            elif step == 1 and config.max_steps is not None:
                schedule.total = max(schedule.warmup + 1, config.max_steps)
        train_seconds += time.monotonic() - first_step_at
        candidate = work / f"slice-{n}"
        if candidate.exists():
            shutil.rmtree(candidate)
        student.save(candidate / "checkpoint")
        adapted = export_fn(candidate / "checkpoint", candidate / "embedder", card_name)
        vectors = adapted.encode(check.passages, progress=config.progress)
        score = check.score(
            adapted.encode_queries(held_texts), vectors, config.hybrid, config.window
        )
        mean_loss = round(float(np.mean(losses)), 4) if losses else None
        history.append({"step": step, "top1": score, "slice": n, "loss": mean_loss})
        log.info("held-out top-1 after step %d: %.4f", step, score)
        if score > best["top1"]:
            best = history[-1]
        else:
            stopped = f"the check did not improve after slice {n}"
            break
        if time.monotonic() >= deadline:
            break
    bar.close()

    kept = "original" if best["step"] == 0 else "adapted"
    final = out / "embedder"
    if final.exists():
        shutil.rmtree(final)
    if kept == "adapted":
        shutil.copytree(work / f"slice-{best['slice']}" / "embedder", final)
    report = {
        "kind": "adapt",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "alias": config.alias,
        "index": docs.index,
        "documents": len(docs.ids),
        "base_embedder": embedder.model_id,
        "teacher": getattr(pipeline.scorer, "model_id", type(pipeline.scorer).__name__),
        "pseudo_queries": {"made": len(pseudo), **kinds, "held_out": len(held_out)},
        "mining": mining,
        "examples": len(examples),
        "loss": (
            f"multiple-negatives ranking (scale {config.scale}, one mined negative per query, "
            f"teacher-preferred negatives masked) + {config.margin_weight} × margin-MSE against "
            "the teacher's logit margins"
        ),
        "check": (
            "held-out pseudo-queries whose source ranks first in the hybrid list (in-process "
            "BM25 top 100 fused with exact cosines), over the corpus with each held-out "
            "source replaced by its text without the query"
        ),
        "history": history,
        "chosen": best,
        "kept": kept,
        "stopped": stopped,
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.monotonic() - started, 1),
        "cpu_seconds": round(_cpu_seconds() - cpu_started, 1),
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "versions": package_versions(),
    }
    if kept == "adapted":
        card = read_card(final, ENCODER_CARD)
        card["adapted"] = {k: v for k, v in report.items() if k not in ("config", "versions")}
        write_json_atomic(final / ENCODER_CARD, card)
    write_json_atomic(out / "adapt.json", report)
    shutil.rmtree(work, ignore_errors=True)
    return report


def _export(checkpoint: Path, target: Path, name: str) -> Embedder:
    """The checkpoint as a shipped-style embedder folder: int8 only, as the default is."""
    from export.onnx_export import add_encoder_int8, export_encoder

    export_encoder(checkpoint, target, name=name, max_length=256)
    add_encoder_int8(target, keep_fp32=False)
    try:
        return Embedder(target)
    except ModelError as exc:  # pragma: no cover - an export that does not load is a bug
        raise ModelError(f"the adapted embedder at {target} does not load: {exc}") from exc
