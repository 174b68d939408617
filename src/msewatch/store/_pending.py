"""Committed rows not yet in the rollups, and the step that folds them in.

An ingest commits its predictions and labels (the durable part); the rollups, segment rollups,
good-event counts and `waiting_labels` follow through `apply`, which folds in every row whose
`ingested_at` is past the watermark `rollup_state.applied_through` and moves the watermark, in
the caller's transaction. A file ingest calls it inside its own transaction, so its rollups
commit with its rows. The server answers requests once their rows are committed and runs the
step for many commits at once (its statements are then paid once per step instead of once per
request). After a crash the rows past the watermark are still on disk, and the next step folds
each of them in exactly once.

Which contribution a folded row makes, for the rows past the watermark taken together:
- a new prediction counts into its minute; with a current label (one that waited for it in
  `waiting_labels`, or one that came in the same step) its pair is merged in as a first label;
- a label for an older prediction that had no label (its first revision is 1) merges its pair
  in; one for an older prediction that had a label (a correction) recomputes its minutes;
- a label without any prediction waits in `waiting_labels`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from msewatch.store import _rollups as rollups
from msewatch.store._segment_rollups import _q

__all__ = ["Applied", "apply"]

# A step's newly labelled ids find their predictions through the unique id index, one point
# query each, while they are fewer than the stored predictions / this; else one join scans
# every stored id. Measured in a step on 10M predictions: the join 0.40 s, for 1,000 new labels
# as for 2M; 100 ids looked up 0.18 s for the whole step (0.43 s by the join), 400 ids 0.51 s.
_SCAN_ROWS_PER_LOOKUP = 50_000


@dataclass
class Applied:
    """What one step folded in: row counts, and for the server's counters the new pairs and predictions.

    `pairs` (model, version, pair columns, y_pred, y_true, label_latency_s) are the predictions
    that gained their first label; `inserted` (model, version, pair columns, n) counts the new
    predictions. Both are None unless pair columns were asked for.
    """

    predictions: int = 0
    labels: int = 0
    pairs: pa.Table | None = None
    inserted: pa.Table | None = None


def apply(con: Any, segments: Sequence[str], pair_columns: Sequence[str] | None = None) -> Applied:
    """Fold the rows past the watermark into the rollups; call it inside a transaction.

    `segments` are the stored segment columns (the segment rollups need every one);
    `pair_columns` are the columns the server's counters label pairs and predictions with (the
    stored ones among them are used).
    """
    since = rollups.watermark(con)
    through = rollups.pending_since(con, since)
    if through is None:
        return Applied()
    stored = {c for (c,) in con.execute("SELECT column_name FROM (DESCRIBE predictions)").fetchall()}
    keys = [c for c in pair_columns or () if c in stored]
    kept = ["model", "version", "ts", "y_pred", *dict.fromkeys([*keys, *segments])]  # of each prediction
    cols = ", ".join(_q(c) for c in ["prediction_id", *kept])
    run = lambda sql: con.execute(sql, {"w": since} if "$w" in sql else None).fetchall()
    n_pred = run(f"CREATE OR REPLACE TEMP TABLE _np AS SELECT {cols} FROM predictions WHERE ingested_at > $w")[0][0]
    n_ids = run(
        """CREATE OR REPLACE TEMP TABLE _nl AS SELECT prediction_id, min(revision) AS first_revision,
            count(*) AS n FROM labels WHERE ingested_at > $w GROUP BY prediction_id"""
    )[0][0]
    n_labels = 0
    waited = 0
    if n_ids:
        n_labels = int(con.execute("SELECT sum(n) FROM _nl").fetchall()[0][0])
        # each newly labelled id with its prediction, if any
        p_cols = ", ".join(f"p.{_q(c)}" for c in kept)
        source = _looked_up(con, cols, n_ids)
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _nlp AS
            SELECT n.prediction_id, n.first_revision, {p_cols}, p.ingested_at AS p_ingested_at
            FROM _nl n LEFT JOIN {source} p USING (prediction_id)"""
        )
    if n_pred:
        waited = con.execute(
            "SELECT count(*) FROM _np SEMI JOIN waiting_labels USING (prediction_id)"
        ).fetchall()[0][0]
    # the predictions whose pair enters the rollups now, with their current label
    parts = []
    if n_pred and (waited or n_ids):
        labelled_ids = "SELECT prediction_id FROM waiting_labels" if waited else ""
        if n_ids:
            labelled_ids += (" UNION ALL " if labelled_ids else "") + "SELECT prediction_id FROM _nl"
        parts.append(f"SELECT {cols} FROM _np WHERE prediction_id IN ({labelled_ids})")
    if n_ids:
        parts.append(f"SELECT {cols} FROM _nlp WHERE p_ingested_at <= $w AND first_revision = 1")
    n_firsts = 0
    if parts:
        # a label that waited is older than the watermark; without one, only new labels are read
        newer = "" if waited else " AND l.ingested_at > $w"
        n_firsts = run(
            f"""CREATE OR REPLACE TEMP TABLE _firsts AS
            SELECT c.*, l.y_true, l.label_ts, l.ingested_at AS label_ingested_at
            FROM ({' UNION ALL '.join(parts)}) c
            JOIN labels l ON l.prediction_id = c.prediction_id AND l.is_current{newer}"""
        )[0][0]
    applied = Applied(predictions=int(n_pred), labels=n_labels)
    if pair_columns is not None:
        group = ", ".join(_q(c) for c in ["model", "version", *keys])
        if n_pred:
            # in the order the values arrived: the counters' cap on segment values is first come
            applied.inserted = con.sql(
                f"SELECT {group}, count(*) AS n FROM _np GROUP BY ALL ORDER BY min(rowid)"
            ).to_arrow_table()
        if n_firsts:
            applied.pairs = con.sql(
                f"SELECT {group}, y_pred, y_true, epoch(label_ts) - epoch(ts) AS label_latency_s FROM _firsts "
                "ORDER BY label_ingested_at, rowid"
            ).to_arrow_table()
    if n_pred:
        rollups.add_predictions(con, "_np")
    if n_firsts:
        rollups.add_first_labels(con, "_firsts")
    if n_ids:
        corrected = "FROM _nlp p WHERE p.p_ingested_at <= $w AND p.first_revision > 1"
        if run(f"SELECT count(*) {corrected}")[0][0]:
            # after the adds: a recomputed minute is the raw tables' truth, whatever was added to it
            rollups.refresh(con, f"SELECT p.model, p.version, {rollups.BUCKET} AS bucket_start {corrected}"
                            .replace("$w", _literal(since)))
    if waited:
        con.execute("DELETE FROM waiting_labels WHERE prediction_id IN (SELECT prediction_id FROM _np)")
    if n_ids:
        con.execute(
            """INSERT INTO waiting_labels SELECT prediction_id FROM _nlp
            WHERE p_ingested_at IS NULL AND prediction_id NOT IN (SELECT prediction_id FROM waiting_labels)"""
        )
    rollups.set_watermark(con, through)
    con.execute(
        "DROP TABLE IF EXISTS _np; DROP TABLE IF EXISTS _nl; DROP TABLE IF EXISTS _nlp; DROP TABLE IF EXISTS _firsts; "
        "DROP TABLE IF EXISTS _found"
    )
    return applied


def _looked_up(con: Any, cols: str, n_ids: int) -> str:
    """Where the predictions of the ids in `_nl` are read from: `predictions` (a join scans it
    whole), or `_found`, the rows that point queries through the id index found, when the ids
    are few against the stored predictions."""
    stored = con.execute("SELECT count(*) FROM predictions").fetchall()[0][0]
    if n_ids * _SCAN_ROWS_PER_LOOKUP >= stored:
        return "predictions"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _found AS SELECT {cols}, ingested_at FROM predictions LIMIT 0")
    point = f"SELECT {cols}, ingested_at FROM predictions WHERE prediction_id = ?"  # `?`: 0.44 ms, `$id`: 1.1
    rows = [row for (pid,) in con.execute("SELECT prediction_id FROM _nl").fetchall()
            for row in con.execute(point, [pid]).fetchall()]
    if rows:
        con.executemany(f"INSERT INTO _found VALUES ({', '.join('?' * len(rows[0]))})", rows)
    return "_found"


def _literal(at: dt.datetime) -> str:
    return f"TIMESTAMPTZ '{at.isoformat()}'"
