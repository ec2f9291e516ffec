"""An fp16 variant from a shipped int8 model, for machines that have no checkpoint.

The shipped model folders hold only ``model.int8.onnx`` (dynamic, per-channel int8 weights);
``reranker export --fp16`` needs the torch checkpoint, which does not travel. This module
undoes the dynamic quantisation in the graph itself:

- each ``DynamicQuantizeLinear → MatMulInteger → Cast → Mul(scale_a · scale_w)`` chain
  becomes one fp32 ``MatMul`` whose weight is ``(w_int8 - zero_point) · scale``;
- each ``Gather(int8 table) → DequantizeLinear`` (the embeddings) becomes a ``Gather`` of the
  dequantised fp32 table.

The result is an fp32 graph with the int8 weights' rounding kept (activations are no longer
quantised), which then goes through the same fusion and fp16 conversion as an export
(:func:`export.onnx_export._convert_fp16`). Its speed is an fp16 export's speed (same
shapes, same kernels); its scores are the fp16 rounding of the int8 model's weights, close
to the int8 model's and not bit-equal to an fp16 export from the checkpoint.

    fp16_from_int8(Path("models/reranker-minilm-l6"), Path("/tmp/reranker-fp16"))

writes a model folder with ``model.onnx`` (variant ``fp32``, dequantised) and
``model.fp16.onnx`` (variant ``fp16``), the tokenizer, the config and a card saying where
they came from. Needs the ``onnx`` package (and ONNX Runtime's transformer tools).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.card import write_card
from reranker.errors import ModelError
from reranker.models import CROSS_ENCODER_CARD, read_card, sha256_file, verify_files

if TYPE_CHECKING:
    import onnx

FP32_FILE = "model.onnx"
FP16_FILE = "model.fp16.onnx"
#: ops that mean a graph still computes in integers after dequantisation
QUANTIZED_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "DequantizeLinear",
        "QuantizeLinear",
        "QLinearMatMul",
        "QAttention",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QGemm",
    }
)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            f"dequantising a model needs the onnx package: pip install onnx ({exc})"
        ) from exc


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


def _dequantized(
    values: np.ndarray, zero_point: np.ndarray, scale: np.ndarray, axis: int
) -> np.ndarray:
    """``(values - zero_point) · scale`` as float32; per-axis scale/zero point on ``axis``."""
    zp = zero_point.astype(np.float32)
    sc = scale.astype(np.float32)
    if sc.ndim == 1 and values.ndim > 1:
        shape = [1] * values.ndim
        shape[axis % values.ndim] = sc.shape[0]
        sc = sc.reshape(shape)
        zp = zp.reshape(shape) if zp.ndim == 1 else zp
    return ((values.astype(np.float32) - zp) * sc).astype(np.float32)


def _unfused_skip_norm(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """``SkipLayerNormalization(a, b, gamma, beta[, bias])`` as ``Add`` + ``LayerNormalization``."""
    from onnx import helper

    if len([o for o in node.output if o]) != 1:
        raise ModelError(f"dequantise: {node.name} has more outputs than the normalised sum")
    epsilon = 1e-12
    for attribute in node.attribute:
        if attribute.name == "epsilon":
            epsilon = float(attribute.f)
    a, b, gamma, beta, *rest = [*node.input, "", ""][:5]
    total = f"{node.output[0]}_sum"
    nodes = [helper.make_node("Add", [a, b], [total], name=f"{node.name}_add")]
    if rest and rest[0]:
        biased = f"{node.output[0]}_sum_bias"
        nodes.append(helper.make_node("Add", [total, rest[0]], [biased], name=f"{node.name}_bias"))
        total = biased
    nodes.append(
        helper.make_node(
            "LayerNormalization",
            [total, gamma, beta],
            [node.output[0]],
            name=f"{node.name}_norm",
            axis=-1,
            epsilon=epsilon,
        )
    )
    return nodes


class _Rewrite:
    """One :func:`dequantize_graph` rewrite: the graph's wiring as it was read, and what the
    rewrite removes, replaces and adds. Nothing touches the graph until :meth:`install`, so a
    graph the rewrite refuses is left as it was."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers[name].append(node)
        self.removed: set[int] = set()
        self.replaced: dict[int, onnx.NodeProto | list[onnx.NodeProto]] = {}
        self.new_inits: list[onnx.TensorProto] = []
        self.counts = {"matmuls": 0, "gathers": 0}

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        if name not in self.inits:
            raise ModelError(f"dequantise: {name} is not a constant of the graph")
        return numpy_helper.to_array(self.inits[name])

    def only_consumer(self, name: str, op: str) -> onnx.NodeProto:
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op:
            found = ", ".join(u.op_type for u in users) or "nothing"
            raise ModelError(f"dequantise: {name} feeds {found}, expected one {op}")
        return users[0]

    def fp32_matmul(
        self, node: onnx.NodeProto, activations: str, w_q: str, w_zp: str, w_scale: str, output: str
    ) -> onnx.NodeProto:
        """An fp32 ``MatMul`` of ``activations`` by the dequantised weight, into ``output``."""
        from onnx import helper, numpy_helper

        weight = _dequantized(self.array(w_q), self.array(w_zp), self.array(w_scale), axis=-1)
        weight_name = f"{w_q.removesuffix('_quantized')}_dequantized"
        self.new_inits.append(numpy_helper.from_array(weight, weight_name))
        return helper.make_node(
            "MatMul", [activations, weight_name], [output], name=f"{node.name or weight_name}_fp32"
        )

    def quantized_ops(self) -> None:
        """Plan the rewrite of every quantised op, in the graph's order."""
        for node in self.graph.node:
            if node.op_type == "MatMulInteger":
                self.matmul_integer(node)
            elif node.op_type == "MatMulIntegerToFloat":
                self.matmul_integer_to_float(node)
            elif node.op_type == "DequantizeLinear":
                self.dequantize_linear(node)

    def matmul_integer(self, node: onnx.NodeProto) -> None:
        """``DynamicQuantizeLinear → MatMulInteger → Cast → Mul(a_scale · w_scale)``."""
        if len(node.input) != 4:
            raise ModelError(f"dequantise: {node.name} has no zero points")
        a_q, w_q, a_zp, w_zp = node.input
        quantize = self.producer.get(a_q)
        if quantize is None or quantize.op_type != "DynamicQuantizeLinear":
            raise ModelError(f"dequantise: {node.name}'s input is not dynamically quantised")
        if quantize.output[2] != a_zp:
            raise ModelError(f"dequantise: {node.name}'s zero point is not its input's")
        cast = self.only_consumer(node.output[0], "Cast")
        scale_mul = self.only_consumer(cast.output[0], "Mul")
        scales_name = next(i for i in scale_mul.input if i != cast.output[0])
        scales = self.producer.get(scales_name)
        if scales is None or scales.op_type != "Mul" or quantize.output[1] not in scales.input:
            raise ModelError(f"dequantise: {node.name}'s output scale is not a_scale · w_scale")
        w_scale = next(i for i in scales.input if i != quantize.output[1])
        self.replaced[id(node)] = self.fp32_matmul(
            node, quantize.input[0], w_q, w_zp, w_scale, scale_mul.output[0]
        )
        self.removed.update({id(cast), id(scale_mul)})
        if len(self.consumers[scales.output[0]]) == 1:
            self.removed.add(id(scales))
        self.counts["matmuls"] += 1

    def matmul_integer_to_float(self, node: onnx.NodeProto) -> None:
        """export/rowwise_int8.py's per-token form: ``MatMulIntegerToFloat(q, w, 1, w_scale,
        128, w_zp) → Mul(token scale)``, ``q = QuantizeLinear(x, token scale, 128)``."""
        a_q, w_q, _, w_scale, _, w_zp = (list(node.input) + [""] * 6)[:6]
        quantize = self.producer.get(a_q)
        if quantize is None or quantize.op_type != "QuantizeLinear":
            raise ModelError(f"dequantise: {node.name}'s input is not quantised per token")
        token_mul = self.only_consumer(node.output[0], "Mul")
        self.replaced[id(node)] = self.fp32_matmul(
            node, quantize.input[0], w_q, w_zp, w_scale, token_mul.output[0]
        )
        self.removed.add(id(token_mul))
        self.counts["matmuls"] += 1

    def dequantize_linear(self, node: onnx.NodeProto) -> None:
        """A dequantised constant (folded), or ``Gather(int8 table) → DequantizeLinear``."""
        from onnx import helper, numpy_helper

        source, scale, zero_point = (list(node.input) + [""] * 3)[:3]
        axis = _attr_int(node, "axis", 1)
        zp = self.array(zero_point) if zero_point else np.zeros((), dtype=np.int8)
        if source in self.inits:
            table = _dequantized(self.array(source), zp, self.array(scale), axis)
            self.new_inits.append(numpy_helper.from_array(table, node.output[0]))
            self.removed.add(id(node))
            self.counts["gathers"] += 1
            return
        gather = self.producer.get(source)
        if gather is None or gather.op_type != "Gather" or gather.input[0] not in self.inits:
            raise ModelError(f"dequantise: {node.name} reads neither a constant nor a Gather")
        if len(self.consumers[source]) != 1:
            raise ModelError(f"dequantise: {source} has other readers than {node.name}")
        if np.asarray(self.array(scale)).size != 1:
            raise ModelError(f"dequantise: {node.name} has a per-axis scale after a Gather")
        table = _dequantized(self.array(gather.input[0]), zp, self.array(scale), axis)
        table_name = f"{gather.input[0].removesuffix('_quantized')}_dequantized"
        self.new_inits.append(numpy_helper.from_array(table, table_name))
        self.replaced[id(gather)] = helper.make_node(
            "Gather",
            [table_name, *gather.input[1:]],
            [node.output[0]],
            name=f"{gather.name or table_name}_fp32",
            axis=_attr_int(gather, "axis", 0),
        )
        self.removed.add(id(node))
        self.counts["gathers"] += 1

    def is_embedding_lookup(self, name: str) -> bool:
        node = self.producer.get(name)
        return node is not None and node.op_type in {"Gather", "DequantizeLinear"}

    def embedding_norms(self) -> None:
        """Plan the unfusing of the embeddings' sum and norm, so that the fp16 conversion's
        optimiser (and ONNX Runtime's own) can fuse EmbedLayerNormalization, as they do on an
        export from a checkpoint."""
        for node in self.graph.node:
            if node.op_type == "SkipLayerNormalization" and all(
                self.is_embedding_lookup(i)
                or (
                    getattr(self.producer.get(i), "op_type", "") == "Add"
                    and all(self.is_embedding_lookup(j) for j in self.producer[i].input)
                )
                for i in node.input[:2]
            ):
                self.replaced[id(node)] = _unfused_skip_norm(node)
                self.counts["embedding_norms_unfused"] = (
                    self.counts.get("embedding_norms_unfused", 0) + 1
                )

    def rewritten_nodes(self) -> list[onnx.NodeProto]:
        """The graph's nodes with the plan applied, less the quantisations nobody reads any
        more (DynamicQuantizeLinear, or a per-token chain)."""
        kept: list[onnx.NodeProto] = []
        for n in self.graph.node:
            if id(n) not in self.removed:
                new = self.replaced.get(id(n), n)
                kept.extend(new if isinstance(new, list) else [new])
        outputs = {o.name for o in self.graph.output}
        while True:
            read = {name for n in kept for name in n.input} | outputs
            alive = [n for n in kept if any(o in read for o in n.output if o)]
            if len(alive) == len(kept):
                return kept
            kept = alive

    def install(self, nodes: list[onnx.NodeProto]) -> None:
        """Put ``nodes`` and the new initializers in the graph; drop the unread initializers."""
        graph = self.graph
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(self.new_inits)
        read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        unused = [t for t in graph.initializer if t.name not in read]
        for tensor in unused:
            graph.initializer.remove(tensor)
        self.counts["initializers_dropped"] = len(unused)


