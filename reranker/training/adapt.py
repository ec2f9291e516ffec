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
runs in time slices inside ``minutes``; after each, the check: a slice whose check falls
below the best so far by more than the check's standard error stops the run, and the
original embedder is kept when nothing beat it.

Importing this module imports torch and transformers (the ``train`` extra).
"""

from __future__ import annotations

import json
import logging
import math
import random
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from elasticsearch import Elasticsearch
from elasticsearch import helpers as es_helpers
from tqdm.auto import tqdm

from reranker.corpus import passage_text
from reranker.errors import ConfigError, IndexingError, SourceError
from reranker.es import mappings
from reranker.models import ENCODER_CARD, read_card, write_json_atomic
from reranker.rerank.pipeline import Pipeline
from reranker.retrieval.embedder import Embedder
from reranker.retrieval.first_stage import HybridOptions
from reranker.retrieval.queries import VECTOR_FIELD
from reranker.training.embedder import EmbedderTrainConfig, _BiEncoder
from reranker.training.losses import in_batch_loss, margin_mse_loss
from reranker.training.pseudo_queries import (
    PseudoQuery,
    PseudoQueryCheck,
    hard_negatives,
    pseudo_query,
    split_held_out,
)
from reranker.training.toolbox import (
    backward_step,
    package_versions,
    seed_everything,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class AdaptConfig:
    alias: str
    output: Path
    minutes: float = 15.0
    """Wall-clock budget for the whole run (reading, mining, teacher, training, checks)."""
    max_documents: int = 20_000
    """Documents read (the first ones by id order of a scan); pseudo-queries come from these."""
    held_out: int = 1000
    """Pseudo-queries kept for the check (at most a fifth of the documents)."""
    negatives: int = 1
    """Hard negatives the teacher scores per pseudo-query (one is sampled per step; a run
    sees each example about once, so more cost teacher time that training rarely uses)."""
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
    passage_max_length: int = 128
    """Tokens of a passage in training (the export still reads 256): all-MiniLM-L6-v2 itself
    was trained at 128, and on long documents it halves a step's cost at the same check."""
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
# data from the index


@dataclass
class _Documents:
    ids: list[str]
    titles: list[str]
    texts: list[str]
    passages: list[str]
    vectors: np.ndarray
    index: str


def _read_documents(
    client: Elasticsearch, alias: str, index: str, limit: int, progress: bool
) -> _Documents:
    """The documents behind ``alias`` (``index``, the one it points at) that have a vector."""
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
    return _Documents(ids, titles, texts, [passage_text(d) for d in docs], matrix, index)


@dataclass(frozen=True)
class _Example:
    query: PseudoQuery
    negatives: tuple[str, ...]
    """Passage texts of the mined negatives."""
    teacher_positive: float
    teacher_negatives: tuple[float, ...]


