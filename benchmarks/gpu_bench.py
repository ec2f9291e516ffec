"""The GPU benchmark behind ``benchmarks/gpu.sh``: fp16 on ONNX Runtime's CUDA provider.

    python benchmarks/gpu_bench.py --out OUT_DIR [--data DIR] [--model DIR] [--allow-cpu]

1. **fp16 variant.** The model folder's own ``fp16`` variant when it has one; else an export
   from ``--checkpoint`` (``reranker export --fp16``, needs torch); else the ``int8`` variant
   dequantised and converted (:mod:`export.dequantize`: same graph and speed as an fp16
   export, scores from the int8 weights' rounding). The shipped folders hold only int8.
2. **Scorer benchmark.** ``reranker bench scorer --no-torch --io-binding`` on that folder:
   100 SciFact pairs, ONNX Runtime fp32 on the CPU beside fp32 and fp16 on CUDA.
3. **Window-100 latency.** The first ``--queries`` SciFact test queries (300: all of them),
   each with its top ``--window`` (100) candidates from an in-process BM25
   (:class:`reranker.training.data.BM25`, the corpus in memory; Elasticsearch is not needed
   for a scoring latency), scored one window per call (``Scorer.score_query``: tokenisation,
   batching, the model, the scores back). Batch sizes are tried on the first windows and the
   fastest is timed over all windows, with IO binding and then without. Per-window p50, p95,
   p99, pairs per second.

Writes one JSON, ``OUT_DIR/gpu.json``. Without CUDA it stops with exit code 3 and says why,
unless ``--allow-cpu`` (or ``RERANKER_GPU_ALLOW_CPU=1``): then everything runs the same on the
CPU provider (that is how the tests run it). Exit codes: 0 done, 1 failure, 2 bad usage,
3 CUDA requested and not usable. The JSON is written in every case (``ok`` false on failure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SCHEMA = "reranker-gpu-bench/1"
EXIT_NO_CUDA = 3
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: the issue's target for a window of 100 on the GPU
TARGET_P50_MS = 10.0
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
DEFAULT_MODEL = REPO / "models" / "reranker-minilm-l6"


class NoCuda(Exception):
    """CUDA was asked for and cannot be used here."""


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def say(message: str) -> None:
    print(f"[gpu-bench] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float], pairs: int) -> dict[str, Any]:
    """p50/p95/p99/mean/max in ms of per-window times, and pairs per second overall."""
    ms = [s * 1000.0 for s in seconds]
    total = sum(seconds)
    return {
        "windows": len(ms),
        "pairs": pairs,
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "max_ms": round(max(ms), 3),
        "pairs_per_s": round(pairs / total, 1) if total > 0 else None,
    }


# --------------------------------------------------------------------------------------------
# the machine


def load_cuda_libraries() -> str | None:
    """Make the CUDA and cuDNN libraries loadable for the CUDA provider: PyTorch's CUDA
    build carries the same major versions, and importing it loads them (ONNX Runtime's
    documented way); else ``onnxruntime.preload_dlls``. Returns what was done."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"torch {torch.__version__} imported (its CUDA libraries loaded)"
    except Exception:  # torch absent or broken: try ORT's own loader
        pass
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(sys.stderr):
            preload(cuda=True, cudnn=True, msvc=False)
        return "onnxruntime.preload_dlls()"
    return None


