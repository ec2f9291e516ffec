"""The proxy's settings: one frozen object, from the environment or built in code, validated."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from reranker.config import Settings, env_bool
from reranker.errors import ConfigError
from reranker.es.profiles import DEFAULT_PROFILES_INDEX, DEFAULT_RETENTION_DAYS
from reranker.proxy.blends import parse_pairs
from reranker.rerank.personal import DEFAULT_WEIGHT as DEFAULT_PERSONAL_WEIGHT
from reranker.rerank.personal import MAX_WEIGHT as MAX_PERSONAL_WEIGHT


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def _env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class ProxySettings:
    """Everything ``reranker serve`` needs besides the models themselves.

    ``es`` holds the connection to Elasticsearch (URL, credentials, TLS). When it carries
    credentials, searches run with credentials derived from them and restricted to
    ``allowed_indices`` (:mod:`reranker.proxy.scoped`); the request log and health checks use
    them as they are. Without any, a client's ``Authorization`` header is passed through to
    Elasticsearch (unless it was the proxy's own API key).
    """

    es: Settings = field(default_factory=Settings.from_env)
    host: str = "127.0.0.1"
    port: int = 9280
    #: fnmatch patterns of the indices and aliases that may be searched
    allowed_indices: tuple[str, ...] = ("*",)
    #: if any, clients must send ``Authorization: ApiKey <one of these>``
    api_keys: tuple[str, ...] = ()
    default_window: int = 100
    max_window: int = 1000
    default_fields: tuple[str, ...] = ("title", "text")
    #: the whole request's budget when the request gives no ``rerank.timeout_ms``
    default_timeout_ms: int = 5000
    max_timeout_ms: int = 60_000
    #: share of the budget Elasticsearch gets (its ``timeout``); the scorer gets what remains
    es_budget_fraction: float = 0.5
    #: how long past its deadline a scoring call may run before the request answers without it
    scorer_grace_ms: int = 100
    max_body_bytes: int = 1 << 20
    #: seconds a client has to send a request's headers (the connection is closed after),
    #: and its body (408 after)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    #: most searches in one ``_msearch`` (400 beyond)
    max_msearch_searches: int = 100
    #: most hits one search may ask for (``from`` + ``size``, pass-through too; 400 beyond):
    #: each is parsed, answered and remembered in full by the proxy
    max_hits: int = 1000
    #: reranked requests handled at once; beyond → 429
    max_in_flight: int = 32
    #: reranked requests whose scoring is queued or running (abandoned calls included)
    max_scorer_queue: int = 16
    scorer_workers: int = 1
    #: pair scores kept in memory (LRU; keyed by model, query, passage text, features); 0 = off
    score_cache_size: int = 100_000
    #: consecutive scorer failures that open the circuit, and how long it stays open
    breaker_failures: int = 5
    breaker_cooloff_s: float = 30.0
    retry_after_s: int = 1
    #: dense retrieval (``rerank.hybrid.dense``) needs the embedder
    enable_dense: bool = True
    #: one document per reranked request into ``<log_index_prefix>-YYYY.MM.DD``
    request_log: bool = False
    log_index_prefix: str = "reranker-logs"
    log_queue_size: int = 1000
    log_batch_size: int = 200
    log_flush_s: float = 1.0
    log_top_hits: int = 10
    signals: tuple[tuple[str, str], ...] = ()
    """``(index pattern, signal preset or JSON file)``: the features a ``rerank.blend`` of
    weights may name on matching indices (first match wins)."""
    blends: tuple[tuple[str, str], ...] = ()
    """``(name, blend file)``: learned blends a request may name in ``rerank.blend``."""
    admin_api_keys: tuple[str, ...] = ()
    """Keys for ``POST /_reranker/reload``. Without any, only loopback clients may reload, and
    only while no client key is set either (a client key never reloads)."""
    scoped_credentials: bool = True
    """Search with credentials restricted to ``allowed_indices`` (a restricted API key, or on
    the local node a file-realm user) rather than the proxy's own: see
    :mod:`reranker.proxy.scoped`."""
    remote_clusters: tuple[str, ...] = ()
    """Cluster aliases a ``cluster:index`` expression may name; none by default (such an
    expression is then a 403 from the allow-list)."""
    model_roots: tuple[Path, ...] = ()
    """Folders a reload may load models from (each model is a folder inside one of them);
    empty: the configured model's parent folder."""
    max_json_depth: int = 64
    """Deepest nesting of objects and arrays accepted in a request body (400 beyond)."""
    max_number_digits: int = 40
    """Longest number literal accepted in a request body, in characters (400 beyond)."""
    public_health_details: bool = False
    """When API keys are set: whether ``/_health`` shows details without a key (it always
    answers liveness)."""
    public_metrics: bool = False
    """When API keys are set: whether ``/metrics`` answers without a key."""
    scorer_only: bool = False
    """Serve only the rerank API (``/rerank``, ``/v1/rerank``, ``/v2/rerank``, ``/info``) with
    health, metrics and reload: no Elasticsearch client, no ``_search`` (``reranker serve
    --scorer-only``; see :mod:`reranker.proxy.rerank_api`)."""
    embedder_only: bool = False
    """Serve only the embedder (``POST /embed``, ``GET /info`` of an embedding model,
    ``/_health``, ``/metrics``; see :mod:`reranker.proxy.embed_api`): no cross-encoder, no
    rerank API, no reload, and, as ``scorer_only``, no Elasticsearch (``reranker serve
    --embedder-only``: the endpoint a :class:`~reranker.retrieval.remote_embedder.
    RemoteEmbedder` embeds through). It sets ``scorer_only``, the mode without a cluster."""
    scorer_urls: tuple[str, ...] = ()
    """Rerank endpoints (``reranker serve --scorer-only`` or text-embeddings-inference) to score
    through instead of loading a model (``--scorer-url``; see :mod:`reranker.rerank.remote`)."""
    scorer_api_key: str | None = None
    """Sent to those endpoints as ``Authorization: Bearer <key>``."""
    cascade_model: Path | None = None
    """A cascade's student (an exported model from ``reranker distill``): a search whose
    ``rerank.cascade`` is ``k`` has the student score the whole window and the cross-encoder
    only the student's top ``k`` (``--cascade-model``, ``RERANKER_PROXY_CASCADE_MODEL``);
    ``first-stage``: the first stage's order is the cheap level, no second model;
    ``None``: ``rerank.cascade`` is refused."""
    default_cascade: int | None = None
    """``k`` of the cascade a search gets when its ``rerank`` object names none and asks for
    no blend (at most its window; ``"cascade": false`` scores the whole window). Needs
    ``cascade_model`` (``reranker serve`` sets ``first-stage`` and 20, the defaults chosen on
    dev queries; ``--cascade-k``, ``RERANKER_PROXY_DEFAULT_CASCADE``); ``None``: none."""
    ubi: bool = False
    """User Behavior Insights: every search answered gets a ``query_id`` (``ext.ubi``) and a
    query document in ``ubi_queries_index``; ``POST /_reranker/events`` takes impressions and
    clicks into ``ubi_events_index`` (:mod:`reranker.proxy.ubi`, :mod:`reranker.proxy.events`).
    Both go through the request log's bounded queue, written with the proxy's own
    credentials."""
    ubi_queries_index: str = "ubi_queries"
    ubi_events_index: str = "ubi_events"
    ubi_cache_size: int = 100_000
    """Searches remembered for validating events (their hits and positions); older ones are
    looked up in ``ubi_queries_index``."""
    ubi_max_events: int = 500
    """Most events in one ``POST /_reranker/events`` (400 beyond, nothing accepted); half the
    default write queue, so one full batch fits beside the searches' documents."""
    ubi_max_events_per_search: int = 100
    """Most events accepted for one search, all actions together (429 ``search_event_quota``
    beyond): a flood for one query id cannot fill the shared write queue or the judgments."""
    fair_share_burst: float = 2.0
    """While several clients (API keys; addresses without keys) use the cross-encoder, one
    whose share of its work over the last ``fair_share_horizon_s`` is above this many times
    its equal share is refused (429) until the others catch up; ``0`` turns it off
    (:class:`~reranker.proxy.limits.FairShare`)."""
    fair_share_horizon_s: float = 10.0
    ubi_client_events_per_s: float = 20.0
    """Events one client (its API key; its address on a proxy without keys) may have
    accepted per second, on average; a client may save up to ``ubi_max_events`` of them for a
    burst. Beyond: 429 ``client_event_quota`` for that event, so no client fills the shared
    write queue for the others, however many searches it makes."""
    ubi_cache_bytes: int = 64 << 20
    """Bytes the remembered searches may take (hit ids and bookkeeping, estimated); the least
    recently used are forgotten first (and read back from ``ubi_queries_index`` if needed)."""
    ubi_clock_skew_s: float = 60.0
    """How far an event's timestamp may lie in the future, or before its search."""
    profiles_index: str = DEFAULT_PROFILES_INDEX
    """Where the users' click profiles are (:mod:`reranker.es.profiles`; ``reranker profiles
    update`` writes them): read with the proxy's own credentials for ``rerank.personalize``,
    never searchable by a client through the proxy."""
    personal_weight: float = DEFAULT_PERSONAL_WEIGHT
    """The personal feature's weight when ``rerank.personalize`` is ``true``."""
    profile_retention_days: float = DEFAULT_RETENTION_DAYS
    """A profile not updated for this long is not used (and the update job deletes it)."""

    def __post_init__(self) -> None:
        if self.embedder_only:
            if self.scorer_urls:
                raise ConfigError("an embedder-only server scores nothing: drop the scorer URLs")
            # the proxy's mode without Elasticsearch, whose routes it narrows to the embedder's
            object.__setattr__(self, "scorer_only", True)
        positive = {
            "port": self.port,
            "default_window": self.default_window,
            "max_window": self.max_window,
            "default_timeout_ms": self.default_timeout_ms,
            "max_timeout_ms": self.max_timeout_ms,
            "max_body_bytes": self.max_body_bytes,
            "max_in_flight": self.max_in_flight,
            "max_scorer_queue": self.max_scorer_queue,
            "scorer_workers": self.scorer_workers,
            "breaker_failures": self.breaker_failures,
            "log_queue_size": self.log_queue_size,
            "log_batch_size": self.log_batch_size,
            "max_json_depth": self.max_json_depth,
            "max_number_digits": self.max_number_digits,
            "ubi_cache_size": self.ubi_cache_size,
            "ubi_max_events": self.ubi_max_events,
            "ubi_max_events_per_search": self.ubi_max_events_per_search,
            "ubi_cache_bytes": self.ubi_cache_bytes,
            "max_msearch_searches": self.max_msearch_searches,
            "max_hits": self.max_hits,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"proxy setting {name} must be at least 1, got {value}")
        if self.default_window > self.max_window:
            raise ConfigError("default_window must not exceed max_window")
        if self.default_timeout_ms > self.max_timeout_ms:
            raise ConfigError("default_timeout_ms must not exceed max_timeout_ms")
        if self.fair_share_burst and not (
            self.fair_share_burst >= 1.0 and self.fair_share_horizon_s > 0
        ):
            raise ConfigError(
                "proxy setting fair_share_burst must be 0 (off) or at least 1, and "
                "fair_share_horizon_s positive"
            )
        if not self.ubi_client_events_per_s > 0:
            raise ConfigError("proxy setting ubi_client_events_per_s must be positive")
        if not 0.0 < self.es_budget_fraction < 1.0:
            raise ConfigError("es_budget_fraction must be between 0 and 1")
        if self.score_cache_size < 0:
            raise ConfigError("score_cache_size must be ≥ 0 (0 turns the cache off)")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise ConfigError("header_timeout_s and body_timeout_s must be positive")
        if self.breaker_cooloff_s < 0 or self.log_flush_s <= 0 or self.scorer_grace_ms < 0:
            raise ConfigError("breaker_cooloff_s, log_flush_s and scorer_grace_ms must be ≥ 0")
        if not self.allowed_indices:
            raise ConfigError("allowed_indices is empty: no index could be searched")
        if not self.default_fields:
            raise ConfigError("default_fields is empty: the cross-encoder would read nothing")
        if any(not key for key in (*self.api_keys, *self.admin_api_keys)):
            raise ConfigError("an empty API key is not a key")
        if self.ubi_clock_skew_s < 0:
            raise ConfigError("ubi_clock_skew_s must be ≥ 0")
        if not 0 <= self.personal_weight <= MAX_PERSONAL_WEIGHT:
            raise ConfigError(f"personal_weight must be between 0 and {MAX_PERSONAL_WEIGHT:g}")
        if not self.profile_retention_days > 0:
            raise ConfigError("profile_retention_days must be positive")
        for name in (self.ubi_queries_index, self.ubi_events_index, self.profiles_index):
            if not name or name != name.lower() or any(c in name for c in ' "*\\<|,>/?#:'):
                raise ConfigError(f"{name!r} is not a valid Elasticsearch index name")
        if self.ubi_queries_index == self.ubi_events_index:
            raise ConfigError("the UBI queries and events indices must differ")

    @property
    def es_has_credentials(self) -> bool:
        return bool(self.es.es_api_key or self.es.es_username)

    @classmethod
    def from_env(cls, **overrides: object) -> ProxySettings:
        """Settings from ``RERANKER_PROXY_*`` variables (and ``RERANKER_ES_*`` for ``es``);
        explicit keyword overrides win."""
        values: dict[str, object] = {
            "host": os.environ.get("RERANKER_PROXY_HOST") or "127.0.0.1",
            "port": _env_int("RERANKER_PROXY_PORT", 9280),
            "allowed_indices": _env_list("RERANKER_PROXY_ALLOWED_INDICES", ("*",)),
            "api_keys": _env_list("RERANKER_PROXY_API_KEYS", ()),
            "max_window": _env_int("RERANKER_PROXY_MAX_WINDOW", 1000),
            "max_hits": _env_int("RERANKER_PROXY_MAX_HITS", 1000),
            "max_msearch_searches": _env_int("RERANKER_PROXY_MAX_MSEARCH_SEARCHES", 100),
            "header_timeout_s": _env_float("RERANKER_PROXY_HEADER_TIMEOUT_S", 10.0),
            "body_timeout_s": _env_float("RERANKER_PROXY_BODY_TIMEOUT_S", 30.0),
            "default_timeout_ms": _env_int("RERANKER_PROXY_TIMEOUT_MS", 5000),
            "max_in_flight": _env_int("RERANKER_PROXY_MAX_IN_FLIGHT", 32),
            "max_scorer_queue": _env_int("RERANKER_PROXY_MAX_SCORER_QUEUE", 16),
            "score_cache_size": _env_int("RERANKER_PROXY_SCORE_CACHE_SIZE", 100_000),
            "breaker_failures": _env_int("RERANKER_PROXY_BREAKER_FAILURES", 5),
            "breaker_cooloff_s": _env_float("RERANKER_PROXY_BREAKER_COOLOFF_S", 30.0),
            "request_log": os.environ.get("RERANKER_PROXY_REQUEST_LOG", "").lower()
            in {"1", "true", "yes", "on"},
            "signals": parse_pairs(_env_list("RERANKER_PROXY_SIGNALS", ()), "signals"),
            "blends": parse_pairs(_env_list("RERANKER_PROXY_BLENDS", ()), "blend"),
            "admin_api_keys": _env_list("RERANKER_PROXY_ADMIN_API_KEYS", ()),
            "scoped_credentials": env_bool("RERANKER_PROXY_SCOPED_CREDENTIALS", True),
            "remote_clusters": _env_list("RERANKER_PROXY_REMOTE_CLUSTERS", ()),
            "model_roots": tuple(Path(p) for p in _env_list("RERANKER_PROXY_MODEL_ROOTS", ())),
            "public_health_details": env_bool("RERANKER_PROXY_PUBLIC_HEALTH", False),
            "public_metrics": env_bool("RERANKER_PROXY_PUBLIC_METRICS", False),
            "scorer_only": env_bool("RERANKER_PROXY_SCORER_ONLY", False),
            "embedder_only": env_bool("RERANKER_PROXY_EMBEDDER_ONLY", False),
            "scorer_urls": _env_list("RERANKER_PROXY_SCORER_URLS", ()),
            "scorer_api_key": os.environ.get("RERANKER_PROXY_SCORER_API_KEY") or None,
            "cascade_model": Path(os.environ["RERANKER_PROXY_CASCADE_MODEL"])
            if os.environ.get("RERANKER_PROXY_CASCADE_MODEL")
            else None,
            "default_cascade": _env_int("RERANKER_PROXY_DEFAULT_CASCADE", 0) or None,
            "ubi": env_bool("RERANKER_PROXY_UBI", False),
            "ubi_queries_index": os.environ.get("RERANKER_PROXY_UBI_QUERIES_INDEX")
            or "ubi_queries",
            "ubi_events_index": os.environ.get("RERANKER_PROXY_UBI_EVENTS_INDEX") or "ubi_events",
            "ubi_client_events_per_s": _env_float("RERANKER_PROXY_UBI_CLIENT_EVENTS_PER_S", 20.0),
            "fair_share_burst": _env_float("RERANKER_PROXY_FAIR_SHARE_BURST", 2.0),
            "profiles_index": os.environ.get("RERANKER_PROXY_PROFILES_INDEX")
            or DEFAULT_PROFILES_INDEX,
            "personal_weight": _env_float(
                "RERANKER_PROXY_PERSONAL_WEIGHT", DEFAULT_PERSONAL_WEIGHT
            ),
            "profile_retention_days": _env_float(
                "RERANKER_PROXY_PROFILE_RETENTION_DAYS", DEFAULT_RETENTION_DAYS
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "es" not in values:
            values["es"] = Settings.from_env()
        return cls(**values)  # type: ignore[arg-type]
