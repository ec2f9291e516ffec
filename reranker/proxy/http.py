"""HTTP helpers shared by the proxy's routes and the rerank API: client keys and bodies
(read within limits of size and time, parsed strictly)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from reranker.proxy import errors
from reranker.proxy.errors import ProxyError
from reranker.proxy.jsonbody import loads_strict

if TYPE_CHECKING:
    from reranker.proxy.settings import ProxySettings


class GuardedProxy(Protocol):
    """What every set of routes uses of the proxy that serves them (``proxy.app.Proxy``):
    its settings, and its guard (metrics, fair shares, error shapes)."""

    settings: ProxySettings

    async def guarded(
        self,
        request: Request,
        handler: Callable[[Request], Awaitable[Response]],
        kind: Callable[[], str],
    ) -> Response: ...


def require_api_key(
    request: Request, keys: tuple[str, ...], *, schemes: tuple[str, ...] = ("apikey",)
) -> None:
    """401 unless ``Authorization: <scheme> <key>`` names one of ``keys`` (constant-time),
    with a scheme among ``schemes`` (lower case; ``ApiKey`` by default)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    given = key.strip().encode()
    if scheme.lower() not in schemes or not given:
        raise errors.unauthorized()
    if not any(hmac.compare_digest(given, k.encode()) for k in keys):
        raise errors.unauthorized()


def may_see_details(request: Request, settings: ProxySettings, public: bool) -> bool:
    """Whether health details and metrics may be shown: always without keys configured,
    else to a client or admin key (or to anyone when ``public``)."""
    keys = (*settings.api_keys, *settings.admin_api_keys)
    if not keys or public:
        return True
    try:
        require_api_key(request, keys)
    except ProxyError:
        return False
    return True


def parse_body(raw: bytes, *, max_depth: int = 64, max_digits: int = 40) -> dict[str, Any]:
    """The request body as a JSON object (empty → ``{}``); 400 otherwise (see
    :func:`~reranker.proxy.jsonbody.loads_strict` for what is refused)."""
    if not raw.strip(b" \t\r\n"):
        return {}
    body = loads_strict(raw, max_depth=max_depth, max_digits=max_digits)
    if not isinstance(body, dict):
        raise errors.parse_error("request body must be a JSON object")
    return body


async def read_body(request: Request, limit: int, *, timeout_s: float) -> bytes:
    """The request body, at most ``limit`` bytes (413 beyond, before reading it where
    ``Content-Length`` says so), arrived within ``timeout_s`` (408 otherwise)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise errors.too_large(limit)
        except ValueError:
            raise errors.bad_request("Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise errors.too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise ProxyError(
            408,
            "request_timeout_exception",
            f"the request body did not arrive within {timeout_s:g} s",
        ) from None
    return b"".join(chunks)
