"""The cross-encoder :class:`Scorer`: (query, passage) pairs in, one relevance score per pair out.

    scorer = Scorer(Path("models/reranker"))            # a folder from export_cross_encoder
    scores = scorer.score([(query, passage), ...])      # float32 logits, in the caller's order
    probs = scorer.score(pairs, sigmoid=True)           # the same through a sigmoid, in (0, 1)

What it does for speed (all measured on 2-core CPUs, see ``shared/models/README.md``):
pairs are tokenised once (each distinct query once), sorted by length, cut into batches of at
most ``max_batch_size`` pairs and ``max_batch_tokens`` padded tokens, and each batch is padded
only to its own longest pair; scores go back to the caller's order.

Truncation is longest-first, as in Hugging Face tokenizers: tokens come off the longer of query
and passage until the pair fits ``max_length``. Passages beyond ``max_length * 100`` characters
are cut at a space before tokenising (a 100k-character passage costs no more than a long one).
Truncated pairs are counted: :attr:`Scorer.last_stats` for the latest call, :attr:`Scorer.stats`
over the scorer's life.

Providers: by default CUDA when this onnxruntime build has it and it loads, else CPU. Asking
for a provider the build lacks is not an error: it falls back to CPU with a warning, and
:attr:`Scorer.provider` says what actually runs. The choice is logged.

Conventions: an empty list of pairs gives an empty float32 array (not an error); a pair that is
not two ``str`` raises :class:`TypeError`; non-finite model output raises
:class:`~reranker.errors.ModelError`. One scorer may be shared by threads.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from reranker.batching import (
    head_scores,
    logits_or_probabilities,
    pad_encodings,
    plan_batches,
)
from reranker.errors import ModelError
from reranker.models import (
    CROSS_ENCODER_CARD,
    SHIPPED_MODELS_DIR,
    config_max_positions,
    open_session,
    read_card,
    verify_files,
)
from reranker.rerank.capabilities import PositionLimited, max_length_of
from reranker.rerank.heads import SIGNAL_HEADS

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
#: characters kept per token of ``max_length`` before tokenising (BERT tokens span < 100 chars)
CHARS_PER_TOKEN_CAP = 100
#: the shortest ``max_length`` a scorer accepts (a pair's special tokens plus some text)
MIN_MAX_LENGTH = 8
#: the length every score cache file was written at before the length was a setting (the
#: Scorer's fixed default then): a cache at this length keeps its old, length-free name
LEGACY_MAX_LENGTH = 256


def card_max_length(card: dict[str, Any]) -> int:
    """The cross-encoder card's ``max_length`` (what the model was exported and tuned for),
    else :data:`LEGACY_MAX_LENGTH`: a :class:`Scorer`'s default."""
    value = card.get("max_length")
    return value if isinstance(value, int) and not isinstance(value, bool) else LEGACY_MAX_LENGTH


def length_tag(scorer: object) -> str:
    """What a score cache adds to a scorer's identity for its ``max_length``: nothing at the
    length the old caches were written at (:data:`LEGACY_MAX_LENGTH`, or a shorter position
    limit) or when the scorer does not say (a remote one that does not report it), else
    ``len<N>``: scores at one length are never read back for another."""
    length = max_length_of(scorer)
    if not isinstance(length, int):
        return ""
    positions = scorer.max_positions if isinstance(scorer, PositionLimited) else None
    legacy = min(LEGACY_MAX_LENGTH, positions) if isinstance(positions, int) else LEGACY_MAX_LENGTH
    return "" if length == legacy else f"len{length}"


class ScoreTimeout(ModelError):
    """Scoring passed the caller's deadline; the remaining batches were not run."""


