"""A :class:`~reranker.rerank.scorer.PairScorer` that scores through rerank endpoints over HTTP.

    scorer = RemoteScorer(["http://scorer-1:9280", "http://scorer-2:9280"])
    logits = scorer.score([(query, passage), ...])      # the same logits as the in-process model

Each endpoint is a ``reranker serve --scorer-only`` or a Hugging Face text-embeddings-inference
(TEI) server: ``POST /rerank`` with ``{"query", "texts", "raw_scores": true}`` gives each
text's logit at its ``index`` (answers come best first; they are mapped back by index, and the
count and indices are checked). ``GET /info`` at construction names the model: every endpoint
that answers must serve the same ``model_id`` and version (``model_version``, else TEI's
``model_sha``), and a first-stage-aware model (``first_stage_features``) is refused, since a
rerank request cannot carry its features.

Spreading and failing over: each call goes to the healthy endpoint with the fewest requests in
flight (round-robin among ties). An endpoint has its own breaker: ``failures`` consecutive
failures (connection refused or reset, a timeout, a 5xx or 424, a malformed answer) open it
for ``cooloff_s``; then one request probes it (half-open), and its success closes it again. A
failed request is retried once on another endpoint while the deadline allows (``attempts``);
when no endpoint answers, :class:`~reranker.errors.ModelError` is raised, which the pipeline
and the proxy treat as a scorer failure (fail open to the first-stage order, counted as
degraded). A 429 moves on to another endpoint without counting against the one that sent it;
any other 4xx is the request's own fault and raised at once.

Health: with ``health_interval_s`` a daemon thread probes every endpoint's ``GET /info``; an
answer closes an open breaker early (and a wrong model keeps the endpoint out), no answer
opens it. :meth:`describe` gives each endpoint's state for ``/_health``.
One scorer may be shared by threads (the proxy's scorer pool). The endpoint machinery is
:mod:`reranker.retrieval.endpoints`, shared with the remote embedder.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import numpy as np

from reranker.batching import logits_or_probabilities
from reranker.errors import ModelError
from reranker.rerank.scorer import ScoreTimeout, check_pairs
from reranker.retrieval.endpoints import Endpoint, EndpointPool, ModelCheck, PoolOptions

log = logging.getLogger(__name__)


class RemoteScorer:
    """Scores from one or more rerank endpoints (see the module's docstring).

    ``urls`` are base URLs (``http://host:port``); ``api_key`` is sent as ``Authorization:
    Bearer <key>`` (how TEI and our rerank API take it). ``timeout_s`` bounds one HTTP
    request (the caller's ``deadline`` shortens it); ``wait_s`` is how long construction keeps
    asking ``/info`` until at least one endpoint answers. ``transport`` replaces httpx's (tests).
    The endpoints, their breakers and health checks are a
    :class:`~reranker.retrieval.endpoints.EndpointPool` (``pool``).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        failures: int = 3,
        cooloff_s: float = 5.0,
        attempts: int = 2,
        wait_s: float = 0.0,
        health_interval_s: float = 0.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        options = PoolOptions(
            api_key=api_key,
            timeout_s=timeout_s,
            failures=failures,
            cooloff_s=cooloff_s,
            attempts=attempts,
            wait_s=wait_s,
            health_interval_s=health_interval_s,
            transport=transport,
            clock=clock,
        )
        self.pool = EndpointPool(urls, role="scorer", check=RERANKER_CHECK, options=options)
        self._info = self.pool.info
        self.max_texts = self.pool.smallest("max_client_batch_size", 1_000_000)
        log.info("remote scorer %s (%s) over %s", self.model_id, self.version, ", ".join(self.urls))

    # ------------------------------------------------------------------ description

    @property
    def model_id(self) -> str:
        return str(self._info.get("model_id") or "remote")

    @property
    def version(self) -> str:
        return model_version(self._info)

    @property
    def variant(self) -> str:
        return str(self._info.get("variant") or self._info.get("model_dtype") or "remote")

    @property
    def provider(self) -> str:
        return "remote"

    @property
    def feature_names(self) -> tuple[str, ...]:
        return ()  # a first-stage-aware remote model is refused at construction

    @property
    def max_length(self) -> int | None:
        value = self._info.get("max_input_length")
        return int(value) if isinstance(value, int) else None

    @property
    def urls(self) -> list[str]:
        return self.pool.urls

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.pool.endpoints

    @property
    def timeout_s(self) -> float:
        return self.pool.timeout_s

    @property
    def attempts(self) -> int:
        return self.pool.attempts

    def __repr__(self) -> str:
        return f"RemoteScorer({self.model_id!r}, version={self.version!r}, endpoints={self.urls!r})"

    def describe(self) -> list[dict[str, Any]]:
        """Each endpoint's state and counters (``/_health``, ``/metrics``)."""
        return self.pool.describe()

    def check_health(self) -> None:
        """Ask every endpoint for ``/info``: an answer with the same model closes its breaker,
        another model keeps it out (``mismatch``), no answer opens it."""
        self.pool.check_health()

    def warmup(self) -> None:
        """Nothing to warm here: the endpoints were asked for ``/info`` at construction."""

    def close(self) -> None:
        self.pool.close()

    # ------------------------------------------------------------------ scoring

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        sigmoid: bool = False,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """One float32 logit per pair (through a sigmoid with ``sigmoid``), in the caller's
        order: one request per query (and per ``max_client_batch_size`` texts)."""
        items = check_pairs(pairs)
        out = np.empty(len(items), dtype=np.float32)
        groups: dict[str, list[int]] = {}
        for position, (query, _) in enumerate(items):
            groups.setdefault(query, []).append(position)
        for query, positions in groups.items():
            for start in range(0, len(positions), self.max_texts):
                chunk = positions[start : start + self.max_texts]
                texts = [items[i][1] for i in chunk]
                out[chunk] = self._rerank(query, texts, deadline)
        return logits_or_probabilities(out, probabilities=sigmoid)

    def _rerank(self, query: str, texts: list[str], deadline: float | None) -> np.ndarray:
        body = {"query": query, "texts": texts, "raw_scores": True, "truncate": True}
        return self.pool.request(
            "/rerank",
            body,
            lambda answer: scores_by_index(answer, len(texts)),
            deadline=deadline,
            expired=ScoreTimeout,
        )


# ------------------------------------------------------------------------------ helpers


def model_version(info: dict[str, Any]) -> str:
    """The served model's version: ours (``model_version``), else TEI's ``model_sha``."""
    return str(info.get("model_version") or info.get("model_sha") or "unknown")


def served_model(info: dict[str, Any]) -> tuple[Any, str]:
    """What every rerank endpoint must agree on: the model's id and version."""
    return info.get("model_id"), model_version(info)


def describe_model(info: dict[str, Any]) -> str:
    return f"{info.get('model_id')!s} version {model_version(info)}"


def scoring_refusal(url: str, info: dict[str, Any]) -> str | None:
    """Why the model at ``url`` cannot score through ``/rerank``: it is an embedding model
    (TEI's ``model_type``; ``reranker serve --embedder-only``), or it reads first-stage
    features, which a rerank request cannot carry."""
    model_type = info.get("model_type")
    if isinstance(model_type, dict) and "embedding" in model_type:
        return (
            f"{url} serves an embedding model ({info.get('model_id')!s}), not a reranker: "
            "point --scorer-url at `reranker serve --scorer-only` or a TEI reranker"
        )
    features = info.get("first_stage_features") or []
    if not features:
        return None
    return (
        f"the remote model at {url} is first-stage-aware (it reads "
        f"{', '.join(map(str, features))}), which a rerank request cannot carry; "
        "serve a plain cross-encoder there, or load the model in-process"
    )


#: a rerank endpoint's model: its id and version must agree; an embedding or first-stage-aware
#: model is refused
RERANKER_CHECK = ModelCheck(
    identity=served_model,
    describe=describe_model,
    refusal=scoring_refusal,
)


def scores_by_index(body: Any, count: int) -> np.ndarray:
    """TEI's ``[{"index", "score"}, ...]`` (best first) as scores in the texts' order; every
    index from 0 to ``count - 1`` exactly once, every score a finite number."""
    if not isinstance(body, list):
        raise ModelError(f"expected a list of {{index, score}}, got {type(body).__name__}")
    if len(body) != count:
        raise ModelError(f"{len(body)} scores for {count} texts")
    out = np.full(count, np.nan, dtype=np.float32)
    for item in body:
        index = item.get("index") if isinstance(item, dict) else None
        score = item.get("score") if isinstance(item, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ModelError(f"an answer's index is {index!r}, not one of 0..{count - 1}")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise ModelError(f"text {index}'s score is {score!r}, not a number")
        if not math.isnan(out[index]):
            raise ModelError(f"text {index} is scored twice")
        if not math.isfinite(score):
            raise ModelError(f"text {index}'s score is not finite")
        out[index] = score
    return out
