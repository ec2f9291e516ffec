"""Elasticsearch-shaped errors: ``{"error": {"root_cause", "type", "reason"}, "status"}``.

Everything the proxy refuses or fails on is a :class:`ProxyError`; the app turns it into a
response with :func:`error_body`. Nothing else (no stack trace, no internals) reaches a client.
"""

from __future__ import annotations

from typing import Any


class ProxyError(Exception):
    """An HTTP error with an Elasticsearch error ``type`` and a human ``reason``."""

    def __init__(
        self,
        status: int,
        error_type: str,
        reason: str,
        *,
        headers: dict[str, str] | None = None,
        raw_body: Any = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.error_type = error_type
        self.reason = reason
        self.headers = headers or {}
        self.raw_body = raw_body  # an error body from Elasticsearch, passed on as it is

    def body(self) -> Any:
        if self.raw_body is not None:
            return self.raw_body
        return error_body(self.status, self.error_type, self.reason)


def error_body(status: int, error_type: str, reason: str) -> dict[str, Any]:
    """The body Elasticsearch itself answers errors with."""
    cause = {"type": error_type, "reason": reason}
    return {"error": {"root_cause": [dict(cause)], **cause}, "status": status}


def bad_request(reason: str, error_type: str = "illegal_argument_exception") -> ProxyError:
    return ProxyError(400, error_type, reason)


def parse_error(reason: str) -> ProxyError:
    return ProxyError(400, "parsing_exception", reason)


def not_found(path: str) -> ProxyError:
    return ProxyError(
        404,
        "resource_not_found_exception",
        f"no handler for [{path}]: the proxy serves only /{{index}}/_search, _msearch, /_health, "
        "/metrics, /_reranker/reload, /_reranker/events and the rerank API (/rerank, /v1/rerank, "
        "/v2/rerank, /info)",
    )


def method_not_allowed(method: str, path: str, allowed: str) -> ProxyError:
    return ProxyError(
        405,
        "method_not_allowed_exception",
        f"incorrect HTTP method for uri [{path}] and method [{method}], allowed: [{allowed}]",
        headers={"Allow": allowed},
    )


def forbidden_index(index: str) -> ProxyError:
    return ProxyError(
        403,
        "security_exception",
        f"index [{index}] is not in the proxy's allow-list",
    )


def unauthorized() -> ProxyError:
    return ProxyError(
        401,
        "security_exception",
        "missing or invalid proxy API key (send Authorization: ApiKey <key>)",
        headers={"WWW-Authenticate": 'ApiKey realm="reranker-proxy"'},
    )


def too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        "content_too_long_exception",
        f"request body is larger than the proxy's limit of {limit} bytes",
    )


def saturated(what: str, retry_after_s: int) -> ProxyError:
    return ProxyError(
        429,
        "es_rejected_execution_exception",
        f"the reranking proxy is saturated ({what}); retry after {retry_after_s}s",
        headers={"Retry-After": str(retry_after_s)},
    )


def upstream_unavailable(reason: str) -> ProxyError:
    return ProxyError(503, "upstream_unavailable_exception", reason)


def upstream_timeout(reason: str) -> ProxyError:
    return ProxyError(504, "timeout_exception", reason)


def bad_gateway(reason: str) -> ProxyError:
    return ProxyError(502, "bad_gateway_exception", reason)


def reranker_unavailable(reason: str) -> ProxyError:
    return ProxyError(503, "reranker_unavailable_exception", reason)


def reranker_timeout(reason: str) -> ProxyError:
    return ProxyError(504, "reranker_timeout_exception", reason)


def internal_error() -> ProxyError:
    return ProxyError(
        500, "internal_server_error", "the reranking proxy failed unexpectedly; see its log"
    )


#: what a client reads instead of Elasticsearch's reason for refusing the proxy's restricted
#: user: that reason names the user, its roles and the privileges it lacks
REFUSED_BY_ELASTICSEARCH = (
    "Elasticsearch refused this request for the proxy's clients (an index or action outside "
    "what they may read)"
)


def scrub_internals(body: Any) -> Any:
    """``body`` (an Elasticsearch answer about to reach a client) without internals: every
    ``stack_trace`` (``error_trace``'s Java frames) removed and every ``security_exception``'s
    reason replaced, in the error and in each ``_msearch`` entry's error. Changed in place and
    returned; answers without errors are not walked."""
    if not isinstance(body, dict):
        return body
    if "error" in body:
        _scrub_error(body["error"])
    responses = body.get("responses")
    if isinstance(responses, list):
        for entry in responses:
            if isinstance(entry, dict) and "error" in entry:
                _scrub_error(entry["error"])
    return body


def _scrub_error(error: Any) -> None:
    stack = [error]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            item.pop("stack_trace", None)
            item.pop("suppressed", None)
            if item.get("type") == "security_exception" and "reason" in item:
                item["reason"] = REFUSED_BY_ELASTICSEARCH
            stack.extend(v for v in item.values() if isinstance(v, dict | list))


def from_elasticsearch(status: int, body: Any) -> ProxyError:
    """An error Elasticsearch answered: its own status and body when it is ES-shaped (less
    its internals, :func:`scrub_internals`)."""
    if isinstance(body, dict) and "error" in body:
        body = scrub_internals(body)
        error = body["error"]
        kind = error.get("type", "exception") if isinstance(error, dict) else "exception"
        reason = error.get("reason", "") if isinstance(error, dict) else str(error)
        return ProxyError(status, str(kind), str(reason), raw_body=body)
    return bad_gateway(f"Elasticsearch answered {status} with a body that is not an error object")
