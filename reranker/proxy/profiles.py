"""The proxy's side of personalisation: a searching user's profile read for
``rerank.personalize``, and ``DELETE /_reranker/profiles/{user}``.

Profiles (:mod:`reranker.es.profiles`) are read and deleted with the proxy's own
credentials, by ids derived from (proxy client, user, index): a client reaches only its own
users' profiles, and no search through the proxy can read the profiles index (it is hidden,
and the proxy refuses it by name)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any, Protocol

from elasticsearch import AsyncElasticsearch
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reranker.es.profiles import (
    MAX_DELETE,
    delete_operations,
    deleted,
    owner_subject_filter,
    profile_id,
)
from reranker.feedback.ubi import MAX_ID_CHARS
from reranker.proxy import errors
from reranker.proxy.clients import owner_of
from reranker.proxy.http import GuardedProxy, require_api_key
from reranker.proxy.settings import ProxySettings
from reranker.rerank.personal import Personalization, personalization_of


class Proxy(GuardedProxy, Protocol):
    """What the profiles endpoint uses of the proxy (``proxy.app.Proxy``): its own
    Elasticsearch client and its responses too."""

    @property
    def es(self) -> AsyncElasticsearch: ...

    def respond(self, request: Request, body: Any, status: int = 200) -> Response: ...


class ProfilesApi:
    """``DELETE /_reranker/profiles/{user}``: a proxy client deletes one of its users'
    profiles (every index), with its own client key; another client's users are out of its
    reach (their profiles have other ids and owners)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def routes(self) -> list[Route]:
        return [Route("/_reranker/profiles/{user}", self.delete, methods=["DELETE"])]

    async def delete(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            proxy = self.proxy
            if proxy.settings.api_keys:
                require_api_key(request, proxy.settings.api_keys)
            user = request.path_params["user"]
            if not user or len(user) > MAX_ID_CHARS or any(ord(c) < 32 for c in user):
                raise errors.bad_request(
                    f"the user id must be 1 to {MAX_ID_CHARS} printable characters"
                )
            owner = owner_of(request, proxy.settings)
            deleted = await delete_profiles(proxy.es, proxy.settings, owner=owner, user=user)
            return proxy.respond(request, {"deleted": deleted})

        return await self.proxy.guarded(request, handle, lambda: "profiles")


async def read_profile(
    client: AsyncElasticsearch,
    settings: ProxySettings,
    *,
    owner: str | None,
    user: str,
    index: str,
    weight: float,
) -> Personalization | None:
    """``user``'s profile on ``index`` under the proxy client ``owner``, as the search reads
    it; ``None`` when there is none, it is empty, or it is older than the retention.
    Elasticsearch's failures propagate."""
    answer: Any = await client.options(request_timeout=2.0, ignore_status=404).get(
        index=settings.profiles_index, id=profile_id(owner, user, index)
    )
    source = answer.get("_source") or {}
    return personalization_of(source, (owner, user), weight, settings.profile_retention_days)


async def delete_profiles(
    client: AsyncElasticsearch, settings: ProxySettings, *, owner: str | None, user: str
) -> int:
    """Delete every profile of ``user`` (all indices) under the proxy client ``owner``;
    how many there were."""
    es = client.options(request_timeout=30.0, ignore_status=404)
    found: Any = await es.search(
        index=settings.profiles_index, query=owner_subject_filter(owner, user), size=MAX_DELETE,
        source=False,
    )  # fmt: skip
    operations = delete_operations(settings.profiles_index, found)
    if not operations:
        return 0
    answer: Any = await es.bulk(operations=operations, refresh=True)
    return deleted(answer)


def profiles_refusal(index: str, params: Mapping[str, str], settings: ProxySettings) -> str | None:
    """The part of ``index`` that would reach the profiles index, else ``None``: its name, or
    a wildcard matching it when ``expand_wildcards`` opens hidden indices (``hidden``,
    ``all``; the index is hidden, so plain wildcards never expand to it)."""
    name = settings.profiles_index
    expand = {w.strip() for w in str(params.get("expand_wildcards", "")).split(",")}
    for raw in index.split(","):
        part = raw.strip()
        if part == name:
            return part
        if "*" in part and expand & {"hidden", "all"} and fnmatch.fnmatchcase(name, part):
            return part
    return None
