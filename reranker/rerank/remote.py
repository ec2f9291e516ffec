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
One scorer may be shared by threads (the proxy's scorer pool).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from reranker.batching import logits_or_probabilities
from reranker.errors import ModelError
from reranker.rerank.scorer import ScoreTimeout, check_pairs

log = logging.getLogger(__name__)

#: statuses that say the endpoint (not the request) failed: try another, count a failure
ENDPOINT_FAILURES = frozenset({424, 500, 502, 503, 504})
#: the status of an endpoint that is busy, not broken: try another, count nothing
OVERLOADED = 429


class EndpointFailure(Exception):
    """One endpoint did not give usable scores; ``counts`` says whether its breaker hears of it."""

    def __init__(self, reason: str, *, counts: bool = True) -> None:
        super().__init__(reason)
        self.counts = counts


@dataclass
class Endpoint:
    """One rerank endpoint: its breaker and counters (guarded by the scorer's lock)."""

    url: str
    failures_to_open: int
    cooloff_s: float
    consecutive: int = 0
    opened_at: float | None = None
    trial_running: bool = False
    #: the endpoint serves another model (found by a health check): never used until it doesn't
    mismatch: str | None = None
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def state(self, now: float) -> str:
        """``closed``, ``open``, ``half-open`` or ``mismatch``."""
        if self.mismatch is not None:
            return "mismatch"
        if self.opened_at is None:
            return "closed"
        return "open" if now - self.opened_at < self.cooloff_s else "half-open"

    def open(self, now: float, reason: str) -> None:
        self.opened_at = now
        self.consecutive = max(self.consecutive, self.failures_to_open)
        self.last_error = reason


class RemoteScorer:
    """Scores from one or more rerank endpoints (see the module's docstring).

    ``urls`` are base URLs (``http://host:port``); ``api_key`` is sent as ``Authorization:
    Bearer <key>`` (how TEI and our rerank API take it). ``timeout_s`` bounds one HTTP
    request (the caller's ``deadline`` shortens it); ``wait_s`` is how long construction keeps
    asking ``/info`` until at least one endpoint answers. ``transport`` replaces httpx's (tests).
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
        cleaned = [u.strip().rstrip("/") for u in urls if u and u.strip()]
        if not cleaned:
            raise ModelError("a remote scorer needs at least one endpoint URL")
        if len(set(cleaned)) != len(cleaned):
            raise ModelError(f"an endpoint URL is given twice: {', '.join(cleaned)}")
        for url in cleaned:
            if not url.startswith(("http://", "https://")):
                raise ModelError(f"scorer URL {url!r} must start with http:// or https://")
        if failures < 1 or attempts < 1 or timeout_s <= 0:
            raise ModelError("failures and attempts must be ≥ 1 and timeout_s > 0")
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = itertools.count()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            headers=headers,
            timeout=timeout_s,
            transport=transport,
            limits=httpx.Limits(max_keepalive_connections=32, max_connections=64),
        )
        self.endpoints = [Endpoint(url, failures, cooloff_s) for url in cleaned]
        self._info = self._first_infos(wait_s)
        self.max_texts = min(
            int(e.info.get("max_client_batch_size") or 1_000_000) for e in self._answering()
        )
        self._stop = threading.Event()
        self._health: threading.Thread | None = None
        if health_interval_s > 0:
            self._health = threading.Thread(
                target=self._health_loop,
                args=(health_interval_s,),
                name="reranker-remote-health",
                daemon=True,
            )
            self._health.start()
        log.info("remote scorer %s (%s) over %s", self.model_id, self.version, ", ".join(cleaned))

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
        return [e.url for e in self.endpoints]

    def __repr__(self) -> str:
        return f"RemoteScorer({self.model_id!r}, version={self.version!r}, endpoints={self.urls!r})"

    def describe(self) -> list[dict[str, Any]]:
        """Each endpoint's state and counters (``/_health``, ``/metrics``)."""
        now = self._clock()
        with self._lock:
            return [
                {
                    "url": e.url,
                    "state": e.state(now),
                    "in_flight": e.in_flight,
                    "requests": e.requests,
                    "failures": e.failures,
                    **({"last_error": e.last_error} if e.last_error else {}),
                }
                for e in self.endpoints
            ]

    def warmup(self) -> None:
        """Nothing to warm here: the endpoints were asked for ``/info`` at construction."""

    def close(self) -> None:
        self._stop.set()
        if self._health is not None:
            self._health.join(timeout=5)
        self._http.close()

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
        tried: list[Endpoint] = []
        reasons: list[str] = []
        for _ in range(self.attempts):
            endpoint = self._pick(exclude=tried)
            if endpoint is None:
                break
            tried.append(endpoint)
            timeout = self.timeout_s
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._finish(endpoint, None)
                    raise ScoreTimeout(
                        "scoring passed its deadline before a remote scorer answered"
                        + (f" ({'; '.join(reasons)})" if reasons else "")
                    )
                timeout = min(timeout, left)
            try:
                scores = self._post(endpoint, query, texts, timeout)
            except EndpointFailure as exc:
                reasons.append(f"{endpoint.url}: {exc}")
                self._finish(endpoint, exc)
                log.warning("remote scorer %s failed: %s", endpoint.url, exc)
                continue
            except BaseException:
                self._finish(endpoint, None)
                raise
            self._finish(endpoint, True)
            return scores
        if not reasons:
            raise ModelError("no remote scorer is available: every endpoint's breaker is open")
        raise ModelError("no remote scorer answered: " + "; ".join(reasons))

    def _post(self, endpoint: Endpoint, query: str, texts: list[str], timeout: float) -> np.ndarray:
        body = {"query": query, "texts": texts, "raw_scores": True, "truncate": True}
        try:
            response = self._http.post(f"{endpoint.url}/rerank", json=body, timeout=timeout)
        except httpx.TimeoutException:
            # cut short by the caller's deadline: not the endpoint's fault
            own = timeout >= self.timeout_s
            raise EndpointFailure(f"no answer within {timeout:.2f} s", counts=own) from None
        except httpx.HTTPError as exc:
            raise EndpointFailure(f"{type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status == OVERLOADED:
            raise EndpointFailure("429 overloaded", counts=False)
        if status in ENDPOINT_FAILURES or status >= 500:
            raise EndpointFailure(f"{status} {error_text(response)}")
        if status != 200:
            # the request's own fault (400, 413, 422) or a wrong key: no other endpoint helps
            raise ModelError(
                f"remote scorer {endpoint.url} refused: {status} {error_text(response)}"
            )
        try:
            return scores_by_index(response.json(), len(texts))
        except (ValueError, ModelError) as exc:
            raise EndpointFailure(f"malformed answer: {exc}") from None

    # ------------------------------------------------------------------ endpoints

    def _pick(self, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        """A half-open endpoint whose one probe is free (claimed), else the closed endpoint with
        the fewest requests in flight (round-robin among ties), else ``None``."""
        now = self._clock()
        with self._lock:
            turn = next(self._turn)
            count = len(self.endpoints)
            rotated = [self.endpoints[(turn + i) % count] for i in range(count)]
            candidates = [e for e in rotated if e not in exclude]
            probes = [e for e in candidates if e.state(now) == "half-open" and not e.trial_running]
            closed = [e for e in candidates if e.state(now) == "closed"]
            if probes:  # a cooled-off endpoint gets its one trial (a failure fails over)
                chosen = probes[0]
                chosen.trial_running = True
            elif closed:
                chosen = min(closed, key=lambda e: e.in_flight)
            else:
                return None
            chosen.in_flight += 1
            chosen.requests += 1
            return chosen

    def _finish(self, endpoint: Endpoint, outcome: bool | EndpointFailure | None) -> None:
        """``True``: it answered; a failure: count it (when it counts); ``None``: not its fault."""
        now = self._clock()
        with self._lock:
            endpoint.in_flight -= 1
            if outcome is True:
                self._closed(endpoint)
            elif isinstance(outcome, EndpointFailure) and outcome.counts:
                self._failed(endpoint, now, str(outcome))
            else:
                endpoint.trial_running = False

    @staticmethod
    def _closed(endpoint: Endpoint) -> None:
        endpoint.consecutive = 0
        endpoint.opened_at = None
        endpoint.trial_running = False

    @staticmethod
    def _failed(endpoint: Endpoint, now: float, reason: str) -> None:
        endpoint.failures += 1
        endpoint.consecutive += 1
        endpoint.last_error = reason[:300]
        if endpoint.trial_running or endpoint.consecutive >= endpoint.failures_to_open:
            endpoint.opened_at = now
        endpoint.trial_running = False

    def _answering(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.info]

    def _fetch_info(self, endpoint: Endpoint) -> dict[str, Any]:
        try:
            response = self._http.get(f"{endpoint.url}/info", timeout=min(self.timeout_s, 5.0))
        except httpx.HTTPError as exc:
            raise EndpointFailure(f"GET /info: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise EndpointFailure(f"GET /info: {response.status_code} {error_text(response)}")
        try:
            info = response.json()
        except ValueError:
            raise EndpointFailure("GET /info did not answer JSON") from None
        if not isinstance(info, dict):
            raise EndpointFailure("GET /info did not answer an object")
        return info

    def _first_infos(self, wait_s: float) -> dict[str, Any]:
        """Ask every endpoint for ``/info`` (until one answers or ``wait_s`` passes); check
        they agree on the model and that it can be reached through ``/rerank``."""
        give_up = time.monotonic() + wait_s
        while True:
            failures: list[str] = []
            for endpoint in self.endpoints:
                if endpoint.info:
                    continue
                try:
                    endpoint.info = self._fetch_info(endpoint)
                except EndpointFailure as exc:
                    failures.append(f"{endpoint.url}: {exc}")
                    endpoint.open(self._clock(), str(exc))
                else:
                    self._closed(endpoint)
            if self._answering() or time.monotonic() >= give_up:
                break
            time.sleep(min(1.0, max(0.0, give_up - time.monotonic())))
        answering = self._answering()
        if not answering:
            self._http.close()
            raise ModelError("no remote scorer answered GET /info: " + "; ".join(failures))
        first = answering[0]
        for endpoint in answering:
            features = endpoint.info.get("first_stage_features") or []
            if features:
                self._http.close()
                raise ModelError(
                    f"the remote model at {endpoint.url} is first-stage-aware (it reads "
                    f"{', '.join(map(str, features))}), which a rerank request cannot carry; "
                    "serve a plain cross-encoder there, or load the model in-process"
                )
            if not same_model(first.info, endpoint.info):
                self._http.close()
                raise ModelError(
                    "remote scorers disagree on the model: "
                    f"{first.url} serves {describe_model(first.info)}, "
                    f"{endpoint.url} serves {describe_model(endpoint.info)}"
                )
        for failure in failures:
            log.warning("remote scorer not answering yet (its breaker is open): %s", failure)
        return first.info

    # ------------------------------------------------------------------ health checks

    def check_health(self) -> None:
        """Ask every endpoint for ``/info``: an answer with the same model closes its breaker,
        another model keeps it out (``mismatch``), no answer opens it."""
        for endpoint in self.endpoints:
            try:
                info = self._fetch_info(endpoint)
            except EndpointFailure as exc:
                with self._lock:
                    if endpoint.state(self._clock()) != "open":
                        endpoint.open(self._clock(), str(exc))
                continue
            with self._lock:
                endpoint.info = info
                if same_model(self._info, info) and not info.get("first_stage_features"):
                    if endpoint.mismatch is not None or endpoint.opened_at is not None:
                        log.info("remote scorer %s is back", endpoint.url)
                    endpoint.mismatch = None
                    self._closed(endpoint)
                else:
                    endpoint.mismatch = f"serves {describe_model(info)}"
                    endpoint.last_error = endpoint.mismatch

    def _health_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.check_health()
            except Exception:  # a health check must never kill its thread
                log.exception("remote scorer health check failed")


# ------------------------------------------------------------------------------ helpers


def model_version(info: dict[str, Any]) -> str:
    """The served model's version: ours (``model_version``), else TEI's ``model_sha``."""
    return str(info.get("model_version") or info.get("model_sha") or "unknown")


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("model_id") == b.get("model_id") and model_version(a) == model_version(b)


def describe_model(info: dict[str, Any]) -> str:
    return f"{info.get('model_id')!s} version {model_version(info)}"


def error_text(response: httpx.Response) -> str:
    """The error an endpoint gave (TEI's ``error``, Cohere's ``message``), short."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:200]
    return str(body)[:200]


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
