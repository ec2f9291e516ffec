"""The index path against a real Elasticsearch node and the real ONNX embedder."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from elasticsearch import Elasticsearch

from reranker.cli import main
from reranker.corpus import CorpusSource, passage_text
from reranker.errors import IndexingError, MalformedLineError
from reranker.es import mappings
from reranker.es.indexing import LoadOptions, _load_and_swap, index_corpus, reindex_alias
from reranker.retrieval.embedder import Embedder
from tests.integration.conftest import write_jsonl

pytestmark = pytest.mark.integration
QUIET = LoadOptions(progress=False)


def indices_named_after(client: Elasticsearch, alias: str) -> list[str]:
    return sorted(client.indices.get(index=f"{alias}-*", allow_no_indices=True).keys())


def with_signals(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = copy.deepcopy(docs)
    for rank, doc in enumerate(rows):
        doc["signals"] = {"citations": rank * 3, "year": 1990 + rank % 30}
    return rows


def test_index_publishes_alias_after_verifying_the_count(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", scifact_docs[:40])
    result = index_corpus(es_client, CorpusSource.open(path), alias, embedder, options=QUIET)
    assert mappings.indices_behind_alias(es_client, alias) == [result.index]
    assert result.index.startswith(f"{alias}-")
    assert es_client.count(index=alias)["count"] == 40
    meta = mappings.index_meta(es_client, result.index)
    assert meta["documents"] == 40
    assert meta["embedder"] == embedder.model_id


def test_analyser_choice_matches_the_clusters_modules_and_is_recorded(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    has_stemmer = mappings.supported_token_filters(es_client, ["porter_stem"])["porter_stem"]
    path = write_jsonl(tmp_path / "docs.jsonl", scifact_docs[:5])
    result = index_corpus(es_client, CorpusSource.open(path), alias, embedder, options=QUIET)
    assert mappings.index_meta(es_client, result.index)["analyzer"] == (
        "stemmed" if has_stemmer else "core"
    )


def test_reindexing_the_same_source_is_idempotent(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    source = CorpusSource.open(write_jsonl(tmp_path / "docs.jsonl", scifact_docs[:30]))
    first = index_corpus(es_client, source, alias, embedder, options=QUIET)
    ids_before = {h["_id"] for h in es_client.search(index=alias, size=100)["hits"]["hits"]}
    second = index_corpus(es_client, source, alias, embedder, options=QUIET)
    ids_after = {h["_id"] for h in es_client.search(index=alias, size=100)["hits"]["hits"]}
    assert second.previous == [first.index]
    assert indices_named_after(es_client, alias) == [second.index]
    assert ids_after == ids_before
    assert len(ids_after) == 30


def test_bulk_failure_midway_leaves_the_live_alias_and_index_untouched(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    good = with_signals(scifact_docs[:60])
    live = index_corpus(
        es_client,
        CorpusSource.open(write_jsonl(tmp_path / "good.jsonl", good)),
        alias,
        embedder,
        options=QUIET,
    )
    bad = with_signals(scifact_docs[:60])
    bad[45]["signals"]["year"] = "the year of the rat"  # mapped as a number by then
    bad_source = CorpusSource.open(write_jsonl(tmp_path / "bad.jsonl", bad))
    options = LoadOptions(progress=False, chunk_size=16)
    with pytest.raises(IndexingError, match="rejected") as caught:
        index_corpus(es_client, bad_source, alias, embedder, options=options)
    assert bad[45]["_id"] in str(caught.value)
    assert mappings.indices_behind_alias(es_client, alias) == [live.index]
    assert indices_named_after(es_client, alias) == [live.index]
    assert es_client.count(index=alias)["count"] == 60


def test_malformed_line_aborts_before_elasticsearch_is_touched(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", scifact_docs[:8])
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4][:-10]  # truncated JSON on line 5
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(MalformedLineError) as caught:
        index_corpus(es_client, CorpusSource.open(path), alias, embedder, options=QUIET)
    assert caught.value.line_number == 5
    assert indices_named_after(es_client, alias) == []


def test_skip_malformed_indexes_the_rest_and_reports_the_line(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", scifact_docs[:8])
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"_id": "no-text"}\n')
    result = index_corpus(
        es_client, CorpusSource.open(path), alias, embedder, skip_malformed=True, options=QUIET
    )
    assert [e.line_number for e in result.skipped] == [9]
    assert es_client.count(index=alias)["count"] == 8


def test_reindex_rebuilds_from_the_current_index_and_swaps(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    first = index_corpus(
        es_client,
        CorpusSource.open(write_jsonl(tmp_path / "d.jsonl", scifact_docs[:25])),
        alias,
        embedder,
        options=QUIET,
    )
    vector_before = es_client.get(
        index=alias, id=scifact_docs[0]["_id"], source_exclude_vectors=False
    )["_source"]["embedding"]
    second = reindex_alias(es_client, alias, embedder, options=QUIET)
    assert second.index != first.index
    assert mappings.indices_behind_alias(es_client, alias) == [second.index]
    assert es_client.count(index=alias)["count"] == 25
    vector_after = es_client.get(
        index=alias, id=scifact_docs[0]["_id"], source_exclude_vectors=False
    )["_source"]["embedding"]
    assert vector_after == pytest.approx(vector_before)


def test_alias_that_names_a_concrete_index_is_refused(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    es_client.indices.create(index=f"{alias}-plain")
    path = write_jsonl(tmp_path / "d.jsonl", scifact_docs[:3])
    with pytest.raises(IndexingError, match="is an index, not an alias"):
        index_corpus(es_client, CorpusSource.open(path), f"{alias}-plain", embedder, options=QUIET)


def test_cli_reports_a_malformed_line_number_and_exits_4(
    es_node: Any, scifact_docs: list[dict[str, Any]], tmp_path: Path, alias: str
) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", scifact_docs[:3])
    with path.open("a", encoding="utf-8") as handle:
        handle.write("{oops\n")
    result = CliRunner().invoke(
        main, ["--es-url", es_node.url, "index", str(path), "--alias", alias, "--no-progress"]
    )
    assert result.exit_code == 4
    assert f"{path}:4:" in result.output


def test_cli_index_then_search_finds_a_document_by_its_title(
    es_node: Any, scifact_docs: list[dict[str, Any]], tmp_path: Path, alias: str
) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", scifact_docs[:50])
    runner = CliRunner()
    indexed = runner.invoke(
        main, ["--es-url", es_node.url, "index", str(path), "--alias", alias, "--no-progress"]
    )
    assert indexed.exit_code == 0, indexed.output
    target = scifact_docs[17]
    for mode in ("bm25", "dense", "hybrid"):
        found = runner.invoke(
            main,
            [
                "--es-url",
                es_node.url,
                "search",
                str(target["title"]),
                "--alias",
                alias,
                "--mode",
                mode,
                "--k",
                "3",
                "--json",
            ],
        )
        assert found.exit_code == 0, found.output
        top = json.loads(found.output.splitlines()[0])
        assert top["_id"] == target["_id"], mode


def test_count_mismatch_aborts_before_the_swap(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    live = index_corpus(
        es_client,
        CorpusSource.open(write_jsonl(tmp_path / "d.jsonl", scifact_docs[:10])),
        alias,
        embedder,
        options=QUIET,
    )
    # Claim one more document than the source yields: the load succeeds, the check must not.
    with pytest.raises(IndexingError, match="count check failed"):
        _load_and_swap(
            es_client,
            alias,
            embedder,
            documents=lambda: iter(copy.deepcopy(scifact_docs[10:20])),
            expected=11,
            meta={},
            cache=None,
            reuse_embeddings=False,
            options=QUIET,
        )
    assert mappings.indices_behind_alias(es_client, alias) == [live.index]
    assert indices_named_after(es_client, alias) == [live.index]


class CountingEncoder:
    """The real embedder, counting the documents it was asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.embedded = 0
        self.dim = inner.dim
        self.model_id = inner.model_id

    def encode(self, texts: Any, **kwargs: Any) -> Any:
        self.embedded += len(texts)
        return self.inner.encode(texts, **kwargs)


