"""Per-token activation quantisation for a dynamic-int8 graph, so that a pair's score does not
depend on the other pairs in its batch.

``onnxruntime.quantization.quantize_dynamic`` quantises each MatMul's activations with
``DynamicQuantizeLinear``: one scale and zero point for the whole input tensor, i.e. for every
token of every pair in the batch, padding included. A pair's logit then moves with its
batchmates (measured on the shipped model: up to 0.59 across 20 random batches), so rankings
depend on batching and a cached score is not the score the model would give the pair alone.

:func:`rowwise_int8` rewrites each ``DynamicQuantizeLinear`` into a quantisation per token
(per row of the MatMul): the scale is the token's largest absolute activation over 127,
symmetric around the fixed zero point 128 (uint8, so ONNX Runtime keeps its fast u8s8
kernels), done by one blocked ``QuantizeLinear`` (opset 21, ``block_size`` = the row). Each
quantised MatMul becomes ``MatMulIntegerToFloat`` (com.microsoft) with the weight scale alone,
followed by a multiplication by the token's scale. Integer accumulation is exact and every
other operation is per token, so the same pair gives the same logit in any batch (measured:
0.0 difference). The weights are untouched.

The rewrite must produce the fused ``MatMulIntegerToFloat`` itself: ONNX Runtime's own fusion
of ``MatMulInteger → Cast → Mul`` assumes a scalar activation scale and silently uses the
first token's scale for every token when given a per-token one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from reranker.errors import ModelError
from reranker.models import PER_TOKEN_QUANTIZATION

#: the opset blocked ``QuantizeLinear`` needs; the graphs here are written at 17 and keep
#: their meaning at 21 (no operator they use changed semantics in between)
OPSET = 21
#: the card's words for what a variant made here does (read by the serving side too)
DESCRIPTION = PER_TOKEN_QUANTIZATION

_ZERO_POINT = "rowwise/zero_point"
_MAX_CODE = "rowwise/127"
_EPSILON = "rowwise/epsilon"
_ONE = "rowwise/one"
_LAST_AXIS = "rowwise/last_axis"


def rowwise_int8(source: Path, target: Path) -> int:
    """Write ``source`` (a ``quantize_dynamic`` graph, fused or not) to ``target`` with
    per-token activation quantisation; returns how many quantised MatMuls were rewritten.
    :class:`ModelError` when the graph does not have the expected shape (nothing written)."""
    model = onnx.load(str(source))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producers[name] = node

    replaced: dict[int, list[onnx.NodeProto]] = {}
    dropped: set[int] = set()
    matmuls = 0
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            continue
        activations, (quantized, scale, _) = node.input[0], node.output
        users = [c for c in consumers.get(quantized, []) if c.op_type == "MatMulInteger"]
        if not users or users[0].input[1] not in initializers:
            raise ModelError(f"{source}: {quantized} does not feed a MatMul with stored weights")
        row = int(initializers[users[0].input[1]].dims[0])
        replaced[id(node)] = _quantize_per_token(activations, quantized, scale, row)
        for matmul in users:
            chain = _dequantized_product(matmul, scale, consumers, producers)
            if chain is None:
                raise ModelError(f"{source}: unexpected nodes after {matmul.name or 'a MatMul'}")
            cast, apply, scale_product, weight_scale = chain
            dropped.update({id(cast), id(apply), id(scale_product)})
            unscaled = f"{apply.output[0]}/rowwise_unscaled"
            replaced[id(matmul)] = [
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [quantized, matmul.input[1], _ONE, weight_scale, _ZERO_POINT, matmul.input[3]],
                    [unscaled],
                    domain="com.microsoft",
                ),
                helper.make_node("Mul", [unscaled, scale], [apply.output[0]]),
            ]
            matmuls += 1
    if not matmuls:
        raise ModelError(f"{source}: no dynamically quantised MatMul to rewrite")

    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) not in dropped:
            nodes.extend(replaced.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(128, dtype=np.uint8), _ZERO_POINT),
            numpy_helper.from_array(np.array(127.0, dtype=np.float32), _MAX_CODE),
            numpy_helper.from_array(np.array(1e-12, dtype=np.float32), _EPSILON),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), _ONE),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), _LAST_AXIS),
        ]
    )
    # the old quantisation outputs changed shape or type: drop their recorded shapes
    stale = ("_quantized", "_scale", "_zero_point")
    kept = [v for v in graph.value_info if not v.name.endswith(stale)]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, OPSET)
    onnx.save(model, str(target))
    return matmuls


def _quantize_per_token(
    activations: str, quantized: str, scale: str, row: int
) -> list[onnx.NodeProto]:
    """``quantized`` (uint8) and ``scale`` (one per token, the last axis kept as 1) of
    ``activations``: symmetric around 128, the token's largest magnitude mapped to ±127."""
    prefix = f"{quantized}/rowwise"
    top, bottom, flipped, peak, raw, shape, zero_points = (
        f"{prefix}_{k}" for k in ("max", "min", "neg", "peak", "raw_scale", "shape", "zp")
    )
    return [
        helper.make_node("ReduceMax", [activations, _LAST_AXIS], [top], keepdims=1),
        helper.make_node("ReduceMin", [activations, _LAST_AXIS], [bottom], keepdims=1),
        helper.make_node("Neg", [bottom], [flipped]),
        helper.make_node("Max", [top, flipped], [peak]),
        helper.make_node("Div", [peak, _MAX_CODE], [raw]),
        helper.make_node("Max", [raw, _EPSILON], [scale]),  # an all-zero token: any scale
        helper.make_node("Shape", [scale], [shape]),
        helper.make_node("Expand", [_ZERO_POINT, shape], [zero_points]),
        helper.make_node(
            "QuantizeLinear", [activations, scale, zero_points], [quantized], axis=-1,
            block_size=row,
        ),
    ]  # fmt: skip


