"""bge-small's ONNX graph (langchain4j's fp32 jar) back to a Hugging Face BERT folder that
embeds as the graph does: what fine-tuning it needs. Likewise the shipped fine-tuned MiniLM,
which ships only its fused int8 graph (its weights dequantised; its activations are not
quantised in torch, so it agrees with the graph within INT8_PARITY_COSINE, not 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.maven_encoder import assemble
from export.onnx_to_torch import INT8_PARITY_COSINE, main, to_hugging_face
from reranker.models import mean_pool
from reranker.retrieval.embedder import DEFAULT_EMBEDDER_DIR, Embedder

TEXTS = [
    "Vitamin D deficiency comes from too little sunlight and a poor diet.",
    "Represent this sentence for searching relevant passages: what causes rickets",
]
QUERY = "what causes rickets in children"
PASSAGES = [
    "The stock market fell sharply after the central bank raised interest rates.",
    "Rickets in children is caused by a lack of vitamin D, which the body needs to absorb "
    "calcium for bone growth.",
    "Calcium and phosphate are minerals that keep adult bones dense and strong.",
]


@pytest.fixture(scope="module")
def bge_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble("bge-small-en-v1.5", tmp_path_factory.mktemp("bge") / "bge")


def test_the_rebuilt_bert_embeds_as_the_graph_does(bge_fp32: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    difference = to_hugging_face(bge_fp32, tmp_path / "hf")
    assert difference <= 1e-4
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    model = transformers.AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        first = model(**batch).last_hidden_state[:, 0]
    rebuilt = torch.nn.functional.normalize(first, dim=-1).numpy()
    graph = Embedder(bge_fp32, threads=1).encode(TEXTS)
    np.testing.assert_allclose(rebuilt, graph, atol=1e-4)


def test_a_folder_without_an_fp32_graph_or_a_fused_int8_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    int8 = assemble("bge-small-en-v1.5", tmp_path / "int8", int8=True)
    assert main([str(int8), str(tmp_path / "hf")]) == 7
    assert "no fp32 graph" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.fixture(scope="module")
def int8_rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped fine-tuned MiniLM (``model.int8.onnx`` only) rebuilt as a BertModel."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    target = tmp_path_factory.mktemp("scifact-se") / "hf"
    to_hugging_face(DEFAULT_EMBEDDER_DIR, target)
    return target


def _torch_embeddings(folder: Path, texts: list[str]) -> np.ndarray:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy()
    return mean_pool(hidden, batch["attention_mask"].numpy())


def test_the_bert_rebuilt_from_an_int8_graph_embeds_as_the_graph_does(
    int8_rebuilt: Path,
) -> None:
    texts = [*TEXTS, QUERY, *PASSAGES]
    rebuilt = _torch_embeddings(int8_rebuilt, texts)
    graph = Embedder(DEFAULT_EMBEDDER_DIR, threads=1).encode(texts)
    cosines = (rebuilt * graph).sum(axis=1)
    assert cosines.min() >= INT8_PARITY_COSINE, cosines


def test_the_bert_rebuilt_from_an_int8_graph_ranks_passages_as_the_graph_does(
    int8_rebuilt: Path,
) -> None:
    rebuilt = _torch_embeddings(int8_rebuilt, [QUERY, *PASSAGES])
    graph = Embedder(DEFAULT_EMBEDDER_DIR, threads=1).encode([QUERY, *PASSAGES])
    rebuilt_scores, graph_scores = rebuilt[1:] @ rebuilt[0], graph[1:] @ graph[0]
    assert list(np.argsort(-rebuilt_scores)) == list(np.argsort(-graph_scores)) == [1, 2, 0]
