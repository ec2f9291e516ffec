"""Fine-tuning the first stage's embedder on a deployment's judged queries.

The dense half of the hybrid first stage is all-MiniLM-L6-v2, a bi-encoder trained on ~1B
sentence pairs (~25M of them Stack Exchange title–body pairs, ~42M S2ORC title–abstract
pairs). Fine-tuning it on the train qrels keeps all of that and adapts it to the corpus, and it
costs far less than the cross-encoder's training: each query and each passage is encoded once
per step, and every passage of a batch is a negative for every other query of the batch.

Loss: multiple-negatives ranking (InfoNCE over cosine × ``scale``): for each (query, positive)
of a batch, the other queries' positives and every query's one mined hard negative are the
negatives; a passage that is judged relevant to the query is masked, never a negative. Hard
negatives come from the query's hybrid window as the product builds it (BM25 + the current
embedder, linear min-max fusion), ranks below ``hard_negative_depth`` that are at least
``skip_around_positive`` ranks away from every positive (the ranks right around a positive hold
unjudged relevant passages too). A batch never holds the same query twice, and batches do not
mix datasets (cross-corpus negatives are too easy to teach anything).

The checkpoint kept is the one with the best mean held-out NDCG@10 of the *hybrid* list it
produces (Stack Exchange dev; SciFact's seeded 20 % train hold-out, the same queries the
first-stage-aware model holds out), with step 0 (the embedder as it was) a candidate. The
kept checkpoint is exported to ONNX (:func:`export.export_encoder`, fp32, plus a dynamic int8
variant): a folder that :class:`~reranker.retrieval.embedder.Embedder` loads and ``--embedder``
names.

Importing this module imports torch and transformers (the ``train`` extra).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from reranker.corpus import (
    DEV_HOLDOUT_FRACTION,
    DEV_HOLDOUT_SEED,
    passage_text,
    read_jsonl,
    split_queries,
)
from reranker.errors import ConfigError, SourceError
from reranker.metrics import ranking_metrics
from reranker.models import ENCODER_CONVENTIONS, encoder_conventions, write_json_atomic
from reranker.retrieval.first_stage import Hit, HybridOptions, fuse
from reranker.training.cross_encoder_config import default_base_model
from reranker.training.data import BM25, read_qrels
from reranker.training.losses import in_batch_loss
from reranker.training.toolbox import (
    autocast,
    backward_step,
    linear_warmup_schedule,
    package_versions,
    quiet_transformers,
    resolve_device,
    seed_everything,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
EMBEDDER_DIR = "embedder"
TRAIN_INFO_FILE = "train_info.json"


@dataclass
class EmbedderTrainConfig:
    datasets: list[Path]
    output: Path
    base_model: Path | None = None
    epochs: int = 2
    max_steps: int | None = None
    lr: float = 2e-5
    batch_size: int = 32
    scale: float = 20.0
    query_max_length: int = 64
    passage_max_length: int = 256
    hard_negative_depth: int = 30
    skip_around_positive: int = 3
    warmup_fraction: float = 0.1
    dev_fraction: float = DEV_HOLDOUT_FRACTION
    split_seed: int = DEV_HOLDOUT_SEED
    seed: int = 7
    threads: int | None = None
    bf16: bool | None = None
    cache_dir: Path | None = None
    name: str = "all-MiniLM-L6-v2-finetuned"

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigError("give at least one BEIR dataset folder to train on")
        if self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ConfigError("epochs and max steps must be at least 1")
        if self.batch_size < 2:
            raise ConfigError("the batch size must be at least 2 (in-batch negatives)")
        if not self.lr > 0 or not self.scale > 0:
            raise ConfigError("the learning rate and the scale must be positive")


# --------------------------------------------------------------------------------------------
# pure parts: examples, batches, the loss


@dataclass(frozen=True)
class Example:
    query: str
    positive: str
    """doc id"""
    hard_negatives: tuple[str, ...]
    """doc ids, best-ranked first"""


def training_examples(
    query: str,
    window: Sequence[str],
    judged: dict[str, int],
    *,
    depth: int = 30,
    skip: int = 3,
) -> list[Example]:
    """One example per judged-relevant passage of ``query``, each with the hard negatives of
    the ``window`` (doc ids in first-stage order): ranks above ``depth`` that are not judged
    relevant and lie at least ``skip`` ranks from every relevant one in the window; if that
    leaves none, the unjudged ranks ``depth``..2·``depth``."""
    relevant = {d for d, g in judged.items() if g > 0}
    ranks = [r for r, d in enumerate(window) if d in relevant]
    hard = [
        d
        for r, d in enumerate(window[:depth])
        if d not in relevant and all(abs(r - p) >= skip for p in ranks)
    ]
    if not hard:
        hard = [d for d in window[depth : 2 * depth] if d not in relevant]
    return [Example(query, d, tuple(hard)) for d in judged if judged[d] > 0]


def query_batches(
    examples: Sequence[Example], batch_size: int, rng: random.Random
) -> list[list[Example]]:
    """``examples`` shuffled into batches of at most ``batch_size`` in which no query appears
    twice (a second positive of the same query would be a false negative); a batch of a
    single example teaches nothing and is dropped."""
    pool = list(examples)
    rng.shuffle(pool)
    batches: list[list[Example]] = []
    while pool:
        batch: list[Example] = []
        seen: set[str] = set()
        rest: list[Example] = []
        for example in pool:
            if len(batch) < batch_size and example.query not in seen:
                batch.append(example)
                seen.add(example.query)
            else:
                rest.append(example)
        pool = rest
        if len(batch) > 1:
            batches.append(batch)
    return batches


# --------------------------------------------------------------------------------------------
# data


@dataclass
class _Corpus:
    name: str
    doc_ids: list[str]
    passages: dict[str, str]
    queries: dict[str, str]
    bm25: BM25
    train: dict[str, dict[str, int]]
    dev: dict[str, dict[str, int]]
    dev_lexical: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def _load_corpus(dataset: Path, config: EmbedderTrainConfig) -> _Corpus:
    qrels_dir = dataset / "qrels"
    if not (qrels_dir / "train.tsv").is_file():
        raise SourceError(f"{dataset}: no qrels/train.tsv to train on")
    train = read_qrels(qrels_dir / "train.tsv")
    test = qrels_dir / "test.tsv"
    if test.is_file() and set(train) & set(read_qrels(test)):
        raise SourceError(f"{dataset}: train queries that are test queries")
    if (qrels_dir / "dev.tsv").is_file():
        dev = read_qrels(qrels_dir / "dev.tsv")
    else:
        train, dev = split_queries(train, config.dev_fraction, config.split_seed)
    rows = {str(r["_id"]): r for _, r in read_jsonl(dataset / "corpus.jsonl")}
    queries = {str(r["_id"]): str(r["text"]) for _, r in read_jsonl(dataset / "queries.jsonl")}
    doc_ids = list(rows)
    passages = {d: passage_text(rows[d]) for d in doc_ids}
    corpus = _Corpus(
        name=dataset.name,
        doc_ids=doc_ids,
        passages=passages,
        queries=queries,
        bm25=BM25([passages[d] for d in doc_ids]),
        train={q: j for q, j in train.items() if q in queries},
        dev={q: j for q, j in dev.items() if q in queries},
    )
    corpus.dev_lexical = {q: corpus.bm25.top_k(queries[q], 100) for q in corpus.dev}
    return corpus


def _hybrid_window(
    corpus: _Corpus,
    lexical: list[tuple[int, float]],
    cosine: np.ndarray,
    depth: int = 100,
) -> list[Hit]:
    top = np.argsort(-cosine, kind="stable")[:depth]
    dense = [Hit(corpus.doc_ids[i], float(cosine[i])) for i in top]
    words = [Hit(corpus.doc_ids[i], s) for i, s in lexical]
    return fuse(words, dense, HybridOptions(fusion="linear", depth=depth), depth)


# --------------------------------------------------------------------------------------------
# the model


class _BiEncoder:
    """Unit-length embeddings of a Hugging Face encoder, pooled as its folder says (mean, or
    [CLS] for BGE; :func:`~reranker.models.encoder_conventions`), queries after its
    instruction."""

    def __init__(self, folder: Path, config: EmbedderTrainConfig) -> None:
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.conventions = encoder_conventions(folder)
        self.config = config
        #: CUDA where torch sees a GPU, else the CPU; bf16 autocast where the hardware has it
        self.device, self.bf16 = resolve_device(config.bf16)
        self.model.to(self.device)

    def embed(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """Unit-length embeddings of ``texts``, on :attr:`device`."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)
        with autocast(self.device, self.bf16 and self.model.training):
            hidden = self.model(**batch).last_hidden_state
        if self.conventions["pooling"] == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def as_queries(self, texts: Sequence[str]) -> list[str]:
        """``texts`` with the encoder's query instruction before each."""
        return [self.conventions["query_prefix"] + t for t in texts]

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        write_json_atomic(folder / ENCODER_CONVENTIONS, self.conventions)

    @torch.no_grad()
    def encode(
        self, texts: Sequence[str], max_length: int, batch_size: int = 64, label: str = ""
    ) -> np.ndarray:
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), int(self.model.config.hidden_size)), dtype=np.float32)
        with tqdm(total=len(texts), disable=not label, desc=label, unit="text") as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                out[chunk] = self.embed([texts[i] for i in chunk], max_length).cpu().numpy()
                bar.update(len(chunk))
        return out


