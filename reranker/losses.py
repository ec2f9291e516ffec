"""Losses of cross-encoder training (torch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def listwise_loss(logits: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Mean softmax cross-entropy of consecutive groups of ``logits`` (sizes ``sizes``), the
    first member of each group being its positive."""
    losses = []
    start = 0
    for size in sizes:
        group = logits[start : start + size]
        losses.append(torch.logsumexp(group, dim=0) - group[0])
        start += size
    return torch.stack(losses).mean()
