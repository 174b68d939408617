"""Group commit: one thread owns the store's writes; concurrent requests share transactions.

A request's records wait in a bounded queue (counted in rows). The commit thread takes every
waiting request of one kind, up to `max_group_rows`, commits them in one DuckDB transaction
and answers each with its own outcome; so under load a commit carries many requests and the
per-commit cost (WAL flush, rollup refresh) is shared. A request is answered only after its
transaction committed. When the queue is full, `submit` raises `Overloaded` (HTTP 429).

If a group fails as a whole, each of its requests is retried alone, so one request that trips
the engine cannot fail the others. `close()` stops taking requests, commits what is queued,
then closes the store (SIGTERM drains this way). With a lake sink, each commit is counted to
it and its final export runs after the last commit, before the store closes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import pyarrow as pa

from msewatch.config import Config
from msewatch.errors import MsewatchError
from msewatch.schema import ColumnMap, Kind
from msewatch.server.exposition import QualityCollector
from msewatch.server.sink import LakeSink
from msewatch.store import IngestResult, Store

__all__ = ["Committer", "Overloaded", "ShuttingDown"]

log = logging.getLogger("msewatch.server")

_CONTRACT_NAMES = frozenset(ColumnMap().source_names().values())
_CONTRACT = {n.casefold() for n in _CONTRACT_NAMES} | {"source", "ingested_at"}
_LABEL_FIELDS = {"prediction_id", "y_true", "label_ts"}
_SHADOW_FIELDS = {"prediction_id", "ts", "model", "version", "y_pred"}


class Overloaded(Exception):
    """The ingest queue is full; retry later."""


class ShuttingDown(Exception):
    """The server is draining and takes no new requests."""


@dataclass
class _Pending:
    kind: Kind
    batch: pa.RecordBatch
    count: int
    future: Future[IngestResult] = field(default_factory=Future)


class Committer:
    def __init__(self, store: Store, config: Config, collector: QualityCollector, sink: LakeSink | None = None) -> None:
        self.store = store
        self.sink = sink  # told of every commit; flushed before the store closes
        self.config = config
        self.collector = collector
        self.max_pending = config.server.max_pending_rows
        self.max_group = config.server.max_group_rows
        self.delay = config.server.commit_delay_ms / 1000
        self._committing = 0  # rows of the group being committed (still in _pending_rows)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._pending_rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._known = dict(store.extra_columns())
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name="msewatch-commit", daemon=True)
        self._thread.start()

    @property
    def pending_rows(self) -> int:
        """Rows queued or being committed."""
        return self._pending_rows

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    def submit(self, kind: Kind, batch: pa.RecordBatch, count: int) -> Future[IngestResult]:
        """Queue a request's records; the future resolves once they are committed."""
        with self._cond:
            if self._closing:
                raise ShuttingDown()
            if self._pending_rows and self._pending_rows + batch.num_rows > self.max_pending:
                raise Overloaded()
            item = _Pending(kind, batch, count)
            self._queue.append(item)
            self._pending_rows += batch.num_rows
            self._cond.notify()
        return item.future

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
        """Commit what is queued, then close the store (never under a running commit)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()  # a group is bounded by max_group_rows, so this ends
        if self.sink is not None:
            self.sink.close()
        self.store.close()

    # -- the commit thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue and self._closing:
                    return
                # commit delay: clients answered by the last commit are sending their next
                # request; waiting a few ms lets them share this commit (PostgreSQL's commit_delay)
                deadline = time.monotonic() + self.delay
                while not self._closing and self._pending_rows - self._committing < self.max_group:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                group = self._take()
                self._committing = sum(p.batch.num_rows for p in group)
            self._commit(group)
            with self._cond:
                self._pending_rows -= self._committing
                self._committing = 0

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

    def _commit(self, group: list[_Pending]) -> None:
        try:
            self._commit_group(group)
        except Exception as exc:
            if len(group) == 1:
                log.exception("commit failed")
                _fail(group[0], exc)
                return
            log.warning("a group commit of %d requests failed (%s); committing them one by one", len(group), exc)
            for item in group:
                try:
                    self._commit_group([item])
                except Exception as one:
                    log.exception("commit failed")
                    _fail(item, one)

    def _commit_group(self, group: list[_Pending]) -> None:
        kind = group[0].kind
        outcome = self.store.ingest_group(
            kind, [(p.batch, p.count) for p in group], pair_columns=self.config.metrics.segments
        )
        self.commits += 1
        if self.sink is not None:
            self.sink.notify(sum(r.accepted for r in outcome.results))
        if kind == "predictions":
            self._known = dict(self.store.extra_columns())
        try:
            if outcome.pairs is not None:
                self.collector.observe_pairs(outcome.pairs)
            if outcome.inserted is not None:
                self.collector.observe_predictions(outcome.inserted)
            if outcome.shadow is not None:  # never into the predictions or quality series
                self.collector.observe_shadow(outcome.shadow)
            for result in outcome.results:
                self.collector.observe_ingest(kind, result.accepted, result.duplicates, [r.error for r in result.rejects])
        except Exception:
            log.exception("updating /metrics failed")
        for item, result in zip(group, outcome.results):
            if not item.future.done():
                item.future.set_result(result)


def _fail(item: _Pending, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc if isinstance(exc, MsewatchError) else RuntimeError(str(exc)))
