"""The first-stage-aware cross-encoder: an untrained model ranks as the first stage did, its
export reads the features as a graph input, and the Scorer refuses to score without them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reranker.errors import ModelError
from reranker.rerank.features import FEATURE_NAMES

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from reranker.training.aware_model import (  # noqa: E402
    FirstStageAwareModel,
    load_aware,
    load_pretrained_encoder,
    save_aware,
)
from reranker.training.first_stage_aware import score_aware  # noqa: E402
from reranker.training.mining import QueryWindow, listwise_hybrid_groups  # noqa: E402
from tests.conftest import SCIFACT, require_data  # noqa: E402


@pytest.fixture(scope="module")
def aware_dir(minilm_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained first-stage-aware model over the shipped MiniLM, saved."""
    tokenizer, encoder = load_pretrained_encoder(minilm_weights_dir, "eager")
    model = FirstStageAwareModel(encoder, initial_scale=5.0)
    out = tmp_path_factory.mktemp("aware")
    save_aware(model, tokenizer, out)
    return out


PAIRS = [
    ("what causes rain", "Rain forms when water vapour condenses into droplets."),
    ("what causes rain", "Bananas are rich in potassium."),
    ("what causes rain", "Clouds hold water that falls as precipitation when heavy enough."),
    ("what causes rain", "The stock market fell on Tuesday."),
]


def _features(rows: int) -> np.ndarray:
    return np.random.default_rng(7).random((rows, len(FEATURE_NAMES)), dtype=np.float32)


def test_an_untrained_model_ranks_exactly_by_the_fused_first_stage_score(
    aware_dir: Path,
) -> None:
    model, tokenizer = load_aware(aware_dir)
    features = _features(len(PAIRS))
    logits = score_aware(model, tokenizer, PAIRS, features, max_length=64)
    np.testing.assert_allclose(logits, 5.0 * features[:, 0], rtol=1e-6)


def test_saved_model_records_its_features_and_normalisation(aware_dir: Path) -> None:
    config = json.loads((aware_dir / "first_stage_aware.json").read_text(encoding="utf-8"))
    assert config["features"] == list(FEATURE_NAMES)
    assert "minmax" in config["normalization"]
    assert config["feature_weights"] == [5.0, 0.0, 0.0]


def test_groups_put_the_positive_first_and_skip_ranks_around_positives() -> None:
    grades = [0] * 40
    grades[5] = 1
    window = QueryWindow(
        query_id="q",
        query="q text",
        doc_ids=[f"d{i}" for i in range(40)],
        features=np.zeros((40, 3), dtype=np.float32),
        grades=grades,
    )
    for seed in range(20):
        (group,) = listwise_hybrid_groups(
            [window], group_size=8, hard=4, skip_around=2, hard_depth=30, seed=seed
        )
        assert group.doc_ids[0] == "d5"
        ranks = [int(d[1:]) for d in group.doc_ids[1:]]
        assert len(ranks) == 7 and len(set(ranks)) == 7
        assert not {3, 4, 6, 7} & set(ranks)
        assert sum(r >= 30 for r in ranks) == 3  # the rest from deeper in the window


