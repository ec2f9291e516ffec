"""Model cards: what an exported folder holds, where it came from, and the sha256 of each file."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from reranker.errors import ModelError
from reranker.models import CARD_FORMAT, sha256_file, write_json_atomic

#: files of a checkpoint folder that carry training provenance, copied into the card
TRAINING_INFO_FILES = ("train_info.json", "training_args.json")


def exporter_versions() -> dict[str, str]:
    """Versions of the packages that shaped the exported graph."""
    versions = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            try:
                versions[dist] = metadata.version(dist + "-gpu")
            except metadata.PackageNotFoundError:
                versions[dist] = "absent"
    return versions


def read_training_info(checkpoint_dir: Path) -> dict[str, Any] | None:
    """Training provenance from a checkpoint folder (``train_info.json``/``training_args.json``)."""
    info: dict[str, Any] = {}
    for name in TRAINING_INFO_FILES:
        path = checkpoint_dir / name
        if not path.is_file():
            continue
        try:
            info[name.removesuffix(".json")] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            info[name.removesuffix(".json")] = {"unreadable": str(exc)}
    return info or None


def distillation_entry(training: dict[str, Any] | None) -> dict[str, Any]:
    """A distilled student's ``distillation`` card entry (teacher, layers, loss, data, the
    chosen held-out step), from ``train_info.json`` of ``reranker distill``; empty otherwise."""
    info = (training or {}).get("train_info")
    distilled = info.get("distillation") if isinstance(info, dict) else None
    if not isinstance(distilled, dict):
        return {}
    keys = ("teacher", "layers", "loss", "temperature", "data", "steps", "chosen", "selection")
    summary = {k: distilled[k] for k in keys if k in distilled}
    return {"distillation": summary} if summary else {}


def signal_heads_card(checkpoint_dir: Path, names: Sequence[str]) -> dict[str, Any]:
    """The card's account of a multi-task model's signal heads: each named output, what it
    predicts, and how it was trained (from ``train_info.json``)."""
    from reranker.rerank.heads import CLICK_HEAD, predicted_feature

    info = (read_training_info(checkpoint_dir) or {}).get("train_info", {}).get("heads", {})

    def predicts(name: str) -> str:
        if name == CLICK_HEAD:
            return (
                "the chance that a user who looks at the document clicks it, for this query "
                "(the click model's attractiveness), in [0, 1] (sigmoid), from the text alone"
            )
        return (
            f"the {name} signal feature of the dataset's preset, in [0, 1] (sigmoid), from the "
            "text alone"
        )

    return {
        "outputs": {
            name: {"predicts": predicts(name), "blend_feature": predicted_feature(name)}
            for name in names
        },
        "training": info,
    }


def source_hashes(checkpoint_dir: Path) -> dict[str, str]:
    """sha256 of the weight files of a checkpoint (what the export was made from)."""
    hashes: dict[str, str] = {}
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        for path in sorted(checkpoint_dir.glob(pattern)):
            hashes[path.name] = sha256_file(path)
    return hashes


def file_hashes(folder: Path, *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every plain file in ``folder`` (not recursive), bar the excluded names."""
    return {
        path.name: sha256_file(path)
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name not in exclude
    }


def write_card(folder: Path, card_name: str, card: dict[str, Any]) -> dict[str, Any]:
    """Complete the card (format, time, versions, file hashes) and write it into ``folder``."""
    full = {
        "format": CARD_FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "exporter": exporter_versions(),
        "metrics": {},
        **card,
    }
    full["files"] = file_hashes(folder, exclude=(card_name,))
    write_json_atomic(folder / card_name, full)
    return full


def prune_variants(folder: Path, card_name: str, keep: Sequence[str]) -> dict[str, Any]:
    """Delete the variants not in ``keep`` from an exported folder and rewrite its card.

    A shipped model keeps only what it serves (e.g. int8), so the repository stays small.
    """
    card: dict[str, Any] = json.loads((folder / card_name).read_text(encoding="utf-8"))
    variants: dict[str, Any] = card.get("variants") or {}
    unknown = [name for name in keep if name not in variants]
    if unknown or not keep:
        raise ModelError(
            f"cannot keep {', '.join(unknown) or 'nothing'}: {folder} has {', '.join(variants)}"
        )
    for name, entry in list(variants.items()):
        if name not in keep:
            (folder / str(entry["file"])).unlink(missing_ok=True)
            del variants[name]
    card["variants"] = variants
    card["files"] = file_hashes(folder, exclude=(card_name,))
    write_json_atomic(folder / card_name, card)
    return card


def record_default_blend(folder: Path, card_name: str, blend: dict[str, Any]) -> dict[str, Any]:
    """Set the card's ``default_blend``: relevance/first-stage weights (and where they were
    fitted) that ``--blend model`` applies."""
    card: dict[str, Any] = json.loads((folder / card_name).read_text(encoding="utf-8"))
    card["default_blend"] = blend
    write_json_atomic(folder / card_name, card)
    return card


def record_metrics(folder: Path, card_name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Merge evaluation results into the card's ``metrics`` (the card hashes other files only)."""
    card: dict[str, Any] = json.loads((folder / card_name).read_text(encoding="utf-8"))
    card["metrics"] = {**card.get("metrics", {}), **metrics}
    write_json_atomic(folder / card_name, card)
    return card
