"""Rollups that follow the commits a step later (the server's group commits) end up exactly where
rollups kept in the same transaction (a file ingest) and a rebuild from the raw rows are, however
the commits are grouped into steps, and across a crash between a commit and its step."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from msewatch.store import Store
from msewatch.store import _rollups as rollups

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
THRESHOLDS = [1.0, 16.0]


def _close(a: object, b: object, rel: float = 1e-9) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)
    return a == b


def _state(s: Store) -> dict[str, list]:
    """Every table the rollup step writes, in a fixed order."""
    return {
        "rollups": s.con.execute("SELECT * EXCLUDE (last_label_at), last_label_at FROM rollups ORDER BY ALL").fetchall(),
        "good": s.con.execute("SELECT * FROM rollup_good WHERE n_good > 0 ORDER BY ALL").fetchall(),
        "segments": s.con.execute("SELECT * FROM segment_rollups ORDER BY ALL").fetchall(),
        "waiting": s.con.execute("SELECT prediction_id FROM waiting_labels ORDER BY ALL").fetchall(),
    }


def _same(a: dict[str, list], b: dict[str, list]) -> None:
    for table, rows in a.items():
        assert len(rows) == len(b[table]), table
        for ra, rb in zip(rows, b[table]):
            assert all(_close(x, y) for x, y in zip(ra, rb)), (table, ra, rb)


def _operations(seed: int) -> list[tuple[str, pa.Table]]:
    """Predictions and labels in every order the service meets: labels before their predictions,
    first labels, corrections with later and with earlier label times, identical re-sends, labels
    for ids that never get a prediction, a segment column that appears later, shadow rows."""
    rng = np.random.default_rng(seed)
    n = 1200
    ids = np.array([f"id{seed}-{i}" for i in range(n)])
    ts = T0 + np.sort(rng.uniform(0, 4 * 3600, n))
    y = rng.normal(20, 3, n)
    y_pred = y + rng.normal(0, 2, n)
    version = rng.choice(["v1", "v2"], n)
    region = np.where(rng.random(n) < 0.1, None, rng.choice(["eu", "us", "o'x"], n))

    def preds(idx: np.ndarray, tier: bool = False) -> pa.Table:
        cols = {"prediction_id": ids[idx], "ts": pa.array((ts[idx] * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
                "model": ["m"] * len(idx), "version": version[idx], "y_pred": y_pred[idx],
                "region": pa.array(region[idx], pa.string())}
        if tier:
            cols["tier"] = rng.choice(["a", "b"], len(idx))
        return pa.table(cols)

    def labels(idx: np.ndarray, shift: float = 0.0, delay: float = 600.0, pids: np.ndarray | None = None) -> pa.Table:
        return pa.table({"prediction_id": ids[idx] if pids is None else pids, "y_true": y[idx] + shift,
                         "label_ts": pa.array(((ts[idx] + delay) * 1e6).astype("int64"), pa.timestamp("us", tz="UTC"))})

    order = rng.permutation(n)
    early, rest = order[:200], order[200:]
    ops: list[tuple[str, pa.Table]] = [("labels", labels(early))]
    for k, chunk in enumerate(np.array_split(rest, 5)):
        ops.append(("predictions", preds(chunk, tier=k >= 3)))
        ops.append(("labels", labels(chunk[: len(chunk) // 2])))
    ops.append(("predictions", preds(early)))
    labelled = np.concatenate([early, *[c[: len(c) // 2] for c in np.array_split(rest, 5)]])
    fixed = rng.choice(labelled, 150, replace=False)
    ops.append(("labels", labels(fixed[:100], shift=5.0, delay=7200.0)))  # corrections, later label time
    ops.append(("labels", labels(fixed[100:], shift=-4.0, delay=60.0)))  # a revision that does not count
    ops.append(("labels", labels(fixed[:40])))  # identical re-sends: duplicates
    ops.append(("labels", labels(order[:30], pids=np.array([f"ghost{seed}-{i}" for i in range(30)]))))
    ops.append(("shadow", preds(order[:50]).drop_columns(["region"])))
    unlabelled = np.setdiff1d(rest, labelled)
    ops.append(("labels", labels(unlabelled[:300])))
    ops.append(("labels", labels(unlabelled[:10], shift=1.0, delay=9000.0)))
    return ops


def _with_rows(table: pa.Table) -> pa.RecordBatch:
    rows = pa.array(np.arange(table.num_rows, dtype="int64"))
    return table.append_column("_row", rows).combine_chunks().to_batches()[0]


@pytest.mark.parametrize("lookups", [False, True], ids=["join", "point-lookups"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_deferred_steps_end_where_the_same_transaction_ends(
    tmp_path: Path, seed: int, lookups: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps now and then fold in what one transaction per ingest does; with `lookups`, every
    step finds the predictions of its new labels by point queries through the id index (a
    large store's small steps do), not by the join."""
    from msewatch.store import _pending

    monkeypatch.setattr(_pending, "_SCAN_ROWS_PER_LOOKUP", 0 if lookups else 10**18)
    ops = _operations(seed)
    same = Store(tmp_path / "same.duckdb")
    later = Store(tmp_path / "later.duckdb")
    for s in (same, later):
        s.track_thresholds("m", THRESHOLDS[:1])
    rng = np.random.default_rng(100 + seed)
    steps = 0
    for i, (kind, table) in enumerate(ops):
        result = same.ingest_batches(kind, [_with_rows(table)])
        assert not result.rejects, result.rejects[:2]
        # the server's path: up to three requests per commit, a step after some commits only
        parts = np.array_split(np.arange(table.num_rows), int(rng.integers(1, 4)))
        group = later.ingest_group(kind, [(_with_rows(table.take(pa.array(p))), len(p)) for p in parts],
                                   defer_rollups=True)
        assert sum(r.accepted for r in group.results) == result.accepted
        assert sum(r.duplicates for r in group.results) == result.duplicates
        if i == len(ops) // 2:
            # a threshold tracked while rows wait is backfilled from the folded rows only
            assert rollups.pending_since(later.con, rollups.watermark(later.con)) is not None
            for s in (same, later):
                s.track_thresholds("m", THRESHOLDS)
        if rng.random() < 0.35:
            later.apply_pending()
            steps += 1
    later.apply_pending()
    assert steps >= 1
    assert rollups.pending_since(later.con, rollups.watermark(later.con)) is None
    expected = _state(same)
    assert expected["rollups"] and expected["good"] and expected["segments"] and expected["waiting"]
    _same(_state(later), expected)
    rollups.rebuild(later.con)
    _same(_state(later), expected)
    for s in (same, later):
        s.close()


