"""The Parquet lake (`msewatch export`, `msewatch serve --sink`): the lake read back equals the store.

Equality is checked row for row with DuckDB over real files: the store's predictions (every
segment and feature column), every label revision and the shadow predictions, against
`read_parquet` over the lake, with no duplicates, nothing missing, and no temporary file a
`*.parquet` glob could see; including after crashes in the middle of an export (simulated in
process, deterministically) and `kill -9` of a server under SDK load.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from conftest import assert_usage_error, write_parquet
from servers import ServerProcess

from msewatch.client import Client
from msewatch.lake import LakeWriter, _PartitionFiles, hive_escape, store_id
from msewatch.store import Store

HOSTILE = ["a/b", "x=y", "..", ".hidden", "_under", "100%", "ünïcødé 模型", "tab\there", "q?#*:", "m" * 600]


def ingest(store: Store, kind: str, path: Path, data: dict[str, Any]) -> None:
    store.ingest_file(kind, write_parquet(path, data))  # type: ignore[arg-type]


def predictions(ids: range, models: list[str] | None = None, **extra: list[Any]) -> dict[str, Any]:
    models = models or ["pricing", "eta"]
    return {
        "prediction_id": [f"p{i}" for i in ids],
        "ts": [1_717_200_000 + i * 5_000 for i in ids],  # spans days
        "model": [models[i % len(models)] for i in ids],
        "version": [f"v{i % 2}" for i in ids],
        "y_pred": [i / 7 for i in ids],
        **extra,
    }


def assert_lake_is_store(db: Path | str, lake: Path) -> dict[str, int]:
    """Row-for-row equality of every table (after the store closed); the row counts."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"ATTACH '{db}' AS s (READ_ONLY)")
    counts = {}
    for table, cols in (
        ("predictions", None),
        ("labels", "prediction_id, y_true, label_ts, revision, ingested_at, source"),
        ("shadow_predictions", None),
    ):
        if cols is None:
            cols = ", ".join(f'"{c}"' for (c,) in con.execute(
                f"SELECT column_name FROM duckdb_columns() WHERE database_name = 's' AND table_name = '{table}'"
            ).fetchall())
        files = list((lake / table).glob("**/*.parquet"))
        (n_store,), = con.execute(f"SELECT count(*) FROM s.{table}").fetchall()
        counts[table] = n_store
        if not files:
            assert n_store == 0, f"{table}: the lake has no file, the store {n_store} rows"
            continue
        lake_sql = (f"SELECT {cols} FROM read_parquet('{lake}/{table}/**/*.parquet', "
                    "union_by_name = true, hive_partitioning = false)")
        (n_lake,), = con.execute(f"SELECT count(*) FROM ({lake_sql})").fetchall()
        missing = con.execute(f"SELECT {cols} FROM s.{table} EXCEPT ALL {lake_sql} LIMIT 3").fetchall()
        extra = con.execute(f"{lake_sql} EXCEPT ALL SELECT {cols} FROM s.{table} LIMIT 3").fetchall()
        assert not missing and not extra, f"{table}: missing {missing}, extra {extra}"
        assert n_lake == n_store, f"{table}: {n_lake} rows in the lake, {n_store} in the store"
    return counts


def lake_files(lake: Path) -> dict[str, float]:
    return {str(p.relative_to(lake)): p.stat().st_mtime_ns for p in lake.rglob("*") if p.is_file()}


def export(db: Path, lake: Path, **kw: Any) -> dict[str, int]:
    with Store(db) as store:
        return LakeWriter(store.con, lake, store_id(store.con), **kw).export()