class _Miner:
    """Mines and labels pseudo-queries as training asks for batches, so that a run mines what
    its budget can train on and no more; once every pseudo-query is mined, batches go over
    the examples again."""

    def __init__(
        self,
        queries: Sequence[PseudoQuery],
        pipeline: Pipeline,
        docs: _Documents,
        config: AdaptConfig,
        rng: random.Random,
    ) -> None:
        assert pipeline.first_stage is not None and pipeline.scorer is not None
        self.first_stage, self.scorer = pipeline.first_stage, pipeline.scorer
        self.pipeline, self.queries, self.config, self.rng = pipeline, queries, config, rng
        self.passages = dict(zip(docs.ids, docs.passages, strict=True))
        self.stats = {"searched": 0, "source_not_in_window": 0, "no_negative": 0}
        self.examples: list[_Example] = []

    def label(self, pq: PseudoQuery) -> _Example | None:
        """The pseudo-query's negatives from its window and the teacher's scores; ``None``
        when its source is not in the window or nothing else is."""
        config = self.config
        self.stats["searched"] += 1
        window = self.first_stage.search(pq.query, "hybrid", config.window, hybrid=config.hybrid)
        order = [h.id for h in window]
        if pq.doc_id not in order:
            self.stats["source_not_in_window"] += 1
            return None
        # a negative must be one of the documents read (--max-documents may read fewer)
        pool = [
            d for d in hard_negatives(order, pq.doc_id, config.negative_depth) if d in self.passages
        ]
        if not pool:
            self.stats["no_negative"] += 1
            return None
        chosen = self.rng.sample(pool, min(config.negatives, len(pool)))
        rows = [order.index(pq.doc_id), *(order.index(d) for d in chosen)]
        _, features = self.pipeline.scorer_inputs(pq.query, window)
        pairs = [(pq.query, pq.positive), *((pq.query, self.passages[d]) for d in chosen)]
        scores = self.scorer.score(pairs, features=None if features is None else features[rows])
        return _Example(
            pq,
            tuple(self.passages[d] for d in chosen),
            float(scores[0]),
            tuple(float(s) for s in scores[1:]),
        )

    def batches(self) -> Iterator[list[_Example]]:
        size = self.config.batch_size
        fresh: list[_Example] = []
        for pq in self.queries:
            example = self.label(pq)
            if example is None:
                continue
            self.examples.append(example)
            fresh.append(example)
            if len(fresh) == size:
                yield fresh
                fresh = []
        if len(self.examples) < size:
            raise SourceError(
                f"{self.config.alias}: {len(self.examples)} pseudo-queries found their source in "
                f"the first stage's window; adapting needs at least {size}"
            )
        yield from _batches(self.examples, size, self.rng)


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

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, warmup_fraction: float):
        self.warmup_fraction = warmup_fraction
        self.resize(total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)

    def resize(self, total: int) -> None:
        self.warmup = max(1, math.ceil(self.warmup_fraction * total))
        self.total = max(total, self.warmup + 1)

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


@dataclass
class _Corpus:
    """What a run adapts to: the documents, their pseudo-queries and the check's parts."""

    docs: _Documents
    pseudo: list[PseudoQuery]
    training: list[PseudoQuery]
    check: PseudoQueryCheck
    base_top1: float
    encode_seconds: float
    """About how long encoding the whole corpus takes (each check does it once)."""

    @property
    def held_texts(self) -> list[str]:
        return [pq.query for pq in self.check.queries]


def _corpus(
    config: AdaptConfig,
    client: Elasticsearch,
    index: str,
    embedder: Embedder,
    rng: random.Random,
) -> _Corpus:
    """The documents behind the alias, their pseudo-queries, and the check of the embedder as
    it is (the index's vectors; the held-out sources' rows encoded without their queries)."""
    docs = _read_documents(client, config.alias, index, config.max_documents, config.progress)
    made = [
        pseudo_query(i, t, x, rng, title_fraction=config.title_fraction)
        for i, t, x in zip(docs.ids, docs.titles, docs.texts, strict=True)
    ]
    pseudo = [pq for pq in made if pq is not None]
    if len(pseudo) < 50:
        raise SourceError(f"{config.alias}: only {len(pseudo)} documents long enough to adapt on")
    training, held_out = split_held_out(pseudo, config.held_out, config.seed)
    check = PseudoQueryCheck.build(docs.ids, docs.passages, held_out, config.window)
    vectors = docs.vectors.copy()
    started = time.monotonic()
    vectors[check.rows] = embedder.encode([check.passages[r] for r in check.rows])
    # the held-out sources' encoding times the whole corpus's (each check encodes it once)
    encode_seconds = (time.monotonic() - started) * len(docs.passages) / len(check.rows)
    queries = embedder.encode_queries([pq.query for pq in held_out])
    base_top1 = check.score(queries, vectors, config.hybrid, config.window)
    log.info("held-out top-1 before adapting: %.4f", base_top1)
    return _Corpus(docs, pseudo, training, check, base_top1, encode_seconds)


