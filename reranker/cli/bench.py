"""Speed benchmarks of the cross-encoder (``reranker bench ...``): measurements, not tests.

``reranker bench scorer`` reranks the same real (query, passage) pairs from SciFact with several
backends in one process and reports, per backend, the median wall time of the whole window
(tokenisation included), pairs per second and the arithmetic rate it reached, next to the
machine's measured matrix-multiply peak:

- ``torch-fp32``: transformers ``AutoModelForSequenceClassification`` in eager PyTorch;
- ``torch-bf16``: the same under CPU bf16 autocast, when the CPU supports bf16;
- ``ort-fp32`` / ``ort-int8``: :class:`reranker.rerank.scorer.Scorer` on the exported ONNX variants;
- ``ort-cuda-fp32`` / ``ort-cuda-fp16``: the same on CUDA, when this onnxruntime build has it
  (``--io-binding``: through IO binding).

``--no-torch`` leaves the torch backends out (no checkpoint needed, ``--model`` required):
how ``benchmarks/gpu.sh`` runs it on a GPU machine that has no checkpoint.

Every backend follows the Scorer's batching policy: pairs sorted by length, batches of at most
``--batch-size`` pairs and 4096 padded tokens, each padded only to its own longest pair.
Repeats are interleaved (each repeat runs every backend once, in turn) so that background load
on a shared machine hits all backends alike; each backend runs once untimed first.

Without ``--checkpoint`` the model is the shipped all-MiniLM-L6-v2 body with a fresh one-label
head (seeded): speed does not depend on the head's values, so an untrained head measures the
same as a fine-tuned one. Without ``--model`` that checkpoint is exported (fp32 and int8) to a
temporary folder first, so torch and ONNX Runtime run the very same weights.

FLOPs: a BERT-style encoder of L layers, width h and feed-forward width f spends about
``L·2·(4h² + 2hf)·n + L·4·h·n²`` FLOPs on a sequence of n tokens (projections, feed-forward,
then the two attention matmuls); for MiniLM-L6 ≈ 21.2M·n + 9216·n². "Useful" GFLOP/s counts
each pair's real tokens, "padded" GFLOP/s the tokens actually fed (rows × batch width).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from reranker.cli.bench_diversity import diversity_cmd
from reranker.cli.bench_window import window_cmd
from reranker.errors import RerankerError
from reranker.evaluation.lengths import length_curve, pair_lengths, parse_lengths
from reranker.evaluation.peaks import ModelDims, load_average, machine_info, measure_peaks
from reranker.evaluation.speed import (
    HEAD_SEED,
    MAX_BATCH_TOKENS,
    MAX_LENGTH,
    Backend,
    Pair,
    all_backends,
    card_source,
    check_dataset,
    collect_results,
    first_runs,
    make_fresh_head_checkpoint,
    median_ms,
    print_report,
    quiet_transformers,
    require_torch,
    say,
    select_pairs,
    timed_repeats,
    write_report,
)
from reranker.models import (
    CROSS_ENCODER_CARD,
    read_card,
    shipped_weights_dir,
    write_json_atomic,
)

# --------------------------------------------------------------------------------------------
# the command


@click.group()
def bench() -> None:
    """Benchmarks (speed), not tests."""


def _resolve_checkpoint(
    checkpoint: Path | None, model: Path | None, tmp: Path, notes: list[str]
) -> tuple[Path, str]:
    """The checkpoint the torch backends run (and the export starts from), and a note."""
    if checkpoint is not None:
        return checkpoint, f"--checkpoint {checkpoint}"
    if model is not None:
        source = card_source(model)
        if source is not None:
            return source, f"{source}, the checkpoint named in {model}'s card"
        notes.append(
            f"{model}'s card names no checkpoint that is still there: torch runs the shipped "
            "MiniLM with a fresh head, which may not be the same network as the ONNX model"
        )
    weights = shipped_weights_dir()
    say(f"building a fresh one-label head on {weights} (seed {HEAD_SEED})")
    made = make_fresh_head_checkpoint(weights, tmp / "checkpoint")
    return made, (
        f"shipped all-MiniLM-L6-v2 ({weights}) with a fresh one-label head "
        f"(seed {HEAD_SEED}; speed does not depend on the head's values)"
    )


def _timing_options(command: Any) -> Any:
    """The options every timing command shares: where the pairs come from, how many, how
    often, on how many threads, in what batches, and where the JSON goes."""
    options = [
        click.option(
            "--dataset",
            type=click.Path(path_type=Path),
            required=True,
            help="BEIR folder the pairs come from (e.g. ../shared/data/scifact).",
        ),
        click.option(
            "--pairs", "n_pairs", type=click.IntRange(min=1), default=100, show_default=True
        ),
        click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True),
        click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True),
        click.option(
            "--output",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Write the results as JSON here.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True, kw_only=True)
class TimingArgs:
    """The options every timing command shares (:func:`_timing_options`)."""

    dataset: Path
    n_pairs: int
    repeats: int
    threads: int
    batch_size: int
    output: Path | None


@dataclass(frozen=True, kw_only=True)
class ScorerBenchArgs(TimingArgs):
    """``bench scorer``'s options, as click parsed them."""

    model: Path | None
    checkpoint: Path | None
    use_torch: bool
    io_binding: bool