# -- export: round trip, incremental, labels --------------------------------------------------------
def test_round_trip_incremental_and_rerun_is_a_no_op(tmp_path: Path) -> None:
    db, lake = tmp_path / "s.duckdb", tmp_path / "lake"
    with Store(db) as store:
        ingest(store, "labels", tmp_path / "l0.parquet", {"prediction_id": ["p1", "p2"], "y_true": [1.0, 2.0]})  # first
        ingest(store, "predictions", tmp_path / "p0.parquet", predictions(range(300), region=["eu", "us", "ap"] * 100))
        ingest(store, "labels", tmp_path / "l1.parquet", {
            "prediction_id": ["p1", "p3", "p3", "p4"], "y_true": [1.5, 3.0, 3.5, 4.0],
            "label_ts": ["2024-06-02T00:00:00Z", "2024-06-03T00:00:00Z", "2024-06-01T00:00:00Z", None],
        })
        ingest(store, "shadow", tmp_path / "s0.parquet", {**predictions(range(50)), "version": ["cand"] * 50})
    assert export(db, lake, rows_per_file=5) == {"predictions": 300, "labels": 6, "shadow_predictions": 50}
    assert_lake_is_store(db, lake)
    first = lake_files(lake)
    assert any("-1.parquet" in f for f in first), "rows_per_file splits a partition into several files"
    assert (lake / "predictions" / "model=pricing").is_dir() and (lake / "labels").is_dir()

    # the same lake read with Hive partitioning: model and day from the path agree with the files
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    bad = con.execute(
        f"""SELECT count(*) FROM read_parquet('{lake}/predictions/**/*.parquet', hive_partitioning = true)
        WHERE day <> CAST(ts AS DATE)"""
    ).fetchall()
    assert bad == [(0,)]
    # the reader's rule for the current label (latest label_ts, null oldest, then revision) is the store's
    current = con.execute(
        f"""SELECT prediction_id, arg_max(y_true, (coalesce(label_ts, TIMESTAMPTZ '0001-01-01'), revision))
        FROM read_parquet('{lake}/labels/**/*.parquet') GROUP BY ALL ORDER BY 1"""
    ).fetchall()
    stored = duckdb.connect(str(db), read_only=True).execute(
        "SELECT prediction_id, y_true FROM labels WHERE is_current ORDER BY 1"
    ).fetchall()
    assert current == stored and ("p3", 3.0) in current and ("p1", 1.5) in current

    # a re-run writes nothing and touches no file
    assert export(db, lake) == {"predictions": 0, "labels": 0, "shadow_predictions": 0}
    assert lake_files(lake) == {**first, "_msewatch_lake.json": lake_files(lake)["_msewatch_lake.json"]}

    # new rows (with a new feature column, and a correction of a label): only they are written
    with Store(db) as store:
        ingest(store, "predictions", tmp_path / "p1.parquet", predictions(range(300, 400), score=[1.0] * 100))
        ingest(store, "labels", tmp_path / "l2.parquet", {"prediction_id": ["p1", "p350"], "y_true": [9.0, 1.0]})
    assert export(db, lake) == {"predictions": 100, "labels": 2, "shadow_predictions": 0}
    after = lake_files(lake)
    assert all(after[f] == t for f, t in first.items() if f != "_msewatch_lake.json"), "old files were rewritten"
    assert len(after) > len(first)
    assert_lake_is_store(db, lake)


def test_hostile_model_names_stay_inside_their_partition(tmp_path: Path) -> None:
    db, lake = tmp_path / "s.duckdb", tmp_path / "lake"
    with Store(db) as store:
        ingest(store, "predictions", tmp_path / "p.parquet", predictions(range(len(HOSTILE) * 3), models=HOSTILE))
    export(db, lake)
    assert_lake_is_store(db, lake)
    models = {p.name for p in (lake / "predictions").iterdir()}
    assert len(models) == len(HOSTILE), models
    assert all(m.startswith("model=") and "/" not in m and len(m.encode()) < 255 for m in models)
    assert "model=a%2Fb" in models and "model=x%3Dy" in models and "model=%2E." in models
    assert "model=%5Funder" in models and "model=100%25" in models and "model=ünïcødé 模型" in models
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and lake not in p.parents and p.suffix != ".duckdb"]
    assert [p.name for p in outside] == ["p.parquet"], outside
    assert all(len(p.relative_to(lake).parts) == 4 for p in lake.glob("predictions/**/*.parquet"))
    # Hive readers decode the path back to the model (all but the name too long for a file name)
    con = duckdb.connect()
    decoded = {m for (m,) in con.execute(
        f"SELECT DISTINCT model FROM read_parquet('{lake}/predictions/**/*.parquet', hive_partitioning = true)"
    ).fetchall()}
    long = [m for m in decoded if m.startswith("mmm")]
    assert len(long) == 1 and decoded - set(long) == set(HOSTILE) - {"m" * 600}
    assert hive_escape("") == "__HIVE_DEFAULT_PARTITION__" and hive_escape("\n") == "%0A"


