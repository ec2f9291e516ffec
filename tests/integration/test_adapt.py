"""`reranker adapt` end to end on the real node: a tiny SciFact slice, no labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from elasticsearch import Elasticsearch

from reranker.cli import main
from reranker.es import mappings
from reranker.retrieval.embedder import Embedder
from tests.integration.conftest import index_docs

pytestmark = pytest.mark.integration


def adapt_args(url: str, alias: str, output: Path, *extra: str) -> list[str]:
    return [
        "--es-url",
        url,
        "adapt",
        "--alias",
        alias,
        "--output",
        str(output),
        "--held-out",
        "20",
        "--batch-size",
        "8",
        "--max-steps",
        "4",
        "--minutes",
        "6",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


def test_adapt_trains_on_the_documents_alone_and_reindexes_with_what_it_kept(
    es_node: Any,
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, object]],
    alias: str,
    tmp_path: Path,
) -> None:
    index_docs(es_client, embedder, scifact_docs, alias, tmp_path)
    before = mappings.indices_behind_alias(es_client, alias)
    output = tmp_path / "adapted"

    result = CliRunner().invoke(main, adapt_args(es_node.url, alias, output, "--reindex"))

    assert result.exit_code == 0, result.output
    report = json.loads((output / "adapt.json").read_text())
    assert report["documents"] == len(scifact_docs)
    assert report["base_embedder"] == embedder.model_id
    assert report["pseudo_queries"]["held_out"] == 20
    # --max-steps 4 of batches of 8 read at most 32 examples: mining stops there
    assert 8 <= report["examples"] <= 32
    # two slices of two steps each; the second runs unless the first fell beyond the noise
    assert [h["step"] for h in report["history"]] in ([0, 2], [0, 2, 4])
    assert 0.0 <= report["history"][0]["top1"] <= 1.0
    after = mappings.indices_behind_alias(es_client, alias)
    if report["kept"] == "adapted":
        adapted = Embedder(output / "embedder")
        card = json.loads((output / "embedder" / "card.json").read_text())
        assert card["adapted"]["alias"] == alias
        assert report["chosen"]["top1"] > report["history"][0]["top1"]
        assert after != before
        assert mappings.index_meta(es_client, alias)["embedder"] == adapted.model_id
    else:
        assert not (output / "embedder").exists()
        assert after == before
    assert not (output / "work").exists()


def test_adapt_of_a_missing_alias_exits_with_the_indexing_code(
    es_node: Any, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        main, adapt_args(es_node.url, "no-such-alias-adapt", tmp_path / "out")
    )
    assert result.exit_code == 5
    assert "no-such-alias-adapt" in result.output
