"""Signal heads: what the multi-task cross-encoder learns besides relevance, and from what.

A first-stage-aware model (:mod:`reranker.training.first_stage_aware`) may carry one head per
signal of
:data:`~reranker.rerank.heads.SIGNAL_HEADS` beside its relevance score. Each head regresses, from
the (query, document)
text alone, the value the blend would read for that signal: the dataset's signal preset
(:data:`reranker.blend.signals.PRESETS`) turns each document's stored fields into features in
[0, 1] (popularity = saturation of the Stack Exchange ``Score``; authority = saturation of the
author's reputation or of the paper's citations; freshness = exponential decay of the age), and
the head's sigmoid output is fitted to them with a mean squared error. A document whose signal
is missing or that the preset does not define (SciFact has no popularity) is masked out of that
head's loss, never given a made-up target.

Why: a new answer has no votes and a new paper no citations. The blend can read a head's
prediction (feature ``predicted_<signal>``) where the signal itself is missing.

Held-out documents: every document judged for a dev or test query (and for the train queries
held out for checkpoint selection) is masked out of every signal loss, so that a head's numbers
on those documents are predictions, never recollections of a target it was fitted to.

The click-through head (:data:`~reranker.rerank.heads.CLICK_HEAD`) is popularity as users show it:
the chance that a
user who looks at the document, for this query, clicks it. Its targets are per (query,
document) pair, not per document: the attractiveness the position-based click model
(:func:`reranker.feedback.judgments.fit_pbm`, the EM fit ``reranker judgments --model pbm`` uses)
puts
on each pair of the click events it is given, for the pairs it thinks were examined at least
``min_examinations`` times, and only for the training queries (events of any other query are
ignored). Its loss is the binary cross-entropy of its sigmoid against that attractiveness: the
negative log-likelihood of "attractive" under the click model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from reranker.corpus import read_jsonl
from reranker.errors import ConfigError, SourceError
from reranker.rerank.heads import (
    HEAD_NAMES,
    RELEVANCE,
    SIGNAL_HEADS,
)


def parse_heads(text: str) -> tuple[str, ...]:
    """``relevance,popularity,...`` → signal head names in canonical order; relevance is the
    ranking itself and must be among them."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(HEAD_NAMES))
    if unknown:
        raise ConfigError(f"unknown head(s) {', '.join(unknown)}; known: {', '.join(HEAD_NAMES)}")
    if RELEVANCE not in names:
        raise ConfigError("the heads must include relevance: it is the ranking the model serves")
    return tuple(h for h in SIGNAL_HEADS if h in names)


def parse_loss_weights(text: str | None, heads: Sequence[str]) -> dict[str, float]:
    """``popularity=0.5,authority=1`` → a weight per head (relevance and every signal head,
    1.0 where not given); refuses unknown names, heads the model does not have, negative or
    non-finite weights, and weights that are all zero."""
    weights = {RELEVANCE: 1.0, **{h: 1.0 for h in heads}}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"loss weight {item.strip()!r}: expected NAME=WEIGHT")
        if name not in weights:
            raise ConfigError(
                f"loss weight for {name!r}, which is not a head of this model "
                f"({', '.join(weights)})"
            )
        try:
            weight = float(value)
        except ValueError:
            raise ConfigError(f"loss weight {item.strip()!r}: {value!r} is not a number") from None
        if not np.isfinite(weight) or weight < 0:
            raise ConfigError(f"loss weight {item.strip()!r}: must be finite and ≥ 0")
        weights[name] = weight
    if not any(weights.values()):
        raise ConfigError("every loss weight is zero: nothing would be trained")
    return weights


