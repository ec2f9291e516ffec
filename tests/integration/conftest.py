"""Fixtures shared by the integration tests: the embedder and small real corpora."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from reranker.rerank.scorer import Scorer
from reranker.retrieval.embedder import Embedder

REPO = Path(__file__).resolve().parents[2]
# The shared BEIR data sits beside the checkout; RERANKER_DATA points elsewhere.
DATA = Path(os.environ.get("RERANKER_DATA") or REPO.parent / "shared" / "data").resolve()
SCIFACT = DATA / "scifact"


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.default()


@pytest.fixture(scope="session")
def scifact_docs() -> list[dict[str, object]]:
    """The first 120 SciFact documents, as they are on disk."""
    docs = []
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            docs.append(json.loads(line))
            if len(docs) == 120:
                break
    return docs


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def write_mini_scifact(folder: Path, split: str, queries: int, others: int) -> Path:
    """A BEIR folder of SciFact's first ``queries`` judged queries of ``split``, their relevant
    abstracts and ``others`` more abstracts (in corpus order)."""
    lines = (SCIFACT / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    query_ids = list(dict.fromkeys(r[0] for r in rows))[:queries]
    kept = [r for r in rows if r[0] in query_ids]
    relevant = {r[1] for r in kept}
    docs: list[dict[str, object]] = []
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        extra = 0
        for line in handle:
            doc = json.loads(line)
            if doc["_id"] in relevant or extra < others:
                extra += doc["_id"] not in relevant
                docs.append(doc)
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "corpus.jsonl", docs)
    texts = [json.loads(q) for q in (SCIFACT / "queries.jsonl").read_text().splitlines()]
    write_jsonl(folder / "queries.jsonl", [q for q in texts if q["_id"] in query_ids])
    (folder / "qrels").mkdir()
    (folder / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in kept)
    )
    return folder


@pytest.fixture
def alias(es_client: Elasticsearch) -> Iterator[str]:
    """A fresh alias name; every index behind or named after it is deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_indices_named_after(es_client, name)


def delete_indices_named_after(client: Elasticsearch, alias: str) -> None:
    """Wildcard deletes are refused (action.destructive_requires_name), so name each one."""
    names = list(client.indices.get(index=f"{alias}-*", allow_no_indices=True))
    if names:
        client.indices.delete(index=",".join(names), ignore_unavailable=True)


@pytest.fixture(scope="session")
def proxy_xenc_dir(xenc_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped MiniLM with a fresh one-label head, exported for the Scorer (its scores mean
    nothing; the proxy's behaviour is what the proxy tests check)."""
    from export.onnx_export import export_cross_encoder

    out = tmp_path_factory.mktemp("proxy-xenc") / "reranker"
    return export_cross_encoder(xenc_checkpoint_dir, out, name="proxy-test-xenc")


@pytest.fixture(scope="session")
def proxy_scorer(proxy_xenc_dir: Path) -> Scorer:
    return Scorer(proxy_xenc_dir, threads=1)


def index_docs(
    client: Elasticsearch, embedder: Embedder, docs: list[dict[str, Any]], alias: str, folder: Path
) -> str:
    """Index ``docs`` behind ``alias`` with ``reranker index``'s code path; returns the alias."""
    from reranker.corpus import CorpusSource
    from reranker.es.indexing import LoadOptions, index_corpus

    path = write_jsonl(folder / "docs.jsonl", docs)
    index_corpus(
        client, CorpusSource.open(path), alias, embedder, options=LoadOptions(progress=False)
    )
    return alias
