"""Fixtures shared by the integration tests: the embedder and small real corpora."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from reranker.embed import Embedder

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
