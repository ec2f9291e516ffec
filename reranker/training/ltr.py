"""Learning the blend: log every window candidate's features for judged queries, then fit.

Feature files are JSONL, one candidate per line, queries contiguous, in the first stage's
order::

    {"qid": "beer-38", "doc_id": "beer-71", "label": 2, "rank": 3,
     "features": {"relevance": 0.93, "first_stage": 0.71, "authority": 0.4, ...},
     "defaults": ["freshness"]}

``label`` is the qrels grade (0 when unjudged), ``rank`` the first-stage rank, ``features`` the
blend's inputs (see :func:`reranker.blend.features.build_feature_batch`) and ``defaults`` the
features
that fell back to their configured default for this document.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reranker.blend.blends import Blend, LinearBlend
from reranker.blend.features import build_feature_batch
from reranker.blend.fit import fit_lambdamart, fit_linear, group_sizes, ndcg_at_k
from reranker.blend.signals import SignalConfig, extract
from reranker.corpus import Qrels, held_out_ids
from reranker.errors import SourceError
from reranker.rerank.pipeline import Pipeline, with_predictions


def log_features(
    pipeline: Pipeline,
    queries: Mapping[str, str],
    qrels: Qrels,
    names: Sequence[str],
    signals: SignalConfig | None,
    vectors: Mapping[str, list[float]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Feature rows for every candidate in the pipeline's window, query by query."""
    if pipeline.scorer is None or pipeline.blend is not None:
        raise ValueError("log features with a scoring pipeline that has no blend")
    for query_id, text in queries.items():
        vector = (vectors or {}).get(query_id)
        result = pipeline.search(text, k=pipeline.window, vector=vector)
        if result.degraded:
            raise SourceError(f"query {query_id}: {result.degraded}")
        hits = sorted(result.hits, key=lambda h: h.first_stage_rank)
        signal_batch = with_predictions(
            extract([h.source for h in hits], signals) if signals and signals.signals else None,
            hits,
        )
        batch = build_feature_batch(
            [h.relevance if h.relevance is not None else np.nan for h in hits],
            [h.first_stage_score for h in hits],
            signal_batch,
            names,
        )
        judged = qrels.get(query_id, {})
        for i, hit in enumerate(hits):
            yield {
                "qid": query_id,
                "doc_id": hit.id,
                "label": int(judged.get(hit.id, 0)),
                "rank": hit.first_stage_rank,
                "features": dict(zip(names, batch.values[i].tolist(), strict=True)),
                "defaults": [
                    n for n, used in zip(names, batch.defaults_used[i], strict=True) if used
                ],
            }


@dataclass
class FeatureSet:
    """A feature file in matrix form: rows grouped by query, in file order."""

    names: tuple[str, ...]
    values: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    query_ids: list[str]

    def ndcg(self, scores: np.ndarray, k: int = 10) -> float:
        return ndcg_at_k(scores, self.labels, self.groups, k)

    def subset(self, query_ids: set[str]) -> FeatureSet:
        """The rows of the queries in ``query_ids``, in file order."""
        starts = np.concatenate([[0], np.cumsum(self.groups)[:-1]])
        keep = [i for i, qid in enumerate(self.query_ids) if qid in query_ids]
        rows = np.concatenate(
            [np.arange(starts[i], starts[i] + self.groups[i]) for i in keep]
        ).astype(int)
        return FeatureSet(
            names=self.names,
            values=self.values[rows],
            labels=self.labels[rows],
            groups=self.groups[keep],
            query_ids=[self.query_ids[i] for i in keep],
        )

    def split(self, fraction: float, seed: int = 13) -> tuple[FeatureSet, FeatureSet]:
        """``(rest, held_out)``: about ``fraction`` of the queries held out, chosen by a seeded
        hash of the query id (stable across runs and files), for a dataset without a dev split.

        The hash is salted apart from :func:`reranker.corpus.split_queries`: features of the
        queries that split held out (``--split dev`` of SciFact) must split again, not all
        fall on one side."""
        if not 0.0 < fraction < 1.0:
            raise SourceError(f"the held-out fraction must be between 0 and 1, got {fraction}")
        held = held_out_ids(self.query_ids, fraction, seed, salt="blend:")
        if not held or len(held) == len(self.query_ids):
            raise SourceError(
                f"holding out {fraction} of {len(self.query_ids)} queries leaves none"
            )
        return self.subset(set(self.query_ids) - held), self.subset(held)


