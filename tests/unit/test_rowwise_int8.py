"""Per-token int8 (export/rowwise_int8.py): the shipped cross-encoders give a pair the same
logit whatever its batchmates, and the rewrite stays close to the per-tensor model it came
from (rebuilt here from the shipped weights, as it shipped before the conversion)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.rowwise_int8 import convert_folder, rowwise_int8
from reranker.errors import ModelError
from reranker.rerank.scorer import Scorer
from tests.helpers import per_tensor_int8

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "reranker-minilm-l6"
QUERY = "vitamin D deficiency and multiple sclerosis risk"
PASSAGES = [
    "Vitamin D levels and latitude are associated with the risk of multiple sclerosis.",
    "Low serum 25-hydroxyvitamin D predicts relapses in patients with MS. " * 6,
    "The train left the station at noon and arrived late in the evening.",
    "Calcium and bone density in older women: a randomised trial of supplements. " * 4,
    "Immune cells express receptors for the active form of the vitamin.",
    "A short note.",
]


AWARE = REPO / "models" / "reranker-minilm-l6-aware"


@pytest.fixture(scope="module")
def per_tensor_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped plain model as it shipped before: its int8 graph dequantised, then
    quantised again with ``quantize_dynamic`` (one activation scale per tensor)."""
    import hashlib
    import json

    folder = tmp_path_factory.mktemp("per-tensor") / "model"
    shutil.copytree(SHIPPED, folder)
    per_tensor_int8(SHIPPED, folder / "model.int8.onnx")
    card = json.loads((folder / "reranker.json").read_text("utf-8"))
    digest = hashlib.sha256((folder / "model.int8.onnx").read_bytes()).hexdigest()
    card["files"]["model.int8.onnx"] = digest
    card["variants"]["int8"] = {"file": "model.int8.onnx", "quantization": "dynamic"}
    (folder / "reranker.json").write_text(json.dumps(card), "utf-8")
    return folder


@pytest.fixture(scope="module")
def rowwise_model(per_tensor_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rowwise") / "model"
    shutil.copytree(per_tensor_model, folder)
    convert_folder(folder)
    return folder


def spread_in_random_batches(scorer: Scorer, rounds: int = 12) -> float:
    """The largest difference of one pair's logit across ``rounds`` random batches (random
    batchmates, with random first-stage features for a first-stage-aware model)."""
    rng = random.Random(7)
    columns = len(scorer.feature_names)
    target = (QUERY, PASSAGES[0])
    target_features = [0.8, 0.4, 0.6][:columns]

    def score(batch: list[tuple[str, str]], rows: list[list[float]]) -> np.ndarray:
        features = np.asarray(rows, dtype=np.float32) if columns else None
        return scorer.score(batch, features=features)

    seen = [float(score([target], [target_features])[0])]
    for _ in range(rounds):
        mates = [
            (rng.choice([QUERY, "x", "bone"]), rng.choice(PASSAGES))
            for _ in range(rng.randint(1, 15))
        ]
        rows = [target_features] + [[rng.random() for _ in range(columns)] for _ in mates]
        order = list(range(len(mates) + 1))
        rng.shuffle(order)
        batch = [[target, *mates][i] for i in order]
        scores = score(batch, [rows[i] for i in order])
        seen.append(float(scores[order.index(0)]))
    return max(seen) - min(seen)


@pytest.mark.parametrize("shipped", [SHIPPED, AWARE], ids=["plain", "first-stage-aware"])
def test_a_shipped_model_gives_the_same_pair_the_same_logit_in_50_random_batches(
    shipped: Path,
) -> None:
    assert spread_in_random_batches(Scorer(shipped, variant="int8"), rounds=50) <= 1e-4


def test_a_converted_model_gives_the_same_pair_the_same_logit_in_any_batch(
    rowwise_model: Path,
) -> None:
    assert spread_in_random_batches(Scorer(rowwise_model, variant="int8")) <= 1e-4


def test_the_per_tensor_original_moves_with_its_batchmates(per_tensor_model: Path) -> None:
    # what the rewrite removes: measured here so the tests above cannot pass vacuously
    assert spread_in_random_batches(Scorer(per_tensor_model, variant="int8")) > 1e-3


def test_a_folder_already_per_token_is_not_converted_again(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns("tokenizer.json"))
    with pytest.raises(ModelError, match="already quantises per token"):
        convert_folder(folder)


def test_the_rewrite_ranks_like_the_model_it_came_from(
    rowwise_model: Path, per_tensor_model: Path
) -> None:
    pairs = [(QUERY, p) for p in PASSAGES]
    before = Scorer(per_tensor_model, variant="int8").score(pairs)
    after = Scorer(rowwise_model, variant="int8").score(pairs)
    assert list(np.argsort(-after)[:2]) == list(np.argsort(-before)[:2])
    assert np.corrcoef(before, after)[0, 1] > 0.95


def test_onnx_runtimes_own_fusions_keep_the_per_token_scales(rowwise_model: Path) -> None:
    """ORT fuses MatMulInteger → Cast → Mul assuming one activation scale: the rewrite must
    give the same logits with every optimisation on as with that fusion off."""
    scorer = Scorer(rowwise_model, variant="int8")
    fused = scorer.score([(QUERY, p) for p in PASSAGES])
    options = ort.SessionOptions()
    plain = ort.InferenceSession(
        str(rowwise_model / "model.int8.onnx"),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=["MatMulIntegerToFloatFusion", "DynamicQuantizeMatMulFusion"],
    )
    scorer._session = plain  # same tokenisation and batching, the unfused graph
    unfused = scorer.score([(QUERY, p) for p in PASSAGES])
    np.testing.assert_allclose(fused, unfused, atol=1e-4)


def test_a_graph_without_dynamic_quantisation_is_refused(
    tmp_path: Path, per_tensor_model: Path
) -> None:
    model = onnx.load(str(per_tensor_model / "model.int8.onnx"))
    kept = [n for n in model.graph.node if n.op_type != "DynamicQuantizeLinear"]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ModelError, match="no dynamically quantised MatMul"):
        rowwise_int8(broken, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
