"""Cross-encoder batches: how pairs are grouped, padded, and how the head's output becomes a
score. One policy for the ONNX :class:`~reranker.rerank.scorer.Scorer`, the torch runs of
``reranker bench scorer`` and the scoring in training (needs neither torch nor ORT).

- :func:`plan_batches`: pair indices sorted by length (stable), cut into batches of at most
  ``max_batch_size`` pairs and ``max_batch_tokens`` padded tokens; a single pair always fits.
- :func:`pad_rows` / :func:`pad_encodings`: BERT inputs (ids, attention mask, token types)
  padded to the batch's own longest pair.
- :func:`head_scores`: a one-label head's logit, or ``logit[1] - logit[0]`` of a two-label
  head, so that :func:`sigmoid` of it is the positive class's probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, overload

import numpy as np
import numpy.typing as npt

from reranker.errors import ModelError
from reranker.numeric import sigmoid

if TYPE_CHECKING:
    import torch
    from tokenizers import Encoding

FloatArray = npt.NDArray[np.float64]
TokenRow = tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray | None]
"""One tokenised pair: its input ids and its token type ids (``None``: the model has none)."""


def plan_batches(
    lengths: Sequence[int] | np.ndarray, max_batch_size: int, max_batch_tokens: int | None
) -> list[list[int]]:
    """Indices sorted by length (stable), cut into batches of at most ``max_batch_size`` pairs
    and ``max_batch_tokens`` padded tokens (rows × the batch's longest pair; ``None``: no
    token cap). A single pair always fits."""
    order = sorted(range(len(lengths)), key=lambda i: int(lengths[i]))
    batches: list[list[int]] = []
    start = 0
    while start < len(order):
        end = start + 1
        # sorted ascending, so a batch's width is the length of its last pair
        while (
            end < len(order)
            and end - start < max_batch_size
            and (
                max_batch_tokens is None
                or (end - start + 1) * int(lengths[order[end]]) <= max_batch_tokens
            )
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Tokens fed including padding: rows × the batch's longest pair, summed over batches."""
    return sum(len(rows) * max(lengths[r] for r in rows) for rows in batches if rows)


def pad_rows(
    rows: Sequence[TokenRow], width: int | None = None, *, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """BERT inputs for a batch (int64): ``input_ids`` (``pad_id`` beyond each row),
    ``attention_mask`` and ``token_type_ids`` (zeros where a row has none), ``width`` wide
    (default: the longest row)."""
    width = width if width is not None else max(len(ids) for ids, _ in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64)
    for row, (row_ids, row_types) in enumerate(rows):
        n = len(row_ids)
        ids[row, :n] = row_ids
        mask[row, :n] = 1
        if row_types is not None:
            types[row, : len(row_types)] = row_types
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def pad_encodings(encodings: Sequence[Encoding], width: int | None = None) -> dict[str, np.ndarray]:
    """:func:`pad_rows` of ``tokenizers`` encodings, zero-padded."""
    return pad_rows([(e.ids, e.type_ids) for e in encodings], width)


@overload
def head_scores(logits: np.ndarray) -> np.ndarray: ...
@overload
def head_scores(logits: torch.Tensor) -> torch.Tensor: ...
def head_scores(logits: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """One relevance score per row of a classification head's output (rows × labels, a numpy
    array or a torch tensor): the logit of a one-label head, ``logit[1] - logit[0]`` of a
    two-label one; :class:`ModelError` for any other head."""
    labels = int(logits.shape[1])
    if labels == 1:
        return logits[:, 0]
    if labels == 2:
        return logits[:, 1] - logits[:, 0]
    raise ModelError(f"a {labels}-label head is not a relevance score")


def logits_or_probabilities(logits: np.ndarray, *, probabilities: bool) -> np.ndarray:
    """What a scorer returns: its float32 logits, or their sigmoid (float32) when asked."""
    return sigmoid(logits).astype(np.float32) if probabilities else logits
