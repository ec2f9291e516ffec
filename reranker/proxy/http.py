"""HTTP helpers shared by the proxy's routes and the rerank API: client keys and bodies."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request

from reranker.proxy import errors
from reranker.proxy.jsonbody import loads_strict


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


def parse_body(raw: bytes, *, max_depth: int = 64, max_digits: int = 40) -> dict[str, Any]:
    """The request body as a JSON object (empty → ``{}``); 400 otherwise (see
    :func:`~reranker.proxy.jsonbody.loads_strict` for what is refused)."""
    if not raw.strip(b" \t\r\n"):
        return {}
    body = loads_strict(raw, max_depth=max_depth, max_digits=max_digits)
    if not isinstance(body, dict):
        raise errors.parse_error("request body must be a JSON object")
    return body
