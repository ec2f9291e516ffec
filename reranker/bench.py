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
import logging
import os
import platform
import shutil
import statistics
import tempfile
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
from reranker.models import (
    CROSS_ENCODER_CARD,
    checkpoint_tokenizer,
    load_tokenizer,
    read_card,
    shipped_weights_dir,
    write_json_atomic,
)

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from reranker.rerank.scorer import Scorer

Pair = tuple[str, str]

DEFAULT_DATASET = Path("../shared/data/scifact")
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


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            "the benchmark needs torch and transformers (the train extra): "
            f"./scripts/setup --train, or pass --no-torch ({exc})"
        ) from exc


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
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
    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(weights), num_labels=1, local_files_only=True
        )
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out))
    for name in _TOKENIZER_FILES:
        if (weights / name).is_file():
            shutil.copy2(weights / name, out / name)
    return out


def _checkpoint_tokenizer(checkpoint: Path, max_length: int) -> Tokenizer:
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


def _bf16_supported() -> bool:
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
    if _bf16_supported():
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


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --------------------------------------------------------------------------------------------
# the command


@click.group()
def bench() -> None:
    """Benchmarks (speed), not tests."""


def _say(message: str) -> None:
    click.echo(message, err=True)


def _check_dataset(dataset: Path) -> None:
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


def _resolve_checkpoint(
    checkpoint: Path | None, model: Path | None, tmp: Path, notes: list[str]
) -> tuple[Path, str]:
    """The checkpoint the torch backends run (and the export starts from), and a note."""
    if checkpoint is not None:
        return checkpoint, f"--checkpoint {checkpoint}"
    if model is not None:
        source = _card_source(model)
        if source is not None:
            return source, f"{source}, the checkpoint named in {model}'s card"
        notes.append(
            f"{model}'s card names no checkpoint that is still there: torch runs the shipped "
            "MiniLM with a fresh head, which may not be the same network as the ONNX model"
        )
    weights = shipped_weights_dir()
    _say(f"building a fresh one-label head on {weights} (seed {HEAD_SEED})")
    made = make_fresh_head_checkpoint(weights, tmp / "checkpoint")
    return made, (
        f"shipped all-MiniLM-L6-v2 ({weights}) with a fresh one-label head "
        f"(seed {HEAD_SEED}; speed does not depend on the head's values)"
    )


def _card_source(model: Path) -> Path | None:
    """The checkpoint a model folder was exported from, when its card names one still there."""
    card = read_card(model, CROSS_ENCODER_CARD)
    source = card.get("source")
    path = source.get("path") if isinstance(source, dict) else None
    if isinstance(path, str) and (Path(path) / "config.json").is_file():
        return Path(path)
    return None


def _ort_backends(
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


def _torch_backends(
    checkpoint: Path,
    *,
    max_length: int,
    batch_size: int,
    notes: list[str],
) -> list[Backend]:
    from transformers import AutoModelForSequenceClassification

    dims = ModelDims.from_config(checkpoint)
    try:
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(checkpoint), local_files_only=True
            ).eval()
    except Exception as exc:  # transformers raises many types here
        raise ModelError(
            f"{checkpoint}: cannot load a sequence-classification model: {exc}"
        ) from exc
    tokenizer = _checkpoint_tokenizer(checkpoint, max_length)
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
    if _bf16_supported():
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


def _table(rows: dict[str, dict[str, Any]]) -> str:
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


