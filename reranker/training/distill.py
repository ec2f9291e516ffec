"""Distil a small cross-encoder (a cascade's student) from an exported one (the teacher).

The teacher is an exported model folder (ONNX, as served): only its logits are needed, so no
torch checkpoint of it has to exist. The student is the first ``layers`` transformer layers
of a Hugging Face checkpoint (by default the shipped all-MiniLM-L6-v2) with a fresh one-label
head, trained to reproduce the teacher's ranking of each query's candidates:

- candidates: for each *train* query of each BEIR dataset (test queries are refused), the
  project's own hybrid first stage (:func:`reranker.rerank.pipeline.build_pipeline` with
  ``rerank=False``) returns its top ``window``; the top ``top`` and ``sampled`` random others
  (seeded per query) are kept, so the student sees the easy head and the long tail;
- teacher logits: :class:`~reranker.rerank.scorer.Scorer` on the exported teacher, behind the
  on-disk logit cache (:meth:`~reranker.rerank.scorer.CachedScorer.on_disk`), so a re-run costs no
  teacher time;
- loss: ``listwise-kl`` (KL divergence between the softmax of the teacher's and the
  student's logits over a query's candidates, at ``temperature``) or ``margin-mse`` (every
  score difference within a query, Hofstätter et al. 2020);
- tokenisation: the teacher's own ``tokenizer.json`` at the teacher's ``max_length``, copied
  into the student, so a cascade can check that both read the same tokens;
- checkpoint choice: queries held out of training (a dataset's ``dev`` qrels, else the
  project's seeded 20 % hold-out of its train queries, :data:`reranker.corpus.DEV_HOLDOUT_FRACTION`)
  are scored every ``eval_every`` steps; the step with the best mean NDCG@10 of the cascade
  (student top ``cascade_k`` of the held-out candidates re-ordered by the teacher) is kept.

The output folder is a Hugging Face checkpoint (``config.json``, ``model.safetensors``, the
tokenizer) with ``train_info.json`` recording the teacher (id, version, variant, tokenizer
sha256, max_length), the layers, the data, the loss and the held-out curve; ``reranker export
OUTPUT FOLDER --int8`` turns it into a model folder whose card carries all of that.

Importing this module imports torch and transformers (the ``train`` extra); import it lazily.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from reranker.batching import head_scores, plan_batches
from reranker.errors import ConfigError, ModelError, SourceError
from reranker.metrics import ranking_metrics
from reranker.models import load_tokenizer, shipped_weights_dir
from reranker.rerank.cascade import cascade_order, cascade_split
from reranker.training.checkpoints import check_checkpoint_dir, load_cross_encoder
from reranker.training.cross_encoder_config import TRAIN_INFO_FILE
from reranker.training.dev import Feature, collate
from reranker.training.distill_config import DistillConfig
from reranker.training.distill_data import (
    CandidateGroup,
    load_teacher,
    mine_candidates,
    query_splits,
    score_groups,
    teacher_record,
)
from reranker.training.losses import listwise_kl_loss, margin_mse_loss
from reranker.training.toolbox import (
    adamw_with_warmup,
    autocast,
    backward_step,
    environment,
    loss_curve,
    quiet_transformers,
    resolve_device,
    seed_everything,
)

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch
    from transformers import PreTrainedModel

    from reranker.rerank.scorer import PairScorer
    from reranker.retrieval.embed_cache import EmbeddingCache, TextEncoder

log = logging.getLogger(__name__)


def check_output_dir(out: Path, overwrite: bool) -> None:
    occupied = out.exists() and any(
        (out / name).exists() for name in ("config.json", TRAIN_INFO_FILE, "model.safetensors")
    )
    if occupied and not overwrite:
        raise ConfigError(f"{out} already holds a model; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")


# --------------------------------------------------------------------------------------------
# held-out metrics


def held_out_metrics(
    groups: Sequence[CandidateGroup], student: Sequence[np.ndarray], k: int
) -> dict[str, float]:
    """On one dataset's held-out groups: NDCG@10 of the student, the teacher and the cascade
    (student top ``k`` re-ordered by the teacher), the mean KL(teacher ‖ student), and the
    share of the teacher's top 10 inside the student's top ``k``."""
    qrels = {g.query_id: dict(zip(g.doc_ids, g.grades, strict=True)) for g in groups}
    runs: dict[str, dict[str, dict[str, float]]] = {"student": {}, "teacher": {}, "cascade": {}}
    kls: list[float] = []
    recalls: list[float] = []
    for group, scores in zip(groups, student, strict=True):
        n = len(group.doc_ids)
        runs["student"][group.query_id] = dict(zip(group.doc_ids, map(float, scores), strict=True))
        runs["teacher"][group.query_id] = dict(
            zip(group.doc_ids, map(float, group.teacher), strict=True)
        )
        head, _ = cascade_split(scores.tolist(), k)
        order = cascade_order(scores.tolist(), group.teacher[head].tolist(), k)
        runs["cascade"][group.query_id] = {
            group.doc_ids[i]: float(n - r) for r, i in enumerate(order)
        }
        t = torch.from_numpy(group.teacher.astype(np.float32))
        s = torch.from_numpy(np.asarray(scores, dtype=np.float32))
        kls.append(float(listwise_kl_loss(s, t, [n])))
        teacher_top = set(np.argsort(-group.teacher, kind="stable")[:10].tolist())
        student_top = set(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())
        recalls.append(len(teacher_top & student_top) / len(teacher_top))
    out = {f"{name}_nDCG@10": ranking_metrics(qrels, run)["nDCG@10"] for name, run in runs.items()}
    out["kl"] = float(np.mean(kls))
    out[f"teacher_top10_in_student_top{k}"] = float(np.mean(recalls))
    out["queries"] = float(len(groups))
    return out


# --------------------------------------------------------------------------------------------
# the student


def encode_groups(
    groups: Sequence[CandidateGroup], tokenizer_json: Path, max_length: int
) -> list[list[Feature]]:
    """Each group's pairs tokenised as the served scorer does (the teacher's tokenizer,
    longest-first truncation at ``max_length``)."""
    tokenizer = load_tokenizer(tokenizer_json, max_length)
    out: list[list[Feature]] = []
    for group in groups:
        encodings = tokenizer.encode_batch(group.pairs)
        out.append(
            [
                (np.asarray(e.ids, dtype=np.int32), np.asarray(e.type_ids, dtype=np.int8))
                for e in encodings
            ]
        )
    return out


def student_scores(
    model: PreTrainedModel,
    features: Sequence[Sequence[Feature]],
    *,
    device: torch.device,
    bf16: bool,
    batch_size: int = 64,
) -> list[np.ndarray]:
    """The student's logits for each group (length-sorted batches); leaves eval mode on."""
    flat = [f for group in features for f in group]
    out = np.zeros(len(flat), dtype=np.float32)
    model.train(False)
    with torch.inference_mode():
        for chunk in plan_batches([len(ids) for ids, _ in flat], batch_size, None):
            batch = collate([flat[i] for i in chunk], 0, device)
            with autocast(device, bf16):
                logits = model(**batch).logits
            out[chunk] = head_scores(logits.float()).cpu().numpy()
    groups, start = [], 0
    for group in features:
        groups.append(out[start : start + len(group)])
        start += len(group)
    return groups


