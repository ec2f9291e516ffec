"""Pure parsing of a search request: the ``rerank`` object, the query text, pagination within
the window, and ``_source`` filtering. No I/O here; every refusal is a 400 :class:`ProxyError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from reranker.errors import SearchError
from reranker.proxy.errors import ProxyError, bad_request
from reranker.proxy.settings import ProxySettings
from reranker.rerank.diversity import DEFAULT_LAMBDAS, DEFAULT_METHOD, METHODS, Diversity
from reranker.rerank.passages import COMBINES
from reranker.rerank.personal import MAX_WEIGHT as MAX_PERSONAL_WEIGHT
from reranker.retrieval.first_stage import HybridOptions

RERANK_FIELDS = (
    "query_text",
    "window",
    "fields",
    "hybrid",
    "blend",
    "explain",
    "timeout_ms",
    "fail_open",
    "cascade",
    "diversity",
    "passages",
    "personalize",
)
PERSONALIZE_FIELDS = ("weight",)
DIVERSITY_FIELDS = ("method", "lambda", "duplicate_threshold")
HYBRID_FIELDS = ("dense", "fusion", "rank_constant", "weights", "normalization")
#: body keys that make no sense when the proxy orders the hits itself
CONFLICTING_BODY_KEYS = ("sort", "search_after", "rescore", "collapse", "retriever", "pit")
#: query parameters refused with ``rerank`` (they change the response the proxy must read)
CONFLICTING_PARAMS = ("scroll", "filter_path", "sort", "search_after")
#: query parameters the proxy consumes itself with ``rerank`` (not forwarded)
CONSUMED_PARAMS = ("from", "size", "_source", "_source_includes", "_source_excludes", "timeout")
#: queries whose text is the natural query for the cross-encoder, and where it sits
TEXT_QUERIES = (
    "match",
    "match_phrase",
    "match_bool_prefix",
    "multi_match",
    "combined_fields",
    "query_string",
    "simple_query_string",
)
DEFAULT_SIZE = 10


@dataclass(frozen=True)
class RerankSpec:
    """A validated ``rerank`` object, defaults filled in from the settings."""

    query_text: str | None
    window: int
    fields: tuple[str, ...]
    dense: bool | None
    """kNN beside the client's query; ``None`` (not given) = wherever the index has
    embeddings and the proxy an embedder (the hybrid default)."""
    hybrid: HybridOptions
    explain: bool
    timeout_ms: int
    fail_open: bool
    blend: Any = None
    """As given: weights (an object) or a learned blend's name; resolved by the proxy's
    :class:`~reranker.proxy.blends.BlendCatalog` against the index's signals."""
    cascade: int | None = None
    """``k`` of a cascade: the proxy's cascade model scores the window, the cross-encoder
    only its top ``k`` (1..``window``); ``None``: the cross-encoder scores the window."""
    cascade_default: bool = True
    """No ``cascade`` was given: the proxy's default cascade (``default_cascade``) may apply;
    ``"cascade": false`` asks for the whole window."""
    diversity: Diversity | None = None
    """Swaps or MMR over the reranked window with the index's embeddings; ``None``: the
    reranked order."""
    passages: str | None = None
    """Score long documents by passages, combined by ``max`` or ``firstmax``; ``None``:
    truncate (:mod:`reranker.rerank.passages`)."""
    passages_given: bool = False
    """The search said how to read long documents (else the index's recorded choice)."""
    personal_weight: float | None = None
    """The personal feature's weight when the search asks for personalisation (the user's
    profile, :mod:`reranker.rerank.personal`); ``None``: not personalised."""


@dataclass(frozen=True)
class Page:
    start: int
    size: int


# --------------------------------------------------------------------------- rerank object


