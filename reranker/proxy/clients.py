"""Who a request comes from, and each client's fair share of the proxy.

A client is the digest of the proxy API key it sent (:func:`owner_of`; the key itself is
never stored), else its address on a proxy without keys (:func:`client_of`). Behaviour data
is bound to the owner; quotas and fair shares count per client.
"""

from __future__ import annotations

import asyncio
import hashlib

from starlette.requests import Request

from reranker.proxy import errors
from reranker.proxy.limits import FairShare
from reranker.proxy.settings import ProxySettings

#: paths not counted in a client's share of requests (orchestrators poll them)
UNMETERED_PATHS = frozenset({"/_health", "/metrics"})
#: body bytes that count as one more request in a client's share
REQUEST_BYTES_UNIT = 64 * 1024
#: decayed requests under which a client is never over its share (about 2 a second held
#: for the horizon): occasional clients are never refused because the others were quiet
REQUEST_SHARE_FLOOR = 20.0


def owner_of(request: Request, settings: ProxySettings) -> str | None:
    """A digest of the proxy API key the request carries; ``None`` on a proxy without keys,
    where clients are indistinguishable."""
    if not settings.api_keys:
        return None
    _, _, key = request.headers.get("authorization", "").partition(" ")
    return "key-" + hashlib.sha256(key.strip().encode()).hexdigest()[:16]


def client_of(request: Request, settings: ProxySettings) -> str:
    """Who a request comes from, for quotas and fair shares: its key's digest
    (:func:`owner_of`), else its address."""
    owner = owner_of(request, settings)
    if owner is not None:
        return owner
    return f"address:{request.client.host}" if request.client else "address:unknown"


def fair_shares(settings: ProxySettings) -> tuple[FairShare | None, FairShare | None]:
    """The cross-encoder's fair share (in tokens) and the requests' (``None``, ``None`` when
    ``fair_share_burst`` is 0)."""
    if not settings.fair_share_burst:
        return None, None
    horizon, burst = settings.fair_share_horizon_s, settings.fair_share_burst
    requests = FairShare(
        horizon, burst, what="the proxy's recent requests", floor=REQUEST_SHARE_FLOOR
    )
    return FairShare(horizon, burst), requests


async def check_request_share(
    share: FairShare | None, request: Request, client: str, settings: ProxySettings
) -> None:
    """Count this request against its client's share of the proxy's requests (one, plus one
    per 64 KiB of body); ``client`` is :func:`client_of` the request. A client over its fair
    share while others are served gets a 429 after waiting ``retry_after_s``, before its body
    is read: a loop of refused requests then costs the proxy nothing. Health and metrics are
    not counted."""
    if share is None or request.url.path in UNMETERED_PATHS:
        return
    unfair = share.over(client)
    if unfair is not None:
        await asyncio.sleep(settings.retry_after_s)
        raise errors.saturated(unfair, settings.retry_after_s)
    length = request.headers.get("content-length", "")
    size = int(length) if length.isdigit() and len(length) < 12 else 0
    share.charge(client, 1.0 + size / REQUEST_BYTES_UNIT)
