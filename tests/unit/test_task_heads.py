"""Signal heads (issue 12, item 3): head names and loss weights are checked, targets come from
the dataset's signal preset with held-out documents masked, and the masked loss ignores what
it must not learn from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reranker.errors import ConfigError
from reranker.task_heads import (
    SIGNAL_HEADS,
    document_sources,
    parse_heads,
    parse_loss_weights,
    predicted_feature,
    signal_targets,
)

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


@pytest.mark.skipif(not (SHARED / "scifact").is_dir(), reason="shared SciFact data not present")
def test_scifact_signals_are_joined_from_signals_jsonl_and_it_has_no_popularity() -> None:
    sources = document_sources(SHARED / "scifact")
    assert sources["4983"]["signals"]["citations"] == 756
    counts = signal_targets(SHARED / "scifact", ("popularity", "authority")).counts()
    assert counts["popularity"] == 0
    assert 4000 < counts["authority"] <= 5183


def test_the_signal_loss_ignores_masked_rows() -> None:
    torch = pytest.importorskip("torch")
    from reranker.task_heads import signal_loss

    predictions = {"popularity": torch.tensor([[0.9], [0.2], [0.5]])}
    targets = np.array([[0.0], [0.2], [0.5]], dtype=np.float32)
    usable = np.array([[False], [True], [True]])
    loss = signal_loss(predictions, targets, usable, ("popularity",))
    assert float(loss["popularity"]) == pytest.approx(0.0, abs=1e-7)
    none = signal_loss(predictions, targets, np.zeros((3, 1), dtype=bool), ("popularity",))
    assert float(none["popularity"]) == 0.0


def test_predictions_join_the_signal_columns_and_a_hit_without_one_is_flagged() -> None:
    from reranker.pipeline import RankedHit, with_predictions
    from reranker.signals import FeatureBatch

    def hit(doc: str, predicted: dict[str, float] | None) -> RankedHit:
        return RankedHit(doc, 0.0, None, 1, 0.0, predicted=predicted)

    signals = FeatureBatch(values=np.array([[0.3], [0.4]]), names=("authority",))
    joined = with_predictions(signals, [hit("a", {"popularity": 0.9}), hit("b", None)])
    assert joined is not None
    assert joined.names == ("authority", "predicted_popularity")
    assert joined.values.tolist() == [[0.3, 0.9], [0.4, 0.0]]
    assert joined.defaults_used.tolist() == [[False, False], [False, True]]
    assert with_predictions(signals, [hit("a", None)]) is signals
