"""What every trainer here shares: device and bf16 set-up, autocast, seeding and RNG state,
the AdamW optimizer with linear warm-up and its step, versions and fingerprints for the model
card."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.resources
import os
import platform
import random
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reranker.errors import ConfigError


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
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


def resolve_device(bf16: bool | None, device: str | None = None) -> tuple[torch.device, bool]:
    """The device to train on (``device`` if given, else CUDA where there is one, else the CPU)
    and whether to autocast to bfloat16 there (``bf16`` if given, else where the hardware has
    it natively)."""
    if device is not None:
        chosen = torch.device(device)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available")
    else:
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if bf16 is not None:
        return chosen, bf16
    if chosen.type == "cuda":
        return chosen, bool(torch.cuda.is_bf16_supported())
    return chosen, cpu_supports_bf16()


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


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("reranker", "torch", "transformers", "tokenizers", "numpy", "ir_measures"):
        try:
            out[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def file_sha256(path: Path) -> str | None:
    weights = path / "model.safetensors"
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def loss_curve(losses: Sequence[float], every: int) -> list[dict[str, float]]:
    """The mean loss of each run of ``every`` steps, keyed by the run's last step."""
    return [
        {"step": i + len(losses[i : i + every]), "loss": float(np.mean(losses[i : i + every]))}
        for i in range(0, len(losses), every)
    ]


def environment() -> dict[str, Any]:
    """Command, package versions and platform, for ``train_info.json``."""
    return {
        "command": list(sys.argv),
        "versions": package_versions(),
        "platform": {
            "machine": platform.machine(),
            "system": platform.platform(),
            "cpus": os.cpu_count(),
        },
    }


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


def backward_step(
    loss: Any,
    model: torch.nn.Module,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler],
    max_grad_norm: float,
) -> float:
    """One optimizer step on ``loss`` (a scalar tensor): gradients afresh, their norm clipped
    to ``max_grad_norm``, then the optimizer's and its schedule's steps; the loss's value."""
    optimizer, scheduler = optimizers
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


@dataclass
class TrainProgress:
    """Where a run stands: saved in ``checkpoint-last``, restored by a resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    losses: list[float] = field(default_factory=list)
    dev_metrics: list[dict[str, float]] = field(default_factory=list)


@dataclass
class StepRate:
    """Pairs trained since ``since`` (a :func:`time.monotonic` instant), for the speed."""

    since: float = field(default_factory=time.monotonic)
    pairs: int = 0
