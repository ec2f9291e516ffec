"""``_msearch``: the NDJSON body as (index, params, body) searches, each answered on its own.

Elasticsearch's multi-search body is pairs of lines, a header (index and per-search
parameters) and a search body. The proxy reads it whole, refuses a malformed body with one 400
(as Elasticsearch does), and otherwise answers every search independently: a search with a
``rerank`` object is reranked, the others are passed through, and one search's failure is that
search's ``{"error": ..., "status": ...}`` entry, not the request's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reranker.proxy.errors import ProxyError, bad_request, parse_error
from reranker.proxy.jsonbody import JSON_WHITESPACE, BodyError, loads_strict

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
#: the camelCase spellings Elasticsearch also accepts in a header, and what they mean
HEADER_ALIASES = {
    "searchType": "search_type",
    "ccsMinimizeRoundtrips": "ccs_minimize_roundtrips",
    "requestCache": "request_cache",
    "expandWildcards": "expand_wildcards",
    "ignoreUnavailable": "ignore_unavailable",
    "allowNoIndices": "allow_no_indices",
    "ignoreThrottled": "ignore_throttled",
}
#: header keys that name the indices
INDEX_KEYS = ("index", "indices")
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
    error: ProxyError | None = None
    """A body line that is JSON but refused (an unpaired surrogate, nesting or a number
    beyond the limits): that search's own 400 entry, the others still run."""

    @property
    def wants_rerank(self) -> bool:
        """Whether the body names ``rerank`` (top level or ``ext``), valid or not: a malformed
        one is that search's 400, found when it is answered."""
        ext = self.body.get("ext")
        return "rerank" in self.body or (isinstance(ext, dict) and "rerank" in ext)


def parse_msearch(
    raw: bytes,
    default_index: str | None,
    url_params: Mapping[str, str],
    *,
    max_depth: int = 64,
    max_digits: int = 40,
) -> list[SearchItem]:
    """The searches of an NDJSON multi-search body, split exactly as Elasticsearch splits it;
    400 on any malformed line.

    Elasticsearch's rules (``MultiSearchRequest.readMultiLineFormat``, checked against the
    9.5 node): the body is cut at every ``\\n`` and must end with one; lines alternate header,
    body, header, body, with *no* line skipped; a header that is empty, JSON whitespace only
    or ``null`` means "no parameters"; an empty body line is an error. A header without its
    body line at the end is ignored by Elasticsearch and refused here. ``index`` and
    ``indices`` name the indices (both in one header is refused here); a header key
    Elasticsearch does not know is refused, as it does.

    A header without an index searches ``default_index`` (the path's), else ``_all``. Each
    search's parameters are the URL's (less ``_msearch``'s own) overlaid by its header's.
    """
    if not raw.strip(JSON_WHITESPACE.encode()):
        raise bad_request("request body is required: header and body lines, one search per pair")
    if not raw.endswith(b"\n"):
        raise bad_request("The msearch request must be terminated by a newline [\\n]")
    lines = raw.split(b"\n")[:-1]  # every line was terminated by a newline
    if len(lines) % 2:
        raise parse_error(
            f"line {len(lines)}: a search header without its body line "
            "(each search is a header line and a body line)"
        )
    shared = {k: v for k, v in url_params.items() if k not in MSEARCH_PARAMS}
    items: list[SearchItem] = []
    for pair in range(0, len(lines), 2):
        header_no, body_no = pair + 1, pair + 2
        header_line, body_line = lines[pair], lines[pair + 1]
        if header_line.strip(JSON_WHITESPACE.encode()):
            header = _json_value(header_line, header_no, "header", max_depth, max_digits)
            if header is None:
                header = {}
            if not isinstance(header, dict):
                raise parse_error(f"line {header_no}: the header must be a JSON object")
        else:
            header = {}
        if not body_line.strip(JSON_WHITESPACE.encode()):
            raise parse_error(
                f"line {body_no}: the search body is empty (Elasticsearch: Expected "
                "[START_OBJECT] but found [null]); send {} for a search without a body"
            )
        error: ProxyError | None = None
        try:
            body = _json_value(body_line, body_no, "search body", max_depth, max_digits)
        except BodyError as exc:
            if exc.syntax:
                raise
            body, error = {}, exc
        if not isinstance(body, dict):
            raise parse_error(f"line {body_no}: the search body must be a JSON object")
        index = _header_index(header, header_no) or default_index or "_all"
        params = dict(shared)
        for key, value in header.items():
            if key in INDEX_KEYS:
                continue
            name = HEADER_ALIASES.get(key, key)
            if name not in HEADER_PARAMS:
                raise bad_request(
                    f"line {header_no}: key [{key}] is not supported in the metadata section"
                )
            params[name] = _param_value(value, key, header_no)
        items.append(SearchItem(index, params, body, body_line, error))
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


def _json_value(line: bytes, number: int, what: str, max_depth: int, max_digits: int) -> Any:
    try:
        return loads_strict(line, max_depth=max_depth, max_digits=max_digits, what=what)
    except BodyError as exc:
        raise BodyError(f"line {number}: {exc.reason}", exc.error_type, syntax=exc.syntax) from None


def _header_index(header: Mapping[str, Any], number: int) -> str | None:
    named = [key for key in INDEX_KEYS if key in header]
    if len(named) > 1:
        raise bad_request(f"line {number}: give [index] or [indices], not both")
    if not named:
        return None
    index = header[named[0]]
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


def msearch_error(exc: ProxyError) -> dict[str, Any]:
    """A failed search's ``responses`` entry: its ES-shaped error body with its status."""
    return {**exc.body(), "status": exc.status}
