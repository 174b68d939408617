"""A store built from an engine's aggregates, so the dashboard's views run over a warehouse or a lake.

`engine_store(engine, where)` returns an in-memory `Store` whose tables hold what the views read
(`msewatch.views`), computed by the engine with Ibis from its predictions and labels tables (or
a lake written by `msewatch export` / `msewatch serve --sink`):

- `rollups`: one row per (model, version, minute of prediction time), with the same columns
  and meanings as the store's (counts, Σr², Σ|r|, Σ|r|/max(|y|, ε), Σhuber, means and centred
  sums of squares of r, y and r², the latest label time), over the current label of each id as
  `engines.current_labels` decides;
- `segment_rollups`: the same per hour, per segment column and value; `extra_columns`: the
  predictions' other columns, text ones as segments and numeric ones as features;
- `rollup_good` and `slo_thresholds` for the event SLO thresholds asked for (`thresholds`);
- the raw predictions and current labels of the recent window the on-call and debug views join
  (by default the 4 days before each model's newest minute: the debug view's 2 days and the
  period before it that its feature comparison reads).

The O(rows) work stays in the engine: what comes back is one row per minute, per hour and
segment value, and the rows of the recent window. There are no alerts and no recorded
baselines (no monitor state lives in an engine): the views then fall back to the default
baseline, the median daily MSE of the trailing 30 days, as they do on a store without one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ibis
import ibis.expr.datatypes as dt_type
import ibis.expr.types as ir
import pyarrow as pa

from msewatch.engines import (
    UTC,
    EngineTables,
    contract_predictions,
    current_labels,
    engine_table,
    finite,
    lake_tables,
    read_file,
)
from msewatch.errors import InputError
from msewatch.metrics import EPSILON
from msewatch.monitor.baselines import ensure_tables
from msewatch.store import Store

__all__ = ["RAW_DAYS", "engine_store"]

#: the raw window's default length: the debug view's 2 days and the 2 days before them
RAW_DAYS = 4
MINUTE = 60
HOUR = 3600
#: columns of a lake (or of the store's tables) that are bookkeeping, not segments or features
BOOKKEEPING = ("source", "ingested_at", "day")

#: a start for the raw window: a time, or a function of a model's data end (its newest minute's end)
RawSince = dt.datetime | Callable[[dt.datetime], dt.datetime] | None


def engine_store(engine: Any, where: EngineTables, *, raw_since: RawSince = None,
                 thresholds: Mapping[str, Sequence[float]] | None = None,
                 models: Sequence[str] | None = None) -> Store:
    """An in-memory store with the aggregates `engine` computes over `where`, for the views.

    `raw_since`: the predictions (and their current labels) copied as rows are those at or
    after this time; a function gets each model's data end and returns its start (default:
    `RAW_DAYS` days before it). `thresholds`: event SLO thresholds per model, counted into
    `rollup_good` as the store does for tracked thresholds. `models`: copy raw rows of these
    models only (default: all; the aggregates always cover every model).
    """
    dialect = getattr(engine, "name", "")
    try:
        raw_p, raw_l = _raw_tables(engine, where)
    except InputError:
        raise
    except Exception as exc:  # e.g. a lake directory without a Parquet file yet
        raise InputError(f"--engine: cannot read the data ({str(exc).splitlines()[0][:300]}).") from exc
    predictions = contract_predictions(raw_p, where.columns, engine.name)
    predictions = predictions.filter(predictions._ok).drop("_ok")
    labels = current_labels(raw_l, where.columns, dialect)
    extras = _extras(predictions, where)
    store = Store(":memory:")
    try:
        # rows a warehouse repeats stay separate rows, as the engine's evaluation counts them
        store.con.execute("DROP INDEX IF EXISTS predictions_prediction_id")
        ensure_tables(store.con)  # no recorded baseline: the views' default one
        _add_extras(store, extras)
        ends = _fill_rollups(store, engine, predictions, labels, extras, thresholds or {})
        if not ends:
            return store
        wanted = [m for m in ends if models is None or m in models]
        cutoffs = {m: _cutoff(raw_since, ends[m]) for m in wanted}
        if cutoffs:
            _fill_raw(store, engine, predictions, labels, raw_l, where, extras, cutoffs)
    except BaseException:
        store.close()
        raise
    return store


def _cutoff(raw_since: RawSince, end: dt.datetime) -> dt.datetime:
    if raw_since is None:
        return end - dt.timedelta(days=RAW_DAYS)
    if callable(raw_since):
        return raw_since(end)
    return raw_since


def _raw_tables(engine: Any, where: EngineTables) -> tuple[ir.Table, ir.Table]:
    """The predictions and labels tables as stored (what `engines.engine_tables` reads)."""
    if where.lake:
        return lake_tables(engine, where.lake)
    if where.predictions_files and where.labels_files:
        return read_file(engine, where.predictions_files), read_file(engine, where.labels_files)
    return engine_table(engine, where.predictions, "predictions"), engine_table(engine, where.labels, "labels")


def _extras(predictions: ir.Table, where: EngineTables) -> dict[str, str]:
    """Segment (text) and feature (numeric) columns, in the table's order, as the store classifies."""
    contract = {"prediction_id", "ts", "model", "version", "y_pred", *where.columns.source_names().values()}
    stored = {"prediction_id", "ts", "model", "version", "y_pred", *BOOKKEEPING}
    out: dict[str, str] = {}
    for name, kind in predictions.schema().items():
        if name in contract or name.startswith("_") or name.casefold() in stored or name in BOOKKEEPING:
            continue
        if any(name.casefold() == other.casefold() for other in out):
            continue  # 'Region' and 'region': the store keeps one column per name, case-insensitively
        numeric = kind.is_integer() or kind.is_floating() or kind.is_decimal()
        out[name] = "feature" if numeric else "segment"
    return out


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _add_extras(store: Store, extras: dict[str, str]) -> None:
    base = dt.datetime.now(dt.timezone.utc)
    for i, (name, kind) in enumerate(extras.items()):
        store.con.execute(f"ALTER TABLE predictions ADD COLUMN {_q(name)} {'DOUBLE' if kind == 'feature' else 'VARCHAR'}")
        # added_at keeps the table's column order, which the views list segments in
        store.con.execute("INSERT INTO extra_columns VALUES (?, ?, ?)", [name, kind, base + dt.timedelta(microseconds=i)])


