"""An embedder that embeds through text-embeddings-inference ``POST /embed`` endpoints over HTTP
(issue 29's remote embedders): indexing and query embedding on other (GPU) machines.

    embedder = RemoteEmbedder(["http://gpu-1:9290", "http://gpu-2:9290"])
    vectors = embedder.encode(texts)            # what the embedder behind them gives in process
    queries = embedder.encode_queries(texts)    # with its query instruction (prompt "query")

It is a :class:`~reranker.retrieval.embed_cache.TextEncoder` and a
:class:`~reranker.retrieval.embed_cache.QueryEncoder`, so indexing, the first stage and the
proxy take it where they take the in-process
:class:`~reranker.retrieval.embedder.Embedder`.

Each endpoint is a ``reranker serve --embedder-only`` (or any ``reranker serve`` whose embedder
is loaded) or a TEI server of an embedding model: ``POST /embed`` with ``{"inputs",
"normalize": true, "truncate": true, "prompt_name"}`` answers one vector per input, in order.
``GET /info`` names the embedder. ``reranker serve`` says it in an ``embedder`` object
(:func:`embedder_card`) whose ``model_id`` is the in-process embedder's own, so the embedder an
index records in its ``_meta`` and the proxy's refusal of kNN with another embedder's vectors
hold wherever the vectors were computed; a TEI embedding server's is
``<model_id>@<model_sha[:12]>``, its dimension read from a first embedding. Every endpoint
must serve the same embedder id and dimension.

Texts go in requests of at most ``max_batch`` (and at most the smallest
``max_client_batch_size`` the endpoints' ``/info`` gives; TEI's default, 32, where one does not
say), ``concurrency`` of them at once (one per endpoint by default: ``reranker serve`` embeds
one batch at a time, so a second request would only queue there, its wait counted against
its timeout). Each request is spread and
fails over as :mod:`reranker.retrieval.endpoints` describes (the remote scorer's machinery: a
breaker per endpoint, a retry on another, 429 moves on, health checks); a batch no endpoint
embeds raises :class:`~reranker.errors.ModelError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from reranker.errors import ModelError
from reranker.retrieval.embed_cache import QueryEncoder, TextEncoder
from reranker.retrieval.embedder import check_texts
from reranker.retrieval.endpoints import EndpointPool, ModelCheck, PoolOptions

log = logging.getLogger(__name__)

#: the ``prompt_name`` that embeds queries (TEI names prompts from the model's configuration)
QUERY_PROMPT = "query"
#: TEI's ``max_client_batch_size`` when an endpoint's ``/info`` does not give one
TEI_CLIENT_BATCH = 32
#: texts per request at most, whatever the endpoints accept: small enough to spread a chunk
#: of documents over several endpoints, large enough that the HTTP hop is a small part of it
DEFAULT_MAX_BATCH = 64


def embedder_card(encoder: TextEncoder) -> dict[str, Any]:
    """What ``GET /info`` of ``reranker serve`` says of its embedder (its ``embedder``
    object), and what :func:`served_embedder` reads back."""
    max_length = getattr(encoder, "max_length", None)
    return {
        "model_id": encoder.model_id,
        "dim": encoder.dim,
        "max_input_length": max_length if isinstance(max_length, int) else None,
        "query_prompt": QUERY_PROMPT if isinstance(encoder, QueryEncoder) else None,
    }


def served_embedder(info: dict[str, Any]) -> dict[str, Any] | None:
    """The embedder an endpoint's ``/info`` names: ``reranker serve``'s ``embedder`` object,
    else a TEI embedding model's (``model_type.embedding``: its id at its sha, no dimension);
    ``None`` when it serves none."""
    card = info.get("embedder")
    if isinstance(card, dict) and card.get("model_id"):
        return card
    model_type = info.get("model_type")
    if isinstance(model_type, dict) and "embedding" in model_type and info.get("model_id"):
        sha = str(info.get("model_sha") or "")
        model_id = f"{info['model_id']}@{sha[:12]}" if sha else str(info["model_id"])
        return {"model_id": model_id, "dim": None}
    return None


def _identity(info: dict[str, Any]) -> tuple[Any, Any]:
    card = served_embedder(info) or {}
    return card.get("model_id"), card.get("dim")


def _describe(info: dict[str, Any]) -> str:
    card = served_embedder(info)
    if card is None:
        return f"no embedder (its model is {info.get('model_id')!s})"
    return f"{card['model_id']} ({card.get('dim') or '?'} dimensions)"


def _refusal(url: str, info: dict[str, Any]) -> str | None:
    if served_embedder(info) is not None:
        return None
    return (
        f"{url} serves no embedder (GET /info names {info.get('model_id')!s}, not an embedding "
        "model, and no loaded embedder): point it at `reranker serve --embedder-only` or a "
        "text-embeddings-inference embedding server"
    )


#: an embed endpoint's model: the embedder's id and dimension must agree
EMBEDDER_CHECK = ModelCheck(identity=_identity, describe=_describe, refusal=_refusal)


def read_vectors(body: Any, count: int, dim: int | None) -> np.ndarray:
    """TEI's ``/embed`` answer (one list of numbers per input) as a ``(count, dim)`` float32
    array; :class:`ModelError` for another count or length, or a value that is not a finite
    number."""
    if not isinstance(body, list):
        raise ModelError(f"expected a list of vectors, got {type(body).__name__}")
    if len(body) != count:
        raise ModelError(f"{len(body)} vectors for {count} texts")
    try:
        vectors = np.asarray(body, dtype=np.float32)
    except (TypeError, ValueError):
        raise ModelError("the vectors are not lists of numbers of one length") from None
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        raise ModelError(f"vectors of shape {vectors.shape}, expected ({count}, {dim or 'd'})")
    if not np.isfinite(vectors).all():
        raise ModelError("a vector is not finite")
    return vectors


class RemoteEmbedder:
    """Embeds through one or more ``/embed`` endpoints (see the module's docstring).

    ``urls`` are base URLs; ``api_key`` is sent as ``Authorization: Bearer <key>``.
    ``timeout_s`` bounds one request; ``wait_s`` is how long construction waits for a first
    endpoint to answer ``/info``; ``health_interval_s`` starts a health-check thread;
    ``query_prompt`` is the ``prompt_name`` of queries (``None``: embedded as any text, for a
    TEI model without prompts). ``transport`` replaces httpx's (tests). Thread-safe.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        failures: int = 3,
        cooloff_s: float = 5.0,
        attempts: int = 2,
        wait_s: float = 0.0,
        health_interval_s: float = 0.0,
        max_batch: int = DEFAULT_MAX_BATCH,
        concurrency: int | None = None,
        query_prompt: str | None = QUERY_PROMPT,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1 or (concurrency is not None and concurrency < 1):
            raise ModelError("max_batch and concurrency must be at least 1")
        options = PoolOptions(
            api_key=api_key,
            timeout_s=timeout_s,
            failures=failures,
            cooloff_s=cooloff_s,
            attempts=attempts,
            wait_s=wait_s,
            health_interval_s=health_interval_s,
            transport=transport,
            clock=clock,
        )
        self.pool = EndpointPool(urls, role="embedder", check=EMBEDDER_CHECK, options=options)
        card = served_embedder(self.pool.info) or {}
        #: the embedder's own id (``reranker serve``'s in-process one): what an index records
        self.model_id: str = str(card["model_id"])
        self.query_prompt = query_prompt
        #: texts per request: what every endpoint accepts, at most ``max_batch``
        self.batch = min(max_batch, self.pool.smallest("max_client_batch_size", TEI_CLIENT_BATCH))
        self.concurrency = concurrency or len(self.pool.endpoints)
        dim = card.get("dim")
        try:
            self.dim: int = dim if isinstance(dim, int) else self._measured_dim()
        except BaseException:
            self.pool.close()
            raise
        log.info("remote embedder %s (%d dimensions) over %s", self.model_id, self.dim, self.urls)

    def _measured_dim(self) -> int:
        """The dimension of a TEI server's vectors, whose ``/info`` does not say it."""
        (vector,) = self._request(["dimension"], prompt=None, dim=None)
        return int(vector.shape[0])

    @property
    def urls(self) -> list[str]:
        return self.pool.urls

    def __repr__(self) -> str:
        return f"RemoteEmbedder({self.model_id!r}, dim={self.dim}, endpoints={self.urls!r})"

    def describe(self) -> list[dict[str, Any]]:
        """Each endpoint's state and counters (``/_health``, ``/metrics``)."""
        return self.pool.describe()

    def close(self) -> None:
        self.pool.close()

    # ------------------------------------------------------------------ embedding

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """``(len(texts), dim)`` float32 vectors in the caller's order, as the endpoints'
        embedder gives them. ``batch_size`` is the in-process embedder's and is not used here:
        the endpoints batch for their own model (requests are :attr:`batch` texts)."""
        return self._embed(check_texts(texts), prompt=None, progress=progress)

    def encode_queries(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """:meth:`encode` of the texts as queries (``prompt_name`` :attr:`query_prompt`)."""
        return self._embed(check_texts(texts), prompt=self.query_prompt, progress=progress)

    def _embed(self, items: list[str], *, prompt: str | None, progress: bool) -> np.ndarray:
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        starts = range(0, len(items), self.batch)
        if len(starts) <= 1 or self.concurrency == 1:
            for start in starts:
                out[start : start + self.batch] = self._request(
                    items[start : start + self.batch], prompt=prompt, dim=self.dim
                )
            return out
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), disable=not progress, unit="text", desc="embedding")

        def one(start: int) -> None:
            chunk = items[start : start + self.batch]
            out[start : start + len(chunk)] = self._request(chunk, prompt=prompt, dim=self.dim)
            bar.update(len(chunk))

        workers = ThreadPoolExecutor(
            min(self.concurrency, len(starts)), thread_name_prefix="reranker-remote-embed"
        )
        try:
            for _ in workers.map(one, starts):
                pass
        finally:  # a batch no endpoint embeds: the batches not started are not sent
            workers.shutdown(wait=True, cancel_futures=True)
            bar.close()
        return out

    def _request(self, texts: list[str], *, prompt: str | None, dim: int | None) -> np.ndarray:
        body = {"inputs": texts, "normalize": True, "truncate": True, "prompt_name": prompt}
        return self.pool.request(
            "/embed", body, lambda answer: read_vectors(answer, len(texts), dim)
        )
