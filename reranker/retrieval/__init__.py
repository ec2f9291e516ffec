"""The first stage: BM25, kNN and their fusion in Elasticsearch, the query embedder, its cache."""
