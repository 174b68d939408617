"""Windowed, rolling, cohort and version evaluation as one Ibis expression.

The engine (embedded DuckDB, or any Ibis backend) does all the work: join predictions to their
current labels, assign windows from epoch seconds (portable, unlike `bucket()`), group, and
aggregate every metric of DESIGN.md section 4 in one pass. Python only formats the result.

Windows are by prediction time `ts`, aligned to the UTC epoch. A rolling window of size S and
step P is emitted at every multiple of P; each prediction belongs to the S/P windows that
contain it.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ibis
import ibis.expr.datatypes as dt_type
import ibis.expr.operations as ops
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.compute as pc

from msewatch.errors import InputError
from msewatch.metrics import EPSILON, METRIC_NAMES, QUANTILES
from msewatch.schema import UTC

__all__ = [
    "DUCKDB_MACROS",
    "LATENCY_NAMES",
    "EvalSpec",
    "Evaluation",
    "evaluate",
    "evaluation_expr",
    "latest_labels",
    "run_evaluation",
]

LATENCY_NAMES = ("label_latency_p50_s", "label_latency_p90_s")
INTERNAL_COLUMNS = ("_rejected_predictions", "_rejected_labels")
_OUTPUT_ONLY = ("window_start", "window_end")  # columns an evaluation adds, not groupable


@dataclass(frozen=True)
class EvalSpec:
    """What to evaluate: windows, groups, time range and filters."""

    window: int | None = None  # tumbling window, seconds
    rolling: int | None = None  # rolling window size, seconds
    step: int | None = None  # rolling step, seconds
    by: tuple[str, ...] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    model: str | None = None
    version: str | None = None
    huber_delta: float = 1.0
    #: add mse_se, mae_se and bias_se: standard errors of the means (sample std / √n)
    standard_errors: bool = False

    def __post_init__(self) -> None:
        if self.window and self.rolling:
            raise InputError("--window and --rolling cannot be used together; choose one.")
        if self.step and not self.rolling:
            raise InputError("--step needs --rolling (the size of the sliding window).")
        if self.rolling:
            step = self.step or self.rolling
            if self.rolling % step:
                raise InputError(
                    f"--rolling must be a whole multiple of --step; got {self.rolling}s and {step}s."
                )
        if not (self.huber_delta > 0 and math.isfinite(self.huber_delta)):
            raise InputError(f"--huber-delta must be a positive number; got {self.huber_delta!r}.")
        if self.since and self.until and self.since >= self.until:
            raise InputError("--since must be earlier than --until.")
        repeated = sorted({n for n in self.by if self.by.count(n) > 1})
        if repeated:
            raise InputError(f"--by names {repeated[0]!r} more than once.")
        for name in self.by:
            if name in _OUTPUT_ONLY:
                raise InputError(f"--by {name!r} is an output column; group by a data column.")

    @property
    def windowed(self) -> bool:
        return bool(self.window or self.rolling)

    @classmethod
    def from_options(
        cls,
        *,
        window: str | None = None,
        rolling: str | None = None,
        step: str | None = None,
        by: str | None = None,
        since: str | None = None,
        until: str | None = None,
        model: str | None = None,
        version: str | None = None,
        huber_delta: float = 1.0,
        prefix: str = "--",
    ) -> EvalSpec:
        """A spec from option text, as the CLI and the HTTP query string give it."""
        from msewatch.units import parse_duration, parse_instant

        def duration(text: str | None, name: str) -> int | None:
            return parse_duration(text, option=prefix + name) if text else None

        def instant(text: str | None, name: str) -> dt.datetime | None:
            return parse_instant(text, option=prefix + name) if text else None

        return cls(
            window=duration(window, "window"),
            rolling=duration(rolling, "rolling"),
            step=duration(step, "step"),
            by=tuple(c.strip() for c in (by or "").split(",") if c.strip()),
            since=instant(since, "since"),
            until=instant(until, "until"),
            model=model or None,
            version=version or None,
            huber_delta=huber_delta,
        )

    def output_columns(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """The columns of an evaluation's output, in order: window, groups, metrics."""
        group = ["window_start", "window_end"] if self.windowed else []
        return [*group, *self.by, *metric_columns(rows)]


