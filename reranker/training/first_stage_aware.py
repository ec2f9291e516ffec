"""The first-stage-aware cross-encoder: a score that starts where the first stage is.

    score(q, d) = first_stage_features(q, d) · w  +  head(mean_pool(encoder([q; d])))

``w`` starts at ``(scale, 0, 0)`` over (:data:`~reranker.rerank.features.FEATURE_NAMES`)
and the head's weights and bias start at zero, so an untrained model ranks every window exactly
as the fused first stage did; training can only add corrections that the loss pays for. The
first stage carries what the bi-encoder (all-MiniLM-L6-v2, trained on ~25M Stack Exchange and
~42M S2ORC pairs) already knows through the ``dense`` feature, which a fresh classification
head would throw away.

Training (:func:`train_aware`) is listwise over hybrid candidates mined in process the way the
product's first stage builds them (BM25 top-``depth`` and dense top-``depth``, linear min-max
fusion, top ``window``): per positive, one group of the positive, hard negatives from the window
that skip the ranks right around any positive (likely unjudged relevant documents), and
negatives from deeper in the window. Negatives are drawn afresh each epoch. The checkpoint
kept is the one with the best mean dev NDCG@10 (held-out queries only).

A saved model is a folder with the encoder (``save_pretrained``), its tokenizer, and
``first_stage_aware.json`` + ``head.safetensors`` for the head and ``w``. Importing this
module imports torch and transformers (the ``train`` extra); import it lazily.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from reranker.corpus import DEV_HOLDOUT_FRACTION, DEV_HOLDOUT_SEED, split_queries
from reranker.errors import ConfigError, SourceError
from reranker.metrics import ranking_metrics
from reranker.rerank.features import (
    FEATURE_NAMES,
    NORMALIZATION,
)
from reranker.rerank.heads import CLICK_HEAD, DOCUMENT_HEADS, RELEVANCE
from reranker.training.aware_model import (
    FirstStageAwareModel,
    is_aware_checkpoint,
    load_aware,
    load_pretrained_encoder,
    save_aware,
)
from reranker.training.cross_encoder_config import default_base_model
from reranker.training.data import read_qrels
from reranker.training.dev import collate, encode_pairs, score_pairs
from reranker.training.heads import (
    ClickTargets,
    SignalTargets,
    click_loss,
    click_targets,
    judged_documents,
    signal_loss,
    signal_targets,
)
from reranker.training.losses import listwise_loss
from reranker.training.mining import Group, HybridData, listwise_hybrid_groups, mine_hybrid_windows
from reranker.training.toolbox import (
    autocast,
    backward_step,
    linear_warmup_schedule,
    package_versions,
    resolve_device,
    seed_everything,
)

log = logging.getLogger(__name__)
#: steps between progress lines in the log
LOG_EVERY = 50
TRAIN_INFO_FILE = "train_info.json"


# --------------------------------------------------------------------------------------------
# training


@dataclass(kw_only=True)
class AwareTrainConfig:
    datasets: list[Path]
    """BEIR folders; their ``train`` qrels are the training queries (test is never read)."""
    output_dir: Path
    base_model: Path | None = None
    dev_fraction: float = DEV_HOLDOUT_FRACTION
    """Train queries held out for checkpoint selection, per dataset without a dev split."""
    dev_window: int = 30
    dev_max_queries: int = 150
    window: int = 100
    max_length: int = 256
    groups_per_step: int = 4
    group_size: int = 8
    hard_negatives: int = 4
    skip_around: int = 2
    hard_depth: int = 30
    lr: float = 2e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 4
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    initial_scale: float = 5.0
    seed: int = 13
    """Sampling and initialisation; a continued run takes another seed to see other negatives."""
    split_seed: int = DEV_HOLDOUT_SEED
    """The held-out dev queries: fixed, so that a continued run never trains on the queries
    that picked its starting checkpoint (and the blends fitted on them stay honest)."""
    threads: int | None = None
    bf16: bool | None = None
    cache_dir: Path | None = None
    max_steps: int | None = None
    eval_every: int | None = None
    """Also evaluate (and keep the best checkpoint) every this many steps, not only per
    epoch: on a CPU an epoch is an hour."""
    signal_heads: tuple[str, ...] = ()
    """Multi-task: signal heads trained beside relevance (:mod:`reranker.training.heads`)."""
    loss_weights: dict[str, float] | None = None
    """Per head (``relevance`` and each signal head); 1.0 where not given."""
    click_events: Path | None = None
    """UBI events (JSON lines) the click-through head learns from (it needs them)."""
    click_min_examinations: float = 2.0
    """Pairs the click model thinks were examined fewer times train no click-through."""

    def __post_init__(self) -> None:
        self.datasets = [Path(p) for p in self.datasets]
        self.output_dir = Path(self.output_dir)
        if not self.datasets:
            raise ConfigError("no training datasets given")
        if not 0 <= self.dev_fraction < 1:
            raise ConfigError("dev_fraction must be in [0, 1)")
        if self.group_size < 2 or self.groups_per_step < 1 or self.epochs < 1:
            raise ConfigError("group_size ≥ 2, groups_per_step ≥ 1 and epochs ≥ 1 are required")
        if not 0 <= self.hard_negatives < self.group_size:
            raise ConfigError("hard_negatives must be below group_size")
        from reranker.training.heads import parse_heads, parse_loss_weights

        self.signal_heads = parse_heads(",".join((RELEVANCE, *self.signal_heads)))
        given = ",".join(f"{k}={v}" for k, v in (self.loss_weights or {}).items())
        self.loss_weights = parse_loss_weights(given, self.signal_heads)
        if self.click_events is not None:
            self.click_events = Path(self.click_events)
        if (CLICK_HEAD in self.signal_heads) != (self.click_events is not None):
            raise ConfigError(
                f"the {CLICK_HEAD} head learns from click events and click events train only "
                f"it: give both or neither (--heads ...,{CLICK_HEAD} --click-events FILE)"
            )
        if self.click_min_examinations < 0:
            raise ConfigError("the click-through head's minimum examinations must be ≥ 0")


@dataclass
class _DevData:
    name: str
    data: HybridData
    hybrid_ndcg: float


def _dev_ndcg(
    model: FirstStageAwareModel,
    tokenizer: PreTrainedTokenizerBase,
    dev: _DevData,
    config: AwareTrainConfig,
    bf16: bool,
) -> float:
    run: dict[str, dict[str, float]] = {}
    pairs, feats, keys = [], [], []
    for w in dev.data.windows:
        for r, doc_id in enumerate(w.doc_ids[: config.dev_window]):
            pairs.append((w.query, dev.data.passages[doc_id]))
            feats.append(w.features[r])
            keys.append((w.query_id, doc_id))
    scores = score_aware(model, tokenizer, pairs, np.stack(feats), config.max_length, bf16=bf16)
    for (qid, doc_id), s in zip(keys, scores.tolist(), strict=True):
        run.setdefault(qid, {})[doc_id] = s
    return ranking_metrics(dev.data.qrels, run)["nDCG@10"]


def score_aware(
    model: FirstStageAwareModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    features: np.ndarray,
    max_length: int,
    *,
    batch_size: int = 32,
    bf16: bool = False,
) -> np.ndarray:
    """Logits of pairs with their first-stage features (length-sorted batches)."""
    return score_pairs(
        model,  # type: ignore[arg-type]  # a torch module that takes the same batches
        tokenizer,
        pairs,
        max_length=max_length,
        batch_size=batch_size,
        bf16=bf16,
        first_stage=np.asarray(features, dtype=np.float32),
    )


def _dev_split(dataset: Path) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]] | None]:
    train_qrels = read_qrels(dataset / "qrels" / "train.tsv")
    dev_path = dataset / "qrels" / "dev.tsv"
    return train_qrels, (read_qrels(dev_path) if dev_path.is_file() else None)


def _test_qrels(dataset: Path) -> dict[str, dict[str, int]]:
    """The dataset's test qrels ({} without a test split)."""
    test = dataset / "qrels" / "test.tsv"
    return read_qrels(test) if test.is_file() else {}