def _fetch(engine: Any, expr: ir.Table) -> pa.Table:
    try:
        return engine.to_pyarrow(expr)
    except InputError:
        raise
    except Exception as exc:  # each backend has its own errors
        raise InputError(f"--engine: the query failed in {engine.name} ({str(exc).splitlines()[0][:300]}).") from exc


def _insert(store: Store, table: pa.Table, sql: str) -> None:
    """Run `sql` with `_arrow` standing for `table` on the store's connection."""
    name = f"_engine_{uuid.uuid4().hex}"
    store.con.register(name, table)
    try:
        store.con.execute(sql.replace("_arrow", name))
    finally:
        store.con.unregister(name)


def _joined(predictions: ir.Table, labels: ir.Table, keep: Sequence[str], dialect: str) -> ir.Table:
    """Predictions with their current label: minute, hour, r, y and label time per row."""
    from msewatch.evaluate import epoch_seconds

    p = predictions.select("prediction_id", "ts", "model", "version", "y_pred", *keep)
    has_time = "_label_time" in labels.columns
    lab = labels.select("prediction_id", "y_true", *(["_label_time"] if has_time else []))
    j = p.left_join(lab, "prediction_id")
    epoch = epoch_seconds(j.ts, dialect)
    return j.select(
        "model", "version", *keep,
        minute=(epoch / MINUTE).floor().cast("int64") * MINUTE,
        hour=(epoch / HOUR).floor().cast("int64") * HOUR,
        y=j.y_true, r=j.y_pred - j.y_true,
        label_time=j._label_time if has_time else ibis.null("float64"),
    )