class InterruptedSource(CorpusSource):
    """The corpus as on disk, but the load (the second reading: the first one checks every
    line) stops with Ctrl-C after ``after`` documents."""

    after = 0
    readings = 0

    def documents(self, **kwargs: Any) -> Any:
        self.readings += 1
        for n, doc in enumerate(super().documents(**kwargs)):
            if n == self.after and self.readings > 1:
                raise KeyboardInterrupt
            yield doc


SMALL_BULKS = LoadOptions(progress=False, chunk_size=20, bulk_chunk=20)


def interrupted_load(
    client: Elasticsearch, embedder: Embedder, path: Path, alias: str, after: int
) -> str:
    """Index ``path`` behind ``alias`` with Ctrl-C after ``after`` documents; the index left."""
    interrupted = InterruptedSource.open(path)
    interrupted.after = after
    with pytest.raises(KeyboardInterrupt):
        index_corpus(client, interrupted, alias, embedder, options=SMALL_BULKS)
    (partial,) = indices_named_after(client, alias)
    return partial


def test_an_interrupted_index_run_resumes_without_embedding_what_was_loaded(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", scifact_docs)
    partial = interrupted_load(es_client, embedder, path, alias, after=60)
    assert mappings.indices_behind_alias(es_client, alias) == []
    assert mappings.index_meta(es_client, partial)["in_progress"] is True

    counting = CountingEncoder(embedder)
    result = index_corpus(es_client, CorpusSource.open(path), alias, counting, options=SMALL_BULKS)
    assert result.index == partial
    assert 20 <= result.resumed_from <= 60
    assert result.loaded == counting.embedded == len(scifact_docs) - result.resumed_from
    assert mappings.indices_behind_alias(es_client, alias) == [partial]
    assert es_client.count(index=alias)["count"] == len(scifact_docs)
    assert "in_progress" not in mappings.index_meta(es_client, partial)


def test_an_unfinished_index_of_another_source_is_not_resumed(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    first = write_jsonl(tmp_path / "first.jsonl", scifact_docs)
    partial = interrupted_load(es_client, embedder, first, alias, after=40)
    other = write_jsonl(tmp_path / "other.jsonl", scifact_docs[:30])
    result = index_corpus(es_client, CorpusSource.open(other), alias, embedder, options=QUIET)
    assert result.index != partial and result.resumed_from == 0
    assert es_client.count(index=alias)["count"] == 30


def test_a_failed_index_run_is_not_left_to_resume(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    broken = [*scifact_docs[:30], {"_id": "bad", "title": "x", "text": "y", "signals": "oops"}]
    path = write_jsonl(tmp_path / "docs.jsonl", broken)
    with pytest.raises(IndexingError):
        index_corpus(es_client, CorpusSource.open(path), alias, embedder, options=SMALL_BULKS)
    assert indices_named_after(es_client, alias) == []


def test_reindex_with_another_embedder_embeds_again_instead_of_copying(
    es_client: Elasticsearch,
    embedder: Embedder,
    scifact_docs: list[dict[str, Any]],
    tmp_path: Path,
    alias: str,
) -> None:
    from reranker.config import Settings

    index_corpus(
        es_client,
        CorpusSource.open(write_jsonl(tmp_path / "d.jsonl", scifact_docs[:5])),
        alias,
        embedder,
        options=QUIET,
    )
    other = Embedder.stock(Settings(home=tmp_path / "home"))
    assert other.model_id != embedder.model_id

    reindex_alias(es_client, alias, other, options=QUIET)

    stored = es_client.get(index=alias, id=scifact_docs[0]["_id"], source_exclude_vectors=False)
    expected = other.encode([passage_text(scifact_docs[0])])[0]
    assert stored["_source"]["embedding"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert mappings.index_meta(es_client, alias)["embedder"] == other.model_id
