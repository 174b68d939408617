"""Query engines: where evaluation, drift and SLO queries run when the data is not in the store.

`connect(url)` turns an engine URL into an Ibis backend set up the way msewatch's queries need
(UTC session time zone, exact quantiles where the engine has them); `engine_source` reads a
predictions table and a labels table (or a lake written by `msewatch serve --sink`) from it, in
contract column names. The queries themselves are the same Ibis expressions the embedded store
runs, so they compute in the warehouse and only result rows come back.

    duckdb://                 in-memory DuckDB (with --lake or tables registered in Python)
    duckdb:///path/file.duckdb  a DuckDB file, read-only
    duckdb://?memory_limit=4GB  DuckDB settings as parameters (memory_limit, threads, temp_directory…):
                              past the memory limit DuckDB spills to disk instead of failing
    pyspark://                a local SparkSession (pyspark://?master=spark://host:7077, and
                              spark.* settings as query parameters, e.g. ?spark.executor.memory=8g)
    chdb://  chdb:///path     ClickHouse's engine in-process (chdb)
    clickhouse://user:pw@host:8123/db, bigquery://project/dataset, trino://…, snowflake://…
                              through Ibis's backends of those names
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import ibis
import ibis.expr.datatypes as dt_type
import ibis.expr.types as ir

from msewatch.errors import InputError
from msewatch.schema import ColumnMap

__all__ = [
    "APPROXIMATE_QUANTILES",
    "EngineTables",
    "connect",
    "contract_predictions",
    "current_labels",
    "engine_source",
    "engine_table",
    "engine_tables",
    "epoch_time",
    "finite",
    "lake_tables",
    "quantile_note",
    "read_file",
]

#: engines whose Ibis quantile is approximate, with the engine's documented error
APPROXIMATE_QUANTILES = {
    "bigquery": "BigQuery APPROX_QUANTILES: approximate quantile boundaries; BigQuery has no exact quantile aggregate",
    "trino": "Trino approx_percentile: a q-digest with a default rank accuracy of 0.01",
}

#: timestamps keep microseconds (ClickHouse's plain DateTime would drop the fraction)
UTC = dt_type.Timestamp(timezone="UTC", scale=6)

_DUCKDB_SETTINGS = ("memory_limit", "threads", "temp_directory", "max_temp_directory_size", "preserve_insertion_order")

#: what to install for a scheme: msewatch's extras pin versions Ibis supports (PySpark below 4.1)
_EXTRAS = {"pyspark": "'msewatch[spark]'", "spark": "'msewatch[spark]'", "clickhouse": "'msewatch[clickhouse]'",
           "chdb": "'msewatch[clickhouse]'", "bigquery": "'ibis-framework[bigquery]'", "trino": "'ibis-framework[trino]'",
           "snowflake": "'ibis-framework[snowflake]'"}


@dataclass(frozen=True)
class EngineTables:
    """Where the data is in the engine: two tables, or a lake directory, and column names."""

    predictions: str = "predictions"
    labels: str = "labels"
    lake: str | None = None
    columns: ColumnMap = field(default_factory=ColumnMap)
    #: files (or globs, or s3://… URLs) the engine reads itself, instead of the two tables
    predictions_files: str | None = None
    labels_files: str | None = None


def connect(url: str | Any) -> Any:
    """An Ibis backend for `url` (or for a SparkSession object), ready for msewatch's queries."""
    if not isinstance(url, str):
        if type(url).__name__ == "SparkSession":
            return _spark_backend(url)
        raise InputError(f"--engine: expected a URL or a SparkSession; got {type(url).__name__}.")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme:
        raise InputError(f"--engine {url!r}: expected a URL such as duckdb://, pyspark:// or chdb://.")
    try:
        if scheme == "duckdb":
            return _duckdb(parts)
        if scheme in ("pyspark", "spark"):
            return _spark(parts)
        if scheme == "chdb":
            return _chdb(url)
        if scheme == "clickhouse":
            return _exact_clickhouse(ibis.connect(url))
        return ibis.connect(url)
    except ModuleNotFoundError as exc:
        raise InputError(f"--engine {scheme}://: the {exc.name or scheme!r} package is not installed "
                         f"(pip install {_EXTRAS.get(scheme, exc.name or scheme)}).") from exc


def quantile_note(engine: Any) -> str | None:
    """Why this engine's squared-error quantiles are approximate, or None when they are exact."""
    return APPROXIMATE_QUANTILES.get(getattr(engine, "name", ""))


def _duckdb(parts: urllib.parse.SplitResult) -> Any:
    from msewatch.evaluate import DUCKDB_MACROS

    path = (parts.netloc + parts.path) or ":memory:"
    if path != ":memory:" and not os.path.exists(path):
        raise InputError(f"--engine duckdb://{path}: no such file.")
    engine = ibis.duckdb.connect(path, read_only=path != ":memory:")
    engine.raw_sql("SET TimeZone = 'UTC'")
    # settings as query parameters: duckdb://?memory_limit=4GB&threads=2&temp_directory=/scratch
    for key, value in urllib.parse.parse_qsl(parts.query):
        if key not in _DUCKDB_SETTINGS:
            raise InputError(f"--engine duckdb://…?{key}=: not a setting msewatch passes on; use one of "
                             f"{', '.join(_DUCKDB_SETTINGS)}.")
        engine.con.execute(f"SET {key} = ?", [value])
    if path == ":memory:":
        engine.raw_sql(DUCKDB_MACROS)
    else:  # a read-only file takes no macro: define it in a temporary schema
        engine.raw_sql(DUCKDB_MACROS.replace("MACRO msewatch_label_key", "TEMP MACRO msewatch_label_key"))
    return engine


