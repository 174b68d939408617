"""Per-minute rollups of error statistics, kept in step with predictions and label revisions.

One row per (model, version, minute of prediction time) holds the `ErrorStats` state of the
labeled predictions in it: counts, Σr², Σ|r|, Σ|r|/max(|y|, ε), Σhuber (δ = 1), and the mean
and centred sum of squares of r and of y. Long windows (a 28-day SLO) read these rows instead of
rescanning raw predictions, and combine them with the parallel-variance formula, so bias,
error variance and R² keep their digits at any offset.

`_pending` keeps them in step with the committed rows, up to the watermark in `rollup_state`.
New predictions only raise a minute's count (`add_predictions`); predictions that get their
first label are merged in with the parallel formula (`add_first_labels`); a corrected label
makes `refresh` recompute the touched minutes from the raw tables, so a correction replaces its
old contribution exactly instead of being subtracted.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from msewatch.metrics import EPSILON, ErrorStats
from msewatch.store import _segment_rollups as segments

__all__ = [
    "BUCKET",
    "ROLLUP_DDL",
    "ROLLUP_MIGRATIONS",
    "ROLLUP_SECONDS",
    "add_first_labels",
    "add_predictions",
    "pending_since",
    "rebuild",
    "refresh",
    "set_watermark",
    "track_thresholds",
    "unfolded_rows",
    "watermark",
    "window_stats",
]

ROLLUP_SECONDS = 60

ROLLUP_DDL = """
CREATE TABLE IF NOT EXISTS rollups (
    model VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    bucket_start TIMESTAMPTZ NOT NULL,
    n_predictions BIGINT NOT NULL,
    n_labeled BIGINT NOT NULL,
    sum_sq DOUBLE,
    sum_abs DOUBLE,
    sum_ape DOUBLE,
    sum_huber DOUBLE,
    mean_r DOUBLE,
    m2_r DOUBLE,
    mean_y DOUBLE,
    m2_y DOUBLE,
    m2_sq DOUBLE,
    last_label_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS slo_thresholds (
    model VARCHAR NOT NULL,
    threshold DOUBLE NOT NULL,
    PRIMARY KEY (model, threshold)
);
CREATE TABLE IF NOT EXISTS rollup_good (
    model VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    bucket_start TIMESTAMPTZ NOT NULL,
    threshold DOUBLE NOT NULL,
    n_good BIGINT NOT NULL,
    PRIMARY KEY (model, version, bucket_start, threshold)
);
-- every prediction and label with ingested_at <= applied_through is in the rollups (`_pending`)
CREATE TABLE IF NOT EXISTS rollup_state (applied_through TIMESTAMPTZ NOT NULL);
""" + segments.SEGMENT_DDL

# stores written before these columns existed get them, then `rebuild` fills them in
ROLLUP_MIGRATIONS = (
    ("m2_sq", "ALTER TABLE rollups ADD COLUMN m2_sq DOUBLE"),
    ("last_label_at", "ALTER TABLE rollups ADD COLUMN last_label_at TIMESTAMPTZ"),
)

_LABEL_TIME = "coalesce(l.label_ts, l.ingested_at)"

BUCKET = f"to_timestamp(floor(epoch(p.ts) / {ROLLUP_SECONDS}) * {ROLLUP_SECONDS})"


_OLDEST = dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc)


def watermark(con: Any) -> dt.datetime:
    """The `ingested_at` up to which every row is in the rollups."""
    row = con.execute("SELECT max(applied_through) FROM rollup_state").fetchall()
    return row[0][0] if row and row[0][0] is not None else _OLDEST


def set_watermark(con: Any, at: dt.datetime | None = None) -> None:
    """Move the watermark to `at`, or to the newest stored row (after a rebuild from the raw tables)."""
    if at is None:
        at = con.execute(
            "SELECT max(t) FROM (SELECT max(ingested_at) AS t FROM predictions UNION ALL "
            "SELECT max(ingested_at) FROM labels)"
        ).fetchall()[0][0] or _OLDEST
    con.execute("DELETE FROM rollup_state")
    con.execute("INSERT INTO rollup_state VALUES (?)", [at])


def pending_since(con: Any, since: dt.datetime) -> dt.datetime | None:
    """The newest `ingested_at` of predictions and labels past `since`, or None: nothing pending."""
    return con.execute(
        "SELECT max(t) FROM (SELECT max(ingested_at) AS t FROM predictions WHERE ingested_at > $w UNION ALL "
        "SELECT max(ingested_at) FROM labels WHERE ingested_at > $w)",
        {"w": since},
    ).fetchall()[0][0]


def unfolded_rows(con: Any) -> int:
    """How many predictions and labels are past the watermark (committed, not in the rollups)."""
    return int(con.execute(
        "SELECT (SELECT count(*) FROM predictions WHERE ingested_at > $w) "
        "+ (SELECT count(*) FROM labels WHERE ingested_at > $w)", {"w": watermark(con)}
    ).fetchall()[0][0])


def refresh(con: Any, touched_sql: str) -> None:
    """Recompute the rollup rows of the (model, version, bucket_start) keys `touched_sql` lists."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _touched AS SELECT DISTINCT * FROM ({touched_sql})")
    con.execute(
        """DELETE FROM rollups USING _touched t
        WHERE rollups.model = t.model AND rollups.version = t.version
          AND rollups.bucket_start = t.bucket_start"""
    )
    lo, hi = con.execute("SELECT min(bucket_start), max(bucket_start) FROM _touched").fetchall()[0]
    if lo is None:
        con.execute("DROP TABLE IF EXISTS _touched")
        return
    # the time range as constants lets the scan skip row groups outside it (zone maps)
    con.execute(
        f"""INSERT INTO rollups
        WITH joined AS (
            SELECT p.model, p.version, {BUCKET} AS bucket_start,
                   l.y_true, p.y_pred - l.y_true AS r, {_LABEL_TIME} AS label_time
            FROM predictions p
            JOIN _touched t ON p.model = t.model AND p.version = t.version
                AND {BUCKET} = t.bucket_start
            LEFT JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current
            WHERE p.ts >= $lo AND p.ts < $hi + INTERVAL {ROLLUP_SECONDS} SECOND
        )
        SELECT model, version, bucket_start,
            count(*) AS n_predictions,
            count(y_true) AS n_labeled,
            sum(r * r), sum(abs(r)), sum(abs(r) / greatest(abs(y_true), {EPSILON!r})),
            sum(CASE WHEN abs(r) <= 1.0 THEN 0.5 * r * r ELSE abs(r) - 0.5 END),
            avg(r), var_pop(r) * count(r), avg(y_true), var_pop(y_true) * count(y_true),
            var_pop(r * r) * count(r), max(label_time)
        FROM joined GROUP BY ALL""",
        {"lo": lo, "hi": hi},
    )
    if _has_thresholds(con):
        con.execute(
            """DELETE FROM rollup_good USING _touched t
            WHERE rollup_good.model = t.model AND rollup_good.version = t.version
              AND rollup_good.bucket_start = t.bucket_start"""
        )
        con.execute(
            f"""INSERT INTO rollup_good
            SELECT p.model, p.version, {BUCKET} AS bucket_start, s.threshold,
                   count(*) FILTER (WHERE (p.y_pred - l.y_true) * (p.y_pred - l.y_true) <= s.threshold)
            FROM predictions p
            JOIN _touched t ON p.model = t.model AND p.version = t.version AND {BUCKET} = t.bucket_start
            JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current
            JOIN slo_thresholds s ON s.model = p.model
            WHERE p.ts >= $lo AND p.ts < $hi + INTERVAL {ROLLUP_SECONDS} SECOND
            GROUP BY ALL""",
            {"lo": lo, "hi": hi},
        )
    segments.refresh(con, "SELECT * FROM _touched")
    con.execute("DROP TABLE IF EXISTS _touched")


