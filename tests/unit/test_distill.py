"""``reranker distill``: its refusals (no Elasticsearch needed), its pieces, and one tiny real
distillation exported and loaded as a scorer (slow)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from reranker.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from reranker.training.distill import train_student  # noqa: E402
from reranker.training.distill_config import DistillConfig  # noqa: E402
from reranker.training.distill_data import (  # noqa: E402  (after the importorskip of torch)
    CandidateGroup,
    sample_ranks,
    score_groups,
    teacher_record,
)
from reranker.training.losses import listwise_kl_loss, margin_mse_loss  # noqa: E402
from tests.conftest import require_data  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "models" / "reranker-minilm-l6"
AWARE = REPO / "models" / "reranker-minilm-l6-aware"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"


def beir(tmp_path: Path, train: str, test: str | None = None) -> Path:
    folder = tmp_path / "tiny"
    (folder / "qrels").mkdir(parents=True)
    (folder / "qrels" / "train.tsv").write_text(f"query-id\tcorpus-id\tscore\n{train}")
    if test is not None:
        (folder / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\n{test}")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "why"}) + "\n")
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "because"}) + "\n")
    return folder


def distill(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["distill", *map(str, args)])
    return result.exit_code, result.output


def test_a_dataset_without_train_qrels_is_unreadable_input(tmp_path: Path) -> None:
    code, output = distill(TEACHER, tmp_path / "nothing", "--output", tmp_path / "out")
    assert code == 4
    assert "no qrels/train.tsv" in output


def test_train_queries_that_are_test_queries_are_refused(tmp_path: Path) -> None:
    dataset = beir(tmp_path, "q1\td1\t1\n", test="q1\td1\t1\n")
    code, output = distill(TEACHER, dataset, "--output", tmp_path / "out")
    assert code == 4
    assert "also test queries" in output


def test_a_missing_teacher_is_a_model_error(tmp_path: Path) -> None:
    dataset = beir(tmp_path, "q1\td1\t1\n")
    code, output = distill(tmp_path / "no-model", dataset, "--output", tmp_path / "out")
    assert code == 7
    assert "teacher model folder does not exist" in output


def test_a_first_stage_aware_teacher_is_refused(tmp_path: Path) -> None:
    dataset = beir(tmp_path, "q1\td1\t1\n")
    code, output = distill(AWARE, dataset, "--output", tmp_path / "out")
    assert code == 7
    assert "first-stage-aware" in output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--layers", "0"], "layers must be at least 1"),
        (["--top", "60", "--sampled", "60"], "exceed the window"),
        (["--temperature", "0"], "temperature must be positive"),
        (["--max-steps", "0"], "max_steps must be at least 1"),
    ],
)
def test_bad_settings_are_usage_errors(tmp_path: Path, options: list[str], message: str) -> None:
    dataset = beir(tmp_path, "q1\td1\t1\n")
    code, output = distill(TEACHER, dataset, "--output", tmp_path / "out", *options)
    assert code == 2
    assert message in output


def test_an_occupied_output_needs_overwrite(tmp_path: Path) -> None:
    dataset = beir(tmp_path, "q1\td1\t1\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    code, output = distill(TEACHER, dataset, "--output", out)
    assert code == 2
    assert "--overwrite" in output


def test_more_layers_than_the_base_has_is_refused(tmp_path: Path) -> None:
    from reranker.errors import ConfigError
    from reranker.models import shipped_weights_dir
    from reranker.training.distill import load_student

    with pytest.raises(ConfigError, match="has 6 layers"):
        load_student(shipped_weights_dir(), 7)


def test_the_help_reads_like_a_manual() -> None:
    result = CliRunner().invoke(main, ["distill", "--help"])
    assert result.exit_code == 0
    assert "TEACHER" in result.output and "--layers" in result.output
    assert "Test queries are never used" in result.output


def test_sampling_keeps_the_top_and_a_seeded_draw_of_the_rest() -> None:
    kept = sample_ranks("q1", 100, 10, 20, seed=13)
    assert kept[:10] == list(range(10))
    assert len(kept) == 30 and len(set(kept)) == 30 and kept == sorted(kept)
    assert all(10 <= k < 100 for k in kept[10:])
    assert kept == sample_ranks("q1", 100, 10, 20, seed=13)
    assert kept != sample_ranks("q2", 100, 10, 20, seed=13)
    assert sample_ranks("q1", 12, 10, 20, seed=13) == list(range(12))


def test_distillation_losses_ignore_a_groups_offset_and_vanish_on_agreement() -> None:
    teacher = torch.tensor([3.0, 1.0, -2.0, 0.5, 0.0])
    shifted = teacher + 7.0
    assert float(listwise_kl_loss(shifted, teacher, [3, 2])) == pytest.approx(0.0, abs=1e-6)
    assert float(margin_mse_loss(shifted, teacher, [3, 2])) == pytest.approx(0.0, abs=1e-6)
    wrong = -teacher
    assert float(listwise_kl_loss(wrong, teacher, [3, 2])) > 0.1
    assert float(margin_mse_loss(wrong, teacher, [3, 2])) > 0.1


# --------------------------------------------------------------------------- a real tiny run


def scifact_groups(queries: int, others: int) -> list[CandidateGroup]:
    """Real SciFact train queries, each with its judged abstracts and ``others`` random ones."""
    rows = [json.loads(line) for line in (SCIFACT / "queries.jsonl").open(encoding="utf-8")]
    texts = {r["_id"]: r["text"] for r in rows}
    qrels: dict[str, list[str]] = {}
    for line in (SCIFACT / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        qid, did, _ = line.split("\t")
        qrels.setdefault(qid, []).append(did)
    chosen = sorted(qrels)[:queries]
    wanted = {d for q in chosen for d in qrels[q]}
    corpus: dict[str, str] = {}
    pool: list[tuple[str, str]] = []
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            text = f"{doc['title']} {doc['text']}"
            if doc["_id"] in wanted:
                corpus[doc["_id"]] = text
            elif len(pool) < 200:
                pool.append((doc["_id"], text))
    rng = random.Random(0)
    groups = []
    for qid in chosen:
        docs = [(d, corpus[d]) for d in qrels[qid] if d in corpus] + rng.sample(pool, others)
        groups.append(
            CandidateGroup(
                dataset="scifact",
                query_id=qid,
                query=texts[qid],
                doc_ids=[d for d, _ in docs],
                passages=[t for _, t in docs],
                ranks=list(range(1, len(docs) + 1)),
                grades=[1 if d in qrels[qid] else 0 for d, _ in docs],
            )
        )
    return groups


@pytest.mark.slow
def test_a_tiny_distillation_exports_a_student_that_agrees_with_its_teacher(
    tmp_path: Path,
) -> None:
    require_data(SCIFACT / "qrels" / "train.tsv")
    from scipy.stats import spearmanr

    from export.onnx_export import export_cross_encoder
    from reranker.rerank.scorer import Scorer
    from reranker.training.distill_data import load_teacher

    teacher = load_teacher(TEACHER)
    groups = scifact_groups(queries=10, others=5)
    score_groups(teacher, groups, progress=False)
    train, held = groups[:8], groups[8:]
    out = tmp_path / "student"
    config = DistillConfig(
        teacher=TEACHER,
        datasets=[SCIFACT],
        output_dir=out,
        layers=2,
        lr=3e-4,
        warmup_ratio=0.0,
        queries_per_step=2,
        epochs=3,
        eval_every=12,
        cascade_k=2,
    )
    info = train_student(config, teacher_record(teacher), train, held, progress=False)

    assert info["distillation"]["teacher"]["model_id"] == teacher.model_id
    assert info["distillation"]["teacher"]["version"] == teacher.version
    assert info["distillation"]["layers"] == 2 and info["distillation"]["loss"] == "listwise-kl"
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert info["loss_curve"] or info["steps"] == 12

    exported = export_cross_encoder(
        out, tmp_path / "student-onnx", int8=True, parity_pairs=groups[0].pairs[:4]
    )
    student = Scorer(exported, variant="int8")
    card = student.card
    assert card["files"]["tokenizer.json"] == teacher.card["files"]["tokenizer.json"]
    assert card["max_length"] == teacher.max_length
    assert card["distillation"]["teacher"]["model_id"] == teacher.model_id
    assert card["distillation"]["layers"] == 2

    from reranker.rerank.cascade import check_cascade_models

    check_cascade_models(teacher, student)  # the same tokens: a valid cascade
    pairs = [pair for group in groups for pair in group.pairs]
    teacher_scores = np.concatenate([g.teacher for g in groups])
    rho = spearmanr(student.score(pairs), teacher_scores).statistic
    assert rho > 0.3, f"student/teacher Spearman {rho:.3f}"


def test_held_out_metrics_score_the_cascade_with_the_teachers_order_of_the_students_top_k() -> None:
    from reranker.training.distill import held_out_metrics

    group = CandidateGroup(
        dataset="d",
        query_id="q",
        query="q",
        doc_ids=["a", "b", "c", "d"],
        passages=["a", "b", "c", "d"],
        ranks=[1, 2, 3, 4],
        grades=[0, 0, 1, 0],
        teacher=np.array([0.0, 1.0, 5.0, 2.0], dtype=np.float32),
    )
    # the student puts the relevant c second: its top 2 (d, c) re-ordered by the teacher → c first
    student = np.array([0.0, -1.0, 2.0, 3.0], dtype=np.float32)
    metrics = held_out_metrics([group], [student], 2)
    assert metrics["teacher_nDCG@10"] == pytest.approx(1.0)
    assert metrics["cascade_nDCG@10"] == pytest.approx(1.0)
    assert metrics["student_nDCG@10"] < 1.0
    assert metrics["kl"] > 0
    assert metrics["queries"] == 1.0
