"""`reranker train --heads/--loss-weights/--click-events`: bad names, weights and a
click-through head without its events exit 2 before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from reranker.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--first-stage-aware", "--heads", "relevance,clicks"], "unknown head(s) clicks"),
        (["--first-stage-aware", "--heads", "popularity"], "must include relevance"),
        (
            ["--first-stage-aware", "--heads", "relevance,popularity", "--loss-weights",
             "relevance=0,popularity=0"],
            "every loss weight is zero",
        ),
        (
            ["--first-stage-aware", "--loss-weights", "authority=1"],
            "not a head of this model",
        ),
        (["--heads", "relevance,popularity"], "need --first-stage-aware"),
        (["--first-stage-aware", "--heads", "relevance,clickthrough"], "click events"),
        (
            ["--first-stage-aware", "--heads", "relevance,popularity", "--click-events",
             "EVENTS"],
            "click events",
        ),
        (["--click-events", "EVENTS"], "need --first-stage-aware"),
    ],
)  # fmt: skip
def test_bad_heads_or_loss_weights_exit_2_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    args = [str(events) if a == "EVENTS" else a for a in args]
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--output", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()
