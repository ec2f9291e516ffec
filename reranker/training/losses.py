"""Losses of cross-encoder and embedder training (torch)."""

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


def listwise_kl_loss(
    student: torch.Tensor, teacher: torch.Tensor, sizes: Sequence[int], temperature: float = 1.0
) -> torch.Tensor:
    """Mean over consecutive groups (sizes ``sizes``) of KL(teacher ‖ student) between the
    softmax distributions of the two models' logits over each group, at ``temperature``
    (distillation: the student learns the teacher's ranking of a query's candidates, not its
    scale; shifting a group's logits changes nothing)."""
    losses = []
    start = 0
    for size in sizes:
        s = student[start : start + size] / temperature
        t = teacher[start : start + size] / temperature
        target = torch.softmax(t, dim=0)
        losses.append(
            torch.sum(target * (torch.log_softmax(t, dim=0) - torch.log_softmax(s, dim=0)))
        )
        start += size
    return torch.stack(losses).mean() * temperature**2


def margin_mse_loss(
    student: torch.Tensor, teacher: torch.Tensor, sizes: Sequence[int]
) -> torch.Tensor:
    """Margin-MSE (Hofstätter et al. 2020) over every pair of members of each group: the
    student's score differences should equal the teacher's."""
    losses = []
    start = 0
    for size in sizes:
        s = student[start : start + size]
        t = teacher[start : start + size]
        ds = s[:, None] - s[None, :]
        dt = t[:, None] - t[None, :]
        losses.append(torch.mean((ds - dt) ** 2))
        start += size
    return torch.stack(losses).mean()


def in_batch_loss(
    queries: torch.Tensor, passages: torch.Tensor, relevant: torch.Tensor, scale: float
) -> torch.Tensor:
    """Multiple-negatives ranking loss: ``queries`` (B × d) and ``passages`` (P × d, P ≥ B,
    unit length; row i of the first B is query i's positive); ``relevant`` (B × P, bool) marks
    the passages judged relevant to each query other than its own positive, which are masked
    out rather than pushed away."""
    batch = queries.shape[0]
    scores = scale * queries.float() @ passages.float().T
    rows = torch.arange(batch, device=scores.device)
    diagonal = torch.zeros_like(relevant)
    diagonal[rows, rows] = True
    scores = scores.masked_fill(relevant & ~diagonal, torch.finfo(scores.dtype).min / 2)
    return torch.nn.functional.cross_entropy(scores, rows)
