"""The cascade (a student scores the window, the full model its top k) with stand-in scorers,
its checks in the pipeline, the proxy and ``reranker eval``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from reranker.blend.blends import LinearBlend
from reranker.cli import main
from reranker.errors import ConfigError, SearchError
from reranker.proxy.errors import ProxyError
from reranker.proxy.request import parse_rerank
from reranker.proxy.settings import ProxySettings
from reranker.rerank.cascade import Cascade, cascade_order, cascade_split, check_cascade_models
from reranker.rerank.pipeline import Pipeline, QueryPath, cascade_for
from reranker.retrieval.first_stage import Hit
from tests.fakes import FakeScorer

# --------------------------------------------------------------------------- pure ordering


def test_split_takes_the_students_top_k_in_its_order_ties_by_window_position() -> None:
    head, tail = cascade_split([0.1, 0.9, 0.5, 0.9, 0.2], 3)
    assert head == [1, 3, 2]
    assert tail == [4, 0]


def test_order_is_the_full_models_order_of_the_head_then_the_tail_in_student_order() -> None:
    student = [5.0, 4.0, 3.0, 2.0, 1.0]
    # the full model reverses the head (positions 0, 1, 2)
    assert cascade_order(student, [0.0, 1.0, 2.0], 3) == [2, 1, 0, 3, 4]


def test_a_tail_hit_never_rises_above_the_head_whatever_the_full_model_says() -> None:
    student = [1.0, 9.0, 8.0, 7.0]
    order = cascade_order(student, [-100.0, -200.0], 2)
    assert order[:2] == [1, 2] and order[2:] == [3, 0]


def test_k_equal_to_the_window_is_the_full_model_alone() -> None:
    rng = np.random.default_rng(0)
    student, full = rng.normal(size=20).tolist(), rng.normal(size=20).tolist()
    head, _ = cascade_split(student, 20)
    order = cascade_order(student, [full[i] for i in head], 20)
    assert order == sorted(range(20), key=lambda i: -full[i])


def test_full_ties_keep_the_students_order() -> None:
    assert cascade_order([1.0, 3.0, 2.0], [0.5, 0.5], 2) == [1, 2, 0]


def test_order_refuses_a_wrong_number_of_full_scores() -> None:
    with pytest.raises(ValueError, match="full-model scores"):
        cascade_order([1.0, 2.0, 3.0], [1.0], 2)


# --------------------------------------------------------------------------- in the pipeline


class ListedFirstStage:
    def __init__(self, docs: list[tuple[str, str]]) -> None:
        self.docs = docs

    def search(self, text: str, mode: str, k: int, **_: Any) -> list[Hit]:
        return [
            Hit(id=doc_id, score=float(len(self.docs) - i), source={"title": "", "text": body})
            for i, (doc_id, body) in enumerate(self.docs[:k])
        ]


class TableScorer(FakeScorer):
    """Scores a passage from a table; records what it was asked; raises if told to."""

    def __init__(self, name: str, table: dict[str, float], fail: bool = False) -> None:
        super().__init__(name, fail=fail)
        self.table = table

    def scores(self, pairs: Sequence[tuple[str, str]], features: np.ndarray | None) -> np.ndarray:
        return np.array([self.table[p] for _, p in pairs], dtype=np.float32)


# the first stage's order is a..f; the student likes b, c, a, f, e, d; the full model
# disagrees with it on its head and would put d (student's last) first
DOCS = [(name, name) for name in "abcdef"]
STUDENT = {"a": 4.0, "b": 6.0, "c": 5.0, "d": 1.0, "e": 2.0, "f": 3.0}
FULL = {"a": 9.0, "b": -1.0, "c": 3.0, "d": 50.0, "e": 0.0, "f": 1.0}


def cascade_pipeline(k: int, **kwargs: Any) -> tuple[Pipeline, TableScorer, TableScorer]:
    student, full = TableScorer("student", STUDENT), TableScorer("full", FULL)
    pipeline = Pipeline(
        ListedFirstStage(DOCS),  # type: ignore[arg-type]
        full,
        window=6,
        cascade=Cascade(student, k),
        **kwargs,
    )
    return pipeline, student, full


def test_the_full_model_rescores_only_the_students_top_k() -> None:
    pipeline, student, full = cascade_pipeline(3)
    result = pipeline.search("q", k=6)
    assert student.calls == [list("abcdef")]
    assert sorted(full.calls[0]) == ["a", "b", "c"]
    # head by the full model (a 9, c 3, b -1), then the student's order of the rest (f, e, d)
    assert [h.id for h in result.hits] == ["a", "c", "b", "f", "e", "d"]
    assert result.cascade == {"model": "student", "k": 3}
    assert result.degraded is None


def test_scores_follow_the_order_and_say_which_model_gave_them() -> None:
    pipeline, _, _ = cascade_pipeline(3)
    hits = pipeline.search("q", k=6).hits
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)
    assert [h.relevance for h in hits[:3]] == [9.0, 3.0, -1.0]
    assert all(h.relevance is None for h in hits[3:])
    assert [h.student for h in hits] == [STUDENT[h.id] for h in hits]
    assert [h.first_stage_rank for h in hits] == [1, 3, 2, 6, 5, 4]


def test_k_equal_to_the_window_gives_the_full_models_order() -> None:
    pipeline, _, _ = cascade_pipeline(6)
    assert [h.id for h in pipeline.search("q", k=6).hits] == sorted(STUDENT, key=lambda d: -FULL[d])


def test_k_bounds_are_checked_against_the_window() -> None:
    student, full = TableScorer("student", STUDENT), TableScorer("full", FULL)
    for k in (0, -1, 7):
        with pytest.raises(SearchError, match="between 1 and the window"):
            Pipeline(None, full, window=6, cascade=Cascade(student, k))


def test_a_cascade_needs_the_full_model_and_refuses_a_blend() -> None:
    student, full = TableScorer("student", STUDENT), TableScorer("full", FULL)
    with pytest.raises(SearchError, match="needs the full model"):
        Pipeline(None, None, window=6, cascade=Cascade(student, 2))
    blend = LinearBlend(weights={"relevance": 1.0}, feature_names=("relevance",))
    with pytest.raises(SearchError, match="blend"):
        Pipeline(None, full, window=6, cascade=Cascade(student, 2), blend=blend)


@pytest.mark.parametrize("failing", ["student", "full"])
def test_a_failing_model_fails_open_to_the_first_stage_order(failing: str) -> None:
    student = TableScorer("student", STUDENT, fail=failing == "student")
    full = TableScorer("full", FULL, fail=failing == "full")
    pipeline = Pipeline(
        ListedFirstStage(DOCS),  # type: ignore[arg-type]
        full,
        window=6,
        cascade=Cascade(student, 2),
    )
    result = pipeline.search("q", k=6)
    assert [h.id for h in result.hits] == list("abcdef")
    assert result.degraded is not None and f"{failing} exploded" in result.degraded.reason
    assert all(h.relevance is None and h.student is None for h in result.hits)


class FeatureScorer(TableScorer):
    """A first-stage-aware stand-in: records the feature rows it was given."""

    def __init__(self, name: str, table: dict[str, float]) -> None:
        super().__init__(name, table)
        self.feature_names = ("fused",)
        self.rows: list[np.ndarray] = []

    def scores(self, pairs: Sequence[tuple[str, str]], features: np.ndarray | None) -> np.ndarray:
        self.rows.append(np.asarray(features))
        return super().scores(pairs, features)


class ScoredFirstStage(ListedFirstStage):
    """The window a..f in first-stage order, with both lists' scores (hybrid)."""

    def search(self, text: str, mode: str, k: int, **_: Any) -> list[Hit]:
        hits = super().search(text, mode, k)
        return [
            Hit(h.id, h.score, h.source, stage_scores={"bm25": h.score, "dense": h.score / 10})
            for h in hits
        ]


