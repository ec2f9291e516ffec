"""Session fixtures with real weights: the shipped MiniLM exported once per test session.

Fixture names carry a ``minilm_``/``xenc_``/``scifact_`` prefix so they do not collide with
fixtures defined elsewhere. Exports go under pytest's session temp folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import require_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact"


@pytest.fixture(scope="session")
def minilm_encoder_dir(minilm_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from export.onnx_export import export_encoder

    out = tmp_path_factory.mktemp("encoder") / "all-MiniLM-L6-v2-onnx"
    return export_encoder(minilm_weights_dir, out, name="all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def minilm_assembled_dir(
    minilm_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The shipped embedder as it is served: the repository's weight-free graph beside the
    weights package's files (no torch)."""
    from reranker.models import SHIPPED_ENCODER_GRAPH
    from reranker.retrieval.embedder import assemble_encoder

    out = tmp_path_factory.mktemp("assembled") / "all-MiniLM-L6-v2"
    return assemble_encoder(SHIPPED_ENCODER_GRAPH, minilm_weights_dir, out)


@pytest.fixture(scope="session")
def scifact_docs() -> list[str]:
    """The first 64 SciFact abstracts (title + text), or built-in texts without the data."""
    path = SCIFACT / "corpus.jsonl"
    if not path.is_file():
        return [
            f"Sentence {i}: proteins fold into shapes that decide their function. " * (1 + i % 7)
            for i in range(64)
        ]
    docs: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            docs.append(f"{doc['title']} {doc['text']}")
            if len(docs) == 64:
                break
    return docs


@pytest.fixture(scope="session")
def scifact_pairs() -> list[tuple[str, str]]:
    """Up to 100 real (query, abstract) pairs from SciFact test: judged docs plus others."""
    pairs = load_scifact_pairs()
    if not pairs:
        require_data(SCIFACT / "corpus.jsonl")
        pytest.fail("no SciFact test pairs could be read")
    return pairs


def load_scifact_pairs() -> list[tuple[str, str]]:
    """50 judged (query, abstract) pairs of SciFact test and 50 unjudged; [] without the data."""
    queries_path, corpus_path = SCIFACT / "queries.jsonl", SCIFACT / "corpus.jsonl"
    qrels_path = SCIFACT / "qrels" / "test.tsv"
    if not (queries_path.is_file() and corpus_path.is_file() and qrels_path.is_file()):
        return []
    qrels: list[tuple[str, str]] = []
    for line in qrels_path.read_text(encoding="utf-8").splitlines()[1:]:
        qid, did, _ = line.split("\t")
        qrels.append((qid, did))
        if len(qrels) == 50:
            break
    queries = {}
    with queries_path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            queries[row["_id"]] = row["text"]
    wanted = {did for _, did in qrels}
    docs: dict[str, str] = {}
    extra: list[str] = []
    with corpus_path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            text = f"{row['title']} {row['text']}"
            if row["_id"] in wanted:
                docs[row["_id"]] = text
            elif len(extra) < 50:
                extra.append(text)
    pairs = [(queries[q], docs[d]) for q, d in qrels if q in queries and d in docs]
    pairs += [(queries[q], extra[i]) for i, (q, _) in enumerate(qrels) if q in queries]
    return pairs[:100]


@pytest.fixture(scope="session")
def xenc_export_dir(
    xenc_checkpoint_dir: Path,
    scifact_pairs: list[tuple[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The checkpoint exported once, with the int8 variant, parity-checked on SciFact pairs."""
    from export.onnx_export import export_cross_encoder

    out = tmp_path_factory.mktemp("xenc-export") / "reranker"
    return export_cross_encoder(
        xenc_checkpoint_dir, out, int8=True, parity_pairs=scifact_pairs[:16], name="test-xenc"
    )
