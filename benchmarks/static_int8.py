"""Static (calibrated, QDQ) int8 against the shipped dynamic int8 and fp32, side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/static_int8.py FP32_EXPORT [--repeats 5] [--output F]

FP32_EXPORT is `reranker export` of the first-stage-aware checkpoint without --int8 (e.g.
`reranker export runs/aware-v1/best runs/aware-fp32 --max-length 192`). Calibration reads
train pairs only (`../shared/data/train/*_train_triples.jsonl`: query with its positive and its
negative, 64 of each set) with features drawn uniformly in [0, 1]. Timing: the same 100 real
SciFact test pairs (tests/unit/conftest.py: load_scifact_pairs) through the shipped int8
`Scorer`, only the session swapped; interleaved repeats, median per graph. Ranking: Spearman
of each graph's logits against fp32's on those pairs (NDCG needs `reranker eval`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from benchmarks.session_options import session as options_session
from reranker.batching import pad_encodings
from reranker.rerank.scorer import Scorer
from tests.unit.conftest import load_scifact_pairs

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "train"
SHIPPED = REPO / "models" / "reranker-minilm-l6-aware"


def calibration_pairs(per_set: int = 64) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name in ("scifact", "stackexchange"):
        with (TRAIN / f"{name}_train_triples.jsonl").open(encoding="utf-8") as handle:
            for line, _ in zip(handle, range(per_set // 2), strict=False):
                row = json.loads(line)
                pairs += [(row["query"], row["positive"]), (row["query"], row["negative"])]
    return pairs


class Reader(CalibrationDataReader):
    """Batches of 16 tokenised the way the scorer tokenises, with random features."""

    def __init__(self, scorer: Scorer, pairs: list[tuple[str, str]], inputs: list[str]) -> None:
        rng = np.random.default_rng(0)
        self.batches: list[dict[str, np.ndarray]] = []
        for start in range(0, len(pairs), 16):
            chunk = pairs[start : start + 16]
            encodings, _ = scorer._encode(chunk)
            feeds = pad_encodings(encodings)
            feeds["first_stage"] = rng.random((len(chunk), 3), dtype=np.float32)
            self.batches.append({k: v for k, v in feeds.items() if k in inputs})
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]


def session(path: Path) -> ort.InferenceSession:
    """The shipped session options (``benchmarks/session_options.py``) over ``path``."""
    return options_session(str(path), {})


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score vectors (float logits: no ties to average)."""
    ranks = [np.argsort(np.argsort(x)).astype(np.float64) for x in (a, b)]
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    scorer = Scorer(SHIPPED, variant="int8", threads=2)
    fp32_path = args.fp32 / "model.onnx"
    inputs = [i.name for i in session(fp32_path).get_inputs()]
    work = Path(tempfile.mkdtemp(prefix="static-int8-"))
    graphs: dict[str, Path] = {
        "dynamic int8 (shipped)": SHIPPED / "model.int8.onnx",
        "fp32 (fused)": fp32_path,
    }
    calib = calibration_pairs()
    # symbolic shape inference knows the fused contrib ops (Attention, SkipLayerNormalization),
    # so calibration sees every tensor's type
    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True)
    forms = [
        ("static QDQ int8, MatMul, u8 activations", QuantType.QUInt8, ["MatMul"]),
        ("static QDQ int8, MatMul, s8 activations", QuantType.QInt8, ["MatMul"]),
        ("static QDQ int8, MatMul+Attention, u8", QuantType.QUInt8, ["MatMul", "Attention"]),
    ]
    for n, (label, activation, ops) in enumerate(forms):
        target = work / f"static-{n}.onnx"
        started = time.perf_counter()
        try:
            quantize_static(
                str(prepared),
                str(target),
                Reader(scorer, calib, inputs),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=ops,
                per_channel=True,
                activation_type=activation,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": activation == QuantType.QInt8},
            )
            session(target)  # a form ONNX Runtime cannot load is recorded, not timed
        except Exception as exc:  # record why a form could not be built
            print(f"{label}: failed: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        print(f"{label}: quantised in {time.perf_counter() - started:.0f} s")
        graphs[label] = target
    pairs = load_scifact_pairs()
    features = np.random.default_rng(1).random((len(pairs), 3), dtype=np.float32)
    sessions = {label: session(path) for label, path in graphs.items()}
    logits: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {label: [] for label in graphs}
    for label, candidate in sessions.items():  # one untimed run each
        scorer._session = candidate
        logits[label] = scorer.score(pairs, features=features)
    for _ in range(args.repeats):
        for label, candidate in sessions.items():
            scorer._session = candidate
            started = time.perf_counter()
            scorer.score(pairs, features=features)
            times[label].append(time.perf_counter() - started)
    shipped = statistics.median(times["dynamic int8 (shipped)"])
    result: dict[str, Any] = {}
    for label in graphs:
        median = statistics.median(times[label])
        rho = spearman(logits[label], logits["fp32 (fused)"])
        result[label] = {
            "ms_per_100_pairs": round(median * 1000 * 100 / len(pairs)),
            "x_shipped": round(median / shipped, 3),
            "spearman_vs_fp32": round(rho, 4),
            "size_mb": round(graphs[label].stat().st_size / 1e6, 1),
        }
        row = result[label]
        print(
            f"{label:36s} {row['ms_per_100_pairs']:6d} ms / 100 pairs  x{row['x_shipped']:.3f}"
            f"  Spearman vs fp32 {row['spearman_vs_fp32']:.4f}  {row['size_mb']} MB"
        )
    if args.output:
        payload = {"pairs": len(pairs), "repeats": args.repeats, "graphs": result}
        args.output.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
