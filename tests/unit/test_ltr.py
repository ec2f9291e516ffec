"""Feature files of `reranker ltr`: reading them and holding out queries for selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from reranker.errors import SourceError
from reranker.training.ltr import fit_blend, pool_features, read_features


def write_features(path: Path, queries: int, per_query: int = 3) -> Path:
    rows = [
        {
            "qid": f"q{q}",
            "doc_id": f"d{q}-{d}",
            "label": int(d == 0),
            "rank": d + 1,
            "features": {"relevance": float(q * 10 + d), "first_stage": 1.0 / (d + 1)},
        }
        for q in range(queries)
        for d in range(per_query)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_feature_file_reads_as_matrices_grouped_by_query(tmp_path: Path) -> None:
    data = read_features(write_features(tmp_path / "f.jsonl", queries=2))
    assert data.names == ("relevance", "first_stage")
    assert data.values[:, 0].tolist() == [0, 1, 2, 10, 11, 12]
    assert data.groups.tolist() == [3, 3] and data.query_ids == ["q0", "q1"]


def test_held_out_queries_are_disjoint_whole_and_stable(tmp_path: Path) -> None:
    data = read_features(write_features(tmp_path / "f.jsonl", queries=50))
    rest, held = data.split(0.2)
    assert set(rest.query_ids).isdisjoint(held.query_ids)
    assert sorted(rest.query_ids + held.query_ids) == sorted(data.query_ids)
    assert 3 <= len(held.query_ids) <= 20
    assert held.groups.sum() == len(held.values) == 3 * len(held.query_ids)
    first = held.query_ids[0]
    q = int(first[1:])
    assert held.values[0, 0] == q * 10  # rows travel with their query
    assert data.split(0.2)[1].query_ids == held.query_ids


def test_a_split_that_leaves_one_side_empty_is_refused(tmp_path: Path) -> None:
    data = read_features(write_features(tmp_path / "f.jsonl", queries=1))
    with pytest.raises(SourceError, match="leaves none"):
        data.split(0.5)
    with pytest.raises(SourceError, match="between 0 and 1"):
        data.split(1.5)


@pytest.mark.parametrize("kind", ["linear", "lambdamart"])
def test_a_blend_restricted_to_some_features_ignores_the_others(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("lightgbm")
    data = read_features(write_features(tmp_path / "f.jsonl", queries=40, per_query=6))
    rest, held = data.split(0.25)
    blend = fit_blend(kind, rest, held, only=["first_stage"])
    assert blend.feature_names == data.names
    shuffled = data.values.copy()
    shuffled[:, 0] = np.random.default_rng(0).normal(size=len(shuffled)) * 100
    assert np.allclose(blend.score(data.values), blend.score(shuffled))


def test_restricting_to_an_unknown_feature_is_refused(tmp_path: Path) -> None:
    data = read_features(write_features(tmp_path / "f.jsonl", queries=4))
    with pytest.raises(SourceError, match="unknown feature"):
        fit_blend("linear", data, None, only=["authority"])


def test_pooled_feature_files_keep_each_query_whole_and_apart(tmp_path: Path) -> None:
    a = read_features(write_features(tmp_path / "a.jsonl", queries=2))
    b = read_features(write_features(tmp_path / "b.jsonl", queries=3))
    pooled = pool_features([("a", a), ("b", b)])
    assert pooled.query_ids == ["a/q0", "a/q1", "b/q0", "b/q1", "b/q2"]
    assert pooled.groups.tolist() == [3] * 5 and len(pooled.values) == 15


def test_pooling_files_of_different_features_is_refused(tmp_path: Path) -> None:
    a = read_features(write_features(tmp_path / "a.jsonl", queries=2))
    other = tmp_path / "o.jsonl"
    other.write_text(
        json.dumps({"qid": "x", "doc_id": "d", "label": 1, "features": {"relevance": 1.0}}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(SourceError, match="differ"):
        pool_features([("a", a), ("o", read_features(other))])


def _model_card(folder: Path) -> Path:
    folder.mkdir()
    card = {"name": "m", "files": {}, "metrics": {}}
    (folder / "reranker.json").write_text(json.dumps(card), "utf-8")
    return folder


def _fit_into_card(tmp_path: Path, model: Path, *options: str) -> Result:
    from click.testing import CliRunner

    from reranker.cli import main

    features = write_features(tmp_path / "f.jsonl", queries=30)
    return CliRunner().invoke(
        main,
        ["ltr", "fit", str(features), *options, "--dev-fraction", "0.3",
         "--output", str(tmp_path / "b.json"), "--card", str(model)],
    )  # fmt: skip


def test_fit_with_card_records_a_default_blend_that_blend_model_applies(tmp_path: Path) -> None:
    from reranker.cli.eval import _blend_and_signals

    model = _model_card(tmp_path / "model")
    result = _fit_into_card(tmp_path, model, "--kind", "linear", "--only", "relevance,first_stage")
    assert result.exit_code == 0, result.output
    default = json.loads((model / "reranker.json").read_text("utf-8"))["default_blend"]
    assert set(default["weights"]) == {"relevance", "first_stage"}
    assert default["fitted_on"] == [str(tmp_path / "f.jsonl")]
    _, blend = _blend_and_signals("model", None, "beir-nosignals", model)
    assert blend.weights["relevance"] == default["weights"]["relevance"]
    assert blend.weights["first_stage"] == default["weights"]["first_stage"]


def test_fit_with_card_refuses_a_blend_that_reads_signals(tmp_path: Path) -> None:
    model = _model_card(tmp_path / "model")
    result = _fit_into_card(tmp_path, model, "--kind", "lambdamart")
    assert result.exit_code == 2
    assert "relevance and first_stage only" in result.output
    assert "default_blend" not in json.loads((model / "reranker.json").read_text("utf-8"))


def test_blend_model_without_a_default_in_the_card_is_a_clear_error(tmp_path: Path) -> None:
    from reranker.cli.eval import _blend_and_signals
    from reranker.errors import ConfigError

    with pytest.raises(ConfigError, match="no default blend"):
        _blend_and_signals("model", None, "beir-nosignals", _model_card(tmp_path / "model"))


def test_features_of_held_out_queries_split_again_for_selection(tmp_path: Path) -> None:
    from reranker.corpus import DEV_HOLDOUT_FRACTION, DEV_HOLDOUT_SEED, split_queries

    data = read_features(write_features(tmp_path / "f.jsonl", queries=400, per_query=1))
    qrels = {qid: {"d": 1} for qid in data.query_ids}
    held = set(split_queries(qrels, DEV_HOLDOUT_FRACTION, DEV_HOLDOUT_SEED)[1])
    rest, selection = data.subset(held).split(0.3)
    assert rest.query_ids and selection.query_ids
