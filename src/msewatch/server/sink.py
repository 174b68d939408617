"""`msewatch serve --sink DIR`: a thread that follows the store's commits into the Parquet lake.

The commit thread only counts what it committed (`notify`); this thread exports in batches
(every `flush_seconds`, or once `flush_rows` wait) through its own read cursor, so ingest
never waits on Parquet or the lake's disk. A failed export is logged and retried with
backoff; the rows stay in the store, and the lake's watermark says where to resume, so a
request's answer depends on the store alone. `close()` (SIGTERM's drain) exports what is left.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from msewatch.config import SinkConfig
from msewatch.errors import InputError
from msewatch.lake import TABLES, LakeWriter, store_id
from msewatch.server.priority import run_in_background
from msewatch.store import Store

__all__ = ["LakeSink"]

log = logging.getLogger("msewatch.lake")

_MAX_BACKOFF = 300.0
_PROGRESS_EVERY = 5.0


class LakeSink:
    """Appends what the store commits to `config.dir`; build it before the commit thread starts."""

    def __init__(self, store: Store, config: SinkConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.sid = store_id(store.con)  # a write: here, before the commit thread owns the store
        self.reads = store.reader()
        self.writer: LakeWriter | None = None
        self._cond = threading.Condition()
        self._rows = 0  # rows committed since the last export began
        self._since: float | None = time.monotonic()  # oldest commit not yet exported (catch-up first)
        self._not_before = 0.0  # after a failure: no retry before this
        self._closing = False
        self._failures = 0
        self.rows_total = Counter(
            "msewatch_lake_rows_total", "Rows this server wrote to the Parquet lake, by table.", ["table"],
            registry=registry,
        )
        for table in TABLES:
            self.rows_total.labels(table)
        lag = Gauge(
            "msewatch_lake_lag_seconds", "Age of the oldest commit not yet in the Parquet lake (0: caught up).",
            registry=registry,
        )
        lag.set_function(self.lag_seconds)
        self._thread = threading.Thread(target=self._run, name="msewatch-lake", daemon=True)
        self._thread.start()

    def lag_seconds(self) -> float:
        since = self._since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def notify(self, rows: int) -> None:
        """Called by the commit thread after a commit that stored `rows` rows."""
        if rows <= 0:
            return
        with self._cond:
            self._rows += rows
            if self._since is None:
                self._since = time.monotonic()
            if self._rows >= max(1, self.config.flush_rows):
                self._cond.notify()

    def close(self) -> None:
        """Export what is committed, stop the thread, release the read cursor."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self.reads.close()

    # -- the sink thread --------------------------------------------------------------------------
    def _wait(self) -> bool:
        """Until an export is due; whether the server is closing."""
        with self._cond:
            while not self._closing:
                now = time.monotonic()
                if self.writer is None and self._not_before <= now:  # start: catch up at once
                    break
                due = None if self._since is None else self._since + self.config.flush_seconds
                if self._rows and self._rows >= self.config.flush_rows:
                    due = now
                if due is not None:
                    due = max(due, self._not_before)
                    if due <= now:
                        break
                self._cond.wait(None if due is None else due - now)
            return self._closing

    def _run(self) -> None:
        run_in_background()  # the rows wait in the store meanwhile: never ahead of the answers
        while True:
            closing = self._wait()
            with self._cond:
                mark, self._since, self._rows = self._since, None, 0
            try:
                self._export()
                self._failures = 0
            except InputError as exc:  # not this store's lake, or rewritten: retrying cannot help
                log.error("lake sink stopped: %s", exc)
                return
            except Exception as exc:  # noqa: BLE001 (disk full, permissions…: logged, retried; ingest goes on)
                self._failures += 1
                wait = min(_MAX_BACKOFF, max(1.0, self.config.flush_seconds) * 2 ** (self._failures - 1))
                log.error("writing the lake %s failed (%s); retrying in %.0f s", self.config.dir, exc, wait)
                with self._cond:
                    self._since = mark if self._since is None or mark is None else min(mark, self._since)
                    self._not_before = time.monotonic() + wait
                if closing:
                    log.error("the lake misses rows committed since its last export: the next start exports them")
            if closing:
                return

    def _export(self) -> None:
        if self.writer is None:
            self.writer = LakeWriter(self.reads.con, self.config.dir, self.sid, round_rows=self.config.flush_rows)
            backlog = self.writer.backlog()
            if backlog:
                log.info("lake catch-up: %d rows of the store are not in %s yet; exporting them", backlog, self.config.dir)
            self._catch_up(backlog)
            return
        self._catch_up(0)

    def _catch_up(self, backlog: int) -> None:
        writer = self.writer
        assert writer is not None
        done, shown = 0, time.monotonic()
        while True:
            before = dict(writer.written)
            scanned, _ = writer.round()
            for table in TABLES:
                if writer.written[table] > before[table]:
                    self.rows_total.labels(table).inc(writer.written[table] - before[table])
            if not scanned:
                break
            done += scanned
            if backlog and time.monotonic() - shown >= _PROGRESS_EVERY:
                log.info("lake catch-up: %d of %d rows exported", min(done, backlog), backlog)
                shown = time.monotonic()
        if backlog:
            log.info("lake catch-up done: %d rows exported to %s", done, self.config.dir)