#: the id under which `latest_labels` gathers rejected label rows; no counted prediction has it
#: (ids with a NUL character are rejected), so it joins nothing real
REJECTED_ID = "\x00rejected"


def latest_labels(labels: ir.Table, *, dialect: str = "duckdb") -> ir.Table:
    """One label per prediction id: the latest `label_ts`, else the last row.

    With validation columns (`_ok`, from `schema.normalize`) rejected rows are gathered under
    `REJECTED_ID` and counted in `_bad`, so an evaluation reports them without a second scan.
    """
    ok = labels._ok if "_ok" in labels.columns else None
    if "label_ts" in labels.columns:
        oldest = ibis.literal(dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc)).cast(UTC)
        stamp, row = labels.label_ts.fill_null(oldest), labels._row.cast("int64")
        if dialect == "duckdb":  # one 128-bit number orders like (label_ts, row): 1.5x faster
            key = _duckdb_label_key(stamp, row)
            latest = lambda value: _duckdb_arg_max_key(value, key)
        else:
            latest = lambda value: value.argmax(ibis.struct({"t": stamp, "r": row}))
        # the latest label_ts is the max: one ordered aggregate, not two
        aggs = {"y_true": latest(labels.y_true), "label_ts": labels.label_ts.max()}
    else:
        latest = lambda value: value.argmax(labels._row)
        aggs = {"y_true": latest(labels.y_true)}
    if "_label_time" in labels.columns:  # the SLO series' label time (float), of the same label
        aggs["_label_time"] = latest(labels._label_time)
    if ok is None:
        return labels.group_by("prediction_id").aggregate(**aggs)
    group = ibis.ifelse(ok, labels.prediction_id, REJECTED_ID).name("prediction_id")
    return labels.group_by(group).aggregate(**aggs, _bad=labels.count(where=~ok))


#: DuckDB macros the file evaluation uses (`sources.new_engine` creates them)
DUCKDB_MACROS = (
    # (label_ts, row) as one HUGEINT: microseconds * 2^40 + row (rows of a file are < 2^40)
    "CREATE OR REPLACE MACRO msewatch_label_key(t, r) AS epoch_us(t)::HUGEINT * 1099511627776 + r"
)


@ibis.udf.scalar.builtin(name="msewatch_label_key")
def _duckdb_label_key(  # type: ignore[empty-body]
    t: dt_type.Timestamp(timezone="UTC"), r: dt_type.int64
) -> dt_type.Decimal(38, 0):
    """The macro above; Ibis has no 128-bit integer type, DuckDB computes a HUGEINT."""


@ibis.udf.agg.builtin(name="arg_max")
def _duckdb_arg_max_key(  # type: ignore[empty-body]
    arg: dt_type.float64, key: dt_type.Decimal(38, 0)
) -> dt_type.float64:
    """DuckDB's arg_max on a number: a hash aggregate, where a struct key compares slowly and
    Ibis's portable argmax on a struct is an ordered aggregate that sorts every group."""


