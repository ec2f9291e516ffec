"""Pure request handling of the proxy: the rerank object, query text, pages, _source, allow-list."""

from __future__ import annotations

from typing import Any

import pytest

from reranker.proxy.errors import ProxyError
from reranker.proxy.request import (
    SourceFilter,
    check_compatible,
    extract_query_text,
    filter_source,
    first_stage_source,
    index_allowed,
    knn_filter,
    page,
    parse_rerank,
    source_filter,
    split_rerank,
)
from reranker.proxy.settings import ProxySettings
from reranker.rerank.diversity import DEFAULT_LAMBDA, DEFAULT_LAMBDAS, Diversity

SETTINGS = ProxySettings(max_window=200, default_window=100)


def refusal(call: Any, *args: Any) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        call(*args)
    assert caught.value.status == 400
    body = caught.value.body()
    assert body["status"] == 400
    assert body["error"]["type"] == body["error"]["root_cause"][0]["type"]
    return caught.value


# ------------------------------------------------------------------ query text


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ({"match": {"text": "vitamin d"}}, "vitamin d"),
        ({"match": {"text": {"query": "vitamin d", "operator": "and"}}}, "vitamin d"),
        ({"multi_match": {"query": "gene", "fields": ["title", "text"]}}, "gene"),
        ({"combined_fields": {"query": "gene", "fields": ["title", "text"]}}, "gene"),
        ({"query_string": {"query": "title:gene"}}, "title:gene"),
        ({"match_phrase": {"title": "cell death"}}, "cell death"),
    ],
)
def test_query_text_is_read_from_full_text_queries(query: dict[str, Any], text: str) -> None:
    assert extract_query_text(query) == text


def test_query_text_looks_through_bool_but_not_its_filters() -> None:
    query = {
        "bool": {
            "must": [{"match": {"title": "protein"}}],
            "should": {"match": {"text": "folding"}},
            "filter": [{"match": {"text": "ignored"}}],
            "must_not": [{"match": {"text": "ignored too"}}],
        }
    }
    assert extract_query_text(query) == "protein folding"


def test_the_same_text_in_several_clauses_is_used_once() -> None:
    query = {"dis_max": {"queries": [{"match": {"title": "x y"}}, {"match": {"text": "x y"}}]}}
    assert extract_query_text(query) == "x y"


def test_no_query_text_in_term_or_match_all_queries() -> None:
    assert extract_query_text({"match_all": {}}) is None
    assert extract_query_text({"term": {"id": "7"}}) is None
    assert extract_query_text(None) is None


# ------------------------------------------------------------------ the rerank object


def test_rerank_defaults_come_from_the_settings() -> None:
    spec = parse_rerank({}, SETTINGS)
    assert spec.window == 100
    assert spec.fields == ("title", "text")
    assert spec.fail_open is True
    assert spec.dense is None  # hybrid wherever the index has embeddings (decided per index)
    assert spec.hybrid.fusion == "linear"
    assert spec.timeout_ms == SETTINGS.default_timeout_ms


def test_hybrid_options_are_parsed_with_the_window_as_fusion_depth() -> None:
    spec = parse_rerank(
        {
            "window": 50,
            "hybrid": {
                "dense": True,
                "fusion": "linear",
                "weights": {"lexical": 0.3, "dense": 0.7},
                "normalization": "zscore",
            },
        },
        SETTINGS,
    )
    assert spec.dense
    assert spec.hybrid.fusion == "linear"
    assert spec.hybrid.weights == (0.3, 0.7)
    assert spec.hybrid.normalization == "zscore"
    assert spec.hybrid.depth == 50


def test_unknown_rerank_field_is_a_400_naming_it() -> None:
    error = refusal(parse_rerank, {"windw": 10}, SETTINGS)
    assert "windw" in error.reason


def test_diversity_true_takes_the_default_method_and_its_lambda() -> None:
    spec = parse_rerank({"diversity": True}, SETTINGS)
    assert spec.diversity == Diversity(DEFAULT_LAMBDA, method="swap")


def test_a_named_method_without_lambda_takes_that_methods_default() -> None:
    spec = parse_rerank({"diversity": {"method": "mmr"}}, SETTINGS)
    assert spec.diversity == Diversity(DEFAULT_LAMBDAS["mmr"], method="mmr")
    assert DEFAULT_LAMBDAS["mmr"] != DEFAULT_LAMBDAS["swap"]


def test_an_unknown_diversity_method_is_refused() -> None:
    error = refusal(parse_rerank, {"diversity": {"method": "dpp"}}, SETTINGS)
    assert "swap, mmr" in error.reason


def test_diversity_object_gives_lambda_and_duplicate_threshold() -> None:
    spec = parse_rerank({"diversity": {"lambda": 0.6, "duplicate_threshold": 0.97}}, SETTINGS)
    assert spec.diversity == Diversity(0.6, 0.97)


@pytest.mark.parametrize("off", [None, False])
def test_no_diversity_keeps_the_reranked_order(off: Any) -> None:
    assert parse_rerank({"diversity": off}, SETTINGS).diversity is None


@pytest.mark.parametrize(
    "bad",
    [
        {"lambda": 1.5},
        {"lambda": "0.5"},
        {"lambda": True},
        {"duplicate_threshold": 0},
        {"lamda": 0.5},
        "yes",
        0.5,
        [0.5],
    ],
)
def test_a_bad_diversity_is_a_400(bad: Any) -> None:
    error = refusal(parse_rerank, {"diversity": bad}, SETTINGS)
    assert "diversity" in error.reason