@dataclass(frozen=True)
class ScoreStats:
    """What one :meth:`Scorer.score` call (or a scorer's whole life) did."""

    pairs: int = 0
    batches: int = 0
    truncated: int = 0
    tokens: int = 0  # real tokens fed to the model
    padded_tokens: int = 0  # tokens fed including padding (batch rows × batch width)
    seconds: float = 0.0

    def __add__(self, other: ScoreStats) -> ScoreStats:
        return ScoreStats(
            pairs=self.pairs + other.pairs,
            batches=self.batches + other.batches,
            truncated=self.truncated + other.truncated,
            tokens=self.tokens + other.tokens,
            padded_tokens=self.padded_tokens + other.padded_tokens,
            seconds=self.seconds + other.seconds,
        )


def check_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs as a list; :class:`TypeError` naming the first malformed one."""
    if isinstance(pairs, (str, bytes)):
        raise TypeError("pairs must be a sequence of (query, passage) tuples, not a string")
    items = list(pairs)
    for position, pair in enumerate(items):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(
                f"pairs[{position}] must be a (query, passage) pair, got {type(pair).__name__}"
            )
        for side, text in zip(("query", "passage"), pair, strict=True):
            if not isinstance(text, str):
                raise TypeError(f"pairs[{position}] {side} is {type(text).__name__}, expected str")
    return [(q, p) for q, p in items]


def longest_first(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """Lengths after longest-first truncation of a pair to ``budget`` tokens.

    The same rule as Hugging Face ``tokenizers`` (``TruncationStrategy::LongestFirst``): when
    only the longer side must shrink, it keeps ``budget - shorter``; when both must, they
    split the budget evenly (the odd token to the longer side).
    """
    if n1 + n2 <= budget:
        return n1, n2
    swap = n1 > n2
    short, long_ = (n2, n1) if swap else (n1, n2)
    long_ = short if short > budget else max(short, budget - short)
    if short + long_ > budget:
        short = budget // 2
        long_ = short + budget % 2
    return (long_, short) if swap else (short, long_)


def _cap_chars(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    cut = text.rfind(" ", limit // 2, limit)
    return text[: cut if cut > 0 else limit], True


class PairScorer(Protocol):
    """What the pipeline needs of a scorer: :class:`Scorer`, or a wrapper of one."""

    @property
    def model_id(self) -> str: ...

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        sigmoid: bool = False,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray: ...


class ServedScorer(PairScorer, Protocol):
    """A scorer the proxy can serve and cache: :class:`Scorer`, or
    :class:`~reranker.rerank.remote.RemoteScorer` (the same model behind rerank endpoints)."""

    @property
    def version(self) -> str: ...

    @property
    def variant(self) -> str: ...

    @property
    def provider(self) -> str: ...

    def warmup(self) -> None: ...


def _check_deadline(deadline: float | None, done: int, total: int) -> None:
    """:class:`ScoreTimeout` once ``deadline`` (a :func:`time.monotonic` instant) has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise ScoreTimeout(f"scoring passed its deadline after {done} of {total} pairs")


