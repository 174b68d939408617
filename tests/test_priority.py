"""The server's background threads yield the cores to the answering ones; DuckDB's threads fit the machine."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
from servers import ServerProcess

from msewatch.config import ServerConfig, load_config
from msewatch.errors import InputError
from msewatch.server.priority import BACKGROUND_NICE, run_in_background
from msewatch.store import Store

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own nice value on Linux only")
below_background = pytest.mark.skipif(
    sys.platform.startswith("linux") and os.getpriority(os.PRIO_PROCESS, 0) >= BACKGROUND_NICE,
    reason="the tests run at nice 19 already: a thread lowered to it looks like any other",
)


def _nice(pid: int, tid: int) -> int:
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of stat(5), after "pid (comm)"


def _thread_nices(pid: int) -> dict[int, int]:
    nices = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            nices[int(tid)] = _nice(pid, int(tid))
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return nices


def test_engine_threads_leave_two_cores_to_the_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, threads in ((1, 1), (2, 1), (3, 1), (4, 2), (16, 14)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert ServerConfig().engine_threads() == threads
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert ServerConfig().engine_threads() == 1
    assert ServerConfig(duckdb_threads=5).engine_threads() == 5


def test_duckdb_threads_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "msewatch.toml"
    path.write_text("[server]\nduckdb_threads = 3\n")
    assert load_config(path).server.engine_threads() == 3
    path.write_text("[server]\nduckdb_threads = -1\n")
    with pytest.raises(InputError, match="duckdb_threads"):
        load_config(path)


def test_store_runs_duckdb_on_the_threads_asked(tmp_path: Path) -> None:
    with Store(tmp_path / "a.duckdb", threads=1) as store:
        assert store.con.execute("SELECT current_setting('threads')").fetchone()[0] == 1
    with Store(tmp_path / "a.duckdb", threads=3) as store:
        assert store.con.execute("SELECT current_setting('threads')").fetchone()[0] == 3


@linux_only
@below_background
def test_run_in_background_lowers_only_the_calling_thread() -> None:
    import threading

    seen: dict[str, object] = {}

    def background() -> None:
        seen["lowered"] = run_in_background()
        seen["own"] = _nice(os.getpid(), threading.get_native_id())

    before = _nice(os.getpid(), threading.get_native_id())
    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    assert seen == {"lowered": True, "own": BACKGROUND_NICE}
    assert _nice(os.getpid(), threading.get_native_id()) == before  # the caller's thread only


@linux_only
@below_background
def test_a_running_server_answers_at_normal_priority_and_exports_in_the_background(tmp_path: Path) -> None:
    """A real `msewatch serve` with a lake sink: the lake export is its one thread at nice 19
    (the event loop, the apply thread and the rollup step keep the process's priority), and
    rows posted land in the store, the rollups and the lake (the background keeps up)."""
    import duckdb
    import httpx

    config = tmp_path / "msewatch.toml"
    lake = tmp_path / "lake"
    # no DuckDB worker threads, on any machine
    config.write_text(f"[server]\nduckdb_threads = 1\n\n[sink]\ndir = '{lake}'\nflush_seconds = 1\n")
    with ServerProcess(tmp_path / "s.duckdb", config=config) as server:
        assert server.proc is not None
        pid = server.proc.pid
        rows = "\n".join(f'{{"prediction_id": "p{i}", "ts": "2026-01-01T00:00:00Z", "y_pred": {i}}}' for i in range(500))
        r = httpx.post(server.url + "/v1/predictions", content=rows, headers={"content-type": "application/x-ndjson"})
        assert r.status_code == 200 and r.json()["accepted"] == 500
        deadline = time.monotonic() + 10
        while True:
            nices = _thread_nices(pid)
            background = [tid for tid, nice in nices.items() if nice == BACKGROUND_NICE]
            if background or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert nices[pid] == os.getpriority(os.PRIO_PROCESS, 0)  # the main thread: the event loop
        assert len(background) == 1, nices  # the lake export; the rollup step would make two
        scrape = httpx.get(server.url + "/metrics", timeout=30).text  # waits for the rollup step
        assert re.search(r'^msewatch_predictions_total\{[^}]*\} 500\.0$', scrape, re.MULTILINE), scrape[:3000]
        assert server.stop() in (0, -15), server.log_text()  # SIGTERM: drained, then the signal
    with Store(tmp_path / "s.duckdb", read_only=True) as store:
        assert store.count("predictions") == 500
    exported = duckdb.sql(f"SELECT count(*) FROM read_parquet('{lake}/predictions/**/*.parquet')").fetchall()
    assert exported == [(500,)]