@pytest.mark.parametrize("how", ["max", "firstmax"])
def test_passages_name_how_a_documents_passages_combine(how: str) -> None:
    assert parse_rerank({"passages": how}, SETTINGS).passages == how


@pytest.mark.parametrize("off", [None, False])
def test_no_passages_means_truncation(off: Any) -> None:
    assert parse_rerank({"passages": off}, SETTINGS).passages is None


@pytest.mark.parametrize("bad", ["sum", True, 1, ["max"]])
def test_unknown_passages_are_a_400(bad: Any) -> None:
    assert "passages" in refusal(parse_rerank, {"passages": bad}, SETTINGS).reason


def test_unknown_hybrid_field_is_a_400() -> None:
    refusal(parse_rerank, {"hybrid": {"dense": True, "k": 3}}, SETTINGS)


def test_window_beyond_the_configured_maximum_is_a_400() -> None:
    error = refusal(parse_rerank, {"window": 201}, SETTINGS)
    assert "200" in error.reason


@pytest.mark.parametrize(
    "raw",
    [
        {"window": 0},
        {"window": "10"},
        {"window": True},
        {"fields": []},
        {"explain": "yes"},
        {"timeout_ms": 0},
        {"query_text": "  "},
        {"hybrid": {"fusion": "borda"}},
        {"hybrid": {"weights": [1, -1]}},
        {"hybrid": {"weights": [0, 0]}},
        {"hybrid": {"rank_constant": 0}},
        [],
    ],
)
def test_malformed_rerank_values_are_400s(raw: Any) -> None:
    refusal(parse_rerank, raw, SETTINGS)


def test_rerank_may_come_under_ext_and_is_removed_from_the_body() -> None:
    body, spec = split_rerank({"query": {}, "ext": {"rerank": {"window": 5}}})
    assert spec == {"window": 5}
    assert body == {"query": {}}
    body, spec = split_rerank({"query": {}})
    assert spec is None
    assert body == {"query": {}}


def test_rerank_given_twice_is_a_400() -> None:
    refusal(split_rerank, {"rerank": {}, "ext": {"rerank": {}}})


def test_client_sort_cannot_be_combined_with_reranking() -> None:
    refusal(check_compatible, {"sort": ["_score"]}, {})
    refusal(check_compatible, {}, {"scroll": "1m"})


# ------------------------------------------------------------------ pagination


def test_from_and_size_default_to_the_first_ten() -> None:
    assert page({}, {}, 100) == page({"from": 0, "size": 10}, {}, 100)


def test_page_from_query_parameters() -> None:
    got = page({}, {"from": "20", "size": "5"}, 100)
    assert (got.start, got.size) == (20, 5)


def test_page_ending_exactly_at_the_window_is_allowed() -> None:
    got = page({"from": 90, "size": 10}, {}, 100)
    assert (got.start, got.size) == (90, 10)


def test_page_beyond_the_window_is_a_400_saying_so() -> None:
    error = refusal(page, {"from": 95, "size": 10}, {}, 100)
    assert "window" in error.reason


@pytest.mark.parametrize(("body", "params"), [({"size": -1}, {}), ({}, {"from": "-3"})])
def test_negative_from_or_size_is_a_400(body: dict[str, Any], params: dict[str, str]) -> None:
    refusal(page, body, params, 100)


# ------------------------------------------------------------------ _source


SOURCE = {"title": "T", "text": "X", "signals": {"year": 2001, "citations": 4}}


def test_source_includes_keep_only_matching_fields() -> None:
    spec = source_filter({"_source": ["title", "signals.year"]}, {})
    assert filter_source(SOURCE, spec) == {"title": "T", "signals": {"year": 2001}}


def test_source_excludes_and_wildcards() -> None:
    spec = source_filter({"_source": {"includes": ["*"], "excludes": ["signals.c*"]}}, {})
    assert filter_source(SOURCE, spec) == {"title": "T", "text": "X", "signals": {"year": 2001}}


def test_source_false_drops_it_but_the_first_stage_still_fetches_the_scored_fields() -> None:
    spec = source_filter({"_source": False}, {})
    assert filter_source(SOURCE, spec) is None
    assert first_stage_source(spec, ("title", "text")) == ["title", "text"]


def test_first_stage_fetches_the_union_of_client_and_scored_fields() -> None:
    spec = SourceFilter(includes=("signals",))
    assert first_stage_source(spec, ("title", "text")) == ["signals", "title", "text"]


def test_source_from_query_parameters() -> None:
    spec = source_filter({}, {"_source_includes": "title"})
    assert filter_source(SOURCE, spec) == {"title": "T"}


# ------------------------------------------------------------------ allow-list and kNN filter


@pytest.mark.parametrize(
    ("index", "refused"),
    [
        ("beir-scifact", None),
        ("beir-scifact,beir-fiqa", None),
        ("beir-s*", None),
        ("secret", "secret"),
        ("beir-scifact,secret", "secret"),
        ("*", "*"),
        ("b*", "b*"),
        ("_all", "_all"),
        ("-beir-x", "-beir-x"),
    ],
)
def test_allow_list_admits_only_what_its_patterns_cover(index: str, refused: str | None) -> None:
    assert index_allowed(index, ("beir-*",)) == refused


def test_allow_all_pattern_admits_wildcards() -> None:
    assert index_allowed("*", ("*",)) is None


def test_knn_gets_the_clients_filters_but_not_its_scoring_clauses() -> None:
    query = {"bool": {"must": [{"match": {"text": "x"}}], "filter": [{"term": {"y": 1}}]}}
    assert knn_filter(query) == {"bool": {"filter": [{"term": {"y": 1}}]}}
    assert knn_filter({"match": {"text": "x"}}) is None
