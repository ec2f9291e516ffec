"""Numeric helpers shared by the scorer and the blend."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def sigmoid(x: npt.ArrayLike) -> FloatArray:
    """Numerically stable logistic function (no overflow warnings for large |x|)."""
    v = np.asarray(x, dtype=np.float64)
    out = np.empty_like(v)
    pos = v >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-v[pos]))
    e = np.exp(v[~pos])
    out[~pos] = e / (1.0 + e)
    return out
