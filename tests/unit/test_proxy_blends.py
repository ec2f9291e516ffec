"""``rerank.blend`` resolution, the smoke test of a reloaded model, and the reload endpoint's
rules, without Elasticsearch (pure logic; the real reload is in tests/integration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from reranker.blend.blends import LinearBlend, save_blend
from reranker.blend.signals import NO_SIGNALS, SCIFACT, STACKEXCHANGE
from reranker.errors import ConfigError, ModelError
from reranker.proxy import ProxySettings, create_app
from reranker.proxy.blends import BlendCatalog, load_named_blend, parse_pairs
from reranker.proxy.errors import ProxyError
from reranker.proxy.reload import smoke_test
from tests.fakes import FakeScorer
from tests.helpers import assert_es_error, settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def catalog(**blends: Path) -> BlendCatalog:
    return BlendCatalog(
        signals=[("se-*", "stackexchange"), ("papers", "scifact")],
        blends=[(name, str(path)) for name, path in blends.items()],
    )


def test_signals_follow_the_first_matching_index_pattern() -> None:
    found = catalog()
    assert found.signals_for("se-2024") is STACKEXCHANGE
    assert found.signals_for("papers") is SCIFACT
    assert found.signals_for("other") is NO_SIGNALS


def test_weights_become_a_linear_blend_over_the_index_features() -> None:
    resolved = catalog().resolve("se-1", {"relevance": 1, "authority": 0.5, "bias": 2})
    assert resolved is not None and isinstance(resolved.blend, LinearBlend)
    assert resolved.blend.feature_names == (
        "relevance",
        "first_stage",
        "authority",
        "popularity",
        "views",
        "freshness",
    )
    assert resolved.blend.weights["authority"] == 0.5 and resolved.blend.bias == 2
    assert resolved.signals is STACKEXCHANGE


@pytest.mark.parametrize(
    ("index", "raw", "says"),
    [
        ("papers", {"popularity": 1}, "unknown feature(s) popularity"),
        ("other", {"authority": 1}, "unknown feature(s) authority"),
        ("se-1", {"relevance": 0, "authority": 0}, "all zero"),
        ("se-1", {"relevance": "1"}, "must be a finite number"),
        ("se-1", {"relevance": True}, "must be a finite number"),
        ("se-1", [1, 2], "must be an object of feature weights"),
        ("se-1", "no-such-model", "not a learned blend here"),
    ],
)
def test_bad_blends_are_400s_that_say_why(index: str, raw: Any, says: str) -> None:
    with pytest.raises(ProxyError) as caught:
        catalog().resolve(index, raw)
    assert caught.value.status == 400 and says in caught.value.reason


def test_no_blend_asked_is_none() -> None:
    assert catalog().resolve("se-1", None) is None


def test_a_learned_blend_is_named_and_reads_the_signals_on_its_card(tmp_path: Path) -> None:
    names = ("relevance", "first_stage", "authority", "freshness")
    fitted = LinearBlend(weights={"relevance": 1, "authority": 0.3}, feature_names=names)
    path = save_blend(fitted, tmp_path / "b.json", card={"signals": "scifact"})
    resolved = catalog(papers_v1=path).resolve("anything", "papers_v1")
    assert resolved is not None and resolved.signals is SCIFACT
    assert resolved.blend.to_dict() == fitted.to_dict()


def test_a_learned_blend_from_another_feature_set_is_refused_at_start(tmp_path: Path) -> None:
    other = LinearBlend(weights={"relevance": 1}, feature_names=("relevance", "first_stage"))
    path = save_blend(other, tmp_path / "b.json", card={"signals": "scifact"})
    with pytest.raises(ConfigError, match="another feature set"):
        catalog(bad=path)


def test_pairs_from_the_command_line() -> None:
    assert parse_pairs(["scifact", "se-*=stackexchange"], "signals") == (
        ("*", "scifact"),
        ("se-*", "stackexchange"),
    )
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_pairs(["just-a-path.json"], "blend")


class FixedScorer(FakeScorer):
    """Gives the same scores whatever it is asked."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__("fixed")
        self.fixed = np.asarray(scores, dtype=np.float32)

    def scores(self, pairs: Any, features: np.ndarray | None) -> np.ndarray:
        return self.fixed


