"""``reranker bench scorer``: the FLOP formula, the pair selection, and one tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from reranker.batching import padded_tokens, plan_batches
from reranker.cli import main
from reranker.errors import SourceError
from reranker.evaluation.peaks import ModelDims, flops_per_pair
from reranker.evaluation.speed import median_ms, select_pairs
from tests.conftest import require_data

SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact"
MINILM = {"layers": 6, "hidden": 384, "ffn": 1536}


def _need_scifact() -> Path:
    require_data(SCIFACT / "corpus.jsonl")
    return SCIFACT


@pytest.mark.parametrize(("tokens", "gflop"), [(128, 2.9), (256, 6.0)])
def test_flops_per_pair_matches_the_readme_hand_values(tokens: int, gflop: float) -> None:
    assert flops_per_pair(tokens, **MINILM) / 1e9 == pytest.approx(gflop, rel=0.05)


def test_flops_per_pair_is_the_linear_plus_quadratic_terms() -> None:
    linear = flops_per_pair(1, **MINILM) - 9216
    assert linear == pytest.approx(21.2e6, rel=0.01)
    assert flops_per_pair(100, **MINILM) == pytest.approx(linear * 100 + 9216 * 100**2)
    assert flops_per_pair(0, **MINILM) == 0


def test_model_dims_read_from_the_shipped_config(minilm_weights_dir: Path) -> None:
    assert ModelDims.from_config(minilm_weights_dir) == ModelDims(**MINILM)


def test_median_ms() -> None:
    assert median_ms([0.3, 0.1, 0.2]) == pytest.approx(200.0)
    assert median_ms([0.1, 0.2]) == pytest.approx(150.0)
    with pytest.raises(ValueError):
        median_ms([])


def test_plan_batches_sorts_by_length_and_caps_rows_and_tokens() -> None:
    lengths = [50, 10, 40, 20, 30]
    batches = plan_batches(lengths, max_batch_size=2, max_batch_tokens=4096)
    assert batches == [[1, 3], [4, 2], [0]]
    assert padded_tokens(lengths, batches) == 2 * 20 + 2 * 40 + 50
    # the token cap: three rows of 40 would be 120 > 100
    assert plan_batches([40, 40, 40], max_batch_size=16, max_batch_tokens=100) == [[0, 1], [2]]


def test_select_pairs_is_deterministic_with_the_relevant_doc_first() -> None:
    dataset = _need_scifact()
    first = select_pairs(dataset, 20)
    again = select_pairs(dataset, 20)
    assert first == again
    assert len(first.pairs) == len(first.doc_ids) == 20
    assert len(set(first.doc_ids)) == 20
    # the first judged query of qrels/test.tsv, and its relevant docs first
    _header, row = (SCIFACT / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[:2]
    query_id, doc_id, _ = row.split("\t")
    assert first.query_id == query_id
    assert first.doc_ids[0] == doc_id
    assert first.relevant[0] == doc_id
    assert {q for q, _ in first.pairs} == {first.query}
    corpus = (SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    doc = json.loads(next(line for line in corpus if json.loads(line)["_id"] == doc_id))
    assert first.pairs[0][1] == f"{doc['title'].strip()} {doc['text'].strip()}".strip()
    assert select_pairs(dataset, 5).doc_ids == first.doc_ids[:5]


def test_select_pairs_errors_on_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        select_pairs(tmp_path / "nowhere", 10)


def test_bench_scorer_names_a_missing_dataset_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "scorer", "--dataset", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    assert "does not exist" in result.output


def test_bench_scorer_refuses_a_model_folder_without_a_card(tmp_path: Path) -> None:
    dataset = _need_scifact()
    result = CliRunner().invoke(
        main, ["bench", "scorer", "--dataset", str(dataset), "--model", str(tmp_path)]
    )
    assert result.exit_code == 7  # ModelError's exit code
    assert "reranker.json" in result.output


@pytest.mark.slow
def test_bench_scorer_end_to_end_writes_json_for_all_backends(
    tmp_path: Path, minilm_weights_dir: Path
) -> None:
    """A real export, real ONNX Runtime and real torch on 8 pairs, once each (~40 s)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    dataset = _need_scifact()
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "scorer",
            "--dataset",
            str(dataset),
            "--pairs",
            "8",
            "--repeats",
            "1",
            "--threads",
            "2",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text(encoding="utf-8"))
    assert payload["pairs"] == 8
    assert payload["threads"] == 2
    assert payload["mean_tokens"] > 0
    assert payload["peak_gflops"]["fp32"] > 0
    assert payload["machine"]["logical_cpus"] >= 1
    backends = payload["backends"]
    assert {"torch-fp32", "ort-fp32", "ort-int8"} <= set(backends)
    for name, row in backends.items():
        for key in ("ms", "pairs_per_s", "gflops"):
            assert row[key] > 0, (name, key)
    # the same weights ran in torch and ONNX Runtime fp32
    assert backends["ort-fp32"]["max_abs_diff_vs_torch_fp32"] < 1e-3
    assert backends["torch-fp32"]["speedup_vs_torch_fp32"] == 1.0
    assert "torch-fp32" in result.output and "ort-int8" in result.output


def test_the_window_ladder_changes_one_thing_per_step() -> None:
    from reranker.evaluation.speed import WindowStep, window_ladder

    plain, aware = Path("plain"), Path("aware")
    assert window_ladder(plain, aware, [256, 192], 20) == [
        WindowStep("baseline", plain, None),
        WindowStep("model@256", aware, 256),
        WindowStep("model@192", aware, 192),
        WindowStep("model@192+cascade20", aware, 192, 20),
    ]
    assert [s.name for s in window_ladder(plain, aware, [192], None)] == ["baseline", "model@192"]


def test_bench_window_names_a_missing_dataset_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "window", "--dataset", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    assert "does not exist" in result.output
