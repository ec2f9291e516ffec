"""Long documents scored by passages: the split (with the shipped model's real tokenizer) and
how a document's logit is combined from its passages' (a fake scorer: pure logic)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from reranker.errors import ConfigError
from reranker.rerank.passages import PassageScorer, PassageSplitter, combine
from tests.fakes import FakeScorer

TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "reranker-minilm-l6" / "tokenizer.json"
LONG = " ".join(f"word{i}" for i in range(300))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    loaded = Tokenizer.from_file(str(TOKENIZER))
    loaded.no_truncation()
    return loaded


def tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_a_document_that_fits_is_one_passage_unchanged(tokenizer: Tokenizer) -> None:
    text = "Vitamin D deficiency is common in older adults."
    assert PassageSplitter(tokenizer, 64).split(text) == [text]


def test_a_long_document_is_cut_into_windows_that_fit(tokenizer: Tokenizer) -> None:
    passages = PassageSplitter(tokenizer, 64).split(LONG)
    assert len(passages) > 2
    assert all(tokens(tokenizer, p) <= 64 for p in passages)


def test_windows_overlap_by_half_and_cover_the_whole_document(tokenizer: Tokenizer) -> None:
    splitter = PassageSplitter(tokenizer, 64)
    spans = splitter.boundaries(LONG)
    assert spans[0][0] == 0 and spans[-1][1] == len(LONG)
    for (start, end), (next_start, _) in pairwise(spans):
        assert start < next_start < end  # the next window starts inside this one


def test_boundaries_are_remembered_per_text(tokenizer: Tokenizer) -> None:
    splitter = PassageSplitter(tokenizer, 64, capacity=1)
    first = splitter.boundaries(LONG)
    assert splitter.boundaries(LONG) is first
    splitter.boundaries("another text")
    assert splitter.boundaries(LONG) is not first  # capacity 1: the older one went


def test_max_takes_the_best_passage_and_firstmax_averages_first_and_best() -> None:
    assert combine([0.5, 2.0, 1.0], "max") == 2.0
    assert combine([0.5, 2.0, 1.0], "firstmax") == 1.25


class ScoresByMarker(FakeScorer):
    """A passage's logit is the number after ``score=`` in it (0 without one)."""

    def scores(self, pairs: Sequence[tuple[str, str]], features: np.ndarray | None) -> np.ndarray:
        values = []
        for _, passage in pairs:
            marker = passage.split("score=")[-1].split()[0] if "score=" in passage else "0"
            values.append(float(marker))
        return np.array(values, dtype=np.float32)


def test_a_document_scores_its_best_passage(tokenizer: Tokenizer) -> None:
    filler = " ".join(["filler"] * 120)
    document = f"score=1 {filler} score=7 {filler}"
    inner = ScoresByMarker()
    scorer = PassageScorer(inner, PassageSplitter(tokenizer, 64), "max")
    logits = scorer.score([("q", document), ("q", "short score=3")])
    assert logits.tolist() == [7.0, 3.0]
    assert inner.pairs_run > 2  # the long document went in as several pairs


def test_each_passage_carries_its_documents_features(tokenizer: Tokenizer) -> None:
    scorer = PassageScorer(FakeScorer(), PassageSplitter(tokenizer, 64))
    features = np.array([[1.0, 2.0], [3.0, 4.0]])
    pairs, expanded, counts = scorer.expand([("q", LONG), ("q", "short")], features)
    assert counts[1] == 1 and len(pairs) == sum(counts)
    assert expanded is not None
    assert (expanded[: counts[0]] == [1.0, 2.0]).all() and (expanded[-1] == [3.0, 4.0]).all()


def test_an_unknown_combination_is_refused(tokenizer: Tokenizer) -> None:
    with pytest.raises(ConfigError, match="combination"):
        PassageScorer(FakeScorer(), PassageSplitter(tokenizer, 64), "sum")  # type: ignore[arg-type]


def test_an_index_body_records_its_passages_where_field_caps_show_them() -> None:
    from reranker.es.mappings import documents_index_body

    body = documents_index_body(
        analysis_name="core", analysis={}, dims=4, meta={"passages": "firstmax"}
    )
    assert body["mappings"]["properties"]["text"]["meta"] == {"passages": "firstmax"}
    assert body["mappings"]["_meta"]["reranker"]["passages"] == "firstmax"
    plain = documents_index_body(analysis_name="core", analysis={}, dims=4, meta={})
    assert "meta" not in plain["mappings"]["properties"]["text"]


def test_a_search_says_how_to_read_long_documents_before_the_index_does() -> None:
    from reranker.cli.common import passages_for

    recorded = {"passages": "firstmax"}  # what the index chose at indexing
    assert passages_for(recorded, "max") == "max"
    assert passages_for(recorded, "none") is None
