"""ONNX export of local checkpoints: files, card, graph shape, parity gate, atomic output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reranker.errors import ModelError
from reranker.models import sha256_file


def _card(folder: Path, name: str = "reranker.json") -> dict[str, Any]:
    card: dict[str, Any] = json.loads((folder / name).read_text(encoding="utf-8"))
    return card


def test_cross_encoder_card_lists_the_sha256_of_every_other_file(xenc_export_dir: Path) -> None:
    card = _card(xenc_export_dir)
    files = card["files"]
    assert isinstance(files, dict)
    on_disk = {p.name for p in xenc_export_dir.iterdir() if p.name != "reranker.json"}
    assert set(files) == on_disk
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "config.json"} <= on_disk
    for name, digest in files.items():
        assert sha256_file(xenc_export_dir / name) == digest


def test_cross_encoder_card_records_provenance_parity_and_versions(
    xenc_export_dir: Path, xenc_checkpoint_dir: Path
) -> None:
    card = _card(xenc_export_dir)
    assert card["kind"] == "cross-encoder"
    assert card["name"] == "test-xenc"
    assert card["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"  # from train_info.json
    assert card["max_length"] == 256
    assert card["num_labels"] == 1
    assert card["metrics"] == {}
    training = card["training"]
    assert isinstance(training, dict)
    assert training["train_info"]["epochs"] == 0
    exporter = card["exporter"]
    assert isinstance(exporter, dict)
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(exporter)
    variants = card["variants"]
    assert isinstance(variants, dict)
    assert variants["fp32"]["parity_max_abs_diff"] <= 1e-4
    assert variants["fp32"]["fused"]["Attention"] == 6  # the optimiser fused every layer
    assert variants["int8"]["parity_max_abs_diff"] < 0.1
    source = card["source"]
    assert isinstance(source, dict)
    assert source["sha256"]["model.safetensors"] == sha256_file(
        xenc_checkpoint_dir / "model.safetensors"
    )


def test_exported_graph_is_one_file_with_dynamic_batch_and_sequence_axes(
    xenc_export_dir: Path,
) -> None:
    onnx = pytest.importorskip("onnx")
    assert not list(xenc_export_dir.glob("*.data"))
    model = onnx.load(str(xenc_export_dir / "model.onnx"))  # fails if data were external
    inputs = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    for dims in inputs.values():
        assert all(isinstance(d, str) and d for d in dims)  # symbolic: batch, sequence
    (output,) = model.graph.output
    assert output.name == "logits"
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 1


def test_encoder_export_writes_model_tokenizer_config_and_card(minilm_encoder_dir: Path) -> None:
    card = _card(minilm_encoder_dir, "card.json")
    assert card["kind"] == "encoder"
    assert card["dim"] == 384
    assert card["outputs"] == ["last_hidden_state"]
    assert set(card["files"]) == {"model.onnx", "tokenizer.json", "config.json"}
    variants = card["variants"]
    assert isinstance(variants, dict)
    assert variants["fp32"]["parity"] <= 1e-4


def test_a_folder_without_config_is_not_a_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from export.onnx_export import export_cross_encoder

    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        export_cross_encoder(tmp_path / "ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_parity_raises_and_leaves_the_previous_export_untouched(
    xenc_checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export import onnx_export

    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("the export that was there before", encoding="utf-8")
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", -1.0)  # nothing can pass
    with pytest.raises(ModelError, match="differ from torch"):
        onnx_export.export_cross_encoder(
            xenc_checkpoint_dir, out, parity_pairs=[("a query", "a passage")]
        )
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


@pytest.mark.slow
def test_weight_free_encoder_graph_export_matches_the_shipped_one(
    minilm_weights_dir: Path, minilm_assembled_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from export.encoder_graph import export_encoder_graph
    from reranker.models import SHIPPED_ENCODER_GRAPH
    from reranker.retrieval.embedder import Embedder, assemble_encoder

    fresh = export_encoder_graph(minilm_weights_dir, tmp_path / "graph")
    card, shipped = _card(fresh, "card.json"), _card(SHIPPED_ENCODER_GRAPH, "card.json")
    assert {k: v for k, v in card["files"].items() if k != "model.onnx"} == {
        k: v for k, v in shipped["files"].items() if k != "model.onnx"
    }
    assert card["variants"]["fp32"]["weights_in_external_data"] == 101
    assert card["variants"]["fp32"]["parity"] <= 1e-4
    assert (fresh / "model.onnx").stat().st_size < 1_000_000
    served = Embedder(assemble_encoder(fresh, minilm_weights_dir, tmp_path / "assembled"))
    texts = ["vitamin D and bone density", "a" * 3000, "what causes rain"]
    assert abs(served.encode(texts) - Embedder(minilm_assembled_dir).encode(texts)).max() < 1e-6


def test_safetensors_offsets_locate_each_tensor_in_the_file(minilm_weights_dir: Path) -> None:
    import numpy as np

    from export.encoder_graph import safetensors_offsets

    offsets = safetensors_offsets(minilm_weights_dir / "model.safetensors")
    dtype, shape, offset, length = offsets["embeddings.LayerNorm.weight"]
    assert (dtype, shape, length) == ("F32", [384], 384 * 4)
    raw = (minilm_weights_dir / "model.safetensors").read_bytes()[offset : offset + length]
    gamma = np.frombuffer(raw, dtype="<f4")
    assert np.isfinite(gamma).all() and 0.1 < float(np.abs(gamma).mean()) < 10


def test_the_exported_int8_scores_a_pair_the_same_whatever_its_batchmates(
    xenc_export_dir: Path,
) -> None:
    from reranker.rerank.scorer import Scorer

    scorer = Scorer(xenc_export_dir, variant="int8")
    target = ("vitamin d", "Vitamin D deficiency is common in northern latitudes.")
    others = [("q", "x"), ("bone density", "calcium " * 60), ("vitamin d", "sun exposure")]
    alone = float(scorer.score([target])[0])
    for mates in (others[:1], others, others[::-1] * 3):
        batch = [*mates, target]
        assert abs(float(scorer.score(batch)[-1]) - alone) <= 1e-4
    assert "per-token" in _card(xenc_export_dir)["variants"]["int8"]["quantization"]