def _corpus_vectors(encoder: _BiEncoder, corpus: _Corpus) -> np.ndarray:
    texts = [corpus.passages[d] for d in corpus.doc_ids]
    return encoder.encode(
        texts, encoder.config.passage_max_length, label=f"embedding {corpus.name}"
    )


def _windows(
    encoder: _BiEncoder,
    corpus: _Corpus,
    split: dict[str, dict[str, int]],
    lexical: bool,
    docs: np.ndarray | None = None,
) -> dict[str, list[Hit]]:
    """Each query's hybrid top 100 (``docs``: the corpus's vectors, if already encoded)."""
    config = encoder.config
    if docs is None:
        docs = _corpus_vectors(encoder, corpus)
    qids = list(split)
    vectors = encoder.encode(
        encoder.as_queries([corpus.queries[q] for q in qids]), config.query_max_length
    )
    out = {}
    for qid, vector in zip(qids, vectors, strict=True):
        words = (
            corpus.dev_lexical[qid]
            if lexical and qid in corpus.dev_lexical
            else corpus.bm25.top_k(corpus.queries[qid], 100)
        )
        out[qid] = _hybrid_window(corpus, words, docs @ vector)
    return out


def _dev_scores(
    encoder: _BiEncoder, corpora: Sequence[_Corpus], vectors: Sequence[np.ndarray] | None = None
) -> dict[str, float]:
    scores: dict[str, float] = {}
    for n, corpus in enumerate(corpora):
        docs = vectors[n] if vectors is not None else None
        windows = _windows(encoder, corpus, corpus.dev, lexical=True, docs=docs)
        run = {q: {h.id: h.score for h in hits} for q, hits in windows.items()}
        scores[corpus.name] = round(ranking_metrics(corpus.dev, run)["nDCG@10"], 4)
    scores["mean"] = round(float(np.mean([scores[c.name] for c in corpora])), 4)
    return scores


