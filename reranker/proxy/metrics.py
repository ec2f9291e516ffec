"""Prometheus metrics, in a registry of the app's own (several apps may share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from reranker.rerank.cache import LruScores

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
            "Requests answered, by kind (search, rerank, passthrough, msearch, rerank_api, info, "
            "health, metrics, admin, other) and HTTP status.",
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
        self._define_logs(r)
        self._define_ubi(r)

    def _define_logs(self, r: CollectorRegistry) -> None:
        """The request log's documents: written, dropped."""
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
        self.log_bulk_retries = Counter(
            "reranker_proxy_log_bulk_retries",
            "Bulk requests of request-log and UBI documents sent again after a failure (the "
            "cluster unreachable, a node lost, a shard not yet reassigned, 429).",
            registry=r,
        )

    def _define_ubi(self, r: CollectorRegistry) -> None:
        """User Behavior Insights: query ids given, events by outcome, documents written."""
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
            "UBI query and event documents indexed (or found stored already under their id).",
            registry=r,
        )
        self.ubi_dropped = Counter(
            "reranker_proxy_ubi_documents_dropped",
            "UBI query and event documents dropped (queue full, indexing failed), by reason.",
            ["reason"],
            registry=r,
        )

    def watch_score_cache(self, cache: LruScores) -> None:
        """Export the pair-score cache's counters (read at scrape time)."""
        self.registry.register(ScoreCacheCollector(cache))

    def watch_remote_endpoints(
        self, endpoints: Callable[[], list[dict[str, Any]]], role: str = "scorer"
    ) -> None:
        """Export each remote ``role`` (scorer, embedder) endpoint's counters (``endpoints()``
        read at scrape time)."""
        self.registry.register(RemoteEndpointCollector(endpoints, role))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ScoreCacheCollector(Collector):
    """``reranker_proxy_score_cache_*``: the in-memory pair-score cache's lookups by result,
    evictions and size."""

    def __init__(self, cache: LruScores) -> None:
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        lookups = CounterMetricFamily(
            "reranker_proxy_score_cache_lookups",
            "Pair scores looked up in the cache, by result (hit, miss).",
            labels=["result"],
        )
        lookups.add_metric(["hit"], self.cache.hits)
        lookups.add_metric(["miss"], self.cache.misses)
        yield lookups
        yield CounterMetricFamily(
            "reranker_proxy_score_cache_evictions",
            "Pair scores evicted (least recently used first).",
            value=self.cache.evictions,
        )
        yield GaugeMetricFamily(
            "reranker_proxy_score_cache_pairs", "Pair scores held.", value=len(self.cache)
        )


class RemoteEndpointCollector(Collector):
    """``reranker_proxy_remote_scorer_*`` (``…_embedder_*`` for ``role`` embedder): each remote
    endpoint's requests, failures and whether its breaker lets requests through (nothing when
    the model is in-process)."""

    def __init__(self, endpoints: Callable[[], list[dict[str, Any]]], role: str = "scorer") -> None:
        self.endpoints = endpoints
        self.role = role

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        name, role = f"reranker_proxy_remote_{self.role}", self.role
        requests = CounterMetricFamily(
            f"{name}_requests", f"Requests sent to a remote {role} endpoint.", labels=["endpoint"]
        )
        failures = CounterMetricFamily(
            f"{name}_failures",
            f"Requests a remote {role} endpoint failed (its breaker counted them).",
            labels=["endpoint"],
        )
        up = GaugeMetricFamily(
            f"{name}_up",
            f"1 while a remote {role} endpoint's breaker is closed, else 0.",
            labels=["endpoint"],
        )
        for endpoint in self.endpoints():
            url = str(endpoint["url"])
            requests.add_metric([url], endpoint["requests"])
            failures.add_metric([url], endpoint["failures"])
            up.add_metric([url], 1 if endpoint["state"] == "closed" else 0)
        yield requests
        yield failures
        yield up
