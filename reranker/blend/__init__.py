"""The final score: relevance blended with first-stage and document signals (features, the
linear and LambdaMART blends, fitting them, and the signals read from ``_source``)."""