# -- crash safety, in process ---------------------------------------------------------------------
def test_a_crash_in_the_middle_of_a_round_is_redone_under_the_same_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, lake = tmp_path / "s.duckdb", tmp_path / "lake"
    with Store(db) as store:
        ingest(store, "predictions", tmp_path / "p.parquet", predictions(range(400)))
        ingest(store, "labels", tmp_path / "l.parquet", {"prediction_id": [f"p{i}" for i in range(0, 400, 3)],
                                                        "y_true": [1.0] * 134})
    real = _PartitionFiles._finish_file
    calls = {"n": 0}

    def dies_at_the_fifth_file(self: _PartitionFiles) -> None:
        if self.writer is not None or self.buffer:
            calls["n"] += 1
            if calls["n"] == 5:
                raise OSError(28, "No space left on device")
        real(self)

    monkeypatch.setattr(_PartitionFiles, "_finish_file", dies_at_the_fifth_file)
    with pytest.raises(OSError, match="No space"):
        export(db, lake, rows_per_file=40)
    monkeypatch.undo()
    visible = list(lake.glob("**/*.parquet"))
    assert len(visible) == 4  # the round is half written; the state file says it is pending
    with Store(db) as store:  # more rows commit before the restart: the redo must not take them
        ingest(store, "predictions", tmp_path / "p2.parquet", predictions(range(400, 450)))
    assert export(db, lake, rows_per_file=1000)["predictions"] == 450  # pending rows_per_file (40) is kept
    assert_lake_is_store(db, lake)
    assert {str(p) for p in visible} <= {str(p) for p in lake.glob("**/*.parquet")}  # replaced, not doubled
    assert not [p for p in lake.rglob("*") if p.name.startswith("_tmp-")]

    # a crash after the files, before the watermark moved: the redo rewrites the same files
    with Store(db) as store:
        ingest(store, "labels", tmp_path / "l2.parquet", {"prediction_id": ["p1", "p2"], "y_true": [5.0, 6.0]})
    saves = {"n": 0}
    real_save = LakeWriter._save

    def dies_at_the_second_save(self: LakeWriter, state: dict[str, Any]) -> None:
        saves["n"] += 1
        if saves["n"] == 2:
            raise OSError(5, "I/O error")
        real_save(self, state)

    monkeypatch.setattr(LakeWriter, "_save", dies_at_the_second_save)
    with pytest.raises(OSError):
        export(db, lake)
    monkeypatch.undo()
    assert export(db, lake) == {"predictions": 0, "labels": 2, "shadow_predictions": 0}
    assert_lake_is_store(db, lake)