@dataclass
class _Training:
    """The student, its optimizer and schedule, and what the slices gave."""

    config: AdaptConfig
    student: _BiEncoder
    miner: _Miner
    rng: random.Random
    deadline: float
    reserve: float
    """Seconds kept back per remaining slice for its export and check."""
    history: list[dict[str, Any]]
    step: int = 0
    seconds: float = 0.0
    stopped: str = "budget"

    def __post_init__(self) -> None:
        config = self.config
        parameters = self.student.model.parameters()
        self.optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.01)
        per_epoch = max(1, len(self.miner.queries) // config.batch_size)
        total = config.max_steps if config.max_steps is not None else per_epoch
        self.schedule = _Schedule(self.optimizer, total, config.warmup_fraction)
        self.batches = self.miner.batches()

    def run_slice(self, n: int, bar: Any) -> list[float]:
        """Train slice ``n`` (of ``config.slices``) until its share of the time left, or its
        share of ``max_steps``; the losses of its steps."""
        config = self.config
        left = config.slices - n + 1
        end = time.monotonic() + max(0.0, self.deadline - time.monotonic() - left * self.reserve)
        end = time.monotonic() + (end - time.monotonic()) / left
        started = time.monotonic()
        mark = (started, self.step)
        losses: list[float] = []
        optimizers = (self.optimizer, self.schedule.scheduler)
        while (
            time.monotonic() < end
            and self.step < self.schedule.total
            and (config.max_steps is None or self.step < config.max_steps * n // config.slices)
        ):
            losses.append(_step(self.student, next(self.batches), self.rng, config, optimizers))
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            since = self.step - mark[1]
            if config.max_steps is None and since == (3 if len(losses) == 3 else 20):
                # the run is bounded by time: the schedule ends where the budget does, sized
                # after a slice's 3rd step and every 20 steps after (the first steps carry
                # warm-up costs; a step's time holds the mining of its batch)
                per_step = (time.monotonic() - mark[0]) / since
                budget = max(0.0, self.deadline - time.monotonic() - left * self.reserve)
                self.schedule.resize(self.step + int(budget / per_step))
                mark = (time.monotonic(), self.step)
        self.seconds += time.monotonic() - started
        return losses


def _slices(
    training: _Training, corpus: _Corpus, work: Path, name: str, export: Callable[..., Embedder]
) -> dict[str, Any]:
    """Each slice, then the check of its export; the best entry of the history."""
    config = training.config
    best = training.history[0]
    with tqdm(desc="adapting", unit="step", disable=not config.progress) as bar:
        for n in range(1, config.slices + 1):
            losses = training.run_slice(n, bar)
            if not losses and n > 1:  # the schedule ended in an earlier slice: nothing new
                break
            candidate = work / f"slice-{n}"
            if candidate.exists():
                shutil.rmtree(candidate)
            training.student.save(candidate / "checkpoint")
            adapted = export(candidate / "checkpoint", candidate / "embedder", name)
            vectors = adapted.encode(corpus.check.passages, progress=config.progress)
            queries = adapted.encode_queries(corpus.held_texts)
            score = corpus.check.score(queries, vectors, config.hybrid, config.window)
            mean_loss = round(float(np.mean(losses)), 4) if losses else None
            entry = {"step": training.step, "top1": score, "slice": n, "loss": mean_loss}
            training.history.append(entry)
            log.info("held-out top-1 after step %d: %.4f", training.step, score)
            if score > best["top1"]:
                best = entry
            elif score < best["top1"] - check_noise(best["top1"], len(corpus.held_texts)):
                training.stopped = f"the check fell by more than its standard error in slice {n}"
                break
            if time.monotonic() >= training.deadline:
                break
    return best


def check_noise(rate: float, n: int) -> float:
    """One standard error of a top-1 rate over ``n`` queries: a slice whose check falls by
    more stops the run; one within it may be the check's noise mid-schedule (the learning
    rate is highest there), and training goes on. Only a check above the embedder as it was
    is ever kept."""
    return math.sqrt(max(rate * (1.0 - rate), 1e-6) / max(1, n))


def _check_inputs(
    config: AdaptConfig, client: Elasticsearch, embedder: Embedder, pipeline: Pipeline
) -> str:
    """The index behind the alias, once the inputs can be adapted with."""
    if pipeline.first_stage is None or pipeline.scorer is None:
        raise ConfigError("adapting needs the first stage and a cross-encoder (the teacher)")
    behind = mappings.indices_behind_alias(client, config.alias)
    if not behind:
        raise IndexingError(f"alias {config.alias!r} does not exist; index a corpus first")
    recorded = mappings.index_meta(client, config.alias).get("embedder")
    if recorded and recorded != embedder.model_id:
        raise ConfigError(
            f"{config.alias} was embedded with {recorded}, not {embedder.model_id}: "
            "name the index's embedder with --embedder"
        )
    return behind[0]


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
    started, cpu_started = time.monotonic(), _cpu_seconds()
    deadline = started + 60.0 * config.minutes
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    index = _check_inputs(config, client, embedder, pipeline)
    out = Path(config.output)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    corpus = _corpus(config, client, index, embedder, rng)
    base_dir = torch_base(embedder, work)
    student = _BiEncoder(base_dir, _student_config(config, base_dir, work))
    training = _Training(
        config,
        student,
        _Miner(corpus.training, pipeline, corpus.docs, config, rng),
        rng,
        deadline,
        # each slice's check costs an export and an encoding of the corpus
        reserve=1.3 * corpus.encode_seconds + 40.0,
        history=[{"step": 0, "top1": corpus.base_top1}],
    )
    name = f"{embedder.card.get('name', embedder.model_dir.name)}-adapted-{config.alias}"
    best = _slices(training, corpus, work, name, export or _export)
    report = {
        **_report(config, corpus, embedder, pipeline, training.miner),
        "history": training.history,
        "chosen": best,
        "kept": "original" if best["step"] == 0 else "adapted",
        "stopped": training.stopped,
        "steps": training.step,
        "train_seconds": round(training.seconds, 1),
        "seconds": round(time.monotonic() - started, 1),
        "cpu_seconds": round(_cpu_seconds() - cpu_started, 1),
    }
    _keep(report, out, work / f"slice-{best.get('slice')}" / "embedder")
    return report


def _student_config(config: AdaptConfig, base_dir: Path, work: Path) -> EmbedderTrainConfig:
    return EmbedderTrainConfig(
        datasets=[Path(config.alias)],
        output=work,
        base_model=base_dir,
        query_max_length=config.query_max_length,
        passage_max_length=config.passage_max_length,
        threads=config.threads,
    )


def _report(
    config: AdaptConfig,
    corpus: _Corpus,
    embedder: Embedder,
    pipeline: Pipeline,
    miner: _Miner,
) -> dict[str, Any]:
    """What the run read and mined."""
    kinds = {
        k: sum(1 for pq in corpus.pseudo if pq.kind == k) for k in ("title", "sentence", "span")
    }
    return {
        "kind": "adapt",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "alias": config.alias,
        "index": corpus.docs.index,
        "documents": len(corpus.docs.ids),
        "base_embedder": embedder.model_id,
        "teacher": getattr(pipeline.scorer, "model_id", type(pipeline.scorer).__name__),
        "pseudo_queries": {
            "made": len(corpus.pseudo),
            **kinds,
            "held_out": len(corpus.check.queries),
        },
        "mining": miner.stats,
        "examples": len(miner.examples),
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
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "versions": package_versions(),
    }


def _keep(report: dict[str, Any], out: Path, chosen: Path) -> None:
    """Write the report, and the chosen slice's embedder (with the report in its card) when
    one beat the embedder as it was; drop the work folder."""
    final = out / "embedder"
    if final.exists():
        shutil.rmtree(final)
    if report["kept"] == "adapted":
        shutil.copytree(chosen, final)
        card = read_card(final, ENCODER_CARD)
        card["adapted"] = {k: v for k, v in report.items() if k not in ("config", "versions")}
        write_json_atomic(final / ENCODER_CARD, card)
    write_json_atomic(out / "adapt.json", report)
    shutil.rmtree(out / "work", ignore_errors=True)


def _export(checkpoint: Path, target: Path, name: str) -> Embedder:
    """The checkpoint as a shipped-style embedder folder: int8 only, as the default is."""
    from export.onnx_export import add_encoder_int8, export_encoder

    export_encoder(checkpoint, target, name=name, max_length=256)
    add_encoder_int8(target, keep_fp32=False)
    return Embedder(target)