def _refuse_test_overlap(
    dataset: Path, qrels: dict[str, dict[str, int]], test: dict[str, dict[str, int]]
) -> None:
    leaked = set(qrels) & set(test)
    if leaked:
        raise SourceError(f"{dataset}: {len(leaked)} train queries are test queries")


def _load_data(config: AwareTrainConfig) -> tuple[list[HybridData], list[_DevData]]:
    """Training windows and held-out dev windows of every dataset (see the module docstring)."""
    train_windows: list[HybridData] = []
    devs: list[_DevData] = []
    for dataset in config.datasets:
        train_qrels, dev_qrels = _dev_split(dataset)
        test_qrels = _test_qrels(dataset)
        _refuse_test_overlap(dataset, train_qrels, test_qrels)
        if dev_qrels is None:
            train_qrels, dev_qrels = split_queries(
                train_qrels, config.dev_fraction, config.split_seed
            )
        dev_ids = sorted(dev_qrels)
        if len(dev_ids) > config.dev_max_queries:
            dev_ids = sorted(
                random.Random(config.split_seed).sample(dev_ids, config.dev_max_queries)
            )
        log.info("%s: mining hybrid windows for %d train queries", dataset.name, len(train_qrels))
        mined = mine_hybrid_windows(
            dataset,
            {"train": train_qrels, "dev": {q: dev_qrels[q] for q in dev_ids}},
            window=config.window,
            cache_dir=config.cache_dir,
        )
        data, dev_data = mined["train"], mined["dev"]
        document_heads = tuple(h for h in config.signal_heads if h in DOCUMENT_HEADS)
        if document_heads:  # the click-through head's targets are per pair (_click_targets)
            held_out = judged_documents([dev_qrels, test_qrels])
            data.targets = signal_targets(dataset, document_heads, held_out)
            log.info(
                "%s: signal targets %s (%d held-out documents masked)",
                dataset.name, data.targets.counts(), len(held_out),
            )  # fmt: skip
        train_windows.append(data)
        hybrid_run = {
            w.query_id: {d: float(w.features[r, 0]) for r, d in enumerate(w.doc_ids)}
            for w in dev_data.windows
        }
        hybrid = ranking_metrics(dev_data.qrels, hybrid_run)["nDCG@10"]
        devs.append(_DevData(dataset.name, dev_data, hybrid))
        log.info(
            "%s: train recall@%d %.4f; dev %d queries, hybrid NDCG@10 %.4f",
            dataset.name,
            config.window,
            data.recall,
            len(dev_data.windows),
            hybrid,
        )
    return train_windows, devs


