"""Hourly rollups per segment value, so cohort charts and cohort filters never join raw rows.

One row per (model, version, segment column, value, hour of prediction time) holds the
predictions, the labeled ones and their Σr². A prediction counts once per segment column that
has a value (a null value counts nowhere, so a segment column added later leaves the older
predictions out on every path alike). The dashboard's cohort × day heatmap and its cohort filter
read these rows: on a 10M-prediction store the join of predictions with labels they replace
takes seconds.

`_rollups` keeps them in step inside the same ingest transaction: new predictions and first
labels add to their hours' counts and sums; whatever makes `_rollups.refresh` recompute minutes
from the raw tables makes `refresh` here recompute their hours the same way.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SEGMENT_DDL", "SEGMENT_SECONDS", "add", "rebuild", "refresh", "segment_columns"]

SEGMENT_SECONDS = 3600

SEGMENT_DDL = """
CREATE TABLE IF NOT EXISTS segment_rollups (
    model VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    segment VARCHAR NOT NULL,
    value VARCHAR NOT NULL,
    bucket_start TIMESTAMPTZ NOT NULL,
    n_predictions BIGINT NOT NULL,
    n_labeled BIGINT NOT NULL,
    sum_sq DOUBLE NOT NULL
);
"""

_HOUR = f"to_timestamp(floor(epoch(p.ts) / {SEGMENT_SECONDS}) * {SEGMENT_SECONDS})"
_KEYS = ("model", "version", "segment", "value", "bucket_start")


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def segment_columns(con: Any) -> list[str]:
    """The stored segment columns."""
    return [n for (n,) in con.execute("SELECT name FROM extra_columns WHERE kind = 'segment' ORDER BY name").fetchall()]


def _unpivot(rows_sql: str, columns: list[str]) -> str:
    """`rows_sql` (model, version, ts, the segment columns, r) as one row per non-null segment value."""
    pairs = ", ".join(f"{{'s': {_lit(c)}, 'v': p.{_q(c)}::VARCHAR}}" for c in columns)
    return f"""SELECT model, version, kv.s AS segment, kv.v AS value, bucket_start, r FROM (
        SELECT p.model, p.version, {_HOUR} AS bucket_start, p.r, unnest([{pairs}]) AS kv FROM ({rows_sql}) p)
        WHERE kv.v IS NOT NULL"""


def add(con: Any, rows: str, *, labeled: bool) -> bool:
    """Add `rows` (model, version, ts, segment columns; y_pred and y_true when `labeled`) to their hours.

    New predictions raise `n_predictions`; first labels raise `n_labeled` and `sum_sq`. Returns
    False, adding nothing, when labeled `rows` lack a stored segment column (the caller then
    recomputes their hours).
    """
    columns = segment_columns(con)
    have = {d[0] for d in con.execute(f"SELECT * FROM {rows} LIMIT 0").description} if columns else set()
    present = [c for c in columns if c in have]
    if labeled and present != columns:
        return False
    columns = present  # new predictions without a column have no value in it
    if not columns:
        return True
    cols = ", ".join(f"p.{_q(c)}" for c in columns)
    r = "p.y_pred - p.y_true" if labeled else "NULL::DOUBLE"
    added = f"""SELECT model, version, segment, value, bucket_start, count(*) AS n, coalesce(sum(r * r), 0) AS sq
        FROM ({_unpivot(f"SELECT p.model, p.version, p.ts, {cols}, {r} AS r FROM {rows} p", columns)}) GROUP BY ALL"""
    match = " AND ".join(f"s.{k} = a.{k}" for k in _KEYS)
    if not labeled:  # new predictions: one MERGE (statements are the fixed cost of a group commit)
        con.execute(
            f"""MERGE INTO segment_rollups s USING ({added}) a ON {match}
            WHEN MATCHED THEN UPDATE SET n_predictions = s.n_predictions + a.n
            WHEN NOT MATCHED THEN INSERT VALUES (a.model, a.version, a.segment, a.value, a.bucket_start, a.n, 0, 0.0)"""
        )
        return True
    con.execute(f"CREATE OR REPLACE TEMP TABLE _seg_add AS {added}")
    con.execute(f"""UPDATE segment_rollups s SET n_labeled = s.n_labeled + a.n, sum_sq = s.sum_sq + a.sq
        FROM _seg_add a WHERE {match}""")
    # a labeled prediction's hour has its row: recompute any that has not
    missing = f"FROM _seg_add a WHERE NOT EXISTS (SELECT 1 FROM segment_rollups s WHERE {match})"
    if con.execute(f"SELECT count(*) {missing}").fetchall()[0][0]:
        refresh(con, f"SELECT DISTINCT a.model, a.version, a.bucket_start {missing}")
    con.execute("DROP TABLE IF EXISTS _seg_add")
    return True


def refresh(con: Any, keys_sql: str) -> None:
    """Recompute the hours of the (model, version, bucket_start) keys of `keys_sql` from the raw tables."""
    columns = segment_columns(con)
    if not columns:
        return
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _seg_touched AS SELECT DISTINCT model, version,
        to_timestamp(floor(epoch(bucket_start) / {SEGMENT_SECONDS}) * {SEGMENT_SECONDS}) AS bucket_start FROM ({keys_sql})"""
    )
    lo, hi = con.execute("SELECT min(bucket_start), max(bucket_start) FROM _seg_touched").fetchall()[0]
    if lo is not None:
        con.execute("""DELETE FROM segment_rollups USING _seg_touched t WHERE segment_rollups.model = t.model
            AND segment_rollups.version = t.version AND segment_rollups.bucket_start = t.bucket_start""")
        cols = ", ".join(f"p.{_q(c)}" for c in columns)
        rows = f"""SELECT p.model, p.version, p.ts, {cols}, p.y_pred - l.y_true AS r FROM predictions p
            JOIN _seg_touched t ON p.model = t.model AND p.version = t.version AND {_HOUR} = t.bucket_start
            LEFT JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current
            WHERE p.ts >= $lo AND p.ts < $hi + INTERVAL {SEGMENT_SECONDS} SECOND"""
        con.execute(
            f"""INSERT INTO segment_rollups SELECT model, version, segment, value, bucket_start, count(*), count(r),
            coalesce(sum(r * r), 0) FROM ({_unpivot(rows, columns)}) GROUP BY ALL""",
            {"lo": lo, "hi": hi},
        )
    con.execute("DROP TABLE IF EXISTS _seg_touched")


def rebuild(con: Any) -> None:
    """Recompute every row from the raw tables."""
    con.execute("DELETE FROM segment_rollups")
    refresh(con, f"SELECT DISTINCT p.model, p.version, {_HOUR} AS bucket_start FROM predictions p")
