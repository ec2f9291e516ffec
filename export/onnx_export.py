"""Export Hugging Face checkpoints to ONNX: the dense encoder and the cross-encoder.

Measured choices (see ``shared/models/README.md``):

- the TorchScript exporter (``dynamo=False``) with ``attn_implementation="eager"``: ONNX
  Runtime's transformer optimiser fuses its graph fully (Attention, SkipLayerNormalization,
  BiasGelu), which the dynamo exporter's graph does not get; single file, no external ``.data``;
- ONNX Runtime's transformer optimiser at ``opt_level=0`` (pattern fusions only, so the saved
  graph stays portable between CPU and CUDA; each session then applies its own optimisations);
- int8 by dynamic quantisation, per channel, of the *unfused* export, then fused, then its
  activations quantised per token (batch-invariant scores: :mod:`export.rowwise_int8`);
- fp16 (for CUDA) by converting the fused fp32 graph, inputs and outputs kept as they are.

Every output folder is built in a temporary sibling folder and renamed into place, so a reader
never sees half an export, and a failed export leaves any previous one untouched.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.card import (
    distillation_entry,
    read_training_info,
    signal_heads_card,
    source_hashes,
    write_card,
)
from export.parity import (
    DEFAULT_PARITY_PAIRS,
    OutputParity,
    make_tokenizer,
    onnx_outputs,
    parity_batches,
    torch_outputs,
)
from reranker.errors import ModelError
from reranker.models import (
    CROSS_ENCODER_CARD,
    ENCODER_CARD,
    checkpoint_tokenizer,
    encoder_conventions,
    mean_pool,
)
from reranker.rerank.features import FEATURE_NAMES, NORMALIZATION

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

OPSET = 17
#: fp32 ONNX vs torch: largest allowed absolute difference (logits, or pooled embeddings)
FP32_TOLERANCE = 1e-4

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
FP16_FILE = "model.fp16.onnx"
VARIANT_FILES = {"fp32": FP32_FILE, "int8": INT8_FILE, "fp16": FP16_FILE}

_DEFAULT_PARITY_TEXTS = tuple(text for pair in DEFAULT_PARITY_PAIRS for text in pair)


# --------------------------------------------------------------------------------------------
# helpers


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            "exporting a model needs torch and transformers (the train extra): "
            f"./scripts/setup --train ({exc})"
        ) from exc


@contextmanager
def _atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out_dir`` by rename."""
    out_dir = out_dir.expanduser().absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old: Path | None = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def _quiet_ort_tools() -> Iterator[None]:
    """Silence the INFO/WARNING chatter the ORT quantiser and optimiser send to the root logger."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.transformers.optimizer")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.ERROR))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _check_checkpoint(checkpoint_dir: Path) -> Path:
    checkpoint_dir = Path(checkpoint_dir).expanduser()
    if not (checkpoint_dir / "config.json").is_file():
        raise ModelError(
            f"{checkpoint_dir} is not a Hugging Face checkpoint folder (no config.json)"
        )
    return checkpoint_dir


def _write_tokenizer(checkpoint_dir: Path, out: Path) -> None:
    """Copy ``tokenizer.json``, or build it from the checkpoint's (fast) tokenizer files."""
    source = checkpoint_dir / "tokenizer.json"
    if source.is_file():
        shutil.copy2(source, out / "tokenizer.json")
        return
    checkpoint_tokenizer(checkpoint_dir).save(str(out / "tokenizer.json"))


def _accepted_inputs(model: torch.nn.Module) -> list[str]:
    import inspect

    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params:
        names.append("token_type_ids")
    return names


def _wrap(model: torch.nn.Module, accepted: Sequence[str], output: str) -> torch.nn.Module:
    """A module taking positional tensors and returning one tensor (``output`` of the model);
    a first-stage-aware model with signal heads returns its logits and then each head's
    prediction, in :func:`_output_names` order."""
    import torch

    class _Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *tensors: torch.Tensor) -> Any:
            kwargs = dict(zip(accepted, tensors, strict=True))
            if "first_stage" in kwargs:  # a first-stage-aware model returns its logits
                logits, signals = self.inner.forward_heads(**kwargs)  # type: ignore[operator]
                if signals:
                    return (logits, *signals.values())
                return logits
            result = self.inner(**kwargs, return_dict=True)
            value: torch.Tensor = getattr(result, output)
            return value

    return _Wrapped().eval()