def _spark(parts: urllib.parse.SplitResult) -> Any:
    from pyspark.sql import SparkSession

    query = dict(urllib.parse.parse_qsl(parts.query))
    master = query.pop("master", None) or (f"spark://{parts.netloc}" if parts.netloc else "local[*]")
    builder = SparkSession.builder.appName("msewatch").master(master)
    builder = builder.config("spark.sql.session.timeZone", "UTC").config("spark.ui.showConsoleProgress", "false")
    if master.startswith("local"):
        builder = builder.config("spark.ui.enabled", "false").config(
            "spark.sql.shuffle.partitions", str(2 * (os.cpu_count() or 1))
        )
    for key, value in query.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return _spark_backend(session)


def _spark_backend(session: Any) -> Any:
    session.conf.set("spark.sql.session.timeZone", "UTC")
    return ibis.pyspark.connect(session)


def _chdb(url: str) -> Any:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=url)
    return _exact_clickhouse(ibis.clickhouse.from_connection(client))


def _exact_clickhouse(engine: Any) -> Any:
    """ClickHouse with exact quantiles: Ibis compiles them to `quantile`, a sampling estimate;
    `quantileExactInclusive` interpolates like NumPy's default and DuckDB's quantile_cont."""
    engine.compiler = _exact_compiler(type(engine.compiler))()
    return engine


_COMPILERS: dict[type, type] = {}


def _exact_compiler(base: type) -> type:
    if base not in _COMPILERS:

        class ExactQuantiles(base):  # type: ignore[valid-type, misc]
            def visit_Quantile(self, op: Any, *, arg: Any, quantile: Any, where: Any) -> Any:
                return self._visit_quantile("quantileExactInclusive", arg, quantile, where)

            def visit_MultiQuantile(self, op: Any, *, arg: Any, quantile: Any, where: Any) -> Any:
                return self._visit_quantile("quantilesExactInclusive", arg, quantile, where)

        _COMPILERS[base] = ExactQuantiles
    return _COMPILERS[base]


def engine_tables(engine: Any, where: EngineTables) -> tuple[ir.Table, ir.Table]:
    """Predictions (contract names, `_ok` marking valid rows) and one current label per id."""
    if where.lake:
        predictions, labels = lake_tables(engine, where.lake)
    elif where.predictions_files and where.labels_files:
        predictions, labels = read_file(engine, where.predictions_files), read_file(engine, where.labels_files)
    else:
        predictions, labels = engine_table(engine, where.predictions, "predictions"), engine_table(engine, where.labels, "labels")
    return contract_predictions(predictions, where.columns, engine.name), current_labels(labels, where.columns, engine.name)


def engine_source(engine: Any, where: EngineTables) -> Any:
    """An `EvalInput` over the engine's tables, for `evaluate`."""
    from msewatch.sources import EvalInput

    predictions, labels = engine_tables(engine, where)
    return EvalInput(engine, predictions, labels)


def engine_table(engine: Any, name: str, what: str) -> ir.Table:
    *database, table = name.split(".")
    try:
        return engine.table(table, database=tuple(database) if len(database) > 1 else (database[0] if database else None))
    except Exception as exc:  # each backend has its own "not found" exception
        raise InputError(f"--engine: cannot read the {what} table {name!r} ({str(exc).splitlines()[0][:200]}).") from exc


def read_file(engine: Any, path: str) -> ir.Table:
    """A Parquet or CSV file (glob, directory or URL) read by the engine itself, unvalidated:
    the rows of a trusted pipeline; null or non-finite values are left out, not reported by row."""
    if "://" not in path and not any(ch in path for ch in "*?[") and not os.path.exists(path):
        raise InputError(f"{path}: no such file.")
    csv = path.lower().endswith((".csv", ".csv.gz"))
    try:
        if engine.name == "clickhouse":
            return _clickhouse_files(engine, path, "CSVWithNames" if csv else "Parquet")
        return engine.read_csv(path) if csv else engine.read_parquet(path)
    except Exception as exc:
        raise InputError(f"{path}: the engine cannot read it ({str(exc).splitlines()[0][:200]}).") from exc


def _clickhouse_files(engine: Any, pattern: str, fmt: str = "Parquet") -> ir.Table:
    """Files read in place by ClickHouse's file() table function (Ibis's read_parquet copies
    them into a table through the client, one file at a time); globs include `**`. Hive
    partition columns are not added: every lake file carries its own columns."""
    quoted = pattern.replace("\\", "\\\\").replace("'", "\\'")
    return engine.sql(f"SELECT * FROM file('{quoted}', {fmt}) SETTINGS use_hive_partitioning = 0")


