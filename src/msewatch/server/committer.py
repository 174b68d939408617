"""Group commit: concurrent requests share one durable write, and one thread owns the store's.

A request's records wait in a bounded queue (counted in rows). The answer thread takes every
waiting request of one kind, up to `max_group_rows`, as a group. When the group is provably
all new and valid (`store._fast_path`), it is appended to the store's journal (fsync) and
every request is answered: accepted. The apply thread then commits the journal's records to
DuckDB's tables in order, so a checkpoint that holds up DuckDB's commits does not hold up the
answers. Any other group (a re-sent id, a doubtful value, shadow rows) waits until the records
before it are applied and is committed by the apply thread as one transaction, with each
request answered by its own outcome. Either way a request is answered only once its rows are
on disk. Rows wait, counted against the queue's bound, until they are in the tables; when
the queue is full, `submit` raises `Overloaded` (HTTP 429). A store in memory has no journal:
every group takes the second way.

A commit holds the rows only. The rollups, `waiting_labels` and the /metrics counters follow in
a step (`Store.apply_pending`) that a second thread runs on its own connection for many commits
at once, beside the commits (DuckDB runs both transactions at the same time; they write
different tables): once `rollup_delay_ms` passed since the oldest commit it has not folded in,
once `rollup_rows` rows wait, and at once when a reader asks (`settle`), so the dashboard, the
monitor and a /metrics scrape see every answered request. Committed rows are durable either
way: after a crash, opening the store folds in what the last step had not.

If a group fails as a whole, each of its requests is retried alone, so one request that trips
the engine cannot fail the others. A journal record that fails to apply is retried (it was
answered for; a restart applies it too). `close()` stops taking requests, answers and applies
what is queued, then closes the store (SIGTERM drains this way). With a lake sink, each commit is counted to
it and its final export runs after the last commit, before the store closes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from msewatch.config import Config
from msewatch.errors import MsewatchError
from msewatch.schema import ColumnMap, Kind
from msewatch.server.exposition import QualityCollector
from msewatch.server.sink import LakeSink
from msewatch.store import IngestResult, Store
from msewatch.store._fast_path import FastPath, Prepared

__all__ = ["Committer", "Overloaded", "Prepared", "ShuttingDown"]

log = logging.getLogger("msewatch.server")

_CONTRACT_NAMES = frozenset(ColumnMap().source_names().values())
_CONTRACT = {n.casefold() for n in _CONTRACT_NAMES} | {"source", "ingested_at"}
_LABEL_FIELDS = {"prediction_id", "y_true", "label_ts"}
_SHADOW_FIELDS = {"prediction_id", "ts", "model", "version", "y_pred"}
_STEP_RETRY = 5.0
_APPLY_DELAY = 0.05  # answered records wait this long for more to share a transaction


class Overloaded(Exception):
    """The ingest queue is full; retry later."""


class ShuttingDown(Exception):
    """The server is draining and takes no new requests."""


@dataclass
class _Pending:
    kind: Kind
    batch: pa.RecordBatch
    count: int
    prepared: Prepared | None = None  # proven and hashed (`FastPath.prepare`), if it could be
    future: Future[IngestResult] = field(default_factory=Future)


@dataclass
class _Record:
    """A journaled group, answered, for the apply thread."""

    seq: int
    kind: Kind
    batch: pa.RecordBatch


@dataclass
class _Exact:
    """A group for the exact path: the apply thread commits it and answers its requests."""

    group: list[_Pending]
    done: threading.Event = field(default_factory=threading.Event)
    hashes: list[np.ndarray] = field(default_factory=list)  # of the ids it stored


class Committer:
    def __init__(self, store: Store, config: Config, collector: QualityCollector, sink: LakeSink | None = None) -> None:
        self.store = store
        self.sink = sink  # told of every commit; flushed before the store closes
        self.config = config
        self.collector = collector
        self.max_pending = config.server.max_pending_rows
        self.max_group = config.server.max_group_rows
        self.delay = config.server.commit_delay_ms / 1000
        self.rollup_delay = config.server.rollup_delay_ms / 1000
        self.rollup_rows = config.server.rollup_rows
        self._committed_rows = 0  # rows committed for the rollups (not shadow rows), ever
        self._applied_rows = 0  # of which folded into the rollups
        self._unapplied_since: float | None = time.monotonic()  # the oldest commit not folded in
        self._applied_commits = 0  # commits folded in (a commit's number is its count in `commits`)
        self._settle_wanted = False
        self._step_not_before = 0.0  # after a failed step: no retry before this
        self._step_failing = False  # the last step failed: readers do not wait for the next
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0  # rows in `_queue`
        self._pending_rows = 0  # rows queued or in the group being answered (bounded by max_pending)
        self._unapplied_rows = 0  # rows answered from the journal, not in the tables yet (bounded too)
        self._applying: collections.deque[_Record | _Exact] = collections.deque()
        self._answered_seq = self._applied_seq = 0  # journal records answered for / in the tables
        self._apply_wanted = False  # a reader waits for the tables
        self._cond = threading.Condition()
        self._closing = False
        self._answers_done = False
        self._known = dict(store.extra_columns())
        self.commits = 0
        self.journal = store.open_journal()
        if self.journal is not None:
            self._answered_seq = self._applied_seq = self.journal.last_seq
        self.fast = FastPath(store.id_hashes("predictions"), store.id_hashes("labels")) if self.journal else None
        self._rollup_store = store.reader()  # the step's own connection (and its own transaction)
        self._commits_done = False
        self._thread = threading.Thread(target=self._run, name="msewatch-answer", daemon=True)
        self._apply_thread = threading.Thread(target=self._run_apply, name="msewatch-apply", daemon=True)
        self._step_thread = threading.Thread(target=self._run_steps, name="msewatch-rollups", daemon=True)
        self._thread.start()
        self._apply_thread.start()
        self._step_thread.start()

    @property
    def pending_rows(self) -> int:
        """Rows waiting for their answer."""
        return self._pending_rows

    @property
    def unapplied_rows(self) -> int:
        """Rows answered from the journal that the tables do not hold yet."""
        return self._unapplied_rows

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._apply_thread.is_alive() and not self._closing

    def prepare(self, kind: Kind, batch: pa.RecordBatch) -> Prepared | None:
        """Prove a request's rows valid and hash its ids where its body is parsed (see `submit`)."""
        if self.fast is None or kind == "shadow":
            return None
        try:
            return self.fast.prepare(kind, batch, self._known)
        except Exception:
            log.exception("proving a request's rows failed; it takes the exact path")
            return None

    def submit(self, kind: Kind, batch: pa.RecordBatch, count: int,
               prepared: Prepared | None = None) -> Future[IngestResult]:
        """Queue a request's records; the future resolves once they are on disk.

        `prepared` (from `prepare`) lets a group of such requests be answered from the journal.
        """
        with self._cond:
            if self._closing:
                raise ShuttingDown()
            if self._pending_rows and self._pending_rows + batch.num_rows > self.max_pending:
                raise Overloaded()
            item = _Pending(kind, batch, count, prepared)
            self._queue.append(item)
            self._queued_rows += batch.num_rows
            self._pending_rows += batch.num_rows
            self._cond.notify_all()  # the answer, apply and rollup threads and settle() share it
        return item.future

    def applied(self, timeout: float = 30.0) -> bool:
        """Wait until the tables hold every request answered so far; False on timeout.

        For readers of the tables (/v1/metrics): an answered request shows.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._answered_seq
            while self._applied_seq < target and self._apply_thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._apply_wanted = True  # the apply thread does not wait for more records
                self._cond.notify_all()
                self._cond.wait(remaining)
            return self._applied_seq >= target

    def settle(self, timeout: float = 30.0) -> bool:
        """Wait until every request answered so far is in the rollups and counters; False on timeout.

        For readers of the rollups (dashboard, monitor, /metrics): an answered request shows.
        While steps fail (logged, retried), readers get what the rollups hold without waiting.
        """
        deadline = time.monotonic() + timeout
        if not self.applied(timeout):
            return False
        with self._cond:
            target = self.commits
            while self._applied_commits < target and self._step_thread.is_alive() and not self._step_failing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._settle_wanted = True
                self._cond.notify_all()
                self._cond.wait(remaining)
            return self._applied_commits >= target

    def fields_to_drop(self, kind: Kind, names: list[str]) -> list[str]:
        """Fields HTTP may not store: unknown label fields, clashing names, columns past the cap."""
        if kind == "labels":
            return [n for n in names if n not in _LABEL_FIELDS]
        if kind == "shadow":  # shadow rows keep no segments or features
            return [n for n in names if n not in _SHADOW_FIELDS]
        drop = []
        with self._cond:
            known = self._known
            new: set[str] = set()  # new names of this request, case-folded
            for name in names:
                folded = name.casefold()
                if name in _CONTRACT_NAMES or name in known:
                    continue
                if folded in _CONTRACT or folded in new or any(k.casefold() == folded for k in known):
                    drop.append(name)
                elif len(known) + len(new) >= self.config.server.max_extra_columns:
                    drop.append(name)
                else:
                    new.add(folded)
        return drop

    def close(self) -> None:
        """Answer and apply what is queued, fold it into the rollups, then close the store."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()  # a group is bounded by max_group_rows, so this ends
        self._apply_thread.join()  # after the last answer: every record is in the tables
        self._step_thread.join()  # after the last commit: its last step folds in everything
        if self.journal is not None:
            self.journal.applied(self._applied_seq)
            self.journal.close(all_applied=self._applied_seq == self._answered_seq)
        self._rollup_store.close()
        if self.sink is not None:
            self.sink.close()
        self.store.close()

    # -- the answer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue and self._closing:
                    self._answers_done = True
                    self._cond.notify_all()
                    return
                # the journal runs ahead of the tables by at most max_pending rows: past it the
                # queue fills, and requests get 429 (the apply thread is the bottleneck)
                while self._unapplied_rows >= self.max_pending and self._apply_thread.is_alive():
                    self._cond.wait(1.0)
                # commit delay: clients answered by the last group are sending their next
                # request; waiting a few ms lets them share this one (PostgreSQL's commit_delay)
                deadline = time.monotonic() + self.delay
                while not self._closing and self._queued_rows < self.max_group:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                group = self._take()
                self._queued_rows -= sum(p.batch.num_rows for p in group)
            if not self._journal_group(group):
                self._exact(group)

    def _journal_group(self, group: list[_Pending]) -> bool:
        """Answer a provably new group from the journal; False when it needs the exact path."""
        kind = group[0].kind
        prepared = [p.prepared for p in group]
        if self.fast is None or self.journal is None or any(p is None for p in prepared):
            return False
        try:
            clean = self.fast.admit(kind, prepared)  # type: ignore[arg-type]
        except Exception:
            log.exception("checking a group for the journal failed; it takes the exact path")
            return False
        if clean is None:
            return False
        try:
            seq = self.journal.append(kind, clean)
        except Exception as exc:  # nothing of it is stored (its ids stay marked: harmless)
            log.exception("writing the journal failed")
            with self._cond:
                self._pending_rows -= clean.num_rows
            for item in group:
                _fail(item, exc)
            return True
        with self._cond:
            self._answered_seq = seq
            self._applying.append(_Record(seq, kind, clean))
            self._pending_rows -= clean.num_rows
            self._unapplied_rows += clean.num_rows
            self._cond.notify_all()
        try:
            for item in group:
                self.collector.observe_ingest(kind, item.batch.num_rows, 0, [])
        except Exception:
            log.exception("updating /metrics failed")
        for item in group:
            item.future.set_result(IngestResult(accepted=item.batch.num_rows))
        return True

    def _exact(self, group: list[_Pending]) -> None:
        """Have the apply thread commit the group after the records before it; wait for that."""
        exact = _Exact(group)
        with self._cond:
            self._applying.append(exact)
            self._cond.notify_all()
        while not exact.done.wait(1.0):
            if not self._apply_thread.is_alive():
                for item in group:
                    _fail(item, RuntimeError("the apply thread stopped"))
                return
        if self.fast is not None:
            for hashes in exact.hashes:
                self.fast.taken(group[0].kind, hashes)

    # -- the apply thread ---------------------------------------------------------------------------
    def _run_apply(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._applying and not self._answers_done:
                        self._cond.wait()
                    if not self._applying:
                        return
                    # records answered already: wait a little for more, so a transaction carries
                    # more rows (its fixed cost is most of a small one's); readers wait for it
                    deadline = time.monotonic() + _APPLY_DELAY
                    while (isinstance(self._applying[0], _Record) and self._unapplied_rows < self.max_group
                           and not self._answers_done and not self._settle_wanted and not self._apply_wanted):
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or any(isinstance(x, _Exact) for x in self._applying):
                            break
                        self._cond.wait(remaining)
                    self._apply_wanted = False
                    first = self._applying.popleft()
                    records: list[_Record] = []
                    if isinstance(first, _Record):  # consecutive records of a kind: one transaction
                        records.append(first)
                        rows = first.batch.num_rows
                        while (self._applying and isinstance(self._applying[0], _Record)
                               and self._applying[0].kind == first.kind and rows < self.max_group):
                            nxt = self._applying.popleft()
                            assert isinstance(nxt, _Record)
                            records.append(nxt)
                            rows += nxt.batch.num_rows
                if isinstance(first, _Exact):
                    self._commit(first.group, first.hashes)
                    rows = sum(p.batch.num_rows for p in first.group)
                    with self._cond:
                        self._pending_rows -= rows
                    first.done.set()
                elif not self._apply_records(records):
                    return  # stopping with records the tables do not hold: the next open applies them
        finally:
            with self._cond:
                self._commits_done = True
                self._cond.notify_all()

    def _apply_records(self, records: list[_Record]) -> bool:
        """Commit journal records to the tables, retrying (they were answered for); False when
        the server stops before that works (they stay in the journal, for the next open)."""
        kind, rows, last = records[0].kind, sum(r.batch.num_rows for r in records), records[-1].seq
        while True:
            try:
                outcome = self.store.ingest_group(
                    kind, [(r.batch, r.batch.num_rows) for r in records],
                    pair_columns=self.config.metrics.segments, defer_rollups=True, journal_seq=last, proven=True,
                )
                break
            except Exception:
                if self._closing:
                    log.exception("applying journal records %d-%d failed; they stay in the journal", records[0].seq, last)
                    return False
                log.exception("applying journal records %d-%d failed; retrying in %.0f s", records[0].seq, last, _STEP_RETRY)
                time.sleep(_STEP_RETRY)
        accepted = sum(r.accepted for r in outcome.results)
        if accepted != rows:  # the answer said every row is accepted
            log.error("journal records %d-%d: %d of %d rows applied, though all were answered as accepted",
                      records[0].seq, last, accepted, rows)
        self._committed(kind, accepted)
        with self._cond:
            self._applied_seq = last
            self._unapplied_rows -= rows
            self._cond.notify_all()
        assert self.journal is not None
        self.journal.applied(last)
        return True

    # -- the rollup thread --------------------------------------------------------------------------
    def _run_steps(self) -> None:
        # normal priority, as the apply thread (see `priority`): the step is a write transaction,
        # and DuckDB checkpoints the WAL of every commit made meanwhile at its COMMIT
        while True:
            with self._cond:
                while not self._step_due() and not self._commits_done:
                    self._cond.wait(self._step_wait())
                last = self._commits_done
            self._step()
            if last:  # the drain: every commit is folded in before the store closes
                return

    def _step_due(self) -> bool:
        """Whether the rollup step should run now (under the lock)."""
        if self._unapplied_since is None:
            return False
        now = time.monotonic()
        if now < self._step_not_before:
            return False
        return (self._settle_wanted or self._step_failing
                or self._committed_rows - self._applied_rows >= self.rollup_rows
                or now - self._unapplied_since >= self.rollup_delay)

    def _step_wait(self) -> float | None:
        """How long the rollup thread may sleep before a step is due (under the lock)."""
        if self._unapplied_since is None:
            return None
        due = self._step_not_before if self._step_failing else \
            max(self._step_not_before, self._unapplied_since + self.rollup_delay)
        return max(0.0, due - time.monotonic())

    def _step(self) -> None:
        """Fold the committed rows into the rollups and the /metrics counters."""
        with self._cond:  # every commit counted here is committed, so the step's snapshot sees it
            target, rows, started = self.commits, self._committed_rows, time.monotonic()
        try:
            applied = self._rollup_store.apply_pending(pair_columns=self.config.metrics.segments)
        except Exception:
            log.exception("folding committed rows into the rollups failed; retrying in %.0f s", _STEP_RETRY)
            with self._cond:
                self._step_not_before = time.monotonic() + _STEP_RETRY
                self._step_failing = True
                self._settle_wanted = False
                self._cond.notify_all()
            return
        try:
            if applied.inserted is not None:  # first: segment values are capped first come
                self.collector.observe_predictions(applied.inserted)
            if applied.pairs is not None:
                self.collector.observe_pairs(applied.pairs)
        except Exception:
            log.exception("updating /metrics failed")
        with self._cond:
            self._applied_commits, self._applied_rows = target, rows
            self._step_failing = False
            # commits made during the step wait for the next one (they are no older than its start)
            self._unapplied_since = None if self.commits == target else started
            self._settle_wanted = False
            self._cond.notify_all()

    def _take(self) -> list[_Pending]:
        kind = self._queue[0].kind
        group: list[_Pending] = []
        rows = 0
        kept: collections.deque[_Pending] = collections.deque()
        while self._queue:
            item = self._queue.popleft()
            if item.kind == kind and (not group or rows + item.batch.num_rows <= self.max_group):
                group.append(item)
                rows += item.batch.num_rows
            else:
                kept.append(item)
        self._queue.extendleft(reversed(kept))
        return group

    def _commit(self, group: list[_Pending], hashes: list[np.ndarray]) -> None:
        try:
            self._commit_group(group, hashes)
        except Exception as exc:
            if len(group) == 1:
                log.exception("commit failed")
                _fail(group[0], exc)
                return
            log.warning("a group commit of %d requests failed (%s); committing them one by one", len(group), exc)
            for item in group:
                try:
                    self._commit_group([item], hashes)
                except Exception as one:
                    log.exception("commit failed")
                    _fail(item, one)

    def _commit_group(self, group: list[_Pending], hashes: list[np.ndarray]) -> None:
        kind = group[0].kind
        outcome = self.store.ingest_group(
            kind, [(p.batch, p.count) for p in group], pair_columns=self.config.metrics.segments,
            defer_rollups=True,
        )
        accepted = sum(r.accepted for r in outcome.results)
        if self.fast is not None and kind != "shadow" and accepted and self.store.last_stamp is not None:
            hashes.append(self.store.id_hashes(kind, self.store.last_stamp))
        self._committed(kind, accepted, outcome.shadow)
        try:
            for result in outcome.results:
                self.collector.observe_ingest(kind, result.accepted, result.duplicates, [r.error for r in result.rejects])
        except Exception:
            log.exception("updating /metrics failed")
        for item, result in zip(group, outcome.results):
            if not item.future.done():
                item.future.set_result(result)

    def _committed(self, kind: Kind, accepted: int, shadow: pa.Table | None = None) -> None:
        """After a commit: wake the rollup step, tell the sink, learn new columns."""
        for_rollups = accepted if kind != "shadow" else 0
        with self._cond:
            self.commits += 1
            if for_rollups:
                self._committed_rows += for_rollups
                wake = self._unapplied_since is None or self._settle_wanted or \
                    self._committed_rows - self._applied_rows >= self.rollup_rows
                if self._unapplied_since is None:
                    self._unapplied_since = time.monotonic()
                if wake:  # the rollup thread sleeps until a step is due: this may change when
                    self._cond.notify_all()
            elif self._unapplied_since is None:  # nothing for the rollups, and nothing before it
                self._applied_commits = self.commits
        if self.sink is not None:
            self.sink.notify(accepted)
        if kind == "predictions":
            known = dict(self.store.extra_columns())
            with self._cond:
                self._known = known
        if shadow is not None:  # never into the predictions or quality series
            try:
                self.collector.observe_shadow(shadow)
            except Exception:
                log.exception("updating /metrics failed")


def _fail(item: _Pending, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc if isinstance(exc, MsewatchError) else RuntimeError(str(exc)))
