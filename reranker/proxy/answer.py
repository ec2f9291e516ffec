"""A reranked search's answer: Elasticsearch's response shape with each hit's scores and
explanation, its stage timings, and the request-log document Kibana reads."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reranker.proxy.blends import NamedBlend
from reranker.proxy.candidates import FirstStageResult, split_key
from reranker.proxy.request import (
    Page,
    RerankSpec,
    SourceFilter,
    filter_source,
)
from reranker.rerank.pipeline import (
    PipelineResult,
    RankedHit,
)
from reranker.rerank.scorer import ServedScorer


@dataclass(frozen=True)
class Plan:
    """What an admitted search will do: its validated spec, the page shown, the source
    filter, the query text the cross-encoder reads and the blend that orders the window."""

    spec: RerankSpec
    pages: Page
    sources: SourceFilter
    text: str
    blend: NamedBlend | None


#: the stages whose time is measured (the rest of a request's time is its overhead)
STAGES = ("embed", "es", "rerank", "blend", "personal", "diversity", "scorer_queue")


def stage_timings(
    first: FirstStageResult, result: PipelineResult, rerank_ms: dict[str, float], started: float
) -> dict[str, float]:
    """Milliseconds per stage, the total since ``started`` and the overhead (the rest)."""
    total_ms = (time.perf_counter() - started) * 1000
    timings = {**first.timings_ms, **rerank_ms, "total": total_ms}
    for stage in ("blend", "personal", "diversity"):
        if stage in result.timings_ms:
            timings[stage] = result.timings_ms[stage]
    overhead = total_ms
    for stage in STAGES:
        overhead -= timings.get(stage, 0.0)
    timings["overhead"] = max(0.0, overhead)
    return timings


def answer_model(scorer: ServedScorer | None) -> dict[str, Any] | None:
    """The model an answer names (``rerank.model``)."""
    if scorer is None:
        return None
    return {"id": scorer.model_id, "version": scorer.version, "variant": scorer.variant}


def search_answer(
    first: FirstStageResult,
    result: PipelineResult,
    plan: Plan,
    timings: dict[str, float],
    degraded: str | None,
    scorer: ServedScorer | None,
) -> dict[str, Any]:
    """The Elasticsearch search response: the requested page of the reranked window (with
    ``_rerank`` per hit when explained), Elasticsearch's totals, aggregations and
    suggestions, and the ``rerank`` summary."""
    spec, pages = plan.spec, plan.pages
    window_hits = result.hits
    hits = [
        answer_hit(first, hit, rank, plan)
        for rank, hit in enumerate(
            window_hits[pages.start : pages.start + pages.size], start=pages.start + 1
        )
    ]
    lexical = first.lexical.body
    timed_out = first.lexical.timed_out or bool(first.dense and first.dense.timed_out)
    answer: dict[str, Any] = {
        "took": round(timings["total"]),
        "timed_out": timed_out,
        "_shards": first.lexical.shards,
        "hits": {
            "total": lexical.get("hits", {}).get("total"),
            "max_score": max((h.score for h in window_hits), default=None),
            "hits": hits,
        },
    }
    for key in ("aggregations", "suggest"):
        if key in lexical:
            answer[key] = lexical[key]
    answer["rerank"] = {
        "model": answer_model(scorer),
        "query_text": plan.text,
        "window": spec.window,
        "candidates": len(window_hits),
        "first_stage": "hybrid" if first.dense is not None else "bm25",
        **({"fusion": spec.hybrid.fusion} if first.dense is not None else {}),
        "blend": result.blend,
        **({"cascade": result.cascade} if result.cascade is not None else {}),
        **({"rescore": result.rescore} if result.rescore is not None else {}),
        **({"diversity": result.diversity} if result.diversity is not None else {}),
        **({"passages": spec.passages} if spec.passages is not None else {}),
        **({"personalize": personalized(result)} if spec.personal_weight is not None else {}),
        "took_ms": {k: round(v, 3) for k, v in timings.items()},
        "degraded": degraded,
    }
    return answer


def answer_hit(first: FirstStageResult, hit: RankedHit, rank: int, plan: Plan) -> dict[str, Any]:
    """One hit of the answer: Elasticsearch's own hit, the final ``_score``, the filtered
    ``_source`` and, when explained, how the rank came about (``_rerank``)."""
    out = dict(first.raw_hit(hit.id))
    index, doc_id = split_key(hit.id)
    out["_index"], out["_id"], out["_score"] = index, doc_id, hit.score
    out.pop("_source", None)
    filtered = filter_source(hit.source, plan.sources)
    if filtered is not None:
        out["_source"] = filtered
    if plan.spec.explain:
        out["_rerank"] = {
            "rank": rank,
            "first_stage_rank": hit.first_stage_rank,
            "first_stage_score": hit.first_stage_score,
            "stage_scores": dict(hit.stage_scores),
            "cross_encoder_logit": hit.relevance,
            "final_score": hit.score,
        }
        if hit.student is not None:  # a cascade: the student's logit (null logit: not rescored)
            out["_rerank"]["student_logit"] = hit.student
        if hit.explanation is not None:
            out["_rerank"]["blend"] = hit.explanation
        if hit.diversity is not None:
            out["_rerank"]["diversity"] = diversity_explained(hit.diversity)
        if hit.personal is not None:
            out["_rerank"]["personal"] = hit.personal
        if hit.rescore is not None:  # the second embedder's cosine, normalised over the window
            out["_rerank"]["rescore_similarity"] = hit.rescore
    return out


def personalized(result: PipelineResult) -> dict[str, Any]:
    """What ``rerank.personalize`` did: ``applied`` false for a user without a profile (the
    unpersonalised order), else the weight and the clicks behind the profile."""
    if result.personal is None:
        return {"applied": False}
    return {"applied": True, **result.personal}


def _logged_diversity(why: dict[str, Any]) -> dict[str, Any]:
    """A hit's diversity as the request log keeps it: its penalty, and the ``_id`` it copies."""
    copied = diversity_explained(why).get("duplicate_of")
    return {"diversity_penalty": why["penalty"], "duplicate_of": copied and copied["_id"]}


