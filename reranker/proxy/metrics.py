"""Prometheus metrics, in a registry of the app's own (several apps may share a process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

STAGE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "reranker_proxy_requests",
            "Requests answered, by kind (rerank, passthrough, other) and HTTP status.",
            ["kind", "status"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "reranker_proxy_stage_seconds",
            "Time per stage of reranked requests (first_stage, embed, rerank, total).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.passthrough_seconds = Histogram(
            "reranker_proxy_passthrough_seconds",
            "Time of requests passed through to Elasticsearch unchanged.",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "reranker_proxy_in_flight", "Reranked requests being handled.", registry=r
        )
        self.scorer_queue = Gauge(
            "reranker_proxy_scorer_queue",
            "Reranked requests whose scoring is queued or running.",
            registry=r,
        )
        self.degraded = Counter(
            "reranker_proxy_degraded",
            "Reranked requests answered degraded, by reason.",
            ["reason"],
            registry=r,
        )
        self.missing_features = Counter(
            "reranker_proxy_first_stage_features_missing",
            "First-stage features a first-stage-aware model got as the documented default "
            "(0.0: the hit was absent from that list), by feature.",
            ["feature"],
            registry=r,
        )
        self.rejected = Counter(
            "reranker_proxy_rejected",
            "Requests refused with 429 because the proxy was saturated.",
            registry=r,
        )
        self.circuit_open = Gauge(
            "reranker_proxy_circuit_open",
            "1 while the scorer's circuit breaker bypasses the cross-encoder.",
            registry=r,
        )
        self.reloads = Counter(
            "reranker_proxy_model_reloads",
            "Model reloads, by outcome (loaded, refused).",
            ["outcome"],
            registry=r,
        )
        self.model = Info("reranker_proxy_model", "The cross-encoder being served.", registry=r)
        self.log_written = Counter(
            "reranker_proxy_log_documents_written",
            "Request-log documents indexed.",
            registry=r,
        )
        self.log_dropped = Counter(
            "reranker_proxy_log_documents_dropped",
            "Request-log documents dropped (queue full or indexing failed), by reason.",
            ["reason"],
            registry=r,
        )
        self.ubi_queries = Counter(
            "reranker_proxy_ubi_queries",
            "Searches given a User Behavior Insights query_id (their query documents queued "
            "for ubi_queries).",
            registry=r,
        )
        self.ubi_events = Counter(
            "reranker_proxy_ubi_events",
            "Events posted to /_reranker/events, by outcome: accepted, or the reason one "
            "was rejected (unknown_query_id, position_out_of_range, duplicate, ...).",
            ["outcome"],
            registry=r,
        )
        self.ubi_written = Counter(
            "reranker_proxy_ubi_documents_written",
            "UBI query and event documents indexed.",
            registry=r,
        )
        self.ubi_dropped = Counter(
            "reranker_proxy_ubi_documents_dropped",
            "UBI query and event documents dropped (queue full, indexing failed, duplicate "
            "id), by reason.",
            ["reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