def _dequantized_product(
    matmul: onnx.NodeProto,
    activation_scale: str,
    consumers: dict[str, list[onnx.NodeProto]],
    producers: dict[str, onnx.NodeProto],
) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto, str] | None:
    """``quantize_dynamic``'s dequantisation after ``matmul``: ``Cast`` to float, ``Mul`` by
    ``Mul(activation_scale, weight_scale)``; the three nodes and the weight scale's name."""
    casts = consumers.get(matmul.output[0], [])
    if len(casts) != 1 or casts[0].op_type != "Cast":
        return None
    applies = consumers.get(casts[0].output[0], [])
    if len(applies) != 1 or applies[0].op_type != "Mul":
        return None
    apply = applies[0]
    factor = next((i for i in apply.input if i != casts[0].output[0]), None)
    product = producers.get(factor or "")
    if product is None or product.op_type != "Mul" or activation_scale not in product.input:
        return None
    weight_scale = next((i for i in product.input if i != activation_scale), None)
    if weight_scale is None:
        return None
    return casts[0], apply, product, weight_scale


#: the card key recording that a shipped variant was rewritten in place, and from what
CONVERTED = "converted_from_per_tensor"


def convert_folder(folder: Path, variant: str = "int8") -> dict[str, str]:
    """Rewrite a model folder's ``variant`` in place into the per-token form and update its
    card (the file's sha256, the variant's description, and what it was converted from).
    Written next to the original and renamed over it, so a failure leaves the folder as it was.
    Returns the variant's new card entry. :class:`ModelError` when the folder has no such
    variant or it is already per token."""
    import hashlib
    import json
    import os

    from reranker.models import write_json_atomic

    card_path = folder / "reranker.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    entry = (card.get("variants") or {}).get(variant)
    if not isinstance(entry, dict) or "file" not in entry:
        raise ModelError(f"{folder} has no {variant!r} variant")
    if DESCRIPTION in str(entry.get("quantization", "")):
        raise ModelError(f"{folder}'s {variant} variant already quantises per token")
    source = folder / str(entry["file"])
    partial = source.with_name(source.name + ".rowwise-partial")
    try:
        rowwise_int8(source, partial)
        digest = hashlib.sha256(partial.read_bytes()).hexdigest()
        entry[CONVERTED] = {
            "sha256": card["files"][source.name],
            "parity_max_abs_diff": entry.pop("parity_max_abs_diff", None),
        }
        entry["quantization"] = f"{entry.get('quantization', 'dynamic')}; {DESCRIPTION}"
        card["files"][source.name] = digest
        if card.get("version"):
            card["version"] = digest[:12]
        os.replace(partial, source)
    finally:
        partial.unlink(missing_ok=True)
    write_json_atomic(card_path, card)
    return dict(entry)


def main(argv: list[str] | None = None) -> int:
    """``python -m export.rowwise_int8 SOURCE.onnx TARGET.onnx``: rewrite one graph (the
    model folder's card is not touched: its sha256 of the variant must be updated to load);
    ``python -m export.rowwise_int8 --model-dir DIR``: rewrite a folder's int8 variant in
    place, card included (:func:`convert_folder`)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    usage = (
        "usage: python -m export.rowwise_int8 SOURCE.onnx TARGET.onnx\n"
        "       python -m export.rowwise_int8 --model-dir DIR"
    )
    if len(args) != 2:
        print(usage, file=sys.stderr)
        return 2
    try:
        if args[0] == "--model-dir":
            convert_folder(Path(args[1]))
            print(f"{args[1]}: the int8 variant now quantises its activations per token")
            return 0
        count = rowwise_int8(Path(args[0]), Path(args[1]))
    except (ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 7
    print(f"{args[1]}: {count} MatMuls quantise their activations per token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
