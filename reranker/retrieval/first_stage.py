"""First-stage retrieval in Elasticsearch: BM25, kNN, and both fused in Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from elasticsearch import Elasticsearch
from elasticsearch.exceptions import ApiError, TransportError

from reranker.errors import SearchError
from reranker.retrieval import fusion
from reranker.retrieval.embed_cache import TextEncoder, encode_queries
from reranker.retrieval.fusion import NORMALIZATIONS, Normalization
from reranker.retrieval.queries import (
    RESCORE_VECTOR_FIELD,
    TEXT_FIELDS,
    VECTOR_FIELD,
    bm25_query,
    knn_clause,
    read_vectors,
    vectors_query,
)

Mode = Literal["bm25", "dense", "hybrid"]
MODES: tuple[str, ...] = get_args(Mode)
FusionMethod = Literal["rrf", "linear"]


@dataclass
class Hit:
    """One retrieved document: its id, the score that ranked it, and each stage's score."""

    id: str
    score: float
    source: dict[str, Any] | None = None
    stage_scores: dict[str, float] = field(default_factory=dict)
    vector: list[float] | None = None
    """The document's stored embedding, when the search asked for it (diversity)."""
    rescore_vector: list[float] | None = None
    """The document's second embedder's vector, when the search asked for it (rescoring)."""


#: fusion weights (lexical, dense) when none are given: linear 0.7 : 1 ranked best on both dev
#: sets (SciFact's held-out train queries 0.7919 vs 0.7854 at 1 : 1, Stack Exchange dev 0.6341
#: vs 0.6082; docs/experiments/defaults.md), and the reranked list over it too
DEFAULT_WEIGHTS: dict[str, tuple[float, float]] = {"linear": (0.7, 1.0), "rrf": (1.0, 1.0)}


@dataclass(frozen=True)
class HybridOptions:
    fusion: FusionMethod = "linear"
    rank_constant: int = 60
    weights: tuple[float, float] | None = None
    """(lexical, dense); ``None``: :data:`DEFAULT_WEIGHTS` for the fusion (linear 0.7 : 1,
    chosen on dev queries; RRF 1 : 1)."""
    normalization: Normalization = "minmax"
    depth: int = 100  # how many hits of each list are fused

    def __post_init__(self) -> None:
        if self.weights is None:
            object.__setattr__(self, "weights", DEFAULT_WEIGHTS.get(self.fusion, (1.0, 1.0)))
        if self.fusion not in get_args(FusionMethod):
            raise SearchError(f"unknown fusion {self.fusion!r}; use rrf or linear")
        if self.normalization not in NORMALIZATIONS:
            raise SearchError(f"unknown normalization {self.normalization!r}")
        if self.rank_constant < 1:
            raise SearchError("rank_constant must be at least 1")
        if self.depth < 1:
            raise SearchError("depth must be at least 1")


def fuse(lexical: Sequence[Hit], dense: Sequence[Hit], options: HybridOptions, k: int) -> list[Hit]:
    """The top ``k`` of a lexical and a dense list fused as ``options`` say (a pure function:
    the CLI's first stage and the proxy, which fetch differently, fuse the same way). Each hit
    keeps both lists' scores in ``stage_scores`` (``bm25``, ``dense``) where it was found."""
    runs = [{h.id: h.score for h in lexical}, {h.id: h.score for h in dense}]
    if options.fusion == "rrf":
        fused = fusion.rrf(runs, rank_constant=options.rank_constant, weights=options.weights)
    else:
        fused = fusion.linear(runs, weights=options.weights, normalization=options.normalization)
    by_id = {h.id: h for h in dense} | {h.id: h for h in lexical}
    hits = []
    for doc_id in fusion.ranked(fused)[:k]:
        stages = {"bm25": runs[0].get(doc_id), "dense": runs[1].get(doc_id)}
        hits.append(
            Hit(
                id=doc_id,
                score=fused[doc_id],
                source=by_id[doc_id].source,
                vector=by_id[doc_id].vector,
                stage_scores={name: s for name, s in stages.items() if s is not None},
            )
        )
    return hits


