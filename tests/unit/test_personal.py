"""Personalisation: the personal stage, the profiles' decayed means, the request's
``personalize`` object and the simulation's pieces (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from reranker.errors import SearchError
from reranker.es.profiles import (
    Profile,
    decay,
    empty_profile,
    profile_from_document,
    profile_id,
)
from reranker.evaluation.personal import (
    PreferenceModel,
    SimUser,
    assign,
    chosen_weight,
    click_dcg,
    clicks_ndcg,
    kmeans_topics,
    make_users,
)
from reranker.proxy.errors import ProxyError
from reranker.proxy.profiles import profiles_refusal
from reranker.proxy.request import parse_rerank
from reranker.proxy.settings import ProxySettings
from reranker.rerank.personal import DEFAULT_WEIGHT, Personalization, personalize

A = [1.0, 0.0, 0.0]
B = [0.0, 1.0, 0.0]
NOW = datetime(2026, 12, 1, tzinfo=UTC)


@dataclass
class Ranked:
    id: str
    score: float
    vector: list[float] | None
    personal: dict[str, float] | None = None


def hits() -> list[Ranked]:
    return [
        Ranked("a1", 3.0, A),
        Ranked("b1", 2.9, B),
        Ranked("a2", 1.0, A),
        Ranked("x", 0.5, None),
    ]


def test_a_profile_pulls_up_documents_like_the_ones_clicked() -> None:
    ordered = personalize(hits(), Personalization(tuple(B), weight=1.0))
    assert [h.id for h in ordered][:2] == ["b1", "a1"]


def test_weight_zero_keeps_the_reranked_order() -> None:
    ordered = personalize(hits(), Personalization(tuple(B), weight=0.0))
    assert [h.id for h in ordered] == ["a1", "b1", "a2", "x"]


def test_scores_fall_down_the_personalised_list_and_are_explained() -> None:
    ordered = personalize(hits(), Personalization(tuple(B), weight=0.5), explain=True)
    scores = [h.score for h in ordered]
    assert scores == sorted(scores, reverse=True)
    top = ordered[0]
    assert top.personal is not None
    assert top.personal["contribution"] == pytest.approx(0.5 * top.personal["similarity"])
    assert top.score == pytest.approx(top.personal["relevance"] + top.personal["contribution"])


def test_a_hit_without_a_vector_is_similar_to_nothing() -> None:
    ordered = personalize(hits(), Personalization(tuple(A), weight=1.0), explain=True)
    missing = next(h for h in ordered if h.id == "x")
    assert missing.personal is not None and missing.personal["similarity"] == 0.0


@pytest.mark.parametrize("weight", [-0.1, 101.0])
def test_a_weight_out_of_range_is_refused(weight: float) -> None:
    with pytest.raises(SearchError):
        Personalization(tuple(A), weight=weight)


def test_a_non_finite_profile_is_refused() -> None:
    with pytest.raises(SearchError):
        Personalization((float("nan"), 1.0))


# --------------------------------------------------------------------------- profiles


def test_a_click_weighs_half_after_one_half_life() -> None:
    assert decay(timedelta(days=30), 30.0) == pytest.approx(0.5)
    assert decay(timedelta(days=-3), 30.0) == 1.0


def test_the_profile_is_the_decayed_mean_of_the_clicked_embeddings() -> None:
    profile = empty_profile("", "u", "idx", 3, NOW).add(
        [(NOW, np.array(A)), (NOW + timedelta(days=30), np.array(B))], 30.0
    )
    direction = profile.direction()
    assert direction is not None
    # the older click counts half as much as the newer one
    assert direction[1] == pytest.approx(2 * direction[0])
    assert profile.clicks == 2 and profile.as_of == NOW + timedelta(days=30)


def test_folding_clicks_in_two_runs_equals_folding_them_at_once() -> None:
    clicks = [(NOW + timedelta(days=d), np.array(v)) for d, v in ((0, A), (10, B), (40, A))]
    once = empty_profile("", "u", "i", 3, NOW).add(clicks, 30.0)
    twice = empty_profile("", "u", "i", 3, NOW).add(clicks[:1], 30.0).add(clicks[1:], 30.0)
    assert np.allclose(once.vector_sum, twice.vector_sum)
    assert once.weight == pytest.approx(twice.weight)


def test_a_profile_has_a_fixed_size_whatever_its_clicks() -> None:
    clicks = [(NOW, np.array(A))] * 500
    profile = empty_profile("", "u", "i", 3, NOW).add(clicks, 30.0)
    assert len(profile.to_document()["vector_sum"]) == 3 and profile.clicks == 500


def test_a_stored_profile_reads_back_equal() -> None:
    profile = empty_profile("key-1", "u", "i", 3, NOW).add([(NOW, np.array(B))], 30.0)
    back = profile_from_document(profile.to_document())
    assert isinstance(back, Profile)
    assert back.direction() == profile.direction() and back.id == profile.id


def test_profile_ids_differ_by_client_user_and_index() -> None:
    ids = {profile_id(o, u, i) for o in ("", "key-1") for u in ("u", "v") for i in ("a", "b")}
    assert len(ids) == 8


def test_an_unreadable_profile_document_is_none() -> None:
    assert profile_from_document({"vector_sum": "nope"}) is None


# --------------------------------------------------------------------------- the request


def settings() -> ProxySettings:
    return ProxySettings()


def test_personalize_true_takes_the_proxys_weight() -> None:
    spec = parse_rerank({"personalize": True}, settings())
    assert spec.personal_weight == DEFAULT_WEIGHT


def test_personalize_false_or_absent_is_not_personalised() -> None:
    assert parse_rerank({"personalize": False}, settings()).personal_weight is None
    assert parse_rerank({}, settings()).personal_weight is None


def test_personalize_takes_a_weight() -> None:
    assert parse_rerank({"personalize": {"weight": 2}}, settings()).personal_weight == 2.0


@pytest.mark.parametrize(
    "raw", [{"weight": -1}, {"weight": "big"}, {"weight": 1e6}, {"lambda": 1}, "yes"]
)
def test_a_bad_personalize_object_is_a_400(raw: Any) -> None:
    with pytest.raises(ProxyError) as caught:
        parse_rerank({"personalize": raw}, settings())
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("index", "params", "refused"),
    [
        ("reranker-profiles", {}, "reranker-profiles"),
        ("docs,reranker-profiles", {}, "reranker-profiles"),
        ("rer*", {"expand_wildcards": "all"}, "rer*"),
        ("*", {"expand_wildcards": "open,hidden"}, "*"),
        ("*", {}, None),
        ("docs", {"expand_wildcards": "all"}, None),
    ],
)
def test_searches_that_would_reach_the_profiles_index_are_named(
    index: str, params: dict[str, str], refused: str | None
) -> None:
    assert profiles_refusal(index, params, settings()) == refused


# --------------------------------------------------------------------------- the simulation


def test_a_users_topic_makes_a_document_more_attractive() -> None:
    model = PreferenceModel(preference=0.3)
    user = SimUser("u", "beer")
    assert model.attractiveness(0, "beer", user) == pytest.approx(0.35)
    assert model.attractiveness(0, "ai", user) == pytest.approx(0.05)
    assert model.attractiveness(2, "beer", user) == 1.0


def test_clicks_ndcg_is_one_for_the_ideal_order_and_less_otherwise() -> None:
    assert clicks_ndcg([0.9, 0.5, 0.05], [0.05, 0.5, 0.9]) == pytest.approx(1.0)
    assert clicks_ndcg([0.05, 0.5, 0.9], [0.05, 0.5, 0.9]) < 1.0
    assert clicks_ndcg([0.0], [0.0]) == 0.0


def test_users_favourites_spread_over_the_topics() -> None:
    users = make_users(["a", "b", "c"], 6, 1, "p")
    favourites = [u.favourite for u in users]
    assert sorted(favourites) == ["a", "a", "b", "b", "c", "c"]


def test_click_dcg_is_higher_when_the_clicks_stand_higher() -> None:
    assert click_dcg([True, False, False]) > click_dcg([False, False, True]) > 0
    assert click_dcg([False] * 10) == 0.0


def test_the_weight_with_the_best_clicks_is_chosen() -> None:
    assert chosen_weight({0.0: [0.5, 0.6], 1.0: [0.9, 0.8], 2.0: [0.4]}) == 1.0


def test_a_tie_goes_to_the_smaller_weight_and_an_empty_arm_never_wins() -> None:
    assert chosen_weight({0.0: [0.5], 2.0: [0.5], 4.0: []}) == 0.0


def test_users_search_their_own_topic_as_often_as_their_focus_says() -> None:
    queries = [(f"q{i}", f"text {i}") for i in range(200)]
    topic = {f"q{i}": "beer" if i % 4 == 0 else "ai" for i in range(200)}
    user = SimUser("u", "beer")
    focused = assign([user], queries, 40, 1, focus=1.0, topic_of=topic.get)
    uniform = assign([user], queries, 40, 1, focus=0.0, topic_of=topic.get)
    assert all(topic[q] == "beer" for _, (q, _), _ in focused)
    assert sum(topic[q] == "beer" for _, (q, _), _ in uniform) < 20
    assert len({q for _, q, _ in focused}) == 40  # no repeats


def test_kmeans_separates_two_clear_topics() -> None:
    vectors = {f"a{i}": [1.0, 0.01 * i] for i in range(5)}
    vectors.update({f"b{i}": [0.01 * i, 1.0] for i in range(5)})
    topics = kmeans_topics(vectors, 2, seed=3)
    assert len({topics[f"a{i}"] for i in range(5)}) == 1
    assert topics["a0"] != topics["b0"]


def test_a_stored_profile_serves_only_its_own_user_and_client() -> None:
    from reranker.rerank.personal import personalization_of

    stored = empty_profile("key-1", "u", "i", 3, NOW).add([(NOW, np.array(B))], 30.0)
    source = stored.to_document()
    mine = personalization_of(source, ("key-1", "u"), 2.0, 180.0, now=NOW)
    assert mine is not None and mine.weight == 2.0 and mine.clicks == 1
    assert personalization_of(source, ("key-2", "u"), 2.0, 180.0, now=NOW) is None
    assert personalization_of(source, ("key-1", "v"), 2.0, 180.0, now=NOW) is None


def test_a_profile_past_the_retention_is_not_used() -> None:
    from reranker.rerank.personal import personalization_of

    source = empty_profile("", "u", "i", 3, NOW).add([(NOW, np.array(A))], 30.0).to_document()
    later = NOW + timedelta(days=181)
    assert personalization_of(source, (None, "u"), 1.0, 180.0, now=later) is None
    assert personalization_of(source, (None, "u"), 1.0, 180.0, now=NOW) is not None
