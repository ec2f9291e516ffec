"""One typed settings object, read from the environment (and defaults), validated at start.

Environment variables (all optional):

- ``RERANKER_HOME``: cache for models, Elasticsearch distributions and local node data
  (default ``~/.cache/reranker``).
- ``RERANKER_ES_URL``: the cluster (default: the local node, ``http://127.0.0.1:9200``); several
  nodes' URLs comma-separated (a local cluster's), between which the clients fail over.
- ``RERANKER_ES_API_KEY`` or ``RERANKER_ES_USERNAME`` + ``RERANKER_ES_PASSWORD``: credentials.
  Without either, a loopback URL whose local node ``reranker es up`` secured uses the
  credentials it generated (``RERANKER_HOME/credentials/elasticsearch-<port>.json``).
- ``RERANKER_ES_CA_CERTS``: CA bundle for TLS;
  ``RERANKER_ES_VERIFY_CERTS=false`` turns certificate checks off.
- ``RERANKER_EMBEDDER_URLS`` (comma-separated) and ``RERANKER_EMBEDDER_API_KEY``: embed
  through these ``/embed`` endpoints when indexing and serving, instead of in process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from reranker.errors import ConfigError
from reranker.home import reranker_home

__all__ = ["DEFAULT_ES_URL", "MODEL_VARIANTS", "Settings", "env_bool", "reranker_home"]

DEFAULT_ES_URL = "http://127.0.0.1:9200"
#: the exported precisions of a cross-encoder, as every command and the proxy name them
MODEL_VARIANTS: tuple[str, ...] = ("fp32", "int8", "fp16")


def env_bool(name: str, default: bool) -> bool:
    """A boolean environment variable (true/false, 1/0, yes/no, on/off); unset → ``default``."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


@dataclass(frozen=True)
class Settings:
    """Connection and cache settings shared by the CLI, the pipeline and the proxy."""

    es_url: str = DEFAULT_ES_URL
    es_api_key: str | None = field(default=None, repr=False)
    es_username: str | None = None
    es_password: str | None = field(default=None, repr=False)
    es_ca_certs: str | None = None
    es_ca_fingerprint: str | None = None
    """SHA-256 fingerprint of the cluster's CA (or leaf) certificate: pins TLS without a CA
    file (``ssl_assert_fingerprint`` of the official client)."""
    es_verify_certs: bool = True
    request_timeout_s: float = 30.0
    home: Path = field(default_factory=reranker_home)
    embedder: Path | None = None
    """An embedder folder (``reranker train-embedder``'s ``embedder/``) to use instead of the
    shipped all-MiniLM-L6-v2 for indexing and queries (``--embedder``, ``RERANKER_EMBEDDER``)."""
    rescore_embedder: Path | None = None
    """The second embedder, whose vectors an index stores for the reranking stage
    (``--rescore-embedder``, ``RERANKER_RESCORE_EMBEDDER``): a folder, or ``none`` for no
    second embedder; ``None``: the shipped bge-small-en-v1.5 (int8)."""
    #: the key remote rerank endpoints want (``--scorer-url``; the proxy's setting of the name)
    scorer_api_key: str | None = field(default=None, repr=False)
    embedder_urls: tuple[str, ...] = ()
    """``/embed`` endpoints (``reranker serve --embedder-only``, text-embeddings-inference) that
    ``reranker index`` and ``reranker serve`` embed through instead of loading the embedder
    (``--embedder-url``, ``RERANKER_EMBEDDER_URLS`` comma-separated; see
    :mod:`reranker.retrieval.remote_embedder`)."""
    embedder_api_key: str | None = field(default=None, repr=False)
    """Sent to those endpoints as ``Authorization: Bearer <key>``
    (``RERANKER_EMBEDDER_API_KEY``)."""

    def __post_init__(self) -> None:
        if not self.es_urls:
            raise ConfigError(f"Elasticsearch URL {self.es_url!r} is not an http(s) URL")
        for url in self.es_urls:
            parsed = urlparse(url)
            if parsed.scheme not in {"http", "https"} or not parsed.hostname:
                raise ConfigError(f"Elasticsearch URL {url!r} is not an http(s) URL")
        if len({urlparse(url).scheme for url in self.es_urls}) > 1:
            raise ConfigError(f"Elasticsearch URLs {self.es_url!r} mix http and https")
        if (self.es_username is None) != (self.es_password is None):
            raise ConfigError("set both RERANKER_ES_USERNAME and RERANKER_ES_PASSWORD, or neither")
        if self.es_api_key and self.es_username:
            raise ConfigError("set an API key or a username/password, not both")
        if self.request_timeout_s <= 0:
            raise ConfigError("request timeout must be positive")
        if self.es_ca_fingerprint is not None:
            digits = self.es_ca_fingerprint.replace(":", "").lower()
            if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
                raise ConfigError(
                    "RERANKER_ES_CA_FINGERPRINT must be a SHA-256 fingerprint (64 hex digits, "
                    "colons allowed)"
                )

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``RERANKER_*`` variables; explicit keyword overrides win."""
        values: dict[str, object] = {
            "es_url": os.environ.get("RERANKER_ES_URL") or DEFAULT_ES_URL,
            "es_api_key": os.environ.get("RERANKER_ES_API_KEY") or None,
            "es_username": os.environ.get("RERANKER_ES_USERNAME") or None,
            "es_password": os.environ.get("RERANKER_ES_PASSWORD") or None,
            "es_ca_certs": os.environ.get("RERANKER_ES_CA_CERTS") or None,
            "es_ca_fingerprint": os.environ.get("RERANKER_ES_CA_FINGERPRINT") or None,
            "es_verify_certs": env_bool("RERANKER_ES_VERIFY_CERTS", True),
            "embedder": Path(os.environ["RERANKER_EMBEDDER"])
            if os.environ.get("RERANKER_EMBEDDER")
            else None,
            "rescore_embedder": Path(os.environ["RERANKER_RESCORE_EMBEDDER"])
            if os.environ.get("RERANKER_RESCORE_EMBEDDER")
            else None,
            "scorer_api_key": os.environ.get("RERANKER_PROXY_SCORER_API_KEY") or None,
            "embedder_urls": tuple(
                url.strip()
                for url in os.environ.get("RERANKER_EMBEDDER_URLS", "").split(",")
                if url.strip()
            ),
            "embedder_api_key": os.environ.get("RERANKER_EMBEDDER_API_KEY") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["es_api_key"] and not values["es_username"]:
            from reranker.credentials import credentials_for_url

            local = credentials_for_url(str(values["es_url"]))
            if local is not None:
                values["es_username"], values["es_password"] = local.username, local.password
        return cls(**values)  # type: ignore[arg-type]

    @property
    def es_urls(self) -> tuple[str, ...]:
        """The nodes to talk to: ``es_url`` is one URL or several, comma-separated (a local
        cluster's nodes, ``reranker es up --nodes N``), between which the clients fail over."""
        return tuple(url.strip() for url in self.es_url.split(",") if url.strip())

    @property
    def models_dir(self) -> Path:
        return self.home / "models"
