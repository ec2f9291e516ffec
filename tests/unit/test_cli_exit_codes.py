"""The CLI's documented exit codes when the cluster cannot be reached (nothing listens on
port 9 of the loopback: a real refused connection, no node needed)."""

from __future__ import annotations

from click.testing import CliRunner

from reranker.cli import main

UNREACHABLE = "http://127.0.0.1:9"


def test_a_search_against_an_unreachable_cluster_exits_3_with_a_hint() -> None:
    result = CliRunner().invoke(
        main, ["--es-url", UNREACHABLE, "search", "vitamin D", "--alias", "x", "--mode", "bm25"]
    )
    assert result.exit_code == 3, result.output
    assert "cannot reach http://127.0.0.1:9" in result.output
    assert "reranker es up" in result.output


def test_doctor_exits_non_zero_when_the_cluster_is_unreachable() -> None:
    result = CliRunner().invoke(main, ["--es-url", UNREACHABLE, "doctor"])
    assert result.exit_code == 1, result.output
    assert "NO  elasticsearch" in result.output


def test_a_diversity_method_without_diversity_is_a_usage_error() -> None:
    args = ["--es-url", UNREACHABLE, "search", "vitamin D", "--alias", "x", "--rerank"]
    result = CliRunner().invoke(main, [*args, "--diversity-method", "mmr"])
    assert result.exit_code == 2, result.output
    assert "--diversity-method" in result.output and "needs --diversity" in result.output
