"""Fine-tuning the first stage's embedder: the examples, the batches, the loss, and one tiny
real run from the shipped weights to an ONNX embedder that ``--embedder`` loads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reranker.cli import main
from reranker.config import Settings
from reranker.errors import ConfigError, ModelError
from reranker.retrieval.embedder import Embedder
from reranker.training.embedder import (
    EmbedderTrainConfig,
    Example,
    query_batches,
    training_examples,
)
from reranker.training.losses import in_batch_loss
from tests.conftest import require_data

WINDOW = [f"d{i}" for i in range(40)]


def test_hard_negatives_skip_the_ranks_around_every_positive() -> None:
    examples = training_examples("q", WINDOW, {"d5": 2, "d6": 0}, depth=10, skip=3)
    assert [e.positive for e in examples] == ["d5"]
    # ranks 3..7 lie within 2 of rank 5; d6 is judged but not relevant, and near: skipped too
    assert examples[0].hard_negatives == ("d0", "d1", "d2", "d8", "d9")


def test_every_relevant_passage_is_an_example_with_the_same_negatives() -> None:
    examples = training_examples("q", WINDOW, {"d0": 1, "d30": 2, "x": 1}, depth=5, skip=2)
    assert [e.positive for e in examples] == ["d0", "d30", "x"]
    assert {e.hard_negatives for e in examples} == {("d2", "d3", "d4")}


def test_without_room_above_the_depth_negatives_come_from_below_it() -> None:
    judged = {f"d{i}": 1 for i in range(3)}
    examples = training_examples("q", WINDOW, judged, depth=3, skip=1)
    assert examples[0].hard_negatives == ("d3", "d4", "d5")


def test_a_batch_never_holds_a_query_twice_and_only_lone_leftovers_are_lost() -> None:
    examples = [Example(f"q{i % 5}", f"d{i}", ("n",)) for i in range(23)]
    batches = query_batches(examples, 4, random.Random(0))
    for batch in batches:
        assert len({e.query for e in batch}) == len(batch) <= 4
    kept = [e.positive for batch in batches for e in batch]
    assert len(kept) == len(set(kept)) and set(kept) <= {e.positive for e in examples}
    assert len(kept) >= len(examples) - 1  # at most the last query's lone example


def test_a_batch_of_one_is_dropped() -> None:
    examples = [Example("q", f"d{i}", ("n",)) for i in range(3)]
    assert query_batches(examples, 8, random.Random(0)) == []


def test_the_loss_is_low_when_each_query_is_nearest_its_positive() -> None:
    eye = torch.eye(4)
    good = in_batch_loss(eye[:2], eye, torch.zeros(2, 4, dtype=torch.bool), 20.0)
    swapped = in_batch_loss(eye[:2], eye[[1, 0, 2, 3]], torch.zeros(2, 4, dtype=torch.bool), 20.0)
    assert good.item() < 1e-6 < swapped.item()


def test_a_passage_relevant_to_the_query_is_masked_not_pushed_away() -> None:
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    # passage 2 is as close to query 0 as its positive: a penalty unless masked
    passages = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    relevant = torch.tensor([[False, False, True], [False, False, False]])
    masked = in_batch_loss(queries, passages, relevant, 20.0)
    unmasked = in_batch_loss(queries, passages, torch.zeros_like(relevant), 20.0)
    assert masked.item() < 1e-6 < unmasked.item()


def test_a_config_without_datasets_or_with_a_batch_of_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        EmbedderTrainConfig(datasets=[], output=tmp_path)
    with pytest.raises(ConfigError, match="batch size"):
        EmbedderTrainConfig(datasets=[tmp_path], output=tmp_path, batch_size=1)


def test_a_missing_embedder_folder_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        Embedder.default(Settings(embedder=tmp_path / "nowhere"))


def test_an_embedder_variant_the_folder_lacks_is_a_model_error() -> None:
    from reranker.models import SHIPPED_ENCODER_GRAPH

    with pytest.raises(ModelError, match="no 'int8' embedder"):
        Embedder(SHIPPED_ENCODER_GRAPH, variant="int8")


def test_train_embedder_refuses_a_folder_that_is_not_beir(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train-embedder", str(tmp_path), "--output", "x"])
    assert result.exit_code == 2
    assert "not a BEIR folder" in result.output


SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact"


@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 SciFact train queries (no dev split: 20 % are held out), their abstracts and 100
    others."""
    require_data(SCIFACT / "corpus.jsonl")
    folder = tmp_path_factory.mktemp("tiny-beir")
    rows = [
        line.split("\t") for line in (SCIFACT / "qrels" / "train.tsv").read_text().splitlines()[1:]
    ]
    qids = list(dict.fromkeys(r[0] for r in rows))[:40]
    kept = [r for r in rows if r[0] in qids]
    wanted = {r[1] for r in kept}
    docs, others = [], 0
    for line in (SCIFACT / "corpus.jsonl").read_text().splitlines():
        doc = json.loads(line)
        if doc["_id"] in wanted or others < 100:
            others += doc["_id"] not in wanted
            docs.append(line)
    (folder / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    queries = [q for q in (SCIFACT / "queries.jsonl").read_text().splitlines()]
    (folder / "queries.jsonl").write_text(
        "\n".join(q for q in queries if json.loads(q)["_id"] in qids) + "\n"
    )
    (folder / "qrels").mkdir()
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in kept)
    )
    return folder