# --------------------------------------------------------------------------------------------
# training


def _examples(
    encoder: _BiEncoder, corpus: _Corpus, docs: Any, config: EmbedderTrainConfig
) -> list[Example]:
    """The corpus's training examples: each judged query's positive with hard negatives from
    its dense window as the embedder ranks it before training."""
    windows = _windows(encoder, corpus, corpus.train, lexical=False, docs=docs)
    examples = [
        example
        for qid, hits in windows.items()
        for example in training_examples(
            corpus.queries[qid],
            [h.id for h in hits],
            corpus.train[qid],
            depth=config.hard_negative_depth,
            skip=config.skip_around_positive,
        )
        if example.hard_negatives
    ]
    log.info("%s: %d training examples", corpus.name, len(examples))
    return examples


def _relevant(corpus: _Corpus) -> dict[str, set[str]]:
    """Each train query's text → its relevant documents (in-batch positives are not negatives)."""
    return {corpus.queries[q]: {d for d, g in j.items() if g > 0} for q, j in corpus.train.items()}


def _step(
    encoder: _BiEncoder,
    corpus: _Corpus,
    batch: list[Example],
    relevant_texts: dict[str, set[str]],
    rng: random.Random,
    config: EmbedderTrainConfig,
    optimizers: tuple[Any, Any],
) -> float:
    """One step of in-batch training with one sampled hard negative per query; its loss."""
    encoder.model.train()
    negatives = [rng.choice(e.hard_negatives) for e in batch]
    doc_ids = [e.positive for e in batch] + negatives
    queries = encoder.embed(encoder.as_queries([e.query for e in batch]), config.query_max_length)
    passages = encoder.embed([corpus.passages[d] for d in doc_ids], config.passage_max_length)
    relevant = torch.tensor(
        [[d in relevant_texts.get(e.query, ()) for d in doc_ids] for e in batch],
        device=encoder.device,
    )
    loss = in_batch_loss(queries, passages, relevant, config.scale)
    return backward_step(loss, encoder.model, optimizers, 1.0)