def test_smoke_test_wants_the_answer_above_the_off_topic_passage() -> None:
    smoke_test(FixedScorer([3.0, -2.0]))  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="off-topic"):
        smoke_test(FixedScorer([-2.0, 3.0]))  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="non-finite"):
        smoke_test(FixedScorer([float("nan"), 1.0]))  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="scores for 2 pairs"):
        smoke_test(FixedScorer([1.0]))  # type: ignore[arg-type]


async def reload_answer(
    proxy_settings: ProxySettings, loader: Any, **request: Any
) -> httpx.Response:
    app = create_app(proxy_settings, model_loader=loader, load_in_background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=request.pop("client", ("127.0.0.1", 1)))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
            return await http.post("/_reranker/reload", **request)


async def test_reload_swaps_in_a_model_that_passes_its_smoke_test() -> None:
    loaded: list[tuple[Any, Any]] = []

    def loader(folder: Any, variant: Any) -> Any:
        loaded.append((folder, variant))
        return FixedScorer([2.0, -1.0])

    answer = await reload_answer(settings(), loader, json={"variant": "int8"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["acknowledged"] is True and answer.json()["model"]["id"] == "fixed"
    assert loaded == [(None, None), (None, "int8")]  # start-up, then the reload


async def test_reload_refuses_a_model_that_fails_and_says_why() -> None:
    calls = iter([FixedScorer([2.0, -1.0]), FixedScorer([-1.0, 2.0])])
    answer = await reload_answer(settings(), lambda *_: next(calls), json={})
    assert_es_error(answer, 400)
    assert "current model keeps serving" in answer.json()["error"]["reason"]


async def test_reload_from_another_host_needs_an_admin_key() -> None:
    def loader(*_: Any) -> Any:
        return FixedScorer([2.0, -1.0])

    remote = ("10.1.2.3", 5)
    assert_es_error(await reload_answer(settings(), loader, client=remote), 403)
    keyed = settings(admin_api_keys=("s3cret",))
    assert_es_error(await reload_answer(keyed, loader, client=remote), 401)
    answer = await reload_answer(
        keyed, loader, client=remote, headers={"authorization": "ApiKey s3cret"}
    )
    assert answer.status_code == 200


async def test_reload_rejects_unknown_fields() -> None:
    answer = await reload_answer(
        settings(), lambda *_: FixedScorer([2.0, -1.0]), json={"modle": "x"}
    )
    assert_es_error(answer, 400)
    assert "modle" in answer.json()["error"]["reason"]


SHIPPED_BLENDS = Path(__file__).resolve().parents[2] / "models" / "blends"


@pytest.mark.parametrize("path", sorted(SHIPPED_BLENDS.glob("*.json")), ids=lambda p: p.stem)
def test_shipped_blends_load_and_were_fitted_on_the_shipped_models_scores(path: Path) -> None:
    pytest.importorskip("lightgbm")
    import json

    named = load_named_blend(path.stem, path)
    assert named.signals.signals  # each was fitted with its dataset's signals
    card = json.loads(path.read_text(encoding="utf-8"))["card"]
    shipped = json.loads(
        (SHIPPED_BLENDS.parent / "reranker-minilm-l6" / "reranker.json").read_text("utf-8")
    )
    version = shipped["files"]["model.int8.onnx"][:12]  # what Scorer.version reports
    # or the per-tensor file the shipped one was converted from (same weights; its scores
    # differ by 0.06 on average, correlation 0.98: the blends were fitted on those)
    converted = shipped["variants"]["int8"].get("converted_from_per_tensor", {})
    versions = {version, str(converted.get("sha256", ""))[:12]}
    assert card["model"] in {f"{shipped['name']}@{v}/int8" for v in versions}