def _click_targets(
    config: AwareTrainConfig, train_windows: Sequence[HybridData]
) -> ClickTargets | None:
    """The click-through head's targets: pairs of the training queries only (a dev, test or
    held-out query's clicks would leak into the model)."""
    if config.click_events is None:
        return None
    queries = [w.query for d in train_windows for w in d.windows]
    clicks = click_targets(
        config.click_events, queries, min_examinations=config.click_min_examinations
    )
    log.info("click-through targets from %s: %s", config.click_events, clicks.counts())
    return clicks


def _epoch_groups(
    data: Sequence[HybridData], config: AwareTrainConfig, epoch: int
) -> list[tuple[Group, str]]:
    """One epoch's groups of every dataset (negatives drawn afresh per epoch), shuffled."""
    out = []
    for item in data:
        for group in listwise_hybrid_groups(
            item.windows,
            group_size=config.group_size,
            hard=config.hard_negatives,
            skip_around=config.skip_around,
            hard_depth=config.hard_depth,
            seed=config.seed * 1000 + epoch,
        ):
            out.append((group, item.name))
    random.Random(config.seed + epoch).shuffle(out)
    return out


def _initial_model(
    base: Path, config: AwareTrainConfig, device: torch.device
) -> tuple[FirstStageAwareModel, PreTrainedTokenizerBase, tuple[str, ...]]:
    """A fresh head on ``base``'s encoder, or, when ``base`` is itself a first-stage-aware
    checkpoint, that model with its head and feature weights (continued training); and the
    signal heads this run initialises (untrained at step 0)."""
    attn = "eager" if device.type == "cpu" else None
    if is_aware_checkpoint(base):
        model, tokenizer = load_aware(base, attn_implementation=attn)
        extra = set(model.signal_head_names) - set(config.signal_heads)
        if extra:
            raise ConfigError(
                f"{base} has signal heads {sorted(extra)} that this run does not train; "
                "name them in the heads"
            )
        hidden = int(model.encoder.config.hidden_size)
        fresh = tuple(h for h in config.signal_heads if h not in model.signal_heads)
        for name in fresh:  # fresh heads on a continued model
            model.signal_heads[name] = torch.nn.Linear(hidden, 1)
        return model.to(device), tokenizer, fresh
    tokenizer, encoder = load_pretrained_encoder(base, attn)
    model = FirstStageAwareModel(
        encoder, initial_scale=config.initial_scale, signal_heads=config.signal_heads
    )
    return model.to(device), tokenizer, config.signal_heads


