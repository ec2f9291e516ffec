"""The cross-encoder's max length as a setting: ``eval --max-length`` checks it, the Scorer
defaults to the card's, the score caches (disk and the proxy's LRU) never mix lengths, and
``bench lengths`` times several lengths side by side.

Fakes only for the caches' key logic; the Scorer tests run the shipped int8 model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from reranker.cli import main
from reranker.errors import ConfigError
from reranker.evaluation.lengths import choose_max_length, length_curve, parse_lengths
from reranker.rerank.cache import CachedScorer, LruScores
from reranker.rerank.pipeline import QueryPath, scorer_for
from reranker.rerank.scorer import Scorer, length_tag
from tests.conftest import require_data
from tests.fakes import FakeScorer

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "reranker-minilm-l6"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"

LONG_PASSAGE = " ".join(
    f"Sentence {i} says that protein folding {'depends' if i % 2 else 'does not depend'} on "
    f"chaperone {i}, and that the {i}th mutation changes the shape of the enzyme."
    for i in range(40)
)  # ~800 tokens: cut at both 128 and 256, differently
QUERY = "does protein folding depend on chaperones"


# --------------------------------------------------------------------------- eval --max-length


def _eval(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["eval", "no-such-dataset", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("value", ["0", "7", "-5", "513", "100000"])
def test_eval_refuses_a_max_length_outside_8_to_the_position_limit(value: str) -> None:
    code, output = _eval("--modes", "rerank", "--max-length", value)
    assert code == 2, output
    assert "--max-length must be from 8 to 512" in output
    assert "Traceback" not in output


def test_eval_refuses_a_max_length_without_a_mode_that_reranks() -> None:
    code, output = _eval("--modes", "bm25,hybrid", "--max-length", "128")
    assert code == 2
    assert "add rerank or blend to --modes" in output


def test_eval_refuses_a_max_length_for_a_remote_scorer() -> None:
    code, output = _eval(
        "--modes", "rerank", "--max-length", "128", "--scorer-url", "http://127.0.0.1:1"
    )
    assert code == 2
    assert "--scorer-url truncates at its own length" in output


def test_eval_refuses_a_max_length_that_is_not_a_number() -> None:
    code, output = _eval("--modes", "rerank", "--max-length", "long")
    assert code == 2
    assert "is not a valid integer" in output


def test_a_query_path_with_a_max_length_and_scorer_urls_is_refused() -> None:
    path = QueryPath(index="x", scorer_urls=("http://127.0.0.1:1",), max_length=128)
    with pytest.raises(ConfigError, match="remote scorer"):
        scorer_for(path)


# --------------------------------------------------------------------------- the cache identity


class LengthScorer(FakeScorer):
    """Scores a pair by its passage length times its max length; counts what it ran."""

    def __init__(self, max_length: int | None) -> None:
        super().__init__(max_length=max_length)

    def scores(self, pairs: Sequence[tuple[str, str]], features: np.ndarray | None) -> np.ndarray:
        return np.array([float(len(p) * (self.max_length or 1)) for _, p in pairs], np.float32)


def test_the_default_length_keeps_the_old_cache_file_name() -> None:
    assert CachedScorer.disk_name(LengthScorer(256)) == "scores-fake-v1-int8"  # type: ignore[arg-type]
    assert CachedScorer.disk_name(LengthScorer(None)) == "scores-fake-v1-int8"  # type: ignore[arg-type]
    assert CachedScorer.disk_name(LengthScorer(128)) == "scores-fake-v1-int8-len128"  # type: ignore[arg-type]


def test_a_model_with_fewer_positions_than_256_keeps_its_old_name_at_its_limit() -> None:
    short = LengthScorer(128)
    short.max_positions = 128  # type: ignore[attr-defined]
    assert length_tag(short) == ""
    assert length_tag(LengthScorer(128)) == "len128"


def test_two_lengths_never_read_each_others_scores_on_disk(tmp_path: Path) -> None:
    at_256, at_128 = LengthScorer(256), LengthScorer(128)
    pairs = [("q", "alpha"), ("q", "beta gamma")]
    first = CachedScorer.on_disk(at_256, tmp_path).score(pairs)  # type: ignore[arg-type]
    second = CachedScorer.on_disk(at_128, tmp_path).score(pairs)  # type: ignore[arg-type]
    assert at_128.pairs_run == 2  # nothing came from the 256 file
    assert second.tolist() == [5.0 * 128, 10.0 * 128] != first.tolist()
    again = LengthScorer(256)
    assert CachedScorer.on_disk(again, tmp_path).score(pairs).tolist() == first.tolist()  # type: ignore[arg-type]
    assert again.pairs_run == 0  # the default length still hits its (old-named) file
    names = sorted(p.name for p in tmp_path.glob("*.sqlite"))
    assert names == ["scores-fake-v1-int8-len128.sqlite", "scores-fake-v1-int8.sqlite"]


def test_the_proxy_lru_never_serves_one_length_for_another() -> None:
    """A hot reload can change the length (the same ONNX file under a card with another
    max_length: same id, version and variant), and the proxy keeps one LRU across reloads."""
    store = LruScores(100)
    pairs = [("q", "alpha")]
    before = CachedScorer(LengthScorer(256), store)  # type: ignore[arg-type]
    after_reload = CachedScorer(LengthScorer(192), store)  # type: ignore[arg-type]
    before.score(pairs)
    assert not after_reload.covers(pairs)
    assert after_reload.score(pairs).tolist() == [5.0 * 192]
    assert after_reload.pairs_scored == 1


# --------------------------------------------------------------------------- the real Scorer


@pytest.fixture(scope="module")
def shipped_128() -> Scorer:
    return Scorer(SHIPPED, variant="int8", max_length=128, threads=1)


@pytest.fixture(scope="module")
def shipped_256() -> Scorer:
    return Scorer(SHIPPED, variant="int8", max_length=256, threads=1)


def test_the_shipped_scorer_defaults_to_its_card_max_length() -> None:
    card = json.loads((SHIPPED / "reranker.json").read_text(encoding="utf-8"))
    assert Scorer(SHIPPED, variant="int8", threads=1).max_length == card["max_length"]


def test_a_scorer_reads_its_default_max_length_from_the_card(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for item in SHIPPED.iterdir():
        if item.name != "reranker.json":
            (folder / item.name).symlink_to(item)
    card = json.loads((SHIPPED / "reranker.json").read_text(encoding="utf-8"))
    card["max_length"] = 160
    (folder / "reranker.json").write_text(json.dumps(card), encoding="utf-8")
    assert Scorer(folder, variant="int8", threads=1).max_length == 160
    assert Scorer(folder, variant="int8", threads=1, max_length=96).max_length == 96


def test_128_and_256_tokens_score_a_long_pair_differently_and_a_short_one_alike(
    shipped_128: Scorer, shipped_256: Scorer
) -> None:
    long_pair = [(QUERY, LONG_PASSAGE)]
    at_128, at_256 = shipped_128.score(long_pair), shipped_256.score(long_pair)
    assert shipped_128.last_stats.truncated == 1 and shipped_256.last_stats.truncated == 1
    assert shipped_128.last_stats.tokens == 128 and shipped_256.last_stats.tokens == 256
    assert abs(float(at_128[0] - at_256[0])) > 1e-3
    # alone in its batch (int8 activations are quantised per batch, padding included)
    short_pair = [(QUERY, "Chaperones help proteins fold.")]
    assert shipped_128.score(short_pair).tolist() == shipped_256.score(short_pair).tolist()
    assert shipped_128.last_stats.truncated == 0


def test_a_max_length_below_8_is_a_model_error() -> None:
    from reranker.errors import ModelError

    with pytest.raises(ModelError, match="at least 8"):
        Scorer(SHIPPED, variant="int8", max_length=7)


def test_a_query_path_max_length_reaches_the_scorer_and_its_cache_file(tmp_path: Path) -> None:
    path = QueryPath(index="x", model=SHIPPED, variant="int8", max_length=128, score_cache=tmp_path)
    scorer = scorer_for(path)
    assert isinstance(scorer, CachedScorer)
    assert scorer.scorer.max_length == 128  # type: ignore[attr-defined]
    assert scorer.cache.path.name.endswith("-int8-len128.sqlite")  # type: ignore[attr-defined]
    default = scorer_for(QueryPath(index="x", model=SHIPPED, variant="int8", score_cache=tmp_path))
    card_length = json.loads((SHIPPED / "reranker.json").read_text(encoding="utf-8"))["max_length"]
    suffix = "" if card_length == 256 else f"-len{card_length}"
    assert default.cache.path.name.endswith(f"-int8{suffix}.sqlite")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- bench lengths


def test_parse_lengths_keeps_order_and_drops_repeats() -> None:
    assert parse_lengths("128, 256,128,,320") == [128, 256, 320]


@pytest.mark.parametrize("text", ["", "128,abc", "0", "-4"])
def test_parse_lengths_refuses_nonsense(text: str) -> None:
    import click

    with pytest.raises(click.BadParameter):
        parse_lengths(text)


@pytest.mark.slow
def test_bench_lengths_times_each_length_on_real_pairs(tmp_path: Path) -> None:
    require_data(SCIFACT / "corpus.jsonl")
    out = tmp_path / "lengths.json"
    result = CliRunner().invoke(
        main,
        [
            "bench", "lengths", "--model", str(SHIPPED), "--lengths", "64,256",
            "--dataset", str(SCIFACT), "--pairs", "6", "--repeats", "1", "--threads", "1",
            "--output", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert [r["max_length"] for r in rows] == [64, 256]
    assert rows[0]["tokens"] < rows[1]["tokens"]
    assert rows[1]["max_abs_diff_vs_256"] == 0.0 and rows[1]["ms_vs_256"] == 1.0


def test_bench_lengths_refuses_a_length_beyond_the_position_limit() -> None:
    require_data(SCIFACT / "corpus.jsonl")
    result = CliRunner().invoke(
        main,
        ["bench", "lengths", "--model", str(SHIPPED), "--lengths", "600", "--pairs", "2",
         "--dataset", str(SCIFACT)],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "position limit" in result.output


# --------------------------------------------------------------------------- the choice


def test_the_shortest_length_within_the_tolerance_on_every_dataset_is_chosen() -> None:
    ndcg = {
        "a": {128: 0.700, 192: 0.706, 256: 0.708, 320: 0.709},
        "b": {128: 0.380, 192: 0.379, 256: 0.381, 320: 0.380},
    }
    assert choose_max_length(ndcg) == 192  # 128 loses 0.008 on a
    ndcg["a"][128] = 0.7031
    assert choose_max_length(ndcg) == 128
    ndcg["b"][128] = 0.3759  # 0.0051 below 256 on b
    assert choose_max_length(ndcg) == 192


def test_the_reference_is_chosen_when_every_shorter_length_loses() -> None:
    assert choose_max_length({"a": {128: 0.6, 256: 0.7, 320: 0.71}}) == 256


def test_a_choice_needs_the_reference_and_the_same_lengths_everywhere() -> None:
    with pytest.raises(ValueError, match="reference"):
        choose_max_length({"a": {128: 0.6}})
    with pytest.raises(ValueError, match="same lengths"):
        choose_max_length({"a": {128: 0.6, 256: 0.7}, "b": {256: 0.7}})


def _eval_json(dataset: str, length: int, ndcg: float, base: str = "hybrid") -> dict[str, object]:
    return {
        "dataset": dataset,
        "split": "test",
        "results": {"rerank": {"ndcg@10": ndcg, "mrr@10": 0.5, "recall@100": 0.9}},
        "cross_encoder": {
            "model": "m",
            "version": "v",
            "variant": "int8",
            "max_length": length,
            "rerank_base": base,
            "window": 100,
        },
    }


def test_length_curve_gathers_eval_results_and_refuses_mixed_setups() -> None:
    import click

    runs = [_eval_json("a", 256, 0.70), _eval_json("a", 128, 0.698)]
    curve = length_curve(runs, None)
    assert curve["chosen"] == 128 and curve["first_stage"] == "hybrid top-100"
    assert list(curve["datasets"]["a"]) == ["128", "256"]
    with pytest.raises(click.ClickException, match="different setups"):
        length_curve([*runs, _eval_json("a", 192, 0.7, base="bm25")], None)


def test_bench_lengths_times_a_first_stage_aware_model(tmp_path: Path) -> None:
    require_data(SCIFACT / "corpus.jsonl")
    out = tmp_path / "lengths.json"
    aware = SHIPPED.parent / "reranker-minilm-l6-aware"
    result = CliRunner().invoke(
        main,
        [
            "bench", "lengths", "--model", str(aware), "--lengths", "64,256",
            "--dataset", str(SCIFACT), "--pairs", "4", "--repeats", "1", "--threads", "1",
            "--output", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert [r["max_length"] for r in rows] == [64, 256]
    assert rows[0]["tokens"] < rows[1]["tokens"]