def pool_features(sets: Sequence[tuple[str, FeatureSet]]) -> FeatureSet:
    """Several feature files as one (e.g. the held-out queries of two datasets); query ids
    get their file's label as a prefix (``label/qid``) so that two datasets' ids never merge."""
    if not sets:
        raise SourceError("no feature files to pool")
    names = sets[0][1].names
    for label, data in sets:
        if data.names != names:
            raise SourceError(f"{label}: features {list(data.names)} differ from {list(names)}")
    if len(sets) == 1:
        return sets[0][1]
    return FeatureSet(
        names=names,
        values=np.concatenate([data.values for _, data in sets]),
        labels=np.concatenate([data.labels for _, data in sets]),
        groups=np.concatenate([data.groups for _, data in sets]),
        query_ids=[f"{label}/{qid}" for label, data in sets for qid in data.query_ids],
    )


def read_features(path: Path, names: Sequence[str] | None = None) -> FeatureSet:
    """Load a feature file; every row must carry the same feature names (or ``names``)."""
    rows_qid: list[str] = []
    values: list[list[float]] = []
    labels: list[float] = []
    expected = tuple(names) if names else None
    if not Path(path).is_file():
        raise SourceError(f"feature file {path} does not exist")
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                features: dict[str, float] = row["features"]
                qid, label = str(row["qid"]), float(row["label"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise SourceError(f"{path}:{line_number}: not a feature row") from None
            if expected is None:
                expected = tuple(features)
            if tuple(features) != expected:
                raise SourceError(
                    f"{path}:{line_number}: features {list(features)} differ from {list(expected)}"
                )
            rows_qid.append(qid)
            values.append([float(features[n]) for n in expected])
            labels.append(label)
    if not values or expected is None:
        raise SourceError(f"{path} holds no feature rows")
    return FeatureSet(
        names=expected,
        values=np.asarray(values, dtype=np.float64),
        labels=np.asarray(labels, dtype=np.float64),
        groups=group_sizes(rows_qid),
        query_ids=list(dict.fromkeys(rows_qid)),
    )


def fit_blend(
    kind: str, train: FeatureSet, dev: FeatureSet | None, only: Sequence[str] | None = None
) -> Blend:
    """Fit a linear blend (coordinate ascent on NDCG@10) or LambdaMART (early-stopped on dev).

    ``only`` restricts the blend to those features (the others get weight 0, or are constant
    for LambdaMART, which then never splits on them); the blend still reads the whole feature
    set, so it loads wherever the full one does.
    """
    if dev is not None and dev.names != train.names:
        raise SourceError(f"dev features {dev.names} differ from train features {train.names}")
    keep = list(train.names) if not only else list(only)
    unknown = [name for name in keep if name not in train.names]
    if unknown:
        raise SourceError(f"unknown feature(s) {', '.join(unknown)}; known: {train.names}")
    columns = [train.names.index(name) for name in keep]
    if kind == "linear":
        fitted = fit_linear(train.values[:, columns], train.labels, train.groups, keep)
        return LinearBlend(weights=fitted.weights, bias=fitted.bias, feature_names=train.names)
    if kind == "lambdamart":
        dropped = [i for i in range(len(train.names)) if i not in columns]

        def masked(values: np.ndarray) -> np.ndarray:
            out = values.copy()
            out[:, dropped] = 0.0
            return out

        return fit_lambdamart(
            masked(train.values),
            train.labels.astype(int),
            train.groups,
            masked(dev.values) if dev else None,
            dev.labels.astype(int) if dev else None,
            dev.groups if dev else None,
            train.names,
        )
    raise SourceError(f"unknown blend kind {kind!r}; use linear or lambdamart")
