"""Reranking: the scorer (pairs in, scores out) and its backends, batching, the first-stage
features a scorer may read, the named heads of a multi-task model, and the pipeline that puts
first stage, scorer, signals and blend together."""