def evaluation_expr(
    predictions: ir.Table, labels: ir.Table | None, spec: EvalSpec, *, dialect: str = "duckdb"
) -> tuple[ir.Table, list[str]]:
    """The evaluation as one expression, and the names of its group columns.

    `predictions` has prediction_id, ts, model, version, y_pred and segment columns; `labels`
    has one row per prediction id with y_true (and optionally label_ts). With `labels=None`,
    `predictions` already carries y_true (a joined holdout set).

    Unvalidated input (files) carries `_ok` on predictions and `_bad` on labels: rejected rows
    then flow through the same single pass, contribute to no metric, and are counted in the
    internal columns `_rejected_predictions` and `_rejected_labels`; groups made only of
    rejected rows have n_predictions 0.
    """
    missing = [c for c in spec.by if c not in predictions.columns]
    if missing:
        available = ", ".join(c for c in predictions.columns if not c.startswith("_")) or "none"
        raise InputError(f"--by: no column {', '.join(map(repr, missing))}; available: {available}.")
    if "ts" not in predictions.columns and (spec.windowed or spec.since or spec.until):
        raise InputError(
            "--window, --rolling, --since and --until need prediction times; the data has no 'ts' column."
        )

    checked = "_ok" in predictions.columns
    preds = predictions
    keep: list[ir.BooleanValue] = []
    if spec.model is not None:
        keep.append(preds.model == spec.model)
    if spec.version is not None:
        keep.append(preds.version == spec.version)
    if spec.since is not None:
        keep.append(preds.ts >= ibis.literal(spec.since).cast(UTC))
    if spec.until is not None:
        keep.append(preds.ts < ibis.literal(spec.until).cast(UTC))
    if keep:
        cond = functools.reduce(operator.and_, keep)
        # rejected rows pass the filters: they are reported whatever the filters say
        preds = preds.filter(~preds._ok | cond) if checked else preds.filter(cond)

    counted = labels is not None and "_bad" in labels.columns
    if counted:
        # one extra prediction row, all null but its id, picks up the count of rejected labels
        # through the ordinary left join; it is neither valid nor rejected itself
        preds = preds.union(_placeholder(preds.schema(), REJECTED_ID))
    if labels is None:
        data = preds
    else:
        joined = preds.left_join(labels, "prediction_id")
        label_cols = [c for c in labels.columns if c != "prediction_id"]
        data = joined.select(*[c for c in preds.columns if c != "prediction_id"], *label_cols)

    # rows that count: validated predictions, never the placeholder
    valid: ir.BooleanValue | None = None
    if checked:
        valid = data._ok.fill_null(False)
    elif counted:
        valid = data.y_pred.notnull()
    if valid is not None:
        data = data.mutate(_valid=valid)
        valid = data._valid

    group_cols: list[str] = []
    once: ir.BooleanValue | None = None  # rows counted once even when windows overlap
    if spec.windowed:
        data = _assign_windows(data, spec, dialect, valid)
        if valid is not None:
            valid = data._valid
        once = data._k == 0 if "_k" in data.columns else None
        group_cols.append("window_start")
    group_cols.extend(spec.by)

    has_latency = "label_ts" in data.columns and "ts" in data.columns
    y_true = data.y_true if valid is None else ibis.ifelse(valid, data.y_true, ibis.null("float64"))
    r = data.y_pred - y_true
    sq = r * r
    abs_r = r.abs()
    delta = spec.huber_delta
    metrics: dict[str, ir.Value] = {
        "n_predictions": data.count(where=valid),
        "n_labeled": y_true.count(),
        "_sum_sq": sq.sum(),
        "mse": sq.mean(),
        "mae": abs_r.mean(),
        "bias": r.mean(),
        "error_variance": r.var(how="pop"),
        "_ss_y": y_true.var(how="pop") * y_true.count(),
        "_y_min": y_true.min(),
        "_y_max": y_true.max(),
        "mape": (abs_r / ibis.greatest(y_true.abs(), EPSILON)).mean(),
        "huber": ibis.ifelse(abs_r <= delta, 0.5 * sq, delta * (abs_r - 0.5 * delta)).mean(),
        "_q": sq.quantile([q for _, q in QUANTILES]),
    }
    if spec.standard_errors:
        metrics["_sd_sq"] = sq.std(how="sample")
        metrics["_sd_abs"] = abs_r.std(how="sample")
        metrics["_sd_r"] = r.std(how="sample")
    if has_latency:
        label_ts = data.label_ts if valid is None else ibis.ifelse(valid, data.label_ts, ibis.null(UTC))
        latency = epoch_seconds(label_ts, dialect) - epoch_seconds(data.ts, dialect)
        metrics["_lat"] = latency.quantile([0.5, 0.9])
    if checked:
        rejected = ~data._ok.fill_null(True)  # null _ok: the placeholder row
        if once is not None:
            rejected = rejected & once
        metrics["_rejected_predictions"] = data.count(where=rejected)
    if counted:
        metrics["_rejected_labels"] = (data._bad if once is None else ibis.ifelse(once, data._bad, 0)).sum()

    agg = data.group_by(group_cols).aggregate(**metrics) if group_cols else data.aggregate(**metrics)
    out: dict[str, ir.Value] = {}
    if spec.windowed:
        size = spec.window or spec.rolling
        out["window_start"] = agg.window_start.cast("int64").as_timestamp("s")
        out["window_end"] = (agg.window_start + size).cast("int64").as_timestamp("s")
    for name in spec.by:
        out[name] = agg[name]
    out["n_predictions"] = agg.n_predictions
    out["n_labeled"] = agg.n_labeled
    out["label_coverage"] = ibis.ifelse(
        agg.n_predictions > 0, agg.n_labeled.cast("float64") / agg.n_predictions, ibis.null("float64")
    )
    out["mse"] = agg.mse
    out["rmse"] = agg.mse.sqrt()
    out["mae"] = agg.mae
    out["bias"] = agg.bias
    out["error_variance"] = agg.error_variance
    out["r2"] = ibis.ifelse(
        (agg.n_labeled > 0) & (agg._y_max > agg._y_min), 1.0 - agg._sum_sq / agg._ss_y, ibis.null("float64")
    )
    out["mape"] = agg.mape
    out["huber"] = agg.huber
    for i, (name, _) in enumerate(QUANTILES):
        out[name] = agg._q[i]
    if spec.standard_errors:
        root_n = agg.n_labeled.cast("float64").sqrt()
        out["mse_se"] = agg._sd_sq / root_n
        out["mae_se"] = agg._sd_abs / root_n
        out["bias_se"] = agg._sd_r / root_n
    if has_latency:
        out["label_latency_p50_s"] = agg._lat[0]
        out["label_latency_p90_s"] = agg._lat[1]
    for name in INTERNAL_COLUMNS:
        if name in agg.columns:
            out[name] = agg[name]
    result = agg.select(**out)
    if group_cols:
        result = result.order_by([*(["window_start"] if spec.windowed else []), *spec.by])
    return result, group_cols


