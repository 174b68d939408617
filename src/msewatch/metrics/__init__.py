"""Pure error metrics: batch functions, mergeable `ErrorStats`, and a quantile sketch.

NumPy only, no I/O; every other msewatch layer builds on this one.
"""

from msewatch.metrics._functions import (
    EPSILON,
    METRIC_NAMES,
    QUANTILES,
    error_variance,
    huber_error,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_bias_error,
    mean_squared_error,
    r2_score,
    regression_metrics,
    root_mean_squared_error,
    squared_error_quantiles,
)
from msewatch.metrics._sketch import QuantileSketch
from msewatch.metrics._stats import ErrorStats

__all__ = [
    "EPSILON",
    "METRIC_NAMES",
    "QUANTILES",
    "ErrorStats",
    "QuantileSketch",
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