@pytest.fixture(scope="module")
def aware_export_dir(aware_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained model with a non-zero head, exported with int8."""
    from export.onnx_export import export_cross_encoder

    model, tokenizer = load_aware(aware_dir)
    with torch.no_grad():
        model.head.weight.copy_(torch.linspace(-0.05, 0.05, model.head.weight.numel()))
    trained = tmp_path_factory.mktemp("aware-trained")
    save_aware(model, tokenizer, trained)
    out = tmp_path_factory.mktemp("aware-export") / "reranker"
    return export_cross_encoder(trained, out, int8=True, name="test-aware")


@pytest.mark.slow
def test_export_takes_the_features_as_a_graph_input_and_records_them(
    aware_export_dir: Path,
) -> None:
    card = json.loads((aware_export_dir / "reranker.json").read_text(encoding="utf-8"))
    assert card["inputs"][-1] == "first_stage"
    assert card["first_stage_features"]["names"] == list(FEATURE_NAMES)
    assert card["variants"]["fp32"]["parity_max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_scorer_passes_the_features_into_the_graph(aware_export_dir: Path, aware_dir: Path) -> None:
    from reranker.rerank.scorer import Scorer

    scorer = Scorer(aware_export_dir)
    assert scorer.feature_names == FEATURE_NAMES
    features = _features(len(PAIRS))
    got = scorer.score(PAIRS, features=features)
    shifted = scorer.score(PAIRS, features=features + np.array([0.5, 0, 0], dtype=np.float32))
    np.testing.assert_allclose(shifted - got, 2.5, atol=1e-4)  # the fused weight, 5.0 × 0.5


@pytest.mark.slow
def test_scorer_refuses_an_aware_model_without_features(aware_export_dir: Path) -> None:
    from reranker.rerank.scorer import Scorer

    scorer = Scorer(aware_export_dir, variant="int8")
    with pytest.raises(ModelError, match="first-stage-aware"):
        scorer.score(PAIRS)
    with pytest.raises(ModelError, match="shape"):
        scorer.score(PAIRS, features=np.zeros((len(PAIRS), 2), dtype=np.float32))


@pytest.mark.slow
def test_int8_keeps_the_first_stage_prior_exact(aware_export_dir: Path) -> None:
    """The prior is a Mul + ReduceSum, which dynamic quantisation leaves in fp32."""
    from reranker.rerank.scorer import Scorer

    scorer = Scorer(aware_export_dir, variant="int8")
    features = _features(len(PAIRS))
    base = scorer.score(PAIRS, features=features)
    moved = scorer.score(PAIRS, features=features + np.array([0.1, 0, 0], dtype=np.float32))
    np.testing.assert_allclose(moved - base, 0.5, atol=1e-5)


def _tiny_beir(folder: Path, scifact: Path, queries_wanted: int = 12) -> Path:
    """A small real BEIR folder: SciFact train queries with their relevant abstracts and
    the first 60 abstracts as distractors."""
    import csv

    rows = [json.loads(line) for line in (scifact / "corpus.jsonl").open(encoding="utf-8")]
    by_id = {str(r["_id"]): r for r in rows}
    with (scifact / "qrels" / "train.tsv").open(encoding="utf-8") as handle:
        judged = [r for r in csv.DictReader(handle, delimiter="\t")][: queries_wanted * 2]
    keep = {str(r["_id"]) for r in rows[:60]} | {r["corpus-id"] for r in judged}
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for doc_id in sorted(keep):
            out.write(json.dumps(by_id[doc_id]) + "\n")
    qids = {r["query-id"] for r in judged}
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as out:
        for line in (scifact / "queries.jsonl").open(encoding="utf-8"):
            if json.loads(line)["_id"] in qids:
                out.write(line)
    with (folder / "qrels" / "train.tsv").open("w", encoding="utf-8") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for r in judged:
            out.write(f"{r['query-id']}\t{r['corpus-id']}\t1\n")
    return folder


def _tiny_config(data: Path, tmp_path: Path, base: Path, **overrides: Any) -> Any:
    from reranker.training.first_stage_aware import AwareTrainConfig

    settings: dict[str, Any] = {
        "datasets": [data],
        "output_dir": tmp_path / "out",
        "base_model": base,
        "dev_fraction": 0.3,
        "window": 20,
        "dev_window": 10,
        "max_length": 64,
        "groups_per_step": 2,
        "epochs": 1,
        "threads": 1,
        "cache_dir": tmp_path / "embeddings",
    }
    return AwareTrainConfig(**(settings | overrides))


@pytest.mark.slow
def test_a_tiny_run_keeps_the_best_held_out_checkpoint_and_records_it(
    tmp_path: Path, minilm_weights_dir: Path
) -> None:
    from reranker.training.first_stage_aware import train_aware

    scifact = require_data(SCIFACT)
    data = _tiny_beir(tmp_path / "tiny", scifact)
    config = _tiny_config(data, tmp_path, minilm_weights_dir, max_steps=3, eval_every=2)
    info = train_aware(config, progress=False)
    assert info["steps"] == 3
    assert [m["step"] for m in info["dev_curve"]] == [0.0, 2.0, 3.0]
    assert info["chosen"]["mean"] == max(m["mean"] for m in info["dev_curve"])
    assert info["dev_curve"][0]["mean"] == pytest.approx(info["dev"]["tiny"]["hybrid_nDCG@10"])
    model, _ = load_aware(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "train_info.json").read_text(encoding="utf-8"))
    assert saved["chosen"] == info["chosen"]
    assert model.feature_weights.shape == (len(FEATURE_NAMES),)


SHIPPED_AWARE = Path(__file__).resolve().parents[2] / "models" / "reranker-minilm-l6-aware"


def test_the_shipped_aware_model_reads_first_stage_features_and_records_its_metrics() -> None:
    from reranker.rerank.scorer import Scorer

    scorer = Scorer(SHIPPED_AWARE, variant="int8")
    assert scorer.feature_names == FEATURE_NAMES
    card = scorer.card
    assert card["training"]["train_info"]["features"] == list(FEATURE_NAMES)
    for dataset in ("scifact", "stackexchange", "dbpedia-entity-subset"):
        measured = card["metrics"][f"{dataset}/test/hybrid-top100/int8"]["ndcg@10"]
        first_stage = card["metrics"][f"{dataset}/test/hybrid-top100/first-stage-alone"]
        assert measured > first_stage["ndcg@10"]
    relevant = (
        "Vitamin D deficiency is associated with a higher risk of multiple sclerosis in "
        "a prospective cohort."
    )
    off_topic = "The stock market fell on Tuesday after the central bank raised rates."
    pairs = [("vitamin D and multiple sclerosis risk", p) for p in (relevant, off_topic)]
    same_first_stage = np.full((2, len(FEATURE_NAMES)), 0.5, dtype=np.float32)
    scores = scorer.score(pairs, features=same_first_stage)
    assert scores[0] > scores[1]  # with the first stage tied, the text decides


@pytest.mark.slow
def test_a_tiny_multi_task_run_trains_the_signal_heads_and_records_them(
    tmp_path: Path, minilm_weights_dir: Path
) -> None:
    import shutil

    from reranker.training.first_stage_aware import train_aware

    scifact = require_data(SCIFACT)
    data = _tiny_beir(tmp_path / "scifact", scifact)  # named so that its signal preset applies
    shutil.copy2(scifact / "signals.jsonl", data / "signals.jsonl")
    config = _tiny_config(
        data,
        tmp_path,
        minilm_weights_dir,
        max_steps=2,
        signal_heads=("authority", "freshness", "clickthrough"),
        loss_weights={"authority": 2.0},
        click_events=_relevant_clicks(data, tmp_path / "events.jsonl"),
    )
    info = train_aware(config, progress=False)
    heads = info["heads"]
    assert heads["names"] == ["relevance", "authority", "freshness", "clickthrough"]
    assert heads["loss_weights"] == {
        "relevance": 1.0,
        "authority": 2.0,
        "freshness": 1.0,
        "clickthrough": 1.0,
    }
    assert heads["targets"]["scifact"]["authority"] > 0
    assert heads["targets"]["clickthrough"]["pairs"] > 0
    assert "BCE" in heads["losses"]["clickthrough"]
    assert set(heads["final_losses"]) == {"relevance", "authority", "freshness", "clickthrough"}
    assert [m["step"] for m in info["dev_curve"]] == [0.0, 2.0]
    assert info["chosen"]["step"] == 2.0  # never the step-0 model with untrained heads
    assert all(v > 0 for v in heads["final_losses"].values())
    model, _ = load_aware(tmp_path / "out")
    assert model.signal_head_names == ("authority", "freshness", "clickthrough")


def _relevant_clicks(data: Path, path: Path) -> Path:
    """Simulated UBI events: every judged query searched 8 times, its relevant abstract shown
    first and clicked in 6, a distractor shown second and clicked in 1."""
    texts = {
        json.loads(line)["_id"]: json.loads(line)["text"]
        for line in (data / "queries.jsonl").open(encoding="utf-8")
    }
    judged = [
        line.split("\t")[:2] for line in (data / "qrels" / "train.tsv").read_text().splitlines()[1:]
    ]
    events = []
    for n, (query_id, doc_id) in enumerate(judged):
        for session in range(8):
            search = f"{n}-{session}"
            for position, doc, clicked in ((1, doc_id, session < 6), (2, "4983", session == 0)):
                for action in ("impression", "click") if clicked else ("impression",):
                    events.append(
                        {
                            "action_name": action,
                            "query_id": search,
                            "user_query": texts[query_id],
                            "event_attributes": {
                                "object": {"object_id": doc},
                                "position": {"ordinal": position},
                            },
                        }
                    )
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path