class Scorer:
    """Cross-encoder scores for (query, passage) pairs, from an exported model folder.

    ``model_dir`` holds ``reranker.json`` (the card), ONNX files, ``tokenizer.json`` and
    ``config.json``. The card's sha256 of the chosen variant, the tokenizer and the config must
    match, else :class:`ModelError` naming the file; so must the ONNX file parse.
    ``variant`` picks ``fp32``, ``int8`` or ``fp16`` (for CUDA) when the export made it.
    ``max_length`` (tokens per pair, truncated longest-first) defaults to the card's
    ``max_length`` (:func:`card_max_length`), and is capped at the model's position limit.
    ``io_binding`` runs each batch through ONNX Runtime's IO binding: the inputs are copied
    to the provider's device once per batch and the output stays there until the scores are
    read (on CUDA no other host copies; on CPU the same scores at the same cost).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        providers: Sequence[str] | None = None,
        max_length: int | None = None,
        max_batch_tokens: int = 4096,
        max_batch_size: int = 16,
        threads: int | None = None,
        variant: str = "fp32",
        io_binding: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.io_binding = io_binding
        if max_batch_size < 1:
            raise ModelError(f"max_batch_size must be positive, got {max_batch_size}")
        card = read_card(self.model_dir, CROSS_ENCODER_CARD)
        if max_length is None:
            max_length = card_max_length(card)
        if max_length < MIN_MAX_LENGTH:
            raise ModelError(f"max_length must be at least {MIN_MAX_LENGTH}, got {max_length}")
        if card.get("kind") != "cross-encoder":
            raise ModelError(
                f"{self.model_dir} holds a {card.get('kind')!r} model, not a cross-encoder"
            )
        variants: dict[str, Any] = card.get("variants") or {}
        if variant not in variants:
            raise ModelError(
                f"{self.model_dir} has no {variant!r} variant (it has: {', '.join(variants)}); "
                "export it with the matching option"
            )
        onnx_name = str(variants[variant].get("file"))
        verify_files(self.model_dir, card, [onnx_name, "tokenizer.json", "config.json"])
        self.card: dict[str, Any] = card
        self._variant = variant
        first_stage = card.get("first_stage_features") or {}
        self._feature_names: tuple[str, ...] = tuple(str(n) for n in first_stage.get("names", ()))
        #: the longest sequence the model's position table allows (``config.json``)
        self.max_positions = config_max_positions(self.model_dir)
        self.max_length = min(max_length, self.max_positions)
        if max_batch_tokens < self.max_length:
            raise ModelError(
                f"max_batch_tokens ({max_batch_tokens}) must be at least max_length "
                f"({self.max_length}), or a single long pair could not be scored"
            )
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size

        self._tokenizer = self._load_tokenizer(self.model_dir / "tokenizer.json")
        special = self._tokenizer.num_special_tokens_to_add(is_pair=True)
        self._budget = self.max_length - special
        if self._budget < 2:
            raise ModelError(f"max_length {self.max_length} leaves no room for text")

        self._session, self._provider = self._open_session(
            self.model_dir / onnx_name, providers, threads, variant
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]
        self._signal_heads = tuple(name for name in SIGNAL_HEADS if name in outputs)
        log.info(
            "scorer %s (%s) on %s, max_length %d, batches ≤ %d pairs / %d tokens",
            self.model_id,
            variant,
            self._provider,
            self.max_length,
            max_batch_size,
            max_batch_tokens,
        )
        self._lock = threading.Lock()
        self._stats = ScoreStats()
        self._last = ScoreStats()

    def _open_session(
        self, onnx_path: Path, providers: Sequence[str] | None, threads: int | None, variant: str
    ) -> tuple[ort.InferenceSession, str]:
        """The ONNX Runtime session on the best provider that starts (CPU as the fallback, with
        a warning), and the provider it runs on."""
        chosen = self._choose_providers(providers)
        try:
            session = open_session(onnx_path, providers=chosen, threads=threads)
        except ModelError as exc:
            if chosen == [CPU]:
                raise
            warnings.warn(
                f"{chosen[0]} failed to start ({exc}); falling back to {CPU}",
                RuntimeWarning,
                stacklevel=3,
            )
            chosen = [CPU]
            session = open_session(onnx_path, providers=chosen, threads=threads)
        active = session.get_providers()
        provider = active[0] if active else CPU
        if chosen[0] != CPU and provider != chosen[0]:
            warnings.warn(
                f"{chosen[0]} is installed but could not be used (drivers or libraries missing); "
                f"scoring runs on {provider}",
                RuntimeWarning,
                stacklevel=3,
            )
        if variant == "fp16" and provider == CPU:
            log.warning("the fp16 variant is meant for CUDA; on CPU it is slower than fp32")
        return session, provider

    # ------------------------------------------------------------------ description

    @property
    def model_id(self) -> str:
        """The model's name from its card (``name``)."""
        return str(self.card.get("name") or self.model_dir.name)

    @property
    def version(self) -> str:
        """The card's ``version`` if the export set one, else sha256[:12] of the ONNX file."""
        explicit = self.card.get("version")
        if explicit:
            return str(explicit)
        onnx_name = self.card["variants"][self._variant]["file"]
        return str(self.card["files"][onnx_name])[:12]

    @property
    def variant(self) -> str:
        return self._variant

    @property
    def feature_names(self) -> tuple[str, ...]:
        """First-stage features the model reads beside the text (empty for a plain
        cross-encoder), in the column order :meth:`score` expects them."""
        return self._feature_names

    @property
    def signal_heads(self) -> tuple[str, ...]:
        """The multi-task model's signal heads (named ONNX outputs beside ``logits``; see
        :mod:`reranker.training.heads`); empty for a single-task model."""
        return self._signal_heads

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the model, e.g. ``CPUExecutionProvider``."""
        return self._provider

    @property
    def stats(self) -> ScoreStats:
        """Totals over every call so far."""
        with self._lock:
            return self._stats

    @property
    def last_stats(self) -> ScoreStats:
        """The latest finished call (with several threads: whichever finished last)."""
        with self._lock:
            return self._last

    @property
    def last_truncated(self) -> int:
        """Pairs truncated in the latest finished call."""
        return self.last_stats.truncated

    def __repr__(self) -> str:
        return (
            f"Scorer({self.model_id!r}, version={self.version!r}, variant={self._variant!r}, "
            f"provider={self._provider!r})"
        )

    # ------------------------------------------------------------------ scoring

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        sigmoid: bool = False,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """One float32 score per pair, in the caller's order.

        ``features`` (``len(pairs)`` × ``len(feature_names)``) are the first-stage features of
        a first-stage-aware model (see :mod:`reranker.rerank.features`); such a model
        refuses to score without them, and a plain cross-encoder ignores them.

        Scores are the model's logit (one-label heads), or ``logit[1] - logit[0]`` for
        two-label heads, so that ``sigmoid=True`` gives the positive class's probability.
        ``deadline`` is a :func:`time.monotonic` instant: when a batch finishes past it the rest
        are skipped and :class:`ScoreTimeout` is raised. An empty ``pairs`` gives an empty
        array.
        """
        logits, _ = self._score(pairs, deadline, features, ())
        return logits_or_probabilities(logits, probabilities=sigmoid)

    def score_with_signals(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits as :meth:`score` gives them, and each signal head's prediction (float32, in
        [0, 1]) for the same pairs, from the same model call."""
        return self._score(pairs, deadline, features, self._signal_heads)

    def _score(
        self,
        pairs: Sequence[tuple[str, str]],
        deadline: float | None,
        features: np.ndarray | None,
        heads: tuple[str, ...],
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        items = check_pairs(pairs)
        started = time.perf_counter()
        out = np.empty(len(items), dtype=np.float32)
        predicted = {name: np.empty(len(items), dtype=np.float32) for name in heads}
        columns = self._check_features(features, len(items))
        if not items:
            return out, predicted
        _check_deadline(deadline, 0, len(items))
        encodings, truncated = self._encode(items)
        _check_deadline(deadline, 0, len(items))  # tokenising a large call takes time too
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(items))
        batches = plan_batches(lengths, self.max_batch_size, self.max_batch_tokens)
        padded = 0
        done = 0
        for rows in batches:
            width = int(lengths[rows[-1]])  # sorted ascending: the last pair is the longest
            out[rows], batch_heads = self._run(
                [encodings[r] for r in rows],
                width,
                None if columns is None else columns[rows],
                heads,
            )
            for name, values in batch_heads.items():
                predicted[name][rows] = values
            padded += len(rows) * width
            done += len(rows)
            if done < len(items):
                _check_deadline(deadline, done, len(items))
        if not np.isfinite(out).all():
            bad = int((~np.isfinite(out)).sum())
            raise ModelError(f"the model returned {bad} non-finite scores of {len(items)}")
        call = ScoreStats(
            pairs=len(items),
            batches=len(batches),
            truncated=truncated,
            tokens=int(lengths.sum()),
            padded_tokens=padded,
            seconds=time.perf_counter() - started,
        )
        with self._lock:
            self._last = call
            self._stats = self._stats + call
        return out, predicted

    def score_query(
        self,
        query: str,
        passages: Sequence[str],
        *,
        sigmoid: bool = False,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """Scores of ``passages`` for one ``query`` (the reranking case), in their order."""
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, expected str")
        if isinstance(passages, (str, bytes)):
            raise TypeError("passages must be a sequence of str, not a single string")
        return self.score(
            [(query, p) for p in passages], sigmoid=sigmoid, deadline=deadline, features=features
        )

    def warmup(self) -> None:
        """Run a full batch of the longest pairs, then one short pair, so that the first
        real request pays for no lazy setup: ONNX Runtime grows its memory arena and picks
        kernels per shape, and a cold window of 50 pairs took seconds, not milliseconds."""
        rows = max(1, min(self.max_batch_size, self.max_batch_tokens // self.max_length))
        long_passage = " ".join(["warm up the model with a passage as long as any"] * 64)
        pairs = [("warm up", long_passage)] * rows + [("warm up", "a short passage")]
        features = np.ones((len(pairs), len(self._feature_names)), dtype=np.float32)
        with self._lock:
            before = (self._last, self._stats)
        self.score(pairs, features=features)
        with self._lock:  # warming is not serving: the counters start at the first request
            self._last, self._stats = before

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _load_tokenizer(path: Path) -> Tokenizer:
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed files
            raise ModelError(f"{path} is not a loadable tokenizer: {exc}") from exc
        tokenizer.no_padding()
        tokenizer.no_truncation()  # pairs are truncated here, longest first (see longest_first)
        return tokenizer

    def _choose_providers(self, requested: Sequence[str] | None) -> list[str]:
        available = ort.get_available_providers()
        if requested is None:
            wanted = [CUDA, CPU] if CUDA in available else [CPU]
        else:
            wanted = [str(p) for p in requested]
            missing = [p for p in wanted if p not in available]
            if missing:
                warnings.warn(
                    f"execution providers {missing} are not in this onnxruntime build "
                    f"(available: {available}); falling back to {CPU}",
                    RuntimeWarning,
                    stacklevel=3,
                )
        chosen = [p for p in wanted if p in available and p != CPU] + [CPU]
        log.info("execution providers requested %s, using %s", requested, chosen)
        return chosen

    def _encode(self, items: list[tuple[str, str]]) -> tuple[list[Encoding], int]:
        """Pair encodings (special tokens added), longest-first truncated; and how many were cut."""
        limit = self.max_length * CHARS_PER_TOKEN_CAP
        truncated = 0
        queries: dict[str, int] = {}
        passages: list[str] = []
        query_slots: list[int] = []
        cut_by_chars: list[bool] = []
        for query, passage in items:
            query_slots.append(queries.setdefault(query, len(queries)))
            capped, cut = _cap_chars(passage, limit)
            passages.append(capped)
            cut_by_chars.append(cut)
        query_texts = [_cap_chars(q, limit)[0] for q in queries]
        try:
            query_encs = self._tokenizer.encode_batch(query_texts, add_special_tokens=False)
            passage_encs = self._tokenizer.encode_batch(passages, add_special_tokens=False)
        except Exception as exc:  # tokenizers raises bare Exceptions
            raise ModelError(f"tokenisation failed: {exc}") from exc
        encodings: list[Encoding] = []
        for slot, passage_enc, cut in zip(query_slots, passage_encs, cut_by_chars, strict=True):
            query_enc = query_encs[slot]
            n1, n2 = len(query_enc.ids), len(passage_enc.ids)
            k1, k2 = longest_first(n1, n2, self._budget)
            if k1 < n1:
                query_enc = truncated_copy(self._tokenizer, query_texts[slot], k1)
            if k2 < n2:
                passage_enc.truncate(k2)
            if cut or k1 < n1 or k2 < n2:
                truncated += 1
            encodings.append(
                self._tokenizer.post_process(query_enc, passage_enc, add_special_tokens=True)
            )
        return encodings, truncated

    def _check_features(self, features: np.ndarray | None, count: int) -> np.ndarray | None:
        if not self._feature_names:
            return None
        if features is None:
            raise ModelError(
                f"{self.model_id} is first-stage-aware: it needs the first-stage features "
                f"{', '.join(self._feature_names)} for every pair, and none were given"
            )
        columns = np.asarray(features, dtype=np.float32)
        if columns.shape != (count, len(self._feature_names)):
            raise ModelError(
                f"first-stage features have shape {columns.shape}, expected "
                f"({count}, {len(self._feature_names)}) for {', '.join(self._feature_names)}"
            )
        if not np.isfinite(columns).all():
            raise ModelError("first-stage features must be finite")
        return columns

    def _run(
        self,
        encodings: Sequence[Encoding],
        width: int,
        features: np.ndarray | None = None,
        heads: tuple[str, ...] = (),
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        arrays = pad_encodings(encodings, width)
        if features is not None:
            arrays["first_stage"] = np.ascontiguousarray(features, dtype=np.float32)
        try:
            feed = {name: arrays[name] for name in self._inputs}
        except KeyError as exc:
            raise ModelError(f"the model wants an input this scorer cannot make: {exc}") from exc
        extra: dict[str, np.ndarray] = {}
        try:
            if heads:  # several outputs: a plain run (IO binding here binds one output)
                raw, *rest = self._session.run([self._output, *heads], feed)
                extra = {
                    name: np.asarray(values, dtype=np.float32).reshape(-1)
                    for name, values in zip(heads, rest, strict=True)
                }
            elif self.io_binding:
                raw = self._run_bound(feed)
            else:
                raw = self._session.run([self._output], feed)[0]
            logits = np.asarray(raw, dtype=np.float32)
        except Exception as exc:  # ORT's runtime errors are untyped
            raise ModelError(f"the model failed on a batch of {len(encodings)}: {exc}") from exc
        if logits.ndim == 1:
            logits = logits[:, None]
        if logits.shape[0] != len(encodings) or any(
            v.shape[0] != len(encodings) for v in extra.values()
        ):
            raise ModelError(
                f"the model returned {logits.shape[0]} scores for a batch of {len(encodings)}"
            )
        return head_scores(logits), extra

    def _run_bound(self, feed: dict[str, np.ndarray]) -> Any:
        """One batch through IO binding: inputs put on the provider's device, output left
        there by ONNX Runtime and copied back once."""
        device = "cuda" if self._provider == CUDA else "cpu"
        binding = self._session.io_binding()
        for name, array in feed.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self._output, device, 0)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def truncated_copy(tokenizer: Tokenizer, text: str, keep: int) -> Encoding:
    """A fresh encoding of ``text`` cut to ``keep`` tokens (query encodings are shared)."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    encoding.truncate(keep)
    return encoding


def default_model_dir() -> Path:
    """The cross-encoder used when none is named: ``RERANKER_MODEL``, else the shipped
    first-stage-aware one (chosen on dev queries; it reads the first stage's scores beside
    the text, see :mod:`reranker.rerank.features`)."""
    import os

    configured = os.environ.get("RERANKER_MODEL")
    if configured:
        return Path(configured)
    return SHIPPED_MODELS_DIR / "reranker-minilm-l6-aware"


def load_scorer(
    model: Path | None = None, variant: str | None = None, *, max_length: int | None = None
) -> Scorer:
    """The cross-encoder in ``model`` (default: :func:`default_model_dir`); without a variant,
    fp32 if the folder has it, else the first it has; without ``max_length``, the card's."""
    folder = model or default_model_dir()
    if variant is None:
        variants = read_card(folder, CROSS_ENCODER_CARD).get("variants") or {}
        variant = "fp32" if "fp32" in variants or not variants else next(iter(variants))
    return Scorer(folder, variant=variant, max_length=max_length)
