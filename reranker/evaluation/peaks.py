"""The machine a speed figure was measured on: its matrix-multiply peaks (fp32, bf16, int8),
CPU flags and load, and a model's FLOPs per pair."""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reranker.errors import ModelError

if TYPE_CHECKING:
    import torch


_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


# --------------------------------------------------------------------------------------------
# pure parts


@dataclass(frozen=True)
class ModelDims:
    """The sizes the FLOP count needs, from a Hugging Face ``config.json``."""

    layers: int
    hidden: int
    ffn: int

    @classmethod
    def from_config(cls, folder: Path) -> ModelDims:
        path = Path(folder) / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path} cannot be read: {exc}") from exc
        if not isinstance(config, dict):
            raise ModelError(f"{path} is not a JSON object")
        # BERT-style names first, then DistilBERT's
        layers = config.get("num_hidden_layers", config.get("n_layers"))
        hidden = config.get("hidden_size", config.get("dim"))
        ffn = config.get("intermediate_size", config.get("hidden_dim"))
        if not all(isinstance(v, int) and v > 0 for v in (layers, hidden, ffn)):
            raise ModelError(
                f"{path} lacks num_hidden_layers / hidden_size / intermediate_size: "
                "cannot count FLOPs"
            )
        assert isinstance(layers, int) and isinstance(hidden, int) and isinstance(ffn, int)
        return cls(layers=layers, hidden=hidden, ffn=ffn)

    def flops(self, n_tokens: float) -> float:
        return flops_per_pair(n_tokens, self.layers, self.hidden, self.ffn)


def flops_per_pair(n_tokens: float, layers: int, hidden: int, ffn: int) -> float:
    """Forward FLOPs of an encoder on one sequence of ``n_tokens`` tokens.

    Per layer: Q, K, V and output projections (4·h² multiply-adds per token) and the
    feed-forward pair (2·h·ffn), at 2 FLOPs per multiply-add; plus Q·Kᵀ and attention·V
    (2·n²·h multiply-adds). Embeddings, norms, softmax and the head are left out (< 1%).
    """
    n = float(n_tokens)
    return layers * 2.0 * (4.0 * hidden * hidden + 2.0 * hidden * ffn) * n + (
        layers * 4.0 * hidden * n * n
    )


def bf16_supported() -> bool:
    import torch

    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # an op missing from this build
        return False


# --------------------------------------------------------------------------------------------
# matmul peaks


def _best_rate(fn: Callable[[], object], flops: float, repeats: int) -> float:
    fn()  # warm up (allocations, kernel selection)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return flops / best / 1e9


def _torch_peak(dtype: torch.dtype, sizes: Sequence[int], repeats: int) -> float:
    import torch

    rates = []
    for n in sizes:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        rates.append(_best_rate(functools.partial(torch.matmul, a, b), 2.0 * n**3, repeats))
    return max(rates)


def _ort_int8_peak(sizes: Sequence[int], repeats: int, threads: int) -> float:
    """u8 × s8 → s32 ``MatMulInteger`` in ONNX Runtime (the op dynamic quantisation uses)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rates = []
    for n in sizes:
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
            "int8_peak",
            [
                helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n]),
                helper.make_tensor_value_info("B", TensorProto.INT8, [n, n]),
            ],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(
            model.SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
        )
        rng = np.random.default_rng(0)
        feed = {
            "A": rng.integers(0, 255, (n, n), dtype=np.uint8),
            "B": rng.integers(-127, 127, (n, n), dtype=np.int8),
        }
        run = functools.partial(session.run, None, feed)
        rates.append(_best_rate(run, 2.0 * n**3, repeats))
    return max(rates)


def measure_peaks(
    threads: int, sizes: Sequence[int] = (1024, 2048), repeats: int = 3
) -> tuple[dict[str, float], list[str]]:
    """Best matmul rate (GFLOP/s, GOP/s for int8) of square matrices with ``threads`` threads:
    fp32 and bf16 (when the CPU has it) by torch, int8 by ONNX Runtime. Returns notes too;
    none measured without torch."""
    try:
        import torch
    except ImportError:
        return {}, ["torch is not installed: matmul peaks not measured"]

    torch.set_num_threads(threads)
    notes: list[str] = []
    peaks = {"fp32": round(_torch_peak(torch.float32, sizes, repeats), 1)}
    if bf16_supported():
        try:
            peaks["bf16"] = round(_torch_peak(torch.bfloat16, sizes, repeats), 1)
        except Exception as exc:  # a build without bf16 CPU kernels
            notes.append(f"bf16 matmul peak not measured: {exc}")
    try:
        peaks["int8"] = round(_ort_int8_peak(sizes, repeats, threads), 1)
    except Exception as exc:  # onnx missing, or the op unsupported
        notes.append(f"int8 matmul peak not measured: {exc}")
    return peaks, notes


# --------------------------------------------------------------------------------------------
# the machine


def machine_info() -> dict[str, Any]:
    """CPU model, cores, the flags that matter for these kernels, library versions."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        info["usable_cpus"] = os.cpu_count()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if fields.get("model name"):
        info["cpu"] = fields["model name"]
    if "flags" in fields:
        flags = set(fields["flags"].split())
        info["cpu_flags"] = [f for f in _CPU_FLAGS if f in flags]
    versions: dict[str, str] = {}
    for module in ("numpy", "torch", "transformers", "onnxruntime"):
        try:
            versions[module] = str(__import__(module).__version__)
        except Exception:  # not installed
            continue
    info["versions"] = versions
    return info


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
