"""The models a proxy serves: the cross-encoder and the query embedder, loaded at start-up
(in a thread, in the background by default), and the cross-encoder's hot reload
(``POST /_reranker/reload`` or SIGHUP): load, smoke-test, swap atomically; the model serving
keeps serving until then, and stays if anything fails."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reranker.errors import ModelError
from reranker.proxy import errors
from reranker.proxy.errors import ProxyError
from reranker.proxy.limits import CircuitBreaker
from reranker.proxy.metrics import ProxyMetrics
from reranker.proxy.settings import ProxySettings
from reranker.rerank.cache import CachedScorer, LruScores
from reranker.rerank.cascade import is_first_stage_student
from reranker.rerank.pipeline import check_scores
from reranker.rerank.scorer import PairScorer, ServedScorer
from reranker.retrieval.embed_cache import TextEncoder

log = logging.getLogger(__name__)

ScorerFactory = Callable[[], ServedScorer]
ModelLoader = Callable[[Path | None, str | None], ServedScorer]
"""``(model folder, variant)`` → a loaded scorer; ``None`` means the configured default."""
EncoderFactory = Callable[[], TextEncoder]

#: A reloaded model must score these finite, in this count and order of relevance, before it
#: replaces the one serving (a smoke test against a broken or wrong model).
SMOKE_QUERY = "what is a qubit in quantum computing"
SMOKE_PASSAGES = (
    "A qubit is the basic unit of quantum information: a two-level quantum system that can be "
    "in a superposition of the states 0 and 1.",
    "Malted barley provides the sugars that yeast ferments into alcohol when brewing beer.",
)


def freeze_heap() -> None:
    """Move every object alive now (modules, models, tokenizers, clients) out of the garbage
    collector's reach. A full collection otherwise walks all of them on the event loop's
    thread: 0.3-0.4 s measured in the test process, every request waiting meanwhile. What
    requests allocate afterwards is collected as usual. No collection first: that would be
    the very pause this avoids (startup's little garbage stays). :func:`thaw_heap` undoes
    it when the proxy stops."""
    gc.freeze()


def thaw_heap() -> None:
    """Give the objects :func:`freeze_heap` set aside back to the collector (a stopped proxy's
    models can then be freed, e.g. in a process that starts several)."""
    gc.unfreeze()


async def _load_encoder(
    factory: EncoderFactory | None, what: str
) -> tuple[TextEncoder | None, str | None]:
    """The encoder ``factory`` builds (in a thread), or ``None`` and why: a model that fails
    to load leaves the proxy up, its error kept for ``/_health``."""
    if factory is None:
        return None, None
    try:
        return await asyncio.to_thread(factory), None
    except Exception as exc:
        error = str(exc) or type(exc).__name__
        log.error("%s could not be loaded: %s", what, error)
        return None, error


class LoadedModels:
    """The scorer and the embedder new requests use, and how they got there.

    ``scorer`` is ``None`` until loaded (``model_error`` then says why, once ``loaded`` is set);
    a reload swaps it, requests already scoring keep the one they started with. A new model
    starts with a closed ``breaker``.
    """

    def __init__(
        self,
        settings: ProxySettings,
        metrics: ProxyMetrics,
        breaker: CircuitBreaker,
        *,
        scorer_factory: ScorerFactory | None = None,
        encoder_factory: EncoderFactory | None = None,
        model_loader: ModelLoader | None = None,
        student_factory: ScorerFactory | None = None,
        rescore_factory: EncoderFactory | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.breaker = breaker
        if scorer_factory is None and model_loader is not None:
            loader = model_loader
            scorer_factory = lambda: loader(None, None)  # noqa: E731
        self.scorer_factory = scorer_factory
        self.encoder_factory = encoder_factory
        self.rescore_factory = rescore_factory
        self.model_loader = model_loader
        self.scorer: ServedScorer | None = None
        #: the first stage is the cascade's cheap level (``--cascade-model first-stage``)
        self.first_stage_student = is_first_stage_student(settings.cascade_model)
        if (
            student_factory is None
            and settings.cascade_model is not None
            and not self.first_stage_student
        ):
            student_factory = _student_loader(settings.cascade_model)
        self.student_factory = student_factory
        #: a cascade's student (``rerank.cascade``); ``student_error`` says why it is missing
        self.student: ServedScorer | None = None
        self.student_error: str | None = (
            None
            if student_factory is not None or self.first_stage_student
            else "no cascade model configured"
        )
        #: one cache for the proxy's life (its keys carry the model's version, so a reload
        #: never serves the old model's scores and the counters stay monotonic)
        self.score_cache = (
            LruScores(settings.score_cache_size) if settings.score_cache_size else None
        )
        if self.score_cache is not None:
            metrics.watch_score_cache(self.score_cache)
        self.encoder: TextEncoder | None = None
        #: the second embedder (:mod:`reranker.rerank.rescore`); ``None``: none configured,
        #: or it failed to load (``rescore_error``), and windows are reranked without it
        self.rescorer: TextEncoder | None = None
        self.rescore_error: str | None = None
        self.model_error: str | None = None
        self.encoder_error: str | None = None
        self.loaded = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    def cached(self, scorer: ServedScorer) -> PairScorer:
        """``scorer`` behind the proxy's pair-score cache, when there is one."""
        return scorer if self.score_cache is None else CachedScorer(scorer, self.score_cache)

    def unavailable_reason(self) -> str:
        """Why there is no scorer: still loading, or the load's error."""
        return "loading" if not self.loaded.is_set() else (self.model_error or "unknown")

    # ------------------------------------------------------------------ start-up

    async def load(self) -> None:
        """Load the scorer (and warm it up) and the embedder, each in a thread; a model that
        fails to load leaves the proxy up, with the error kept for ``/_health``."""
        try:
            if self.scorer_factory is not None:
                try:
                    scorer = await asyncio.to_thread(self.scorer_factory)
                    await asyncio.to_thread(scorer.warmup)
                except Exception as exc:  # a model that fails to load leaves the proxy up
                    self.model_error = str(exc) or type(exc).__name__
                    log.error("the cross-encoder could not be loaded: %s", self.model_error)
                else:
                    self.install(scorer)
            else:
                self.model_error = "no cross-encoder configured"
            if self.student_factory is not None:
                try:
                    student = await asyncio.to_thread(self.student_factory)
                    await asyncio.to_thread(student.warmup)
                except Exception as exc:  # the proxy stays up; rerank.cascade is then a 400
                    self.student_error = str(exc) or type(exc).__name__
                    log.error("the cascade model could not be loaded: %s", self.student_error)
                else:
                    self.student = student
            self.encoder, self.encoder_error = await _load_encoder(
                self.encoder_factory, "the query embedder"
            )
            self.rescorer, self.rescore_error = await _load_encoder(
                self.rescore_factory, "the second embedder"
            )
        finally:
            freeze_heap()
            self.loaded.set()

    def install(self, scorer: ServedScorer) -> None:
        """Make ``scorer`` the one new requests use; requests already scoring keep theirs."""
        self.scorer = scorer
        self.model_error = None
        self.metrics.model.info(
            {
                "model": scorer.model_id,
                "version": scorer.version,
                "variant": scorer.variant,
                "provider": scorer.provider,
            }
        )

    # ------------------------------------------------------------------ hot reload

    def install_sighup(self) -> bool:
        """SIGHUP reloads the configured model (where the loop can take signal handlers:
        the main thread of a Unix process)."""
        if self.model_loader is None or not hasattr(signal, "SIGHUP"):
            return False
        loop = asyncio.get_running_loop()

        def hangup() -> None:
            log.info("SIGHUP: reloading the cross-encoder")
            task = loop.create_task(self._reload_logged(), name="reranker-sighup-reload")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, hangup)
        except (NotImplementedError, RuntimeError, ValueError):
            return False
        return True

    async def _reload_logged(self) -> None:
        try:
            outcome = await self.reload()
        except ProxyError as exc:
            log.error("model reload refused: %s", exc.reason)
        else:
            log.info("model reloaded: %s", json.dumps(outcome["model"]))

    async def reload(self, model: Path | None = None, variant: str | None = None) -> dict[str, Any]:
        """Load a model (default: the configured one, re-read from disk), smoke-test it, and
        swap it in atomically; the old one keeps serving until then and stays if anything
        fails (a :class:`ProxyError`: 400 for a model that fails its card check or smoke test,
        409 while another reload runs)."""
        if self.model_loader is None:
            raise errors.bad_request("this proxy was started without a reloadable model")
        if self._reload_lock.locked():
            raise ProxyError(409, "status_exception", "a model reload is already running")
        async with self._reload_lock:
            started = time.perf_counter()
            try:
                scorer = await asyncio.to_thread(self.model_loader, model, variant)
                await asyncio.to_thread(smoke_test, scorer)
            except Exception as exc:
                self.metrics.reloads.labels("refused").inc()
                reason = str(exc) or type(exc).__name__
                log.error("model reload refused: %s", reason)
                raise errors.bad_request(
                    "model reload refused, the current model keeps serving: "
                    + redact_paths(reason, self.settings.model_roots)
                ) from None
            previous = self.scorer
            self.install(scorer)
            self.breaker.reset()
            self.metrics.reloads.labels("loaded").inc()
            return {
                "acknowledged": True,
                "previous": describe_scorer(previous),
                "model": describe_scorer(scorer),
                "took_ms": round((time.perf_counter() - started) * 1000, 1),
            }

    def model_folder(self, model: str) -> Path:
        """The folder a reload names, which must lie inside a configured model root (a name
        relative to the first root, or a path). The refusal says nothing about what exists."""
        roots = [root.resolve() for root in self.settings.model_roots]
        if not roots:
            raise ProxyError(
                403,
                "security_exception",
                "this proxy has no model roots (RERANKER_PROXY_MODEL_ROOTS, --model-root): "
                "only the configured model can be reloaded",
            )
        try:
            given = Path(model.strip())
            candidate = (given if given.is_absolute() else roots[0] / given).resolve()
        except (OSError, ValueError):  # a NUL byte, a link loop: not a folder in a root
            candidate = None
        for root in roots:
            if candidate is not None and candidate != root and candidate.is_relative_to(root):
                return candidate
        raise ProxyError(
            403,
            "security_exception",
            "[model] must name a folder inside one of this proxy's model roots",
        )


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/[^\s'\"(),;:<>]*")
_HEX_RUN = re.compile(r"\b[0-9a-fA-F]{16,}\b")


def _student_loader(folder: Path) -> ScorerFactory:
    def load() -> ServedScorer:
        from reranker.rerank.scorer import load_scorer

        return load_scorer(folder)

    return load


def redact_paths(reason: str, roots: tuple[Path, ...]) -> str:
    """``reason`` with every absolute path outside ``roots`` replaced by ``<path>``, paths
    inside a root shown relative to it, and long hex runs (hashes) replaced by ``<hash>``: a
    reload error must not tell a client which files exist or what they hash to."""
    resolved = [root.resolve() for root in roots]

    def replace(match: re.Match[str]) -> str:
        path = Path(match.group(0))
        for root in resolved:
            if path == root or path.is_relative_to(root):
                return str(path.relative_to(root)) or "."
        return "<path>"

    return _HEX_RUN.sub("<hash>", _ABSOLUTE_PATH.sub(replace, reason))


def describe_scorer(scorer: ServedScorer | None) -> dict[str, Any] | None:
    if scorer is None:
        return None
    return {
        "id": scorer.model_id,
        "version": scorer.version,
        "variant": scorer.variant,
        "provider": scorer.provider,
    }


def smoke_test(scorer: ServedScorer) -> None:
    """Raise unless ``scorer`` gives finite scores, one per pair, the relevant passage first."""
    scorer.warmup()
    scores = scorer.score([(SMOKE_QUERY, passage) for passage in SMOKE_PASSAGES])
    check_scores(scores, len(SMOKE_PASSAGES))
    if not scores[0] > scores[1]:
        raise ModelError(
            f"smoke test failed: the model scores an off-topic passage ({scores[1]:.3f}) above "
            f"the answer ({scores[0]:.3f})"
        )