@pytest.mark.slow
def test_a_short_run_exports_an_embedder_that_the_cli_loads(
    tiny_beir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    args = ["train-embedder", str(tiny_beir), "--output", str(out), "--epochs", "1"]
    result = CliRunner().invoke(
        main, [*args, "--batch-size", "8", "--max-steps", "2", "--threads", "2"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads((out / "train_info.json").read_text())
    assert info["steps"] == 2 and info["history"][0]["step"] == 0
    assert info["datasets"][tiny_beir.name]["dev_queries"] > 0
    assert "use it with --embedder" in result.output
    embedder = Embedder.default(Settings(embedder=out / "embedder"))
    texts = ["coffee and the heart", "stem cells"]
    vectors = embedder.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.model_id.startswith("all-MiniLM-L6-v2-finetuned@")
    int8 = Embedder(out / "embedder", variant="int8")
    assert int8.model_id == f"{embedder.model_id}/int8"  # another embedding space
    assert (np.sum(int8.encode(texts) * vectors, axis=1) > 0.98).all()


def test_the_embedder_setting_comes_from_the_environment_and_the_option_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RERANKER_EMBEDDER", str(tmp_path / "from-env"))
    assert Settings.from_env().embedder == tmp_path / "from-env"
    assert Settings.from_env(embedder=tmp_path / "given").embedder == tmp_path / "given"
    monkeypatch.delenv("RERANKER_EMBEDDER")
    assert Settings.from_env().embedder is None


def test_the_shipped_fine_tuned_embedder_loads_as_int8_with_its_own_id() -> None:
    folder = Path(__file__).resolve().parents[2] / "models" / "all-MiniLM-L6-v2-scifact-se"
    embedder = Embedder.default(Settings(embedder=folder))
    assert embedder.variant == "int8" and embedder.model_id.endswith("/int8")
    assert embedder.model_id.startswith("all-MiniLM-L6-v2-scifact-se@")
    vectors = embedder.encode(["coffee and the heart", "stem cell niches"])
    assert vectors.shape == (2, 384) and abs(float(vectors[0] @ vectors[1])) < 0.9


def test_an_embedder_stamp_keeps_the_tail_of_a_long_id() -> None:
    from reranker.es.mappings import embedder_stamp

    assert embedder_stamp("all-MiniLM-L6-v2@53aa51172d14") == "all-MiniLM-L6-v2@53aa51172d14"
    long = "a-very-long-embedder-name-for-some-corpus-v2@0123456789ab/int8"
    assert len(embedder_stamp(long)) == 50 and embedder_stamp(long).endswith("@0123456789ab/int8")


def test_a_base_that_pools_by_cls_with_a_query_instruction_trains_and_exports_as_such(
    tmp_path: Path,
) -> None:
    import shutil

    from transformers import AutoModel, AutoTokenizer

    from export.onnx_export import export_encoder
    from reranker.models import ENCODER_CONVENTIONS, encoder_conventions, shipped_weights_dir
    from reranker.training.embedder import EmbedderTrainConfig, _BiEncoder

    base = tmp_path / "base"
    shutil.copytree(shipped_weights_dir(), base)
    conventions = {"pooling": "cls", "query_prefix": "query: "}
    (base / ENCODER_CONVENTIONS).write_text(json.dumps(conventions), encoding="utf-8")
    encoder = _BiEncoder(base, EmbedderTrainConfig(datasets=[tmp_path], output=tmp_path))
    assert encoder.as_queries(["vitamin D"]) == ["query: vitamin D"]
    text = "Vitamin D and bone density."
    got = encoder.embed([text], 64)
    model, tokenizer = (
        AutoModel.from_pretrained(str(base)),
        AutoTokenizer.from_pretrained(str(base)),
    )
    with torch.no_grad():
        first = model(**tokenizer([text], return_tensors="pt")).last_hidden_state[:, 0]
    torch.testing.assert_close(got, torch.nn.functional.normalize(first, dim=-1), atol=1e-5, rtol=0)
    encoder.save(tmp_path / "checkpoint")
    assert encoder_conventions(tmp_path / "checkpoint") == conventions
    exported = Embedder(export_encoder(tmp_path / "checkpoint", tmp_path / "onnx"), threads=1)
    assert (exported.pooling, exported.query_prefix) == ("cls", "query: ")
    np.testing.assert_allclose(exported.encode([text]), got.detach().numpy(), atol=1e-4)
