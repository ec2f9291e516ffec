"""Parity of an exported ONNX graph against the torch model it came from, on real token ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from reranker.batching import pad_encodings
from reranker.models import load_tokenizer

if TYPE_CHECKING:
    import torch

#: used when a caller gives no pairs: short and long, related and unrelated
DEFAULT_PARITY_PAIRS: tuple[tuple[str, str], ...] = (
    (
        "what causes rain",
        "Rain forms when water vapour condenses into droplets heavy enough to fall.",
    ),
    ("python list sort", "The sort() method orders a list in place; sorted() returns a new list."),
    (
        "effects of vitamin D on bone density",
        "Vitamin D increases intestinal absorption of calcium and phosphate. In a randomised "
        "trial of 2,000 older adults, supplementation for three years did not change bone "
        "mineral density at the hip or spine compared with placebo, although falls were fewer.",
    ),
    ("capital of France", "Bananas are rich in potassium."),
    ("a", "b"),
)


def make_tokenizer(tokenizer_json: Path, max_length: int) -> Tokenizer:
    """The fast tokenizer exactly as the serving code loads it."""
    return load_tokenizer(tokenizer_json, max_length)


def batch_arrays(
    tokenizer: Tokenizer, inputs: Sequence[str] | Sequence[tuple[str, str]]
) -> dict[str, np.ndarray]:
    """Token ids, mask and type ids for ``inputs`` (texts or pairs), padded to the longest."""
    return pad_encodings(tokenizer.encode_batch(list(inputs)))


def _feed(session: ort.InferenceSession, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in arrays.items() if k in names}


def onnx_all_outputs(
    onnx_path: Path, batches: Sequence[dict[str, np.ndarray]]
) -> list[list[np.ndarray]]:
    """Every output of the ONNX model (in graph order) for each batch, on the CPU provider."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return [[np.asarray(o) for o in session.run(None, _feed(session, b))] for b in batches]


def onnx_outputs(onnx_path: Path, batches: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """First output of the ONNX model for each batch, on the CPU provider."""
    return [outputs[0] for outputs in onnx_all_outputs(onnx_path, batches)]


def torch_all_outputs(
    model: torch.nn.Module, batches: Sequence[dict[str, np.ndarray]], accepted: Sequence[str]
) -> list[list[np.ndarray]]:
    """Every output of the wrapped torch model (one tensor, or a tuple of them) for each
    batch (eval mode, no grad)."""
    import torch

    results: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for batch in batches:
            args: list[Any] = [torch.from_numpy(batch[name]) for name in accepted]
            out = model(*args)
            tensors = out if isinstance(out, tuple) else (out,)
            results.append([t.detach().float().numpy() for t in tensors])
    return results


def torch_outputs(
    model: torch.nn.Module, batches: Sequence[dict[str, np.ndarray]], accepted: Sequence[str]
) -> list[np.ndarray]:
    """First output of the wrapped torch model for each batch (eval mode, no grad)."""
    return [outputs[0] for outputs in torch_all_outputs(model, batches, accepted)]


def parity_batches(
    tokenizer: Tokenizer, inputs: Sequence[str] | Sequence[tuple[str, str]]
) -> list[dict[str, np.ndarray]]:
    """Batches that test both shapes: all inputs padded together, and each input alone."""
    batches = [batch_arrays(tokenizer, inputs)]
    batches.extend(batch_arrays(tokenizer, inputs[i : i + 1]) for i in range(min(3, len(inputs))))
    return batches


class OutputParity:
    """The largest differences of exported graphs' named outputs from the wrapped torch
    model's, over the same batches: torch runs once; each graph in one session, one run per
    batch."""

    def __init__(
        self,
        wrapped: torch.nn.Module,
        accepted: Sequence[str],
        batches: Sequence[dict[str, np.ndarray]],
        outputs: Sequence[str],
    ) -> None:
        self.batches = batches
        self.outputs = list(outputs)
        self.reference = torch_all_outputs(wrapped, batches, accepted)

    def max_diffs(self, onnx_path: Path) -> dict[str, float]:
        """Per named output (in the graph's order), the largest absolute difference."""
        got = onnx_all_outputs(onnx_path, self.batches)
        return {
            name: max(
                float(np.abs(r[j] - g[j].astype(np.float32)).max())
                for r, g in zip(self.reference, got, strict=True)
            )
            for j, name in enumerate(self.outputs)
        }
