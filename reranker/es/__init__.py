"""Elasticsearch: client factory, the local node, mappings, and indexing (new index, alias swap)."""