@ibis.udf.scalar.builtin(name="epoch")
def _duckdb_epoch(ts: dt_type.Timestamp(timezone="UTC")) -> dt_type.float64:  # type: ignore[empty-body]
    """DuckDB's own epoch(): Ibis's portable spelling casts to a naive timestamp first, which
    costs a time-zone conversion per row (about 4x slower on 10M rows)."""


@ibis.udf.scalar.builtin(name="unix_micros")
def _spark_unix_micros(ts: dt_type.Timestamp(timezone="UTC")) -> dt_type.int64:  # type: ignore[empty-body]
    """Spark's microseconds since the epoch (Ibis's epoch_seconds drops the fraction)."""


@ibis.udf.scalar.builtin(name="toUnixTimestamp64Micro")
def _clickhouse_unix_micros(ts: dt_type.Timestamp(timezone="UTC", scale=6)) -> dt_type.int64:  # type: ignore[empty-body]
    """ClickHouse's microseconds since the epoch of a DateTime64 (toUnixTimestamp drops the fraction)."""


def epoch_seconds(ts: ir.TimestampValue, dialect: str) -> ir.FloatingValue:
    """Seconds since the UNIX epoch as float64, fraction included, in the engine's fastest exact
    spelling (Ibis's portable epoch_seconds() truncates to whole seconds on most engines)."""
    if dialect == "duckdb":
        return _duckdb_epoch(ts)
    if dialect == "pyspark":
        return _spark_unix_micros(ts).cast("float64") / 1e6
    if dialect == "clickhouse":
        return _clickhouse_unix_micros(ts.cast(dt_type.Timestamp(timezone="UTC", scale=6))).cast("float64") / 1e6
    return ts.epoch_seconds().cast("float64")