@bench.command("scorer")
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="An exported cross-encoder folder (reranker.json); default: export --checkpoint "
    "(fp32 + int8) to a temporary folder.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="A Hugging Face sequence-classification folder for the torch backends (and the export); "
    "default: the checkpoint named in --model's card, else the shipped all-MiniLM-L6-v2 body "
    "with a fresh one-label head.",
)
@_timing_options
@click.option(
    "--torch/--no-torch",
    "use_torch",
    default=True,
    show_default=True,
    help="--no-torch: ONNX Runtime backends only (no checkpoint needed; needs --model).",
)
@click.option(
    "--io-binding",
    is_flag=True,
    help="Run the CUDA backends through IO binding (inputs put on the GPU once per batch).",
)
def scorer_cmd(**options: Any) -> None:
    """Rerank real SciFact pairs with torch, ONNX Runtime fp32 and int8 side by side.

    Interleaved repeats, median wall time per backend (tokenisation included), useful and
    padded GFLOP/s against the measured matmul peak. Progress goes to stderr, the table to
    stdout.
    """
    run_scorer_bench(ScorerBenchArgs(**options))


def run_scorer_bench(a: ScorerBenchArgs) -> None:
    _prepare_scorer_bench(a)
    load_before = load_average()
    notes: list[str] = []
    selection = select_pairs(a.dataset, a.n_pairs)
    pairs = list(selection.pairs)
    if len(pairs) < a.n_pairs:
        notes.append(f"the corpus gave only {len(pairs)} pairs of the {a.n_pairs} asked for")
    say(
        f"{len(pairs)} pairs: query {selection.query_id} ({len(selection.relevant)} relevant "
        f"docs) from {a.dataset}"
    )

    with (
        quiet_transformers() if a.use_torch else contextlib.nullcontext(),
        tempfile.TemporaryDirectory(prefix="reranker-bench-") as tmp_name,
    ):
        tmp = Path(tmp_name)
        checkpoint, source_note = a.checkpoint, "not run (--no-torch)"
        if a.use_torch:
            checkpoint, source_note = _resolve_checkpoint(a.checkpoint, a.model, tmp, notes)
        model_dir, onnx_note = _onnx_model(a.model, checkpoint, tmp, pairs)
        say(f"ONNX model: {onnx_note}")
        backends = all_backends(
            checkpoint if a.use_torch else None,
            model_dir,
            a.threads,
            a.batch_size,
            notes,
            a.io_binding,
        )
        ort_fp32 = next(b for b in backends if b.name == "ort-fp32")
        max_length = int(ort_fp32.info["scorer"].max_length)

        say("measuring matmul peaks ...")
        peaks, peak_notes = measure_peaks(a.threads)
        notes += peak_notes
        say("  " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + " GFLOP/s")
        first_runs(backends, pairs, notes)
        peak_samples, load_per_repeat = timed_repeats(backends, pairs, a.repeats, a.threads, peaks)
        peaks = {kind: max(sample.get(kind, 0.0) for sample in peak_samples) for kind in peaks}
        load_after = load_average()

        results = collect_results(backends, pairs, peaks, max_length, notes)
        lengths = results.pop("_lengths")

    payload: dict[str, Any] = {
        "pairs": len(pairs),
        "backends": results,
        "peak_gflops": peaks,
        "threads": a.threads,
        "batch_size": a.batch_size,
        "max_batch_tokens": MAX_BATCH_TOKENS,
        "max_length": max_length,
        "repeats": a.repeats,
        "mean_tokens": round(float(np.mean(lengths)), 1),
        "tokens": {"min": int(min(lengths)), "max": int(max(lengths)), "sum": int(sum(lengths))},
        "peak_gflops_samples": peak_samples,
        # the median sample: what the matmul reached under the run's typical background load
        "peak_gflops_median": {
            kind: round(float(statistics.median(x.get(kind, 0.0) for x in peak_samples)), 1)
            for kind in peaks
        },
        "truncated_pairs": int(ort_fp32.info["scorer"].last_stats.truncated),
        "load_1min_per_repeat": load_per_repeat,
        "machine": {
            **machine_info(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "dataset": {
            "path": str(a.dataset),
            "query_id": selection.query_id,
            "relevant": list(selection.relevant),
            "doc_ids": list(selection.doc_ids),
        },
        "model": {"torch": source_note, "onnx": onnx_note},
        "notes": notes,
    }
    print_report(payload, results, lengths, a.output)


def _prepare_scorer_bench(a: ScorerBenchArgs) -> None:
    """Offline transformers, the inputs checked, torch's threads (or a model for --no-torch)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _check_inputs(a.dataset, a.model, a.checkpoint)
    if a.use_torch:
        require_torch()
        import torch

        torch.set_num_threads(a.threads)
    elif a.model is None:
        raise click.ClickException("--no-torch needs --model (an exported model folder)")


def _check_inputs(dataset: Path, model: Path | None, checkpoint: Path | None) -> None:
    """Clear errors for the command's inputs before any slow work."""
    check_dataset(dataset)
    if model is not None:
        read_card(model, CROSS_ENCODER_CARD)
    if checkpoint is not None and not (checkpoint / "config.json").is_file():
        raise click.ClickException(
            f"--checkpoint {checkpoint} is not a Hugging Face checkpoint folder (no config.json)"
        )


def _onnx_model(
    model: Path | None, checkpoint: Path | None, tmp: Path, pairs: Sequence[Pair]
) -> tuple[Path, str]:
    """The exported model the ONNX backends run, and a note: ``--model``, else ``checkpoint``
    exported (fp32 + int8, fp16 with CUDA) into ``tmp``."""
    if model is not None:
        return model, f"--model {model}"
    assert checkpoint is not None  # --no-torch needs --model
    import onnxruntime as ort

    from export.onnx_export import export_cross_encoder

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    say(f"exporting {checkpoint} to a temporary folder (fp32 + int8) ...")
    started = time.perf_counter()
    model_dir = export_cross_encoder(
        checkpoint,
        tmp / "onnx",
        int8=True,
        fp16=cuda,
        parity_pairs=pairs[:8],
        name="bench",
    )
    return model_dir, (
        f"exported from the same checkpoint to a temporary folder "
        f"({time.perf_counter() - started:.0f} s), int8 = dynamic per-channel"
    )


@dataclass(frozen=True, kw_only=True)
class LengthsBenchArgs(TimingArgs):
    """``bench lengths``' options, as click parsed them."""

    model: Path | None
    variant: str
    lengths: str


@bench.command("lengths")
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="An exported cross-encoder folder [default: RERANKER_MODEL or the shipped model].",
)
@click.option("--variant", default="int8", show_default=True, help="Exported variant to run.")
@click.option(
    "--lengths",
    default="128,192,256,320",
    show_default=True,
    help="Comma-separated max lengths, one Scorer each.",
)
@_timing_options
def lengths_cmd(**options: Any) -> None:
    """Time the same real SciFact pairs through the ONNX scorer at several max lengths.

    One :class:`~reranker.rerank.scorer.Scorer` per length (same model, variant, threads and
    batching); each runs once untimed, then ``--repeats`` interleaved rounds time every length
    in turn; the median wall time per length (tokenisation included), with the tokens fed,
    the pairs cut and the FLOP estimate. A first-stage-aware model gets the same seeded
    random features at every length (they change its scores, not its cost).
    """
    run_lengths_bench(LengthsBenchArgs(**options))


def run_lengths_bench(a: LengthsBenchArgs) -> None:
    from reranker.rerank.scorer import default_model_dir

    chosen = parse_lengths(a.lengths)
    check_dataset(a.dataset)
    model_dir = a.model or default_model_dir()
    read_card(model_dir, CROSS_ENCODER_CARD)
    dims = ModelDims.from_config(model_dir)
    load_before = load_average()
    selection = select_pairs(a.dataset, a.n_pairs)
    pairs = list(selection.pairs)
    say(f"{len(pairs)} pairs: query {selection.query_id} from {a.dataset}")
    backends = [_length_backend(model_dir, length, a, dims, pairs) for length in chosen]
    for b in backends:
        b.scores = np.asarray(b.run(pairs), dtype=np.float32)
    _, load_per_repeat = timed_repeats(backends, pairs, a.repeats)
    reference = next((b for b in backends if b.info["scorer"].max_length == MAX_LENGTH), None)
    rows: dict[str, dict[str, Any]] = {}
    for b in backends:
        row = _length_row(b, dims, pairs, reference)
        rows[b.name] = row
    payload: dict[str, Any] = {
        "model": str(model_dir),
        "variant": a.variant,
        "pairs": len(pairs),
        "threads": a.threads,
        "batch_size": a.batch_size,
        "repeats": a.repeats,
        "results": list(rows.values()),  # a list: in the order of --lengths
        "load_1min_per_repeat": load_per_repeat,
        "machine": {
            **machine_info(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "dataset": {
            "path": str(a.dataset),
            "query_id": selection.query_id,
            "doc_ids": list(selection.doc_ids),
        },
    }
    click.echo(
        f"{len(pairs)} pairs, {a.variant}, {a.threads} threads, batch ≤ {a.batch_size}, median of "
        f"{a.repeats} interleaved repeats; load average {load_before} → {load_average()}"
    )
    click.echo(f"{'length':>7}{'ms':>9}{'pairs/s':>9}{'mean tok':>10}{'cut':>5}{'GFLOP':>8}")
    for row in rows.values():
        click.echo(
            f"{row['max_length']:>7}{row['ms']:>9.1f}{row['pairs_per_s']:>9.1f}"
            f"{row['mean_tokens']:>10.1f}{row['truncated_pairs']:>5}{row['gflop']:>8.2f}"
        )
    write_report(a.output, payload)


def _length_backend(
    model_dir: Path, length: int, a: LengthsBenchArgs, dims: ModelDims, pairs: list[Pair]
) -> Backend:
    """The ONNX scorer at max length ``length`` (a first-stage-aware one fed random
    features: its cost does not depend on their values)."""
    from reranker.rerank.scorer import CPU, Scorer

    try:
        s = Scorer(
            model_dir,
            providers=[CPU],
            variant=a.variant,
            threads=a.threads,
            max_batch_size=a.batch_size,
            max_batch_tokens=MAX_BATCH_TOKENS,  # the Scorer's default, as eval and serve run
            max_length=length,
        )
    except RerankerError as exc:
        raise click.ClickException(f"max length {length}: {exc}") from exc
    if s.max_length != length:
        raise click.ClickException(
            f"max length {length} is beyond {model_dir}'s position limit ({s.max_length})"
        )
    run = s.score
    if s.feature_names:  # a first-stage-aware model: its cost does not depend on the values
        features = np.random.default_rng(0).random(
            (len(pairs), len(s.feature_names)), dtype=np.float32
        )
        run = functools.partial(s.score, features=features)
    return Backend(name=f"len{length}", run=run, dims=dims, info={"scorer": s})


def _length_row(
    b: Backend, dims: ModelDims, pairs: list[Pair], reference: Backend | None
) -> dict[str, Any]:
    """One length's row: time, throughput, tokens, FLOPs, and the scores' distance to 256's."""
    s = b.info["scorer"]
    stats = s.last_stats
    ms = median_ms(b.seconds)
    useful = sum(dims.flops(n) for n in pair_lengths(s, pairs))
    row: dict[str, Any] = {
        "max_length": s.max_length,
        "ms": round(ms, 1),
        "pairs_per_s": round(len(pairs) / (ms / 1000.0), 2),
        "runs_ms": [round(x * 1000.0, 1) for x in b.seconds],
        "tokens": stats.tokens,
        "mean_tokens": round(stats.tokens / max(1, stats.pairs), 1),
        "padded_tokens": stats.padded_tokens,
        "truncated_pairs": stats.truncated,
        "gflop": round(useful / 1e9, 2),
        "gflops": round(useful / (ms / 1000.0) / 1e9, 2),
    }
    if reference is not None and reference.scores is not None and b.scores is not None:
        ref_ms = median_ms(reference.seconds)
        row["ms_vs_256"] = round(ms / ref_ms, 3)
        row["max_abs_diff_vs_256"] = round(float(np.abs(b.scores - reference.scores).max()), 4)
    return row


@bench.command("length-curve")
@click.argument("evals", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--speed",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A `bench lengths --output` result: ms per 100 pairs per length.",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="The cross-encoder folder whose card to update [default: RERANKER_MODEL or the "
    "shipped model].",
)
@click.option("--note", default=None, help="What else ran on the machine, for the card.")
@click.option(
    "--write/--dry-run",
    default=False,
    show_default=True,
    help="--write: record the curve as the card's max_length_curve and set its max_length "
    "to the chosen length (the card hashes the other files only, so they stay valid).",
)
def length_curve_cmd(
    evals: tuple[Path, ...],
    speed: Path | None,
    model: Path | None,
    note: str | None,
    write: bool,
) -> None:
    """NDCG@10 against max length from `reranker eval --max-length N --output` results, and
    the length chosen: the shortest within 0.005 NDCG@10 of 256 on every dataset."""
    from reranker.rerank.scorer import default_model_dir

    runs = [json.loads(path.read_text(encoding="utf-8")) for path in evals]
    timing = json.loads(speed.read_text(encoding="utf-8")) if speed else None
    curve = length_curve(runs, timing)
    if note:
        curve["note"] = note
    model_dir = model or default_model_dir()
    card = read_card(model_dir, CROSS_ENCODER_CARD)
    variant_file = (card.get("variants") or {}).get(curve["variant"], {}).get("file", "")
    version = card.get("version") or str(card["files"].get(variant_file, ""))[:12]
    if (card.get("name"), version) != (curve["model"], curve["model_version"]):
        raise click.ClickException(f"the eval results are not of the model in {model_dir}")
    click.echo(json.dumps(curve, indent=2))
    if write:
        card["max_length_curve"] = curve
        card["max_length"] = curve["chosen"]
        write_json_atomic(model_dir / CROSS_ENCODER_CARD, card)
        say(f"wrote max_length_curve and max_length {curve['chosen']} into {model_dir}")


bench.add_command(window_cmd)
bench.add_command(diversity_cmd)