@ibis.udf.agg.builtin(name="varPopStable")
def _clickhouse_var_pop(arg: dt_type.float64) -> dt_type.float64:  # type: ignore[empty-body]
    """ClickHouse's varPop is the one-pass Σx² − n·x̄² (digits lost when the mean is large next to
    the spread, as y's is); varPopStable is the numerically stable one the other engines have."""


def _m2(x: ir.FloatingValue, dialect: str) -> ir.FloatingValue:
    """The centred sum of squares of `x`: var_pop · n."""
    var = _clickhouse_var_pop(x) if dialect == "clickhouse" else x.var(how="pop")
    return var * x.count()


def _fill_rollups(store: Store, engine: Any, predictions: ir.Table, labels: ir.Table, extras: dict[str, str],
                  thresholds: Mapping[str, Sequence[float]]) -> dict[str, dt.datetime]:
    """The per-minute and per-hour segment rollups; returns each model's data end."""
    dialect = engine.name
    segments = [n for n, k in extras.items() if k == "segment"]
    j = _joined(predictions, labels, segments, dialect)
    r, y = j.r, j.y
    sq, ab = r * r, r.abs()
    taus = sorted({float(t) for ts in thresholds.values() for t in ts})
    aggs: dict[str, Any] = {
        "n_predictions": j.count(), "n_labeled": y.count(),
        "sum_sq": sq.sum(), "sum_abs": ab.sum(), "sum_ape": (ab / ibis.greatest(y.abs(), EPSILON)).sum(),
        "sum_huber": ibis.ifelse(ab <= 1.0, 0.5 * sq, ab - 0.5).sum(),
        "mean_r": r.mean(), "m2_r": _m2(r, dialect), "mean_y": y.mean(), "m2_y": _m2(y, dialect),
        "m2_sq": _m2(sq, dialect), "label_time": j.label_time.max(),
    }
    for i, tau in enumerate(taus):
        aggs[f"good_{i}"] = (sq <= tau).cast("int64").sum()
    minutes = _fetch(engine, j.group_by("model", "version", "minute").aggregate(**aggs))
    if not minutes.num_rows:
        return {}
    stats = ", ".join(f"CASE WHEN n_labeled > 0 THEN {c}::DOUBLE END" for c in
                      ("sum_sq", "sum_abs", "sum_ape", "sum_huber", "mean_r", "m2_r", "mean_y", "m2_y", "m2_sq"))
    # label times come back as float epoch seconds: round to the microsecond they were
    _insert(store, minutes, f"""INSERT INTO rollups SELECT model::VARCHAR, version::VARCHAR, to_timestamp(minute::BIGINT),
        n_predictions::BIGINT, n_labeled::BIGINT, {stats},
        CASE WHEN n_labeled > 0 AND label_time IS NOT NULL AND isfinite(label_time::DOUBLE)
             THEN make_timestamp(round(label_time::DOUBLE * 1e6)::BIGINT)::TIMESTAMPTZ END
        FROM _arrow""")
    for model, ts in thresholds.items():
        for tau in sorted({float(t) for t in ts}):
            store.con.execute("INSERT INTO slo_thresholds VALUES (?, ?) ON CONFLICT DO NOTHING", [model, tau])
            i = taus.index(tau)
            name = f"_engine_{uuid.uuid4().hex}"
            store.con.register(name, minutes)
            try:
                store.con.execute(
                    f"""INSERT INTO rollup_good SELECT model::VARCHAR, version::VARCHAR, to_timestamp(minute::BIGINT), $tau,
                    coalesce(good_{i}, 0)::BIGINT FROM {name} WHERE model = $m AND n_labeled > 0""", {"tau": tau, "m": model})
            finally:
                store.con.unregister(name)
    if segments:
        parts = [j.filter(j[c].notnull()).select("model", "version", "hour", "r", segment=ibis.literal(c),
                                                   value=j[c].cast("string"))
                 for c in segments]
        u = ibis.union(*parts, distinct=False) if len(parts) > 1 else parts[0]
        hours = _fetch(engine, u.group_by("model", "version", "segment", "value", "hour").aggregate(
            n_predictions=u.count(), n_labeled=u.r.count(), sum_sq=(u.r * u.r).sum()))
        _insert(store, hours, """INSERT INTO segment_rollups SELECT model::VARCHAR, version::VARCHAR, segment::VARCHAR,
            value::VARCHAR, to_timestamp(hour::BIGINT), n_predictions::BIGINT, n_labeled::BIGINT,
            CASE WHEN n_labeled > 0 THEN coalesce(sum_sq::DOUBLE, 0) ELSE 0 END FROM _arrow""")
    return dict(store.con.execute("SELECT model, max(bucket_start) + INTERVAL 1 MINUTE FROM rollups GROUP BY 1").fetchall())