def _assign_windows(
    data: ir.Table, spec: EvalSpec, dialect: str, valid: ir.BooleanValue | None
) -> ir.Table:
    epoch = epoch_seconds(data.ts, dialect)
    if spec.window:
        return data.mutate(window_start=(epoch / spec.window).floor().cast("int64") * spec.window)
    size = spec.rolling or 0
    step = spec.step or size
    base = (epoch / step).floor().cast("int64") * step
    first = (epoch_seconds(data.ts.min(where=valid), dialect) / step).floor().cast("int64") * step
    # each row once per window containing it: k = 0 … size/step − 1 windows back (an unnested
    # range, not a joined in-memory table, which not every engine can receive)
    expanded = data.mutate(_base=base, _k=ibis.range(size // step).unnest())
    expanded = expanded.mutate(window_start=expanded._base - expanded._k * step)
    # drop the leading windows that start before the first prediction: they would be partial;
    # rows without a time (rejected ones) stay, to be counted
    return expanded.filter(
        (expanded.window_start >= first) | expanded.window_start.isnull()
    ).drop("_base")


def _placeholder(schema: Any, prediction_id: str) -> ir.Table:
    """A one-row table of `schema`: nulls everywhere but the id.

    Built from literals, not an in-memory table: an Ibis memtable costs 0.5 s of imports
    (pandas) in a process that otherwise never needs them."""
    one = ibis.literal(prediction_id).name("prediction_id").as_table()
    return one.select(
        **{name: one.prediction_id if name == "prediction_id" else ibis.null(typ) for name, typ in schema.items()}
    )


@dataclass
class Evaluation:
    """Rows of an evaluation, and the input rows it left out because they failed validation."""

    rows: list[dict[str, Any]]
    rejected_predictions: int = 0
    rejected_labels: int = 0


def evaluate(engine: Any, predictions: ir.Table, labels: ir.Table | None, spec: EvalSpec) -> Evaluation:
    """Execute the evaluation on `engine`: rows of plain Python values, and reject counts."""
    expr, group_cols = evaluation_expr(predictions, labels, spec, dialect=getattr(engine, "name", ""))
    rows = _plain(to_arrow(engine, expr)).to_pylist()
    result = Evaluation(rows=[])
    for row in rows:
        result.rejected_predictions += row.pop("_rejected_predictions", 0) or 0
        result.rejected_labels += row.pop("_rejected_labels", 0) or 0
        if group_cols and not row["n_predictions"]:
            continue  # a group of rejected rows only (ungrouped, the one row always stays)
        result.rows.append(row)
    return result


def to_arrow(engine: Any, expr: ir.Table) -> pa.Table:
    """The result of `expr` as Arrow.

    On DuckDB an expression over registered tables runs as its SQL on the connection: Ibis's
    own conversion imports pandas (0.5 s) to return the same Arrow table."""
    if getattr(engine, "name", "") == "duckdb" and not expr.op().find(ops.InMemoryTable):
        result = engine.con.sql(str(engine.compile(expr)))
        # DuckDB 2 renamed fetch_arrow_table to to_arrow_table
        table = (getattr(result, "to_arrow_table", None) or result.fetch_arrow_table)()
        return table.cast(expr.schema().to_pyarrow())  # the types Ibis promises (a sum is not a decimal)
    return engine.to_pyarrow(expr)


def run_evaluation(
    engine: Any, predictions: ir.Table, labels: ir.Table | None, spec: EvalSpec
) -> list[dict[str, Any]]:
    """Execute the evaluation on `engine` and return rows of plain Python values."""
    return evaluate(engine, predictions, labels, spec).rows


def _plain(table: pa.Table) -> pa.Table:
    """Times as ISO 8601 UTC text, and null where an engine returned NaN or infinity (the
    contract promises null, never NaN), done column-wise before rows reach Python."""
    columns = []
    for column in table.columns:
        if pa.types.is_timestamp(column.type):
            column = pc.strftime(column.cast(pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%SZ")
        elif pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_finite(column), column, pa.nulls(len(column), column.type))
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metric columns present in rows, in contract order."""
    names = list(METRIC_NAMES)
    if rows and LATENCY_NAMES[0] in rows[0]:
        names += list(LATENCY_NAMES)
    return names
