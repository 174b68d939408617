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
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ibis
import ibis.expr.types as ir

from msewatch.errors import InputError
from msewatch.metrics import EPSILON, METRIC_NAMES, QUANTILES
from msewatch.schema import UTC

__all__ = [
    "LATENCY_NAMES",
    "EvalSpec",
    "evaluation_expr",
    "latest_labels",
    "run_evaluation",
]

LATENCY_NAMES = ("label_latency_p50_s", "label_latency_p90_s")


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
    reserved: tuple[str, ...] = field(default=("window_start", "window_end"), repr=False)

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
        for name in self.by:
            if name in self.reserved:
                raise InputError(f"--by {name!r} is an output column; group by a data column.")

    @property
    def windowed(self) -> bool:
        return bool(self.window or self.rolling)


def latest_labels(labels: ir.Table) -> ir.Table:
    """One label per prediction id: the latest `label_ts`, else the last row."""
    if "label_ts" in labels.columns:
        oldest = ibis.literal(dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc)).cast(UTC)
        key = ibis.struct({"t": labels.label_ts.fill_null(oldest), "r": labels._row})
        return labels.group_by("prediction_id").aggregate(
            y_true=labels.y_true.argmax(key), label_ts=labels.label_ts.argmax(key)
        )
    return labels.group_by("prediction_id").aggregate(y_true=labels.y_true.argmax(labels._row))


def evaluation_expr(
    predictions: ir.Table, labels: ir.Table | None, spec: EvalSpec
) -> tuple[ir.Table, list[str]]:
    """The evaluation as one expression, and the names of its group columns.

    `predictions` has prediction_id, ts, model, version, y_pred and segment columns; `labels`
    has one row per prediction id with y_true (and optionally label_ts). With `labels=None`,
    `predictions` already carries y_true (a joined holdout set).
    """
    missing = [c for c in spec.by if c not in predictions.columns]
    if missing:
        available = ", ".join(c for c in predictions.columns if not c.startswith("_")) or "none"
        raise InputError(f"--by: no column {', '.join(map(repr, missing))}; available: {available}.")

    if labels is None:
        data = predictions
    else:
        data = predictions.left_join(labels, "prediction_id")
        data = data.select(
            *[c for c in predictions.columns if c != "prediction_id"],
            "prediction_id",
            *[c for c in labels.columns if c != "prediction_id"],
        )
    if spec.model is not None:
        data = data.filter(data.model == spec.model)
    if spec.version is not None:
        data = data.filter(data.version == spec.version)
    if "ts" not in data.columns and (spec.windowed or spec.since or spec.until):
        raise InputError(
            "--window, --rolling, --since and --until need prediction times; the data has no 'ts' column."
        )
    if spec.since is not None:
        data = data.filter(data.ts >= ibis.literal(spec.since).cast(UTC))
    if spec.until is not None:
        data = data.filter(data.ts < ibis.literal(spec.until).cast(UTC))

    group_cols: list[str] = []
    if spec.windowed:
        data = _assign_windows(data, spec)
        group_cols.append("window_start")
    group_cols.extend(spec.by)

    has_latency = "label_ts" in data.columns and "ts" in data.columns
    r = data.y_pred - data.y_true
    sq = r * r
    abs_r = r.abs()
    delta = spec.huber_delta
    metrics: dict[str, ir.Value] = {
        "n_predictions": data.count(),
        "n_labeled": data.y_true.count(),
        "_sum_sq": sq.sum(),
        "mse": sq.mean(),
        "mae": abs_r.mean(),
        "bias": r.mean(),
        "error_variance": r.var(how="pop"),
        "_ss_y": data.y_true.var(how="pop") * data.y_true.count(),
        "_y_min": data.y_true.min(),
        "_y_max": data.y_true.max(),
        "mape": (abs_r / ibis.greatest(data.y_true.abs(), EPSILON)).mean(),
        "huber": ibis.ifelse(abs_r <= delta, 0.5 * sq, delta * (abs_r - 0.5 * delta)).mean(),
        "_q": sq.quantile([q for _, q in QUANTILES]),
    }
    if has_latency:
        latency = data.label_ts.epoch_seconds().cast("float64") - data.ts.epoch_seconds().cast("float64")
        metrics["_lat"] = latency.quantile([0.5, 0.9])

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
    if has_latency:
        out["label_latency_p50_s"] = agg._lat[0]
        out["label_latency_p90_s"] = agg._lat[1]
    result = agg.select(**out)
    if group_cols:
        result = result.order_by([*(["window_start"] if spec.windowed else []), *spec.by])
    return result, group_cols


def _assign_windows(data: ir.Table, spec: EvalSpec) -> ir.Table:
    epoch = data.ts.epoch_seconds().cast("float64")
    if spec.window:
        return data.mutate(window_start=(epoch / spec.window).floor().cast("int64") * spec.window)
    size = spec.rolling or 0
    step = spec.step or size
    base = (epoch / step).floor().cast("int64") * step
    offsets = ibis.memtable({"_k": list(range(size // step))})
    first = (data.ts.min().epoch_seconds().cast("float64") / step).floor().cast("int64") * step
    expanded = data.mutate(_base=base).cross_join(offsets)
    expanded = expanded.mutate(window_start=expanded._base - expanded._k * step)
    # drop the leading windows that start before the first prediction: they would be partial
    return expanded.filter(expanded.window_start >= first).drop("_base", "_k")


def run_evaluation(
    engine: Any, predictions: ir.Table, labels: ir.Table | None, spec: EvalSpec
) -> list[dict[str, Any]]:
    """Execute the evaluation on `engine` and return rows of plain Python values."""
    expr, _ = evaluation_expr(predictions, labels, spec)
    table = engine.to_pyarrow(expr)
    rows = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None  # a contract promise: null, never NaN
            elif isinstance(value, dt.datetime):
                row[key] = _iso(value)
    return rows


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    text = value.astimezone(dt.timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metric columns present in rows, in contract order."""
    names = list(METRIC_NAMES)
    if rows and LATENCY_NAMES[0] in rows[0]:
        names += list(LATENCY_NAMES)
    return names
