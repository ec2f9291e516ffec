"""Adapting the embedder without labels: pseudo-queries from documents, negatives, the loss,
the check's score and its split (``reranker adapt``'s pure parts)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from reranker.errors import ConfigError
from reranker.training.adapt import AdaptConfig, check_noise
from reranker.training.pseudo_queries import (
    PseudoQuery,
    check_passages,
    hard_negatives,
    pseudo_query,
    sentences,
    split_held_out,
    top1_rate,
)

BODY = (
    "Vitamin D is made in the skin under sunlight. Deficiency is common in older adults "
    "living far from the equator. Low levels are linked to weaker bones and more fractures."
)


def test_sentences_split_after_a_full_stop_before_a_capital() -> None:
    assert sentences("One two. Three four! Five? six") == ["One two.", "Three four!", "Five? six"]


def test_a_titled_document_can_give_its_title_for_its_body() -> None:
    pq = pseudo_query("d1", "Vitamin D and bones", BODY, random.Random(0), title_fraction=1.0)
    assert pq == PseudoQuery("d1", "Vitamin D and bones", BODY, "title")


def test_a_sentence_query_is_cut_out_of_its_positive() -> None:
    pq = pseudo_query("d1", "", BODY, random.Random(3), title_fraction=0.0)
    assert pq is not None and pq.kind == "sentence"
    assert pq.query in sentences(BODY)
    assert pq.query not in pq.positive
    assert len(pq.positive.split()) + len(pq.query.split()) == len(BODY.split())


def test_a_sentence_positive_keeps_the_title() -> None:
    pq = pseudo_query("d1", "Vitamin D", BODY, random.Random(3), title_fraction=0.0)
    assert pq is not None and pq.positive.startswith("Vitamin D ")


def test_a_one_sentence_document_gives_a_span_removed_from_it() -> None:
    text = " ".join(f"word{i}" for i in range(30))
    pq = pseudo_query("d1", "", text, random.Random(1))
    assert pq is not None and pq.kind == "span"
    assert 6 <= len(pq.query.split()) <= 14
    assert pq.query in text and pq.query not in pq.positive


def test_a_short_document_gives_no_pseudo_query() -> None:
    assert (
        pseudo_query("d1", "A title", "Too short to cut anything from.", random.Random(0)) is None
    )


def test_pseudo_queries_are_reproducible_for_a_seed() -> None:
    def made(seed: int) -> list[PseudoQuery | None]:
        rng = random.Random(seed)
        return [pseudo_query(f"d{i}", "T", BODY, rng) for i in range(20)]

    assert made(5) == made(5)
    assert made(5) != made(6)


def test_hard_negatives_are_the_window_top_without_the_source() -> None:
    window = ["a", "src", "b", "c", "d"]
    assert hard_negatives(window, "src", depth=3) == ["a", "b"]


def test_top1_rate_counts_sources_ranked_first() -> None:
    ranked = {"q1": ["s1", "x"], "q2": ["x", "s2"], "q3": []}
    assert top1_rate(ranked, {"q1": "s1", "q2": "s2", "q3": "s3"}) == pytest.approx(1 / 3)


def test_held_out_queries_are_never_trained_on_and_at_most_a_fifth() -> None:
    queries = [PseudoQuery(f"d{i}", f"q{i}", "p", "title") for i in range(100)]
    training, held = split_held_out(queries, 50, seed=1)
    assert len(held) == 20 and len(training) == 80
    assert not {q.doc_id for q in held} & {q.doc_id for q in training}
    assert split_held_out(queries, 50, seed=1) == (training, held)


@pytest.mark.parametrize(
    "overrides",
    [{"minutes": 0}, {"held_out": 5}, {"negatives": 0}, {"batch_size": 1}, {"max_steps": 0}],
)
def test_a_config_that_cannot_run_is_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        AdaptConfig(alias="a", output=Path("/tmp/x"), **overrides)  # type: ignore[arg-type]


def test_the_check_searches_held_out_sources_without_their_queries() -> None:
    held = [PseudoQuery("d2", "the cut sentence.", "what is left", "sentence")]
    corpus = check_passages(["d1", "d2"], ["first doc", "what is left the cut sentence."], held)
    assert corpus == ["first doc", "what is left"]


def test_the_checks_noise_is_one_standard_error_of_its_top1_rate() -> None:
    # 0.7 over 1,000 queries: sqrt(0.7 * 0.3 / 1000) ≈ 0.0145, three queries are 0.003
    assert check_noise(0.7, 1000) == pytest.approx(0.01449, abs=1e-4)
    assert check_noise(0.7, 100_000) < 0.002
