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

from reranker.proxy import errors
from reranker.proxy.errors import ProxyError
from reranker.proxy.http import read_body
from reranker.proxy.jsonbody import BodyError, loads_strict
from reranker.proxy.rerank_api import Proxy, Tei, check_client_key, json_response, serde_kind
from reranker.retrieval.embed_cache import encode_queries

log = logging.getLogger(__name__)

EMBED_FIELDS = ("inputs", "normalize", "truncate", "truncation_direction", "prompt_name")
#: the prompt that embeds queries (TEI names prompts from the model's configuration)
QUERY_PROMPT = "query"


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
        encoder = self.proxy.models.encoder
        if encoder is None:
            state = "loading" if not self.proxy.models.loaded.is_set() else "none configured"
            raise ProxyError(503, "Unhealthy", f"the embedder is not available ({state})")
        loop = asyncio.get_running_loop()
        executor = self.proxy.reranking.embed_executor
        if queries:
            return await loop.run_in_executor(executor, encode_queries, encoder, list(texts))
        return await loop.run_in_executor(executor, lambda: encoder.encode(list(texts)))