def _has_thresholds(con: Any) -> bool:
    return bool(con.execute("SELECT count(*) FROM slo_thresholds").fetchall()[0][0])


def rebuild(con: Any) -> None:
    """Recompute every rollup row from the raw tables; every stored row is then folded in."""
    refresh(con, f"SELECT DISTINCT p.model, p.version, {BUCKET} AS bucket_start FROM predictions p")
    set_watermark(con)


def track_thresholds(con: Any, model: str, thresholds: list[float]) -> list[float]:
    """Count good events (squared error ≤ τ) per minute for each τ of `model` from now on.

    A threshold seen for the first time is backfilled from the raw tables once, from the pairs
    already folded into the rollups (the next step of `_pending` adds the others, as it does for
    every threshold); after that the ingest keeps its counts in step. Returns the new thresholds.
    """
    known = {t for (t,) in con.execute("SELECT threshold FROM slo_thresholds WHERE model = $m", {"m": model}).fetchall()}
    new = sorted({float(t) for t in thresholds} - known)
    if not new:
        return []
    con.execute("INSERT INTO slo_thresholds SELECT $m, unnest($t::DOUBLE[])", {"m": model, "t": new})
    con.execute(
        f"""INSERT INTO rollup_good
        SELECT p.model, p.version, {BUCKET} AS bucket_start, s.threshold,
               count(*) FILTER (WHERE (p.y_pred - l.y_true) * (p.y_pred - l.y_true) <= s.threshold)
        FROM predictions p
        JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current
        JOIN (SELECT unnest($t::DOUBLE[]) AS threshold) s ON true
        WHERE p.model = $m AND p.ingested_at <= $w AND l.ingested_at <= $w
        GROUP BY ALL""",
        {"m": model, "t": new, "w": watermark(con)},
    )
    return new


