"""Training (torch): the cross-encoder, the first-stage-aware model and its heads, distillation,
the embedder, and learning the blend; their data and losses."""
