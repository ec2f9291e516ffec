"""Signal heads (issue 12, item 3): head names and loss weights are checked, targets come from
the dataset's signal preset with held-out documents masked, and the masked loss ignores what
it must not learn from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reranker.errors import ConfigError, SourceError
from reranker.rerank.heads import CLICK_HEAD, SIGNAL_HEADS, predicted_feature
from reranker.training.heads import (
    click_loss,
    click_targets,
    document_sources,
    parse_heads,
    parse_loss_weights,
    signal_targets,
)
from tests.conftest import require_data

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_heads_come_back_in_canonical_order_without_relevance() -> None:
    assert parse_heads("freshness, relevance,popularity") == ("popularity", "freshness")
    assert parse_heads("relevance") == ()


def test_an_unknown_head_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="clicks"):
        parse_heads("relevance,clicks")


def test_heads_without_relevance_are_refused() -> None:
    with pytest.raises(ConfigError, match="relevance"):
        parse_heads("popularity,authority")


def test_loss_weights_default_to_one_per_head() -> None:
    weights = parse_loss_weights("popularity=2.5", ("popularity", "authority"))
    assert weights == {"relevance": 1.0, "popularity": 2.5, "authority": 1.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("relevance=0,popularity=0", "every loss weight is zero"),
        ("freshness=1", "not a head of this model"),
        ("popularity=-1", "≥ 0"),
        ("popularity=nan", "finite"),
        ("popularity", "NAME=WEIGHT"),
        ("popularity=lots", "not a number"),
    ],
)
def test_bad_loss_weights_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_loss_weights(text, ("popularity",))


def test_predicted_features_are_named_after_their_head() -> None:
    assert [predicted_feature(h) for h in SIGNAL_HEADS] == [
        "predicted_popularity",
        "predicted_authority",
        "predicted_freshness",
        "predicted_clickthrough",
    ]


def _write_corpus(folder: Path, docs: list[dict[str, object]]) -> Path:
    folder.mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for doc in docs:
            out.write(json.dumps(doc) + "\n")
    return folder


def test_targets_are_the_presets_features_and_held_out_documents_are_masked(
    tmp_path: Path,
) -> None:
    folder = _write_corpus(
        tmp_path / "stackexchange",
        [
            {"_id": "a", "text": "x", "signals": {"Score": 3, "OwnerReputation": 600}},
            {"_id": "b", "text": "y", "signals": {"Score": 9}},
            {"_id": "c", "text": "z", "signals": {"Score": 1, "OwnerReputation": 10}},
        ],
    )
    targets = signal_targets(folder, ("popularity", "authority"), held_out={"c"})
    values, usable = targets.rows(["a", "b", "c", "unknown"])
    assert values[0].tolist() == pytest.approx([0.5, 0.5])  # saturation at the pivot
    assert values[1, 0] == pytest.approx(0.75)
    assert usable.tolist() == [[True, True], [True, False], [False, False], [False, False]]
    assert values[2].tolist() == [0.0, 0.0]  # a held-out target is not even kept


def test_a_dataset_without_a_preset_has_no_usable_target(tmp_path: Path) -> None:
    folder = _write_corpus(tmp_path / "mycorpus", [{"_id": "a", "text": "x", "Score": 3}])
    assert signal_targets(folder, ("popularity",)).counts() == {"popularity": 0}


def test_scifact_signals_are_joined_from_signals_jsonl_and_it_has_no_popularity() -> None:
    require_data(SHARED / "scifact")
    sources = document_sources(SHARED / "scifact")
    assert sources["4983"]["signals"]["citations"] == 756
    counts = signal_targets(SHARED / "scifact", ("popularity", "authority")).counts()
    assert counts["popularity"] == 0
    assert 4000 < counts["authority"] <= 5183


def test_the_signal_loss_ignores_masked_rows() -> None:
    torch = pytest.importorskip("torch")
    from reranker.training.heads import signal_loss

    predictions = {"popularity": torch.tensor([[0.9], [0.2], [0.5]])}
    targets = np.array([[0.0], [0.2], [0.5]], dtype=np.float32)
    usable = np.array([[False], [True], [True]])
    loss = signal_loss(predictions, targets, usable, ("popularity",))
    assert float(loss["popularity"]) == pytest.approx(0.0, abs=1e-7)
    none = signal_loss(predictions, targets, np.zeros((3, 1), dtype=bool), ("popularity",))
    assert float(none["popularity"]) == 0.0


def test_predictions_join_the_signal_columns_and_a_hit_without_one_is_flagged() -> None:
    from reranker.blend.signals import FeatureBatch
    from reranker.rerank.pipeline import RankedHit, with_predictions

    def hit(doc: str, predicted: dict[str, float] | None) -> RankedHit:
        return RankedHit(doc, 0.0, None, 1, 0.0, predicted=predicted)

    signals = FeatureBatch(values=np.array([[0.3], [0.4]]), names=("authority",))
    joined = with_predictions(signals, [hit("a", {"popularity": 0.9}), hit("b", None)])
    assert joined is not None
    assert joined.names == ("authority", "predicted_popularity")
    assert joined.values.tolist() == [[0.3, 0.9], [0.4, 0.0]]
    assert joined.defaults_used.tolist() == [[False, False], [False, True]]
    assert with_predictions(signals, [hit("a", None)]) is signals


# ------------------------------------------------------------------ the click-through head


def click_event(action: str, search: str, doc: str, position: int, text: str) -> dict[str, object]:
    return {
        "action_name": action,
        "query_id": search,
        "user_query": text,
        "session_id": f"session-of-{search}",  # one user per search
        "timestamp": "2025-01-01T00:00:00.000Z",
        "event_attributes": {"object": {"object_id": doc}, "position": {"ordinal": position}},
    }


def write_click_events(path: Path) -> Path:
    """20 searches of a training query showing d1 and d2, in turn at the top: d1 clicked in
    15, d2 in 2; and 20 of a test query whose d9 is always clicked."""
    events = []
    for n in range(20):
        first, second = ("d1", "d2") if n % 2 else ("d2", "d1")
        events.append(click_event("impression", f"t{n}", first, 1, "Vitamin D  bones"))
        events.append(click_event("impression", f"t{n}", second, 2, "Vitamin D  bones"))
        if n % 4:
            events.append(click_event("click", f"t{n}", "d1", 1 if first == "d1" else 2, "x"))
        if n in (2, 6):
            events.append(click_event("click", f"t{n}", "d2", 1, "x"))
        events.append(click_event("impression", f"x{n}", "d9", 1, "a test query"))
        events.append(click_event("click", f"x{n}", "d9", 1, "a test query"))
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def test_click_targets_are_the_click_models_attractiveness_of_training_query_pairs_only(
    tmp_path: Path,
) -> None:
    targets = click_targets(write_click_events(tmp_path / "events.jsonl"), ["Vitamin D bones"])
    assert {doc for _, doc in targets.scores} == {"d1", "d2"}  # the test query's pair is not
    values, usable = targets.rows(["Vitamin D  bones", "Vitamin D bones", "x"], ["d1", "d2", "d1"])
    assert list(usable) == [True, True, False]
    assert values[0] > 0.5 > values[1]
    assert targets.counts()["pairs"] == 2 and targets.counts()["pairs_seen"] == 3


def test_pairs_examined_too_rarely_train_no_click_through(tmp_path: Path) -> None:
    events = write_click_events(tmp_path / "events.jsonl")
    with pytest.raises(SourceError, match="nothing to train click-through on"):
        click_targets(events, ["Vitamin D bones"], min_examinations=50)
    with pytest.raises(SourceError, match="nothing to train click-through on"):
        click_targets(events, ["a query nobody searched"])


def test_the_click_loss_is_the_cross_entropy_of_the_usable_pairs_only() -> None:
    torch = pytest.importorskip("torch")
    prediction = torch.tensor([0.8, 0.3, 0.5])
    values = np.array([1.0, 0.0, 1.0], dtype=np.float32)
    loss = click_loss(prediction, values, np.array([True, True, False]))
    expected = -(np.log(0.8) + np.log(0.7)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(click_loss(prediction, values, np.zeros(3, dtype=bool))) == 0.0


def test_the_click_through_head_and_click_events_come_together(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from reranker.training.first_stage_aware import AwareTrainConfig

    events = write_click_events(tmp_path / "events.jsonl")
    common = {"datasets": [tmp_path], "output_dir": tmp_path / "out"}
    with pytest.raises(ConfigError, match="click events"):
        AwareTrainConfig(**common, signal_heads=(CLICK_HEAD,))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="click events"):
        AwareTrainConfig(**common, signal_heads=("popularity",), click_events=events)  # type: ignore[arg-type]
    config = AwareTrainConfig(**common, signal_heads=(CLICK_HEAD,), click_events=events)  # type: ignore[arg-type]
    assert config.signal_heads == (CLICK_HEAD,)
