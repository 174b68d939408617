"""Per-minute rollups stay in step with predictions and label revisions, and agree with the
evaluation of the raw rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from msewatch.evaluate import EvalSpec, run_evaluation
from msewatch.metrics import ErrorStats
from msewatch.sources import from_store
from msewatch.store import Store
from msewatch.store._rollups import window_stats

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
METRICS = ("mse", "mae", "bias", "error_variance", "r2", "mape", "huber")


def _write(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    rng = np.random.default_rng(3)
    n = 3000
    ts = T0 + np.sort(rng.uniform(0, 6 * 3600, n))
    ids = [f"p{i}" for i in range(n)]
    y = 1e6 + rng.normal(0, 5, n)  # a large offset: the centred moments must keep their digits
    preds = _write(
        tmp_path / "p.parquet",
        {
            "prediction_id": ids,
            "ts": pa.array((ts * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
            "model": ["m"] * n,
            "version": np.where(rng.random(n) < 0.5, "v1", "v2"),
            "y_pred": y + rng.normal(0, 2, n),
        },
    )
    labeled = rng.random(n) < 0.8
    labels = _write(
        tmp_path / "l.parquet",
        {
            "prediction_id": [i for i, keep in zip(ids, labeled) if keep],
            "y_true": y[labeled],
            "label_ts": pa.array(((ts[labeled] + 600) * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
        },
    )
    fixed = np.flatnonzero(labeled)[:200]
    corrections = _write(
        tmp_path / "c.parquet",
        {
            "prediction_id": [ids[i] for i in fixed],
            "y_true": y[fixed] + 10.0,
            "label_ts": pa.array(((ts[fixed] + 7200) * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
        },
    )
    s = Store(tmp_path / "s.duckdb")
    # labels first for half of them: rollups must follow predictions that arrive later
    s.ingest_file("labels", labels)
    s.ingest_file("predictions", preds)
    s.ingest_file("labels", corrections)
    yield s
    s.close()


def _close(a: float | None, b: float | None, rel: float) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


@pytest.mark.parametrize("version", [None, "v1", "v2"])
def test_rollups_agree_with_raw_evaluation(store: Store, version: str | None) -> None:
    source = from_store(store)
    (row,) = run_evaluation(source.engine, source.predictions, source.labels, EvalSpec(version=version))
    n_pred, stats = window_stats(store.con, "m", version)
    assert n_pred == row["n_predictions"]
    assert stats.n == row["n_labeled"]
    got = stats.to_dict()
    for name in METRICS:
        # r2 and error variance are ratios of centred sums at a 1e6 offset: 1e-9 holds there too
        assert _close(got[name], row[name], 1e-9), (name, got[name], row[name])


def test_time_range_reads_only_its_minutes(store: Store) -> None:
    since = dt.datetime.fromtimestamp(T0 + 3600, dt.timezone.utc)
    until = dt.datetime.fromtimestamp(T0 + 2 * 3600, dt.timezone.utc)
    source = from_store(store)
    (row,) = run_evaluation(
        source.engine, source.predictions, source.labels, EvalSpec(since=since, until=until)
    )
    n_pred, stats = window_stats(store.con, "m", since=since, until=until)
    assert (n_pred, stats.n) == (row["n_predictions"], row["n_labeled"])
    assert _close(stats.mse, row["mse"], 1e-9)


def test_corrections_replace_their_old_contribution(store: Store) -> None:
    """After the corrections, no rollup carries the first revision of a corrected label."""
    before = store.con.execute(
        "SELECT sum(sum_sq), sum(n_labeled) FROM rollups"
    ).fetchall()[0]
    exact = store.con.execute(
        """SELECT sum((p.y_pred - l.y_true) ^ 2), count(*) FROM predictions p
        JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current"""
    ).fetchall()[0]
    assert before[1] == exact[1]
    assert _close(before[0], exact[0], 1e-12)
    revised = store.con.execute("SELECT count(*) FROM labels WHERE revision = 2").fetchall()[0][0]
    assert revised == 200


def test_unknown_model_is_empty(store: Store) -> None:
    n_pred, stats = window_stats(store.con, "nope")
    assert n_pred == 0
    assert stats == ErrorStats()


def _ingest(s: Store, kind: str, table: pa.Table) -> None:
    table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype="int64")))
    result = s.ingest_batches(kind, table.to_batches())
    assert not result.rejects, result.rejects[:3]


def _snapshot(s: Store) -> tuple[list, list]:
    rows = s.con.execute(
        """SELECT model, version, bucket_start, n_predictions, n_labeled, sum_sq, mean_r, m2_r, m2_sq,
                  last_label_at FROM rollups ORDER BY ALL"""
    ).fetchall()
    good = s.con.execute("SELECT * FROM rollup_good WHERE n_good >= 0 ORDER BY ALL").fetchall()
    return rows, good


def _same_rows(a: list, b: list) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            if isinstance(x, float) or isinstance(y, float):
                assert _close(x, y, 1e-9), (ra, rb)
            else:
                assert x == y, (ra, rb)


def test_incremental_rollups_equal_a_rebuild(tmp_path: Path) -> None:
    """Good-event counts, the spread of r² and the last label time follow every ingest path:
    labels before and after predictions, first labels in chunks, corrections."""
    from msewatch.store import _rollups

    rng = np.random.default_rng(11)
    n = 4000
    ts = T0 + np.sort(rng.uniform(0, 3 * 3600, n))
    ids = np.array([f"q{i}" for i in range(n)])
    y = rng.normal(100, 5, n)
    ts_col = pa.array((ts * 1e6).astype("int64"), pa.timestamp("us", tz="UTC"))
    preds = pa.table({"prediction_id": ids, "ts": ts_col, "model": ["m"] * n,
                      "version": np.where(rng.random(n) < 0.5, "v1", "v2"), "y_pred": y + rng.normal(0, 3, n)})
    label_ts = pa.array(((ts + rng.uniform(60, 7200, n)) * 1e6).astype("int64"), pa.timestamp("us", tz="UTC"))
    labels = pa.table({"prediction_id": ids, "y_true": y, "label_ts": label_ts})
    s = Store(tmp_path / "inc.duckdb")
    s.track_thresholds("m", [4.0, 9.0])
    early = rng.random(n) < 0.2
    _ingest(s, "labels", labels.filter(pa.array(early)))
    for chunk in np.array_split(np.arange(n), 4):
        _ingest(s, "predictions", preds.take(pa.array(chunk)))
    later = np.flatnonzero(~early & (rng.random(n) < 0.9))
    for chunk in np.array_split(later, 3):
        _ingest(s, "labels", labels.take(pa.array(chunk)))
    fixed = later[:150]
    _ingest(s, "labels", pa.table({"prediction_id": ids[fixed], "y_true": y[fixed] + 4.0,
                                          "label_ts": label_ts.take(pa.array(fixed))}))
    incremental = _snapshot(s)
    assert incremental[1], "good counts were kept"
    _rollups.rebuild(s.con)
    rebuilt = _snapshot(s)
    _same_rows(incremental[0], rebuilt[0])
    assert incremental[1] == rebuilt[1]
    # exact good counts against the raw pairs
    exact = s.con.execute(
        """SELECT count(*) FILTER (WHERE (p.y_pred - l.y_true) ^ 2 <= 9.0) FROM predictions p
        JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current"""
    ).fetchall()[0][0]
    assert s.con.execute("SELECT sum(n_good) FROM rollup_good WHERE threshold = 9.0").fetchall()[0][0] == exact
    # a threshold tracked late is backfilled to the same counts
    s.con.execute("DELETE FROM rollup_good WHERE threshold = 9.0")
    s.con.execute("DELETE FROM slo_thresholds WHERE threshold = 9.0")
    assert s.track_thresholds("m", [4.0, 9.0]) == [9.0]
    assert _snapshot(s)[1] == rebuilt[1]
    # the spread of r² per minute is NumPy's
    r2 = s.con.execute(
        """SELECT (p.y_pred - l.y_true) ^ 2 FROM predictions p JOIN labels l
        ON l.prediction_id = p.prediction_id AND l.is_current
        WHERE p.version = 'v1' AND p.ts < to_timestamp($t) + INTERVAL 60 SECOND AND p.ts >= to_timestamp($t)""",
        {"t": T0 + 3600},
    ).fetchnumpy()
    sq = next(iter(r2.values()))
    m2 = s.con.execute("SELECT m2_sq FROM rollups WHERE version = 'v1' AND bucket_start = to_timestamp($t)",
                       {"t": T0 + 3600}).fetchall()[0][0]
    assert _close(m2, float(np.var(sq) * len(sq)), 1e-9)
    s.close()


def test_older_store_gains_the_new_rollup_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    s = Store(path)
    _ingest(s, "predictions", pa.table({"prediction_id": ["a", "b"], "ts": [T0, T0 + 90],
                                               "model": ["m", "m"], "version": ["v", "v"],
                                               "y_pred": [1.0, 2.0]}))
    _ingest(s, "labels", pa.table({"prediction_id": ["a", "b"], "y_true": [0.0, 5.0]}))
    expected = _snapshot(s)[0]
    s.con.execute("ALTER TABLE rollups DROP COLUMN m2_sq")
    s.con.execute("ALTER TABLE rollups DROP COLUMN last_label_at")
    s.close()
    with Store(path) as again:
        _same_rows(_snapshot(again)[0], expected)


def _segment_snapshot(s: Store) -> list:
    return s.con.execute("SELECT * FROM segment_rollups ORDER BY model, version, segment, value, bucket_start").fetchall()


def test_segment_rollups_follow_every_ingest_path(tmp_path: Path) -> None:
    """The hourly per-segment rows after labels before and after predictions, first labels in
    chunks, corrections and a segment column that appears later equal a rebuild and the raw rows."""
    from msewatch.store import _rollups

    rng = np.random.default_rng(5)
    n = 3000
    ts = T0 + np.sort(rng.uniform(0, 5 * 3600, n))
    ids = np.array([f"s{i}" for i in range(n)])
    y = rng.normal(50, 4, n)
    ts_col = pa.array((ts * 1e6).astype("int64"), pa.timestamp("us", tz="UTC"))
    region = np.where(rng.random(n) < 0.1, None, rng.choice(["eu", "us", "o'x"], n))
    preds = pa.table({"prediction_id": ids, "ts": ts_col, "model": ["m"] * n,
                      "version": np.where(rng.random(n) < 0.5, "v1", "v2"), "y_pred": y + rng.normal(0, 2, n),
                      "region": pa.array(region, pa.string())})
    labels = pa.table({"prediction_id": ids, "y_true": y,
                       "label_ts": pa.array(((ts + 900) * 1e6).astype("int64"), pa.timestamp("us", tz="UTC"))})
    s = Store(tmp_path / "seg.duckdb")
    early = rng.random(n) < 0.2
    _ingest(s, "labels", labels.filter(pa.array(early)))
    chunks = np.array_split(np.arange(n), 4)
    for chunk in chunks[:3]:
        _ingest(s, "predictions", preds.take(pa.array(chunk)))
    # the last chunk brings a second segment column: older predictions have no value in it
    last = preds.take(pa.array(chunks[3]))
    _ingest(s, "predictions", last.append_column("tier", pa.array(rng.choice(["a", "b"], last.num_rows))))
    later = np.flatnonzero(~early & (rng.random(n) < 0.85))
    for chunk in np.array_split(later, 3):
        _ingest(s, "labels", labels.take(pa.array(chunk)))
    fixed = later[:120]
    _ingest(s, "labels", pa.table({"prediction_id": ids[fixed], "y_true": y[fixed] - 3.0,
                                   "label_ts": pa.array(((ts[fixed] + 5000) * 1e6).astype("int64"),
                                                        pa.timestamp("us", tz="UTC"))}))
    incremental = _segment_snapshot(s)
    _rollups.rebuild(s.con)
    _same_rows(incremental, _segment_snapshot(s))
    # against the raw rows, computed independently
    raw = s.con.execute(
        """SELECT p.version, p.ts, p.region, p.tier, p.y_pred, l.y_true FROM predictions p
        LEFT JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current"""
    ).fetchall()
    expected: dict[tuple, list] = {}
    for version, t, reg, tier, yp, yt in raw:
        hour = int(t.timestamp()) // 3600 * 3600
        for seg, value in (("region", reg), ("tier", tier)):
            if value is None:
                continue
            acc = expected.setdefault((version, seg, value, hour), [0, 0, 0.0])
            acc[0] += 1
            if yt is not None:
                acc[1] += 1
                acc[2] += (yp - yt) ** 2
    got = {(v, seg, val, int(b.timestamp())): [n_p, n_l, sq] for _, v, seg, val, b, n_p, n_l, sq in incremental}
    assert got.keys() == expected.keys()
    for key, (n_p, n_l, sq) in expected.items():
        assert got[key][:2] == [n_p, n_l], key
        assert _close(got[key][2], sq, 1e-9) if n_l else got[key][2] == 0.0
    s.close()


def test_older_store_gains_the_segment_rollups(tmp_path: Path) -> None:
    path = tmp_path / "old-seg.duckdb"
    s = Store(path)
    _ingest(s, "predictions", pa.table({"prediction_id": ["a", "b"], "ts": [T0, T0 + 90], "model": ["m", "m"],
                                        "version": ["v", "v"], "y_pred": [1.0, 2.0], "region": ["eu", "us"]}))
    _ingest(s, "labels", pa.table({"prediction_id": ["a", "b"], "y_true": [0.0, 5.0]}))
    expected = _segment_snapshot(s)
    assert [r[3] for r in expected] == ["eu", "us"]
    s.con.execute("DROP TABLE segment_rollups")
    s.close()
    with Store(path) as again:
        _same_rows(_segment_snapshot(again), expected)


def _waiting(s: Store) -> list[str]:
    return [r[0] for r in s.con.execute("SELECT prediction_id FROM waiting_labels ORDER BY 1").fetchall()]


def test_waiting_labels_are_the_labeled_ids_without_a_prediction(tmp_path: Path) -> None:
    """A prediction commit pairs its ids with `waiting_labels`, not with every stored label: the
    table must hold exactly the labeled ids that have no prediction, through every label path."""
    from msewatch.store import _rollups

    s = Store(tmp_path / "w.duckdb")
    preds = lambda ids, ts: pa.table({"prediction_id": ids, "ts": ts, "model": ["m"] * len(ids),  # noqa: E731
                                      "version": ["v"] * len(ids), "y_pred": [1.0] * len(ids)})
    _ingest(s, "predictions", preds(["p"], [T0]))
    # first labels: one with its prediction, two waiting, one id twice in the input
    _ingest(s, "labels", pa.table({"prediction_id": ["p", "a", "b", "b"], "y_true": [0.0, 2.0, 3.0, 4.0],
                                   "label_ts": [T0 + 10, T0 + 10, T0 + 10, T0 + 20]}))
    assert _waiting(s) == ["a", "b"]
    # corrections (the path for ids with a stored label) keep each waiting id once
    _ingest(s, "labels", pa.table({"prediction_id": ["a", "p", "c"], "y_true": [5.0, 1.0, 6.0],
                                   "label_ts": [T0 + 30, T0 + 30, T0 + 30]}))
    assert _waiting(s) == ["a", "b", "c"]
    # predictions arriving pair with their waiting labels, which leave the table
    _ingest(s, "predictions", preds(["a", "c", "q"], [T0 + 60, T0 + 61, T0 + 62]))
    assert _waiting(s) == ["b"]
    incremental = _snapshot(s)
    assert sum(r[4] for r in incremental[0]) == 3  # p, a and c are labeled
    _rollups.rebuild(s.con)
    _same_rows(incremental[0], _snapshot(s)[0])
    s.close()


def test_older_store_gains_the_waiting_labels(tmp_path: Path) -> None:
    path = tmp_path / "old-wait.duckdb"
    s = Store(path)
    _ingest(s, "predictions", pa.table({"prediction_id": ["a"], "ts": [T0], "model": ["m"], "version": ["v"],
                                        "y_pred": [1.0]}))
    _ingest(s, "labels", pa.table({"prediction_id": ["a", "x", "x"], "y_true": [0.0, 5.0, 6.0]}))
    s.con.execute("DROP TABLE waiting_labels")
    s.close()
    with Store(path) as again:
        assert _waiting(again) == ["x"]
        _ingest(again, "predictions", pa.table({"prediction_id": ["x"], "ts": [T0 + 60], "model": ["m"],
                                                "version": ["v"], "y_pred": [1.0]}))
        assert _waiting(again) == []
        assert again.con.execute("SELECT sum(n_labeled) FROM rollups").fetchall()[0][0] == 2
