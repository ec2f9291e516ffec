"""The multi-task cross-encoder: one encoder, a relevance score and signal heads; the heads
survive saving, export as named ONNX outputs, and reach the blend as ``predicted_*``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reranker.errors import ConfigError, ModelError, SearchError
from reranker.rerank.features import FEATURE_NAMES

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from reranker.training.aware_model import (  # noqa: E402
    FirstStageAwareModel,
    load_aware,
    load_pretrained_encoder,
    save_aware,
)
from reranker.training.first_stage_aware import AwareTrainConfig  # noqa: E402

HEADS = ("popularity", "authority", "freshness")
PAIRS = [
    ("what causes rain", "Rain forms when water vapour condenses into droplets."),
    ("what causes rain", "Bananas are rich in potassium."),
    ("best hops for a citrus ale", "Citra hops give citrus and tropical fruit characters."),
]


def _features(rows: int) -> np.ndarray:
    return np.random.default_rng(3).random((rows, len(FEATURE_NAMES)), dtype=np.float32)


@pytest.fixture(scope="module")
def multitask_dir(minilm_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer, encoder = load_pretrained_encoder(minilm_weights_dir, "eager")
    model = FirstStageAwareModel(encoder, signal_heads=HEADS)
    torch.manual_seed(0)
    with torch.no_grad():
        model.head.weight.copy_(torch.linspace(-0.05, 0.05, model.head.weight.numel()))
        for head in model.signal_heads.values():
            head.weight.normal_(0.0, 0.1)
    out = tmp_path_factory.mktemp("multitask")
    save_aware(model, tokenizer, out)
    return out


def _batch(tokenizer: object, pairs: list[tuple[str, str]]) -> dict[str, object]:
    encoded = tokenizer(  # type: ignore[operator]
        [q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="pt"
    )
    return {**encoded, "first_stage": torch.from_numpy(_features(len(pairs)))}


def test_signal_heads_leave_the_relevance_score_as_it_was(multitask_dir: Path) -> None:
    model, tokenizer = load_aware(multitask_dir)
    single = FirstStageAwareModel(model.encoder)
    single.head.load_state_dict(model.head.state_dict())
    batch = _batch(tokenizer, PAIRS)
    with torch.no_grad():
        logits, predicted = model.eval().forward_heads(**batch)
        torch.testing.assert_close(logits, single.eval()(**batch))
    assert set(predicted) == set(HEADS)
    for values in predicted.values():
        assert values.shape == (len(PAIRS), 1)
        assert bool(((values > 0) & (values < 1)).all())


def test_saved_heads_load_back_with_their_names_and_weights(multitask_dir: Path) -> None:
    config = json.loads((multitask_dir / "first_stage_aware.json").read_text(encoding="utf-8"))
    assert config["signal_heads"] == list(HEADS)
    model, _ = load_aware(multitask_dir)
    assert model.signal_head_names == HEADS
    assert float(model.signal_heads["popularity"].weight.detach().abs().sum()) > 0


def test_a_checkpoint_missing_a_heads_weights_is_refused(
    multitask_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(multitask_dir, broken)
    state = load_file(str(broken / "head.safetensors"))
    del state["signal_heads.authority.weight"]
    save_file(state, str(broken / "head.safetensors"))
    with pytest.raises(ModelError, match=r"signal_heads\.authority\.weight"):
        load_aware(broken)


def test_continuing_a_multi_task_model_without_its_heads_is_refused(
    multitask_dir: Path, tmp_path: Path
) -> None:
    from reranker.training.first_stage_aware import _initial_model

    config = AwareTrainConfig(datasets=[tmp_path], output_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match="authority"):
        _initial_model(multitask_dir, config, torch.device("cpu"))


def test_a_single_task_model_gets_fresh_heads_when_a_run_asks_for_them(
    minilm_weights_dir: Path, tmp_path: Path
) -> None:
    from reranker.training.first_stage_aware import _initial_model

    tokenizer, encoder = load_pretrained_encoder(minilm_weights_dir, "eager")
    save_aware(FirstStageAwareModel(encoder), tokenizer, tmp_path / "single")
    config = AwareTrainConfig(
        datasets=[tmp_path], output_dir=tmp_path / "out", signal_heads=("popularity",)
    )
    model, _, _ = _initial_model(tmp_path / "single", config, torch.device("cpu"))
    assert model.signal_head_names == ("popularity",)


@pytest.fixture(scope="module")
def multitask_export(multitask_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.onnx_export import export_cross_encoder

    out = tmp_path_factory.mktemp("multitask-export") / "reranker"
    return export_cross_encoder(multitask_dir, out, int8=True, name="test-multitask")


@pytest.mark.slow
def test_the_heads_are_named_outputs_of_one_graph_and_the_card_lists_them(
    multitask_export: Path,
) -> None:
    import onnx

    card = json.loads((multitask_export / "reranker.json").read_text(encoding="utf-8"))
    assert card["outputs"] == ["logits", *HEADS]
    assert sorted(card["signal_heads"]["outputs"]) == sorted(HEADS)
    assert card["signal_heads"]["outputs"]["popularity"]["blend_feature"] == (
        "predicted_popularity"
    )
    for file in ("model.onnx", "model.int8.onnx"):
        graph = onnx.load(str(multitask_export / file)).graph
        assert [o.name for o in graph.output] == ["logits", *HEADS]
    fp32 = card["variants"]["fp32"]["heads_parity_max_abs_diff"]
    assert sorted(fp32) == sorted(HEADS) and max(fp32.values()) <= 1e-4
    int8 = card["variants"]["int8"]["heads_parity_max_abs_diff"]
    assert sorted(int8) == sorted(HEADS) and max(int8.values()) < 0.1


@pytest.mark.slow
def test_the_scorer_reads_the_heads_in_the_same_call_as_torch_computes_them(
    multitask_export: Path, multitask_dir: Path
) -> None:
    from reranker.rerank.scorer import Scorer

    scorer = Scorer(multitask_export)
    assert scorer.signal_heads == HEADS
    features = _features(len(PAIRS))
    logits, predicted = scorer.score_with_signals(PAIRS, features=features)
    np.testing.assert_allclose(logits, scorer.score(PAIRS, features=features), atol=1e-6)
    model, tokenizer = load_aware(multitask_dir)
    rows = []
    with torch.no_grad():
        for (query, passage), row in zip(PAIRS, features, strict=True):
            batch = tokenizer(query, passage, return_tensors="pt")
            first_stage = torch.from_numpy(row[None, :])
            rows.append(model.eval().forward_heads(**batch, first_stage=first_stage)[1])
    for head in HEADS:
        expected = np.array([float(r[head]) for r in rows])
        np.testing.assert_allclose(predicted[head], expected, atol=1e-4)


@pytest.mark.slow
def test_a_blend_reading_predicted_signals_gets_them_from_the_heads(
    multitask_export: Path,
) -> None:
    from reranker.blend.blends import LinearBlend
    from reranker.rerank.pipeline import Pipeline
    from reranker.rerank.scorer import Scorer
    from reranker.retrieval.first_stage import Hit

    scorer = Scorer(multitask_export)
    blend = LinearBlend(weights={"relevance": 0.0, "first_stage": 0.0, "predicted_popularity": 1.0})
    pipeline = Pipeline(None, scorer, base="hybrid", blend=blend, explain=True)
    assert pipeline.predict_signals
    hits = [
        Hit(f"d{i}", 1.0 - i / 10, {"text": p}, {"bm25": 5.0 - i, "dense": 0.5})
        for i, (_, p) in enumerate(PAIRS)
    ]
    result = pipeline.rerank(PAIRS[0][0], hits, k=3)
    predicted = [h.predicted["popularity"] for h in result.hits if h.predicted]
    assert len(predicted) == 3
    assert predicted == sorted(predicted, reverse=True)  # the blend ordered by the head
    assert [h.features["predicted_popularity"] for h in result.hits if h.features] == predicted


@pytest.mark.slow
def test_a_blend_reading_a_head_the_model_lacks_is_refused(multitask_export: Path) -> None:
    from reranker.blend.blends import LinearBlend
    from reranker.rerank.pipeline import Pipeline

    shipped = Path(__file__).resolve().parents[2] / "models" / "reranker-minilm-l6-aware"
    from reranker.rerank.scorer import Scorer

    blend = LinearBlend(weights={"relevance": 1.0, "predicted_popularity": 1.0})
    with pytest.raises(SearchError, match=r"predicted_popularity.*no such head"):
        Pipeline(None, Scorer(shipped, variant="int8"), base="hybrid", blend=blend)