def dequantize_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The fp32 graph of a dynamically quantised one (see the module's doc), and counts of
    what was rewritten. :class:`ModelError` when a quantised op is left that no pattern
    covers (the graph came from another quantiser)."""
    import onnx

    rewrite = _Rewrite(model.graph)
    rewrite.quantized_ops()
    rewrite.embedding_norms()
    nodes = rewrite.rewritten_nodes()
    left = sorted({n.op_type for n in nodes if n.op_type in QUANTIZED_OPS})
    if left:
        raise ModelError(f"dequantise: the graph still has {', '.join(left)} after the rewrite")
    rewrite.install(nodes)
    onnx.checker.check_model(model)
    return model, rewrite.counts


def fp16_from_int8(model_dir: Path, out_dir: Path, *, name: str | None = None) -> Path:
    """A model folder with ``fp32`` (dequantised) and ``fp16`` variants made from the
    ``int8`` variant of ``model_dir`` (see the module's doc). Replaces ``out_dir``."""
    _require_onnx()
    import onnx

    from export.onnx_export import _convert_fp16

    started = time.perf_counter()
    model_dir = Path(model_dir)
    card = read_card(model_dir, CROSS_ENCODER_CARD)
    variants: dict[str, Any] = card.get("variants") or {}
    if "int8" not in variants:
        raise ModelError(f"{model_dir} has no int8 variant to dequantise")
    int8_file = str(variants["int8"]["file"])
    verify_files(model_dir, card, [int8_file, "tokenizer.json", "config.json"])
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    heads = int(config.get("num_attention_heads") or 0)
    hidden = int(config.get("hidden_size") or 0)
    if not (heads and hidden):
        raise ModelError(f"{model_dir}/config.json lacks num_attention_heads / hidden_size")

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for file in ("tokenizer.json", "config.json"):
        shutil.copy2(model_dir / file, out_dir / file)
    graph, counts = dequantize_graph(onnx.load(str(model_dir / int8_file)))
    onnx.save(graph, str(out_dir / FP32_FILE))
    _convert_fp16(out_dir / FP32_FILE, out_dir / FP16_FILE, num_heads=heads, hidden=hidden)
    origin = f"dequantised from {model_dir.name}/{int8_file} (the int8 weights' rounding kept)"
    keep = (
        "kind",
        "max_length",
        "num_labels",
        "inputs",
        "outputs",
        "first_stage_features",
        "base_model",
        "version",
    )
    write_card(
        out_dir,
        CROSS_ENCODER_CARD,
        {
            **{k: card[k] for k in keep if k in card},
            "name": name or f"{card.get('name') or model_dir.name}-fp16",
            "source": {
                "int8_model": str(model_dir),
                "sha256": {int8_file: sha256_file(model_dir / int8_file)},
            },
            "variants": {
                "fp32": {"file": FP32_FILE, "weights": origin, "rewritten": counts},
                "fp16": {"file": FP16_FILE, "for": "CUDAExecutionProvider", "weights": origin},
            },
            "export_seconds": round(time.perf_counter() - started, 1),
        },
    )
    return out_dir
