"""A BERT encoder's ONNX graph back to a Hugging Face folder, so that it can be fine-tuned.

Graphs exported by ``torch.onnx`` from ``transformers``' ``BertModel`` keep the module names
of the biases, layer norms and embeddings as initializer names; each linear layer's weight
becomes an ``onnx::MatMul_*`` initializer (transposed) consumed by a ``MatMul`` node named
after its module (``/encoder/layer.0/attention/self/query/MatMul``). That is enough to rebuild
the state dict exactly. :func:`to_hugging_face` writes ``config.json``,
``model.safetensors`` and the tokenizer, and checks the rebuilt model against the graph on a
few texts before anything is written.

    python -m export.onnx_to_torch ENCODER_DIR TARGET_DIR

``ENCODER_DIR`` is an fp32 embedder folder (e.g. ``python -m export.maven_encoder
bge-small-en-v1.5 DIR``); its card gives ``num_attention_heads`` (the weights do not say).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from reranker.errors import ModelError, RerankerError
from reranker.models import ENCODER_CARD, ENCODER_CONVENTIONS, read_card, write_json_atomic

#: the largest difference allowed between the graph's and the rebuilt model's token vectors
PARITY_TOLERANCE = 1e-4
PARITY_TEXTS = (
    "Vitamin D deficiency and bone density in older adults.",
    "Represent this sentence for searching relevant passages: what lowers blood pressure",
    "short",
)


def bert_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    """The ``BertModel`` state dict held by the graph at ``onnx_path``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {name: array for name, array in arrays.items() if not name.startswith("onnx::")}
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else ""
        if not weight.startswith("onnx::") or weight not in arrays:
            continue
        module = node.name.strip("/").removesuffix("/MatMul").replace("/", ".")
        if not module or module.endswith("MatMul"):
            raise ModelError(f"{onnx_path}: cannot tell the module of MatMul {node.name!r}")
        state[f"{module}.weight"] = np.ascontiguousarray(arrays[weight].T)
    return state


def bert_config(state: dict[str, np.ndarray], heads: int, epsilon: float) -> dict[str, Any]:
    """A ``BertConfig`` (as a dict) for the weights in ``state``."""
    layers = 1 + max(int(name.split(".")[2]) for name in state if name.startswith("encoder.layer."))
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": int(state["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(state["embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(state["embeddings.token_type_embeddings.weight"].shape[0]),
        "hidden_act": "gelu",
        "layer_norm_eps": epsilon,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "pad_token_id": 0,
    }


def _layer_norm_epsilon(onnx_path: Path) -> float:
    import onnx

    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        if node.op_type == "LayerNormalization":
            for attribute in node.attribute:
                if attribute.name == "epsilon":
                    return float(attribute.f)
    return 1e-12


def to_hugging_face(encoder_dir: Path, target: Path) -> float:
    """Write ``target`` (a Hugging Face BERT folder) from the fp32 embedder folder
    ``encoder_dir``; returns the largest difference of token vectors against the graph.
    :class:`ModelError` (nothing written) when the two disagree."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    card = read_card(encoder_dir, ENCODER_CARD)
    onnx_path = encoder_dir / str(card.get("variants", {}).get("fp32", {}).get("file", ""))
    if "fp32" not in card.get("variants", {}) or not onnx_path.is_file():
        raise ModelError(f"{encoder_dir} has no fp32 graph to rebuild a model from")
    heads = int(card.get("num_attention_heads") or 0)
    if heads < 1:
        raise ModelError(f"{encoder_dir}'s card does not give num_attention_heads")
    state = bert_state_dict(onnx_path)
    config = bert_config(state, heads, _layer_norm_epsilon(onnx_path))
    model = BertModel(BertConfig(**config), add_pooling_layer=False)
    tensors = {name: torch.from_numpy(array.copy()) for name, array in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(f"{onnx_path}: weights missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()  # type: ignore[no-untyped-call]
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_file=str(encoder_dir / "tokenizer.json"),
        unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
        mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )  # fmt: skip
    difference = _parity(model, tokenizer, onnx_path)
    if not difference <= PARITY_TOLERANCE:
        raise ModelError(
            f"the rebuilt model differs from {onnx_path} by {difference:.2e} "
            f"(> {PARITY_TOLERANCE:g}): nothing written"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        source: dict[str, Any] = {
            k: card[k] for k in ("name", "pooling", "query_prefix", "source") if k in card
        }
        write_json_atomic(
            staging / ENCODER_CONVENTIONS,
            {**source, "rebuilt_from": str(onnx_path.name), "parity_max_abs_diff": difference},
        )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return difference


def _parity(model: Any, tokenizer: Any, onnx_path: Path) -> float:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = tokenizer(list(PARITY_TEXTS), padding=True, return_tensors="np")
    feed = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    graph = session.run(None, feed)[0]
    with torch.no_grad():
        rebuilt = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
    mask = batch["attention_mask"].astype(bool)
    return float(np.abs(rebuilt.numpy() - graph)[mask].max())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m export.onnx_to_torch ENCODER_DIR TARGET_DIR", file=sys.stderr)
        return 2
    try:
        difference = to_hugging_face(Path(args[0]), Path(args[1]))
    except (RerankerError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 7
    print(f"{args[1]}: a BertModel, token vectors within {difference:.1e} of the graph")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
