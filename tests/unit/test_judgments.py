"""Click models and qrels from UBI events, without Elasticsearch: the models on synthetic
click logs with known parameters, the CLI on event files (good and bad)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from reranker.cli import main
from reranker.corpus import load_qrels
from reranker.errors import ConfigError, SourceError
from reranker.feedback.agreement import agreement, kendall_tau_b
from reranker.feedback.judgments import (
    ClickCounts,
    count_clicks,
    fit_coec,
    fit_ctr,
    fit_pbm,
    grade,
    judge,
    parse_thresholds,
)


def event(
    action: str,
    query_id: str,
    doc: str,
    position: int,
    text: str = "q one",
    session: str | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    return {
        "action_name": action,
        "query_id": query_id,
        "user_query": text,
        "session_id": session or f"session-of-{query_id}",
        **({"reranker": {"owner": owner}} if owner else {}),
        "timestamp": "2025-01-01T00:00:00.000Z",
        "event_attributes": {
            "object": {"object_id": doc},
            "position": {"ordinal": position},
        },
    }


def synthetic_counts(
    alphas: dict[str, float], theta: list[float], searches: int, seed: int = 1
) -> ClickCounts:
    """PBM users: each search shows the docs in a random order; position k is examined
    with probability theta[k-1], an examined doc clicked with its alpha."""
    rng = random.Random(seed)
    counts = ClickCounts()
    docs = list(alphas)
    for _ in range(searches):
        rng.shuffle(docs)
        for k, doc in enumerate(docs, start=1):
            clicked = rng.random() < theta[k - 1] and rng.random() < alphas[doc]
            counts.add(("q", doc), k, clicked)
    return counts


ALPHAS = {"a": 0.9, "b": 0.6, "c": 0.3, "d": 0.1, "e": 0.05}
THETA = [1.0, 0.5, 0.33, 0.25, 0.2]


def test_pbm_by_em_recovers_the_examination_and_attractiveness_it_was_given() -> None:
    fitted = fit_pbm(synthetic_counts(ALPHAS, THETA, 20_000))
    assert fitted.converged
    for doc, alpha in ALPHAS.items():
        assert fitted.scores[("q", doc)] == pytest.approx(alpha, abs=0.04)
    for k, theta in enumerate(THETA, start=1):
        assert fitted.positions[k] == pytest.approx(theta, abs=0.04)
    assert fitted.positions[1] == 1.0  # scaled so that the top is always examined


def test_pbm_keeps_a_pair_nobody_looked_at_near_the_average_and_can_leave_it_unjudged() -> None:
    counts = synthetic_counts(ALPHAS, THETA, 3000)
    for _ in range(20):  # shown only at position 30, never clicked: no evidence either way
        counts.add(("q", "deep"), 30, False)
    for k in range(1, 6):  # what position 30 looks like, from other queries
        for _ in range(400):
            counts.add(("other", f"o{k}"), 30, False)
    fitted = fit_pbm(counts)
    assert fitted.examinations is not None
    assert fitted.examinations[("q", "deep")] < 1.0
    shown = counts.impressions()
    mean = sum(fitted.scores[pair] * n for pair, n in shown.items()) / sum(shown.values())
    # no evidence: it stays at the mean attractiveness, neither a flat prior's 0.5 nor 0
    assert fitted.scores[("q", "deep")] == pytest.approx(mean, abs=0.05)
    judged = judge(counts, fitted, min_impressions=10, thresholds=(0.2, 0.5), min_examinations=4)
    graded = {doc for docs in judged.qrels.values() for doc in docs}
    assert "deep" not in graded and {"a", "e"} <= graded
    with pytest.raises(ConfigError, match="needs the pbm model"):
        judge(counts, fit_ctr(counts), min_impressions=1, thresholds=(0.5,), min_examinations=1)
    with pytest.raises(SourceError, match="lower --min-examinations"):
        judge(counts, fitted, min_impressions=1, thresholds=(0.5,), min_examinations=1e9)


def test_coec_and_pbm_see_through_position_where_plain_click_rate_does_not() -> None:
    # "top" is mediocre but mostly shown first; "deep" is better but mostly shown fifth;
    # otherwise everything moves around, so position effects can be learnt
    rng = random.Random(3)
    counts = ClickCounts()
    alphas = {"top": 0.3, "m1": 0.5, "m2": 0.5, "m3": 0.5, "deep": 0.6}
    for _ in range(20_000):
        order = list(alphas)
        if rng.random() < 0.2:
            rng.shuffle(order)
        shown = [(doc, alphas[doc]) for doc in order]
        for k, (doc, alpha) in enumerate(shown, start=1):
            counts.add(("q", doc), k, rng.random() < THETA[k - 1] and rng.random() < alpha)
    ctr = fit_ctr(counts).scores
    assert ctr[("q", "top")] > ctr[("q", "deep")]  # fooled by position
    for fitted in (fit_coec(counts), fit_pbm(counts)):
        assert fitted.scores[("q", "deep")] > fitted.scores[("q", "top")], fitted.model


def test_a_click_implies_its_impression_and_repeated_events_count_once() -> None:
    events = [
        event("impression", "s1", "a", 1),
        event("impression", "s1", "a", 1),
        event("click", "s1", "a", 1),
        event("click", "s1", "b", 2),  # no impression sent for b
        event("impression", "s2", "a", 2),
    ]
    counts, report = count_clicks(events)
    assert report.searches == 2
    assert report.clicks_without_impression == 1
    assert counts.impressions() == {("q one", "a"): 2, ("q one", "b"): 1}
    assert counts.clicks() == {("q one", "a"): 1, ("q one", "b"): 1}


def test_events_without_object_position_or_query_text_are_skipped_and_counted() -> None:
    bare = event("click", "s1", "a", 1)
    del bare["event_attributes"]["position"]
    nameless = event("impression", "s2", "a", 1)
    del nameless["user_query"]
    counts, report = count_clicks([bare, nameless, event("purchase", "s3", "a", 1)])
    assert not counts.rows
    assert report.skipped == {
        "no object_id or position": 1,
        "action purchase": 1,
        "search without user_query": 1,
    }


def test_grades_count_the_thresholds_a_score_reaches() -> None:
    assert [grade(s, (0.2, 0.5)) for s in (0.0, 0.2, 0.49, 0.5, 1.0)] == [0, 1, 1, 2, 2]
    assert parse_thresholds("0.1, 0.4") == (0.1, 0.4)
    for bad in ("0.5,0.1", "x", "", "nan"):
        with pytest.raises(ConfigError):
            parse_thresholds(bad)


def test_pairs_under_the_impression_threshold_are_left_out_and_none_over_it_is_an_error() -> None:
    counts = ClickCounts()
    for _ in range(5):
        counts.add(("q", "a"), 1, True)
    counts.add(("q", "b"), 2, False)
    fitted = fit_ctr(counts)
    judged = judge(counts, fitted, min_impressions=3, thresholds=(0.5,))
    assert judged.qrels == {judged_id(judged): {"a": 1}}
    with pytest.raises(SourceError, match=r"no .* pair has 6 impressions .* most any has is 5"):
        judge(counts, fitted, min_impressions=6, thresholds=(0.5,))


def judged_id(judgments: Any) -> str:
    (query_id,) = judgments.qrels
    assert query_id.startswith("ubi-")
    return str(query_id)


def test_query_ids_come_from_the_dataset_by_text_and_unknown_texts_are_reported() -> None:
    counts = ClickCounts()
    for text in ("vitamin D bones", "not in the dataset"):
        for _ in range(3):
            counts.add((text, "d1"), 1, True)
    fitted = fit_ctr(counts)
    # the dataset's texts are matched with whitespace collapsed (as the events' are)
    dataset = {"q7": " vitamin D  bones", "q8": "other"}
    judged = judge(counts, fitted, min_impressions=1, thresholds=(0.5,), dataset_queries=dataset)
    assert judged.qrels == {"q7": {"d1": 1}}
    assert judged.unmatched_queries == ["not in the dataset"]
    with pytest.raises(SourceError, match="none of the 2 judged queries"):
        judge(counts, fitted, min_impressions=1, thresholds=(0.5,), dataset_queries={"x": "y"})


def test_kendall_tau_b_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(5)
    x = [rng.random() for _ in range(300)]
    y = [rng.choice([0, 0, 0, 1, 2]) for _ in range(300)]
    assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-9)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) is None


def test_agreement_with_editorial_qrels_counts_unjudged_pairs_as_grade_zero() -> None:
    counts = ClickCounts()
    for doc, (shown, clicks) in {"good": (10, 8), "meh": (10, 3), "bad": (10, 0)}.items():
        for i in range(shown):
            counts.add(("q", doc), 1, i < clicks)
    judged = judge(counts, fit_ctr(counts), min_impressions=1, thresholds=(0.2, 0.5))
    (query_id,) = judged.qrels
    truth = {query_id: {"good": 2, "meh": 1}}
    result = agreement(judged, truth)
    assert result["pairs"] == 3
    assert result["kendall_tau_b"] == pytest.approx(1.0)
    assert result["top1_relevant"] == 1.0
    assert result["exact_grade_agreement"] == 1.0


def test_click_ranked_lists_are_scored_by_ndcg_and_unshown_relevant_pairs_count_as_missed() -> None:
    counts = ClickCounts()
    for doc, (shown, clicks) in {"meh": (10, 8), "good": (10, 3), "bad": (10, 0)}.items():
        for i in range(shown):
            counts.add(("q", doc), 1, i < clicks)
    judged = judge(counts, fit_ctr(counts), min_impressions=1, thresholds=(0.2, 0.5))
    (query_id,) = judged.qrels
    perfect = agreement(judged, {query_id: {"meh": 2, "good": 1}})
    assert perfect["ndcg@10_of_click_ranked_lists"] == pytest.approx(1.0)
    assert perfect["relevant_pairs_recovered"] == 1.0
    swapped = agreement(judged, {query_id: {"meh": 1, "good": 2, "never-shown": 2}})
    assert swapped["ndcg@10_of_click_ranked_lists"] < 0.8
    assert swapped["relevant_pairs_of_judged_queries"] == 3
    assert swapped["relevant_pairs_recovered"] == pytest.approx(2 / 3, abs=1e-4)


# ------------------------------------------------------------------ the command


def write_events(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def many_events() -> list[dict[str, Any]]:
    out = []
    for n in range(12):
        out.append(event("impression", f"s{n}", "d1", 1, "vitamin D bones"))
        out.append(event("impression", f"s{n}", "d2", 2, "vitamin D bones"))
        if n % 2:
            out.append(event("click", f"s{n}", "d1", 1, "vitamin D bones"))
    return out


def test_judgments_command_writes_beir_qrels_that_the_dataset_reader_accepts(
    tmp_path: Path,
) -> None:
    dataset = tmp_path / "ds"
    (dataset / "qrels").mkdir(parents=True)
    (dataset / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "vitamin D bones"}) + "\n", encoding="utf-8"
    )
    events = write_events(tmp_path / "events.jsonl", many_events())
    output = dataset / "qrels" / "clicks.tsv"
    result = CliRunner().invoke(
        main,
        [
            "judgments", "--events", str(events), "--dataset", str(dataset),
            "--output", str(output), "--model", "coec", "--min-impressions", "10",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["pairs_judged"] == 2
    assert output.read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"
    qrels = load_qrels(dataset, "clicks")
    assert set(qrels) == {"q1"}
    assert qrels["q1"]["d1"] > qrels["q1"]["d2"]


def test_no_pair_over_the_impression_threshold_is_a_clear_error_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    events = write_events(tmp_path / "events.jsonl", many_events())
    output = tmp_path / "qrels.tsv"
    result = CliRunner().invoke(
        main,
        ["judgments", "--events", str(events), "--output", str(output), "--min-impressions", "50"],
    )
    assert result.exit_code == 4
    assert "no (query, document) pair has 50 impressions" in result.output
    assert not output.exists()
    assert list(tmp_path.iterdir()) == [events]  # no temporary file left either


def test_a_malformed_event_line_is_an_error_naming_it_and_an_old_file_stays(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps(event("impression", "s", "d", 1)) + "\n{not json\n", encoding="utf-8"
    )
    output = tmp_path / "qrels.tsv"
    output.write_text("query-id\tcorpus-id\tscore\nold\tdoc\t1\n", encoding="utf-8")
    result = CliRunner().invoke(
        main, ["judgments", "--events", str(events), "--output", str(output)]
    )
    assert result.exit_code == 4
    assert f"{events}:2: invalid JSON" in result.output
    assert "old\tdoc\t1" in output.read_text()


def test_click_qrels_in_a_beir_folder_are_read_by_train_eval_and_ltr(tmp_path: Path) -> None:
    from reranker.evaluation.runs import judged_queries
    from reranker.training.data import load_training_pairs

    dataset = tmp_path / "clicks-ds"
    (dataset / "qrels").mkdir(parents=True)
    docs = [{"_id": d, "title": "", "text": f"vitamin D text {d}"} for d in ("d1", "d2")]
    (dataset / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (dataset / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "vitamin D bones"}))
    events = write_events(tmp_path / "events.jsonl", many_events())
    output = dataset / "qrels" / "clicks.tsv"
    result = CliRunner().invoke(
        main,
        ["judgments", "--events", str(events), "--dataset", str(dataset), "--output",
         str(output), "--model", "ctr", "--thresholds", "0.2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    queries, qrels = judged_queries(dataset, "clicks")  # what eval and ltr log-features read
    assert queries == {"q1": "vitamin D bones"}
    assert qrels == {"q1": {"d1": 1, "d2": 0}}
    pairs = load_training_pairs([output], negatives_per_positive=0)  # what train reads
    assert sorted(p.label for p in pairs.pairs) == [0.0, 1.0]


def test_a_session_weighs_one_search_per_query_however_often_it_repeats_it() -> None:
    replayed = [
        e
        for i in range(12)
        for e in (event("impression", f"r{i}", "forged", 1, session="mallory"),
                  event("click", f"r{i}", "forged", 1, session="mallory"))
    ]  # fmt: skip
    counts, report = count_clicks(replayed)
    assert report.searches == 1
    assert counts.impressions() == {("q one", "forged"): 1}
    assert report.skipped == {"repeat of a query in one session": 11}
    # the same session under another client (API key) is another session
    other = [event("impression", "x1", "forged", 1, session="mallory", owner="key-b")]
    counts, report = count_clicks(replayed + other)
    assert report.searches == 2


def test_a_session_with_more_searches_than_a_person_makes_is_dropped_whole() -> None:
    bot = [event("click", f"b{i}", "d", 1, text=f"query {i}", session="bot") for i in range(6)]
    person = [event("click", "p1", "d", 1, text="query 0", session="alice")]
    counts, report = count_clicks(bot + person, max_session_searches=5)
    assert report.searches == 1
    assert counts.impressions() == {("query 0", "d"): 1}
    assert report.skipped == {"search of a session with over 5 searches": 6}
    _, unbounded = count_clicks(bot + person, max_session_searches=None)
    assert unbounded.searches == 7


def forged_and_honest(forgers: int, honest: int) -> list[dict[str, Any]]:
    """A forging client (key-m), in many invented sessions, is shown "forged" then "truth" and
    clicks "forged"; honest users of another client (key-h) were shown the same and clicked
    "truth"."""
    forged = [
        e
        for i in range(forgers)
        for e in (event("impression", f"m{i}", "forged", 1, session=f"m{i}", owner="key-m"),
                  event("impression", f"m{i}", "truth", 2, session=f"m{i}", owner="key-m"),
                  event("click", f"m{i}", "forged", 1, session=f"m{i}", owner="key-m"))
    ]  # fmt: skip
    honest_events = [
        e
        for i in range(honest)
        for e in (event("impression", f"h{i}", "forged", 1, session=f"h{i}", owner="key-h"),
                  event("impression", f"h{i}", "truth", 2, session=f"h{i}", owner="key-h"),
                  event("click", f"h{i}", "truth", 2, session=f"h{i}", owner="key-h"))
    ]  # fmt: skip
    return forged + honest_events


def test_one_client_holds_at_most_its_share_of_a_querys_searches() -> None:
    counts, report = count_clicks(forged_and_honest(forgers=12, honest=4))
    assert report.searches == 8  # the forger keeps as many as the others together (share 0.5)
    assert counts.clicks() == {("q one", "forged"): 4, ("q one", "truth"): 4}
    assert report.skipped == {"searches of one client beyond 0.5 of a query's": 8}
    _, higher = count_clicks(forged_and_honest(forgers=12, honest=4), max_owner_share=0.75)
    assert higher.searches == 16  # 0.75 / 0.25 × 4 = 12: all the forger's are kept
    with pytest.raises(ValueError, match=r"at least 0\.5"):
        count_clicks(forged_and_honest(forgers=1, honest=1), max_owner_share=0.2)


def test_a_forging_client_cannot_outgrade_what_other_clients_clicked() -> None:
    counts, _ = count_clicks(forged_and_honest(forgers=12, honest=4))
    for fitted in (fit_ctr(counts), fit_pbm(counts)):  # the forger is held to a draw at most
        assert fitted.scores[("q one", "forged")] <= fitted.scores[("q one", "truth")]
    unbounded, _ = count_clicks(forged_and_honest(forgers=12, honest=4), max_owner_share=None)
    for fitted in (fit_ctr(unbounded), fit_pbm(unbounded)):  # what the forger got uncapped
        assert fitted.scores[("q one", "forged")] > fitted.scores[("q one", "truth")]


def test_a_query_only_one_client_searched_keeps_all_its_searches() -> None:
    counts, report = count_clicks(forged_and_honest(forgers=12, honest=0))
    assert report.searches == 12
    assert counts.clicks() == {("q one", "forged"): 12, ("q one", "truth"): 0}
