"""msewatch: measure and guard regression models by Mean Squared Error."""

from msewatch.metrics import ErrorStats, QuantileSketch, regression_metrics

__version__ = "0.1.0"
__all__ = ["ErrorStats", "QuantileSketch", "__version__", "regression_metrics"]