def add_predictions(con: Any, inserted: str) -> None:
    """Count new predictions into their minutes and hours.

    An unlabeled prediction changes a minute's `n_predictions` and nothing else, so counting it
    in is exact; the pairs of new predictions that have a label are merged by `add_first_labels`.
    """
    # one MERGE, not a temp table, an UPDATE and an INSERT: statements are the fixed cost of
    # every group commit
    con.execute(
        f"""MERGE INTO rollups r
        USING (SELECT p.model, p.version, {BUCKET} AS bucket_start, count(*) AS n FROM {inserted} p GROUP BY ALL) a
        ON r.model = a.model AND r.version = a.version AND r.bucket_start = a.bucket_start
        WHEN MATCHED THEN UPDATE SET n_predictions = r.n_predictions + a.n
        WHEN NOT MATCHED THEN INSERT (model, version, bucket_start, n_predictions, n_labeled)
            VALUES (a.model, a.version, a.bucket_start, a.n, 0)"""
    )
    segments.add(con, inserted, labeled=False)


def add_first_labels(con: Any, firsts: str) -> None:
    """Merge predictions that just got their first label into their minutes' statistics.

    `firsts` has model, version, ts, y_pred, y_true, label_ts and label_ingested_at. Counts and sums add; means and centred
    sums of squares combine with the parallel formula (Chan et al.), the same merge
    `ErrorStats.merge` does. A minute with no row yet is recomputed from the raw tables.
    """
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _b AS
        SELECT model, version, bucket_start, count(*)::DOUBLE AS n,
            sum(r * r) AS sq, sum(abs(r)) AS ab, sum(abs(r) / greatest(abs(y), {EPSILON!r})) AS ape,
            sum(CASE WHEN abs(r) <= 1.0 THEN 0.5 * r * r ELSE abs(r) - 0.5 END) AS hub,
            avg(r) AS mr, var_pop(r) * count(*) AS m2r, avg(y) AS my, var_pop(y) * count(*) AS m2y,
            avg(r * r) AS msq, var_pop(r * r) * count(*) AS m2sq, max(lt) AS last_label_at
        FROM (SELECT p.model, p.version, {BUCKET} AS bucket_start, p.y_pred - p.y_true AS r,
                     p.y_true AS y, coalesce(p.label_ts, p.label_ingested_at) AS lt FROM {firsts} p)
        GROUP BY ALL"""
    )
    if _has_thresholds(con):
        con.execute(
            f"""INSERT INTO rollup_good
            SELECT p.model, p.version, {BUCKET} AS bucket_start, s.threshold,
                   count(*) FILTER (WHERE (p.y_pred - p.y_true) * (p.y_pred - p.y_true) <= s.threshold)
            FROM {firsts} p JOIN slo_thresholds s ON s.model = p.model
            GROUP BY ALL
            ON CONFLICT DO UPDATE SET n_good = rollup_good.n_good + EXCLUDED.n_good"""
        )
    if not segments.add(con, firsts, labeled=True):
        segments.refresh(con, f"SELECT p.model, p.version, {BUCKET} AS bucket_start FROM {firsts} p")
    # right-hand sides read the values before the update
    con.execute(
        """UPDATE rollups SET
            n_labeled = rollups.n_labeled + b.n::BIGINT,
            sum_sq = coalesce(rollups.sum_sq, 0) + b.sq,
            sum_abs = coalesce(rollups.sum_abs, 0) + b.ab,
            sum_ape = coalesce(rollups.sum_ape, 0) + b.ape,
            sum_huber = coalesce(rollups.sum_huber, 0) + b.hub,
            mean_r = CASE WHEN rollups.n_labeled = 0 THEN b.mr
                ELSE rollups.mean_r + (b.mr - rollups.mean_r) * b.n / (rollups.n_labeled + b.n) END,
            m2_r = CASE WHEN rollups.n_labeled = 0 THEN b.m2r
                ELSE rollups.m2_r + b.m2r + (b.mr - rollups.mean_r) * (b.mr - rollups.mean_r)
                     * rollups.n_labeled * b.n / (rollups.n_labeled + b.n) END,
            mean_y = CASE WHEN rollups.n_labeled = 0 THEN b.my
                ELSE rollups.mean_y + (b.my - rollups.mean_y) * b.n / (rollups.n_labeled + b.n) END,
            m2_y = CASE WHEN rollups.n_labeled = 0 THEN b.m2y
                ELSE rollups.m2_y + b.m2y + (b.my - rollups.mean_y) * (b.my - rollups.mean_y)
                     * rollups.n_labeled * b.n / (rollups.n_labeled + b.n) END,
            m2_sq = CASE WHEN rollups.n_labeled = 0 THEN b.m2sq
                ELSE rollups.m2_sq + b.m2sq
                     + (b.msq - rollups.sum_sq / rollups.n_labeled) * (b.msq - rollups.sum_sq / rollups.n_labeled)
                     * rollups.n_labeled * b.n / (rollups.n_labeled + b.n) END,
            last_label_at = greatest(rollups.last_label_at, b.last_label_at)
        FROM _b b
        WHERE rollups.model = b.model AND rollups.version = b.version
          AND rollups.bucket_start = b.bucket_start"""
    )
    missing = """SELECT b.model, b.version, b.bucket_start FROM _b b WHERE NOT EXISTS
        (SELECT 1 FROM rollups r WHERE r.model = b.model AND r.version = b.version
         AND r.bucket_start = b.bucket_start)"""
    if con.execute(f"SELECT count(*) FROM ({missing})").fetchall()[0][0]:
        refresh(con, missing)
    con.execute("DROP TABLE IF EXISTS _b")


def window_stats(
    con: Any,
    model: str,
    version: str | None = None,
    since: Any = None,
    until: Any = None,
) -> tuple[int, ErrorStats]:
    """Predictions in [since, until) and the `ErrorStats` of their labeled pairs, from rollups."""
    where = ["model = $model"]
    params: dict[str, Any] = {"model": model}
    if version is not None:
        where.append("version = $version")
        params["version"] = version
    if since is not None:
        where.append("bucket_start >= $since")
        params["since"] = since
    if until is not None:
        where.append("bucket_start < $until")
        params["until"] = until
    row = con.execute(
        f"""WITH r AS (SELECT * FROM rollups WHERE {' AND '.join(where)}),
        g AS (SELECT sum(n_labeled) AS n,
                     sum(n_labeled * mean_r) / sum(n_labeled) AS mr,
                     sum(n_labeled * mean_y) / sum(n_labeled) AS my
              FROM r WHERE n_labeled > 0)
        SELECT (SELECT coalesce(sum(n_predictions), 0) FROM r), g.n,
            sum(r.sum_sq), sum(r.sum_abs), sum(r.sum_ape), sum(r.sum_huber), g.mr,
            sum(r.m2_r + r.n_labeled * (r.mean_r - g.mr) * (r.mean_r - g.mr)), g.my,
            sum(r.m2_y + r.n_labeled * (r.mean_y - g.my) * (r.mean_y - g.my))
        FROM r, g WHERE r.n_labeled > 0 GROUP BY g.n, g.mr, g.my""",
        params,
    ).fetchone()
    if row is None:
        total = con.execute(
            f"SELECT coalesce(sum(n_predictions), 0) FROM rollups WHERE {' AND '.join(where)}", params
        ).fetchone()
        return int(total[0]), ErrorStats()
    n_pred, n, sum_sq, sum_abs, sum_ape, sum_huber, mean_r, m2_r, mean_y, m2_y = row
    return int(n_pred), ErrorStats(
        n=int(n), sum_sq=sum_sq, sum_abs=sum_abs, sum_ape=sum_ape, sum_huber=sum_huber,
        mean_r=mean_r, m2_r=max(m2_r, 0.0), mean_y=mean_y, m2_y=max(m2_y, 0.0),
    )