# -- the command ----------------------------------------------------------------------------------
def test_export_command_errors_filters_and_full(tmp_path: Path, main_in_process: Any) -> None:
    run = main_in_process
    db = tmp_path / "s.duckdb"
    with Store(db) as store:
        ingest(store, "predictions", tmp_path / "p.parquet", predictions(range(100)))
    assert_usage_error(run("export", "--db", "missing.duckdb", "--out", "lake"), "no such store")
    (tmp_path / "afile").write_text("x")
    assert_usage_error(run("export", "--db", db, "--out", "afile"), "is a file")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    assert_usage_error(run("export", "--db", db, "--out", "junk"), "not empty")
    assert_usage_error(run("export", "--db", db, "--out", "l", "--since", "yesterday-ish"), "--since")

    ok = run("export", "--db", db, "--out", "lake", "--model", "eta", "--since", "2024-06-01T12:00:00Z")
    assert ok.returncode == 0, ok
    n_eta = duckdb.connect(str(db), read_only=True).execute(
        "SELECT count(*) FROM predictions WHERE model = 'eta' AND ts >= '2024-06-01T12:00:00Z'"
    ).fetchall()[0][0]
    assert f"exported {n_eta} predictions" in ok.stderr
    assert {p.name for p in (tmp_path / "lake" / "predictions").iterdir()} == {"model=eta"}
    assert_usage_error(run("export", "--db", db, "--out", "lake", "--model", "pricing"), "--full")
    again = run("export", "--db", db, "--out", "lake")  # no filters: the lake's own
    assert again.returncode == 0 and "exported 0 predictions" in again.stderr, again

    other = tmp_path / "other.duckdb"
    with Store(other) as store:
        ingest(store, "predictions", tmp_path / "p.parquet", predictions(range(100)))
    assert_usage_error(run("export", "--db", other, "--out", "lake"), "another store")

    full = run("export", "--db", db, "--out", "lake", "--full")
    assert full.returncode == 0 and "exported 100 predictions" in full.stderr, full
    assert_lake_is_store(db, tmp_path / "lake")
    usage = run("export", "--help")
    assert "model=<model>/day=<YYYY-MM-DD>" in usage.stdout and "read_parquet" in usage.stdout


# -- the server ----------------------------------------------------------------------------------
def sink_config(tmp_path: Path, flush_seconds: int) -> Path:
    path = tmp_path / "msewatch.toml"
    path.write_text(f"[sink]\nflush_seconds = {flush_seconds}\n")
    return path


