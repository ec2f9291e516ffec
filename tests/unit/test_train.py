"""Tests of reranker/training/cross_encoder.py: data loading, the test-split guards, BM25, a tiny
real training
run with the shipped MiniLM weights, resume, and model-folder errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from reranker.errors import ConfigError, ModelError, RerankerError, SourceError  # noqa: E402
from reranker.metrics import ranking_metrics  # noqa: E402
from reranker.training import checkpoints  # noqa: E402
from reranker.training import cross_encoder as tr  # noqa: E402
from reranker.training import cross_encoder_config as cfg  # noqa: E402
from reranker.training import data as td  # noqa: E402
from reranker.training import dev as dev_scoring  # noqa: E402
from reranker.training.losses import listwise_loss  # noqa: E402
from tests.conftest import require_data  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SCIFACT_TRIPLES = SHARED / "train" / "scifact_train_triples.jsonl"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _triple(
    q: str, pos: str, neg: str, qid: str = "1", source: str = "toy-train"
) -> dict[str, Any]:
    return {"query": q, "positive": pos, "negative": neg, "source": source, "query_id": qid}


def _beir(folder: Path, split: str = "dev") -> Path:
    """A small BEIR folder (hand-written) with one qrels split."""
    docs = [
        ("d1", "Hops", "Citra hops give beer citrus and tropical fruit aromas."),
        ("d2", "Yeast", "Lager yeast ferments at cold temperatures."),
        ("d3", "", "Backpropagation computes gradients of a neural network loss."),
        ("d4", "", "Quantum gates act on qubits as unitary matrices."),
        ("d5", "Barley", "Malted barley provides the sugars for fermentation."),
        ("d6", "", "A qubit is a two-level quantum system."),
        ("d7", "Dry hopping", "Hops added after the boil keep their aroma."),
        ("d8", "", "Error correction protects a logical qubit with many physical ones."),
    ]
    _write_jsonl(folder / "corpus.jsonl", [{"_id": i, "title": t, "text": x} for i, t, x in docs])
    _write_jsonl(
        folder / "queries.jsonl",
        [
            {"_id": "q1", "text": "what do citra hops taste like"},
            {"_id": "q2", "text": "what is a qubit"},
        ],
    )
    qrels = folder / "qrels" / f"{split}.tsv"
    qrels.parent.mkdir(parents=True, exist_ok=True)
    qrels.write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td6\t2\nq2\td4\t1\n", encoding="utf-8"
    )
    return qrels


# ---------------------------------------------------------------------------- data loading


def test_triples_become_deduplicated_labelled_pairs(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "t.jsonl",
        [
            _triple("q", "P", "N1"),
            _triple("q", "P", "N2"),  # same positive again: one (q, P, 1) pair
            _triple("q", "P", "N1"),  # exact duplicate triple
            _triple("other", "N1", "P", qid="2"),  # same texts, other query: distinct pairs
        ],
    )
    data = td.load_training_pairs([path])
    got = sorted((p.query, p.passage, p.label) for p in data.pairs)
    assert got == [
        ("other", "N1", 1.0),
        ("other", "P", 0.0),
        ("q", "N1", 0.0),
        ("q", "N2", 0.0),
        ("q", "P", 1.0),
    ]
    assert data.stats["positives"] == 2 and data.stats["negatives"] == 3
    assert data.stats["duplicates_removed"] == 3
    assert data.stats["files"][0]["rows"] == 4


def test_conflicting_labels_keep_the_positive(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "t.jsonl", [_triple("q", "A", "B"), _triple("q", "B", "C")])
    data = td.load_training_pairs([path])
    labels = {p.passage: p.label for p in data.pairs}
    assert labels == {"A": 1.0, "B": 1.0, "C": 0.0}
    assert data.stats["label_conflicts"] == 1


def test_exclude_sources(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "t.jsonl",
        [
            _triple("q", "A", "B", source="scifact-train"),
            _triple("r", "C", "D", source="wiki-train"),
        ],
    )
    data = td.load_training_pairs([path], exclude_sources=["scifact-train"])
    assert {p.query for p in data.pairs} == {"r"}
    assert data.stats["files"][0]["excluded_rows"] == 1
    with pytest.raises(SourceError, match="no training pairs"):
        td.load_training_pairs([path], exclude_sources=["scifact-train", "wiki-train"])


def test_malformed_triples_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"bad.jsonl:1: missing or empty negative"):
        td.load_training_pairs([bad])
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"bad.jsonl:1: invalid JSON"):
        td.load_training_pairs([bad])
    with pytest.raises(SourceError, match="no such file"):
        td.load_training_pairs([tmp_path / "missing.jsonl"])


def test_beir_qrels_source_gives_positives_and_bm25_negatives(tmp_path: Path) -> None:
    qrels = _beir(tmp_path / "toy", split="train")
    data = td.load_training_pairs([qrels], negatives_per_positive=2, bm25_depth=5)
    positives = {(p.query, p.passage) for p in data.pairs if p.label == 1.0}
    assert len(positives) == 3
    negatives = [p for p in data.pairs if p.label == 0.0]
    assert negatives, "BM25 negatives expected"
    # a judged document is never a negative of its own query
    assert not {(p.query, p.passage) for p in negatives} & positives
    assert all(p.source == "toy-train" for p in data.pairs)


# ---------------------------------------------------------------------------- test-split guards


def test_test_split_is_refused(tmp_path: Path) -> None:
    qrels = _beir(tmp_path / "toy", split="test")
    with pytest.raises(SourceError, match="refusing to use a test split"):
        td.resolve_source(qrels, "train")
    with pytest.raises(SourceError, match="refusing to use a test split"):
        td.build_dev_set(qrels)
    config = cfg.TrainConfig(train_files=[qrels], output_dir=tmp_path / "out")
    with pytest.raises(SourceError, match="test split"):
        tr.train(config, progress=False)


def test_triples_of_a_test_source_are_refused(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "t.jsonl", [_triple("q", "A", "B", source="scifact-test")])
    with pytest.raises(SourceError, match="test split"):
        td.load_training_pairs([path])


def test_triples_with_test_query_ids_are_refused(tmp_path: Path) -> None:
    # layout as in shared/data: <data>/train/<x>_train_triples.jsonl beside <data>/<dataset>/
    _beir(tmp_path / "data" / "toy", split="test")  # test qrels judge q1 and q2
    path = _write_jsonl(
        tmp_path / "data" / "train" / "toy_train_triples.jsonl",
        [_triple("q", "A", "B", qid="q2", source="toy-train")],
    )
    with pytest.raises(SourceError, match="appear in the test qrels"):
        td.load_training_pairs([path])
    # the same check with explicitly given test qrels, for a file elsewhere
    elsewhere = _write_jsonl(tmp_path / "x.jsonl", [_triple("q", "A", "B", qid="q1")])
    td.load_training_pairs([elsewhere])  # no test qrels known: accepted
    with pytest.raises(SourceError, match="appear in the test qrels"):
        td.load_training_pairs(
            [elsewhere], test_qrels=[tmp_path / "data" / "toy" / "qrels" / "test.tsv"]
        )


def test_shared_triples_pass_the_test_query_check() -> None:
    require_data(SCIFACT_TRIPLES)
    data = td.load_training_pairs([SCIFACT_TRIPLES])
    checked = data.stats["files"][0]["test_qrels_checked"]
    assert checked and checked[0].endswith("scifact/qrels/test.tsv")
    assert data.stats["positives"] == 916


# ---------------------------------------------------------------------------- BM25 and dev


def test_bm25_matches_the_formula_and_ranks() -> None:
    docs = ["the cat sat on the mat", "dogs and cats", "a cat and a cat", "nothing here"]
    bm25 = td.BM25(docs, k1=1.2, b=0.75)
    lengths = [3, 2, 2, 2]  # "cat sat mat" / "dogs cats" / "cat cat" / "nothing here"
    avgdl = sum(lengths) / 4
    idf = math.log(1 + (4 - 2 + 0.5) / (2 + 0.5))
    expected = [
        idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * n / avgdl))
        for tf, n in [(1, 3), (0, 2), (2, 2), (0, 2)]
    ]
    assert bm25.scores("the cat") == pytest.approx(expected)
    assert [i for i, _ in bm25.top_k("cat", 10)] == [2, 0]  # zero scores left out
    assert bm25.top_k("unknownword", 3) == []
    assert td.bm25_tokenize("The Cat's 2 hats!") == ["cat", "s", "2", "hats"]


def test_dev_set_candidates_are_judged_plus_bm25(tmp_path: Path) -> None:
    qrels = _beir(tmp_path / "toy", split="dev")
    dev = td.build_dev_set(qrels, negatives=2)
    assert set(dev.queries) == {"q1", "q2"}
    q2 = [d for d, _ in dev.candidates["q2"]]
    assert q2[:2] == ["d4", "d6"] and len(q2) <= 4 and len(set(q2)) == len(q2)
    metrics = ranking_metrics(dev.qrels, {"q1": {"d1": 1.0}, "q2": {"d6": 2.0, "d4": 1.0}})
    assert metrics["nDCG@10"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- model folders


def test_checkpoint_folder_without_weights_or_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    with pytest.raises(ModelError, match="does not exist"):
        checkpoints.check_checkpoint_dir(folder)
    folder.mkdir()
    with pytest.raises(ModelError, match=r"config\.json missing"):
        checkpoints.check_checkpoint_dir(folder)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError, match="no model weights"):
        checkpoints.check_checkpoint_dir(folder)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="no tokenizer files"):
        checkpoints.check_checkpoint_dir(folder)
    triples = _write_jsonl(tmp_path / "t.jsonl", [_triple("q", "A", "B")])
    config = cfg.TrainConfig(train_files=[triples], output_dir=tmp_path / "out", base_model=folder)
    with pytest.raises(ModelError, match="no tokenizer files"):
        tr.train(config, progress=False)


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown loss"):
        cfg.TrainConfig(train_files=[tmp_path], output_dir=tmp_path, loss="pairwise")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="group_size"):
        cfg.TrainConfig(train_files=[tmp_path], output_dir=tmp_path, loss="listwise", group_size=32)
    with pytest.raises(ConfigError, match="batch_size"):
        cfg.TrainConfig(train_files=[tmp_path], output_dir=tmp_path, batch_size=0)
    with pytest.raises(ConfigError, match="no training files"):
        cfg.TrainConfig(train_files=[], output_dir=tmp_path)


def test_occupied_output_dir_needs_resume_or_overwrite(tmp_path: Path) -> None:
    triples = _write_jsonl(tmp_path / "t.jsonl", [_triple("q", "A", "B")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(RerankerError, match="already holds a model"):
        tr.train(cfg.TrainConfig(train_files=[triples], output_dir=out), progress=False)
    with pytest.raises(RerankerError, match="cannot resume"):
        tr.train(
            cfg.TrainConfig(train_files=[triples], output_dir=out, resume=True), progress=False
        )


# ---------------------------------------------------------------------------- real training


@pytest.fixture(scope="module")
def small_triples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 SciFact train triples (real data; 75 distinct pairs)."""
    require_data(SCIFACT_TRIPLES)
    with SCIFACT_TRIPLES.open(encoding="utf-8") as handle:
        rows = [json.loads(next(handle)) for _ in range(60)]
    return _write_jsonl(tmp_path_factory.mktemp("data") / "small.jsonl", rows)