def gpu_info() -> dict[str, Any]:
    """Name, driver and memory of GPU 0 (nvidia-smi, else torch); empty without a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            line = subprocess.run(
                [
                    smi,
                    "--query-gpu=name,driver_version,memory.total,compute_cap",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.splitlines()[0]
            name, driver, memory, capability = (x.strip() for x in line.split(","))
            return {
                "name": name,
                "driver": driver,
                "memory": memory,
                "compute_capability": capability,
            }
        except Exception:  # no GPU, or an nvidia-smi that cannot talk to the driver
            pass
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return {"name": torch.cuda.get_device_name(0)}
    return {}


def versions() -> dict[str, Any]:
    import onnxruntime as ort

    found: dict[str, Any] = {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "onnxruntime_file": str(Path(ort.__file__).parent),
    }
    with contextlib.suppress(Exception):
        from onnxruntime.capi import build_and_package_info as build

        found["onnxruntime_package"] = build.package_name
        found["onnxruntime_cuda"] = getattr(build, "cuda_version", None)
    for module in ("numpy", "tokenizers", "onnx", "torch"):
        with contextlib.suppress(Exception):
            found[module] = str(__import__(module).__version__)
    return found


def check_cuda(allow_cpu: bool) -> str:
    """The provider to measure: CUDA when this onnxruntime has it, else CPU if allowed,
    else :class:`NoCuda` saying what is missing."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA in available:
        return CUDA
    message = (
        f"CUDA requested, but onnxruntime {ort.__version__} here has no {CUDA} "
        f"(providers: {', '.join(available)}). Install the GPU runtime first "
        "(benchmarks/gpu.sh does: the `gpu` extra, onnxruntime-gpu, from --wheels DIR), "
        "or pass --allow-cpu to measure the same on the CPU."
    )
    if not allow_cpu:
        raise NoCuda(message)
    say(f"{message} Running on the CPU (--allow-cpu).")
    return CPU


# --------------------------------------------------------------------------------------------
# the model


def fp16_model(model: Path, checkpoint: Path | None, work: Path) -> tuple[Path, str]:
    """A folder with an ``fp16`` (and ``fp32``) variant, and how it was made."""
    from reranker.models import CROSS_ENCODER_CARD, read_card

    if checkpoint is not None:
        from export.onnx_export import export_cross_encoder

        out = export_cross_encoder(checkpoint, work / "model-fp16", fp16=True, name="gpu-bench")
        return out, f"exported from --checkpoint {checkpoint} (reranker export --fp16)"
    variants = read_card(model, CROSS_ENCODER_CARD).get("variants") or {}
    if "fp16" in variants and "fp32" in variants:
        return model, f"the fp16 variant of {model}"
    from export.dequantize import fp16_from_int8

    out = fp16_from_int8(model, work / "model-fp16")
    return out, (
        f"the int8 variant of {model} dequantised and converted to fp16 (export.dequantize): "
        "an fp16 export's graph and speed, scores from the int8 weights' rounding"
    )


def make_scorer(
    model: Path, provider: str, *, io_binding: bool, batch_size: int, max_length: int
) -> Any:
    from reranker.rerank.scorer import Scorer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = Scorer(
            model,
            providers=[provider],
            variant="fp16",
            io_binding=io_binding,
            max_batch_size=batch_size,
            max_batch_tokens=max(4096, batch_size * max_length),
            max_length=max_length,
        )
    if scorer.provider != provider:
        said = "; ".join(str(w.message) for w in caught)
        raise NoCuda(f"{provider} is installed but did not start ({said or 'no reason given'})")
    return scorer


# --------------------------------------------------------------------------------------------
# the windows


def bm25_windows(data: Path, queries: int, window: int) -> tuple[list[tuple[str, list[str]]], str]:
    """``(query text, top-``window`` passages)`` for the first ``queries`` test queries."""
    from reranker.corpus import CorpusSource, load_qrels, load_queries, passage_text
    from reranker.training.data import BM25

    texts = load_queries(data)
    qrels = load_qrels(data, "test")
    ids = [q for q in qrels if q in texts][:queries]
    passages = [passage_text(doc) for doc in CorpusSource.open(data).documents()]
    index = BM25(passages)
    windows = [(texts[q], [passages[i] for i, _ in index.top_k(texts[q], window)]) for q in ids]
    note = (
        f"first stage: in-process BM25 (reranker.training.data.BM25, k1 {index.k1}, "
        f"b {index.b}) over the {len(passages)} passages of {data}/corpus.jsonl, top {window} "
        "per query; Elasticsearch not used (only scoring is timed)"
    )
    return [w for w in windows if w[1]], note


