"""Credentials restricted to the allow-list: Elasticsearch decides what a search may read.

The proxy's own credentials (``RERANKER_ES_*``, or the local node's generated ones) are an
administrator's. Searches never run with them: at start (or on the first search, when the
cluster was not reachable at start) the proxy obtains credentials whose only privilege is
``read`` on the allowed patterns, and every search, pass-through or reranked, single or
multi, runs with those. Whatever the request says (a cross-cluster expression, an alias, a
``terms`` lookup, ``more_like_this`` documents, an ``_msearch`` header), Elasticsearch's
authorization applies to it.

How:

- a cluster that can hold API keys: ``POST /_security/api_key`` with one role descriptor
  (``indices: [{names: <allow-list>, privileges: [read]}]``; an API key's privileges are the
  intersection with its creator's), invalidated when the proxy stops;
- the local node ``reranker es up`` runs (a loopback URL with generated credentials): its
  distribution cannot create the ``.security`` index, so a file-realm user
  ``reranker-proxy-<digest of the patterns>`` with a file role of the same privileges is
  written into the node's config (:mod:`reranker.es.file_realm`; on a local cluster,
  ``reranker es up --nodes N``, into every node's); its password is derived from the
  proxy's own secret, so restarts reuse it.

Without credentials of its own the proxy passes the client's ``Authorization`` on (the
client's own Elasticsearch identity is authorised). ``scoped_credentials=False``
(``RERANKER_PROXY_SCOPED_CREDENTIALS=false``) searches with the proxy's own credentials: then
only the allow-list guards, and the proxy says so at start.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Any

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import TransportError
from elasticsearch import ApiError, AsyncElasticsearch

from reranker.proxy import errors
from reranker.proxy.errors import ProxyError
from reranker.proxy.settings import ProxySettings

log = logging.getLogger(__name__)

ROLE_PRIVILEGES = ("read",)
#: how long to wait for Elasticsearch to re-read its file realm after a change
FILE_REALM_WAIT_S = 15.0


def role_descriptor(patterns: tuple[str, ...]) -> dict[str, Any]:
    return {
        "cluster": [],
        "indices": [{"names": sorted(set(patterns)), "privileges": list(ROLE_PRIVILEGES)}],
    }


def patterns_digest(patterns: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(sorted(set(patterns))).encode()).hexdigest()[:12]


class ScopedAccess:
    """The client searches run with (see the module's docstring)."""

    def __init__(self, settings: ProxySettings, admin: AsyncElasticsearch) -> None:
        self.settings = settings
        self.admin = admin
        self._scoped: AsyncElasticsearch | None = None
        self._api_key_id: str | None = None
        self._lock = asyncio.Lock()
        #: how searches are authorised: api_key, file_realm, client (pass-through),
        #: proxy (its own credentials, scoping off); "pending" until obtained
        self.mode = "pending"
        if not settings.es_has_credentials:
            self.mode = "client"
            self._scoped = admin
        elif not settings.scoped_credentials:
            self.mode = "proxy"
            self._scoped = admin
            log.warning(
                "scoped credentials are off: searches run with the proxy's own Elasticsearch "
                "credentials and only the proxy's allow-list restricts what clients read"
            )

    async def client(self) -> AsyncElasticsearch:
        """The client for searches; 503 when restricted credentials cannot be obtained."""
        if self._scoped is not None:
            return self._scoped
        async with self._lock:
            if self._scoped is None:
                self._scoped = await self._obtain()
        return self._scoped

    async def start(self) -> None:
        """Obtain the credentials now if the cluster answers (else on the first search)."""
        try:
            await self.client()
        except ProxyError as exc:
            log.warning("restricted credentials not obtained at start: %s", exc.reason)

    async def close(self) -> None:
        if self._api_key_id is not None:
            try:
                await self.admin.options(request_timeout=5).security.invalidate_api_key(
                    ids=[self._api_key_id]
                )
            except Exception as exc:
                log.warning("could not invalidate the proxy's API key: %s", exc)
            self._api_key_id = None

    # ------------------------------------------------------------------ how

    def _secret(self) -> str:
        es = self.settings.es
        return str(es.es_api_key or es.es_password or "")

    async def _local_port(self) -> int | None:
        """The HTTP port of the local node ``reranker es up`` runs, when that is the cluster
        (asked of the cluster itself, so a relay or another URL for it is recognised too);
        ``None`` for any other cluster."""
        from reranker.es.node import CLUSTER_NAME, LocalNode

        answer = await self.admin.options(request_timeout=10).perform_request(
            "GET",
            "/_nodes/_local/http",
            params={"filter_path": "cluster_name,nodes.*.http.publish_address"},
            headers={"accept": "application/json"},
        )
        body = answer.body
        if not isinstance(body, dict) or body.get("cluster_name") != CLUSTER_NAME:
            return None
        for node in (body.get("nodes") or {}).values():
            address = str(((node or {}).get("http") or {}).get("publish_address") or "")
            host, _, port = address.rpartition(":")
            loopback = host.rsplit("/", 1)[-1] in ("127.0.0.1", "[::1]", "localhost")
            if not (loopback and port.isdigit()):
                continue
            if (LocalNode(port=int(port)).node_dir / "config" / "elasticsearch.yml").is_file():
                return int(port)
        return None

    async def _obtain(self) -> AsyncElasticsearch:
        patterns = self.settings.allowed_indices
        try:
            port = await self._local_port()
            if port is not None:
                client = await self._file_realm_user(port, patterns)
                self.mode = "file_realm"
            else:
                client = await self._api_key(patterns)
                self.mode = "api_key"
        except TransportConnectionError as exc:
            raise errors.upstream_unavailable(
                f"Elasticsearch is unreachable: {exc.message}"
            ) from None
        except (ApiError, TransportError) as exc:
            raise ProxyError(
                503,
                "security_exception",
                "the proxy could not obtain Elasticsearch credentials restricted to its "
                f"allow-list ({exc}); give it credentials that may create API keys "
                "(manage_own_api_key), or set RERANKER_PROXY_SCOPED_CREDENTIALS=false",
            ) from None
        log.info("searches run with restricted credentials (%s) on %s", self.mode, patterns)
        return client

    async def _api_key(self, patterns: tuple[str, ...]) -> AsyncElasticsearch:
        answer = await self.admin.options(request_timeout=10).security.create_api_key(
            name=f"reranker-proxy-{patterns_digest(patterns)}",
            role_descriptors={"reranker_proxy": role_descriptor(patterns)},
            metadata={"application": "reranker-proxy", "allow": list(patterns)},
        )
        self._api_key_id = str(answer["id"])
        return self.admin.options(api_key=str(answer["encoded"]))

    async def _file_realm_user(self, port: int, patterns: tuple[str, ...]) -> AsyncElasticsearch:
        from reranker.es.cluster import file_realm_of

        digest = patterns_digest(patterns)
        username, role = f"reranker-proxy-{digest}", f"reranker_proxy_{digest}"
        password = hmac.new(
            self._secret().encode(), f"file-realm:{username}".encode(), hashlib.sha256
        ).hexdigest()
        realms = file_realm_of(port)  # a local cluster's: every node's
        await asyncio.to_thread(realms.grant, username, password, role, role_descriptor(patterns))
        scoped = self.admin.options(basic_auth=(username, password))
        deadline = asyncio.get_running_loop().time() + FILE_REALM_WAIT_S
        accepted = 0
        # Each node re-reads its files within its reload interval: as many acceptances in a
        # row as there are nodes (the client takes its nodes in turn)
        while accepted < len(realms):
            try:
                await scoped.options(request_timeout=5).security.authenticate()
                accepted += 1
                continue
            except ApiError as exc:
                if exc.meta.status != 401 or asyncio.get_running_loop().time() > deadline:
                    raise
            accepted = 0
            await asyncio.sleep(0.25)
        return scoped