@dataclass(frozen=True)
class SignalTargets:
    """Per document of one dataset: each head's target and whether it may be used."""

    heads: tuple[str, ...]
    index: dict[str, int]
    values: npt.NDArray[np.float32]
    """``(n_docs, n_heads)``; 0 where masked"""
    usable: npt.NDArray[np.bool_]
    """``(n_docs, n_heads)``: the signal exists, the preset defines it, the doc is not held out"""

    def rows(self, doc_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Targets and usable mask for ``doc_ids`` (unknown ids are masked)."""
        values = np.zeros((len(doc_ids), len(self.heads)), dtype=np.float32)
        usable = np.zeros((len(doc_ids), len(self.heads)), dtype=bool)
        for r, doc_id in enumerate(doc_ids):
            i = self.index.get(doc_id)
            if i is not None:
                values[r] = self.values[i]
                usable[r] = self.usable[i]
        return values, usable

    def counts(self) -> dict[str, int]:
        return {h: int(self.usable[:, j].sum()) for j, h in enumerate(self.heads)}


def document_sources(dataset: Path) -> dict[str, dict[str, Any]]:
    """Each document's ``_source`` as the index would hold it: the corpus row with
    ``signals.jsonl`` (when the dataset has one) merged in by ``_id``."""
    sources = {str(row["_id"]): row for _, row in read_jsonl(dataset / "corpus.jsonl")}
    extra = dataset / "signals.jsonl"
    if extra.is_file():
        for number, row in read_jsonl(extra):
            if "_id" not in row:
                raise SourceError(f"{extra}:{number}: no _id")
            doc = sources.get(str(row["_id"]))
            if doc is not None:
                doc.update({k: v for k, v in row.items() if k != "_id"})
    return sources


def judged_documents(qrels_sets: Iterable[Mapping[str, Mapping[str, int]]]) -> set[str]:
    return {d for qrels in qrels_sets for judged in qrels.values() for d in judged}


def signal_targets(
    dataset: Path, heads: Sequence[str], held_out: set[str] | None = None
) -> SignalTargets:
    """Targets of ``heads`` for every document of ``dataset`` from its signal preset (a dataset
    without a preset gets no usable target); ``held_out`` documents are masked."""
    from reranker.blend.signals import PRESETS, extract

    sources = document_sources(dataset)
    ids = list(sources)
    values = np.zeros((len(ids), len(heads)), dtype=np.float32)
    usable = np.zeros((len(ids), len(heads)), dtype=bool)
    config = PRESETS.get(dataset.name)
    if config is not None and ids:
        batch = extract([sources[d] for d in ids], config)
        for j, head in enumerate(heads):
            if head in batch.names:
                col = batch.names.index(head)
                values[:, j] = batch.values[:, col]
                usable[:, j] = ~batch.defaults_used[:, col]
    if held_out:
        keep = np.array([d not in held_out for d in ids], dtype=bool)
        usable &= keep[:, None]
    values[~usable] = 0.0
    return SignalTargets(tuple(heads), {d: i for i, d in enumerate(ids)}, values, usable)


@dataclass(frozen=True)
class ClickTargets:
    """The click-through head's targets: per (normalised query text, document id), the
    position-based model's attractiveness of the pair."""

    scores: dict[tuple[str, str], float]
    min_examinations: float
    events: int
    pairs_seen: int

    def rows(
        self, queries: Sequence[str], doc_ids: Sequence[str]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Targets and usable mask for the pairs ``zip(queries, doc_ids)``."""
        from reranker.feedback.judgments import normalise_query

        values = np.zeros(len(doc_ids), dtype=np.float32)
        usable = np.zeros(len(doc_ids), dtype=bool)
        for r, (query, doc_id) in enumerate(zip(queries, doc_ids, strict=True)):
            value = self.scores.get((normalise_query(query), doc_id))
            if value is not None:
                values[r], usable[r] = value, True
        return values, usable

    def counts(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "pairs_seen": self.pairs_seen,
            "pairs": len(self.scores),
            "queries": len({query for query, _ in self.scores}),
            "min_examinations": self.min_examinations,
        }


def click_targets(
    events: Path, training_queries: Iterable[str], *, min_examinations: float = 2.0
) -> ClickTargets:
    """Fit the position-based click model to the events in ``events`` (UBI events as JSON
    lines, as ``reranker judgments --events`` reads them) and keep the pairs of
    ``training_queries`` (texts) examined at least ``min_examinations`` times; a
    :class:`SourceError` when none is left."""
    from reranker.feedback.judgments import count_clicks, fit_pbm, normalise_query, read_events_file

    if min_examinations < 0:
        raise ConfigError("the click-through head's minimum examinations must be ≥ 0")
    counts, report = count_clicks(read_events_file(events))
    if not counts.rows:
        raise SourceError(f"{events}: no impression or click to learn click-through from")
    fit = fit_pbm(counts)
    examined = fit.examinations or {}
    allowed = {normalise_query(text) for text in training_queries}
    scores = {
        pair: score
        for pair, score in fit.scores.items()
        if pair[0] in allowed and examined.get(pair, 0.0) >= min_examinations
    }
    if not scores:
        raise SourceError(
            f"{events}: none of its {len(fit.scores)} (query, document) pairs is of a training "
            f"query and examined {min_examinations:g} times: nothing to train click-through on"
        )
    return ClickTargets(scores, min_examinations, report.events, len(fit.scores))


def click_loss(prediction: Any, values: np.ndarray, usable: np.ndarray) -> Any:
    """Binary cross-entropy of the click-through head's sigmoid against the attractiveness,
    over the usable rows (a zero tensor where none is)."""
    import torch

    pred = prediction.reshape(-1).float()
    mask = torch.from_numpy(usable).to(pred.device)
    if not bool(mask.any()):
        return pred.sum() * 0.0
    target = torch.from_numpy(values).to(pred.device)
    return torch.nn.functional.binary_cross_entropy(
        pred[mask].clamp(1e-6, 1.0 - 1e-6), target[mask]
    )


def signal_loss(
    predictions: Mapping[str, Any], targets: np.ndarray, usable: np.ndarray, heads: Sequence[str]
) -> dict[str, Any]:
    """Per head, the mean squared error over the usable rows (a zero tensor where none is)."""
    import torch

    out: dict[str, Any] = {}
    for j, head in enumerate(heads):
        pred = predictions[head].reshape(-1).float()
        mask = torch.from_numpy(usable[:, j]).to(pred.device)
        if not bool(mask.any()):
            out[head] = pred.sum() * 0.0
            continue
        target = torch.from_numpy(targets[:, j]).to(pred.device)
        out[head] = ((pred[mask] - target[mask]) ** 2).mean()
    return out


__all__ = [
    "ClickTargets",
    "SignalTargets",
    "click_loss",
    "click_targets",
    "document_sources",
    "judged_documents",
    "parse_heads",
    "parse_loss_weights",
    "signal_loss",
    "signal_targets",
]