def time_windows(
    score: Callable[[str, list[str]], object],
    windows: Sequence[tuple[str, list[str]]],
    deadline: float,
) -> list[float]:
    """Seconds per window (one call each), stopping early at ``deadline`` (monotonic)."""
    seconds: list[float] = []
    for query, passages in windows:
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        score(query, passages)
        seconds.append(time.perf_counter() - started)
    return seconds


def window_scorer(scorer: Any) -> Callable[[str, list[str]], object]:
    import numpy as np

    names = scorer.feature_names

    def score(query: str, passages: list[str]) -> object:
        if not names:
            return scorer.score_query(query, passages)
        features = np.full((len(passages), len(names)), 0.5, dtype=np.float32)
        return scorer.score_query(query, passages, features=features)

    return score


def breakdown(
    scorer: Any, score: Callable[[str, list[str]], object], windows: Sequence[tuple[str, list[str]]]
) -> dict[str, Any] | None:
    """Per window: the scorer's tokenisation alone, and the whole call minus it (batching,
    the model, the copies): p50 ms of each. None if the tokeniser cannot be reached."""
    encode = getattr(scorer, "_encode", None)
    if encode is None:
        return None
    tokenize: list[float] = []
    rest: list[float] = []
    for query, passages in windows:
        started = time.perf_counter()
        encode([(query, p) for p in passages])
        middle = time.perf_counter()
        score(query, passages)
        done = time.perf_counter()
        tokenize.append((middle - started) * 1000.0)
        rest.append(max(0.0, (done - middle) - (middle - started)) * 1000.0)
    return {
        "windows": len(windows),
        "tokenize_p50_ms": round(percentile(tokenize, 50), 3),
        "model_and_batching_p50_ms": round(percentile(rest, 50), 3),
    }


def run_windows(
    model: Path,
    provider: str,
    windows: list[tuple[str, list[str]]],
    *,
    batch_sizes: Sequence[int],
    sweep_windows: int,
    max_length: int,
    deadline: float,
) -> dict[str, Any]:
    pairs_of = [len(p) for _, p in windows]
    result: dict[str, Any] = {"sweep": []}
    best: tuple[float, int] | None = None
    sample = windows[: max(1, sweep_windows)]
    for batch_size in batch_sizes:
        scorer = make_scorer(
            model, provider, io_binding=True, batch_size=batch_size, max_length=max_length
        )
        score = window_scorer(scorer)
        time_windows(score, sample[:3], deadline)  # warm-up
        seconds = time_windows(score, sample, deadline)
        if not seconds:
            break
        row = latency_summary(seconds, sum(pairs_of[: len(seconds)]))
        result["sweep"].append({"batch_size": batch_size, **row})
        say(f"batch {batch_size}: p50 {row['p50_ms']} ms over {len(seconds)} windows")
        if best is None or row["p50_ms"] < best[0]:
            best = (row["p50_ms"], batch_size)
    if best is None:
        raise RuntimeError("no time left for the window benchmark")
    batch_size = best[1]
    result["batch_size"] = batch_size
    result["max_batch_tokens"] = max(4096, batch_size * max_length)
    for io_binding in (True, False):
        scorer = make_scorer(
            model, provider, io_binding=io_binding, batch_size=batch_size, max_length=max_length
        )
        score = window_scorer(scorer)
        time_windows(score, windows, deadline)  # warm pass: every shape once
        truncated = int(scorer.stats.truncated)
        seconds = time_windows(score, windows, deadline)
        truncated = int(scorer.stats.truncated) - truncated
        if not seconds:
            break
        row = latency_summary(seconds, sum(pairs_of[: len(seconds)]))
        if io_binding:
            result.update(row)
            result["io_binding"] = True
            result["breakdown"] = breakdown(scorer, score, windows[:100])
            result["truncated_pairs"] = truncated  # cut at max_length, in the timed pass
        else:
            result["without_io_binding"] = row
        say(
            f"{'IO binding' if io_binding else 'plain run'}: p50 {row['p50_ms']} ms, "
            f"p95 {row['p95_ms']} ms, {row['pairs_per_s']} pairs/s over {len(seconds)} windows"
        )
    if "p50_ms" not in result:
        raise RuntimeError("no time left to time the windows")
    if result["windows"] < len(windows):
        result["cut_short"] = f"{result['windows']} of {len(windows)} windows timed (deadline)"
    result["target_p50_ms"] = TARGET_P50_MS
    result["meets_target"] = bool(result["p50_ms"] <= TARGET_P50_MS)
    return result


