"""``_msearch``: the NDJSON body as (index, params, body) searches, each answered on its own.

Elasticsearch's multi-search body is pairs of lines, a header (index and per-search
parameters) and a search body. The proxy reads it whole, refuses a malformed body with one 400
(as Elasticsearch does), and otherwise answers every search independently: a search with a
``rerank`` object is reranked, the others are passed through, and one search's failure is that
search's ``{"error": ..., "status": ...}`` entry, not the request's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reranker.proxy.errors import bad_request, parse_error

#: header keys Elasticsearch accepts in a multi-search metadata line (besides ``index``)
HEADER_PARAMS = (
    "search_type",
    "preference",
    "routing",
    "request_cache",
    "allow_no_indices",
    "expand_wildcards",
    "ignore_unavailable",
    "allow_partial_search_results",
    "ccs_minimize_roundtrips",
    "ignore_throttled",
)
#: URL parameters of ``_msearch`` itself, not forwarded to each search
MSEARCH_PARAMS = ("max_concurrent_searches", "max_concurrent_shard_requests")
DEFAULT_CONCURRENT_SEARCHES = 4
MAX_CONCURRENT_SEARCHES = 32


@dataclass(frozen=True)
class SearchItem:
    """One search of a multi-search: where it goes, its parameters and its body."""

    index: str
    params: dict[str, str]
    body: dict[str, Any]
    raw_body: bytes

    @property
    def wants_rerank(self) -> bool:
        """Whether the body names ``rerank`` (top level or ``ext``), valid or not: a malformed
        one is that search's 400, found when it is answered."""
        ext = self.body.get("ext")
        return "rerank" in self.body or (isinstance(ext, dict) and "rerank" in ext)


def parse_msearch(
    raw: bytes, default_index: str | None, url_params: Mapping[str, str]
) -> list[SearchItem]:
    """The searches of an NDJSON multi-search body; 400 on any malformed line.

    A header without ``index`` searches ``default_index`` (the path's), else ``_all``. Each
    search's parameters are the URL's (less ``_msearch``'s own) overlaid by its header's.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise parse_error("request body is not UTF-8") from None
    lines = [(number, line) for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not lines:
        raise bad_request("request body is required: header and body lines, one search per pair")
    if len(lines) % 2:
        raise parse_error(
            f"line {lines[-1][0]}: a search header without its body line "
            "(each search is a header line and a body line)"
        )
    shared = {k: v for k, v in url_params.items() if k not in MSEARCH_PARAMS}
    items: list[SearchItem] = []
    for (header_no, header_line), (body_no, body_line) in zip(lines[::2], lines[1::2], strict=True):
        header = _json_object(header_line, header_no, "header")
        body = _json_object(body_line, body_no, "search body")
        index = _header_index(header, header_no) or default_index or "_all"
        params = dict(shared)
        for key, value in header.items():
            if key == "index":
                continue
            if key not in HEADER_PARAMS:
                raise bad_request(
                    f"line {header_no}: key [{key}] is not supported in the metadata section"
                )
            params[key] = _param_value(value, key, header_no)
        items.append(SearchItem(index, params, body, body_line.encode("utf-8")))
    return items


def concurrency(url_params: Mapping[str, str]) -> int:
    """``max_concurrent_searches`` (default 4, at most 32); 400 unless a positive integer."""
    raw = url_params.get("max_concurrent_searches")
    if raw is None:
        return DEFAULT_CONCURRENT_SEARCHES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise bad_request(f"[max_concurrent_searches] must be a positive integer, got [{raw}]")
    return min(value, MAX_CONCURRENT_SEARCHES)


def _json_object(line: str, number: int, what: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise parse_error(f"line {number}: the {what} is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise parse_error(f"line {number}: the {what} must be a JSON object")
    return value


def _header_index(header: Mapping[str, Any], number: int) -> str | None:
    index = header.get("index")
    if index is None:
        return None
    if isinstance(index, str) and index.strip():
        return index.strip()
    if isinstance(index, list) and index and all(isinstance(i, str) and i for i in index):
        return ",".join(index)
    raise bad_request(f"line {number}: [index] must be a name or a list of names")


def _param_value(value: Any, key: str, number: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise bad_request(f"line {number}: [{key}] must be a string, number or boolean")
