"""Batch regression-error metrics on NumPy arrays.

Naming follows scikit-learn: `*_error` is lower-is-better, `*_score` higher-is-better.
Residuals are r = y_pred − y_true. An empty input gives None (no data), never 0 or NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "EPSILON",
    "METRIC_NAMES",
    "QUANTILES",
    "as_pair",
    "error_variance",
    "huber_error",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_bias_error",
    "mean_squared_error",
    "r2_score",
    "regression_metrics",
    "root_mean_squared_error",
    "squared_error_quantiles",
]

#: floor of |y_true| in MAPE, scikit-learn's choice
EPSILON = float(np.finfo(np.float64).eps)

#: squared-error quantiles reported by every evaluation, as (metric name, q)
QUANTILES: tuple[tuple[str, float], ...] = (
    ("p50_sq_err", 0.5),
    ("p90_sq_err", 0.9),
    ("p99_sq_err", 0.99),
)

#: the metric columns of every evaluation row, in contract order (DESIGN.md section 4)
METRIC_NAMES: tuple[str, ...] = (
    "n_predictions",
    "n_labeled",
    "label_coverage",
    "mse",
    "rmse",
    "mae",
    "bias",
    "error_variance",
    "r2",
    "mape",
    "huber",
    *(name for name, _ in QUANTILES),
)


def as_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a pair of 1-d float64 arrays of equal length, all finite."""
    yt = np.atleast_1d(np.asarray(y_true, dtype=np.float64))
    yp = np.atleast_1d(np.asarray(y_pred, dtype=np.float64))
    if yt.ndim != 1 or yp.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-d; got shapes {yt.shape} and {yp.shape}."
        )
    if yt.shape != yp.shape:
        raise ValueError(
            "Found input variables with inconsistent numbers of samples: "
            f"[{yt.size}, {yp.size}]."
        )
    for name, arr in (("y_true", yt), ("y_pred", yp)):
        finite = np.isfinite(arr)
        if not finite.all():
            index = int(np.argmin(finite))
            raise ValueError(f"{name} must be finite; got {arr[index]!r} at index {index}.")
    return yt, yp


def _residuals(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray] | None:
    yt, yp = as_pair(y_true, y_pred)
    if yt.size == 0:
        return None
    return yt, yp - yt


def mean_squared_error(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """Σr²/n.

    >>> mean_squared_error([3.0, -0.5, 2.0, 7.0], [2.5, 0.0, 2.0, 8.0])
    0.375
    """
    pair = _residuals(y_true, y_pred)
    if pair is None:
        return None
    _, r = pair
    return float(np.dot(r, r) / r.size)


def root_mean_squared_error(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """√mse, in the units of the target."""
    mse = mean_squared_error(y_true, y_pred)
    return math.sqrt(mse) if mse is not None else None


def mean_absolute_error(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """Σ|r|/n."""
    pair = _residuals(y_true, y_pred)
    return None if pair is None else float(np.abs(pair[1]).mean())


def mean_bias_error(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """Mean residual; positive means the model over-predicts."""
    pair = _residuals(y_true, y_pred)
    return None if pair is None else float(pair[1].mean())


def error_variance(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """Population variance of residuals (mse − bias², computed without cancellation)."""
    pair = _residuals(y_true, y_pred)
    return None if pair is None else float(np.var(pair[1]))


def r2_score(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """1 − Σr²/Σ(y−ȳ)²; None when every y_true is equal (the ratio is undefined)."""
    pair = _residuals(y_true, y_pred)
    if pair is None:
        return None
    yt, r = pair
    if np.all(yt == yt[0]):
        return None
    d = yt - yt.mean()
    ss = np.dot(d, d)
    if ss == 0.0:  # distinct targets whose spread underflows: the denominator is 0 all the same
        return None
    return float(1.0 - np.dot(r, r) / ss)


def mean_absolute_percentage_error(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """mean(|r| / max(|y_true|, ε)) as a fraction (not ×100), as scikit-learn defines it."""
    pair = _residuals(y_true, y_pred)
    if pair is None:
        return None
    yt, r = pair
    return float((np.abs(r) / np.maximum(np.abs(yt), EPSILON)).mean())


def huber_error(y_true: ArrayLike, y_pred: ArrayLike, *, delta: float = 1.0) -> float | None:
    """mean(½r² if |r| ≤ δ else δ(|r| − ½δ))."""
    if not delta > 0:
        raise ValueError(f"The huber delta must be a positive number; got {delta!r}.")
    pair = _residuals(y_true, y_pred)
    if pair is None:
        return None
    a = np.abs(pair[1])
    return float(np.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta)).mean())


def squared_error_quantiles(
    y_true: ArrayLike, y_pred: ArrayLike, qs: tuple[float, ...] = tuple(q for _, q in QUANTILES)
) -> list[float] | None:
    """Exact quantiles of r², with NumPy's default linear interpolation."""
    pair = _residuals(y_true, y_pred)
    if pair is None:
        return None
    r = pair[1]
    return [float(v) for v in np.quantile(r * r, qs)]


def regression_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, *, huber_delta: float = 1.0
) -> dict[str, Any]:
    """Every metric of an evaluation row for one group of labeled pairs.

    >>> m = regression_metrics([1.0, 2.0], [1.5, 2.0])
    >>> m["mse"], m["label_coverage"]
    (0.125, 1.0)
    """
    yt, yp = as_pair(y_true, y_pred)
    n = int(yt.size)
    quantiles = squared_error_quantiles(yt, yp)
    return {
        "n_predictions": n,
        "n_labeled": n,
        "label_coverage": 1.0 if n else None,
        "mse": mean_squared_error(yt, yp),
        "rmse": root_mean_squared_error(yt, yp),
        "mae": mean_absolute_error(yt, yp),
        "bias": mean_bias_error(yt, yp),
        "error_variance": error_variance(yt, yp),
        "r2": r2_score(yt, yp),
        "mape": mean_absolute_percentage_error(yt, yp),
        "huber": huber_error(yt, yp, delta=huber_delta),
        **{
            name: (quantiles[i] if quantiles is not None else None)
            for i, (name, _) in enumerate(QUANTILES)
        },
    }
