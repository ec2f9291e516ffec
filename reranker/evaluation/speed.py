"""Scoring-speed measurements: the pairs, the backends (ONNX Runtime and torch at each
precision), timed repeats and their results."""

from __future__ import annotations

import contextlib
import logging
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from reranker.batching import head_scores, pad_encodings, padded_tokens, plan_batches
from reranker.corpus import CorpusSource, load_qrels, load_queries, passage_text
from reranker.errors import ModelError, RerankerError, SourceError
from reranker.evaluation.peaks import ModelDims, bf16_supported, load_average, measure_peaks
from reranker.models import (
    CROSS_ENCODER_CARD,
    checkpoint_tokenizer,
    load_tokenizer,
    read_card,
    write_json_atomic,
)

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from reranker.rerank.scorer import Scorer

Pair = tuple[str, str]

#: padded tokens per batch, the Scorer's default (a batch of 16 pairs of 256 tokens fits)
MAX_BATCH_TOKENS = 4096
#: sequence length the Scorer truncates to by default
MAX_LENGTH = 256
#: seed of the fresh classification head on the shipped weights
HEAD_SEED = 0
#: pause between two timed runs, so thread pools still spinning from the previous backend
#: (ONNX Runtime's and OpenMP's workers spin a little after each call) do not slow the next
GAP_S = 0.1
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


@dataclass(frozen=True)
class BenchPairs:
    """The benchmark's pairs: one query against its relevant documents and filler documents."""

    query_id: str
    query: str
    relevant: tuple[str, ...]  # relevant doc ids found in the corpus, in qrels order
    doc_ids: tuple[str, ...]  # one per pair
    pairs: tuple[Pair, ...]


def select_pairs(dataset: Path, n: int, split: str = "test") -> BenchPairs:
    """``n`` deterministic (query, passage) pairs from a BEIR folder.

    The query is the first one judged in ``qrels/<split>.tsv`` (with a positive grade and a
    text in ``queries.jsonl``); its relevant documents come first (qrels order), then the
    first other documents of ``corpus.jsonl`` in file order, until ``n`` pairs. Passages are
    :func:`~reranker.corpus.passage_text`. Fewer than ``n`` only when the corpus is smaller.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise SourceError(f"dataset folder {dataset} does not exist (a BEIR folder expected)")
    qrels = load_qrels(dataset, split)
    queries = load_queries(dataset)
    chosen: tuple[str, list[str]] | None = None
    for query_id, judged in qrels.items():
        relevant = [doc for doc, grade in judged.items() if grade > 0]
        if relevant and query_id in queries:
            chosen = (query_id, relevant)
            break
    if chosen is None:
        raise SourceError(f"{dataset}: no query of split {split!r} has a relevant document")
    query_id, relevant_ids = chosen
    wanted = set(relevant_ids[:n])
    found: dict[str, str] = {}
    others: list[tuple[str, str]] = []
    need_others = n - len(wanted)
    for doc in CorpusSource.open(dataset).documents():
        doc_id = str(doc["_id"])
        if doc_id in wanted:
            found[doc_id] = passage_text(doc)
        elif len(others) < need_others:
            others.append((doc_id, passage_text(doc)))
        if len(found) == len(wanted) and len(others) >= need_others:
            break
    relevant = [doc for doc in relevant_ids if doc in found]
    # relevant docs missing from the corpus leave room for more filler, never more than n
    chosen_docs = [(doc, found[doc]) for doc in relevant] + others
    chosen_docs = chosen_docs[:n]
    query = queries[query_id]
    return BenchPairs(
        query_id=query_id,
        query=query,
        relevant=tuple(relevant),
        doc_ids=tuple(doc for doc, _ in chosen_docs),
        pairs=tuple((query, text) for _, text in chosen_docs),
    )


def median_ms(seconds: Sequence[float]) -> float:
    """The median of wall times given in seconds, in milliseconds."""
    if not seconds:
        raise ValueError("no timings")
    return float(statistics.median(seconds)) * 1000.0


# --------------------------------------------------------------------------------------------
# backends


@dataclass
class Backend:
    """One way of scoring the pairs; ``run`` takes the pairs and returns one score each."""

    name: str
    run: Callable[[Sequence[Pair]], np.ndarray]
    dims: ModelDims
    info: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    scores: np.ndarray | None = None


def require_torch() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            "the benchmark needs torch and transformers (the train extra): "
            f"./scripts/setup --train, or pass --no-torch ({exc})"
        ) from exc


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' "newly initialized weights" chatter and progress bars."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    bars = bool(hf_logging.is_progress_bar_enabled())
    getattr(hf_logging, "disable_progress_bar")()  # noqa: B009 (untyped in transformers)
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            getattr(hf_logging, "enable_progress_bar")()  # noqa: B009


def make_fresh_head_checkpoint(weights: Path, out: Path, *, seed: int = HEAD_SEED) -> Path:
    """A sequence-classification checkpoint: the encoder ``weights``, a fresh one-label head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(weights), num_labels=1, local_files_only=True
        )
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out))
    for name in _TOKENIZER_FILES:
        if (weights / name).is_file():
            shutil.copy2(weights / name, out / name)
    return out