def test_the_first_stage_as_cheap_level_sends_only_its_top_k_to_the_full_model() -> None:
    full = TableScorer("full", FULL)
    pipeline = Pipeline(
        ListedFirstStage(DOCS),  # type: ignore[arg-type]
        full,
        window=6,
        cascade=Cascade(None, 3),
    )
    result = pipeline.search("q", k=6)
    assert full.calls == [["a", "b", "c"]]
    # a, b, c by the full model (a 9, c 3, b -1), then d, e, f in first-stage order
    assert [h.id for h in result.hits] == ["a", "c", "b", "d", "e", "f"]
    assert result.cascade == {"model": "first-stage", "k": 3}
    assert [h.student for h in result.hits] == [6.0, 4.0, 5.0, 3.0, 2.0, 1.0]
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)


def test_a_first_stage_aware_full_model_reads_its_heads_rows_of_the_windows_features() -> None:
    full = FeatureScorer("full", FULL)
    plain = FeatureScorer("full", FULL)
    stage = ScoredFirstStage(DOCS)
    Pipeline(stage, plain, base="hybrid", window=6).search("q", k=6)  # type: ignore[arg-type]
    cascaded = Pipeline(
        stage,  # type: ignore[arg-type]
        full,
        base="hybrid",
        window=6,
        cascade=Cascade(None, 2),
    )
    result = cascaded.search("q", k=6)
    assert full.calls == [["a", "b"]]
    # normalised over the whole window, as without a cascade
    np.testing.assert_array_equal(full.rows[0], plain.rows[0][:2])
    assert [h.id for h in result.hits] == ["a", "b", "c", "d", "e", "f"]


