"""Model-card housekeeping: pruning variants for shipping, recording metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.card import prune_variants, record_metrics, write_card
from reranker.errors import ModelError
from reranker.models import read_card, verify_files

CARD = "reranker.json"


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    for name, body in {
        "model.onnx": b"fp32",
        "model.int8.onnx": b"int8",
        "tokenizer.json": b"{}",
        "config.json": b"{}",
    }.items():
        (tmp_path / name).write_bytes(body)
    write_card(
        tmp_path,
        CARD,
        {
            "kind": "cross-encoder",
            "variants": {"fp32": {"file": "model.onnx"}, "int8": {"file": "model.int8.onnx"}},
        },
    )
    return tmp_path


def test_prune_deletes_other_variants_and_rehashes(exported: Path) -> None:
    card = prune_variants(exported, CARD, ["int8"])
    assert not (exported / "model.onnx").exists()
    assert set(card["variants"]) == {"int8"}
    assert "model.onnx" not in card["files"]
    verify_files(exported, read_card(exported, CARD), ["model.int8.onnx", "tokenizer.json"])


def test_prune_refuses_a_variant_the_folder_lacks(exported: Path) -> None:
    with pytest.raises(ModelError, match="fp16"):
        prune_variants(exported, CARD, ["fp16"])
    assert (exported / "model.onnx").exists()


def test_record_metrics_merges_without_breaking_the_hashes(exported: Path) -> None:
    record_metrics(exported, CARD, {"scifact/test": {"ndcg@10": 0.7}})
    record_metrics(exported, CARD, {"stackexchange/test": {"ndcg@10": 0.5}})
    card = json.loads((exported / CARD).read_text())
    assert set(card["metrics"]) == {"scifact/test", "stackexchange/test"}
    verify_files(exported, read_card(exported, CARD), ["model.onnx", "config.json"])
