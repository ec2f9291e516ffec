"""Fitting a blend on logged features of judged queries: linear (coordinate ascent on NDCG)
or LambdaMART (LightGBM ``lambdarank``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from reranker.blend.blends import LambdaMartBlend, LinearBlend, lightgbm_module
from reranker.blend.features import RELEVANCE, FloatArray, IntArray, check_names, sanitize
from reranker.errors import ConfigError

if TYPE_CHECKING:
    pass

STEPS = (0.002, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


#: Defaults of :func:`fit_lambdamart`; ``params`` entries override them.
LAMBDAMART_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "learning_rate": 0.05,
    "num_leaves": 15,
    "max_depth": 6,
    "min_data_in_leaf": 20,
    "min_sum_hessian_in_leaf": 1e-3,
    "lambda_l2": 1.0,
    "feature_pre_filter": False,
    "seed": 13,
    "deterministic": True,
    "force_col_wise": True,
    "num_threads": 1,
    "verbose": -1,
}


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------


def group_sizes(query_ids: Sequence[Any]) -> IntArray:
    """Sizes of runs of equal consecutive query ids (rows must be grouped by query)."""
    sizes: list[int] = []
    seen: set[Any] = set()
    previous: Any = object()
    for qid in query_ids:
        if sizes and qid == previous:
            sizes[-1] += 1
            continue
        if qid in seen:
            raise ValueError(f"rows of query {qid!r} are not contiguous")
        seen.add(qid)
        sizes.append(1)
        previous = qid
    return np.array(sizes, dtype=np.int64)


def check_groups(n: int, groups: npt.ArrayLike) -> IntArray:
    g = np.asarray(groups, dtype=np.int64).reshape(-1)
    if (g <= 0).any() or int(g.sum()) != n:
        raise ValueError(f"group sizes must be positive and sum to the {n} rows")
    return g


class Padded:
    """Rows grouped by query as a padded (G, L, d) tensor, for fast vectorised NDCG."""

    def __init__(self, x: FloatArray, y: FloatArray, groups: IntArray, k: int) -> None:
        n_groups, width = len(groups), int(groups.max()) if len(groups) else 0
        starts = np.concatenate([[0], np.cumsum(groups)[:-1]]).astype(np.int64)
        self.mask = np.arange(width)[None, :] < groups[:, None]
        rows = np.where(self.mask, starts[:, None] + np.arange(width)[None, :], 0)
        self.x = np.where(self.mask[..., None], x[rows], 0.0)
        self.gain = np.where(self.mask, np.exp2(y[rows]) - 1.0, 0.0)
        self.k = k
        self.discount = 1.0 / np.log2(np.arange(2, min(k, width) + 2))
        ideal = -np.sort(-self.gain, axis=1)[:, : len(self.discount)]
        self.idcg = ideal @ self.discount
        self.valid = self.idcg > 0
        self.n_groups = n_groups

    def ndcg(self, scores: FloatArray) -> float:
        """Mean NDCG@k over groups with at least one relevant row; ties keep row order."""
        if not self.valid.any():
            return 0.0
        s = np.where(self.mask, scores, -np.inf)
        order = np.argsort(-s, axis=1, kind="stable")[:, : len(self.discount)]
        gains = np.take_along_axis(self.gain, order, axis=1)
        dcg = gains @ self.discount
        return float(np.mean(dcg[self.valid] / self.idcg[self.valid]))

    def linear_scores(self, w: FloatArray) -> FloatArray:
        return cast(FloatArray, self.x @ w)


def ndcg_at_k(
    scores: npt.ArrayLike, labels: npt.ArrayLike, groups: npt.ArrayLike, k: int = 10
) -> float:
    """Mean NDCG@k (gain 2^label − 1, log2 discount) over the groups that have a relevant row.

    Rows are grouped by query in consecutive runs of the given sizes; ties keep row order.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    g = check_groups(len(s), groups)
    if len(y) != len(s):
        raise ValueError("scores and labels differ in length")
    if len(s) == 0:
        return 0.0
    padded = Padded(s[:, None], y, g, k)
    return padded.ndcg(padded.x[..., 0])


