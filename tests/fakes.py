"""The one fake scorer of the pure-logic tests: the served scorer protocol
(:class:`~reranker.rerank.scorer.ServedScorer`) with scores from a rule, and what it was asked.

Tests subclass :class:`FakeScorer` and override :meth:`FakeScorer.scores` for their rule; they
never redefine the protocol. Tests of the proxy or the rerank API that need real scores wrap a
real :class:`~reranker.rerank.scorer.Scorer` instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from reranker.errors import ModelError

Pair = tuple[str, str]


class FakeScorer:
    """Scores a pair by its passage's length (override :meth:`scores`); records each call's
    passages; raises :class:`~reranker.errors.ModelError` when ``fail`` is set."""

    version = "v1"
    variant = "int8"
    provider = "CPUExecutionProvider"
    signal_heads: tuple[str, ...] = ()

    def __init__(
        self,
        model_id: str = "fake",
        *,
        feature_names: tuple[str, ...] = (),
        max_length: int | None = None,
        fail: bool = False,
    ) -> None:
        self.model_id = model_id
        self.feature_names = feature_names
        self.max_length = max_length
        self.fail = fail
        self.calls: list[list[str]] = []
        self.pairs_run = 0
        self.features: np.ndarray | None = None

    def scores(self, pairs: Sequence[Pair], features: np.ndarray | None) -> np.ndarray:
        return np.array([float(len(p)) for _, p in pairs], dtype=np.float32)

    def score(
        self,
        pairs: Sequence[Pair],
        *,
        sigmoid: bool = False,
        deadline: float | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        self.calls.append([p for _, p in pairs])
        self.pairs_run += len(pairs)
        self.features = features
        if self.fail:
            raise ModelError(f"{self.model_id} exploded")
        return np.asarray(self.scores(pairs, features), dtype=np.float32)

    def warmup(self) -> None:
        return None


class FakeEndpoints:
    """HTTP endpoints ``http://a``, ``http://b``, ... for a remote client's pool (an
    ``httpx.MockTransport`` handler): ``/info`` answers ``info[host]``, any other path
    :meth:`answer` (what a subclass serves), unless ``mode[host]`` injects a fault: ``down``
    (connection refused), ``500``/``429``/``400``, ``timeout``, or ``short`` (for
    :meth:`answer` to drop an item)."""

    def __init__(self, info: dict[str, Any], *hosts: str) -> None:
        self.mode: dict[str, str] = dict.fromkeys(hosts, "ok")
        self.info: dict[str, dict[str, Any]] = {h: json.loads(json.dumps(info)) for h in hosts}
        self.calls: list[tuple[str, str]] = []  # (host, path)
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []

    def answer(self, body: dict[str, Any], mode: str) -> httpx.Response:
        raise NotImplementedError

    def handler(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls.append((host, request.url.path))
        self.headers.append(request.headers)
        mode = self.mode[host]
        if mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/info":
            return httpx.Response(200, json=self.info[host])
        body = json.loads(request.content)
        self.bodies.append(body)
        if mode in {"500", "429", "400"}:
            return httpx.Response(int(mode), json={"error": f"injected {mode}"})
        if mode == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        return self.answer(body, mode)

    def hosts_called(self, path: str) -> list[str]:
        return [host for host, called in self.calls if called == path]
