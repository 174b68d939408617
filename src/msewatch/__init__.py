"""msewatch: measure and guard regression models by Mean Squared Error."""

from typing import TYPE_CHECKING, Any

from msewatch.metrics import ErrorStats, QuantileSketch, regression_metrics

if TYPE_CHECKING:
    from msewatch.client import Client

__version__ = "0.1.0"
__all__ = ["Client", "ErrorStats", "QuantileSketch", "__version__", "regression_metrics"]


def __getattr__(name: str) -> Any:
    # the SDK pulls in httpx: imported on first use, so `import msewatch` stays light
    if name == "Client":
        from msewatch.client import Client

        return Client
    raise AttributeError(f"module 'msewatch' has no attribute {name!r}")
