"""BM25 over a request's own texts (the rerank API's lexical feature)."""

from __future__ import annotations

import math

import pytest

from reranker.retrieval.lexical import bm25_scores, words


def test_words_are_lower_cased_runs_of_word_characters() -> None:
    assert words("Vitamin-D, deficiency's 25(OH)D") == [
        "vitamin", "d", "deficiency", "s", "25", "oh", "d"
    ]  # fmt: skip


def test_a_text_sharing_no_word_with_the_query_scores_zero() -> None:
    scores = bm25_scores("vitamin d", ["vitamin d deficiency", "bone density in mice"])
    assert scores[0] > 0.0
    assert scores[1] == 0.0


def test_a_rarer_query_word_weighs_more() -> None:
    texts = ["rickets in children", "vitamin levels", "vitamin intake", "vitamin and rickets"]
    scores = bm25_scores("vitamin rickets", texts)
    # "rickets" is in 2 texts, "vitamin" in 3: the text with only the rarer word wins
    assert scores[0] > scores[1] == pytest.approx(scores[2])


def test_more_occurrences_score_higher_but_never_above_the_words_idf() -> None:
    texts = ["tea", "tea tea", "tea tea tea tea tea tea tea tea", "coffee"]
    scores = bm25_scores("tea", texts)
    assert scores[0] < scores[1] < scores[2]
    assert scores[2] < math.log(1 + (4 - 3 + 0.5) / (3 + 0.5))


def test_the_score_is_lucenes_formula() -> None:
    texts = ["a b c d", "a e"]
    idf = math.log(1 + (2 - 2 + 0.5) / (2 + 0.5))
    mean = 3.0
    want = [idf * 1 / (1 + 1.2 * (0.25 + 0.75 * n / mean)) for n in (4, 2)]
    assert bm25_scores("a", texts).tolist() == pytest.approx(want)


def test_no_texts_and_empty_texts_are_scored_without_error() -> None:
    assert bm25_scores("tea", []).tolist() == []
    assert bm25_scores("tea", ["", ""]).tolist() == [0.0, 0.0]
    assert bm25_scores("", ["tea"]).tolist() == [0.0]
