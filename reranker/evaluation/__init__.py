"""Measuring: evaluation runs over BEIR-layout datasets, and the speed benchmarks' library
(``reranker bench``); the metrics themselves are :mod:`reranker.metrics`."""
