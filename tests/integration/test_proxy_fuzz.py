"""Property: no request body, however malformed, gets a 5xx from the proxy.

Hypothesis throws generated bodies at ``/{index}/_search`` and ``/{index}/_msearch`` of a proxy
in front of the real secured node: search-shaped bodies with random values in every field
(``rerank`` included), arbitrary JSON, raw bytes, and the inputs that used to answer 500
(unpaired UTF-16 surrogates, deep nesting, numbers with thousands of digits, ``NaN``).
Every answer, and every ``_msearch`` entry, must be below 500. The scorer is a fast
stand-in (the cross-encoder's speed is not what is tested); Elasticsearch is real.

Bounded: ``RERANKER_FUZZ_EXAMPLES`` examples per endpoint (default 500; each ``_msearch``
example carries up to six bodies), no per-example deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pytest
from elasticsearch import Elasticsearch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reranker.es.node import NodeStatus
from reranker.feedback.ubi import ubi_timestamp
from reranker.proxy import create_app
from reranker.rerank.scorer import Scorer
from tests.helpers import LoopHeld, heartbeat
from tests.integration.conftest import proxy_settings

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("RERANKER_FUZZ_EXAMPLES", "500"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


class QuickScorer(Scorer):
    """Scores by passage length: instant, finite, one per pair."""

    def __init__(self, inner: Scorer) -> None:
        self.__dict__.update(inner.__dict__)

    def warmup(self) -> None:
        pass

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        return np.array([len(p) % 17 for _, p in pairs], dtype=np.float32)


@pytest.fixture(scope="module")
def fuzz_index(es_client: Elasticsearch) -> Iterator[str]:
    prefix = f"fuzz-{uuid.uuid4().hex[:8]}"
    index = f"{prefix}-docs"
    es_client.indices.create(
        index=index,
        mappings={
            "properties": {
                "title": {"type": "text"},
                "text": {"type": "text"},
                "n": {"type": "integer"},
            }
        },
    )
    words = ["bone", "calcium", "sleep", "memory", "diet", "vitamin", "heart", "cells"]
    for i in range(12):
        text = " ".join(words[(i + j) % len(words)] for j in range(5))
        es_client.index(
            index=index, id=str(i), document={"title": words[i % 8], "text": text, "n": i}
        )
    es_client.indices.refresh(index=index)
    yield prefix
    es_client.options(ignore_status=404).indices.delete(index=index)


def serve_in_loop(
    settings: Any, scorer: Scorer
) -> Iterator[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]]:
    app = create_app(settings, scorer_factory=lambda: QuickScorer(scorer), load_in_background=False)
    loop = asyncio.new_event_loop()
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy", timeout=60
    )
    try:
        yield loop, http
    finally:
        loop.run_until_complete(http.aclose())
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
        loop.close()


@pytest.fixture
def proxy_http(
    es_node: NodeStatus, fuzz_index: str, proxy_scorer: Scorer
) -> Iterator[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]]:
    settings = proxy_settings(es_node, fuzz_index, request_log=True, log_flush_s=0.2)
    yield from serve_in_loop(settings, proxy_scorer)


@pytest.fixture
def ubi_proxy_http(
    es_node: NodeStatus, es_client: Elasticsearch, fuzz_index: str, proxy_scorer: Scorer
) -> Iterator[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]]:
    """The proxy with UBI on (its query and event indices named after the fuzz index)."""
    settings = proxy_settings(
        es_node,
        fuzz_index,
        ubi=True,
        ubi_queries_index=f"{fuzz_index}-ubi-queries",
        ubi_events_index=f"{fuzz_index}-ubi-events",
        log_flush_s=0.2,
    )
    yield from serve_in_loop(settings, proxy_scorer)
    for index in (settings.ubi_queries_index, settings.ubi_events_index):
        es_client.options(ignore_status=404).indices.delete(index=index)
        es_client.options(ignore_status=404).indices.delete_index_template(name=index)


# ------------------------------------------------------------------ strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["text", "title", "bone", "*", "_all", "rrf", "linear", "minmax", "1m"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
texts = st.text(min_size=0, max_size=20) | st.sampled_from(["bone calcium", "sleep", ""])
queries = st.one_of(
    st.builds(lambda t: {"match": {"text": t}}, texts),
    st.builds(lambda t: {"multi_match": {"query": t, "fields": ["title", "text"]}}, texts),
    st.builds(lambda t: {"bool": {"must": [{"match": {"text": t}}], "filter": []}}, texts),
    st.just({"match_all": {}}),
    json_values,
)
rerank_objects = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "window": st.integers(min_value=-5, max_value=80) | json_values,
            "query_text": texts | json_values,
            "fields": st.just(["title", "text"]) | json_values,
            "hybrid": st.booleans() | json_values,
            "blend": st.just({"relevance": 1}) | json_values,
            "explain": st.booleans() | json_values,
            "timeout_ms": st.integers(min_value=-10, max_value=70_000) | json_values,
            "fail_open": st.booleans() | json_values,
        },
    ),
    json_values,
)
search_bodies = st.fixed_dictionaries(
    {},
    optional={
        "query": queries,
        "size": st.integers(min_value=-3, max_value=60) | json_values,
        "from": st.integers(min_value=-3, max_value=60) | json_values,
        "_source": st.booleans() | st.just(["title"]) | json_values,
        "rerank": rerank_objects,
        "ext": st.builds(lambda r: {"rerank": r}, rerank_objects)
        | st.builds(lambda u, r: {"ubi": u, "rerank": r}, json_values, rerank_objects)
        | json_values,
        "aggs": st.just({"n": {"max": {"field": "n"}}}) | json_values,
        "sort": json_values,
        "pit": json_values,
        "timeout": json_values,
    },
)
#: the byte patterns that used to answer 500, spliced into otherwise valid bodies
poison = st.sampled_from(
    [
        b'"\\ud800"',
        b'"a\\udfffb"',
        b'"\\ud83d"',
        b"[" * 3000 + b"]" * 3000,
        b"1" + b"0" * 5000,
        b"-" + b"9" * 400,
        b"1e999",
        b"-1e400",
        b"NaN",
        b"Infinity",
        b"1.5e-99999",
        b"0." + b"1" * 300,
        b'{"a": 1, "a": 2}',
        b'"\xff\xfe"',
        b"",
    ]
)


@st.composite
def poisoned(draw: st.DrawFn) -> bytes:
    body = draw(search_bodies)
    key = draw(st.sampled_from(["size", "query", "rerank", "x", "min_score", "from"]))
    placeholder = "__POISON__"
    if key == "rerank":
        body["rerank"] = {"window": 5, draw(st.sampled_from(["query_text", "window"])): placeholder}
    else:
        body[key] = placeholder
    return json.dumps(body).encode().replace(b'"__POISON__"', draw(poison))


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()


bodies = st.one_of(
    search_bodies.map(encode),
    poisoned(),
    json_values.map(encode),
    st.binary(max_size=64),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
headers = st.one_of(
    st.just(b"{}"),
    st.just(b""),
    st.just(b"null"),
    st.builds(lambda r: encode({"routing": r}), st.text(max_size=4)),
    st.builds(
        encode,
        st.dictionaries(st.sampled_from(["index", "preference", "x"]), json_values, max_size=2),
    ),
    poison,
)
params = st.dictionaries(
    st.sampled_from(
        [
            "size", "from", "q", "_source", "scroll", "timeout", "max_concurrent_searches",
            "format", "error_trace", "filter_path",
        ]
    ),
    st.text(max_size=6) | st.sampled_from(["yaml", "true", "10000"]),
    max_size=2,
)  # fmt: skip
#: headers a client controls that the proxy reads or forwards: any text, any length
client_headers = st.dictionaries(
    st.sampled_from(["x-opaque-id", "authorization", "accept", "content-length"]),
    st.text(max_size=40).map(lambda t: t.encode("utf-8"))
    | st.integers(min_value=200, max_value=20_000).map(lambda n: b"x" * n)
    | st.sampled_from([b"ApiKey ", b"Bearer \xff", b"application/yaml", b"-1", b"9" * 30]),
    max_size=2,
)


async def _with_heartbeat(request: Any) -> tuple[Any, LoopHeld]:
    """Await ``request`` beside a heartbeat on the same loop; the answer and how long the
    loop was held."""
    async with heartbeat() as held:
        answer = await request
    return answer, held


def post(
    proxy_http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient],
    path: str,
    content: bytes,
    query: dict[str, str],
    content_type: str,
    headers: dict[str, bytes] | None = None,
) -> httpx.Response:
    """POST on the proxy's own loop; fails when the loop was held longer than
    :data:`~tests.helpers.LOOP_CPU_LIMIT_S` of CPU while answering."""
    loop, http = proxy_http
    sent = {"content-type": content_type.encode(), **(headers or {})}
    if "content-length" in sent:
        sent.pop("content-length")  # httpx sets its own; a wrong one would hang the transport
    response, held = loop.run_until_complete(
        _with_heartbeat(http.post(path, content=content, params=query, headers=sent))
    )
    held.check(f"{path} {content[:200]!r} {query}")
    return response


def assert_no_5xx(response: httpx.Response, sent: bytes) -> None:
    assert response.status_code < 500, (sent[:300], response.text[:500])
    try:
        answer = response.json()
    except ValueError:
        pytest.fail(f"not JSON: {response.text[:300]!r}")
    for entry in answer.get("responses", []) if isinstance(answer, dict) else []:
        assert entry.get("status", 200) < 500, (sent[:300], entry)


# ------------------------------------------------------------------ the properties


@FUZZ
@given(body=bodies, query=params, headers=client_headers)
def test_no_search_body_gets_a_5xx(
    proxy_http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient],
    fuzz_index: str,
    body: bytes,
    query: dict[str, str],
    headers: dict[str, bytes],
) -> None:
    response = post(
        proxy_http, f"/{fuzz_index}-docs/_search", body, query, "application/json", headers
    )
    assert_no_5xx(response, body)
    assert "stack_trace" not in response.text


@FUZZ
@given(
    path=st.sampled_from(["/rerank", "/v1/rerank", "/v2/rerank"]),
    body=bodies
    | st.fixed_dictionaries(
        {},
        optional={
            "query": st.text(max_size=20) | json_values,
            "texts": st.lists(st.text(max_size=30), max_size=20) | json_values,
            "documents": st.lists(st.text(max_size=30) | json_values, max_size=20) | json_values,
            "top_n": st.integers(min_value=-2, max_value=30) | json_values,
            "raw_scores": st.booleans() | json_values,
        },
    ).map(encode),
    headers=client_headers,
)
def test_no_rerank_api_body_gets_a_5xx(
    proxy_http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient],
    path: str,
    body: bytes,
    headers: dict[str, bytes],
) -> None:
    response = post(proxy_http, path, body, {}, "application/json", headers)
    assert response.status_code < 500, (path, body[:300], response.text[:300])


@FUZZ
@given(
    lines=st.lists(
        st.tuples(headers, st.one_of(poisoned(), bodies, st.just(b""))), min_size=1, max_size=3
    ),
    extra=st.lists(headers | bodies, max_size=1),
    newline=st.booleans(),
    query=params,
)
def test_no_msearch_body_gets_a_5xx(
    proxy_http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient],
    fuzz_index: str,
    lines: list[tuple[bytes, bytes]],
    extra: list[bytes],
    newline: bool,
    query: dict[str, str],
) -> None:
    parts = [part.replace(b"\n", b" ") for pair in lines for part in pair] + extra
    body = b"\n".join(parts) + (b"\n" if newline else b"")
    response = post(proxy_http, f"/{fuzz_index}-docs/_msearch", body, query, "application/x-ndjson")
    assert_no_5xx(response, body)


# ------------------------------------------------------------------ UBI

#: stand-ins replaced when sent: the query_id of a real search, and the time now
KNOWN_QUERY = "__QUERY_ID__"
NOW = "__NOW__"
event_attributes = st.fixed_dictionaries(
    {},
    optional={
        "object": st.fixed_dictionaries(
            {}, optional={"object_id": st.sampled_from(["0", "1", "11", "x"]) | json_values}
        )
        | json_values,
        "position": st.fixed_dictionaries(
            {}, optional={"ordinal": st.integers(min_value=-2, max_value=12) | json_values}
        )
        | json_values,
    },
)
events = st.fixed_dictionaries(
    {},
    optional={
        "action_name": st.sampled_from(["click", "impression", "view", "hover"]) | json_values,
        "query_id": st.just(KNOWN_QUERY) | st.text(max_size=8) | json_values,
        "timestamp": st.sampled_from([NOW, "2999-01-01T00:00:00Z", "2025-01-01T00:00:00"])
        | json_values,
        "session_id": st.text(max_size=6) | json_values,
        "client_id": st.text(max_size=6) | json_values,
        "event_attributes": event_attributes | json_values,
        "message": json_values,
    },
)
event_lines = st.one_of(events.map(encode), json_values.map(encode), poison, st.binary(max_size=24))


@FUZZ
@given(
    lines=st.lists(event_lines, min_size=0, max_size=6),
    as_array=st.booleans(),
    search=search_bodies,
)
def test_no_events_body_and_no_search_with_ubi_gets_a_5xx(
    ubi_proxy_http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient],
    fuzz_index: str,
    lines: list[bytes],
    as_array: bool,
    search: dict[str, Any],
) -> None:
    found = post(
        ubi_proxy_http, f"/{fuzz_index}-docs/_search", encode(search), {}, "application/json"
    )
    assert_no_5xx(found, encode(search))
    answer = found.json()
    query_id = (
        answer.get("ext", {}).get("ubi", {}).get("query_id", "none")
        if found.status_code == 200
        else "none"
    )
    parts = [line.replace(b"\n", b" ") for line in lines]
    body = b"[" + b",".join(parts) + b"]" if as_array else b"\n".join(parts) + b"\n"
    body = body.replace(KNOWN_QUERY.encode(), query_id.encode())
    body = body.replace(NOW.encode(), ubi_timestamp(datetime.now(UTC)).encode())
    response = post(ubi_proxy_http, "/_reranker/events", body, {}, "application/x-ndjson")
    assert_no_5xx(response, body)