def load_student(base: Path, layers: int) -> PreTrainedModel:
    """The first ``layers`` layers of ``base`` with a fresh one-label head."""
    check_checkpoint_dir(base)
    config_path = base / "config.json"
    try:
        available = int(json.loads(config_path.read_text(encoding="utf-8"))["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{config_path}: no num_hidden_layers ({exc})") from exc
    if layers > available:
        raise ConfigError(f"{base} has {available} layers; a {layers}-layer student cannot be cut")
    model, _, _ = load_cross_encoder(base, "eager", num_hidden_layers=layers)
    return model


def save_student(model: PreTrainedModel, base: Path, teacher_tokenizer: Path, out: Path) -> None:
    """``save_pretrained`` into ``out`` with the base's tokenizer files, ``tokenizer.json``
    being the teacher's own file (byte for byte: its sha256 is what a cascade checks)."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    model.config.id2label = {0: "relevance"}
    model.config.label2id = {"relevance": 0}
    with quiet_transformers():
        model.save_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        tokenizer.save_pretrained(out)
    shutil.copy2(teacher_tokenizer, out / "tokenizer.json")


def train_student(
    config: DistillConfig,
    teacher: dict[str, Any],
    train_groups: Sequence[CandidateGroup],
    dev_groups: Sequence[CandidateGroup],
    *,
    data: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the student on ``train_groups`` (teacher logits filled), keep the step with the
    best held-out cascade NDCG@10 in ``config.output_dir``; returns ``train_info.json``."""
    started = time.monotonic()
    if not train_groups:
        raise SourceError("no training queries with candidates")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    where = resolve_device(config.bf16)
    device, bf16 = where
    base = config.base_model if config.base_model is not None else shipped_weights_dir()
    tokenizer_json = Path(teacher["path"]) / "tokenizer.json"
    max_length = int(teacher["max_length"])
    model = load_student(base, config.layers)
    model.to(device)  # type: ignore[arg-type]  # transformers' stub for .to is too narrow
    train_features = encode_groups(train_groups, tokenizer_json, max_length)
    dev_features = encode_groups(dev_groups, tokenizer_json, max_length)
    teacher_logits = [torch.from_numpy(g.teacher.astype(np.float32)) for g in train_groups]
    source = f"{config.layers}-layer student of {base} from {teacher['model_id']}"
    total, optimizers = _plan(model, config, train_groups, len(dev_groups), source, where)
    losses: list[float] = []
    curve: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None

    def evaluate(step: int) -> None:
        nonlocal best
        entry = _evaluate(model, dev_groups, dev_features, config.cascade_k, device, bf16)
        entry["step"] = step
        curve.append(entry)
        model.train()
        log.info("held-out after step %d: %s", step, json.dumps(_rounded(entry)))
        if best is None or (entry["selection"], -entry["kl"]) > (best["selection"], -best["kl"]):
            best = entry
            save_student(model, base, tokenizer_json, config.output_dir)
            write_info(step)  # a run stopped later still leaves an exportable checkpoint

    def write_info(step: int) -> dict[str, Any]:
        run = {"teacher": teacher, "data": data or {}, "steps": step, "steps_planned": total}
        info = _info(config, base, max_length, run, best, curve, losses, (device, bf16), started)
        (config.output_dir / TRAIN_INFO_FILE).write_text(
            json.dumps(info, indent=2) + "\n", encoding="utf-8"
        )
        return info

    model.train()
    step = 0
    with tqdm(total=total, desc="distil", unit="step", disable=not progress) as bar:
        for epoch in range(config.epochs):
            order = np.random.default_rng([config.seed, epoch]).permutation(len(train_groups))
            for start in range(0, len(order), config.queries_per_step):
                if step >= total:
                    break
                chosen = order[start : start + config.queries_per_step].tolist()
                group_rows = [train_features[i] for i in chosen]
                targets = [teacher_logits[i] for i in chosen]
                losses.append(_step(model, optimizers, group_rows, targets, config, where))
                step += 1
                recent = losses[-50:]
                bar.update(1)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
                if step % 50 == 0:
                    log.info("step %d/%d loss %.4f", step, total, sum(recent) / len(recent))
                if step % config.eval_every == 0 and dev_groups:
                    evaluate(step)
    if not dev_groups:
        save_student(model, base, tokenizer_json, config.output_dir)
    elif not curve or curve[-1]["step"] != step:
        evaluate(step)
    return write_info(step)


def _plan(
    model: PreTrainedModel,
    config: DistillConfig,
    train_groups: Sequence[CandidateGroup],
    dev: int,
    source: str,
    where: tuple[torch.device, bool],
) -> tuple[int, tuple[Any, Any]]:
    """The steps to run, and the optimizer with its schedule over them (said in the log)."""
    steps_per_epoch = -(-len(train_groups) // config.queries_per_step)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    log.info(
        "distilling %s: %d train queries (%d pairs), %d held-out, %s loss, %d steps of %d "
        "queries, device %s, bf16 %s, threads %d",
        source, len(train_groups), sum(len(g.passages) for g in train_groups), dev, config.loss,
        total, config.queries_per_step, where[0], where[1], torch.get_num_threads(),
    )  # fmt: skip
    optimizer, scheduler = adamw_with_warmup(
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        total_steps=total,
    )
    return total, (optimizer, scheduler)


def _step(
    model: PreTrainedModel,
    optimizers: tuple[Any, Any],
    group_rows: list[list[Feature]],
    targets: list[torch.Tensor],
    config: DistillConfig,
    where: tuple[torch.device, bool],
) -> float:
    """One optimizer step on some queries' candidate rows and the teacher's logits of them;
    its loss."""
    device, bf16 = where
    rows = [row for group in group_rows for row in group]
    sizes = [len(group) for group in group_rows]
    target = torch.cat(targets).to(device)
    batch = collate(rows, 0, device)
    with autocast(device, bf16):
        logits = head_scores(model(**batch).logits.float())
    loss: Any
    if config.loss == "margin-mse":
        loss = margin_mse_loss(logits.float(), target, sizes)
    else:
        loss = listwise_kl_loss(logits.float(), target, sizes, config.temperature)
    return backward_step(loss, model, optimizers, config.max_grad_norm)


def _info(
    config: DistillConfig,
    base: Path,
    max_length: int,
    run: dict[str, Any],
    best: dict[str, Any] | None,
    curve: list[dict[str, Any]],
    losses: list[float],
    where: tuple[torch.device, bool],
    started: float,
) -> dict[str, Any]:
    """``train_info.json`` of a distillation run so far."""
    device, bf16 = where
    return {
        "format": 1,
        "kind": "cross-encoder",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": f"{base} (first {config.layers} layers)",
        "max_length": max_length,
        "loss": config.loss,
        "distillation": {
            "teacher": run["teacher"],
            "layers": config.layers,
            "loss": config.loss,
            "temperature": config.temperature if config.loss == "listwise-kl" else None,
            "data": run["data"],
            "steps": run["steps"],
            "steps_planned": run["steps_planned"],
            "chosen": best,
            "selection": f"held-out NDCG@10 of the cascade at k={config.cascade_k} "
            "(mean over datasets; ties: lower KL)",
        },
        "steps": run["steps"],
        "held_out": curve,
        "loss_curve": loss_curve(losses, 50),
        "device": str(device),
        "bf16": bf16,
        "threads": torch.get_num_threads(),
        "seconds": round(time.monotonic() - started, 1),
        "config": config.to_json(),
        **environment(),
    }


def _evaluate(
    model: PreTrainedModel,
    groups: Sequence[CandidateGroup],
    features: Sequence[Sequence[Feature]],
    k: int,
    device: torch.device,
    bf16: bool,
) -> dict[str, Any]:
    scores = student_scores(model, features, device=device, bf16=bf16)
    by_dataset: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(g.dataset for g in groups):
        picked = [i for i, g in enumerate(groups) if g.dataset == name]
        by_dataset[name] = held_out_metrics(
            [groups[i] for i in picked], [scores[i] for i in picked], k
        )
    selection = float(np.mean([m["cascade_nDCG@10"] for m in by_dataset.values()]))
    kl = float(np.mean([m["kl"] for m in by_dataset.values()]))
    return {"selection": selection, "kl": kl, "datasets": by_dataset}


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------
# the whole run


def distill(
    config: DistillConfig,
    client: Elasticsearch,
    encoder: TextEncoder | None,
    *,
    score_cache: Path | None = None,
    embedding_cache: EmbeddingCache | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Mine, score with the teacher, train the student (see the module docstring).

    Each dataset's ``beir-<name>`` index is (re)built first when it is missing or holds another
    corpus or another embedder's vectors (:func:`ensure_dataset_index`, as ``eval`` does), so
    the mined hybrid candidates never come from query vectors of a foreign embedding space."""
    from reranker.evaluation.runs import ensure_dataset_index
    from reranker.rerank.cache import CachedScorer

    teacher_scorer = load_teacher(config.teacher)
    teacher = teacher_record(teacher_scorer)
    check_output_dir(config.output_dir, config.overwrite)
    splits = {
        d: query_splits(d, dev_max_queries=config.dev_max_queries, seed=config.seed)
        for d in config.datasets
    }
    scorer: PairScorer = (
        CachedScorer.on_disk(teacher_scorer, score_cache) if score_cache else teacher_scorer
    )
    train_groups: list[CandidateGroup] = []
    dev_groups: list[CandidateGroup] = []
    data: dict[str, Any] = {}
    for dataset, (train_qrels, dev_qrels) in splits.items():
        if config.max_queries is not None and len(train_qrels) > config.max_queries:
            kept = random.Random(config.seed).sample(sorted(train_qrels), config.max_queries)
            train_qrels = {q: train_qrels[q] for q in sorted(kept)}
        if encoder is not None:
            alias = f"beir-{dataset.name.lower()}"
            ensure_dataset_index(
                client, dataset, alias, encoder, cache=embedding_cache, progress=progress,
                rescorer=None, check_rescore=False,  # mining reads the first stage alone
            )  # fmt: skip
        mined = mine_candidates(dataset, train_qrels, client, encoder, config, label="train",
                                progress=progress)  # fmt: skip
        held = mine_candidates(dataset, dev_qrels, client, encoder, config, label="held-out",
                               progress=progress)  # fmt: skip
        score_groups(scorer, [*mined, *held], progress=progress)
        train_groups.extend(mined)
        dev_groups.extend(held)
        data[dataset.name] = {
            "path": str(dataset),
            "first_stage": f"hybrid top-{config.window} of beir-{dataset.name.lower()}",
            "sampling": f"top {config.top} + {config.sampled} random of ranks "
            f"{config.top + 1}-{config.window}",
            "train_queries": len(mined),
            "train_pairs": sum(len(g.passages) for g in mined),
            "held_out_queries": len(held),
            "held_out": "qrels/dev.tsv" if (dataset / "qrels" / "dev.tsv").is_file()
            else "seeded 20% hold-out of qrels/train.tsv",
        }  # fmt: skip
        log.info("%s: %s", dataset.name, json.dumps(data[dataset.name]))
    return train_student(config, teacher, train_groups, dev_groups, data=data, progress=progress)


__all__ = ["distill", "train_student"]