def test_a_first_stage_cascade_counts_as_cached_when_its_head_is() -> None:
    class HeadCovering(TableScorer):
        def uncached(self, pairs: Any, features: Any = None, **_: Any) -> list[int]:
            return [] if [p for _, p in pairs] == ["a", "b", "c"] else list(range(len(pairs)))

    candidates = ListedFirstStage(DOCS).search("q", "bm25", 6)
    full = HeadCovering("full", FULL)
    head_cached = Pipeline(None, full, window=6, cascade=Cascade(None, 3))
    assert not head_cached.uncached_pairs("q", candidates)
    assert Pipeline(None, full, window=6).uncached_pairs("q", candidates)


# --------------------------------------------------------------------------- model checks


class CardScorer(TableScorer):
    def __init__(
        self, name: str, tokenizer: str, max_length: int, features: tuple[str, ...] = ()
    ) -> None:
        super().__init__(name, {})
        self.card = {"files": {"tokenizer.json": tokenizer}, "max_length": max_length}
        self.max_length = max_length
        self.feature_names = features


def test_a_student_with_the_same_tokenizer_and_length_is_accepted() -> None:
    check_cascade_models(CardScorer("full", "abc", 256), CardScorer("student", "abc", 256))


def test_a_student_with_another_tokenizer_is_refused() -> None:
    with pytest.raises(ConfigError, match="another tokenizer"):
        check_cascade_models(CardScorer("full", "abc", 256), CardScorer("student", "xyz", 256))


def test_a_student_with_another_max_length_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_length 128"):
        check_cascade_models(CardScorer("full", "abc", 256), CardScorer("student", "abc", 128))


def test_a_first_stage_aware_full_model_may_lead_a_plain_student() -> None:
    full = CardScorer("full", "abc", 256, features=("fused",))
    check_cascade_models(full, CardScorer("student", "abc", 256))


def test_a_first_stage_aware_student_is_refused() -> None:
    student = CardScorer("student", "abc", 256, features=("fused",))
    with pytest.raises(ConfigError, match="first-stage-aware"):
        check_cascade_models(CardScorer("full", "abc", 256), student)


def test_the_first_stage_leads_any_full_model_even_a_remote_one() -> None:
    check_cascade_models(TableScorer("remote", {}), None)


