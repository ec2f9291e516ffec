"""The query path as one object: first stage → cross-encoder, with per-stage timings.

The CLI (`reranker search --rerank`, `reranker eval --modes ...,rerank`) and the proxy both call
:meth:`Pipeline.search`; nothing else composes the stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reranker.corpus import passage_text
from reranker.errors import ModelError, SearchError
from reranker.first_stage import MODES, FirstStage, Hit, HybridOptions
from reranker.scoring import Scorer

log = logging.getLogger(__name__)


@dataclass
class RankedHit:
    """A hit after reranking; ``score`` is the final score, the rest explains it."""

    id: str
    score: float
    source: dict[str, Any] | None
    first_stage_rank: int
    first_stage_score: float
    relevance: float | None = None  # the cross-encoder's logit
    stage_scores: dict[str, float] = field(default_factory=dict)


@dataclass
class PipelineResult:
    hits: list[RankedHit]
    window: int
    timings_ms: dict[str, float]
    degraded: str | None = None
    model: str | None = None


class Pipeline:
    """First-stage recall of ``window`` candidates, reranked by ``scorer`` when there is one.

    If the scorer fails and ``fail_open`` is set, the first-stage order comes back with
    ``degraded`` saying why, never an empty list.
    """

    def __init__(
        self,
        first_stage: FirstStage,
        scorer: Scorer | None = None,
        *,
        base: str = "bm25",
        window: int = 100,
        hybrid: HybridOptions | None = None,
        fields: Sequence[str] = ("title", "text"),
        fail_open: bool = True,
    ) -> None:
        if base not in MODES:
            raise SearchError(f"unknown first-stage mode {base!r}; use one of {', '.join(MODES)}")
        if window < 1:
            raise SearchError("window must be at least 1")
        self.first_stage = first_stage
        self.scorer = scorer
        self.base = base
        self.window = window
        self.hybrid = hybrid or HybridOptions()
        self.fields = tuple(fields)
        self.fail_open = fail_open

    def search(
        self,
        text: str,
        *,
        k: int = 10,
        vector: Sequence[float] | None = None,
        deadline: float | None = None,
    ) -> PipelineResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        candidates = self.first_stage.search(
            text, self.base, max(self.window, k), hybrid=self.hybrid, vector=vector
        )
        timings["first_stage"] = (time.perf_counter() - started) * 1000
        hits = [
            RankedHit(
                id=h.id,
                score=h.score,
                source=h.source,
                first_stage_rank=rank,
                first_stage_score=h.score,
                stage_scores=dict(h.stage_scores),
            )
            for rank, h in enumerate(candidates, start=1)
        ]
        degraded = None
        if self.scorer is not None and hits:
            started = time.perf_counter()
            try:
                logits = self.scorer.score(
                    [(text, self.passage(h)) for h in candidates], deadline=deadline
                )
            except ModelError as exc:
                if not self.fail_open:
                    raise
                degraded = f"reranker error: {exc}"
                log.warning("scorer failed, first-stage order returned: %s", exc)
            else:
                for hit, logit in zip(hits, logits.tolist(), strict=True):
                    hit.relevance = float(logit)
                    hit.score = float(logit)
                hits.sort(key=lambda h: (-h.score, h.first_stage_rank))
            timings["rerank"] = (time.perf_counter() - started) * 1000
        return PipelineResult(
            hits=hits[:k],
            window=self.window,
            timings_ms=timings,
            degraded=degraded,
            model=self.scorer.model_id if self.scorer else None,
        )

    def passage(self, hit: Hit) -> str:
        """The text the cross-encoder reads: the configured fields of ``_source``, joined."""
        source = hit.source or {}
        if self.fields == ("title", "text"):
            return passage_text(source)
        return " ".join(str(source.get(f) or "").strip() for f in self.fields).strip()