def test_rows_a_crash_left_unfolded_are_folded_once(tmp_path: Path) -> None:
    ops = _operations(7)
    path = tmp_path / "crash.duckdb"
    s = Store(path)
    s.track_thresholds("m", THRESHOLDS)
    for kind, table in ops[:6]:
        s.ingest_group(kind, [(_with_rows(table), table.num_rows)], defer_rollups=True)
    applied = s.apply_pending(pair_columns=["region"])
    assert applied.predictions > 0 and applied.labels > 0
    assert applied.pairs is not None and applied.inserted is not None
    assert int(pa.compute.sum(applied.inserted.column("n")).as_py()) == applied.predictions
    assert s.apply_pending().predictions == 0  # a second step finds nothing
    for kind, table in ops[6:]:
        s.ingest_group(kind, [(_with_rows(table), table.num_rows)], defer_rollups=True)
    unfolded = s.unfolded_rows()
    assert unfolded > 0
    folded = s.con.execute("SELECT sum(n_predictions), sum(n_labeled) FROM rollups").fetchall()[0]
    s.close()  # committed, never folded in: what a kill -9 after the answers leaves

    with Store(path, read_only=True) as seen:  # a reader sees the rollups as they were, and is told
        assert seen.unfolded_rows() == unfolded
        assert seen.con.execute("SELECT sum(n_predictions), sum(n_labeled) FROM rollups").fetchall()[0] == folded
    again = Store(path)  # a write-open folds them in
    assert again.unfolded_rows() == 0
    after = _state(again)
    rollups.rebuild(again.con)
    _same(_state(again), after)
    # a file ingest then folds in its own rows only
    n_before = again.con.execute("SELECT sum(n_predictions) FROM rollups").fetchall()[0][0]
    extra = pa.table({"prediction_id": ["late-1"], "ts": [T0 + 10.0], "model": ["m"], "version": ["v1"],
                      "y_pred": [3.0]})
    again.ingest_batches("predictions", [_with_rows(extra)])
    assert again.con.execute("SELECT sum(n_predictions) FROM rollups").fetchall()[0][0] == n_before + 1
    again.close()


def test_the_server_answers_before_the_step_and_readers_wait_for_it(tmp_path: Path) -> None:
    """Through the server's committer: an answered request is in the rollups once a reader
    settles; while steps fail, readers do not hang, and the next good step folds everything in."""
    from msewatch.config import Config, ServerConfig
    from msewatch.server.committer import Committer
    from msewatch.server.exposition import QualityCollector

    config = Config(server=ServerConfig(rollup_delay_ms=60_000, rollup_rows=10**9))  # steps only on demand
    store = Store(tmp_path / "srv.duckdb")
    committer = Committer(store, config, QualityCollector(config))
    reads = store.reader()
    try:
        ops = _operations(9)
        for kind, table in ops[:4]:
            committer.submit(kind, _with_rows(table), table.num_rows).result(timeout=30)
        assert reads.unfolded_rows() > 0  # answered, not folded in yet
        assert committer.settle(timeout=30)
        assert reads.unfolded_rows() == 0
        # a step that cannot run (its watermark table is gone): readers get an answer at once
        store.reader().con.execute("ALTER TABLE rollup_state RENAME TO rollup_state_away")
        kind, table = ops[4]
        committer.submit(kind, _with_rows(table), table.num_rows).result(timeout=30)
        started = time.monotonic()
        assert not committer.settle(timeout=20)
        assert time.monotonic() - started < 10
        store.reader().con.execute("ALTER TABLE rollup_state_away RENAME TO rollup_state")
        deadline = time.monotonic() + 30
        while not committer.settle(timeout=1) and time.monotonic() < deadline:
            time.sleep(0.5)  # the failed step is retried after a pause
        assert reads.unfolded_rows() == 0
        folded = _state(reads)
    finally:
        reads.close()
        committer.close()
    with Store(tmp_path / "srv.duckdb") as again:
        rollups.rebuild(again.con)
        _same(_state(again), folded)