def bench_tokenizer(checkpoint: Path, max_length: int) -> Tokenizer:
    """The checkpoint's fast tokenizer, longest-first truncation at ``max_length``."""
    if (checkpoint / "tokenizer.json").is_file():
        return load_tokenizer(checkpoint / "tokenizer.json", max_length)
    tokenizer = checkpoint_tokenizer(checkpoint)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    return tokenizer


class TorchRunner:
    """Eager PyTorch scoring with the Scorer's tokenisation and batching policy."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        bf16: bool = False,
    ) -> None:
        import inspect

        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.bf16 = bf16
        self.types = "token_type_ids" in inspect.signature(model.forward).parameters

    def __call__(self, pairs: Sequence[Pair]) -> np.ndarray:
        import torch

        encodings = self.tokenizer.encode_batch(list(pairs))
        lengths = [len(e.ids) for e in encodings]
        out = np.empty(len(pairs), dtype=np.float32)
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            for rows in plan_batches(lengths, self.max_batch_size, self.max_batch_tokens):
                arrays = pad_encodings([encodings[r] for r in rows])
                if not self.types:
                    del arrays["token_type_ids"]
                inputs = {name: torch.from_numpy(array) for name, array in arrays.items()}
                out[rows] = head_scores(self.model(**inputs).logits.float().numpy())
        return out


def say(message: str) -> None:
    click.echo(message, err=True)


def check_dataset(dataset: Path) -> None:
    if not dataset.is_dir():
        raise click.ClickException(
            f"dataset folder {dataset} does not exist: give --dataset a BEIR folder "
            "(corpus.jsonl, queries.jsonl, qrels/test.tsv)"
        )
    missing = [
        name
        for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")
        if not (dataset / name).is_file()
    ]
    if missing:
        raise click.ClickException(f"dataset folder {dataset} lacks {', '.join(missing)}")


def card_source(model: Path) -> Path | None:
    """The checkpoint a model folder was exported from, when its card names one still there."""
    card = read_card(model, CROSS_ENCODER_CARD)
    source = card.get("source")
    path = source.get("path") if isinstance(source, dict) else None
    if isinstance(path, str) and (Path(path) / "config.json").is_file():
        return Path(path)
    return None


def ort_backends(
    model_dir: Path,
    *,
    threads: int,
    batch_size: int,
    notes: list[str],
    io_binding: bool = False,
) -> list[Backend]:
    import onnxruntime as ort

    from reranker.rerank.scorer import CPU, CUDA, Scorer

    dims = ModelDims.from_config(model_dir)
    card = read_card(model_dir, CROSS_ENCODER_CARD)
    variants = card.get("variants") or {}

    def scorer(variant: str, providers: list[str]) -> Scorer:
        return Scorer(
            model_dir,
            providers=providers,
            variant=variant,
            threads=threads,
            max_batch_size=batch_size,
            max_batch_tokens=MAX_BATCH_TOKENS,
            max_length=MAX_LENGTH,
            io_binding=io_binding and CUDA in providers,
        )

    def backend(name: str, s: Scorer) -> Backend:
        def run(pairs: Sequence[Pair]) -> np.ndarray:
            if not s.feature_names:
                return s.score(pairs)
            # a first-stage-aware model: the features cost nothing to score; any values do
            features = np.full((len(pairs), len(s.feature_names)), 0.5, dtype=np.float32)
            return s.score(pairs, features=features)

        return Backend(
            name=name,
            run=run,
            dims=dims,
            info={
                "provider": s.provider,
                "variant": s.variant,
                "io_binding": s.io_binding,
                "scorer": s,
            },
        )

    backends = [backend("ort-fp32", scorer("fp32", [CPU]))]
    if "int8" in variants:
        backends.append(backend("ort-int8", scorer("int8", [CPU])))
    else:
        notes.append(f"{model_dir} has no int8 variant: ort-int8 not measured")
    if CUDA in ort.get_available_providers():
        for variant in ("fp32", "fp16"):
            if variant not in variants:
                notes.append(f"{model_dir} has no {variant} variant: ort-cuda-{variant} skipped")
                continue
            try:
                s = scorer(variant, [CUDA])
            except RerankerError as exc:
                notes.append(f"ort-cuda-{variant} skipped: {exc}")
                continue
            if s.provider != CUDA:
                notes.append(f"ort-cuda-{variant} skipped: CUDA did not start ({s.provider} ran)")
                continue
            backends.append(backend(f"ort-cuda-{variant}", s))
    return backends


def torch_backends(
    checkpoint: Path,
    *,
    max_length: int,
    batch_size: int,
    notes: list[str],
) -> list[Backend]:
    from transformers import AutoModelForSequenceClassification

    dims = ModelDims.from_config(checkpoint)
    try:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(checkpoint), local_files_only=True
            ).eval()
    except Exception as exc:  # transformers raises many types here
        raise ModelError(
            f"{checkpoint}: cannot load a sequence-classification model: {exc}"
        ) from exc
    tokenizer = bench_tokenizer(checkpoint, max_length)
    attn = str(getattr(model.config, "_attn_implementation", "?"))
    info = {"checkpoint": str(checkpoint), "attention": attn}
    backends = [
        Backend(
            "torch-fp32",
            TorchRunner(
                model,
                tokenizer,
                max_batch_size=batch_size,
                max_batch_tokens=MAX_BATCH_TOKENS,
            ),
            dims,
            dict(info),
        )
    ]
    if bf16_supported():
        backends.append(
            Backend(
                "torch-bf16",
                TorchRunner(
                    model,
                    tokenizer,
                    max_batch_size=batch_size,
                    max_batch_tokens=MAX_BATCH_TOKENS,
                    bf16=True,
                ),
                dims,
                {**info, "autocast": "bfloat16"},
            )
        )
    else:
        notes.append("this CPU (or torch build) has no bf16 kernels: torch-bf16 not measured")
    return backends


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    header = ("backend", "ms", "pairs/s", "GFLOP/s", "padded", "% fp32 peak", "× torch-fp32")
    lines = [
        [
            name,
            _fmt(r["ms"], ".0f"),
            _fmt(r["pairs_per_s"], ".1f"),
            _fmt(r["gflops"], ".1f"),
            _fmt(r["padded_gflops"], ".1f"),
            _fmt(r.get("pct_fp32_peak"), ".0f"),
            _fmt(r.get("speedup_vs_torch_fp32"), ".2f"),
        ]
        for name, r in rows.items()
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    for line in lines:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
    return "\n".join(out)


def first_runs(backends: list[Backend], pairs: Sequence[Pair], notes: list[str]) -> None:
    """One untimed run of each backend (lazy setup), which also gives the scores compared;
    a backend other than torch-fp32 and ort-fp32 whose run fails is dropped with a note."""
    for b in list(backends):
        try:
            b.scores = np.asarray(b.run(pairs), dtype=np.float32)
        except Exception as exc:  # bf16 autocast or CUDA failing at run time
            if b.name in {"torch-fp32", "ort-fp32"}:
                raise
            notes.append(f"{b.name} skipped: its first run failed: {exc}")
            backends.remove(b)


def timed_repeats(
    backends: Sequence[Backend],
    pairs: Sequence[Pair],
    repeats: int,
    threads: int | None = None,
    peaks: dict[str, float] | None = None,
) -> tuple[list[dict[str, float]], list[float]]:
    """``repeats`` rounds, each timing every backend once in turn (into ``Backend.seconds``)
    and, given ``peaks`` and ``threads``, sampling the matmul peaks again between rounds;
    returns the peak samples (``peaks`` first) and the 1-minute load average after each
    round."""
    peak_samples = [peaks] if peaks is not None else []
    load_per_repeat: list[float] = []
    for r in range(repeats):
        for b in backends:
            time.sleep(GAP_S)
            started = time.perf_counter()
            b.run(pairs)
            b.seconds.append(time.perf_counter() - started)
        load_per_repeat.extend(load_average()[:1])
        say(
            f"repeat {r + 1}/{repeats}: "
            + ", ".join(f"{b.name} {b.seconds[-1] * 1000:.0f} ms" for b in backends)
        )
        if peaks is not None and threads is not None and r + 1 < repeats:
            # sample the peaks again between rounds: the best sample is the least disturbed
            peak_samples.append(measure_peaks(threads, repeats=2)[0])
    return peak_samples, load_per_repeat


def collect_results(
    backends: Sequence[Backend],
    pairs: Sequence[Pair],
    peaks: dict[str, float],
    max_length: int,
    notes: list[str],
) -> dict[str, Any]:
    """Per-backend figures (and ``_lengths``: the real token count of each pair)."""
    results: dict[str, Any] = {}
    reference: np.ndarray | None = None
    torch_ms: float | None = None
    lengths: list[int] = []
    for b in backends:
        if isinstance(b.run, TorchRunner):
            tokenizer = b.run.tokenizer
        else:
            scorer = b.info["scorer"]
            tokenizer = load_tokenizer(scorer.model_dir / "tokenizer.json", max_length)
        lengths = [len(e.ids) for e in tokenizer.encode_batch(list(pairs))]
        batches = plan_batches(lengths, _batch_size(b), MAX_BATCH_TOKENS)
        padded = padded_tokens(lengths, batches)
        useful = sum(b.dims.flops(n) for n in lengths)
        padded_flops = sum(
            len(rows) * b.dims.flops(max(lengths[r] for r in rows)) for rows in batches
        )
        ms = median_ms(b.seconds)
        row: dict[str, Any] = {
            "ms": round(ms, 1),
            "pairs_per_s": round(len(pairs) / (ms / 1000.0), 2),
            "gflops": round(useful / (ms / 1000.0) / 1e9, 2),
            "padded_gflops": round(padded_flops / (ms / 1000.0) / 1e9, 2),
            "runs_ms": [round(s * 1000.0, 1) for s in b.seconds],
            "tokens": sum(lengths),
            "padded_tokens": padded,
            "batches": len(batches),
        }
        if "fp32" in peaks:
            row["pct_fp32_peak"] = round(100.0 * row["gflops"] / peaks["fp32"], 1)
        if "scorer" in b.info:
            stats = b.info["scorer"].last_stats
            if (stats.tokens, stats.padded_tokens) != (sum(lengths), padded):
                notes.append(
                    f"{b.name}: the Scorer fed {stats.tokens} tokens ({stats.padded_tokens} "
                    f"padded), the FLOP count assumed {sum(lengths)} ({padded})"
                )
        row.update({k: v for k, v in b.info.items() if k != "scorer"})
        if b.name == "torch-fp32":
            reference = b.scores
            torch_ms = ms
        if torch_ms is not None:
            row["speedup_vs_torch_fp32"] = round(torch_ms / ms, 2)
        if reference is not None and b.scores is not None and b.name != "torch-fp32":
            row["max_abs_diff_vs_torch_fp32"] = round(float(np.abs(b.scores - reference).max()), 5)
        results[b.name] = row
    results["_lengths"] = lengths
    return results


def _batch_size(backend: Backend) -> int:
    if isinstance(backend.run, TorchRunner):
        return backend.run.max_batch_size
    return int(backend.info["scorer"].max_batch_size)


# --------------------------------------------------------------------------------------------
# bench window: the reranking of a whole first-stage window, step by step


@dataclass(frozen=True)
class WindowStep:
    """One rung of the window ladder: which model reranks, at what max length, with or
    without the first stage as a cascade's cheap level (``cascade_k``), with or without the
    second embedder's cosine (``rescore``)."""

    name: str
    model: Path
    max_length: int | None
    cascade_k: int | None = None
    rescore: bool = False