class SdkLoad(threading.Thread):
    """A model server logging predictions and labels (some corrected) through the SDK."""

    def __init__(self, k: int, url: str, spool: Path, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.k, self.stop_event = k, stop
        self.client = Client(url, model=HOSTILE[k], version="v1", batch_size=100, flush_interval=0.05,
                             max_retries=1000, backoff=0.02, max_backoff=0.2, spool_dir=spool)

    def run(self) -> None:
        rnd = random.Random(self.k)
        i = 0
        while not self.stop_event.is_set():
            pid = self.client.log_prediction(rnd.random(), prediction_id=f"k{self.k}-{i}", region=rnd.choice("ab"))
            if i % 3 == 0:
                self.client.log_label(pid, rnd.random())
            i += 1
            if i % 25 == 0:  # about 2,000 predictions a second
                time.sleep(0.01)
        self.client.close(timeout=3)  # what it spooled while the server was down may stay there


def test_kill_9_under_sdk_load_then_restart_leaves_lake_equal_to_store(tmp_path: Path) -> None:
    db, lake = tmp_path / "s.duckdb", tmp_path / "lake"
    server = ServerProcess(db, config=sink_config(tmp_path, 0), extra_args=["--sink", str(lake)])
    server.start()
    stop = threading.Event()
    loads = [SdkLoad(k, server.url, tmp_path / f"spool{k}", stop) for k in range(3)]
    rnd = random.Random(7)
    try:
        for load in loads:
            load.start()
        for _ in range(3):
            time.sleep(rnd.uniform(0.5, 1.2))
            server.kill()
            visible = list(lake.glob("**/*.parquet"))
            assert all(p.name.startswith("part-") for p in visible)
            server.start()
        time.sleep(1.0)
        stop.set()
        for load in loads:
            load.join(90)
            assert not load.is_alive()
        assert server.stop() in (0, -15), server.log_text()
    finally:
        stop.set()
        server.__exit__(None, None, None)
    assert "Traceback" not in server.log_text(), server.log_text()
    counts = assert_lake_is_store(db, lake)
    assert counts["predictions"] > 1000 and counts["labels"] > 300, counts
    assert not [p for p in lake.rglob("*") if p.name.startswith("_tmp-")], "a temp file survived the restarts"


def test_catch_up_on_start_metrics_and_sigterm_flush(tmp_path: Path) -> None:
    db, lake = tmp_path / "s.duckdb", tmp_path / "lake"
    with Store(db) as store:  # rows from before the sink existed: exported first
        ingest(store, "predictions", tmp_path / "p.parquet", predictions(range(500)))
    server = ServerProcess(db, config=sink_config(tmp_path, 600), extra_args=["--sink", str(lake)])
    with server:
        deadline = time.monotonic() + 20
        exported = 'msewatch_lake_rows_total{table="predictions"} 500.0'
        # the counter moves once the export is done, a little after its file appears
        while exported not in httpx.get(server.url + "/metrics").text:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        assert list(lake.glob("predictions/**/*.parquet"))
        body = "\n".join(f'{{"prediction_id": "h{i}", "ts": 1717200000, "model": "eta", "version": "v", "y_pred": 1}}'
                         for i in range(50))
        r = httpx.post(server.url + "/v1/predictions", content=body, headers={"content-type": "application/x-ndjson"})
        assert r.status_code == 200 and r.json()["accepted"] == 50
        metrics = httpx.get(server.url + "/metrics").text
        assert 'msewatch_lake_rows_total{table="predictions"} 500.0' in metrics, metrics
        lag = next(line for line in metrics.splitlines() if line.startswith("msewatch_lake_lag_seconds "))
        assert float(lag.split()[1]) > 0  # 50 rows wait for the flush (600 s away)
        assert server.stop() in (0, -15)  # SIGTERM: the drain exports them
    assert assert_lake_is_store(db, lake)["predictions"] == 550
    assert_usage_error_in_log = ServerProcess(tmp_path / "other.duckdb", extra_args=["--sink", str(lake)])
    with pytest.raises(RuntimeError, match="another store"):
        assert_usage_error_in_log.start()
    assert_usage_error_in_log.kill()


def test_hive_escape_round_trips_through_url_decoding() -> None:
    from urllib.parse import unquote

    for name in [*HOSTILE[:-1], "%41", "a b", "=", "/", "\x01"]:
        escaped = hive_escape(name)
        assert "/" not in escaped and unquote(escaped) == name


def test_sink_failures_are_retried_and_never_reach_the_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from msewatch.config import SinkConfig
    from msewatch.server.sink import LakeSink

    db, lake = tmp_path / "s.duckdb", tmp_path / "lake"
    real = _PartitionFiles._finish_file
    failures = {"n": 0}

    def disk_full_once(self: _PartitionFiles) -> None:
        if (self.writer is not None or self.buffer) and not failures["n"]:
            failures["n"] += 1
            raise OSError(28, "No space left on device")
        real(self)

    monkeypatch.setattr(_PartitionFiles, "_finish_file", disk_full_once)
    store = Store(db)
    ingest(store, "predictions", tmp_path / "p0.parquet", predictions(range(100)))
    sink = LakeSink(store, SinkConfig(dir=str(lake), flush_seconds=0, flush_rows=10))
    ingest(store, "predictions", tmp_path / "p1.parquet", predictions(range(100, 150)))  # commits go on
    sink.notify(50)
    deadline = time.monotonic() + 20
    while sink.writer is None or sink.writer.state["tables"]["predictions"]["rows"] < 150 or sink.lag_seconds():
        assert time.monotonic() < deadline, "the sink never recovered"
        time.sleep(0.05)
    assert failures["n"] == 1
    ingest(store, "labels", tmp_path / "l.parquet", {"prediction_id": ["p1"], "y_true": [1.0]})
    sink.notify(1)
    sink.close()  # the drain exports the label
    store.close()
    assert assert_lake_is_store(db, lake) == {"predictions": 150, "labels": 1, "shadow_predictions": 0}
