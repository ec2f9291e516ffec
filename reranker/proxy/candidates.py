"""The first stage, asynchronously: the client's own query (BM25) and kNN on ``embedding``.

The lists come back as :class:`~reranker.retrieval.first_stage.Hit` lists keyed by index and id; the
proxy fuses them with :func:`~reranker.retrieval.first_stage.fuse` (the same function the CLI's
first
stage uses) and hands the candidates to :meth:`~reranker.rerank.pipeline.Pipeline.rerank`, so
fusion, passage text and fail-open stay the pipeline's own code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, TransportError
from elasticsearch import ApiError, AsyncElasticsearch

from reranker.proxy.errors import (
    bad_gateway,
    bad_request,
    from_elasticsearch,
    upstream_timeout,
    upstream_unavailable,
)
from reranker.rerank.pipeline import Degraded
from reranker.retrieval.first_stage import Hit
from reranker.retrieval.queries import (
    RESCORE_VECTOR_FIELD,
    VECTOR_FIELD,
    read_vectors,
    vectors_query,
)

KEY_SEPARATOR = "\x1f"  # joins _index and _id: the same _id may live in two indices


def hit_key(index: str, doc_id: str) -> str:
    return f"{index}{KEY_SEPARATOR}{doc_id}"


def split_key(key: str) -> tuple[str, str]:
    index, _, doc_id = key.partition(KEY_SEPARATOR)
    return index, doc_id


@dataclass
class SearchResponse:
    """One Elasticsearch search response, read for the proxy."""

    body: dict[str, Any]
    hits: list[Hit]
    raw_hits: dict[str, dict[str, Any]]
    wall_ms: float = 0.0

    @property
    def took(self) -> int:
        return int(self.body.get("took") or 0)

    @property
    def timed_out(self) -> bool:
        return bool(self.body.get("timed_out"))

    @property
    def shards(self) -> dict[str, Any]:
        shards = self.body.get("_shards")
        return shards if isinstance(shards, dict) else {}

    def partial_reason(self) -> str | None:
        """Why the results are partial (timed out, failed shards), or ``None``."""
        failed = int(self.shards.get("failed") or 0)
        if self.timed_out:
            return "es partial results: the search timed out"
        if failed:
            return f"es partial results: {failed} of {self.shards.get('total')} shards failed"
        return None


@dataclass
class FirstStageResult:
    lexical: SearchResponse
    dense: SearchResponse | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: why kNN gave nothing though it was asked for (the query embedder failed)
    dense_failure: str | None = None

    def raw_hit(self, key: str) -> dict[str, Any]:
        if key in self.lexical.raw_hits:
            return self.lexical.raw_hits[key]
        if self.dense is not None and key in self.dense.raw_hits:
            return self.dense.raw_hits[key]
        index, doc_id = split_key(key)
        return {"_index": index, "_id": doc_id}

    def degraded(self) -> list[Degraded]:
        reasons = [self.lexical.partial_reason()]
        if self.dense is not None:
            reasons.append(self.dense.partial_reason())
        return [Degraded("es_partial", r) for r in dict.fromkeys(r for r in reasons if r)]


async def search_es(
    client: AsyncElasticsearch,
    index: str,
    body: Any,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float,
    endpoint: str = "_search",
) -> tuple[int, Any]:
    """``POST /{index}/_search`` (or ``/{index}/_msearch`` with an NDJSON body) as given;
    (status, decoded body). Upstream trouble becomes a :class:`ProxyError`: ES unreachable →
    503, no answer in time → 504, an error answer → Elasticsearch's own status and body,
    anything unreadable → 502."""
    content_type = "application/x-ndjson" if endpoint == "_msearch" else "application/json"
    request_headers = {"accept": "application/json", "content-type": content_type}
    request_headers.update(headers or {})
    try:
        response = await client.options(request_timeout=max(timeout_s, 0.001)).perform_request(
            "POST",
            f"/{quote(index, safe=',*')}/{endpoint}" if index else f"/{endpoint}",
            params=dict(params or {}),
            headers=request_headers,
            body=body,
        )
    except ApiError as exc:
        raise from_elasticsearch(exc.meta.status, exc.body) from None
    except ConnectionTimeout:
        raise upstream_timeout(
            f"Elasticsearch did not answer within {timeout_s * 1000:.0f} ms"
        ) from None
    except TransportConnectionError as exc:
        raise upstream_unavailable(f"Elasticsearch is unreachable: {exc.message}") from None
    except TransportError as exc:
        raise bad_gateway(f"Elasticsearch answered something unreadable: {exc.message}") from None
    return response.meta.status, response.body


def read_hits(body: Any, stage: str) -> SearchResponse:
    """Hits of a search response as pipeline :class:`Hit` objects (502 if it is not one)."""
    try:
        raw = body["hits"]["hits"]
        hits: list[Hit] = []
        raw_hits: dict[str, dict[str, Any]] = {}
        for item in raw:
            key = hit_key(str(item["_index"]), str(item["_id"]))
            score = float(item["_score"] if item.get("_score") is not None else 0.0)
            hits.append(
                Hit(id=key, score=score, source=item.get("_source"), stage_scores={stage: score})
            )
            raw_hits[key] = item
    except (KeyError, TypeError, ValueError):
        raise bad_gateway("Elasticsearch's search response has no readable hits") from None
    return SearchResponse(body=body, hits=hits, raw_hits=raw_hits)


async def attach_vectors(
    client: AsyncElasticsearch,
    index: str,
    candidates: Sequence[Hit],
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    embeddings: bool = True,
    rescore: bool = False,
) -> None:
    """Set each candidate's ``vector`` to its stored embedding (``embeddings``) and its
    ``rescore_vector`` to its second embedder's (``rescore``): one search by (index, id) with
    ``client`` (the client's own credentials); 400 when embeddings are asked for and the
    index holds none."""
    fields = [VECTOR_FIELD] if embeddings else []
    fields += [RESCORE_VECTOR_FIELD] if rescore else []
    if not candidates or not fields:
        return
    _, answer = await search_es(
        client, index, vectors_query((split_key(h.id) for h in candidates), fields),
        headers=headers, timeout_s=timeout_s,
    )  # fmt: skip
    try:
        found = {name: read_vectors(answer, name) for name in fields}
    except (KeyError, TypeError, ValueError):
        raise bad_gateway("Elasticsearch's answer holds no readable vectors") from None
    if embeddings and not found[VECTOR_FIELD]:
        raise bad_request(
            f"diversity and personalisation need the documents' embeddings; [{index}] has none"
        )
    for hit in candidates:
        if embeddings:
            hit.vector = found[VECTOR_FIELD].get(split_key(hit.id))
        if rescore:
            hit.rescore_vector = found[RESCORE_VECTOR_FIELD].get(split_key(hit.id))
