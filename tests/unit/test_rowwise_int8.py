"""Per-token int8 (export/rowwise_int8.py) on the shipped cross-encoder: a pair's logit no
longer depends on its batchmates, and the rewrite stays close to the model it came from."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.rowwise_int8 import rowwise_int8
from reranker.errors import ModelError
from reranker.rerank.scorer import Scorer

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


@pytest.fixture(scope="module")
def rowwise_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rowwise") / "model"
    shutil.copytree(SHIPPED, folder)
    rowwise_int8(SHIPPED / "model.int8.onnx", folder / "model.int8.onnx")
    import hashlib
    import json

    card = json.loads((folder / "reranker.json").read_text("utf-8"))
    digest = hashlib.sha256((folder / "model.int8.onnx").read_bytes()).hexdigest()
    card["files"]["model.int8.onnx"] = digest
    (folder / "reranker.json").write_text(json.dumps(card), "utf-8")
    return folder


def spread_in_random_batches(scorer: Scorer, rounds: int = 12) -> float:
    rng = random.Random(7)
    target = (QUERY, PASSAGES[0])
    seen = [float(scorer.score([target])[0])]
    for _ in range(rounds):
        mates = [(rng.choice([QUERY, "x", "bone"]), rng.choice(PASSAGES)) for _ in range(7)]
        batch = [target, *mates]
        rng.shuffle(batch)
        seen.append(float(scorer.score(batch)[batch.index(target)]))
    return max(seen) - min(seen)


def test_the_same_pair_gets_the_same_logit_in_any_batch(rowwise_model: Path) -> None:
    assert spread_in_random_batches(Scorer(rowwise_model, variant="int8")) <= 1e-4


def test_the_per_tensor_original_moves_with_its_batchmates() -> None:
    # what the rewrite removes: measured here so the test above cannot pass vacuously
    assert spread_in_random_batches(Scorer(SHIPPED, variant="int8")) > 1e-3


def test_the_rewrite_ranks_like_the_model_it_came_from(rowwise_model: Path) -> None:
    pairs = [(QUERY, p) for p in PASSAGES]
    before = Scorer(SHIPPED, variant="int8").score(pairs)
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


def test_a_graph_without_dynamic_quantisation_is_refused(tmp_path: Path) -> None:
    model = onnx.load(str(SHIPPED / "model.int8.onnx"))
    kept = [n for n in model.graph.node if n.op_type != "DynamicQuantizeLinear"]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ModelError, match="no dynamically quantised MatMul"):
        rowwise_int8(broken, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