def _timing_options(command: Any) -> Any:
    """The options every timing command shares: where the pairs come from, how many, how
    often, on how many threads, in what batches, and where the JSON goes."""
    options = [
        click.option(
            "--dataset",
            type=click.Path(path_type=Path),
            default=DEFAULT_DATASET,
            show_default=True,
            help="BEIR folder the pairs come from.",
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
def scorer_cmd(
    model: Path | None,
    checkpoint: Path | None,
    dataset: Path,
    n_pairs: int,
    repeats: int,
    threads: int,
    batch_size: int,
    output: Path | None,
    use_torch: bool,
    io_binding: bool,
) -> None:
    """Rerank real SciFact pairs with torch, ONNX Runtime fp32 and int8 side by side.

    Interleaved repeats, median wall time per backend (tokenisation included), useful and
    padded GFLOP/s against the measured matmul peak. Progress goes to stderr, the table to
    stdout.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _check_inputs(dataset, model, checkpoint)
    if use_torch:
        _require_torch()
        import torch

        torch.set_num_threads(threads)
    elif model is None:
        raise click.ClickException("--no-torch needs --model (an exported model folder)")

    load_before = _load()
    notes: list[str] = []
    selection = select_pairs(dataset, n_pairs)
    pairs = list(selection.pairs)
    if len(pairs) < n_pairs:
        notes.append(f"the corpus gave only {len(pairs)} pairs of the {n_pairs} asked for")
    _say(
        f"{len(pairs)} pairs: query {selection.query_id} ({len(selection.relevant)} relevant "
        f"docs) from {dataset}"
    )

    with (
        _quiet_transformers() if use_torch else contextlib.nullcontext(),
        tempfile.TemporaryDirectory(prefix="reranker-bench-") as tmp_name,
    ):
        tmp = Path(tmp_name)
        source_note = "not run (--no-torch)"
        if use_torch:
            checkpoint, source_note = _resolve_checkpoint(checkpoint, model, tmp, notes)
        model_dir, onnx_note = _onnx_model(model, checkpoint, tmp, pairs)
        _say(f"ONNX model: {onnx_note}")
        backends = _all_backends(
            checkpoint if use_torch else None, model_dir, threads, batch_size, notes, io_binding
        )
        ort_fp32 = next(b for b in backends if b.name == "ort-fp32")
        max_length = int(ort_fp32.info["scorer"].max_length)

        _say("measuring matmul peaks ...")
        peaks, peak_notes = measure_peaks(threads)
        notes += peak_notes
        _say("  " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + " GFLOP/s")
        _first_runs(backends, pairs, notes)
        peak_samples, load_per_repeat = _timed_repeats(backends, pairs, repeats, threads, peaks)
        peaks = {kind: max(sample.get(kind, 0.0) for sample in peak_samples) for kind in peaks}
        load_after = _load()

        results = _results(backends, pairs, peaks, max_length, notes)
        lengths = results.pop("_lengths")

    payload: dict[str, Any] = {
        "pairs": len(pairs),
        "backends": results,
        "peak_gflops": peaks,
        "threads": threads,
        "batch_size": batch_size,
        "max_batch_tokens": MAX_BATCH_TOKENS,
        "max_length": max_length,
        "repeats": repeats,
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
            "path": str(dataset),
            "query_id": selection.query_id,
            "relevant": list(selection.relevant),
            "doc_ids": list(selection.doc_ids),
        },
        "model": {"torch": source_note, "onnx": onnx_note},
        "notes": notes,
    }
    _report(payload, results, lengths, output)


def _check_inputs(dataset: Path, model: Path | None, checkpoint: Path | None) -> None:
    """Clear errors for the command's inputs before any slow work."""
    _check_dataset(dataset)
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
    _say(f"exporting {checkpoint} to a temporary folder (fp32 + int8) ...")
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


def _all_backends(
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
        _torch_backends(checkpoint, max_length=MAX_LENGTH, batch_size=batch_size, notes=notes)
        if checkpoint is not None
        else []
    )
    backends += _ort_backends(
        model_dir, threads=threads, batch_size=batch_size, notes=notes, io_binding=io_binding
    )
    ort_fp32 = next(b for b in backends if b.name == "ort-fp32")
    max_length = int(ort_fp32.info["scorer"].max_length)
    if max_length != MAX_LENGTH and checkpoint is not None:
        # a model with fewer positions: tokenise torch's pairs the same way
        for b in backends:
            if isinstance(b.run, TorchRunner):
                b.run.tokenizer = _checkpoint_tokenizer(checkpoint, max_length)
    return backends


def _first_runs(backends: list[Backend], pairs: Sequence[Pair], notes: list[str]) -> None:
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


def _timed_repeats(
    backends: Sequence[Backend],
    pairs: Sequence[Pair],
    repeats: int,
    threads: int,
    peaks: dict[str, float],
) -> tuple[list[dict[str, float]], list[float]]:
    """``repeats`` rounds, each timing every backend once in turn (into ``Backend.seconds``)
    and sampling the matmul peaks again between rounds; returns the peak samples (``peaks``
    first) and the 1-minute load average after each round."""
    peak_samples = [peaks]
    load_per_repeat: list[float] = []
    for r in range(repeats):
        for b in backends:
            time.sleep(GAP_S)
            started = time.perf_counter()
            b.run(pairs)
            b.seconds.append(time.perf_counter() - started)
        load_per_repeat.extend(_load()[:1])
        _say(
            f"repeat {r + 1}/{repeats}: "
            + ", ".join(f"{b.name} {b.seconds[-1] * 1000:.0f} ms" for b in backends)
        )
        if r + 1 < repeats:
            # sample the peaks again between rounds: the best sample is the least disturbed
            peak_samples.append(measure_peaks(threads, repeats=2)[0])
    return peak_samples, load_per_repeat


def _report(
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
    click.echo(_table(results))
    for note in payload["notes"]:
        click.echo(f"note: {note}")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output, payload)
        _say(f"wrote {output}")


def _results(
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
# max length


def parse_lengths(text: str) -> list[int]:
    """``--lengths 128,192,256``: distinct positive integers, in the order given."""
    lengths: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise click.BadParameter(f"{part!r} is not a positive integer", param_hint="--lengths")
        if int(part) not in lengths:
            lengths.append(int(part))
    if not lengths:
        raise click.BadParameter("no length given", param_hint="--lengths")
    return lengths


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
def lengths_cmd(
    model: Path | None,
    variant: str,
    lengths: str,
    dataset: Path,
    n_pairs: int,
    repeats: int,
    threads: int,
    batch_size: int,
    output: Path | None,
) -> None:
    """Time the same real SciFact pairs through the ONNX scorer at several max lengths.

    One :class:`~reranker.rerank.scorer.Scorer` per length (same model, variant, threads and
    batching); each runs once untimed, then ``--repeats`` interleaved rounds time every length
    in turn; the median wall time per length (tokenisation included), with the tokens fed,
    the pairs cut and the FLOP estimate. A first-stage-aware model gets the same seeded
    random features at every length (they change its scores, not its cost).
    """
    from reranker.rerank.scorer import CPU, Scorer, default_model_dir

    chosen = parse_lengths(lengths)
    _check_dataset(dataset)
    model_dir = model or default_model_dir()
    read_card(model_dir, CROSS_ENCODER_CARD)
    dims = ModelDims.from_config(model_dir)
    load_before = _load()
    selection = select_pairs(dataset, n_pairs)
    pairs = list(selection.pairs)
    _say(f"{len(pairs)} pairs: query {selection.query_id} from {dataset}")
    backends: list[Backend] = []
    for length in chosen:
        try:
            s = Scorer(
                model_dir,
                providers=[CPU],
                variant=variant,
                threads=threads,
                max_batch_size=batch_size,
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
        backends.append(Backend(name=f"len{length}", run=run, dims=dims, info={"scorer": s}))
    for b in backends:
        b.scores = np.asarray(b.run(pairs), dtype=np.float32)
    load_per_repeat: list[float] = []
    for r in range(repeats):
        for b in backends:
            time.sleep(GAP_S)
            started = time.perf_counter()
            b.run(pairs)
            b.seconds.append(time.perf_counter() - started)
        load_per_repeat.extend(_load()[:1])
        _say(
            f"repeat {r + 1}/{repeats}: "
            + ", ".join(f"{b.name} {b.seconds[-1] * 1000:.0f} ms" for b in backends)
        )
    reference = next((b for b in backends if b.info["scorer"].max_length == MAX_LENGTH), None)
    rows: dict[str, dict[str, Any]] = {}
    for b in backends:
        s = b.info["scorer"]
        stats = s.last_stats
        ms = median_ms(b.seconds)
        useful = sum(dims.flops(n) for n in _pair_lengths(s, pairs))
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
        rows[b.name] = row
    payload: dict[str, Any] = {
        "model": str(model_dir),
        "variant": variant,
        "pairs": len(pairs),
        "threads": threads,
        "batch_size": batch_size,
        "repeats": repeats,
        "results": list(rows.values()),  # a list: in the order of --lengths
        "load_1min_per_repeat": load_per_repeat,
        "machine": {
            **machine_info(),
            "load_average_before": load_before,
            "load_average_after": _load(),
        },
        "dataset": {
            "path": str(dataset),
            "query_id": selection.query_id,
            "doc_ids": list(selection.doc_ids),
        },
    }
    click.echo(
        f"{len(pairs)} pairs, {variant}, {threads} threads, batch ≤ {batch_size}, median of "
        f"{repeats} interleaved repeats; load average {load_before} → {_load()}"
    )
    click.echo(f"{'length':>7}{'ms':>9}{'pairs/s':>9}{'mean tok':>10}{'cut':>5}{'GFLOP':>8}")
    for row in rows.values():
        click.echo(
            f"{row['max_length']:>7}{row['ms']:>9.1f}{row['pairs_per_s']:>9.1f}"
            f"{row['mean_tokens']:>10.1f}{row['truncated_pairs']:>5}{row['gflop']:>8.2f}"
        )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output, payload)
        _say(f"wrote {output}")


def _pair_lengths(scorer: Scorer, pairs: Sequence[Pair]) -> list[int]:
    """Each pair's token count as the scorer feeds it (truncated at its max length)."""
    tokenizer = load_tokenizer(scorer.model_dir / "tokenizer.json", scorer.max_length)
    return [len(e.ids) for e in tokenizer.encode_batch(list(pairs))]


#: how much NDCG@10 a shorter max length may give up against the reference length
LENGTH_TOLERANCE = 0.005


def choose_max_length(
    ndcg: dict[str, dict[int, float]],
    *,
    reference: int = MAX_LENGTH,
    tolerance: float = LENGTH_TOLERANCE,
) -> int:
    """The shortest measured length whose NDCG@10 on every dataset is at least the
    ``reference`` length's minus ``tolerance``; ``ndcg`` is dataset → length → NDCG@10, and
    every dataset must have the reference and the same lengths."""
    if not ndcg:
        raise ValueError("no measurements")
    lengths = {frozenset(by_length) for by_length in ndcg.values()}
    if len(lengths) != 1:
        raise ValueError("every dataset must be measured at the same lengths")
    measured = sorted(next(iter(lengths)))
    if reference not in measured:
        raise ValueError(f"the reference length {reference} was not measured")
    for length in measured:
        if all(by[length] >= by[reference] - tolerance for by in ndcg.values()):
            return length
    return reference  # unreachable: the reference always qualifies


def length_curve(evals: Sequence[dict[str, Any]], speed: dict[str, Any] | None) -> dict[str, Any]:
    """The card's ``max_length_curve`` from ``reranker eval --modes rerank --max-length N
    --output ...`` results (one per dataset and length, all from one model, variant, split,
    first stage and window) and a ``bench lengths`` result: NDCG@10 (and recall@100, MRR@10)
    per dataset and length, ms per 100 pairs per length, and the chosen length."""
    setups = set()
    ndcg: dict[str, dict[int, float]] = {}
    per_dataset: dict[str, dict[str, dict[str, float]]] = {}
    for run in evals:
        encoder = run.get("cross_encoder")
        if not isinstance(encoder, dict) or "rerank" not in run.get("results", {}):
            raise click.ClickException(
                f"{run.get('dataset')}: not an `eval --modes rerank` result with its cross-encoder "
                "(run it again with this version of `reranker eval --output`)"
            )
        setups.add(
            (
                encoder["model"],
                encoder["version"],
                encoder["variant"],
                encoder["rerank_base"],
                encoder["window"],
                run["split"],
            )
        )
        length = int(encoder["max_length"])
        metrics = run["results"]["rerank"]
        ndcg.setdefault(run["dataset"], {})[length] = float(metrics["ndcg@10"])
        per_dataset.setdefault(run["dataset"], {})[str(length)] = {
            name: round(float(value), 4) for name, value in metrics.items()
        }
    if len(setups) != 1:
        raise click.ClickException(f"the eval results come from different setups: {setups}")
    model, version, variant, base, window, split = next(iter(setups))
    chosen = choose_max_length(ndcg)
    curve: dict[str, Any] = {
        "model": model,
        "model_version": version,
        "variant": variant,
        "split": split,
        "first_stage": f"{base} top-{window}",
        "datasets": {
            name: dict(sorted(rows.items(), key=lambda kv: int(kv[0])))
            for name, rows in per_dataset.items()
        },
        "rule": f"the shortest length whose NDCG@10 on every dataset is within "
        f"{LENGTH_TOLERANCE} of {MAX_LENGTH}'s",
        "chosen": chosen,
    }
    if speed is not None:
        curve["speed"] = {
            str(row["max_length"]): {
                "ms_per_100_pairs": round(row["ms"] * 100.0 / speed["pairs"], 1),
                "mean_tokens": row["mean_tokens"],
                "pairs_cut": row["truncated_pairs"],
                "ms_vs_256": row.get("ms_vs_256"),
            }
            for row in speed["results"]
        }
        curve["speed_setup"] = (
            f"{speed['pairs']} SciFact pairs, {speed['variant']}, {speed['threads']} threads, "
            f"median of {speed['repeats']} interleaved repeats, load average "
            f"{speed['machine']['load_average_before']} → {speed['machine']['load_average_after']}"
        )
    return curve


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
        _say(f"wrote max_length_curve and max_length {curve['chosen']} into {model_dir}")


# --------------------------------------------------------------------------------------------
# bench window: the reranking of a whole first-stage window, step by step


@dataclass(frozen=True)
class WindowStep:
    """One rung of the window ladder: which model reranks, at what max length, with or
    without the first stage as a cascade's cheap level (``cascade_k``)."""

    name: str
    model: Path
    max_length: int | None
    cascade_k: int | None = None


def window_ladder(
    baseline: Path, model: Path, lengths: Sequence[int], cascade_k: int | None
) -> list[WindowStep]:
    """The steps from ``baseline`` (at its card's length) to ``model`` at each of ``lengths``
    in turn, then ``model`` at the last length with the first-stage cascade: each step
    changes one thing, so each step's ratio to the one before is that change's share."""
    steps = [WindowStep("baseline", baseline, None)]
    for length in lengths:
        steps.append(WindowStep(f"model@{length}", model, length))
    if cascade_k is not None:
        last = lengths[-1] if lengths else None
        steps.append(WindowStep(f"model@{last}+cascade{cascade_k}", model, last, cascade_k))
    return steps


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q)) * 1000.0


@bench.command("window")
@click.option(
    "--dataset",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATASET,
    show_default=True,
    help="BEIR folder whose test queries are searched (indexed by `reranker eval` first).",
)
@click.option("--index", default=None, help="Alias to search [default: beir-<dataset>].")
@click.option("--queries", "n_queries", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--window", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    default=None,
    help="The model the ladder starts from [default: the shipped reranker-minilm-l6].",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="The model it ends with [default: the shipped reranker-minilm-l6-aware].",
)
@click.option(
    "--lengths",
    default="256,192",
    show_default=True,
    help="Max lengths of --model, one step each, in order.",
)
@click.option(
    "--cascade-k",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="The last step: the first stage ranks the window, --model rescores its top K.",
)
@click.option("--variant", default="int8", show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the results as JSON here.",
)
@click.pass_context
def window_cmd(
    ctx: click.Context,
    dataset: Path,
    index: str | None,
    n_queries: int,
    window: int,
    baseline: Path | None,
    model: Path | None,
    lengths: str,
    cascade_k: int,
    variant: str,
    output: Path | None,
) -> None:
    """Time the reranking of whole first-stage windows, one change at a time.

    Each of --queries test queries is searched once (hybrid top --window, from the index
    `reranker eval` built); then every step of the ladder reranks that same window, the steps
    interleaved query by query, with no score cache: the baseline model; --model at each of
    --lengths; --model with the first stage as a cascade's cheap level (its top --cascade-k
    rescored). Reported per step: p50 and p90 milliseconds per window (tokenisation,
    features and ordering included; the search is not), the ratio to the baseline and to the
    step before (that change's share), and NDCG@10 over these queries (a small sample:
    `reranker eval` gives the full figures).
    """
    from reranker.es.client import make_client
    from reranker.evaluation import judged_queries
    from reranker.models import SHIPPED_MODELS_DIR
    from reranker.rerank.pipeline import QueryPath, build_pipeline
    from reranker.rerank.scorer import load_scorer
    from reranker.retrieval.embedder import Embedder
    from reranker.training.cross_encoder import ranking_metrics

    baseline = baseline or SHIPPED_MODELS_DIR / "reranker-minilm-l6"
    model = model or SHIPPED_MODELS_DIR / "reranker-minilm-l6-aware"
    chosen = parse_lengths(lengths)
    _check_dataset(dataset)
    if cascade_k > window:
        raise click.BadParameter(f"must be at most --window ({window})", param_hint="--cascade-k")
    queries, qrels = judged_queries(dataset, "test", limit=n_queries)
    alias = index or f"beir-{dataset.name.lower()}"
    client = make_client(ctx.obj)
    encoder = Embedder.default(ctx.obj)
    steps = window_ladder(baseline, model, chosen, cascade_k)
    pipelines = []
    for step in steps:
        scorer = load_scorer(step.model, variant, max_length=step.max_length)  # as serve loads
        path = QueryPath(
            index=alias,
            window=window,
            model=step.model,
            variant=variant,
            max_length=step.max_length,
            cascade_model=Path("first-stage") if step.cascade_k else None,
            cascade_k=step.cascade_k,
        )
        pipelines.append(build_pipeline(path, client, encoder, scorer=scorer))
    stage = pipelines[0].first_stage
    assert stage is not None
    vectors = dict(zip(queries, stage.embed(list(queries.values())), strict=True))
    windows = {
        qid: stage.search(text, "hybrid", window, hybrid=pipelines[0].hybrid, vector=vectors[qid])
        for qid, text in queries.items()
    }
    _say(f"{len(windows)} windows of up to {window} from {alias}; {len(steps)} steps")
    load_before = _load()
    for pipeline in pipelines:  # one untimed window each: sessions warm
        first = next(iter(queries))
        pipeline.rerank(queries[first], windows[first], k=10)
    seconds: list[list[float]] = [[] for _ in steps]
    runs: list[dict[str, dict[str, float]]] = [{} for _ in steps]
    for n, (qid, text) in enumerate(queries.items(), start=1):
        for i, pipeline in enumerate(pipelines):
            time.sleep(GAP_S)
            started = time.perf_counter()
            result = pipeline.rerank(text, windows[qid], k=window)
            seconds[i].append(time.perf_counter() - started)
            if result.degraded is not None:
                raise click.ClickException(f"{steps[i].name}: {result.degraded.reason}")
            runs[i][qid] = {h.id: float(len(result.hits) - r) for r, h in enumerate(result.hits)}
        if n % 10 == 0 or n == len(queries):
            _say(
                f"{n}/{len(queries)} windows: "
                + ", ".join(
                    f"{s.name} {percentile_ms(seconds[i], 50):.0f} ms" for i, s in enumerate(steps)
                )
            )
    rows = []
    for i, step in enumerate(steps):
        length = getattr(pipelines[i].scorer, "max_length", None)
        p50 = percentile_ms(seconds[i], 50)
        row: dict[str, Any] = {
            "step": step.name,
            "model": str(step.model),
            "max_length": length,
            "cascade_k": step.cascade_k,
            "p50_ms": round(p50, 1),
            "p90_ms": round(percentile_ms(seconds[i], 90), 1),
            "mean_ms": round(float(np.mean(seconds[i])) * 1000.0, 1),
            "ndcg@10": round(ranking_metrics(qrels, runs[i])["nDCG@10"], 4),
        }
        row["x_baseline"] = round(p50 / percentile_ms(seconds[0], 50), 3)
        row["x_previous"] = round(p50 / percentile_ms(seconds[max(0, i - 1)], 50), 3)
        rows.append(row)
    payload: dict[str, Any] = {
        "dataset": str(dataset),
        "index": alias,
        "queries": len(queries),
        "window": window,
        "variant": variant,
        "score_cache": False,
        "results": rows,
        "machine": {**machine_info(), "load_average_before": load_before, "after": _load()},
    }
    click.echo(
        f"{len(queries)} windows of {window} ({alias}), {variant}, no score cache; "
        f"load average {load_before} → {_load()}"
    )
    click.echo(f"{'step':<28}{'p50 ms':>9}{'p90 ms':>9}{'x base':>8}{'x prev':>8}{'NDCG@10':>9}")
    for row in rows:
        click.echo(
            f"{row['step']:<28}{row['p50_ms']:>9.1f}{row['p90_ms']:>9.1f}"
            f"{row['x_baseline']:>8.3f}{row['x_previous']:>8.3f}{row['ndcg@10']:>9.4f}"
        )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output, payload)
        _say(f"wrote {output}")