def _info(
    config: EmbedderTrainConfig,
    base: Path,
    corpora: list[_Corpus],
    examples: dict[str, list[Example]],
    run: dict[str, Any],
    history: list[dict[str, Any]],
    best: dict[str, Any],
) -> dict[str, Any]:
    """The training info written beside the checkpoint and the export."""
    return {
        "kind": "embedder",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": str(base),
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "datasets": {
            c.name: {
                "train_queries": len(c.train),
                "dev_queries": len(c.dev),
                "examples": len(examples[c.name]),
            }
            for c in corpora
        },
        "steps": run["steps"],
        "steps_per_epoch": run["steps_per_epoch"],
        "seconds": round(run["seconds"], 1),
        "selection": "best mean held-out NDCG@10 of the hybrid list (linear, min-max, top 100)",
        "history": history,
        "chosen": best,
        "versions": package_versions(),
    }


def train_embedder(config: EmbedderTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Fine-tune, keep the best held-out checkpoint, export it; returns the training info
    (also written to ``output/train_info.json``)."""
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    base = config.base_model or default_base_model()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    encoder = _BiEncoder(base, config)
    corpora = [_load_corpus(Path(d), config) for d in config.datasets]
    rng = random.Random(config.seed)
    examples: dict[str, list[Example]] = {}
    start_vectors = [_corpus_vectors(encoder, corpus) for corpus in corpora]
    for corpus, docs in zip(corpora, start_vectors, strict=True):
        examples[corpus.name] = _examples(encoder, corpus, docs, config)
    relevant_texts = {corpus.name: _relevant(corpus) for corpus in corpora}

    def epoch_plan() -> list[tuple[_Corpus, list[Example]]]:
        plan = [
            (corpus, batch)
            for corpus in corpora
            for batch in query_batches(examples[corpus.name], config.batch_size, rng)
        ]
        rng.shuffle(plan)
        return plan

    per_epoch = len(epoch_plan())
    if per_epoch == 0:
        raise SourceError("no training batch: the datasets have no judged passage in reach")
    total = per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer = torch.optim.AdamW(encoder.model.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = linear_warmup_schedule(optimizer, math.ceil(config.warmup_fraction * total), total)
    started = time.perf_counter()
    history = [{"step": 0, **_dev_scores(encoder, corpora, start_vectors)}]
    del start_vectors
    log.info("held-out hybrid NDCG@10 before training: %s", history[0])
    best = history[0]
    checkpoint = out / CHECKPOINT_DIR
    step = 0
    with tqdm(total=total, disable=not progress, desc="train", unit="step") as bar:
        for _epoch in range(config.epochs):
            for corpus, batch in epoch_plan():
                if step >= total:
                    break
                relevant = relevant_texts[corpus.name]
                loss = _step(encoder, corpus, batch, relevant, rng, config, (optimizer, schedule))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
            scores = {"step": step, **_dev_scores(encoder, corpora)}
            history.append(scores)
            log.info("held-out hybrid NDCG@10 after step %d: %s", step, scores)
            if scores["mean"] > best["mean"]:
                best = scores
                if checkpoint.exists():
                    shutil.rmtree(checkpoint)
                encoder.save(checkpoint)
            if step >= total:
                break
    if best["step"] == 0:
        log.warning("no step beat the embedder as it was on held-out queries; exporting it as is")
        if checkpoint.exists():
            shutil.rmtree(checkpoint)
        shutil.copytree(base, checkpoint)
    run = {"steps": step, "steps_per_epoch": per_epoch, "seconds": time.perf_counter() - started}
    info = _info(config, base, corpora, examples, run, history, best)
    (checkpoint / TRAIN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    from export.onnx_export import add_encoder_int8, export_encoder

    export_encoder(
        checkpoint, out / EMBEDDER_DIR, name=config.name, max_length=config.passage_max_length
    )
    add_encoder_int8(out / EMBEDDER_DIR)
    (out / TRAIN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