def _output_names(model: torch.nn.Module, output: str) -> list[str]:
    """``output``, then the signal heads of a multi-task model (named ONNX outputs)."""
    return [output, *getattr(model, "signal_head_names", ())]


def _torch_export(
    wrapped: torch.nn.Module,
    accepted: Sequence[str],
    output: str | Sequence[str],
    path: Path,
    vocab: int,
    *,
    fold_constants: bool = True,
) -> None:
    """TorchScript export with dynamic batch and sequence axes, weights inside the file.

    ``fold_constants=False`` keeps every weight as the checkpoint stores it, under its
    parameter name (no pre-transposed copies), so the graph can point into the checkpoint's
    own weight file (:mod:`export.encoder_graph`)."""
    import warnings

    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, max(vocab, 1001), (2, 16), generator=generator, dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0  # one padded row, so the mask path is traced as used
    dummy = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "first_stage": torch.rand((2, len(FEATURE_NAMES)), generator=generator),
    }
    args = tuple(dummy[name] for name in accepted)
    axes: dict[str, dict[int, str]] = {
        name: {0: "batch"} if name == "first_stage" else {0: "batch", 1: "sequence"}
        for name in accepted
    }
    outputs = [output] if isinstance(output, str) else list(output)
    for name in outputs:
        axes[name] = {0: "batch", 1: "sequence"} if name == "last_hidden_state" else {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about python control flow on shapes
        torch.onnx.export(
            wrapped,
            args,
            str(path),
            dynamo=False,
            input_names=list(accepted),
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=fold_constants,
        )
    stray = [p.name for p in path.parent.iterdir() if p.suffix == ".data"]
    if stray:
        raise ModelError(f"the exporter wrote external data files {stray}; expected one file")


def _optimize(source: Path, target: Path, *, num_heads: int, hidden: int) -> dict[str, int] | None:
    """ORT transformer fusion (``bert`` patterns); returns fused-op counts, None if it failed."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            str(source),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden,
            opt_level=0,
            use_gpu=False,
        )
        stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(str(target), use_external_data_format=False)
    except Exception as exc:  # the optimiser's failures are many and not typed
        log.warning(
            "ONNX Runtime transformer optimisation failed, keeping the plain graph: %s", exc
        )
        return None
    return stats


def _model_dims(config: Any) -> tuple[int, int]:
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    return heads, hidden


def _base_model(checkpoint_dir: Path, given: str | None) -> str:
    """The upstream model name: given, else ``base_model`` of ``train_info.json``, else
    ``_name_or_path`` of config.json when it is a hub id, else the folder's name."""
    if given:
        return given
    info = read_training_info(checkpoint_dir) or {}
    named_base = info.get("train_info", {}).get("base_model")
    if isinstance(named_base, str) and named_base:
        return named_base
    try:
        raw = json.loads((checkpoint_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = {}
    named = raw.get("_name_or_path") if isinstance(raw, dict) else None
    if isinstance(named, str) and named and not named.startswith(("/", ".", "~")):
        return named
    return checkpoint_dir.name


def _max_length(config: Any, requested: int) -> int:
    positions = int(getattr(config, "max_position_embeddings", requested) or requested)
    if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}:
        positions -= 2  # RoBERTa-style position ids start after the padding index
    return max(8, min(requested, positions))


def _export_graph(
    model: torch.nn.Module,
    config: Any,
    accepted: Sequence[str],
    output: str,
    work: Path,
    out: Path,
) -> tuple[Path, dict[str, int] | None]:
    """Raw export to ``work/raw.onnx`` and the fused fp32 graph to ``out/model.onnx``."""
    raw = work / "raw.onnx"
    started = time.perf_counter()
    wrapped = _wrap(model, accepted, output)
    outputs = _output_names(model, output)
    _torch_export(wrapped, accepted, outputs, raw, int(getattr(config, "vocab_size", 30522)))
    log.info("torch.onnx.export took %.1f s", time.perf_counter() - started)
    heads, hidden = _model_dims(config)
    fused: dict[str, int] | None = None
    if heads and hidden:
        started = time.perf_counter()
        fused = _optimize(raw, out / FP32_FILE, num_heads=heads, hidden=hidden)
        log.info("ORT optimisation took %.1f s: %s", time.perf_counter() - started, fused)
    if fused is None:
        shutil.copy2(raw, out / FP32_FILE)
    return raw, fused


# --------------------------------------------------------------------------------------------
# the dense encoder


def export_encoder(
    checkpoint_dir: Path,
    out_dir: Path,
    *,
    name: str | None = None,
    base_model: str | None = None,
    max_length: int = 256,
    check_parity: bool = True,
) -> Path:
    """Export a BERT-family encoder (output ``last_hidden_state``) to ``out_dir/model.onnx``.

    Inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the model takes
    them), int64, axes ``batch`` × ``sequence``. Beside the model: ``tokenizer.json``,
    ``config.json`` and ``card.json``. With ``check_parity`` the mean-pooled embeddings of a
    few sentences must match torch within 1e-4, else :class:`ModelError`. Returns ``out_dir``.
    """
    _require_torch()
    from transformers import AutoConfig, AutoModel

    checkpoint_dir = _check_checkpoint(checkpoint_dir)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    config = AutoConfig.from_pretrained(str(checkpoint_dir), local_files_only=True)
    model = AutoModel.from_pretrained(
        str(checkpoint_dir), local_files_only=True, attn_implementation="eager"
    ).eval()
    accepted = _accepted_inputs(model)
    length = _max_length(config, max_length)
    with _atomic_dir(out_dir) as out:
        work = out / ".work"
        work.mkdir()
        _, fused = _export_graph(model, config, accepted, "last_hidden_state", work, out)
        _write_tokenizer(checkpoint_dir, out)
        shutil.copy2(checkpoint_dir / "config.json", out / "config.json")
        parity: float | None = None
        if check_parity:
            tokenizer = make_tokenizer(out / "tokenizer.json", length)
            batches = parity_batches(tokenizer, list(_DEFAULT_PARITY_TEXTS))
            wrapped = _wrap(model, accepted, "last_hidden_state")
            ref = torch_outputs(wrapped, batches, accepted)
            got = onnx_outputs(out / FP32_FILE, batches)
            parity = max(
                float(
                    np.abs(
                        mean_pool(r, b["attention_mask"]) - mean_pool(g, b["attention_mask"])
                    ).max()
                )
                for r, g, b in zip(ref, got, batches, strict=True)
            )
            if not parity <= FP32_TOLERANCE:
                raise ModelError(
                    f"ONNX embeddings differ from torch by {parity:.2e} (> {FP32_TOLERANCE:g})"
                )
        shutil.rmtree(work)
        write_card(
            out,
            ENCODER_CARD,
            {
                "kind": "encoder",
                "name": name or checkpoint_dir.name,
                "base_model": _base_model(checkpoint_dir, base_model),
                "source": {"path": str(checkpoint_dir), "sha256": source_hashes(checkpoint_dir)},
                "max_length": length,
                "dim": int(getattr(config, "hidden_size", 0)),
                **encoder_conventions(checkpoint_dir),
                "normalize": True,
                "inputs": accepted,
                "outputs": ["last_hidden_state"],
                "variants": {"fp32": {"file": FP32_FILE, "fused": fused, "parity": parity}},
                "export_seconds": round(time.perf_counter() - started, 1),
            },
        )
    log.info(
        "exported encoder %s to %s in %.1f s",
        checkpoint_dir,
        out_dir,
        time.perf_counter() - started,
    )
    return out_dir


def add_encoder_int8(folder: Path, *, keep_fp32: bool = True) -> dict[str, Any]:
    """Add a per-channel dynamic int8 variant (``model.int8.onnx``) to an exported encoder
    folder and record it in its card, with the largest embedding difference from fp32 on a few
    sentences; without ``keep_fp32`` the fp32 graph is dropped (a small shipped embedder).
    Returns the card. int8 changes the vectors: an index records the variant with the model."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.card import file_hashes, prune_variants
    from reranker.models import write_json_atomic

    folder = Path(folder)
    card: dict[str, Any] = json.loads((folder / ENCODER_CARD).read_text(encoding="utf-8"))
    with _quiet_ort_tools():
        quantize_dynamic(
            str(folder / FP32_FILE),
            str(folder / INT8_FILE),
            per_channel=True,
            weight_type=QuantType.QInt8,
            # the graph is already fused; its contrib ops' outputs have no inferred type
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    tokenizer = make_tokenizer(folder / "tokenizer.json", int(card.get("max_length", 256)))
    batches = parity_batches(tokenizer, list(_DEFAULT_PARITY_TEXTS))
    fp32 = onnx_outputs(folder / FP32_FILE, batches)
    int8 = onnx_outputs(folder / INT8_FILE, batches)
    diff = max(
        float(np.abs(mean_pool(a, b["attention_mask"]) - mean_pool(c, b["attention_mask"])).max())
        for a, c, b in zip(fp32, int8, batches, strict=True)
    )
    card["variants"]["int8"] = {"file": INT8_FILE, "max_abs_diff_vs_fp32": round(diff, 5)}
    card["files"] = file_hashes(folder, exclude=(ENCODER_CARD,))
    write_json_atomic(folder / ENCODER_CARD, card)
    if not keep_fp32:
        card = prune_variants(folder, ENCODER_CARD, ["int8"])
    return card


# --------------------------------------------------------------------------------------------
# the cross-encoder


def _quantize_int8(raw: Path, target: Path, work: Path, *, num_heads: int, hidden: int) -> None:
    """Dynamic int8 quantisation (per channel) of the unfused graph, then fusion if it helps,
    then activations quantised per token (:mod:`export.rowwise_int8`): a pair's score must
    not depend on the other pairs in its batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.rowwise_int8 import rowwise_int8

    quantized = work / "int8.unfused.onnx"
    with _quiet_ort_tools():
        quantize_dynamic(
            str(raw),
            str(quantized),
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
        fused = (
            _optimize(quantized, target, num_heads=num_heads, hidden=hidden) if num_heads else None
        )
    per_tensor = target if fused is not None else quantized
    rowwise_int8(per_tensor, target)


def _convert_fp16(fused_fp32: Path, target: Path, *, num_heads: int, hidden: int) -> None:
    """fp16 weights and activations (for CUDA), inputs and outputs kept in their types."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet_ort_tools():
        model = optimize_model(
            str(fused_fp32),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden,
            opt_level=0,
            use_gpu=True,
        )
        model.convert_float_to_float16(keep_io_types=True)
        model.save_model_to_file(str(target), use_external_data_format=False)


def _has_heads(model: Any) -> bool:
    return bool(getattr(model, "signal_head_names", ()))


def _load_aware_if_any(checkpoint_dir: Path) -> Any:
    """The first-stage-aware model saved in ``checkpoint_dir``, or None for a plain one."""
    from reranker.training.aware_model import is_aware_checkpoint, load_aware

    if not is_aware_checkpoint(checkpoint_dir):
        return None
    model, _ = load_aware(checkpoint_dir)
    return model.eval()


def _load_cross_encoder(checkpoint_dir: Path) -> tuple[Any, list[str]]:
    """The model saved in ``checkpoint_dir`` (first-stage-aware, else a plain
    sequence-classification one) and the inputs its graph takes."""
    from transformers import AutoModelForSequenceClassification

    aware = _load_aware_if_any(checkpoint_dir)
    if aware is not None:
        return aware, [*_accepted_inputs(aware.encoder), "first_stage"]
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(checkpoint_dir), local_files_only=True, attn_implementation="eager"
        ).eval()
    except Exception as exc:  # transformers raises many types here
        raise ModelError(
            f"{checkpoint_dir}: cannot load a sequence-classification model: {exc}"
        ) from exc
    return model, _accepted_inputs(model)


def _cross_encoder_batches(
    tokenizer_json: Path, length: int, pairs: Sequence[tuple[str, ...]], *, aware: bool
) -> list[dict[str, np.ndarray]]:
    """The parity pairs as batches; a first-stage-aware model's also get (seeded) random
    first-stage features."""
    batches = parity_batches(make_tokenizer(tokenizer_json, length), pairs)  # type: ignore[arg-type]
    if aware:
        rng = np.random.default_rng(0)
        for batch in batches:
            rows = batch["input_ids"].shape[0]
            batch["first_stage"] = rng.random((rows, len(FEATURE_NAMES)), dtype=np.float32)
    return batches


def _parity_entries(parity: OutputParity, path: Path) -> dict[str, Any]:
    """The card's parity entries of one variant: the logits', and the signal heads' if any."""
    diffs = parity.max_diffs(path)
    logits = diffs.pop("logits")
    return {"parity_max_abs_diff": logits} | ({"heads_parity_max_abs_diff": diffs} if diffs else {})


def _fp32_variant(parity: OutputParity, out: Path, fused: dict[str, int] | None) -> dict[str, Any]:
    """The fp32 variant's card entry; :class:`ModelError` when its logits or signal heads
    differ from torch by more than :data:`FP32_TOLERANCE`."""
    entries = _parity_entries(parity, out / FP32_FILE)
    diff = entries["parity_max_abs_diff"]
    if not diff <= FP32_TOLERANCE:
        raise ModelError(f"ONNX fp32 logits differ from torch by {diff:.2e} (> {FP32_TOLERANCE:g})")
    head_diffs = entries.get("heads_parity_max_abs_diff", {})
    if not all(d <= FP32_TOLERANCE for d in head_diffs.values()):
        raise ModelError(f"ONNX fp32 signal heads differ from torch: {head_diffs}")
    return {"file": FP32_FILE, "fused": fused, **entries}


def _int8_variant(
    parity: OutputParity, raw: Path, out: Path, work: Path, *, heads: int, hidden: int
) -> dict[str, Any]:
    """Write ``model.int8.onnx`` from the raw export; its card entry."""
    from export.rowwise_int8 import DESCRIPTION as rowwise_description

    started = time.perf_counter()
    _quantize_int8(raw, out / INT8_FILE, work, num_heads=heads, hidden=hidden)
    entry = {
        "file": INT8_FILE,
        "quantization": "dynamic, per-channel, QInt8 weights; " + rowwise_description,
        **_parity_entries(parity, out / INT8_FILE),
    }
    log.info("int8 variant took %.1f s", time.perf_counter() - started)
    return entry


def _fp16_variant(parity: OutputParity, out: Path, *, heads: int, hidden: int) -> dict[str, Any]:
    """Write ``model.fp16.onnx`` from the fused fp32 graph; its card entry."""
    if not (heads and hidden):
        raise ModelError("fp16 conversion needs num_attention_heads and hidden_size")
    _convert_fp16(out / FP32_FILE, out / FP16_FILE, num_heads=heads, hidden=hidden)
    entry: dict[str, Any] = {"file": FP16_FILE, "for": "CUDAExecutionProvider"}
    try:
        entry["parity_max_abs_diff"] = parity.max_diffs(out / FP16_FILE)["logits"]
    except Exception as exc:  # CPU may lack fp16 kernels; CUDA is the target
        entry["parity_max_abs_diff"] = None
        entry["parity_note"] = f"not checked on CPU: {exc}"[:300]
    return entry


def _first_stage_card(aware: Any) -> dict[str, Any]:
    """The card's account of the first-stage features a first-stage-aware model reads."""
    weights = [float(v) for v in aware.feature_weights.detach()]
    return {"names": list(FEATURE_NAMES), "normalization": NORMALIZATION, "weights": weights}


def _model_card(
    checkpoint_dir: Path, model: Any, config: Any, accepted: list[str], *, aware: bool
) -> dict[str, Any]:
    """The card's account of the graph's labels, inputs and named outputs, with a
    first-stage-aware model's features and a multi-task model's signal heads."""
    return {
        "num_labels": 1 if aware else int(getattr(config, "num_labels", 1)),
        "inputs": accepted,
        "outputs": _output_names(model, "logits"),
        **({"first_stage_features": _first_stage_card(model)} if aware else {}),
        **(
            {"signal_heads": signal_heads_card(checkpoint_dir, model.signal_head_names)}
            if _has_heads(model)
            else {}
        ),
    }


def export_cross_encoder(
    checkpoint_dir: Path,
    out_dir: Path,
    *,
    int8: bool = False,
    fp16: bool = False,
    parity_pairs: Sequence[tuple[str, str]] | None = None,
    name: str | None = None,
    base_model: str | None = None,
    version: str | None = None,
    max_length: int = 256,
) -> Path:
    """Export a sequence-classification checkpoint for :class:`reranker.rerank.scorer.Scorer`.

    Writes ``model.onnx`` (fused fp32, output ``logits``, axes ``batch`` × ``sequence``), and
    with ``int8``/``fp16`` the variants ``model.int8.onnx``/``model.fp16.onnx``; beside them
    ``tokenizer.json``, ``config.json`` and the card ``reranker.json`` (base model, max_length,
    training info from the checkpoint's ``train_info.json``/``training_args.json``, parity,
    sha256 of every file, exporter versions; ``metrics`` left empty for callers).

    Parity: the fp32 logits on ``parity_pairs`` (default: a few built-in pairs) must match
    torch within 1e-4, else :class:`ModelError`. The variants' largest differences are
    recorded in the card, not enforced: judge them by the ranking quality they cost.
    """
    _require_torch()
    from transformers import AutoConfig

    checkpoint_dir = _check_checkpoint(checkpoint_dir)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    config = AutoConfig.from_pretrained(str(checkpoint_dir), local_files_only=True)
    model, accepted = _load_cross_encoder(checkpoint_dir)
    is_aware = "first_stage" in accepted
    length = _max_length(config, max_length)
    heads, hidden = _model_dims(config)
    pairs = [tuple(p) for p in (parity_pairs or DEFAULT_PARITY_PAIRS)]
    if not pairs:
        raise ModelError("parity_pairs is empty")
    with _atomic_dir(out_dir) as out:
        work = out / ".work"
        work.mkdir()
        raw, fused = _export_graph(model, config, accepted, "logits", work, out)
        _write_tokenizer(checkpoint_dir, out)
        shutil.copy2(checkpoint_dir / "config.json", out / "config.json")
        batches = _cross_encoder_batches(out / "tokenizer.json", length, pairs, aware=is_aware)
        wrapped = _wrap(model, accepted, "logits")
        parity = OutputParity(wrapped, accepted, batches, _output_names(model, "logits"))
        variants = {"fp32": _fp32_variant(parity, out, fused)}
        if int8:
            variants["int8"] = _int8_variant(parity, raw, out, work, heads=heads, hidden=hidden)
        if fp16:
            variants["fp16"] = _fp16_variant(parity, out, heads=heads, hidden=hidden)
        shutil.rmtree(work)
        training = read_training_info(checkpoint_dir)
        write_card(
            out,
            CROSS_ENCODER_CARD,
            {
                "kind": "cross-encoder",
                "name": name or checkpoint_dir.name,
                "version": version,
                "base_model": _base_model(checkpoint_dir, base_model),
                "source": {"path": str(checkpoint_dir), "sha256": source_hashes(checkpoint_dir)},
                "max_length": length,
                **_model_card(checkpoint_dir, model, config, accepted, aware=is_aware),
                "variants": variants,
                "parity": {"pairs": len(pairs), "tolerance_fp32": FP32_TOLERANCE},
                "training": training,
                **distillation_entry(training),
                "export_seconds": round(time.perf_counter() - started, 1),
            },
        )
    log.info(
        "exported cross-encoder %s to %s in %.1f s",
        checkpoint_dir,
        out_dir,
        time.perf_counter() - started,
    )
    return out_dir
