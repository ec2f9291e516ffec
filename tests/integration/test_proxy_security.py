"""Issue 11: what an attacker tried against a proxy with an allow-list, against a real secured
node. Each test names the defect class it covers; every one of them read or disturbed what the
allow-list should have kept out before the proxy searched with restricted credentials.

Two indices per module: ``<prefix>-docs`` (allowed: the proxy runs with ``--allow
'<prefix>*'``) and ``vault-<hex>`` (not allowed) holding a document with a marker word that
must never appear in an answer.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from elasticsearch import ApiError, Elasticsearch

from reranker.es.node import NodeStatus
from reranker.models import sha256_file
from reranker.proxy import ProxySettings, create_app
from reranker.proxy.app import Proxy
from reranker.proxy.errors import REFUSED_BY_ELASTICSEARCH
from reranker.rerank.scorer import Scorer
from tests.integration.conftest import proxy_settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

MARKER = "zebracornium"
DOCS = [
    {"title": "Bone health", "text": "vitamin D supports bone density and calcium absorption"},
    {"title": "Sleep", "text": "sleep quality affects memory consolidation in adults"},
    {"title": "Calcium", "text": "calcium intake and bone fractures in older women"},
    {"title": "Exercise", "text": "exercise improves bone density and muscle strength"},
    {"title": "Diet", "text": "a diet rich in vegetables lowers blood pressure"},
]
QUERY = {"match": {"text": "bone density calcium"}}


@pytest.fixture(scope="module")
def indices(es_client: Elasticsearch) -> Iterator[tuple[str, str]]:
    """``(allowed prefix, forbidden index)``."""
    prefix = f"sec-{uuid.uuid4().hex[:8]}"
    allowed, vault = f"{prefix}-docs", f"vault-{uuid.uuid4().hex[:8]}"
    es_client.indices.create(index=allowed, mappings={"properties": {"text": {"type": "text"}}})
    for i, doc in enumerate(DOCS, start=1):
        es_client.index(index=allowed, id=str(i), document=doc)
    es_client.index(
        index=vault,
        id="1",
        document={
            "text": f"classified {MARKER} vitamin bone density calcium",
            "ids": ["1", "3"],
        },
    )
    es_client.indices.refresh(index=f"{allowed},{vault}")
    yield prefix, vault
    es_client.options(ignore_status=404).indices.delete(index=f"{allowed},{vault}")


class CountingScorer(Scorer):
    """The real scorer, counting the pairs it is asked to score."""

    def __init__(self, inner: Scorer) -> None:
        self.__dict__.update(inner.__dict__)
        self.inner = inner
        self.pairs = 0

    def warmup(self) -> None:
        pass

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        self.pairs += len(pairs)
        return self.inner.score(pairs, **kwargs)


@asynccontextmanager
async def serving(
    settings: ProxySettings, scorer: Scorer | None = None, **app_options: Any
) -> AsyncIterator[tuple[Proxy, httpx.AsyncClient]]:
    app = create_app(
        settings,
        scorer_factory=(lambda: scorer) if scorer is not None else None,
        load_in_background=False,
        **app_options,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://proxy", timeout=60
        ) as http:
            yield app.state.proxy, http


def settings_for(es_node: NodeStatus, prefix: str, **overrides: Any) -> ProxySettings:
    return proxy_settings(es_node, prefix, **overrides)


def leaks(response: httpx.Response, vault: str) -> bool:
    """Whether anything of the forbidden index reached the client."""
    return MARKER in response.text or f'"_index":"{vault}"' in response.text.replace(" ", "")


# ------------------------------------------------------------------ Elasticsearch authorises


async def test_searches_run_with_credentials_elasticsearch_limits_to_the_allow_list(
    es_node: NodeStatus, indices: tuple[str, str]
) -> None:
    prefix, vault = indices
    async with serving(settings_for(es_node, prefix)) as (proxy, _):
        assert proxy.scoped is not None
        scoped = await proxy.scoped.client()
        assert proxy.scoped.mode in ("file_realm", "api_key")
        allowed = await scoped.search(index=f"{prefix}-docs", query=QUERY)
        with pytest.raises(ApiError) as refused:
            await scoped.search(index=vault, query={"match_all": {}})
    assert allowed["hits"]["total"]["value"] > 0
    assert refused.value.meta.status == 403


async def test_a_cross_cluster_expression_cannot_reach_a_forbidden_index(
    es_node: NodeStatus, indices: tuple[str, str]
) -> None:
    prefix, vault = indices
    async with serving(settings_for(es_node, prefix)) as (_, http):
        answers = [
            await http.post(f"/{prefix}*:{vault}/_search", json={"query": {"match_all": {}}}),
            await http.post(f"/{prefix}-docs:{vault}/_search", json={}),
            await http.post(f"/{prefix}-docs,{prefix}*:{vault}/_search", json={}),
            await http.get(f"/{prefix}*::failures/_search"),
        ]
    for answer in answers:
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["type"] == "security_exception"
        assert not leaks(answer, vault)


async def test_elasticsearchs_refusals_name_neither_the_proxys_user_nor_its_roles(
    es_node: NodeStatus, indices: tuple[str, str]
) -> None:
    prefix, vault = indices
    lookup = {"terms": {"_id": {"index": vault, "id": "1", "path": "ids"}}}
    async with serving(settings_for(es_node, prefix)) as (_, http):
        passed = await http.post(f"/{prefix}-docs/_search?error_trace=true", json={"query": lookup})
        multi = await http.post(
            f"/{prefix}-docs/_msearch?error_trace=true",
            content=b"{}\n" + json.dumps({"query": lookup}).encode() + b"\n",
            headers={"content-type": "application/x-ndjson"},
        )
    errors = [passed.json()["error"], multi.json()["responses"][0]["error"]]
    for error in errors:
        assert error["type"] == "security_exception"
        assert error["reason"] == REFUSED_BY_ELASTICSEARCH
    for answer in (passed, multi):
        for internal in ("unauthorized for user", "roles [", "reranker_proxy", "stack_trace"):
            assert internal not in answer.text, (internal, answer.text)


async def test_error_trace_returns_no_java_stack_trace(
    es_node: NodeStatus, indices: tuple[str, str]
) -> None:
    prefix, _ = indices
    broken = {"query": {"match": {"text": {"query": "bone", "no_such_option": 1}}}}
    async with serving(settings_for(es_node, prefix)) as (_, http):
        answer = await http.post(f"/{prefix}-docs/_search?error_trace=true", json=broken)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"]
    assert "stack_trace" not in answer.text and "at org.elasticsearch" not in answer.text


async def test_a_response_format_other_than_json_is_a_400_not_a_502(
    es_node: NodeStatus, indices: tuple[str, str]
) -> None:
    prefix, _ = indices
    async with serving(settings_for(es_node, prefix)) as (_, http):
        yaml = await http.post(f"/{prefix}-docs/_search?format=yaml", json={"query": QUERY})
        plain = await http.post(f"/{prefix}-docs/_search?format=json", json={"query": QUERY})
    assert yaml.status_code == 400
    assert "answers JSON only" in yaml.json()["error"]["reason"]
    assert plain.status_code == 200


async def test_a_long_or_non_ascii_opaque_id_is_refused_and_other_clients_are_unharmed(
    es_node: NodeStatus, indices: tuple[str, str]
) -> None:
    prefix, _ = indices
    search = {"query": QUERY, "size": 3}
    async with serving(settings_for(es_node, prefix)) as (_, http):
        long = await http.post(
            f"/{prefix}-docs/_search", json=search, headers={"x-opaque-id": "x" * 20_000}
        )
        non_ascii = await http.post(
            f"/{prefix}-docs/_search",
            json=search,
            headers=[(b"x-opaque-id", "caf\u00e9".encode("latin-1"))],
        )
        # the shared connections still serve the next client at once
        started = time.monotonic()
        others = [await http.post(f"/{prefix}-docs/_search", json=search) for _ in range(3)]
        took = time.monotonic() - started
        tagged = await http.post(
            f"/{prefix}-docs/_search", json=search, headers={"x-opaque-id": "client-42"}
        )
    assert long.status_code == 400 and "x-opaque-id" in long.json()["error"]["reason"]
    assert non_ascii.status_code == 400
    assert [a.status_code for a in others] == [200, 200, 200]
    assert took < 10  # a hung pooled connection made the next search wait 30 s for a 504
    assert tagged.status_code == 200


async def test_msearch_blank_lines_are_paired_as_elasticsearch_pairs_them(
    es_node: NodeStatus, indices: tuple[str, str]
) -> None:
    prefix, vault = indices
    # Elasticsearch reads: (blank header → path index, {}), ({"index": vault}, {}), and a
    # trailing header it ignores. Skipping the blank line pairs them differently.
    attack = b'\n{}\n{"index": "%s"}\n{}\n{}\n' % vault.encode()
    four_lines = b'\n{}\n{"index": "%s"}\n{}\n' % vault.encode()
    async with serving(settings_for(es_node, prefix)) as (_, http):
        headers = {"content-type": "application/x-ndjson"}
        first = await http.post(f"/{prefix}-docs/_msearch", content=attack, headers=headers)
        second = await http.post(f"/{prefix}-docs/_msearch", content=four_lines, headers=headers)
    assert first.status_code == 400
    assert not leaks(first, vault)
    assert second.status_code == 200
    blank_header, forbidden = second.json()["responses"]
    assert blank_header["status"] == 200
    assert {hit["_index"] for hit in blank_header["hits"]["hits"]} == {f"{prefix}-docs"}
    assert forbidden["status"] == 403
    assert not leaks(second, vault)


async def test_a_terms_lookup_into_a_forbidden_index_is_refused_by_elasticsearch(
    es_node: NodeStatus, es_client: Elasticsearch, indices: tuple[str, str]
) -> None:
    prefix, vault = indices
    lookup = {"terms": {"_id": {"index": vault, "id": "1", "path": "ids"}}}
    direct = es_client.search(index=f"{prefix}-docs", query=lookup)  # the superuser reads it
    assert direct["hits"]["total"]["value"] == 2
    async with serving(settings_for(es_node, prefix)) as (_, http):
        passed = await http.post(f"/{prefix}-docs/_search", json={"query": lookup})
        reranked = await http.post(
            f"/{prefix}-docs/_search",
            json={
                "query": {"bool": {"must": [QUERY], "filter": [lookup]}},
                "rerank": {"window": 5},
                "size": 5,
            },
        )
        multi = await http.post(
            f"/{prefix}-docs/_msearch",
            content=b"{}\n" + json.dumps({"query": lookup}).encode() + b"\n",
            headers={"content-type": "application/x-ndjson"},
        )
    for answer in (passed, reranked):
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["type"] == "security_exception"
        assert not leaks(answer, vault)
    assert multi.json()["responses"][0]["status"] == 403
    assert not leaks(multi, vault)


async def test_more_like_this_documents_from_a_forbidden_index_are_not_read(
    es_node: NodeStatus, es_client: Elasticsearch, indices: tuple[str, str]
) -> None:
    prefix, vault = indices
    like = {
        "more_like_this": {
            "fields": ["text"],
            "like": [{"_index": vault, "_id": "1"}],
            "min_term_freq": 1,
            "min_doc_freq": 1,
        }
    }
    direct = es_client.search(index=f"{prefix}-docs", query=like)
    assert direct["hits"]["total"]["value"] > 0  # the superuser's search does read it
    async with serving(settings_for(es_node, prefix)) as (_, http):
        answer = await http.post(f"/{prefix}-docs/_search", json={"query": like})
    assert answer.status_code in (200, 403), answer.text
    if answer.status_code == 200:
        assert answer.json()["hits"]["hits"] == []
    assert not leaks(answer, vault)


# ------------------------------------------------------------------ any body: 4xx, never 5xx


def raw_post(http: httpx.AsyncClient, path: str, content: bytes) -> Any:
    return http.post(path, content=content, headers={"content-type": "application/json"})


async def test_unpaired_surrogates_nesting_and_huge_numbers_are_400s_everywhere(
    es_node: NodeStatus, indices: tuple[str, str], proxy_scorer: Scorer
) -> None:
    prefix, _ = indices
    bodies = {
        "surrogate": b'{"query": {"match": {"text": "bone \\ud800"}}%s}',
        "surrogate key": b'{"query": {"match": {"te\\udfffxt": "bone"}}%s}',
        "nesting": b'{"query": {"match": {"text": "bone"}}, "x": '
        + b"[" * 5000
        + b"]" * 5000
        + b"%s}",
        "huge integer": b'{"query": {"match": {"text": "bone"}}, "size": 1' + b"0" * 5000 + b"%s}",
        "huge float": b'{"query": {"match": {"text": "bone"}}, "min_score": 1e999%s}',
        "nan": b'{"query": {"match": {"text": "bone"}}, "min_score": NaN%s}',
    }
    rerank = b', "rerank": {"window": 5}'
    async with serving(settings_for(es_node, prefix, request_log=True), proxy_scorer) as (
        _,
        http,
    ):
        for name, template in bodies.items():
            for suffix in (b"", rerank):
                body = template % suffix
                answer = await raw_post(http, f"/{prefix}-docs/_search", body)
                assert answer.status_code == 400, (name, suffix, answer.text)
                error = answer.json()
                assert error["status"] == 400 and error["error"]["type"], name
                good = json.dumps({"query": QUERY, "size": 2}).encode()
                multi = await http.post(
                    f"/{prefix}-docs/_msearch",
                    content=b"{}\n" + body + b"\n{}\n" + good + b"\n",
                    headers={"content-type": "application/x-ndjson"},
                )
                assert multi.status_code == 200, (name, multi.text)
                bad_entry, good_entry = multi.json()["responses"]
                assert bad_entry["status"] == 400, (name, bad_entry)
                assert good_entry["status"] == 200


# ------------------------------------------------------------------ fair breaker, admission


async def test_a_clients_own_short_timeout_does_not_open_the_circuit_for_others(
    es_node: NodeStatus, indices: tuple[str, str], proxy_scorer: Scorer
) -> None:
    prefix, _ = indices
    # no pair-score cache: a timed-out call that finishes late would serve the repeats
    settings = settings_for(
        es_node, prefix, breaker_failures=2, breaker_cooloff_s=60, score_cache_size=0
    )
    # 5 candidates at 0.2 s a pair cannot be scored in the 240 ms this budget leaves
    body = {"query": QUERY, "size": 5, "rerank": {"window": 5, "timeout_ms": 300}}
    slow = SlowPairs(proxy_scorer, per_pair_s=0.2)
    async with serving(settings, slow) as (proxy, http):
        hurried = [await http.post(f"/{prefix}-docs/_search", json=body) for _ in range(3)]
        normal = await http.post(
            f"/{prefix}-docs/_search", json={"query": QUERY, "size": 5, "rerank": {"window": 5}}
        )
        state = proxy.breaker.state
    for answer in hurried:
        assert answer.status_code in (200, 400, 504), answer.text
        if answer.status_code == 200:
            assert answer.json()["rerank"]["degraded"]
    assert state == "closed"
    assert normal.status_code == 200
    assert normal.json()["rerank"]["degraded"] is None


class SlowPairs(Scorer):
    """The real scorer at a fixed, slow pace per pair (a stand-in for a busy CPU)."""

    def __init__(self, inner: Scorer, per_pair_s: float) -> None:
        self.__dict__.update(inner.__dict__)
        self.inner = inner
        self.per_pair_s = per_pair_s

    def warmup(self) -> None:
        pass

    def score(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        time.sleep(self.per_pair_s * len(pairs))
        return self.inner.score(pairs)


async def test_a_window_that_cannot_be_scored_in_its_budget_is_refused_up_front(
    es_node: NodeStatus, indices: tuple[str, str], proxy_scorer: Scorer
) -> None:
    prefix, _ = indices
    # about 3 pairs/s: the 3 candidates need about 1 s; the cache is off, so the refused
    # request's pairs are not already scored (pairs in the cache cost nothing)
    slow = SlowPairs(proxy_scorer, per_pair_s=0.3)
    async with serving(settings_for(es_node, prefix, score_cache_size=0), slow) as (proxy, http):
        measured = await http.post(
            f"/{prefix}-docs/_search", json={"query": QUERY, "size": 5, "rerank": {"window": 5}}
        )
        assert proxy.admission.tokens_per_s is not None
        refused = await http.post(
            f"/{prefix}-docs/_search",
            json={"query": QUERY, "size": 5, "rerank": {"window": 50, "timeout_ms": 500}},
        )
    assert measured.status_code == 200
    assert refused.status_code == 400
    reason = refused.json()["error"]["reason"]
    assert "tokens/s" in reason and "timeout" in reason


async def test_a_window_whose_pairs_are_all_cached_is_served_whatever_the_measured_rate(
    es_node: NodeStatus, indices: tuple[str, str], proxy_scorer: Scorer
) -> None:
    prefix, _ = indices
    slow = SlowPairs(proxy_scorer, per_pair_s=0.2)  # about 5 pairs/s
    counting = CountingScorer(slow)
    window = {"query": QUERY, "size": 5, "rerank": {"window": 50}}
    hurried = {**window, "rerank": {"window": 50, "timeout_ms": 300}}
    async with serving(settings_for(es_node, prefix), counting) as (proxy, http):
        first = await http.post(f"/{prefix}-docs/_search", json=window)
        pairs_after_first = counting.pairs
        measured = proxy.admission.tokens_per_s
        again = await http.post(f"/{prefix}-docs/_search", json=hurried)
        other_text = {**hurried, "rerank": {"window": 50, "timeout_ms": 300, "query_text": "x"}}
        uncached = await http.post(f"/{prefix}-docs/_search", json=other_text)
    candidates = first.json()["rerank"]["candidates"]
    assert first.status_code == 200 and first.json()["rerank"]["degraded"] is None
    # scoring the window took longer than 300 ms allow: only the cache can serve it in time
    assert measured is not None and first.json()["rerank"]["took_ms"]["rerank"] > 300
    assert again.status_code == 200, again.text
    assert again.json()["rerank"]["degraded"] is None
    assert [h["_id"] for h in again.json()["hits"]["hits"]] == [
        h["_id"] for h in first.json()["hits"]["hits"]
    ]
    assert counting.pairs == pairs_after_first  # no model call for the cached window
    # the same window with pairs the cache lacks is still refused, naming how many
    assert uncached.status_code == 400
    reason = uncached.json()["error"]["reason"]
    assert f"{candidates} of its pairs are not in the score cache" in reason


async def test_size_zero_answers_aggregations_without_scoring(
    es_node: NodeStatus, indices: tuple[str, str], proxy_scorer: Scorer
) -> None:
    prefix, _ = indices
    counting = CountingScorer(proxy_scorer)
    body = {
        "query": QUERY,
        "size": 0,
        "aggs": {"indices": {"terms": {"field": "_index"}}},
        "rerank": {"window": 5},
    }
    async with serving(settings_for(es_node, prefix), counting) as (_, http):
        answer = await http.post(f"/{prefix}-docs/_search", json=body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["hits"]["hits"] == []
    assert got["aggregations"]["indices"]["buckets"][0]["key"] == f"{prefix}-docs"
    assert got["rerank"]["skipped"]
    assert counting.pairs == 0


async def test_scroll_and_point_in_time_are_clear_400s_with_or_without_rerank(
    es_node: NodeStatus, indices: tuple[str, str], proxy_scorer: Scorer
) -> None:
    prefix, _ = indices
    async with serving(settings_for(es_node, prefix), proxy_scorer) as (_, http):
        answers = [
            await http.post(f"/{prefix}-docs/_search?scroll=1m", json={"query": QUERY}),
            await http.get(f"/{prefix}-docs/_search", params={"scroll": "1m"}),
            await http.post(
                f"/{prefix}-docs/_search?scroll=1m",
                json={"query": QUERY, "rerank": {"window": 5}, "size": 5},
            ),
            await http.post(f"/{prefix}-docs/_search", json={"query": QUERY, "pit": {"id": "x"}}),
        ]
        multi = await http.post(
            f"/{prefix}-docs/_msearch",
            content=b'{}\n{"pit": {"id": "x"}}\n',
            headers={"content-type": "application/x-ndjson"},
        )
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert "_scroll_id" not in answer.text
        reason = answer.json()["error"]["reason"]
        assert "scroll" in reason or "point in time" in reason
    assert multi.json()["responses"][0]["status"] == 400


# ------------------------------------------------------------------ reload is an admin operation


def reload_loader(default: Path) -> Any:
    def load(folder: Path | None, variant: str | None) -> Scorer:
        return Scorer(folder or default, variant=variant or "fp32", threads=1)

    return load


async def test_reload_loads_only_from_the_model_roots_and_names_no_outside_path(
    es_node: NodeStatus, indices: tuple[str, str], proxy_xenc_dir: Path, tmp_path: Path
) -> None:
    prefix, _ = indices
    root = tmp_path / "models"
    root.mkdir()
    settings = settings_for(es_node, prefix, model_roots=(root,))
    loader = reload_loader(proxy_xenc_dir)
    async with serving(settings, model_loader=loader) as (_, http):
        answers = {
            path: await http.post("/_reranker/reload", json={"model": path})
            for path in (
                "/etc",
                "/no/such/folder",
                str(proxy_xenc_dir),
                "../../etc",
                "..",
                "a\u0000b",
            )
        }
    reasons = {answer.text for answer in answers.values()}
    assert len(reasons) == 1  # the same refusal whether the folder exists or not
    for path, answer in answers.items():
        assert answer.status_code == 403, (path, answer.text)
        assert "/etc" not in answer.text and str(tmp_path) not in answer.text


async def test_a_card_naming_files_outside_its_folder_is_refused_without_hashes(
    es_node: NodeStatus, indices: tuple[str, str], proxy_xenc_dir: Path, tmp_path: Path
) -> None:
    prefix, _ = indices
    root = tmp_path / "models"
    folder = root / "escaping"
    shutil.copytree(proxy_xenc_dir, folder)
    outside = tmp_path / "outside.onnx"
    shutil.copy2(folder / "model.onnx", outside)
    card_path = folder / "reranker.json"
    card = json.loads(card_path.read_text())
    card["variants"]["fp32"]["file"] = "../../outside.onnx"
    card["files"]["../../outside.onnx"] = sha256_file(outside)
    card_path.write_text(json.dumps(card))
    settings = settings_for(es_node, prefix, model_roots=(root,))
    async with serving(settings, model_loader=reload_loader(proxy_xenc_dir)) as (_, http):
        answer = await http.post("/_reranker/reload", json={"model": "escaping"})
    assert answer.status_code == 400, answer.text
    reason = answer.json()["error"]["reason"]
    assert "outside the model folder" in reason
    assert str(tmp_path) not in reason
    assert sha256_file(outside)[:8] not in reason


async def test_reload_needs_the_admin_key_when_client_keys_are_set(
    es_node: NodeStatus, indices: tuple[str, str], proxy_xenc_dir: Path
) -> None:
    prefix, _ = indices
    settings = settings_for(es_node, prefix, api_keys=("client-key",))
    async with serving(settings, model_loader=reload_loader(proxy_xenc_dir)) as (_, http):
        with_client_key = await http.post(
            "/_reranker/reload", headers={"authorization": "ApiKey client-key"}
        )
        without = await http.post("/_reranker/reload")
    assert with_client_key.status_code == 403
    assert without.status_code == 403


# ------------------------------------------------------------------ health and metrics


async def test_health_details_and_metrics_need_a_key_when_keys_are_set(
    es_node: NodeStatus, indices: tuple[str, str], proxy_scorer: Scorer
) -> None:
    prefix, _ = indices
    settings = settings_for(es_node, prefix, api_keys=("client-key",))
    key = {"authorization": "ApiKey client-key"}
    async with serving(settings, proxy_scorer) as (_, http):
        live = await http.get("/_health")
        detailed = await http.get("/_health", headers=key)
        metrics_anonymous = await http.get("/metrics")
        metrics = await http.get("/metrics", headers=key)
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    assert detailed.json()["model"]["loaded"] is True
    assert metrics_anonymous.status_code == 401
    assert metrics.status_code == 200