def parity(model: Path, provider: str, window: tuple[str, list[str]]) -> dict[str, Any]:
    """fp16 on ``provider`` against the folder's fp32 on the CPU, on one window."""
    import numpy as np

    from reranker.rerank.scorer import Scorer

    query, passages = window
    reference = Scorer(model, providers=[CPU], variant="fp32")
    fp16 = make_scorer(model, provider, io_binding=True, batch_size=64, max_length=256)
    plain = make_scorer(model, provider, io_binding=False, batch_size=64, max_length=256)
    features = None
    if reference.feature_names:
        features = np.full((len(passages), len(reference.feature_names)), 0.5, dtype=np.float32)
    want = reference.score_query(query, passages, features=features)
    got = fp16.score_query(query, passages, features=features)
    same = plain.score_query(query, passages, features=features)
    top = min(10, len(passages))
    return {
        "pairs": len(passages),
        "max_abs_diff_fp16_vs_fp32_cpu": round(float(np.abs(got - want).max()), 5),
        "top10_overlap_fp16_vs_fp32_cpu": len(
            set(np.argsort(-got)[:top].tolist()) & set(np.argsort(-want)[:top].tolist())
        )
        / top,
        "max_abs_diff_io_binding_vs_plain": round(float(np.abs(got - same).max()), 6),
    }


# --------------------------------------------------------------------------------------------
# the command