def window_ladder(
    baseline: Path,
    model: Path,
    lengths: Sequence[int],
    cascade_k: int | None,
    *,
    rescore: bool = False,
) -> list[WindowStep]:
    """The steps from ``baseline`` (at its card's length) to ``model`` at each of ``lengths``
    in turn, then ``model`` at the last length with the first-stage cascade, then (with
    ``rescore``) with the second embedder too: each step changes one thing, so each step's
    ratio to the one before is that change's share."""
    steps = [WindowStep("baseline", baseline, None)]
    for length in lengths:
        steps.append(WindowStep(f"model@{length}", model, length))
    if cascade_k is not None:
        last = lengths[-1] if lengths else None
        steps.append(WindowStep(f"model@{last}+cascade{cascade_k}", model, last, cascade_k))
    if rescore:
        last_step = steps[-1]
        steps.append(
            WindowStep(
                f"{last_step.name}+rescore",
                model,
                last_step.max_length,
                last_step.cascade_k,
                rescore=True,
            )
        )
    return steps


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q)) * 1000.0


def all_backends(
    checkpoint: Path | None,
    model_dir: Path,
    threads: int,
    batch_size: int,
    notes: list[str],
    io_binding: bool = False,
) -> list[Backend]:
    """The torch backends on ``checkpoint`` (none without one: ``--no-torch``) and the ONNX
    ones on ``model_dir``; torch tokenises at the ONNX model's ``max_length`` when that is
    below :data:`MAX_LENGTH`."""
    backends = (
        torch_backends(checkpoint, max_length=MAX_LENGTH, batch_size=batch_size, notes=notes)
        if checkpoint is not None
        else []
    )
    backends += ort_backends(
        model_dir, threads=threads, batch_size=batch_size, notes=notes, io_binding=io_binding
    )
    ort_fp32 = next(b for b in backends if b.name == "ort-fp32")
    max_length = int(ort_fp32.info["scorer"].max_length)
    if max_length != MAX_LENGTH and checkpoint is not None:
        # a model with fewer positions: tokenise torch's pairs the same way
        for b in backends:
            if isinstance(b.run, TorchRunner):
                b.run.tokenizer = bench_tokenizer(checkpoint, max_length)
    return backends


def print_report(
    payload: dict[str, Any],
    results: dict[str, dict[str, Any]],
    lengths: Sequence[int],
    output: Path | None,
) -> None:
    """The summary and the table on stdout; the JSON into ``output`` when given."""
    max_length, threads = payload["max_length"], payload["threads"]
    load = payload["machine"]
    click.echo(
        f"{payload['pairs']} pairs, mean {payload['mean_tokens']} tokens (max {max(lengths)}, "
        f"{payload['truncated_pairs']} cut at {max_length}), "
        f"{threads} threads, batch ≤ {payload['batch_size']}, median of {payload['repeats']}; "
        f"load average {load['load_average_before']} → {load['load_average_after']}"
    )
    peaks = payload["peak_gflops"]
    click.echo("matmul peak: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + " GFLOP/s")
    click.echo(f"torch: {payload['model']['torch']}\nonnx: {payload['model']['onnx']}")
    click.echo(format_table(results))
    for note in payload["notes"]:
        click.echo(f"note: {note}")
    write_report(output, payload)


def write_report(output: Path | None, payload: dict[str, Any]) -> None:
    """A benchmark's JSON into ``output`` (its folder made), when one is given."""
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output, payload)
        say(f"wrote {output}")
