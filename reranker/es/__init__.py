"""Elasticsearch: client factory, local node management, mappings and first-stage queries."""