class FirstStage:
    """Runs first-stage queries against one index or alias."""

    def __init__(
        self,
        client: Elasticsearch,
        index: str,
        encoder: TextEncoder | None = None,
        *,
        fields: Sequence[str] = TEXT_FIELDS,
        with_source: bool | Sequence[str] = False,
        with_vectors: bool = False,
        with_rescore_vectors: bool = False,
    ) -> None:
        """``with_vectors``: each hit carries its stored embedding; ``with_rescore_vectors``:
        its second embedder's vector, where the index has one (:meth:`attach_vectors`)."""
        self.client = client
        self.index = index
        self.encoder = encoder
        self.fields = tuple(fields)
        self.with_source = with_source
        self.with_vectors = with_vectors
        self.with_rescore_vectors = with_rescore_vectors

    def search(
        self,
        text: str,
        mode: str,
        k: int = 10,
        *,
        hybrid: HybridOptions | None = None,
        vector: Sequence[float] | None = None,
    ) -> list[Hit]:
        if mode not in MODES:
            raise SearchError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if k < 1:
            raise SearchError("k must be at least 1")
        if not text.strip():
            raise SearchError("query text is empty")
        if mode == "bm25":
            hits = self.bm25(text, k)
        elif mode == "dense":
            hits = self.dense(text, k, vector=vector)
        else:
            hits = self.hybrid(text, k, hybrid or HybridOptions(), vector=vector)
        if self.with_vectors or self.with_rescore_vectors:
            self.attach_vectors(hits)
        return hits

    def attach_vectors(self, hits: Sequence[Hit]) -> None:
        """Give each hit its stored vectors, those this stage was asked for (one search by
        id for the whole list; a document without one keeps ``None``)."""
        fields = [VECTOR_FIELD] if self.with_vectors else []
        fields += [RESCORE_VECTOR_FIELD] if self.with_rescore_vectors else []
        if not hits or not fields:
            return
        try:
            response = self.client.search(
                index=self.index, **vectors_query(((None, h.id) for h in hits), fields)
            )
        except (ApiError, TransportError) as exc:
            raise SearchError(f"fetching embeddings from {self.index!r} failed: {exc}") from exc
        found = {
            name: {doc_id: vector for (_, doc_id), vector in read_vectors(response, name).items()}
            for name in fields
        }
        for hit in hits:
            if self.with_vectors:
                hit.vector = found[VECTOR_FIELD].get(hit.id)
            if self.with_rescore_vectors:
                hit.rescore_vector = found[RESCORE_VECTOR_FIELD].get(hit.id)

    def bm25(self, text: str, k: int) -> list[Hit]:
        return self._run({"query": bm25_query(text, self.fields)}, k, "bm25")

    def dense(self, text: str, k: int, *, vector: Sequence[float] | None = None) -> list[Hit]:
        if vector is None:
            vector = self.embed([text])[0]
        return self._run({"knn": knn_clause(vector, k)}, k, "dense")

    def hybrid(
        self,
        text: str,
        k: int,
        options: HybridOptions,
        *,
        vector: Sequence[float] | None = None,
    ) -> list[Hit]:
        depth = max(k, options.depth)
        lexical = self.bm25(text, depth)
        dense = self.dense(text, depth, vector=vector)
        return fuse(lexical, dense, options, k)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.encoder is None:
            raise SearchError("dense retrieval needs an embedder; none was given")
        return [row.tolist() for row in encode_queries(self.encoder, list(texts))]

    def _run(self, body: dict[str, Any], k: int, stage: str) -> list[Hit]:
        try:
            if isinstance(self.with_source, bool):
                body["source"] = self.with_source
            else:
                body["source_includes"] = list(self.with_source)
            response = self.client.search(index=self.index, size=k, **body)
        except (ApiError, TransportError) as exc:
            raise SearchError(f"{stage} search on {self.index!r} failed: {exc}") from exc
        hits = []
        for raw in response["hits"]["hits"]:
            score = float(raw["_score"])
            hits.append(
                Hit(
                    id=raw["_id"],
                    score=score,
                    source=raw.get("_source"),
                    stage_scores={stage: score},
                )
            )
        return hits