def test_a_model_without_a_card_cannot_be_checked_so_is_refused() -> None:
    with pytest.raises(ConfigError, match="locally"):
        check_cascade_models(TableScorer("remote", {}), CardScorer("student", "abc", 256))


def test_the_shipped_models_refuse_each_other_as_a_cascade() -> None:
    """The first-stage-aware model as the full model, the plain one as its student: they
    read different lengths (192 and 256 tokens)."""
    repo = Path(__file__).resolve().parents[2]
    path = QueryPath(
        index="x",
        model=repo / "models" / "reranker-minilm-l6-aware",
        cascade_model=repo / "models" / "reranker-minilm-l6",
        cascade_k=10,
    )
    from reranker.rerank.scorer import load_scorer

    with pytest.raises(ConfigError, match="max_length"):
        cascade_for(path, load_scorer(path.model))


def test_a_path_naming_the_first_stage_loads_no_student() -> None:
    path = QueryPath(index="x", window=50, cascade_model=Path("first-stage"), cascade_k=30)
    cascade = cascade_for(path, TableScorer("full", {}))
    assert cascade == Cascade(None, 30)
    assert cascade.student_id == "first-stage"


def test_a_path_with_k_beyond_its_window_is_refused_before_loading() -> None:
    path = QueryPath(index="x", window=50, cascade_model=Path("/nonexistent"), cascade_k=60)
    with pytest.raises(ConfigError, match="between 1 and the window"):
        cascade_for(path)


# --------------------------------------------------------------------------- proxy and CLI


def settings() -> ProxySettings:
    return ProxySettings.from_env()


@pytest.mark.parametrize("k", [0, -3, 101])
def test_proxy_refuses_a_cascade_k_outside_the_window(k: int) -> None:
    with pytest.raises(ProxyError) as caught:
        parse_rerank({"window": 100, "cascade": k}, settings())
    assert caught.value.status == 400
    assert "[rerank.cascade] must be between 1 and [rerank.window] (100)" in str(caught.value)


def test_proxy_refuses_a_cascade_that_is_not_an_integer() -> None:
    with pytest.raises(ProxyError) as caught:
        parse_rerank({"cascade": "20"}, settings())
    assert caught.value.status == 400