def bench_scorer(
    model: Path, data: Path, out: Path, *, pairs: int, repeats: int, threads: int
) -> dict[str, Any]:
    """``reranker bench scorer --no-torch --io-binding`` in this process; its JSON."""
    from reranker.cli.bench import scorer_cmd

    args = [
        "--model",
        str(model),
        "--dataset",
        str(data),
        "--no-torch",
        "--io-binding",
        "--pairs",
        str(pairs),
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
        "--output",
        str(out),
    ]
    say("reranker bench scorer " + " ".join(args))
    with contextlib.redirect_stdout(sys.stderr):
        scorer_cmd.main(args=args, standalone_mode=False)
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    result["command"] = "reranker bench scorer " + " ".join(args)
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="fp16 cross-encoder on ONNX Runtime's CUDA provider: the scorer benchmark "
        "and the window-100 latency over SciFact test queries; writes OUT/gpu.json."
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SciFact (BEIR) folder")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="exported model folder")
    parser.add_argument("--checkpoint", type=Path, default=None, help="export fp16 from this")
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default: a temporary one)"
    )
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--batch-sizes", default="16,32,64,128", help="tried, fastest kept")
    parser.add_argument("--sweep-windows", type=int, default=40)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--scorer-pairs", type=int, default=100)
    parser.add_argument("--scorer-repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--skip-scorer-bench", action="store_true")
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="Unix time by which to stop measuring (default: now + --budget-s)",
    )
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        default=env_flag("RERANKER_GPU_ALLOW_CPU"),
        help="without CUDA, run on the CPU instead of failing [env RERANKER_GPU_ALLOW_CPU=1]",
    )
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(x) for x in str(args.batch_sizes).split(",") if x.strip()]
    except ValueError:
        parser.error(f"--batch-sizes must be integers separated by commas: {args.batch_sizes}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--batch-sizes needs at least one positive size")
    if args.queries < 1 or args.window < 1:
        parser.error("--queries and --window must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    budget = args.deadline - time.time() if args.deadline is not None else args.budget_s
    deadline = started + max(budget, 1.0)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work: Path = args.work or Path(tempfile.mkdtemp(prefix="reranker-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"schema": SCHEMA, "ok": False, "notes": []}
    seconds: dict[str, float] = {}
    code = 1
    try:
        for path, what in ((args.data, "--data"), (args.model, "--model")):
            if not path.is_dir():
                raise FileNotFoundError(f"{what} {path} is not a folder")
        import onnxruntime as ort

        if CUDA in ort.get_available_providers():
            report["cuda_libraries"] = load_cuda_libraries()
        provider = check_cuda(args.allow_cpu)
        report.update(
            provider=provider,
            device=gpu_info() if provider == CUDA else {"name": "CPU"},
            variant="fp16",
            io_binding=True,
            versions=versions(),
        )
        if provider == CPU:
            report["notes"].append("measured on the CPU (--allow-cpu): not a GPU result")

        t = time.monotonic()
        model, how = fp16_model(args.model, args.checkpoint, work)
        seconds["fp16_variant"] = round(time.monotonic() - t, 1)
        report["model"] = {"source": str(args.model), "folder": str(model), "fp16": how}
        say(f"fp16 variant: {how} ({seconds['fp16_variant']} s)")
        try:
            make_scorer(model, provider, io_binding=True, batch_size=16, max_length=args.max_length)
        except NoCuda as exc:
            if not args.allow_cpu:
                raise
            say(f"{exc}; running on the CPU (--allow-cpu)")
            report["notes"].append(f"measured on the CPU (--allow-cpu) because {exc}")
            provider = report["provider"] = CPU
            report["device"] = {"name": "CPU", "gpu": report.get("device")}

        if not args.skip_scorer_bench:
            t = time.monotonic()
            report["bench_scorer"] = bench_scorer(
                model,
                args.data,
                work / "bench-scorer.json",
                pairs=args.scorer_pairs,
                repeats=args.scorer_repeats,
                threads=args.threads,
            )
            seconds["bench_scorer"] = round(time.monotonic() - t, 1)

        t = time.monotonic()
        windows, first_stage = bm25_windows(args.data, args.queries, args.window)
        seconds["first_stage"] = round(time.monotonic() - t, 1)
        if not windows:
            raise RuntimeError(f"{args.data}: no test query has a BM25 candidate")
        report["data"] = {
            "path": str(args.data),
            "queries": len(windows),
            "window": args.window,
            "mean_window": round(sum(len(p) for _, p in windows) / len(windows), 1),
            "first_stage": first_stage,
        }
        t = time.monotonic()
        report["window"] = run_windows(
            model,
            provider,
            windows,
            batch_sizes=args.batch_sizes,
            sweep_windows=args.sweep_windows,
            max_length=args.max_length,
            deadline=deadline,
        )
        seconds["windows"] = round(time.monotonic() - t, 1)
        report["parity"] = parity(model, provider, windows[0])
        report["ok"] = True
        code = 0
    except NoCuda as exc:
        report["error"] = str(exc)
        say(f"error: {exc}")
        code = EXIT_NO_CUDA
    except Exception as exc:  # any failure still leaves a JSON saying what happened
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc(limit=8)
        say(f"error: {report['error']}")
        code = 1
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    seconds["total"] = round(time.monotonic() - started, 1)
    report["seconds"] = seconds
    target = out / "gpu.json"
    target.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    window = report.get("window") or {}
    if window:
        say(
            f"window {report['data']['window']}: p50 {window['p50_ms']} ms, p95 "
            f"{window['p95_ms']} ms, {window['pairs_per_s']} pairs/s on {report['provider']} "
            f"(target p50 ≤ {TARGET_P50_MS:g} ms: {'met' if window['meets_target'] else 'missed'})"
        )
    say(f"wrote {target}")
    return code


if __name__ == "__main__":
    sys.exit(main())