def _bce(model: Any, tokenizer: Any, pairs: list[td.Pair], max_length: int) -> float:
    texts = [(p.query, p.passage) for p in pairs]
    logits = torch.tensor(dev_scoring.score_pairs(model, tokenizer, texts, max_length=max_length))
    labels = torch.tensor([p.label for p in pairs])
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))


@pytest.mark.slow
def test_tiny_run_lowers_the_loss_and_saves_a_loadable_model(
    small_triples: Path, tmp_path: Path
) -> None:
    dev_qrels = _beir(tmp_path / "toy", split="dev")
    config = cfg.TrainConfig(
        train_files=[small_triples],
        output_dir=tmp_path / "out",
        max_length=48,
        batch_size=8,
        lr=1e-4,
        epochs=3,
        max_steps=24,
        dev=dev_qrels,
        dev_negatives=3,
    )
    data = td.load_training_pairs([small_triples])
    fixed = data.pairs[:48]  # a fixed evaluation batch (it is also trained on)
    torch.manual_seed(0)
    before_model, tokenizer, fresh = checkpoints.load_cross_encoder(cfg.default_base_model())
    assert fresh
    before = _bce(before_model, tokenizer, fixed, config.max_length)

    result = tr.train(config, progress=False)

    assert result.steps == 24 and len(result.losses) == 24
    assert result.pairs == len(data.pairs)
    after_model, tokenizer, fresh = checkpoints.load_cross_encoder(result.checkpoint)
    assert not fresh  # the trained head was saved and is loaded back
    after = _bce(after_model, tokenizer, fixed, config.max_length)
    assert after < 0.75 * before, (before, after)
    assert sum(result.losses[-6:]) / 6 < sum(result.losses[:6]) / 6

    info = json.loads((result.checkpoint / "train_info.json").read_text(encoding="utf-8"))
    assert info["steps"] == 24 and info["seed"] == 13 and info["max_length"] == 48
    assert info["head"] == "fresh" and info["epochs_completed"] > 1
    assert info["data"]["files"][0]["rows"] == 60 and info["data"]["pairs"] == result.pairs
    assert info["versions"]["torch"]
    assert info["final_loss"] == pytest.approx(sum(result.losses) / 24)
    # dev NDCG after each finished epoch (10 steps each) and at the final step
    assert [m["step"] for m in result.dev_metrics] == [10, 20, 24]
    assert 0 <= info["dev_metrics"][-1]["nDCG@10"] <= 1
    assert not (result.checkpoint / checkpoints.CHECKPOINT_DIRNAME).exists()
    tokenizer_config = json.loads((result.checkpoint / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 48


def test_listwise_groups_hold_a_positive_first_then_its_querys_negatives() -> None:
    pairs = [
        td.Pair("q1", "p1", 1.0, "s"),
        td.Pair("q1", "n1", 0.0, "s"),
        td.Pair("q1", "n2", 0.0, "s"),
        td.Pair("q1", "n3", 0.0, "s"),
        td.Pair("q1", "p2", 1.0, "s"),
        td.Pair("q2", "p3", 1.0, "s"),  # no negative: left out
        td.Pair("q1", "other-source", 0.0, "t"),  # same text, another source: not mixed in
    ]
    groups = td.listwise_groups(pairs, group_size=3, seed=1)
    assert [g[0] for g in groups] == [0, 4]
    for group in groups:
        assert len(group) == 3 and set(group[1:]) <= {1, 2, 3}
    assert td.listwise_groups(pairs, group_size=3, seed=1) == groups  # seeded


def test_listwise_loss_is_the_softmax_cross_entropy_of_each_group() -> None:
    logits = torch.tensor([2.0, 0.0, -1.0, 0.5, 0.5])
    expected_first = math.log(math.exp(2) + 1 + math.exp(-1)) - 2
    expected_second = math.log(2)
    loss = listwise_loss(logits, [3, 2])
    assert float(loss) == pytest.approx((expected_first + expected_second) / 2, rel=1e-6)


def _listwise(model: Any, tokenizer: Any, pairs: list[td.Pair], groups: list[list[int]]) -> float:
    flat = [i for group in groups for i in group]
    texts = [(pairs[i].query, pairs[i].passage) for i in flat]
    logits = torch.tensor(dev_scoring.score_pairs(model, tokenizer, texts, max_length=48))
    return float(listwise_loss(logits, [len(g) for g in groups]))


@pytest.mark.slow
def test_tiny_listwise_run_lowers_its_loss(small_triples: Path, tmp_path: Path) -> None:
    config = cfg.TrainConfig(
        train_files=[small_triples],
        output_dir=tmp_path / "out",
        loss="listwise",
        group_size=4,
        max_length=48,
        batch_size=8,
        lr=1e-4,
        epochs=4,
        max_steps=24,
    )
    data = td.load_training_pairs([small_triples])
    groups = td.listwise_groups(data.pairs, 4, config.seed)
    torch.manual_seed(0)
    model, tokenizer, _ = checkpoints.load_cross_encoder(cfg.default_base_model())
    before = _listwise(model, tokenizer, data.pairs, groups)

    result = tr.train(config, progress=False)

    assert result.steps == 24 and result.info["loss"] == "listwise"
    assert result.info["group_size"] == 4 and result.info["groups"] == len(groups)
    trained, tokenizer, _ = checkpoints.load_cross_encoder(result.checkpoint)
    after = _listwise(trained, tokenizer, data.pairs, groups)
    assert after < 0.9 * before, (before, after)  # measured 1.387 → 1.146


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_continues_from_the_saved_step(small_triples: Path, tmp_path: Path) -> None:
    common: dict[str, Any] = {
        "train_files": [small_triples],
        "max_length": 32,
        "batch_size": 8,
        "max_steps": 6,
        "save_every": 3,
        "lr": 5e-5,
    }
    reference = tr.train(cfg.TrainConfig(output_dir=tmp_path / "a", **common), progress=False)

    def stop_at_4(step: int, loss: float) -> None:
        if step == 4:
            raise _Stop

    out = tmp_path / "b"
    with pytest.raises(_Stop):
        tr.train(cfg.TrainConfig(output_dir=out, **common), progress=False, on_step=stop_at_4)
    state = torch.load(
        out / checkpoints.CHECKPOINT_DIRNAME / checkpoints.TRAINER_STATE_FILE, weights_only=False
    )
    assert state["step"] == 3

    # a changed setting is refused rather than silently mixed into the old run
    with pytest.raises(RerankerError, match=r"changed \(lr\)"):
        tr.train(
            cfg.TrainConfig(output_dir=out, resume=True, **{**common, "lr": 1e-4}), progress=False
        )
    # starting afresh over it needs overwrite=True
    with pytest.raises(RerankerError, match="already holds"):
        tr.train(cfg.TrainConfig(output_dir=out, **common), progress=False)

    seen: list[int] = []
    resumed = tr.train(
        cfg.TrainConfig(output_dir=out, resume=True, **common),
        progress=False,
        on_step=lambda step, loss: seen.append(step),
    )
    assert seen == [4, 5, 6]
    assert resumed.steps == 6 and len(resumed.losses) == 6
    assert resumed.losses == pytest.approx(reference.losses, rel=1e-3, abs=1e-4)
    assert resumed.info["resumed"] is True
    assert not (out / checkpoints.CHECKPOINT_DIRNAME).exists()