def test_proxy_reads_the_cascade_k() -> None:
    assert parse_rerank({"window": 50, "cascade": 20}, settings()).cascade == 20
    assert parse_rerank({"window": 50}, settings()).cascade is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cascade-model", "none", "--cascade-k", "10"], "drop --cascade-model none"),
        (["--cascade-k", "10", "--modes", "hybrid"], "add rerank"),
        (["--cascade-model", "models/reranker-minilm-l6", "--cascade-k", "0"], "between 1"),
        (["--cascade-model", "models/reranker-minilm-l6", "--cascade-k", "101"], "between 1"),
        (["--cascade-model", "models/reranker-minilm-l6", "--modes", "hybrid"], "add rerank"),
        (["--cascade-model", "models/reranker-minilm-l6", "--modes", "rerank,blend"], "blend"),
        (["--cascade-model", "/nonexistent/student"], "no such model folder"),
    ],
)
def test_eval_refuses_bad_cascade_options_before_searching(args: list[str], message: str) -> None:
    base = ["eval", "/nonexistent/dataset", "--modes", "rerank", "--window", "100"]
    result = CliRunner().invoke(main, [*base, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_eval_takes_first_stage_as_a_cascade_model_without_a_folder() -> None:
    """The cascade options pass; what fails is the dataset, which is read after them."""
    args = ["eval", "/nonexistent/dataset", "--modes", "rerank", "--cascade-model", "first-stage"]
    result = CliRunner().invoke(main, [*args, "--cascade-k", "30"])
    assert "cascade" not in result.output and "/nonexistent/dataset" in result.output


# --------------------------------------------------------------------------- the proxy app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def search_with(settings: ProxySettings, rerank: dict[str, Any], **app: Any) -> Any:
    import httpx

    from reranker.proxy import create_app

    proxy = create_app(settings, load_in_background=False, **app)
    async with proxy.router.lifespan_context(proxy):
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
            body = {"query": {"match": {"text": "why"}}, "rerank": rerank}
            return await http.post("/docs-1/_search", json=body)


def closed_es_settings(**overrides: Any) -> ProxySettings:
    import socket

    from reranker.config import Settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    es = Settings(es_url=f"http://127.0.0.1:{port}", request_timeout_s=2)
    return ProxySettings(es=es, allowed_indices=("docs-*",), enable_dense=False, **overrides)


@pytest.mark.anyio
async def test_proxy_without_a_cascade_model_answers_a_clear_400() -> None:
    response = await search_with(closed_es_settings(), {"cascade": 10})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "illegal_argument_exception"
    assert "needs a cascade model" in response.json()["error"]["reason"]


@pytest.mark.anyio
async def test_proxy_with_the_first_stage_as_cascade_model_takes_a_cascade() -> None:
    """No student to load: the request passes the cascade checks and reaches Elasticsearch
    (closed here, so the answer is the first stage's error, not the cascade's 400)."""
    response = await search_with(
        closed_es_settings(cascade_model=Path("first-stage")), {"cascade": 10}
    )
    assert "cascade" not in response.json()["error"]["reason"]
    assert response.status_code != 400


@pytest.mark.anyio
async def test_proxy_refuses_a_k_beyond_the_window_with_an_es_shaped_400() -> None:
    response = await search_with(closed_es_settings(), {"window": 20, "cascade": 21})
    assert response.status_code == 400
    assert response.json()["status"] == 400
    assert "[rerank.cascade]" in response.json()["error"]["reason"]


@pytest.mark.anyio
async def test_proxy_refuses_a_student_with_another_tokenizer(tmp_path: Path) -> None:
    import shutil

    from reranker.models import CROSS_ENCODER_CARD, sha256_file, write_json_atomic
    from reranker.rerank.scorer import load_scorer

    shipped = Path(__file__).resolve().parents[2] / "models" / "reranker-minilm-l6"
    other = tmp_path / "other-tokenizer"
    shutil.copytree(shipped, other)
    tokenizer = other / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    card = json.loads((other / CROSS_ENCODER_CARD).read_text(encoding="utf-8"))
    card["files"]["tokenizer.json"] = sha256_file(tokenizer)
    write_json_atomic(other / CROSS_ENCODER_CARD, card)

    response = await search_with(
        closed_es_settings(cascade_model=other),
        {"cascade": 10},
        scorer_factory=lambda: load_scorer(shipped),
    )
    assert response.status_code == 400
    assert "another tokenizer" in response.json()["error"]["reason"]


def test_the_proxys_window_builds_the_cascade_it_is_given() -> None:
    from reranker.proxy.rerank import Window

    spec = parse_rerank({"window": 6, "cascade": 3}, settings())
    candidates = ListedFirstStage(DOCS).search("q", "bm25", 6)
    student, full = TableScorer("student", STUDENT), TableScorer("full", FULL)
    window = Window("docs-1", "q", spec, "bm25", candidates, None, False)
    result = window.pipeline(full, Cascade(student, 3)).rerank("q", candidates, k=6)
    assert [h.id for h in result.hits] == ["a", "c", "b", "f", "e", "d"]
    assert result.cascade == {"model": "student", "k": 3}
    assert len(full.calls[0]) == 3


def test_a_cascade_never_counts_as_fully_cached() -> None:
    """The proxy runs a window whose scores are all cached inline, skipping the scorer's
    queue; a cascade calls its student too, so it must always queue."""

    class CoveringScorer(TableScorer):
        def uncached(self, pairs: Any, features: Any = None, **_: Any) -> list[int]:
            return []

    full, student = CoveringScorer("full", FULL), TableScorer("student", STUDENT)
    candidates = ListedFirstStage(DOCS).search("q", "bm25", 6)
    assert not Pipeline(None, full, window=6).uncached_pairs("q", candidates)
    cascade = Pipeline(None, full, window=6, cascade=Cascade(student, 3))
    assert cascade.uncached_pairs("q", candidates)


# --------------------------------------------------------------------------- the defaults


class EchoVectors:
    """A stand-in embedder: a passage named ``x`` at ``cos`` to the query."""

    dim = 2
    model_id = "echo"

    def encode(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        cos = {"q": 1.0, "a": 0.2, "b": 0.9, "c": 0.5, "d": 0.1, "e": 0.3, "f": 0.0}
        return np.array([[cos[t], float(np.sqrt(1 - cos[t] ** 2))] for t in texts], np.float32)


class DenseAwareScorer(FeatureScorer):
    def __init__(self, name: str, table: dict[str, float]) -> None:
        super().__init__(name, table)
        self.feature_names = ("fused", "bm25", "dense")


def test_a_bm25_window_gets_the_dense_feature_from_the_embedder() -> None:
    full = DenseAwareScorer("full", FULL)
    stage = ListedFirstStage(DOCS)
    with pytest.raises(SearchError, match="dense"):
        Pipeline(stage, full, base="bm25", window=6)  # type: ignore[arg-type]
    pipeline = Pipeline(stage, full, base="bm25", window=6, encoder=EchoVectors())  # type: ignore[arg-type]
    assert pipeline.uncached_pairs("q", stage.search("q", "bm25", 6)) != []
    pipeline.search("q", k=6)
    dense = full.rows[0][:, 2]
    # b (0.9) highest, f (0.0) lowest: min-max of the cosines, in window order a..f
    np.testing.assert_allclose(dense, [0.2 / 0.9, 1.0, 0.5 / 0.9, 0.1 / 0.9, 0.3 / 0.9, 0.0])
    assert full.rows[0][0, 0] == 1.0  # fused: still the BM25 order that built the window


def test_eval_reranks_with_the_first_stage_cascade_unless_told_otherwise() -> None:
    from reranker.cli.eval import _default_cascade

    def chosen(model: str | None, k: int | None, modes: list[str], record: bool = False) -> Any:
        got, k = _default_cascade(Path(model) if model else None, k, modes, record, 100)
        return (str(got) if got is not None else None), k

    assert chosen(None, None, ["hybrid", "rerank"]) == ("first-stage", 20)
    assert _default_cascade(None, None, ["rerank"], False, 10)[1] == 10  # at most the window
    assert chosen(None, None, ["hybrid"]) == (None, None)
    assert chosen(None, None, ["rerank", "blend"]) == (None, None)
    assert chosen(None, None, ["rerank"], record=True) == (None, None)  # --record: one model
    assert chosen("none", None, ["rerank"]) == (None, None)
    assert chosen(None, 5, ["rerank"]) == ("first-stage", 5)
    with pytest.raises(ConfigError, match="none"):
        chosen("none", 5, ["rerank"])


def test_a_search_may_ask_for_the_whole_window_where_a_cascade_is_the_default() -> None:
    settings = ProxySettings(cascade_model=Path("first-stage"), default_cascade=20)
    assert parse_rerank({}, settings).cascade_default
    whole = parse_rerank({"cascade": False}, settings)
    assert whole.cascade is None and not whole.cascade_default
    assert not parse_rerank({"cascade": 5}, settings).cascade_default


def test_serve_defaults_to_the_first_stage_cascade_of_20(monkeypatch: pytest.MonkeyPatch) -> None:
    from reranker.cli.serve import _serve_cascade_defaults

    monkeypatch.delenv("RERANKER_PROXY_DEFAULT_CASCADE", raising=False)
    served = _serve_cascade_defaults(ProxySettings(), None)
    assert str(served.cascade_model) == "first-stage" and served.default_cascade == 20
    off = _serve_cascade_defaults(ProxySettings(default_cascade=0), 0)
    assert off.default_cascade is None
    none = _serve_cascade_defaults(ProxySettings(cascade_model=Path("none")), None)
    assert none.cascade_model is None and none.default_cascade is None