def fit_linear(
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    groups: npt.ArrayLike,
    names: Sequence[str],
    *,
    k: int = 10,
    max_passes: int = 25,
    restarts: int = 2,
    seed: int = 13,
) -> LinearBlend:
    """Weights that maximise mean NDCG@k on the training groups, by coordinate ascent
    (Metzler & Croft 2007).

    Columns are standardised first, so step sizes mean the same for every feature. Starts from
    relevance only (when ``relevance`` is a feature) plus ``restarts`` seeded random starts;
    each pass visits the coordinates in a seeded random order and, for each, keeps the best of
    ``w_j ± step`` over a fixed step grid if it raises NDCG. Stops when a pass gains nothing.
    The weights are mapped back to raw feature scale and L1-normalised (ranking is invariant to
    positive scaling and to the bias, which is 0). Deterministic for a given seed.
    """
    names = tuple(names)
    check_names(names)
    x = np.asarray(X, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] != labels.shape[0]:
        raise ValueError(f"X must be (n, {len(names)}) with one label per row")
    g = check_groups(x.shape[0], groups)
    x = sanitize(x, len(names))
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    padded = Padded((x - mean) / std, labels, g, k)
    rng = np.random.default_rng(seed)
    d = len(names)

    starts: list[FloatArray] = []
    if RELEVANCE in names:
        start = np.zeros(d)
        start[names.index(RELEVANCE)] = 1.0
        starts.append(start)
    else:
        starts.append(np.ones(d) / d)
    for _ in range(restarts):
        start = rng.uniform(-1.0, 1.0, size=d)
        starts.append(start / np.abs(start).sum())

    best_w, best_score = starts[0], -1.0
    for start in starts:
        w = start.copy()
        score = padded.ndcg(padded.linear_scores(w))
        for _ in range(max_passes):
            improved = False
            for j in rng.permutation(d):
                for step in STEPS:
                    for sign in (1.0, -1.0):
                        trial = w.copy()
                        trial[j] += sign * step
                        if not np.any(trial):
                            continue
                        value = padded.ndcg(padded.linear_scores(trial))
                        if value > score + 1e-12:
                            w, score, improved = trial, value, True
            if not improved:
                break
        if score > best_score + 1e-12:
            best_w, best_score = w, score

    raw = best_w / std
    total = float(np.abs(raw).sum())
    if total == 0 or not math.isfinite(total):  # cannot happen with a non-zero start
        raw, total = np.ones(d), float(d)
    raw = raw / total
    return LinearBlend(
        weights={name: float(v) for name, v in zip(names, raw, strict=True)},
        bias=0.0,
        feature_names=names,
    )


def fit_lambdamart(
    X_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    groups_train: npt.ArrayLike,
    X_dev: npt.ArrayLike | None,
    y_dev: npt.ArrayLike | None,
    groups_dev: npt.ArrayLike | None,
    names: Sequence[str],
    params: Mapping[str, Any] | None = None,
    *,
    num_boost_round: int = 500,
    early_stopping_rounds: int = 50,
) -> LambdaMartBlend:
    """LightGBM LambdaMART (``lambdarank``) with early stopping on dev NDCG@10.

    Labels must be non-negative integer grades (ConfigError otherwise). Small trees, seeded,
    ``deterministic=True``, one thread (see :data:`LAMBDAMART_PARAMS`). Without a dev set it
    trains ``num_boost_round`` rounds. The returned booster holds only the best iteration.
    """
    lgb = lightgbm_module()
    names = tuple(names)
    check_names(names)
    x_train, labels_train, g_train = ranking_set(X_train, y_train, groups_train, names, "train")
    merged = {**LAMBDAMART_PARAMS, **(params or {})}
    train = lgb.Dataset(x_train, label=labels_train, group=g_train, feature_name=list(names))
    valid_sets: list[Any] = []
    callbacks: list[Any] = []
    if X_dev is not None:
        if y_dev is None or groups_dev is None:
            raise ValueError("a dev set needs X, y and groups")
        x_dev, labels_dev, g_dev = ranking_set(X_dev, y_dev, groups_dev, names, "dev")
        valid_sets.append(lgb.Dataset(x_dev, label=labels_dev, group=g_dev, reference=train))
        callbacks.append(
            lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False)
        )
    try:
        booster = lgb.train(
            merged,
            train,
            num_boost_round=num_boost_round,
            valid_sets=valid_sets,
            valid_names=["dev"] * len(valid_sets),
            callbacks=callbacks,
        )
    except lgb.basic.LightGBMError as exc:
        raise ConfigError(f"LightGBM refused the training set: {exc}") from exc
    best = booster.best_iteration if booster.best_iteration > 0 else -1
    trimmed = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return LambdaMartBlend(trimmed, names)


def ranking_set(
    X: npt.ArrayLike, y: npt.ArrayLike, groups: npt.ArrayLike, names: tuple[str, ...], what: str
) -> tuple[FloatArray, IntArray, IntArray]:
    x = np.asarray(X, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] != labels.shape[0]:
        raise ValueError(f"{what}: X must be (n, {len(names)}) with one label per row")
    if x.shape[0] == 0:
        raise ConfigError(f"{what}: no rows to learn from")
    if not np.all(np.isfinite(labels)) or (labels < 0).any() or (labels % 1 != 0).any():
        raise ConfigError(f"{what}: labels must be non-negative integer grades")
    g = check_groups(x.shape[0], groups)
    return sanitize(x, len(names)), labels.astype(np.int64), g