def split_rerank(body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The body without its ``rerank`` object, and that object (``None`` if absent).

    The object may sit at the top level or under ``ext`` (``ext.rerank``), which the official
    clients can send through their ``ext=`` parameter.
    """
    rest = dict(body)
    spec = rest.pop("rerank", None)
    ext = rest.get("ext")
    if isinstance(ext, dict) and "rerank" in ext:
        if spec is not None:
            raise bad_request("give [rerank] once: at the top level or under [ext], not both")
        ext = dict(ext)
        spec = ext.pop("rerank")
        if ext:
            rest["ext"] = ext
        else:
            del rest["ext"]
    elif spec is None and "rerank" in body:
        raise bad_request("[rerank] must be an object, not null")
    return rest, spec


def parse_rerank(raw: Any, settings: ProxySettings) -> RerankSpec:
    """Validate the ``rerank`` object; unknown fields and wrong types are 400s."""
    if not isinstance(raw, dict):
        raise bad_request(f"[rerank] must be an object, got {_kind(raw)}")
    _no_unknown(raw, RERANK_FIELDS, "rerank")
    query_text = raw.get("query_text")
    if query_text is not None and (not isinstance(query_text, str) or not query_text.strip()):
        raise bad_request("[rerank.query_text] must be a non-empty string")
    window = _int(raw, "window", settings.default_window, "rerank")
    if window < 1:
        raise bad_request(f"[rerank.window] must be at least 1, got {window}")
    if window > settings.max_window:
        raise bad_request(
            f"[rerank.window] is {window}, beyond this proxy's limit of {settings.max_window}"
        )
    fields = raw.get("fields", list(settings.default_fields))
    if isinstance(fields, str):
        fields = [fields]
    if (
        not isinstance(fields, list)
        or not fields
        or not all(isinstance(f, str) and f for f in fields)
    ):
        raise bad_request("[rerank.fields] must be a non-empty list of field names")
    dense, hybrid = _parse_hybrid(raw.get("hybrid"), window)
    timeout_ms = _int(raw, "timeout_ms", settings.default_timeout_ms, "rerank")
    if not 1 <= timeout_ms <= settings.max_timeout_ms:
        raise bad_request(
            f"[rerank.timeout_ms] must be between 1 and {settings.max_timeout_ms}, got {timeout_ms}"
        )
    cascade = raw.get("cascade")
    cascade_default = cascade is None
    if cascade is False:
        cascade = None
    elif cascade is not None:
        cascade = _int(raw, "cascade", 0, "rerank")
        if not 1 <= cascade <= window:
            raise bad_request(
                f"[rerank.cascade] must be between 1 and [rerank.window] ({window}), got {cascade}"
            )
    return RerankSpec(
        query_text=query_text.strip() if query_text else None,
        window=window,
        fields=tuple(fields),
        dense=dense,
        hybrid=hybrid,
        explain=_bool(raw, "explain", False, "rerank"),
        timeout_ms=timeout_ms,
        fail_open=_bool(raw, "fail_open", True, "rerank"),
        blend=raw.get("blend"),
        cascade=cascade,
        cascade_default=cascade_default,
        diversity=_parse_diversity(raw.get("diversity")),
        passages=_parse_passages(raw.get("passages")),
        passages_given="passages" in raw,
        personal_weight=_parse_personalize(raw.get("personalize"), settings.personal_weight),
    )


def _parse_personalize(raw: Any, default: float) -> float | None:
    """``true`` (the proxy's weight), ``false``/absent, or ``{"weight": w}``."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return default
    if not isinstance(raw, dict):
        raise bad_request(
            f"[rerank.personalize] must be true, false or an object, got {_kind(raw)}"
        )
    _no_unknown(raw, PERSONALIZE_FIELDS, "rerank.personalize")
    weight = raw.get("weight", default)
    if not _is_number(weight) or not 0 <= float(weight) <= MAX_PERSONAL_WEIGHT:
        raise bad_request(
            f"[rerank.personalize.weight] must be a number between 0 and {MAX_PERSONAL_WEIGHT:g}"
        )
    return float(weight)


def _parse_passages(raw: Any) -> str | None:
    """``"max"``, ``"firstmax"``, or ``false``/absent (truncate)."""
    if raw is None or raw is False:
        return None
    if raw not in COMBINES:
        raise bad_request(
            f"[rerank.passages] must be one of {', '.join(COMBINES)} or false, got {raw!r}"[:300]
        )
    return str(raw)


def _parse_diversity(raw: Any) -> Diversity | None:
    """``true`` (the default method and its lambda), ``false``/absent, or ``{"method": "swap"
    | "mmr", "lambda": x, "duplicate_threshold": y}``."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return Diversity(DEFAULT_LAMBDAS[DEFAULT_METHOD], method=DEFAULT_METHOD)
    if not isinstance(raw, dict):
        raise bad_request(f"[rerank.diversity] must be true, false or an object, got {_kind(raw)}")
    _no_unknown(raw, DIVERSITY_FIELDS, "rerank.diversity")
    method = raw.get("method", DEFAULT_METHOD)
    if method not in METHODS:
        raise bad_request(
            f"[rerank.diversity] method must be one of {', '.join(METHODS)}, got {method!r}"[:300]
        )
    lam = raw.get("lambda", DEFAULT_LAMBDAS[method])
    threshold = raw.get("duplicate_threshold")
    if not _is_number(lam) or (threshold is not None and not _is_number(threshold)):
        raise bad_request("[rerank.diversity] lambda and duplicate_threshold must be numbers")
    try:
        return Diversity(float(lam), None if threshold is None else float(threshold), method)
    except SearchError as exc:
        raise bad_request(f"[rerank.diversity] {exc}") from None


def _parse_hybrid(raw: Any, window: int) -> tuple[bool | None, HybridOptions]:
    if raw is None:
        return None, HybridOptions(depth=window)
    if isinstance(raw, bool):
        return raw, HybridOptions(depth=window)
    if not isinstance(raw, dict):
        raise bad_request(f"[rerank.hybrid] must be an object, got {_kind(raw)}")
    _no_unknown(raw, HYBRID_FIELDS, "rerank.hybrid")
    dense = _bool(raw, "dense", True, "rerank.hybrid")
    fusion = raw.get("fusion", "linear")
    normalization = raw.get("normalization", "minmax")
    if not isinstance(fusion, str) or not isinstance(normalization, str):
        raise bad_request("[rerank.hybrid.fusion] and [normalization] must be strings")
    rank_constant = _int(raw, "rank_constant", 60, "rerank.hybrid")
    weights = _weights(raw.get("weights"))
    try:
        options = HybridOptions(
            fusion=fusion,  # type: ignore[arg-type]  # checked by HybridOptions
            rank_constant=rank_constant,
            weights=weights,
            normalization=normalization,  # type: ignore[arg-type]
            depth=window,
        )
    except SearchError as exc:
        raise bad_request(f"[rerank.hybrid] {exc}") from None
    return dense, options


def _weights(raw: Any) -> tuple[float, float] | None:
    if raw is None:
        return None  # HybridOptions' default for the fusion
    if isinstance(raw, dict):
        _no_unknown(raw, ("lexical", "dense"), "rerank.hybrid.weights")
        values = [raw.get("lexical", 1.0), raw.get("dense", 1.0)]
    elif isinstance(raw, list) and len(raw) == 2:
        values = list(raw)
    else:
        raise bad_request(
            '[rerank.hybrid.weights] must be [lexical, dense] or {"lexical": x, "dense": y}'
        )
    if not all(_is_number(v) and math.isfinite(v) and v >= 0 for v in values):
        raise bad_request("[rerank.hybrid.weights] must be finite, non-negative numbers")
    if not any(values):
        raise bad_request("[rerank.hybrid.weights] are all zero")
    return float(values[0]), float(values[1])


def _no_unknown(raw: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ProxyError(
            400,
            "x_content_parse_exception",
            f"unknown field [{unknown[0]}] in [{where}]; known fields: {', '.join(known)}",
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(raw: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"[{where}.{key}] must be an integer, got {_kind(value)}")
    return value


def _bool(raw: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise bad_request(f"[{where}.{key}] must be true or false, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if _is_number(value) else type(value).__name__
    )


# --------------------------------------------------------------------------- query text


def extract_query_text(query: Any) -> str | None:
    """The text of the scoring full-text clauses of an Elasticsearch ``query``, or ``None``.

    Reads ``match``-family, ``multi_match``, ``combined_fields`` and ``query_string`` clauses,
    looking through ``bool`` (``must``/``should``, not ``filter``/``must_not``), ``dis_max``,
    ``function_score``, ``script_score``, ``boosting`` (positive) and ``constant_score``;
    distinct texts are joined with a space, in the order they appear.
    """
    texts: list[str] = []
    _collect_texts(query, texts)
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    return " ".join(unique) if unique else None


def _collect_texts(query: Any, out: list[str]) -> None:
    if not isinstance(query, dict):
        return
    for kind, clause in query.items():
        if kind in ("match", "match_phrase", "match_bool_prefix"):
            if isinstance(clause, dict):
                for value in clause.values():
                    text = value.get("query") if isinstance(value, dict) else value
                    if isinstance(text, (str, int, float)) and not isinstance(text, bool):
                        out.append(str(text))
        elif kind in TEXT_QUERIES:
            if isinstance(clause, dict) and isinstance(clause.get("query"), str):
                out.append(clause["query"])
        elif kind == "bool" and isinstance(clause, dict):
            for occur in ("must", "should"):
                parts = clause.get(occur)
                for part in parts if isinstance(parts, list) else [parts]:
                    _collect_texts(part, out)
        elif kind == "dis_max" and isinstance(clause, dict):
            for part in clause.get("queries") or []:
                _collect_texts(part, out)
        elif kind in ("function_score", "script_score") and isinstance(clause, dict):
            _collect_texts(clause.get("query"), out)
        elif kind == "boosting" and isinstance(clause, dict):
            _collect_texts(clause.get("positive"), out)
        elif kind == "constant_score" and isinstance(clause, dict):
            _collect_texts(clause.get("filter"), out)


def knn_filter(query: Any) -> dict[str, Any] | None:
    """The client's non-scoring constraints (a top-level ``bool``'s ``filter`` and
    ``must_not``), so that kNN candidates obey them too; ``None`` if there are none."""
    if not isinstance(query, dict) or set(query) != {"bool"} or not isinstance(query["bool"], dict):
        return None
    clause = query["bool"]
    kept = {k: clause[k] for k in ("filter", "must_not") if clause.get(k)}
    return {"bool": kept} if kept else None


# --------------------------------------------------------------------------- request body


def check_compatible(body: Mapping[str, Any], params: Mapping[str, str]) -> None:
    """Refuse what cannot be combined with reranking (a client-chosen sort, scrolling, ...)."""
    for key in CONFLICTING_BODY_KEYS:
        if key in body:
            raise bad_request(
                f"[{key}] cannot be combined with [rerank]: the proxy orders the hits"
            )
    for key in CONFLICTING_PARAMS:
        if key in params:
            raise bad_request(f"the [{key}] parameter cannot be combined with [rerank]")


#: parameters and body keys that open or use a scroll or point-in-time context
SCROLL_PARAMS = ("scroll",)
SCROLL_BODY_KEYS = ("pit",)


def check_no_scroll(body: Mapping[str, Any], params: Mapping[str, str]) -> None:
    """Refuse scrolls and point-in-time searches, with or without ``rerank``: the proxy
    serves neither ``_search/scroll`` nor ``_pit``, so no client could use or close the
    context such a search would open or need."""
    for key in SCROLL_PARAMS:
        if key in params:
            raise bad_request(
                f"the [{key}] parameter is not supported through the reranking proxy: it "
                "serves no _search/scroll endpoint, so the scroll context could never be read "
                "or cleared; page with from/size (or search_after without rerank)"
            )
    for key in SCROLL_BODY_KEYS:
        if key in body:
            raise bad_request(
                f"[{key}] (point in time) is not supported through the reranking proxy: it "
                "serves no _pit endpoint to open or close one"
            )


def page(body: Mapping[str, Any], params: Mapping[str, str], window: int) -> Page:
    """``from``/``size`` (body first, then query parameters), checked against the window."""
    start = _page_value(body, params, "from", 0)
    size = _page_value(body, params, "size", DEFAULT_SIZE)
    if start + size > window:
        raise bad_request(
            f"from + size is {start + size}, beyond the rerank window of {window}: "
            "pages must lie within the window (raise [rerank.window])"
        )
    return Page(start=start, size=size)


def asked_hits(body: Mapping[str, Any], params: Mapping[str, str]) -> int:
    """How many hits a search asks for: ``from`` + ``size``, body first, then query
    parameters. Values Elasticsearch would refuse count as its defaults (its own 400 follows)."""

    def value(key: str, default: int) -> int:
        raw = body.get(key, params.get(key))
        if raw is None or isinstance(raw, bool):
            return default
        try:
            return max(0, int(raw))  # Elasticsearch reads "10" as 10 too
        except (TypeError, ValueError, OverflowError):
            return default

    return value("from", 0) + value("size", DEFAULT_SIZE)


def check_hits(body: Mapping[str, Any], params: Mapping[str, str], limit: int) -> None:
    """400 when a search asks for more than ``limit`` hits, reranked or passed through: the
    proxy parses, answers and (with UBI) remembers every hit."""
    asked = asked_hits(body, params)
    if asked > limit:
        raise bad_request(
            f"from + size is {asked}, beyond this proxy's limit of {limit} hits per search; "
            "page through the results instead"
        )


def _page_value(body: Mapping[str, Any], params: Mapping[str, str], key: str, default: int) -> int:
    if key in body:
        value: Any = body[key]
    elif key in params:
        try:
            value = int(params[key])
        except ValueError:
            raise bad_request(f"[{key}] must be an integer, got [{params[key]}]") from None
    else:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"[{key}] must be an integer, got {_kind(value)}")
    if value < 0:
        raise bad_request(f"[{key}] must be non-negative, got {value}")
    return value


# --------------------------------------------------------------------------- _source


@dataclass(frozen=True)
class SourceFilter:
    """The client's ``_source`` choice: off, everything, or include/exclude patterns."""

    enabled: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    @property
    def is_everything(self) -> bool:
        return self.enabled and not self.includes and not self.excludes


def source_filter(body: Mapping[str, Any], params: Mapping[str, str]) -> SourceFilter:
    """``_source`` from the body, else from the ``_source*`` query parameters."""
    if "_source" in body:
        return _source_from_body(body["_source"])
    spec = SourceFilter()
    raw = params.get("_source")
    if raw is not None:
        lowered = raw.strip().lower()
        if lowered in ("false", "true"):
            spec = SourceFilter(enabled=lowered == "true")
        else:
            spec = SourceFilter(includes=_csv(raw))
    if "_source_includes" in params:
        spec = SourceFilter(includes=_csv(params["_source_includes"]), excludes=spec.excludes)
    if "_source_excludes" in params:
        spec = SourceFilter(includes=spec.includes, excludes=_csv(params["_source_excludes"]))
    return spec


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _source_from_body(raw: Any) -> SourceFilter:
    if isinstance(raw, bool):
        return SourceFilter(enabled=raw)
    if isinstance(raw, str):
        return SourceFilter(includes=(raw,))
    if isinstance(raw, list) and all(isinstance(p, str) for p in raw):
        return SourceFilter(includes=tuple(raw))
    if isinstance(raw, dict):
        _no_unknown(raw, ("includes", "include", "excludes", "exclude"), "_source")
        inc = raw.get("includes", raw.get("include", []))
        exc = raw.get("excludes", raw.get("exclude", []))
        inc = [inc] if isinstance(inc, str) else inc
        exc = [exc] if isinstance(exc, str) else exc
        if (
            isinstance(inc, list)
            and isinstance(exc, list)
            and all(isinstance(p, str) for p in [*inc, *exc])
        ):
            return SourceFilter(includes=tuple(inc), excludes=tuple(exc))
    raise bad_request("[_source] must be a boolean, a field pattern, a list, or includes/excludes")


def first_stage_source(spec: SourceFilter, fields: tuple[str, ...]) -> Any:
    """What to ask Elasticsearch for: enough for both the client and the cross-encoder."""
    if spec.is_everything or spec.excludes:
        return True  # excludes might hide a field the cross-encoder reads: filter here instead
    if not spec.enabled:
        return list(fields)
    return list(dict.fromkeys([*spec.includes, *fields]))


def filter_source(source: Mapping[str, Any] | None, spec: SourceFilter) -> dict[str, Any] | None:
    """``source`` as the client asked for it (``None`` when ``_source`` is off).

    Patterns match dotted paths with shell wildcards (``*`` crosses dots), as Elasticsearch's
    source filtering does; an object matched by an include is kept whole (minus excludes).
    """
    if not spec.enabled:
        return None
    if source is None:
        return {}
    if spec.is_everything:
        return dict(source)
    return _filter(source, "", spec.includes, spec.excludes)


def _filter(
    obj: Mapping[str, Any], prefix: str, includes: tuple[str, ...], excludes: tuple[str, ...]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        path = prefix + key
        if any(fnmatchcase(path, p) for p in excludes):
            continue
        if not includes or any(fnmatchcase(path, p) for p in includes):
            if isinstance(value, dict) and excludes:
                out[key] = _filter(value, path + ".", (), excludes)
            else:
                out[key] = value
        elif isinstance(value, dict):
            inner = _filter(value, path + ".", includes, excludes)
            if inner:
                out[key] = inner
    return out


# --------------------------------------------------------------------------- allow-list


def index_allowed(
    index: str, patterns: tuple[str, ...], *, remote_clusters: tuple[str, ...] = ()
) -> str | None:
    """``None`` if every part of ``index`` (comma-separated) is allowed, else the first that
    is not. A part with wildcards is allowed only if all its expansions must be: the pattern
    is ``*`` or ``prefix*`` and the part starts with ``prefix``.

    This is the proxy's second line (Elasticsearch's authorization is the first), and it
    reads index expressions as Elasticsearch does where that matters: ``cluster:index`` (any
    part with a ``:``, which also covers ``::`` selectors) is a remote-cluster expression,
    refused unless its cluster is one of ``remote_clusters`` (named exactly) and its index
    part is allowed; date math (``<...>``), exclusions (``-name``) and empty parts are
    refused.
    """
    for raw in index.split(","):
        part = raw.strip()
        if not part or part.startswith(("-", "<", "+")):
            return part or index
        if ":" in part:
            cluster, _, remote_index = part.partition(":")
            if (
                cluster not in remote_clusters
                or not remote_index
                or ":" in remote_index
                or not _part_allowed(remote_index, patterns)
            ):
                return part
            continue
        if not _part_allowed(part, patterns):
            return part
    return None


def _part_allowed(part: str, patterns: tuple[str, ...]) -> bool:
    wild = "*" in part or "?" in part
    for pattern in patterns:
        if pattern == "*":
            return True
        if not wild:
            if fnmatchcase(part, pattern):
                return True
            continue
        if part == pattern:
            return True
        prefix = pattern[:-1]
        if (
            pattern.endswith("*")
            and not any(c in prefix for c in "*?[")
            and part.startswith(prefix)
        ):
            return True
    return False
