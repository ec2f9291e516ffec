"""A cascade: a cheap level (a small student, or the first stage itself) scores the whole
window, the full model rescores only its top ``k``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reranker.errors import ConfigError
from reranker.rerank.capabilities import Carded, max_length_of
from reranker.rerank.scorer import PairScorer

#: the full model's share of a cascade when only a cascade model is named
DEFAULT_CASCADE_K = 20
#: the name that makes the first stage a cascade's cheap level (``--cascade-model first-stage``)
FIRST_STAGE_STUDENT = "first-stage"
#: the name that asks for no cascade where one is the default (``--cascade-model none``)
NO_CASCADE = "none"


def cascade_split(student: Sequence[float], k: int) -> tuple[list[int], list[int]]:
    """(head, tail) of a window scored by a cascade's student: the positions of its top ``k``
    and of the rest, each in the student's order (equal scores keep the window's order)."""
    by_student = sorted(range(len(student)), key=lambda i: (-float(student[i]), i))
    return by_student[:k], by_student[k:]


def cascade_order(student: Sequence[float], full_head: Sequence[float], k: int) -> list[int]:
    """Positions of a window in cascade order: the student's top ``k`` (see
    :func:`cascade_split`) ordered by the full model's scores ``full_head`` (one per head
    position, in the head's order; ties keep the student's order), then the rest in the
    student's order, never above them."""
    head, tail = cascade_split(student, k)
    if len(full_head) != len(head):
        raise ValueError(f"{len(full_head)} full-model scores for a head of {len(head)}")
    ranked = sorted(range(len(head)), key=lambda j: (-float(full_head[j]), j))
    return [head[j] for j in ranked] + tail


def cascade_scores(
    student: Sequence[float], head: Sequence[int], full_head: Sequence[float]
) -> list[float]:
    """A score per window position in cascade order: the full model's for the ``head``
    positions, the student's for the rest, shifted (where needed) under the head's lowest."""
    chosen = set(head)
    floor = min(full_head)
    tail_top = max((float(x) for i, x in enumerate(student) if i not in chosen), default=floor)
    shift = min(0.0, floor - tail_top - 1.0)
    final = [float(x) + shift for x in student]
    for i, score in zip(head, full_head, strict=True):
        final[i] = float(score)
    return final


@dataclass(frozen=True)
class Cascade:
    """A cheap level scores the whole window; the full model rescores only its top ``k``.

    The cheap level is a small student (``scorer``) or, with ``scorer=None``, the first stage
    itself: its fused score already ranks the window, at no model cost, and it is exactly the
    prior a first-stage-aware model starts from (Vespa's first phase plays the same part).
    The final order is the full model's order of the cheap level's top ``k``, then the rest in
    the cheap level's order, never above them (:func:`cascade_order`). A hit's ``score``
    follows that order: the full model's logit for the top ``k``; below them the cheap
    level's score, shifted down where needed so that it stays under the lowest of the top
    ``k``. A first-stage-aware full model reads the features of the whole window (normalised
    over all of it), so its logits for the top ``k`` are the ones it gives without a cascade.
    """

    scorer: PairScorer | None
    k: int

    @property
    def student_id(self) -> str:
        return FIRST_STAGE_STUDENT if self.scorer is None else self.scorer.model_id


def is_first_stage_student(model: Path | str | None) -> bool:
    """Whether a cascade model setting names the first stage (:data:`FIRST_STAGE_STUDENT`)
    rather than a model folder."""
    return model is not None and str(model) == FIRST_STAGE_STUDENT


def check_cascade_models(full: PairScorer, student: PairScorer | None) -> None:
    """Refuse a student the full model's cascade cannot use: one that reads other tokens
    (the sha256 of ``tokenizer.json`` or the ``max_length`` differ), a first-stage-aware
    student, or a model without a card to compare (a remote scorer). The first stage
    (``None``) leads any full model."""
    if student is None:
        return
    if student.feature_names:
        raise ConfigError(f"the cascade model {student.model_id} is first-stage-aware")
    cards = [model.card if isinstance(model, Carded) else None for model in (full, student)]
    if not all(isinstance(card, dict) for card in cards):
        raise ConfigError(
            "a cascade needs both models loaded locally, to compare their tokenizers "
            "(a remote scorer has no card)"
        )
    full_card, student_card = cards
    assert full_card is not None and student_card is not None
    full_tok = (full_card.get("files") or {}).get("tokenizer.json")
    student_tok = (student_card.get("files") or {}).get("tokenizer.json")
    if full_tok != student_tok:
        raise ConfigError(
            f"the cascade model {student.model_id} has another tokenizer than the full model "
            f"{full.model_id} (tokenizer.json sha256 {str(student_tok)[:12]} vs "
            f"{str(full_tok)[:12]}): distil it from that model (`reranker distill`)"
        )
    lengths = [max_length_of(m) or c.get("max_length") for m, c in
               ((full, full_card), (student, student_card))]  # fmt: skip
    if lengths[0] != lengths[1]:
        raise ConfigError(
            f"the cascade model {student.model_id} reads max_length {lengths[1]}, the full "
            f"model {full.model_id} {lengths[0]}: they must read the same tokens"
        )