def diversity_explained(why: dict[str, Any]) -> dict[str, Any]:
    """A hit's diversity explanation, its ``duplicate_of`` as the duplicated hit's index and id."""
    out = dict(why)
    if "duplicate_of" in out:
        index, doc_id = split_key(str(out["duplicate_of"]))
        out["duplicate_of"] = {"_index": index, "_id": doc_id}
    return out


def log_document(
    index: str,
    text: str,
    spec: RerankSpec,
    pages: Page,
    result: PipelineResult,
    timings: dict[str, float],
    degraded: str | None,
    answer: dict[str, Any],
    *,
    top: int = 10,
    degraded_kind: str | None = None,
) -> dict[str, Any]:
    """The request-log document (see ``es_mappings/logs-template.json``)."""
    model = answer["rerank"]["model"]
    logged: list[dict[str, Any]] = []
    for rank, hit in enumerate(result.hits[:top], start=1):
        hit_index, doc_id = split_key(hit.id)
        logged.append(
            {
                "_id": doc_id,
                "_index": hit_index,
                "rank": rank,
                "first_stage_rank": hit.first_stage_rank,
                "moved": hit.first_stage_rank - rank,
                "score": hit.score,
                "first_stage_score": hit.first_stage_score,
                "logit": hit.relevance,
                **(_logged_diversity(hit.diversity) if hit.diversity is not None else {}),
                **(
                    {"personal_contribution": hit.personal["contribution"]}
                    if hit.personal is not None
                    else {}
                ),
                **(
                    {
                        "contributions": {
                            name: item["contribution"]
                            for name, item in hit.explanation["features"].items()
                        }
                    }
                    if hit.explanation is not None
                    else {}
                ),
            }
        )
    return {
        "@timestamp": datetime.now(UTC).isoformat(),
        "index": index,
        "query_text": text,
        "window": spec.window,
        "candidates": len(result.hits),
        "from": pages.start,
        "size": pages.size,
        "first_stage": answer["rerank"]["first_stage"],
        "fusion": answer["rerank"].get("fusion"),
        "blend": answer["rerank"].get("blend"),
        "diversity": answer["rerank"].get("diversity"),
        "personalize": answer["rerank"].get("personalize"),
        "status": 200,  # replaced by the status actually sent (Proxy._submit_log)
        "model": {"id": model["id"], "version": model["version"]} if model else None,
        "took_ms": {k: round(v, 3) for k, v in timings.items()},
        "degraded": degraded,
        "degraded_kind": degraded_kind,
        "hits": logged,
    }
