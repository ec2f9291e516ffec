"""The second embedder end to end on the real node: `reranker index` stores its vectors beside
the embedding, and a reranked search (CLI and proxy) adds its cosine to the model's score."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from elasticsearch import Elasticsearch

from reranker.cli import main
from reranker.corpus import passage_text
from reranker.es import mappings
from reranker.rerank.rescore import DEFAULT_RESCORE_DIR, RESCORE_WEIGHT
from reranker.retrieval.embedder import Embedder
from reranker.retrieval.queries import RESCORE_VECTOR_FIELD
from tests.integration.conftest import (
    QUERY,
    QUERY_TEXT,
    delete_indices_named_after,
    proxy_settings,
    running,
    write_jsonl,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bge() -> Embedder:
    return Embedder(DEFAULT_RESCORE_DIR)


@pytest.fixture(scope="module")
def rescored_alias(
    es_node: Any,
    es_client: Elasticsearch,
    scifact_docs: list[dict[str, object]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The first 60 SciFact abstracts indexed by `reranker index` with its defaults."""
    alias = f"rescoretest-{uuid.uuid4().hex[:8]}"
    corpus = write_jsonl(tmp_path_factory.mktemp("rescore") / "docs.jsonl", scifact_docs[:60])
    result = CliRunner().invoke(
        main, ["--es-url", es_node.url, "index", str(corpus), "--alias", alias, "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    yield alias
    delete_indices_named_after(es_client, alias)


def test_index_stores_the_second_embedders_vectors_without_searching_them(
    es_client: Elasticsearch,
    rescored_alias: str,
    bge: Embedder,
    scifact_docs: list[dict[str, object]],
) -> None:
    index = mappings.indices_behind_alias(es_client, rescored_alias)[0]
    mapping = es_client.indices.get_mapping(index=index)[index]["mappings"]
    assert mapping["properties"][RESCORE_VECTOR_FIELD]["index"] is False
    assert mapping["_meta"]["reranker"][mappings.RESCORE_META_KEY] == bge.model_id
    doc = scifact_docs[0]
    found = es_client.search(
        index=rescored_alias,
        query={"ids": {"values": [doc["_id"]]}},
        source=False,
        fields=[RESCORE_VECTOR_FIELD],
    )["hits"]["hits"][0]["fields"][RESCORE_VECTOR_FIELD]
    expected = bge.encode([passage_text(doc)])[0]
    assert float(np.dot(found, expected)) == pytest.approx(1.0, abs=1e-4)


def test_a_reranked_search_adds_the_second_embedders_cosine_to_the_logit(
    es_node: Any, rescored_alias: str
) -> None:
    result = CliRunner().invoke(
        main,
        ["--es-url", es_node.url, "search", QUERY_TEXT, "--alias", rescored_alias,
         "--rerank", "--window", "20", "--k", "20", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    scored = [r for r in rows if r.get("relevance") is not None]
    assert scored, rows
    for row in scored:
        expected = row["relevance"] + RESCORE_WEIGHT * row["rescore_similarity"]
        assert row["_score"] == pytest.approx(expected, abs=1e-4)
    similarities = [r["rescore_similarity"] for r in rows]
    assert max(similarities) == 1.0 and min(similarities) == 0.0  # normalised over the window


def test_without_a_second_embedder_the_same_index_is_reranked_by_the_logit_alone(
    es_node: Any, rescored_alias: str
) -> None:
    result = CliRunner().invoke(
        main,
        ["--es-url", es_node.url, "--rescore-embedder", "none", "search", QUERY_TEXT,
         "--alias", rescored_alias, "--rerank", "--window", "20", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "second-embedder vectors" in result.output  # the note says why
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert rows and all("rescore_similarity" not in r for r in rows)


@pytest.mark.anyio
async def test_the_proxy_rescores_an_index_with_the_vectors_and_not_one_without(
    es_node: Any,
    rescored_alias: str,
    proxy_alias: str,
    proxy_scorer: Any,
    embedder: Any,
    bge: Embedder,
) -> None:
    settings = proxy_settings(
        es_node, rescored_alias, allowed_indices=(f"{rescored_alias}*", f"{proxy_alias}*")
    )
    async with running(settings, proxy_scorer, embedder, rescorer=bge) as http:
        for index, applied in ((rescored_alias, True), (proxy_alias, False)):
            response = await http.post(
                f"/{index}/_search",
                json={"query": QUERY, "size": 5, "rerank": {"window": 20, "explain": True}},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert ("rescore" in body["rerank"]) is applied, body["rerank"]
            first = body["hits"]["hits"][0]["_rerank"]
            assert ("rescore_similarity" in first) is applied
            if applied:
                assert body["rerank"]["rescore"]["embedder"] == bge.model_id
