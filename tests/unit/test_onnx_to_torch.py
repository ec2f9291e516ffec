"""bge-small's ONNX graph (langchain4j's fp32 jar) back to a Hugging Face BERT folder that
embeds as the graph does: what fine-tuning it needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.maven_encoder import assemble
from export.onnx_to_torch import main, to_hugging_face
from reranker.retrieval.embedder import Embedder

TEXTS = [
    "Vitamin D deficiency comes from too little sunlight and a poor diet.",
    "Represent this sentence for searching relevant passages: what causes rickets",
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


def test_a_folder_without_an_fp32_graph_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    int8 = assemble("bge-small-en-v1.5", tmp_path / "int8", int8=True)
    assert main([str(int8), str(tmp_path / "hf")]) == 7
    assert "no fp32 graph" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