def _fill_raw(store: Store, engine: Any, predictions: ir.Table, labels: ir.Table, raw_labels: ir.Table,
              where: EngineTables, extras: dict[str, str], cutoffs: dict[str, dt.datetime]) -> None:
    """The predictions at or after their model's cutoff with their current labels: one query."""
    p = predictions
    keep = ibis.or_(*[(p.model == m) & (p.ts >= ibis.literal(t).cast(UTC)) for m, t in cutoffs.items()])
    cols: dict[str, Any] = {c: p[c] for c in ("prediction_id", "ts", "model", "version", "y_pred")}
    for name, kind in extras.items():
        cols[name] = p[name].cast("float64") if kind == "feature" else p[name].cast("string")
    window = p.filter(keep).select(**cols)
    # the revision of the label that counts, for the on-call view's backfill notes
    revision = _revisions(raw_labels, where)
    current = labels if revision is None else labels.left_join(revision, "prediction_id")
    lab = {"prediction_id": current.prediction_id, "_y_true": current.y_true,
           "_label_ts": current.label_ts if "label_ts" in current.columns else ibis.null(UTC),
           "_label_time": current._label_time if "_label_time" in current.columns else ibis.null("float64"),
           "_revision": current.revision if revision is not None else ibis.literal(1, "int64")}
    rows = _fetch(engine, window.left_join(current.select(**lab), "prediction_id"))
    names = ", ".join(_q(c) for c in ("prediction_id", "ts", "model", "version", "y_pred", *extras))
    typed = ", ".join(
        ["prediction_id::VARCHAR", "ts::TIMESTAMPTZ", "model::VARCHAR", "version::VARCHAR", "y_pred::DOUBLE"]
        + [f"{_q(n)}::{'DOUBLE' if k == 'feature' else 'VARCHAR'}" for n, k in extras.items()])
    _insert(store, rows, f"INSERT INTO predictions ({names}, ingested_at) SELECT {typed}, now() FROM _arrow")
    _insert(store, rows, """INSERT INTO labels SELECT DISTINCT ON (prediction_id) prediction_id::VARCHAR,
        _y_true::DOUBLE, _label_ts::TIMESTAMPTZ, coalesce(_revision, 1)::INTEGER, true, NULL,
        coalesce(make_timestamp(round(_label_time::DOUBLE * 1e6)::BIGINT)::TIMESTAMPTZ, now())
        FROM _arrow WHERE _y_true IS NOT NULL""")


def _revisions(raw_labels: ir.Table, where: EngineTables) -> ir.Table | None:
    """Per id, the revision of the label that counts (latest label_ts, none = oldest, then the
    highest revision: the order `current_labels` gives a table with a `revision` column)."""
    names = where.columns.source_names()
    if "revision" not in raw_labels.columns or "revision" in (names["prediction_id"], names["y_true"]):
        return None
    t = raw_labels
    pid, y = t[names["prediction_id"]], t[names["y_true"]].cast("float64")
    t = t.filter(pid.notnull() & finite(y))
    rev = t.revision.cast("int64")
    if names["label_ts"] in t.columns:
        oldest = ibis.literal(dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc)).cast(UTC)
        key = ibis.struct({"t": t[names["label_ts"]].cast(UTC).fill_null(oldest), "r": rev})
        current = rev.argmax(key)
    else:
        current = rev.max()
    return t.group_by(prediction_id=t[names["prediction_id"]].cast("string")).aggregate(revision=current)
