"""Pure multi-search parsing: NDJSON pairs into (index, params, body) searches."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reranker.proxy.errors import ProxyError
from reranker.proxy.msearch import (
    DEFAULT_CONCURRENT_SEARCHES,
    MAX_CONCURRENT_SEARCHES,
    concurrency,
    parse_msearch,
)


def ndjson(*lines: Any) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def refused(raw: bytes, error_type: str | None = None) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        parse_msearch(raw, "docs", {})
    assert caught.value.status == 400
    if error_type:
        assert caught.value.error_type == error_type
    return caught.value


def test_each_header_and_body_pair_is_one_search_in_order() -> None:
    raw = ndjson({"index": "a"}, {"query": {"match_all": {}}}, {}, {"size": 3})
    items = parse_msearch(raw, "docs", {})
    assert [item.index for item in items] == ["a", "docs"]
    assert items[0].body == {"query": {"match_all": {}}}
    assert json.loads(items[1].raw_body) == {"size": 3}


def test_a_header_without_index_and_no_path_index_searches_all() -> None:
    assert parse_msearch(ndjson({}, {}), None, {})[0].index == "_all"


def test_an_index_list_in_a_header_is_joined_with_commas() -> None:
    assert parse_msearch(ndjson({"index": ["a", "b"]}, {}), None, {})[0].index == "a,b"


def test_header_parameters_overlay_the_url_parameters_as_strings() -> None:
    raw = ndjson({"routing": "r1", "request_cache": True, "expand_wildcards": ["open"]}, {})
    params = parse_msearch(raw, "docs", {"preference": "_local", "routing": "r0"})[0].params
    assert params == {
        "preference": "_local",
        "routing": "r1",
        "request_cache": "true",
        "expand_wildcards": "open",
    }


def test_msearch_own_url_parameters_are_not_forwarded_to_each_search() -> None:
    params = parse_msearch(ndjson({}, {}), "docs", {"max_concurrent_searches": "2"})[0].params
    assert params == {}


def test_a_blank_header_line_is_a_header_without_parameters_as_in_elasticsearch() -> None:
    # Elasticsearch reads these five lines as (blank header, {}), ({"index": "b"}, {}) and a
    # trailing header; skipping the blank line would pair them differently.
    raw = b'\n{}\n{"index": "b"}\n{}\n'
    items = parse_msearch(raw, "a", {})
    assert [item.index for item in items] == ["a", "b"]
    assert [item.body for item in items] == [{}, {}]


def test_a_blank_body_line_is_refused_as_elasticsearch_does() -> None:
    error = refused(b'{"index": "a"}\n\n{"index": "b"}\n{}\n', "parsing_exception")
    assert "line 2" in error.reason


def test_a_body_without_a_final_newline_is_refused_as_elasticsearch_does() -> None:
    error = refused(b'{"index": "a"}\n{"size": 1}')
    assert "terminated by a newline" in error.reason


def test_whitespace_only_and_null_headers_mean_no_parameters() -> None:
    raw = b' \t\r\n{}\nnull\n{"size": 2}\r\n'
    items = parse_msearch(raw, "docs", {})
    assert [item.index for item in items] == ["docs", "docs"]
    assert items[1].body == {"size": 2}


def test_indices_and_camel_case_header_keys_are_read_as_elasticsearch_reads_them() -> None:
    raw = ndjson({"indices": ["x", "y"], "ignoreUnavailable": True}, {})
    item = parse_msearch(raw, "docs", {})[0]
    assert item.index == "x,y"
    assert item.params == {"ignore_unavailable": "true"}
    refused(ndjson({"index": "a", "indices": "b"}, {}))


def test_a_duplicated_header_key_is_refused_as_elasticsearch_does() -> None:
    refused(b'{"index": "a", "index": "b"}\n{}\n', "x_content_parse_exception")


def test_a_header_without_its_body_line_is_refused_with_its_line_number() -> None:
    error = refused(ndjson({"index": "a"}, {}, {"index": "b"}), "parsing_exception")
    assert "line 3" in error.reason
    refused(b'{"index": "a"}\n{}\n{"index": "b"}\n')


def test_a_line_that_is_not_json_is_refused_with_its_line_number() -> None:
    error = refused(b'{"index": "a"}\n{"query": \n', "parsing_exception")
    assert "line 2" in error.reason


def test_a_body_line_that_is_not_an_object_is_refused() -> None:
    refused(ndjson({}, [1, 2]), "parsing_exception")


def test_an_unknown_header_key_is_refused_like_elasticsearch_does() -> None:
    error = refused(ndjson({"indx": "a"}, {}))
    assert "[indx]" in error.reason


def test_an_empty_body_is_refused() -> None:
    refused(b"\n  \n")


def test_a_body_that_is_not_utf8_is_refused() -> None:
    refused(b'{"index": "a"}\n{"q": "\xff"}\n', "parsing_exception")


def test_a_bad_index_value_is_refused() -> None:
    refused(ndjson({"index": 3}, {}))


def test_concurrency_defaults_is_capped_and_must_be_positive() -> None:
    assert concurrency({}) == DEFAULT_CONCURRENT_SEARCHES
    assert concurrency({"max_concurrent_searches": "2"}) == 2
    assert concurrency({"max_concurrent_searches": "1000"}) == MAX_CONCURRENT_SEARCHES
    for bad in ("0", "-1", "two"):
        with pytest.raises(ProxyError):
            concurrency({"max_concurrent_searches": bad})


def test_a_search_wants_rerank_when_its_body_names_it_at_the_top_or_under_ext() -> None:
    raw = ndjson({}, {"rerank": {}}, {}, {"ext": {"rerank": None}}, {}, {"ext": {"x": 1}})
    assert [item.wants_rerank for item in parse_msearch(raw, "docs", {})] == [True, True, False]
