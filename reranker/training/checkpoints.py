"""Cross-encoder checkpoints: what a checkpoint folder holds, loading one, saving one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from reranker.errors import ModelError, RerankerError
from reranker.training.cross_encoder_config import TRAIN_INFO_FILE, TrainConfig
from reranker.training.toolbox import quiet_transformers

CHECKPOINT_DIRNAME = "checkpoint-last"
TRAINER_STATE_FILE = "trainer_state.pt"
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
        with quiet_transformers():
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


def write_checkpoint(
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
    with quiet_transformers():
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


def prepare_output_dir(config: TrainConfig) -> Path:
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


def saved_state(
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
