"""Text-embeddings-inference's ``POST /embed``, answered with the proxy's own embedder: the
first half of remote embedding (issue 29), so that indexing and query embedding can move to
other machines (GPU ones) that run ``reranker serve``.

Request (TEI ``router/src/http/types.rs`` ``EmbedRequest``): ``inputs`` (a string or a list of
strings), ``normalize`` (default true), ``truncate``, ``truncation_direction``,
``prompt_name``. The answer is a list of vectors, one per input in order, exactly what the
embedder gives in process for the same batch (the vectors an index holds). ``prompt_name``
``"query"`` embeds queries the way the first stage does (with the embedder's query
instruction, if it has one); anything else but ``null`` is refused. Inputs are always
truncated at the embedder's length (``truncate: false`` is accepted and ignored, as TEI does
with ``auto_truncate``); ``normalize: false`` is refused when the embedder's vectors are unit
length by construction. Errors take TEI's shape (``{"error", "error_type"}``).

``reranker serve --embedder-only`` serves this alone, with TEI's ``GET /info`` of an embedding
model (:meth:`EmbedApi.describe`: the embedder's card too, which
:class:`~reranker.retrieval.remote_embedder.RemoteEmbedder` reads) and its own ``/_health``
(ready once the embedder is loaded; no cross-encoder, no Elasticsearch).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import reranker
from reranker.proxy import errors
from reranker.proxy.errors import ProxyError
from reranker.proxy.http import may_see_details, read_body
from reranker.proxy.jsonbody import BodyError, loads_strict
from reranker.proxy.rerank_api import (
    DTYPES,
    Proxy,
    Tei,
    check_client_key,
    json_response,
    serde_kind,
)
from reranker.retrieval.embed_cache import TextEncoder, encode_queries
from reranker.retrieval.remote_embedder import QUERY_PROMPT, embedder_card

log = logging.getLogger(__name__)

EMBED_FIELDS = ("inputs", "normalize", "truncate", "truncation_direction", "prompt_name")


def parse_embed(body: Any, limit: int) -> tuple[list[str], bool]:
    """The texts to embed and whether they are queries; TEI's 422 for what does not fit its
    ``EmbedRequest``, 413 beyond ``limit`` inputs."""

    def unfit(reason: str) -> ProxyError:
        return ProxyError(
            422, "Validation", f"Failed to deserialize the JSON body into the target type: {reason}"
        )

    if not isinstance(body, dict):
        raise unfit(f"invalid type: {serde_kind(body)}, expected struct EmbedRequest")
    unknown = sorted(set(body) - set(EMBED_FIELDS))
    if unknown:
        raise unfit(f"unknown field `{unknown[0]}`")
    if "inputs" not in body:
        raise unfit("missing field `inputs`")
    inputs = body["inputs"]
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise unfit("inputs: expected a string or a list of strings")
    if not texts:
        raise ProxyError(422, "Validation", "`inputs` cannot be empty")
    if len(texts) > limit:
        raise ProxyError(
            413, "Validation", f"batch size {len(texts)} > maximum allowed batch size {limit}"
        )
    if body.get("normalize", True) is not True:
        raise ProxyError(400, "Validation", "this embedder's vectors are unit length: normalize")
    prompt = body.get("prompt_name")
    if prompt not in (None, QUERY_PROMPT):
        raise ProxyError(422, "Validation", f"unknown prompt_name {prompt!r}; use 'query' or null")
    return texts, prompt == QUERY_PROMPT


class EmbedApi:
    """``POST /embed`` of one :class:`~reranker.proxy.app.Proxy` (its client keys, guard,
    body limits and the embedder's thread)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def routes(self) -> list[Route]:
        return [Route("/embed", self.embed, methods=["POST"])]

    async def embed(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            dialect = Tei()
            try:
                settings = self.proxy.settings
                check_client_key(request, settings)  # the rerank endpoints' client keys
                raw = await read_body(
                    request, settings.max_body_bytes, timeout_s=settings.body_timeout_s
                )
                try:
                    body = loads_strict(
                        raw,
                        max_depth=settings.max_json_depth,
                        max_digits=settings.max_number_digits,
                    )
                except BodyError as exc:
                    raise dialect.body_error(exc) from None
                texts, queries = parse_embed(body, settings.max_window)
                vectors = await self.encode(texts, queries=queries)
                return json_response(vectors.tolist())
            except ProxyError as exc:
                return dialect.error(exc)
            except Exception:
                log.exception("unexpected failure on POST /embed")
                return dialect.error(errors.internal_error())

        return await self.proxy.guarded(request, handle, lambda: "embed")

    async def encode(self, texts: Sequence[str], *, queries: bool) -> np.ndarray:
        """The vectors, computed in the embedder's own thread (never on the event loop)."""
        encoder = self.encoder()
        loop = asyncio.get_running_loop()
        executor = self.proxy.reranking.embed_executor
        if queries:
            return await loop.run_in_executor(executor, encode_queries, encoder, list(texts))
        return await loop.run_in_executor(executor, lambda: encoder.encode(list(texts)))

    def encoder(self) -> TextEncoder:
        """The loaded embedder; TEI's 503 while there is none."""
        models = self.proxy.models
        if models.encoder is None:
            # not the load's error: that may name files, and is for /_health's readers
            state = "loading" if not models.loaded.is_set() else "none configured"
            raise ProxyError(503, "Unhealthy", f"the embedder is not available ({state})")
        return models.encoder

    # ------------------------------------------------------------------ embedder-only

    def embedder_only_routes(self) -> list[Route]:
        """What ``reranker serve --embedder-only`` answers besides ``/metrics``."""
        return [
            *self.routes(),
            Route("/info", self.info, methods=["GET"]),
            Route("/_health", self.health, methods=["GET"]),
        ]

    async def info(self, request: Request) -> Response:
        """TEI's ``GET /info`` of an embedding model, plus the embedder's card."""

        async def handle(request: Request) -> Response:
            try:
                check_client_key(request, self.proxy.settings)
                return json_response(self.describe())
            except ProxyError as exc:
                return Tei().error(exc)

        return await self.proxy.guarded(request, handle, lambda: "info")

    def describe(self) -> dict[str, Any]:
        """TEI's ``Info`` (``router/src/lib.rs``) for an embedding model (``model_type``
        ``embedding``), with ``embedder`` (:func:`~reranker.retrieval.remote_embedder.
        embedder_card`: the id an index records, the dimension) and this server's limits."""
        encoder, settings = self.encoder(), self.proxy.settings
        card = embedder_card(encoder)
        variant = str(getattr(encoder, "variant", "fp32"))
        return {
            "model_id": card["model_id"],
            "model_sha": None,
            "model_dtype": DTYPES.get(variant, variant),
            "model_type": {"embedding": {"pooling": str(getattr(encoder, "pooling", "mean"))}},
            "max_concurrent_requests": settings.max_in_flight,
            "max_input_length": card["max_input_length"],
            "max_batch_tokens": None,
            "max_batch_requests": None,
            "max_client_batch_size": settings.max_window,
            "auto_truncate": True,
            "tokenization_workers": 1,
            "version": reranker.__version__,
            "sha": None,
            "docker_label": None,
            # beyond TEI's Info
            "embedder": card,
            "limits": {
                "max_inputs": settings.max_window,
                "max_body_bytes": settings.max_body_bytes,
                "max_in_flight": settings.max_in_flight,
            },
            "endpoints": ["/embed"],
        }

    async def health(self, request: Request) -> Response:
        """Ready (200) once the embedder is loaded, else 503; details as the proxy's
        ``/_health`` shows them (to a key, or to anyone when none is set or they are public)."""

        async def handle(request: Request) -> Response:
            settings, models = self.proxy.settings, self.proxy.models
            encoder = models.encoder
            ok = models.loaded.is_set() and encoder is not None
            status, code = ("ok", 200) if ok else ("unavailable", 503)
            if not may_see_details(request, settings, settings.public_health_details):
                return json_response({"status": status}, code)
            embedder: dict[str, Any] = {"loaded": encoder is not None}
            if encoder is not None:
                embedder.update(id=encoder.model_id, dim=encoder.dim)
            elif not models.loaded.is_set():
                embedder["reason"] = "loading"
            else:
                embedder["reason"] = models.encoder_error or "none configured"
            body = {
                "status": status,
                "embedder": embedder,
                "elasticsearch": {"reachable": None, "reason": "embedder-only: no Elasticsearch"},
                "in_flight": self.proxy.admission.in_flight,
            }
            return json_response(body, code)

        return await self.proxy.guarded(request, handle, lambda: "health")
