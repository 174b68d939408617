"""The engines of the conformance suites (tests/test_engines.py, tests/test_engines_drift.py).

`open_engine(name)` connects DuckDB, PySpark in local mode or ClickHouse's engine through chdb,
skipping locally when PySpark, Java or chdb is missing and failing under CI=true, where every
engine must run. `WARNING_FILTERS` is the modules' `pytestmark`.
"""

from __future__ import annotations

import atexit
import importlib.util
import math
import os
import shutil
from typing import Any

import pytest

from msewatch.engines import connect

ENGINES = ("duckdb", "pyspark", "chdb")
#: the agreement the suites ask of every engine (DESIGN.md section 4)
RTOL = 1e-9

# Py4J (PySpark's bridge to the JVM) leaves its sockets to the garbage collector, and PySpark 4.0
# passes a keyword pandas 3 deprecates: neither concerns msewatch
WARNING_FILTERS = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def _missing(what: list[tuple[str, bool]], run: str) -> None:
    absent = [name for name, ok in what if not ok]
    if absent:
        reason = f"{' and '.join(absent)} not installed (the {run} conformance run)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run it")
        pytest.skip(reason)


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


_SPARK: list[Any] = []  # one local SparkSession for the whole run: its JVM takes 5-20 s to start


def open_engine(name: str) -> Any:
    """An Ibis backend for one of ENGINES (a small local SparkSession for pyspark, shared by
    every suite of the run; each registers its tables under its own prefix)."""
    if name == "pyspark":
        _missing([("pyspark", _importable("pyspark")), ("java", shutil.which("java") is not None)], "PySpark")
        if not _SPARK:
            _SPARK.append(connect("pyspark://?spark.driver.memory=1g"))
            atexit.register(_SPARK[0]._session.stop)
        return _SPARK[0]
    if name == "chdb":
        _missing([("chdb", _importable("chdb")), ("clickhouse-connect", _importable("clickhouse_connect"))], "ClickHouse")
        return connect("chdb://")
    return connect("duckdb://")


def close_engine(con: Any) -> None:
    """Nothing to stop: the shared SparkSession stops when the run ends, the others need nothing."""


def assert_close(a: Any, b: Any, where: str, *, abs_tol: float = 1e-12) -> None:
    """Floats equal to RTOL relative (both present), anything else exactly."""
    if isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None, (where, a, b)
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=abs_tol), (where, a, b)
    else:
        assert a == b, (where, a, b)