def _optimizer(
    model: FirstStageAwareModel, config: AwareTrainConfig, total: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with the encoder at ``lr`` and the head and feature weights at ``head_lr``."""
    encoder_params = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": config.lr, "weight_decay": config.weight_decay},
            {"params": head_params, "lr": config.head_lr, "weight_decay": 0.0},
        ]
    )
    return optimizer, linear_warmup_schedule(optimizer, int(config.warmup_ratio * total), total)


@dataclass
class _Trainer:
    """The state one training run carries from step to step."""

    model: FirstStageAwareModel
    tokenizer: PreTrainedTokenizerBase
    config: AwareTrainConfig
    passages: dict[str, str]
    device: torch.device
    bf16: bool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    targets: dict[str, SignalTargets]
    """per dataset name (multi-task training only)"""
    clicks: ClickTargets | None = None
    """the click-through head's targets (when the model has that head)"""
    last_losses: dict[str, float] | None = None
    """each head's loss at the last step"""

    def step(self, chosen: Sequence[tuple[Group, str]]) -> float:
        """One optimizer step over ``chosen`` groups; returns the weighted total loss (the
        listwise loss alone for a single-task model)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        queries = [g.query for g, _ in chosen for _ in g.doc_ids]
        texts = [self.passages[f"{name}/{d}"] for g, name in chosen for d in g.doc_ids]
        encoded = encode_pairs(self.tokenizer, queries, texts, self.config.max_length)
        batch = collate(encoded, pad, self.device)
        features = np.concatenate([g.features for g, _ in chosen])
        batch["first_stage"] = torch.from_numpy(features).to(self.device)
        with autocast(self.device, self.bf16):
            logits, predicted = self.model.forward_heads(**batch)
        logits = logits.float().reshape(-1)
        losses = {RELEVANCE: listwise_loss(logits, [len(g.doc_ids) for g, _ in chosen])}
        heads = self.model.signal_head_names
        document_heads = tuple(h for h in heads if h in DOCUMENT_HEADS)
        if document_heads:
            rows = [self.targets[name].rows(g.doc_ids) for g, name in chosen]
            values = np.concatenate([r[0] for r in rows])
            usable = np.concatenate([r[1] for r in rows])
            losses |= signal_loss(predicted, values, usable, document_heads)
        if CLICK_HEAD in heads and self.clicks is not None:  # per pair, not per document
            doc_ids = [d for g, _ in chosen for d in g.doc_ids]
            click_values, click_usable = self.clicks.rows(queries, doc_ids)
            losses[CLICK_HEAD] = click_loss(predicted[CLICK_HEAD], click_values, click_usable)
        weights = self.config.loss_weights or {}
        loss: Any = sum(weights.get(k, 1.0) * v for k, v in losses.items())
        self.last_losses = {k: float(v.detach()) for k, v in losses.items()}
        return backward_step(
            loss, self.model, (self.optimizer, self.scheduler), self.config.max_grad_norm
        )

    def evaluate(self, devs: Sequence[_DevData], step: int) -> dict[str, float]:
        values = {
            d.name: _dev_ndcg(self.model, self.tokenizer, d, self.config, self.bf16) for d in devs
        }
        self.model.train()
        values["mean"] = float(np.mean(list(values.values())))
        values["step"] = float(step)
        log.info("dev NDCG@10 after step %d: %s", step, values)
        return values


def train_aware(config: AwareTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train a first-stage-aware cross-encoder; returns the ``train_info.json`` content.

    ``output_dir/best`` always holds the checkpoint with the best mean held-out NDCG@10 so far
    (step 0 included, unless the run adds signal heads: untrained, they would predict noise),
    ``output_dir/last`` the latest evaluated one; both are written after every epoch and every
    ``eval_every`` steps. When training ends, the best is copied into
    ``output_dir`` itself with ``train_info.json``.
    """
    started = time.monotonic()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device, bf16 = resolve_device(config.bf16)
    base = config.base_model or default_base_model()
    train_windows, devs = _load_data(config)
    clicks = _click_targets(config, train_windows)
    model, tokenizer, fresh_heads = _initial_model(base, config, device)
    # a step-0 model with freshly initialised signal heads would predict noise: never keep it
    step0_eligible = not fresh_heads
    first = _epoch_groups(train_windows, config, 0)
    total = math.ceil(len(first) / config.groups_per_step) * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    trainer = _make_trainer(model, tokenizer, config, train_windows, (device, bf16), total, clicks)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    dev_curve = [trainer.evaluate(devs, 0)]
    if step0_eligible:
        save_aware(model, tokenizer, out / "best")

    def checkpoint(step: int, epoch: float) -> None:
        metrics = trainer.evaluate(devs, step) | {"epoch": round(epoch, 4)}
        kept = _eligible(dev_curve, step0_eligible)
        if not kept or metrics["mean"] > max(m["mean"] for m in kept):
            save_aware(model, tokenizer, out / "best")
        dev_curve.append(metrics)
        save_aware(model, tokenizer, out / "last")

    losses: list[float] = []
    head_losses: list[dict[str, float]] = []
    step = 0
    model.train()
    bar = tqdm(total=total, disable=not progress, desc="train", unit="step", mininterval=30)
    window_started = time.monotonic()
    for epoch in range(config.epochs):
        groups = first if epoch == 0 else _epoch_groups(train_windows, config, epoch)
        for start in range(0, len(groups), config.groups_per_step):
            if step >= total:
                break
            losses.append(trainer.step(groups[start : start + config.groups_per_step]))
            head_losses.append(trainer.last_losses or {})
            step += 1
            bar.update(1)
            if step % LOG_EVERY == 0:
                _log_progress(
                    model, config, (step, total, epoch), losses, head_losses, window_started
                )
                window_started = time.monotonic()
            if config.eval_every and step % config.eval_every == 0:
                checkpoint(step, epoch + start / max(1, len(groups)))
        if not dev_curve or dev_curve[-1]["step"] != float(step):
            checkpoint(step, float(epoch + 1))
        if step >= total:
            break
    bar.close()
    kept = _eligible(dev_curve, step0_eligible)
    info = _train_info(config, base, train_windows, devs, dev_curve, kept, step, bf16, device)
    if config.signal_heads:
        info["heads"] = _heads_info(config, train_windows, head_losses, clicks)
    info["seconds"] = round(time.monotonic() - started, 1)
    _finish(out, info)
    return info


def _make_trainer(
    model: FirstStageAwareModel,
    tokenizer: Any,
    config: AwareTrainConfig,
    train_windows: Sequence[HybridData],
    where: tuple[torch.device, bool],
    total: int,
    clicks: ClickTargets | None,
) -> _Trainer:
    """The trainer of ``total`` steps over the train windows' passages and signal targets."""
    device, bf16 = where
    optimizer, scheduler = _optimizer(model, config, total)
    return _Trainer(
        model=model,
        tokenizer=tokenizer,
        config=config,
        passages={f"{d.name}/{k}": v for d in train_windows for k, v in d.passages.items()},
        device=device,
        bf16=bf16,
        optimizer=optimizer,
        scheduler=scheduler,
        targets={d.name: d.targets for d in train_windows if d.targets is not None},
        clicks=clicks,
    )


def _log_progress(
    model: FirstStageAwareModel,
    config: AwareTrainConfig,
    where: tuple[int, int, int],
    losses: list[float],
    head_losses: list[dict[str, float]],
    since: float,
) -> None:
    """The last :data:`LOG_EVERY` steps: mean loss (and each head's), the feature weights,
    and pairs per second since ``since``."""
    step, total, epoch = where
    rate = LOG_EVERY * config.groups_per_step * config.group_size / (time.monotonic() - since)
    weights = [round(float(v), 3) for v in model.feature_weights.detach()]
    per_head = {
        k: round(float(np.mean([h[k] for h in head_losses[-LOG_EVERY:]])), 4)
        for k in head_losses[-1]
    }
    log.info(
        "step %d/%d epoch %d loss %.4f %s w %s %.1f pairs/s",
        step, total, epoch, float(np.mean(losses[-LOG_EVERY:])), per_head, weights, rate,
    )  # fmt: skip


def _train_info(
    config: AwareTrainConfig,
    base: Path,
    train_windows: Sequence[HybridData],
    devs: Sequence[_DevData],
    dev_curve: list[dict[str, float]],
    kept: list[dict[str, float]],
    step: int,
    bf16: bool,
    device: torch.device,
) -> dict[str, Any]:
    """``kept``: the evaluated checkpoints that could be kept (``chosen`` is the best)."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    settings["datasets"] = [str(p) for p in config.datasets]
    return {
        "format": 1,
        "kind": "first-stage-aware-cross-encoder",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": str(base),
        "max_length": config.max_length,
        "features": list(FEATURE_NAMES),
        "feature_normalization": NORMALIZATION,
        "first_stage": "in-process BM25 (k1 0.9, b 0.4) top-100 + all-MiniLM-L6-v2 cosine "
        "top-100, linear min-max fusion (weights 1, 1)",
        "data": {
            d.name: {"train_queries": len(d.windows), "recall@window": round(d.recall, 4)}
            for d in train_windows
        },
        "dev": {
            d.name: {"queries": len(d.data.windows), "hybrid_nDCG@10": d.hybrid_ndcg} for d in devs
        },
        "dev_curve": dev_curve,
        "chosen": max(kept, key=lambda m: m["mean"]),
        "steps": step,
        "loss": "listwise softmax CE (1 positive + group_size-1 hybrid negatives)",
        "config": settings,
        "command": list(sys.argv),
        "versions": package_versions(),
        "bf16": bf16,
        "device": str(device),
    }


def _eligible(dev_curve: list[dict[str, float]], step0: bool) -> list[dict[str, float]]:
    """The evaluated checkpoints that may be kept (step 0 only when its heads are trained)."""
    return [m for m in dev_curve if step0 or m["step"] > 0]


def _heads_info(
    config: AwareTrainConfig,
    train_windows: Sequence[HybridData],
    head_losses: Sequence[dict[str, float]],
    clicks: ClickTargets | None = None,
) -> dict[str, Any]:
    tail = head_losses[-50:]
    losses = {
        RELEVANCE: "listwise softmax CE",
        **{
            head: "MSE of sigmoid(head) against the preset's signal"
            for head in config.signal_heads
            if head in DOCUMENT_HEADS
        },
    }
    targets: dict[str, Any] = {
        d.name: d.targets.counts() for d in train_windows if d.targets is not None
    }
    if clicks is not None:
        losses[CLICK_HEAD] = (
            "BCE of sigmoid(head) against the position-based click model's attractiveness of "
            "each (training query, document) pair"
        )
        targets[CLICK_HEAD] = {"events": str(config.click_events), **clicks.counts()}
    return {
        "names": [RELEVANCE, *config.signal_heads],
        "loss_weights": config.loss_weights,
        "losses": losses,
        "targets": targets,
        "held_out": "documents judged for dev or test queries, or for the held-out train "
        "queries, are masked out of every signal loss",
        "final_losses": {k: round(float(np.mean([h[k] for h in tail])), 5) for k in tail[-1]}
        if tail
        else {},
    }


def _finish(out: Path, info: dict[str, Any]) -> None:
    """``train_info.json`` beside both checkpoints; the best one becomes ``out``'s model."""
    best = out / "best"
    for folder in (best, out / "last"):
        if folder.exists():
            (folder / TRAIN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    for item in best.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        if item.is_file():
            shutil.copy2(item, target)
        else:
            shutil.copytree(item, target)


__all__ = ["AwareTrainConfig", "score_aware", "train_aware"]