def lake_tables(engine: Any, lake: str) -> tuple[ir.Table, ir.Table]:
    """The lake's tables: every file is self-contained, so the Hive directories only prune."""
    out = []
    for name in ("predictions", "labels"):
        root = os.path.join(lake, name)
        if "://" not in lake and not os.path.isdir(root):
            raise InputError(f"--lake {lake}: no {name}/ directory; is it a lake written by `msewatch serve --sink`?")
        if engine.name == "pyspark":  # no partition discovery: `model` is in the files already
            out.append(engine.read_parquet(root, recursiveFileLookup="true", mergeSchema="true"))
        elif engine.name == "duckdb":
            out.append(engine.read_parquet(f"{root}/**/*.parquet", hive_partitioning=False, union_by_name=True))
        elif engine.name == "clickhouse":
            out.append(_clickhouse_files(engine, f"{root}/**/*.parquet"))
        else:
            out.append(engine.read_parquet(f"{root}/**/*.parquet"))
    return out[0], out[1]


def contract_predictions(table: ir.Table, columns: ColumnMap, dialect: str) -> ir.Table:
    names = columns.source_names()
    _require(table, [names[c] for c in ("prediction_id", "ts", "model", "version", "y_pred")], "predictions")
    rename = {c: names[c] for c in ("prediction_id", "ts", "model", "version", "y_pred")}
    drop = [c for c in ("source", "ingested_at", "day") if c in table.columns and c not in rename.values()]
    t = table.drop(*drop).rename(rename) if drop else table.rename(rename)
    ts = t.ts.cast(UTC) if t.ts.type().is_timestamp() else epoch_time(t.ts.cast("float64"), dialect)
    t = t.mutate(ts=ts, y_pred=t.y_pred.cast("float64"), prediction_id=t.prediction_id.cast("string"))
    ok = t.prediction_id.notnull() & t.ts.notnull() & t.model.notnull() & t.version.notnull() & finite(t.y_pred)
    return t.mutate(_ok=ok)


def current_labels(table: ir.Table, columns: ColumnMap, dialect: str) -> ir.Table:
    """The label that counts: the latest `label_ts` (none = oldest), then the latest revision
    (or arrival), as the store decides; rows with a non-finite y_true are not labels."""
    from msewatch.evaluate import epoch_seconds, latest_labels

    names = columns.source_names()
    _require(table, [names["prediction_id"], names["y_true"]], "labels")
    rename = {"prediction_id": names["prediction_id"], "y_true": names["y_true"]}
    if names["label_ts"] in table.columns:
        rename["label_ts"] = names["label_ts"]
    t = table.rename(rename)
    t = t.filter(t.prediction_id.notnull() & finite(t.y_true.cast("float64")))
    if "revision" in t.columns:
        order = t.revision.cast("int64")
    elif "ingested_at" in t.columns:
        order = t.ingested_at.cast(UTC).epoch_seconds().cast("int64")
    else:
        order = ibis.literal(0, "int64")
    cols: dict[str, Any] = {"prediction_id": t.prediction_id.cast("string"), "y_true": t.y_true.cast("float64"), "_row": order}
    if "label_ts" in t.columns:
        cols["label_ts"] = t.label_ts.cast(UTC)
    # when the label became known, for SLO label freshness: its time, else its arrival
    known = [cols["label_ts"]] if "label_ts" in cols else []
    if "ingested_at" in t.columns:
        known.append(t.ingested_at.cast(UTC))
    if known:
        cols["_label_time"] = epoch_seconds(ibis.coalesce(*known) if len(known) > 1 else known[0], dialect)
    return latest_labels(t.select(**cols), dialect=dialect)


def epoch_time(seconds: ir.FloatingValue, dialect: str) -> ir.TimestampValue:
    """Epoch seconds, fraction included, as a UTC time. A cast on DuckDB and Spark; ClickHouse
    refuses Ibis's float cast, and Ibis's `as_timestamp` takes integers in units that vary by engine."""
    if dialect == "clickhouse":
        return _clickhouse_from_micros((seconds * 1e6).round().cast("int64"), "UTC")
    return seconds.cast(UTC)


@ibis.udf.scalar.builtin(name="fromUnixTimestamp64Micro")
def _clickhouse_from_micros(micros: int, tz: str) -> dt_type.Timestamp(timezone="UTC", scale=6):  # type: ignore[empty-body]
    """ClickHouse's DateTime64(6) of microseconds since the epoch."""


def finite(x: ir.FloatingValue) -> ir.BooleanValue:
    """Not null, NaN or ±inf: x − x is 0 exactly for finite x, NaN otherwise (Ibis's isinf
    compiles to a constant false on PySpark)."""
    return x.notnull() & ((x - x) == 0)


def _require(table: ir.Table, needed: list[str], what: str) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InputError(
            f"--engine: the {what} table has no column {', '.join(map(repr, missing))}; "
            f"found {', '.join(map(repr, table.columns))} (map names with [engine.columns] or --*-col)."
        )
