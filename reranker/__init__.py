"""A hybrid search reranker in front of Elasticsearch."""

__version__ = "0.1.0"
