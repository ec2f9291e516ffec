"""A pool of model servers reached over HTTP, each behind its own breaker: what the remote
scorer (:class:`~reranker.rerank.remote.RemoteScorer`, ``POST /rerank``) and the remote
embedder (:class:`~reranker.retrieval.remote_embedder.RemoteEmbedder`, ``POST /embed``)
share. The endpoints are ``reranker serve`` processes or Hugging Face text-embeddings-inference
(TEI) servers; they speak TEI's API.

    pool = EndpointPool(urls, role="embedder", check=..., timeout_s=10.0)
    vectors = pool.request("/embed", {"inputs": texts}, parse=read_vectors)

Construction asks every endpoint for ``GET /info`` (until one answers, or ``wait_s`` passes):
every endpoint that answers must serve the same model (``check.identity``) and none may serve
one the caller cannot use (``check.refusal``), else :class:`~reranker.errors.ModelError`.

Spreading and failing over: each request goes to the healthy endpoint with the fewest requests
in flight (round-robin among ties). An endpoint has its own breaker: ``failures`` consecutive
failures (connection refused or reset, a timeout, a 5xx or 424, a malformed answer) open it
for ``cooloff_s``; then one request probes it (half-open), and its success closes it again. A
failed request is retried on another endpoint while ``attempts`` and the deadline allow; when
no endpoint answers, :class:`~reranker.errors.ModelError` is raised. A 429 moves on to another
endpoint without counting against the one that sent it; any other 4xx is the request's own
fault and raised at once.

Health: with ``health_interval_s`` a daemon thread probes every endpoint's ``GET /info``; an
answer closes an open breaker early (and another model keeps the endpoint out), no answer
opens it. :meth:`EndpointPool.describe` gives each endpoint's state for ``/_health`` and
``/metrics``. One pool may be shared by threads.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from reranker.errors import ModelError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: statuses that say the endpoint (not the request) failed: try another, count a failure
ENDPOINT_FAILURES = frozenset({424, 500, 502, 503, 504})
#: the status of an endpoint that is busy, not broken: try another, count nothing
OVERLOADED = 429


class EndpointFailure(Exception):
    """One endpoint did not give a usable answer; ``counts`` says whether its breaker hears
    of it."""

    def __init__(self, reason: str, *, counts: bool = True) -> None:
        super().__init__(reason)
        self.counts = counts


@dataclass
class Endpoint:
    """One endpoint: its breaker and counters (guarded by the pool's lock)."""

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

    def closed(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.trial_running = False

    def failed(self, now: float, reason: str) -> None:
        self.failures += 1
        self.consecutive += 1
        self.last_error = reason[:300]
        if self.trial_running or self.consecutive >= self.failures_to_open:
            self.opened_at = now
        self.trial_running = False


@dataclass(frozen=True)
class ModelCheck:
    """How a pool reads the model an endpoint's ``/info`` names.

    ``identity``: what every endpoint must agree on; ``describe``: the model in words, for
    errors; ``refusal``: why an endpoint (its URL and info) can never serve this pool's
    requests, or ``None``.
    """

    identity: Callable[[dict[str, Any]], Hashable]
    describe: Callable[[dict[str, Any]], str]
    refusal: Callable[[str, dict[str, Any]], str | None] = lambda url, info: None


@dataclass(frozen=True)
class PoolOptions:
    """The knobs of an :class:`EndpointPool` (see the module's docstring).

    ``timeout_s`` bounds one HTTP request (a caller's deadline shortens it); ``wait_s`` is how
    long construction keeps asking ``/info`` until at least one endpoint answers;
    ``transport`` replaces httpx's (tests)."""

    api_key: str | None = None
    timeout_s: float = 10.0
    failures: int = 3
    cooloff_s: float = 5.0
    attempts: int = 2
    wait_s: float = 0.0
    health_interval_s: float = 0.0
    transport: httpx.BaseTransport | None = None
    clock: Callable[[], float] = time.monotonic


class EndpointPool:
    """Endpoints serving one model, a breaker each (see the module's docstring).

    ``urls`` are base URLs (``http://host:port``); ``role`` names what they are in messages
    (``scorer``, ``embedder``). ``options.api_key`` is sent as ``Authorization: Bearer <key>``
    (how TEI and our APIs take it).
    """

    def __init__(
        self, urls: Sequence[str], *, role: str, check: ModelCheck, options: PoolOptions
    ) -> None:
        cleaned = [u.strip().rstrip("/") for u in urls if u and u.strip()]
        if not cleaned:
            raise ModelError(f"a remote {role} needs at least one endpoint URL")
        if len(set(cleaned)) != len(cleaned):
            raise ModelError(f"an endpoint URL is given twice: {', '.join(cleaned)}")
        for url in cleaned:
            if not url.startswith(("http://", "https://")):
                raise ModelError(f"{role} URL {url!r} must start with http:// or https://")
        if options.failures < 1 or options.attempts < 1 or options.timeout_s <= 0:
            raise ModelError("failures and attempts must be ≥ 1 and timeout_s > 0")
        self.role = role
        self.check = check
        self.timeout_s = options.timeout_s
        self.attempts = options.attempts
        self._clock = options.clock
        self._lock = threading.Lock()
        self._turn = itertools.count()
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self._http = httpx.Client(
            headers=headers,
            timeout=options.timeout_s,
            transport=options.transport,
            limits=httpx.Limits(max_keepalive_connections=32, max_connections=64),
        )
        self.endpoints = [Endpoint(url, options.failures, options.cooloff_s) for url in cleaned]
        #: the ``/info`` of the first endpoint that answered: the model every endpoint serves
        self.info = self._first_infos(options.wait_s)
        self._stop = threading.Event()
        self._health: threading.Thread | None = None
        if options.health_interval_s > 0:
            self._health = threading.Thread(
                target=self._health_loop,
                args=(options.health_interval_s,),
                name=f"reranker-remote-{role}-health",
                daemon=True,
            )
            self._health.start()

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def smallest(self, key: str, default: int) -> int:
        """The smallest integer ``key`` of the answering endpoints' ``/info`` (``default``
        for one that does not say): a limit every endpoint accepts."""
        return min(int(e.info.get(key) or default) for e in self.endpoints if e.info)

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

    def close(self) -> None:
        self._stop.set()
        if self._health is not None:
            self._health.join(timeout=5)
        self._http.close()

    # ------------------------------------------------------------------ requests

    def request(
        self,
        path: str,
        body: dict[str, Any],
        parse: Callable[[Any], T],
        *,
        deadline: float | None = None,
        expired: Callable[[str], Exception] = ModelError,
    ) -> T:
        """``POST path`` with ``body`` on the best endpoint, failing over to another; the
        answer's JSON through ``parse`` (whose :class:`ModelError` or :class:`ValueError`
        makes it a malformed answer: the endpoint failed). ``deadline`` (``time.monotonic``)
        passed before an endpoint answered: ``expired(reason)`` is raised."""
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
                    raise expired(
                        f"the deadline passed before a remote {self.role} answered"
                        + (f" ({'; '.join(reasons)})" if reasons else "")
                    )
                timeout = min(timeout, left)
            try:
                answer = self._post(endpoint, path, body, timeout, parse)
            except EndpointFailure as exc:
                reasons.append(f"{endpoint.url}: {exc}")
                self._finish(endpoint, exc)
                log.warning("remote %s %s failed: %s", self.role, endpoint.url, exc)
                continue
            except BaseException:
                self._finish(endpoint, None)
                raise
            self._finish(endpoint, True)
            return answer
        if not reasons:
            raise ModelError(
                f"no remote {self.role} is available: every endpoint's breaker is open"
            )
        raise ModelError(f"no remote {self.role} answered: " + "; ".join(reasons))

    def _post(
        self,
        endpoint: Endpoint,
        path: str,
        body: dict[str, Any],
        timeout: float,
        parse: Callable[[Any], T],
    ) -> T:
        try:
            response = self._http.post(f"{endpoint.url}{path}", json=body, timeout=timeout)
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
                f"remote {self.role} {endpoint.url} refused: {status} {error_text(response)}"
            )
        try:
            return parse(response.json())
        except (ValueError, ModelError) as exc:
            raise EndpointFailure(f"malformed answer: {exc}") from None

    # ------------------------------------------------------------------ breakers

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
                endpoint.closed()
            elif isinstance(outcome, EndpointFailure) and outcome.counts:
                endpoint.failed(now, str(outcome))
            else:
                endpoint.trial_running = False

    # ------------------------------------------------------------------ the model served

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
        they agree on the model and that this pool can use it."""
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
                    endpoint.closed()
            answering = [e for e in self.endpoints if e.info]
            if answering or time.monotonic() >= give_up:
                break
            time.sleep(min(1.0, max(0.0, give_up - time.monotonic())))
        try:
            self._check_models(answering, failures)
        except ModelError:
            self._http.close()
            raise
        for failure in failures:
            log.warning("remote %s not answering yet (its breaker is open): %s", self.role, failure)
        return answering[0].info

    def _check_models(self, answering: list[Endpoint], failures: list[str]) -> None:
        if not answering:
            raise ModelError(f"no remote {self.role} answered GET /info: " + "; ".join(failures))
        first = answering[0]
        for endpoint in answering:
            refused = self.check.refusal(endpoint.url, endpoint.info)
            if refused is not None:
                raise ModelError(refused)
            if self.check.identity(first.info) != self.check.identity(endpoint.info):
                raise ModelError(
                    f"remote {self.role}s disagree on the model: "
                    f"{first.url} serves {self.check.describe(first.info)}, "
                    f"{endpoint.url} serves {self.check.describe(endpoint.info)}"
                )

    def serves_this_model(self, endpoint: Endpoint, info: dict[str, Any]) -> bool:
        """Whether ``info`` (what ``endpoint`` answered) names the model the pool serves."""
        if self.check.refusal(endpoint.url, info) is not None:
            return False
        return self.check.identity(info) == self.check.identity(self.info)

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
                if self.serves_this_model(endpoint, info):
                    if endpoint.mismatch is not None or endpoint.opened_at is not None:
                        log.info("remote %s %s is back", self.role, endpoint.url)
                    endpoint.mismatch = None
                    endpoint.closed()
                else:
                    endpoint.mismatch = f"serves {self.check.describe(info)}"
                    endpoint.last_error = endpoint.mismatch

    def _health_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.check_health()
            except Exception:  # a health check must never kill its thread
                log.exception("remote %s health check failed", self.role)


def error_text(response: httpx.Response) -> str:
    """The error an endpoint gave (TEI's ``error``, Cohere's ``message``), short."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:200]
    return str(body)[:200]
