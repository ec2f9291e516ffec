"""What a distillation run is told: the student's size, its loss, the candidates it learns from,
the optimizer and the cascade its checkpoints are chosen for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from reranker.errors import ConfigError

if TYPE_CHECKING:
    pass

DistillLoss = Literal["listwise-kl", "margin-mse"]
LOSSES: tuple[str, ...] = ("listwise-kl", "margin-mse")


@dataclass(kw_only=True)
class DistillConfig:
    """Everything one distillation run depends on (recorded in ``train_info.json``)."""

    teacher: Path
    """An exported cross-encoder folder (``reranker.json``, ONNX, ``tokenizer.json``)."""
    datasets: list[Path]
    """BEIR folders with ``qrels/train.tsv``, indexed under ``beir-<name>``."""
    output_dir: Path
    layers: int = 2
    """Transformer layers of the student (the first ones of ``base_model``)."""
    base_model: Path | None = None
    """A local Hugging Face checkpoint; ``None`` = the shipped all-MiniLM-L6-v2."""
    loss: DistillLoss = "listwise-kl"
    temperature: float = 1.0
    """Softmax temperature of the listwise KL loss."""
    window: int = 100
    """First-stage candidates per query the samples come from."""
    top: int = 10
    """Candidates kept from the head of the window."""
    sampled: int = 20
    """Candidates drawn at random from the rest of the window."""
    queries_per_step: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int | None = None
    eval_every: int = 200
    """Score the held-out queries (and keep the best checkpoint) every this many steps."""
    cascade_k: int = 10
    """The cascade's k in the held-out selection metric."""
    dev_max_queries: int = 150
    """Held-out queries per dataset (a seeded sample)."""
    max_queries: int | None = None
    """Train queries per dataset (a seeded sample; for quick runs)."""
    threads: int | None = None
    bf16: bool | None = None
    """bfloat16 autocast; ``None`` = where the hardware has it."""
    seed: int = 13
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.teacher = Path(self.teacher)
        self.datasets = [Path(d) for d in self.datasets]
        self.output_dir = Path(self.output_dir)
        self.base_model = Path(self.base_model) if self.base_model is not None else None
        if not self.datasets:
            raise ConfigError("no datasets given")
        for name, value in {
            "layers": self.layers,
            "window": self.window,
            "top": self.top,
            "queries_per_step": self.queries_per_step,
            "epochs": self.epochs,
            "eval_every": self.eval_every,
            "cascade_k": self.cascade_k,
            "dev_max_queries": self.dev_max_queries,
        }.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.sampled < 0:
            raise ConfigError(f"sampled cannot be negative, got {self.sampled}")
        if self.top + self.sampled > self.window:
            raise ConfigError(
                f"top ({self.top}) + sampled ({self.sampled}) exceed the window ({self.window})"
            )
        if self.top + self.sampled < 2:
            raise ConfigError("a query needs at least two candidates to rank")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ConfigError(f"max_queries must be at least 1, got {self.max_queries}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, list):
                out[key] = [str(v) for v in value]
            else:
                out[key] = value
        return out
