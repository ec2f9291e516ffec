"""The outputs a cross-encoder may have: relevance, then one head per signal.

Serving reads these names (which ONNX outputs a model has, which blend feature each head
feeds); training (:mod:`reranker.training.heads`) says what each head learns from.
"""

from __future__ import annotations

RELEVANCE = "relevance"
#: Heads whose target is a property of the document, from the dataset's signal preset
DOCUMENT_HEADS: tuple[str, ...] = ("popularity", "authority", "freshness")
#: The head whose target is a property of the (query, document) pair, from click events
CLICK_HEAD = "clickthrough"
#: Signal heads a model may have, in their ONNX output order (after ``logits``).
SIGNAL_HEADS: tuple[str, ...] = (*DOCUMENT_HEADS, CLICK_HEAD)
HEAD_NAMES: tuple[str, ...] = (RELEVANCE, *SIGNAL_HEADS)
#: Blend feature name of a head's prediction.
PREDICTED_PREFIX = "predicted_"


def predicted_feature(head: str) -> str:
    return f"{PREDICTED_PREFIX}{head}"
