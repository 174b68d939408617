"""The tests behind alert rules: one-sided bounds on ΔMSE, regression p-values, Benjamini–Hochberg.

A mean of squared errors over n labeled pairs has standard error std(r²)/√n. A ratio to a
baseline that carries its own standard error gets the delta-method error of a ratio. Rules fire
on the bound, not on the point value, so a noisy small window does not page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["DeltaBound", "benjamini_hochberg", "delta_pct_bounds", "mean_se", "quantile_lower_bound", "regression_pvalue"]

_NORMAL = NormalDist()


def mean_se(m2: float | None, n: int) -> float | None:
    """Standard error of a mean from its centred sum of squares (sample variance / n)."""
    if m2 is None or n < 2:
        return None
    return math.sqrt(max(m2, 0.0) / (n - 1) / n)


@dataclass(frozen=True)
class DeltaBound:
    delta_pct: float  # (mse / baseline − 1) · 100
    low: float  # one-sided lower bound of delta_pct at the confidence
    high: float


def delta_pct_bounds(mse: float, se: float | None, base: float, base_se: float | None,
                     confidence: float) -> DeltaBound | None:
    """One-sided bounds of the ΔMSE percentage (delta method on the ratio mse/base)."""
    if base <= 0 or not math.isfinite(base):
        return None
    ratio = mse / base
    rel = 0.0
    if mse > 0 and se:
        rel += (se / mse) ** 2
    if base_se:
        rel += (base_se / base) ** 2
    z = _NORMAL.inv_cdf(confidence)
    spread = ratio * math.sqrt(rel) * z
    return DeltaBound((ratio - 1) * 100, (ratio - spread - 1) * 100, (ratio + spread - 1) * 100)


def regression_pvalue(mse: float, se: float | None, base: float, base_se: float | None,
                      margin_pct: float) -> float:
    """p-value of H0: mse ≤ base · (1 + margin) against mse larger (one-sided z-test)."""
    bound = base * (1 + margin_pct / 100)
    var = (se or 0.0) ** 2 + ((1 + margin_pct / 100) * (base_se or 0.0)) ** 2
    if var <= 0:
        return 0.0 if mse > bound else 1.0
    return 1.0 - _NORMAL.cdf((mse - bound) / math.sqrt(var))


def benjamini_hochberg(pvalues: np.ndarray | list[float], q: float) -> np.ndarray:
    """Which hypotheses are discoveries at false-discovery rate `q` (step-up procedure)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    passed = p[order] <= q * np.arange(1, m + 1) / m
    found = np.zeros(m, dtype=bool)
    if passed.any():
        k = int(np.flatnonzero(passed).max())
        found[order[: k + 1]] = True
    return found


def quantile_lower_bound(n: int, q: float, confidence: float) -> float:
    """The rank (as a fraction of n) whose order statistic is a one-sided lower confidence
    bound of the q-quantile (normal approximation to the binomial count below it)."""
    z = _NORMAL.inv_cdf(confidence)
    return max(q - z * math.sqrt(q * (1 - q) / max(n, 1)), 0.0)
