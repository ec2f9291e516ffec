"""`reranker eval` end to end on a small real slice of SciFact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from reranker.cli import main
from tests.integration.conftest import (
    SCIFACT,
    delete_indices_named_after,
    write_jsonl,
    write_mini_scifact,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mini_scifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 judged test queries, their relevant abstracts and 250 other abstracts."""
    return write_mini_scifact(tmp_path_factory.mktemp("mini-scifact"), "test", 30, 250)


#: the plain cross-encoder the remote scorers serve (the default is first-stage-aware)
PLAIN = str(Path(__file__).resolve().parents[2] / "models" / "reranker-minilm-l6")


def test_eval_writes_every_mode_and_metric_in_the_documented_shape(
    es_node: Any, es_client: Any, mini_scifact: Path, tmp_path: Path
) -> None:
    output = tmp_path / "eval.json"
    alias = "test-eval-mini-scifact"
    try:
        result = CliRunner().invoke(
            main,
            [
                "--es-url",
                es_node.url,
                "eval",
                str(mini_scifact),
                "--split",
                "test",
                "--alias",
                alias,
                "--output",
                str(output),
                "--no-progress",
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(output.read_text())
        assert report["dataset"] == mini_scifact.name
        assert report["queries"] == 30
        assert set(report["results"]) == {"bm25", "dense", "hybrid"}
        for scores in report["results"].values():
            assert set(scores) == {"ndcg@10", "mrr@10", "recall@100"}
        # Every relevant abstract is among 280 documents: each mode must find most of them.
        for mode in ("bm25", "dense", "hybrid"):
            assert report["results"][mode]["recall@100"] > 0.8, mode
            assert report["results"][mode]["ndcg@10"] > 0.5, mode
    finally:
        delete_indices_named_after(es_client, alias)


def test_eval_reuses_an_index_that_already_holds_the_corpus(
    es_node: Any, es_client: Any, mini_scifact: Path, tmp_path: Path
) -> None:
    alias = "test-eval-reuse"
    args = [
        "--es-url",
        es_node.url,
        "eval",
        str(mini_scifact),
        "--alias",
        alias,
        "--modes",
        "bm25",
        "--no-progress",
    ]
    try:
        first = CliRunner().invoke(main, args)
        assert "indexed" in first.output
        second = CliRunner().invoke(main, args)
        assert second.exit_code == 0, second.output
        assert "indexed" not in second.output
    finally:
        delete_indices_named_after(es_client, alias)


def test_eval_reuses_the_index_reranker_index_built_of_the_same_folder_and_its_signals(
    es_node: Any, es_client: Any, mini_scifact: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "with-signals"
    shutil.copytree(mini_scifact, folder)
    ids = [json.loads(line)["_id"] for line in (folder / "corpus.jsonl").open()]
    write_jsonl(folder / "signals.jsonl", [{"_id": i, "signals": {"citations": 3}} for i in ids])
    alias = "test-eval-after-index"
    try:
        built = CliRunner().invoke(
            main, ["--es-url", es_node.url, "index", str(folder), "--alias", alias, "--no-progress"]
        )
        assert built.exit_code == 0, built.output
        evaluated = CliRunner().invoke(
            main,
            ["--es-url", es_node.url, "eval", str(folder), "--alias", alias, "--modes", "bm25",
             "--no-progress"],
        )  # fmt: skip
        assert evaluated.exit_code == 0, evaluated.output
        assert "indexed" not in evaluated.output
    finally:
        delete_indices_named_after(es_client, alias)


def test_eval_of_a_split_without_qrels_exits_4_naming_the_splits(
    es_node: Any, mini_scifact: Path
) -> None:
    result = CliRunner().invoke(
        main, ["--es-url", es_node.url, "eval", str(mini_scifact), "--split", "dev"]
    )
    assert result.exit_code == 4
    assert "splits available: test" in result.output


def test_eval_rejects_an_unknown_mode_with_exit_2(es_node: Any, mini_scifact: Path) -> None:
    result = CliRunner().invoke(
        main, ["--es-url", es_node.url, "eval", str(mini_scifact), "--modes", "bm25,magic"]
    )
    assert result.exit_code == 2
    assert "magic" in result.output


def test_unreachable_cluster_exits_3_with_a_hint(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    shutil.copytree(SCIFACT / "qrels", folder / "qrels")
    shutil.copy(SCIFACT / "queries.jsonl", folder / "queries.jsonl")
    write_jsonl(folder / "corpus.jsonl", [{"_id": "1", "text": "x"}])
    result = CliRunner().invoke(
        main, ["--es-url", "http://127.0.0.1:9", "eval", str(folder), "--modes", "bm25"]
    )
    assert result.exit_code == 3
    assert "reranker es up" in result.output


def test_eval_through_a_remote_scorer_ranks_exactly_as_the_model_in_process(
    es_node: Any, es_client: Any, mini_scifact: Path, tmp_path: Path
) -> None:
    import httpx

    from tests.conftest import free_port
    from tests.integration.conftest import start_scorer, wait_healthy

    alias = "test-eval-remote-scorer"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_scorer(port)
    common = ["--es-url", es_node.url, "eval", str(mini_scifact), "--alias", alias]
    common += ["--modes", "rerank", "--window", "10", "--max-queries", "12", "--no-score-cache"]
    common += ["--no-progress", "--output"]
    try:
        wait_healthy(url, process)
        remote = CliRunner().invoke(
            main, [*common, str(tmp_path / "remote.json"), "--scorer-url", url]
        )
        assert remote.exit_code == 0, remote.output
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        local = CliRunner().invoke(
            main, [*common, str(tmp_path / "local.json"), "--variant", "int8", "--model", PLAIN]
        )
        assert local.exit_code == 0, local.output
    finally:
        process.kill()
        process.wait(timeout=10)
        delete_indices_named_after(es_client, alias)
    served = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("reranker_proxy_requests_total{")
        and 'kind="rerank_api"' in line
        and 'status="200"' in line
    ]
    assert served and served[0] >= 12  # every query's window went through the endpoint
    by_remote = json.loads((tmp_path / "remote.json").read_text())["results"]["rerank"]
    by_local = json.loads((tmp_path / "local.json").read_text())["results"]["rerank"]
    assert by_remote == pytest.approx(by_local, abs=1e-9)


def test_a_cascade_whose_student_is_the_full_model_ranks_as_the_full_model(
    es_node: Any, es_client: Any, mini_scifact: Path, tmp_path: Path
) -> None:
    """Same tokenizer, same scores: the student's top k re-ordered by the full model, the
    rest in the student's (= the full model's) order: the full model's ranking at any k."""
    shipped = Path(__file__).resolve().parents[2] / "models" / "reranker-minilm-l6"
    alias = "test-eval-cascade"
    base = ["--es-url", es_node.url, "eval", str(mini_scifact), "--alias", alias]
    base += ["--modes", "rerank", "--window", "20", "--max-queries", "5", "--no-progress"]
    base += ["--model", str(shipped)]
    try:
        reports = []
        for extra in (
            ["--cascade-model", "none"],
            ["--cascade-model", str(shipped), "--cascade-k", "5"],
        ):
            output = tmp_path / f"eval-{len(extra)}.json"
            result = CliRunner().invoke(main, [*base, *extra, "--output", str(output)])
            assert result.exit_code == 0, result.output
            reports.append(json.loads(output.read_text())["results"]["rerank"])
        assert reports[0] == reports[1]
        cascade_21 = ["--cascade-model", str(shipped), "--cascade-k", "21"]
        refused = CliRunner().invoke(main, [*base, *cascade_21])
        assert refused.exit_code == 2
        assert "between 1 and --window (20)" in refused.output
    finally:
        delete_indices_named_after(es_client, alias)


def test_the_first_stage_as_cascade_level_at_k_equal_to_the_window_is_the_full_model(
    es_node: Any, es_client: Any, mini_scifact: Path, tmp_path: Path
) -> None:
    """With the first stage as the cheap level, the first-stage-aware model reads the whole
    window's features either way: at k = window the cascade is the model alone; at a small
    k the hits below k keep the first stage's order."""
    aware = Path(__file__).resolve().parents[2] / "models" / "reranker-minilm-l6-aware"
    alias = "test-eval-first-stage-cascade"
    base = ["--es-url", es_node.url, "eval", str(mini_scifact), "--alias", alias]
    base += ["--modes", "hybrid,rerank", "--window", "20", "--max-queries", "5"]
    base += ["--model", str(aware), "--no-score-cache", "--no-progress"]
    try:
        reports = []
        for k in (None, 20, 1):
            extra = [] if k is None else ["--cascade-model", "first-stage", "--cascade-k", str(k)]
            output = tmp_path / f"eval-{k}.json"
            result = CliRunner().invoke(main, [*base, *extra, "--output", str(output)])
            assert result.exit_code == 0, result.output
            reports.append(json.loads(output.read_text())["results"])
        alone, whole, top1 = reports
        assert whole["rerank"] == alone["rerank"]
        # k = 1: the first stage's order everywhere (one hit rescored cannot move)
        assert top1["rerank"] == alone["hybrid"]
    finally:
        delete_indices_named_after(es_client, alias)


def test_bench_window_times_each_step_of_the_ladder_on_real_windows(
    es_node: Any, es_client: Any, mini_scifact: Path, tmp_path: Path
) -> None:
    alias = "test-bench-window"
    output = tmp_path / "window.json"
    try:
        index = ["--es-url", es_node.url, "eval", str(mini_scifact), "--alias", alias]
        indexed = CliRunner().invoke(main, [*index, "--modes", "hybrid", "--no-progress"])
        assert indexed.exit_code == 0, indexed.output
        args = ["--es-url", es_node.url, "bench", "window", "--dataset", str(mini_scifact)]
        args += ["--index", alias, "--queries", "2", "--window", "20", "--cascade-k", "5"]
        result = CliRunner().invoke(main, [*args, "--output", str(output)])
        assert result.exit_code == 0, result.output
        report = json.loads(output.read_text())
        steps = [row["step"] for row in report["results"]]
        # the index holds the second embedder's vectors (eval's default): its step comes last
        assert steps == [
            "baseline",
            "model@256",
            "model@192",
            "model@192+cascade5",
            "model@192+cascade5+rescore",
        ]
        assert [row["max_length"] for row in report["results"]] == [256, 256, 192, 192, 192]
        assert report["queries"] == 2 and report["score_cache"] is False
        for row in report["results"]:
            assert row["p50_ms"] > 0 and 0.0 <= row["ndcg@10"] <= 1.0
        assert report["results"][0]["x_baseline"] == 1.0
        too_deep = CliRunner().invoke(main, [*args[:-2], "--cascade-k", "21"])
        assert too_deep.exit_code == 2 and "at most --window (20)" in too_deep.output
    finally:
        delete_indices_named_after(es_client, alias)


def test_search_refuses_knn_with_another_embedder_than_the_index_was_built_with(
    es_node: Any, es_client: Any, mini_scifact: Path
) -> None:
    alias = "test-search-embedder"
    stock = "all-MiniLM-L6-v2"  # the index gets the default (fine-tuned) embedder
    base = ["--es-url", es_node.url]
    try:
        indexed = CliRunner().invoke(
            main, [*base, "eval", str(mini_scifact), "--alias", alias, "--modes", "bm25"]
        )
        assert indexed.exit_code == 0, indexed.output
        query = ["search", "coffee and the heart", "--alias", alias, "--k", "3"]
        other = CliRunner().invoke(main, [*base, "--embedder", stock, *query])
        assert other.exit_code == 2
        assert "was embedded with all-MiniLM-L6-v2-scifact-se@" in other.output
        lexical = CliRunner().invoke(main, [*base, "--embedder", stock, *query, "--mode", "bm25"])
        assert lexical.exit_code == 0, lexical.output
        same = CliRunner().invoke(main, [*base, *query, "--mode", "hybrid"])
        assert same.exit_code == 0, same.output
    finally:
        delete_indices_named_after(es_client, alias)


def test_search_and_reindex_follow_the_embedder_the_index_was_built_with(
    es_node: Any, es_client: Any, mini_scifact: Path
) -> None:
    from reranker.es.mappings import index_meta

    alias = "test-search-follows"
    base = ["--es-url", es_node.url]
    try:
        stock = [*base, "--embedder", "all-MiniLM-L6-v2"]
        indexed = CliRunner().invoke(
            main, [*stock, "eval", str(mini_scifact), "--alias", alias, "--modes", "bm25"]
        )
        assert indexed.exit_code == 0, indexed.output
        built_with = index_meta(es_client, alias)["embedder"]
        assert built_with.startswith("all-MiniLM-L6-v2@")
        query = ["search", "coffee and the heart", "--alias", alias, "--k", "3"]
        followed = CliRunner().invoke(main, [*base, *query, "--mode", "hybrid"])
        assert followed.exit_code == 0, followed.output
        assert "embedding queries with" in followed.output
        rebuilt = CliRunner().invoke(main, [*base, "reindex", "--alias", alias, "--no-progress"])
        assert rebuilt.exit_code == 0, rebuilt.output
        assert index_meta(es_client, alias)["embedder"] == built_with
    finally:
        delete_indices_named_after(es_client, alias)


def test_eval_with_diversity_reports_redundancy_and_keeps_the_order_at_lambda_one(
    es_node: Any, es_client: Any, mini_scifact: Path, tmp_path: Path
) -> None:
    alias = "test-eval-diversity"
    base = ["--es-url", es_node.url, "eval", str(mini_scifact), "--alias", alias]
    base += ["--modes", "rerank", "--window", "20", "--max-queries", "8", "--no-progress"]
    try:
        reports = []
        mmr = ["--diversity", "0.3", "--diversity-method", "mmr"]
        for extra in ([], ["--diversity", "1"], ["--diversity", "0.3"], mmr):
            output = tmp_path / f"eval-{len(reports)}.json"
            result = CliRunner().invoke(main, [*base, *extra, "--output", str(output)])
            assert result.exit_code == 0, result.output
            reports.append(json.loads(output.read_text())["results"]["rerank"])
        plain, kept, swapped, by_mmr = reports
        assert "ils@10" not in plain
        assert kept["ndcg@10"] == pytest.approx(plain["ndcg@10"])
        assert 0.0 < swapped["ils@10"] < kept["ils@10"]
        assert 0.0 < by_mmr["ils@10"] < kept["ils@10"]
        alone = CliRunner().invoke(main, [*base, "--duplicate-threshold", "0.9"])
        assert alone.exit_code == 2 and "needs --diversity" in alone.output
    finally:
        delete_indices_named_after(es_client, alias)


def test_bench_diversity_measures_ndcg_and_redundancy_against_lambda(
    es_node: Any, es_client: Any, mini_scifact: Path, tmp_path: Path
) -> None:
    alias = "test-bench-diversity"
    output = tmp_path / "diversity.json"
    args = ["--es-url", es_node.url, "bench", "diversity", "--dataset", str(mini_scifact)]
    args += ["--alias", alias, "--split", "test", "--window", "20", "--max-queries", "6"]
    args += ["--lambdas", "1,0.3", "--no-progress", "--output", str(output)]
    try:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        report = json.loads(output.read_text())
        at_one, at_low = report["curve"]
        assert report["method"] == "swap" and at_one == report["baseline"]
        assert at_low["lambda"] == 0.3 and at_low["ils@10"] < at_one["ils@10"]
        bad = CliRunner().invoke(main, [*args[:-2], "--lambdas", "1,2"])
        assert bad.exit_code == 2 and "[0, 1]" in bad.output
    finally:
        delete_indices_named_after(es_client, alias)
