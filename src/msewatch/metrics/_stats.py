"""Mergeable, revertible sufficient statistics of regression errors.

`ErrorStats` keeps sums that combine by addition, so time buckets, shards and replicas merge
exactly, and a corrected label (backfill) is a `revert` of the old pair plus an `update` with the
new one. Means and second moments are kept with the parallel formulas of Chan et al. rather than
raw power sums, so a target around 1e9 with unit variance keeps its digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from msewatch.metrics._functions import EPSILON, as_pair

__all__ = ["ErrorStats"]

_EPS = float(np.finfo(np.float64).eps)


@dataclass
class ErrorStats:
    """Running error statistics of labeled predictions.

    Examples
    --------
    >>> s = ErrorStats()
    >>> s.update([3.0, -0.5, 2.0, 7.0], [2.5, 0.0, 2.0, 8.0])
    >>> s.mse
    0.375
    >>> other = ErrorStats.from_arrays([1.0], [2.0])
    >>> s.merge(other).n
    5
    >>> s.merge(other).revert(other).mse
    0.375
    """

    huber_delta: float = 1.0
    n: int = 0
    sum_sq: float = 0.0  # Σ r²
    sum_abs: float = 0.0  # Σ |r|
    sum_ape: float = 0.0  # Σ |r| / max(|y|, ε)
    sum_huber: float = 0.0  # Σ huber(r)
    mean_r: float = 0.0
    m2_r: float = 0.0  # Σ (r − mean_r)²
    mean_y: float = 0.0
    m2_y: float = 0.0  # Σ (y − mean_y)²

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls, y_true: ArrayLike, y_pred: ArrayLike, *, huber_delta: float = 1.0
    ) -> ErrorStats:
        """Statistics of one batch of labeled predictions."""
        stats = cls(huber_delta=huber_delta)
        stats.update(y_true, y_pred)
        return stats

    def update(self, y_true: ArrayLike, y_pred: ArrayLike) -> None:
        """Add one pair (scalars) or a batch (arrays) of labeled predictions."""
        yt, yp = as_pair(y_true, y_pred)
        if yt.size:
            self._absorb(self._batch(yt, yp))

    def _batch(self, yt: np.ndarray, yp: np.ndarray) -> ErrorStats:
        r = yp - yt
        abs_r = np.abs(r)
        delta = self.huber_delta
        huber = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))
        mean_r, m2_r = _moments(r)
        mean_y, m2_y = _moments(yt)
        return ErrorStats(
            huber_delta=delta,
            n=int(yt.size),
            sum_sq=float(np.dot(r, r)),
            sum_abs=float(abs_r.sum()),
            sum_ape=float((abs_r / np.maximum(np.abs(yt), EPSILON)).sum()),
            sum_huber=float(huber.sum()),
            mean_r=mean_r,
            m2_r=m2_r,
            mean_y=mean_y,
            m2_y=m2_y,
        )

    # -- algebra ----------------------------------------------------------------------------
    def merge(self, other: ErrorStats) -> ErrorStats:
        """Statistics of both streams together; neither operand changes."""
        out = self.copy()
        out._absorb(other)
        return out

    def revert(self, other: ErrorStats) -> ErrorStats:
        """Statistics of this stream with `other` (a part of it) taken out."""
        self._check_compatible(other)
        if other.n > self.n:
            raise ValueError(f"Cannot revert {other.n} pairs from statistics of {self.n}.")
        n = self.n - other.n
        if n == 0:
            return ErrorStats(huber_delta=self.huber_delta)
        mean_r, m2_r = _unmerge(self.n, self.mean_r, self.m2_r, other.n, other.mean_r, other.m2_r)
        mean_y, m2_y = _unmerge(self.n, self.mean_y, self.m2_y, other.n, other.mean_y, other.m2_y)
        return ErrorStats(
            huber_delta=self.huber_delta,
            n=n,
            sum_sq=max(self.sum_sq - other.sum_sq, 0.0),
            sum_abs=max(self.sum_abs - other.sum_abs, 0.0),
            sum_ape=max(self.sum_ape - other.sum_ape, 0.0),
            sum_huber=max(self.sum_huber - other.sum_huber, 0.0),
            mean_r=mean_r,
            m2_r=m2_r,
            mean_y=mean_y,
            m2_y=m2_y,
        )

    def __add__(self, other: ErrorStats) -> ErrorStats:
        return self.merge(other)

    def __sub__(self, other: ErrorStats) -> ErrorStats:
        return self.revert(other)

    def _absorb(self, other: ErrorStats) -> None:
        self._check_compatible(other)
        if other.n == 0:
            return
        if self.n == 0:
            for f in fields(self):
                setattr(self, f.name, getattr(other, f.name))
            return
        self.mean_r, self.m2_r = _merge(self.n, self.mean_r, self.m2_r, other.n, other.mean_r, other.m2_r)
        self.mean_y, self.m2_y = _merge(self.n, self.mean_y, self.m2_y, other.n, other.mean_y, other.m2_y)
        self.n += other.n
        self.sum_sq += other.sum_sq
        self.sum_abs += other.sum_abs
        self.sum_ape += other.sum_ape
        self.sum_huber += other.sum_huber

    def _check_compatible(self, other: ErrorStats) -> None:
        if self.huber_delta != other.huber_delta:
            raise ValueError(
                f"Cannot combine statistics with huber_delta {self.huber_delta} "
                f"and {other.huber_delta}."
            )

    def copy(self) -> ErrorStats:
        return ErrorStats(**{f.name: getattr(self, f.name) for f in fields(self)})

    # -- metrics (None when no labeled pair) ------------------------------------------------
    @property
    def mse(self) -> float | None:
        return self.sum_sq / self.n if self.n else None

    @property
    def rmse(self) -> float | None:
        mse = self.mse
        return math.sqrt(mse) if mse is not None else None

    @property
    def mae(self) -> float | None:
        return self.sum_abs / self.n if self.n else None

    @property
    def bias(self) -> float | None:
        """Mean residual (y_pred − y_true): positive means over-prediction."""
        return self.mean_r if self.n else None

    @property
    def error_variance(self) -> float | None:
        """mse − bias², computed from centred moments to avoid cancellation."""
        return self.m2_r / self.n if self.n else None

    @property
    def r2(self) -> float | None:
        """1 − Σr²/Σ(y−ȳ)²; None when the targets are constant (denominator 0)."""
        if not self.n or self.m2_y <= 0.0:
            return None
        return 1.0 - self.sum_sq / self.m2_y

    @property
    def mape(self) -> float | None:
        return self.sum_ape / self.n if self.n else None

    @property
    def huber(self) -> float | None:
        return self.sum_huber / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        """Every metric this state determines, keyed by its contract name."""
        return {
            "n_labeled": self.n,
            "mse": self.mse,
            "rmse": self.rmse,
            "mae": self.mae,
            "bias": self.bias,
            "error_variance": self.error_variance,
            "r2": self.r2,
            "mape": self.mape,
            "huber": self.huber,
        }


def _moments(x: np.ndarray) -> tuple[float, float]:
    """Mean and centred sum of squares; exact zero spread for a constant batch."""
    first = x[0]
    if np.all(x == first):
        return float(first), 0.0
    mean = float(x.mean())
    d = x - mean
    return mean, float(np.dot(d, d))


def _merge(na: int, ma: float, m2a: float, nb: int, mb: float, m2b: float) -> tuple[float, float]:
    n = na + nb
    delta = mb - ma
    if delta == 0.0:
        return ma, m2a + m2b
    mean = ma + delta * (nb / n)
    return mean, m2a + m2b + delta * delta * (na * nb / n)


def _unmerge(nc: int, mc: float, m2c: float, nb: int, mb: float, m2b: float) -> tuple[float, float]:
    na = nc - nb
    # the inverse of _merge's mean update, relative to mc: exact when B's mean is the combined
    # mean (constant targets), and no cancellation of nc·mc against nb·mb
    d = mb - mc
    if d == 0.0:
        mean_a, cross = mc, 0.0
    else:
        mean_a = mc - d * (nb / na)
        delta = d * (nc / na)  # mb − mean_a
        cross = delta * delta * (na * nb / nc)
    m2a = m2c - m2b - cross
    # What the subtraction leaves can be pure rounding residue of the larger stream: its sums
    # carry about nc·ε relative error, and the rounding of mc (ε·|mc|, even when d rounds to 0)
    # enters `cross` amplified by nc/na. A spread below that is not resolvable; keep it at 0, or
    # a constant (or single-pair) remainder gets a spread of noise and r2 a huge meaningless
    # value instead of None.
    mean_noise = (abs(d) + _EPS * abs(mc)) * abs(mc) * (nc * nb / na)
    noise = 4.0 * nc * _EPS * (m2c + m2b + cross + mean_noise)
    if na == 1 or m2a <= noise:
        return mean_a, 0.0
    return mean_a, m2a
