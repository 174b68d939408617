"""A mergeable, revertible quantile sketch for squared errors (DDSketch).

Values are counted in logarithmic buckets of ratio γ = (1 + α)/(1 − α); every quantile it
returns is within relative error α of the order statistic of rank ⌊q·(n − 1)⌋ (Masson, Rim and
Lee, "DDSketch", VLDB 2019). For NumPy's linearly interpolated quantile, which lies between the
order statistics of ranks ⌊q·(n − 1)⌋ and ⌈q·(n − 1)⌉, the estimate is within
[x_lo·(1 − α), x_hi·(1 + α)]. Counts add on merge and subtract on revert, exactly, so the sketch
follows label corrections like `ErrorStats` does. Zero is counted apart (a perfect prediction).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["QuantileSketch"]

#: values at or below this count as zero; keeps log() finite for subnormals
_MIN_POSITIVE = 1e-300
_MAX_FLOAT = float(np.finfo(np.float64).max)


class QuantileSketch:
    """Streaming quantiles of non-negative values with a relative-error guarantee.

    Examples
    --------
    >>> s = QuantileSketch(relative_accuracy=0.01)
    >>> s.update([0.0, 1.0, 4.0, 9.0, 16.0])
    >>> abs(s.quantile(0.5) - 4.0) <= 0.01 * 4.0
    True
    """

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(
                f"relative_accuracy must be between 0 and 1 (exclusive); got {relative_accuracy!r}."
            )
        self.relative_accuracy = relative_accuracy
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._bins: Counter[int] = Counter()
        self.zero_count = 0

    @property
    def count(self) -> int:
        return self.zero_count + sum(self._bins.values())

    def update(self, values: ArrayLike) -> None:
        """Count one value or an array of values (non-negative and finite)."""
        x = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if x.size == 0:
            return
        if not np.all(np.isfinite(x)) or np.any(x < 0):
            raise ValueError("QuantileSketch takes finite, non-negative values only.")
        positive = x[x > _MIN_POSITIVE]
        self.zero_count += int(x.size - positive.size)
        if positive.size:
            keys, counts = np.unique(
                np.ceil(np.log(positive) / self._log_gamma).astype(np.int64), return_counts=True
            )
            self._bins.update(dict(zip(keys.tolist(), counts.tolist())))

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """A sketch of both streams; neither operand changes."""
        self._check_compatible(other)
        out = self.copy()
        out._bins.update(other._bins)
        out.zero_count += other.zero_count
        return out

    def revert(self, other: QuantileSketch) -> QuantileSketch:
        """This sketch with the values counted by `other` taken out."""
        self._check_compatible(other)
        out = self.copy()
        for key, n in other._bins.items():
            if out._bins.get(key, 0) < n:
                raise ValueError("Cannot revert values that this sketch never counted.")
            out._bins[key] -= n
            if out._bins[key] == 0:
                del out._bins[key]
        if out.zero_count < other.zero_count:
            raise ValueError("Cannot revert values that this sketch never counted.")
        out.zero_count -= other.zero_count
        return out

    def quantile(self, q: float) -> float | None:
        """Estimated q-quantile; None for an empty sketch."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1]; got {q!r}.")
        total = self.count
        if total == 0:
            return None
        rank = math.floor(q * (total - 1))
        if rank < self.zero_count:
            return 0.0
        seen = self.zero_count
        for key in sorted(self._bins):
            seen += self._bins[key]
            if seen > rank:
                return self._value(key)
        raise AssertionError("unreachable: rank below total count")  # pragma: no cover

    def _value(self, key: int) -> float:
        """The bucket's representative 2γᵏ/(γ + 1), as γᵏ⁻¹·2γ/(γ + 1): near the largest float
        γᵏ itself overflows while the representative may not (γᵏ⁻¹ is below every value of the
        bucket). A representative beyond the largest float is capped there, which is closer to
        every value of the bucket anyway."""
        try:
            value = self._gamma ** (key - 1) * (2.0 * self._gamma / (self._gamma + 1.0))
        except OverflowError:
            value = math.inf
        return min(value, _MAX_FLOAT)

    def copy(self) -> QuantileSketch:
        out = QuantileSketch(self.relative_accuracy)
        out._bins = Counter(self._bins)
        out.zero_count = self.zero_count
        return out

    def _check_compatible(self, other: QuantileSketch) -> None:
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                "Cannot combine sketches of relative accuracy "
                f"{self.relative_accuracy} and {other.relative_accuracy}."
            )
