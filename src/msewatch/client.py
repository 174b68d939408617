"""The Python SDK: log predictions and labels to `msewatch serve` from a model server.

`Client.log_shadow_prediction` logs what a candidate version predicted for a request that
production also scored (the canary judge's shadow mode): sent to `/v1/shadow`, stored apart and
never counted in the metrics; pair it with production's prediction by `prediction_id`.

`Client.log_prediction` and `Client.log_label` only serialize the event and append it to an
in-memory queue, so the model's request path pays a few microseconds. A background thread
sends the queue as NDJSON batches (one keep-alive connection) when `batch_size` events are
waiting or `flush_interval` has passed.

Delivery is at-least-once and safe to repeat: the server stores a prediction id once (the same
content again is counted as a duplicate) and an identical label once, so a batch whose answer
was lost can be sent again. Therefore:

- 429, 5xx and connection errors are retried with exponential backoff and jitter, honouring
  Retry-After; any other 4xx is never retried (sending it again cannot succeed).
- When the server stays unreachable past the retry budget, or the queue would overflow, a batch
  is written to a local spool directory (NDJSON, written atomically) and replayed, oldest first,
  once the server answers again and at the next start-up. A spool file is deleted only after
  the server answered 200, and replaying one that had in fact been committed only yields
  duplicates. Clients of several processes may share a spool directory for the same reason.
- Rows the server rejects (per row in a 200, or a whole request refused with 4xx) are reported
  to `on_reject(kind, record, error)`, logged, and counted in `stats`; they are not re-sent.

Labels may reach the server before their predictions; the server joins them whenever both are
there. Create the client after a fork (one per worker process): its thread does not survive one.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import email.utils
import hashlib
import logging
import math
import numbers
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Self

import httpx
import orjson

__all__ = ["Client", "ClientStats", "default_spool_dir"]

log = logging.getLogger("msewatch.client")

EventKind = Literal["predictions", "labels", "shadow"]
OnReject = Callable[[str, dict[str, Any], str], None]

_KINDS: tuple[EventKind, ...] = ("predictions", "labels", "shadow")
_RETRYABLE = frozenset({429}) | frozenset(range(500, 600))
_MAX_RETRY_AFTER = 300.0  # a Retry-After longer than this is read as this
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NAIVE_UTC
_UTC = dt.UTC


@dataclass
class ClientStats:
    """Counts of events, since the client started.

    sent: events posted from the queue (each batch counted once, however often retried);
    accepted / duplicates / rejected: the server's answers (rejected also counts rows of a
    request refused as a whole, e.g. 401); retries: requests repeated after a retryable failure;
    spooled: events written to the spool; replayed: spooled events the server has since
    answered; dropped: events neither delivered nor spooled (the spool could not be written).
    """

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0


@dataclass(eq=False)
class _Batch:
    """Events taken from one kind's queue; `first` is the queue position of the first one."""

    kind: EventKind
    lines: list[bytes]
    first: int


def default_spool_dir(url: str) -> Path:
    """A per-server directory under the user's cache dir, so clients of one URL share it."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return Path(base) / "msewatch" / "spool" / digest


class Client:
    """Logs predictions and labels to `msewatch serve` in the background.

    `model` and `version` are defaults for predictions that do not name theirs. `token` is the
    Bearer token (scope `ingest`). `max_retries` bounds the retries of one batch before it goes
    to the spool; the wait before retry n is `backoff * 2**n` with jitter, at most
    `max_backoff` (or the server's Retry-After). `spool_dir` defaults to `default_spool_dir(url)`.
    `on_reject(kind, record, error)` is called from the client's thread for each row the server
    rejected (and each row lost because the spool could not be written); `kind` is
    "predictions", "labels" or "shadow", `record` the row as sent.

    Use as a context manager, or call `close()`: events still queued at interpreter exit are
    flushed by an atexit hook, but a killed process loses its queue (not its spool).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        model: str | None = None,
        version: str | None = None,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        max_queue: int = 100_000,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
        spool_dir: str | os.PathLike[str] | None = None,
        on_reject: OnReject | None = None,
    ) -> None:
        if batch_size < 1 or max_queue < batch_size:
            raise ValueError("batch_size must be ≥ 1 and max_queue ≥ batch_size")
        if flush_interval <= 0 or timeout <= 0 or max_retries < 0 or backoff <= 0 or max_backoff < backoff:
            raise ValueError("flush_interval, timeout and backoff must be > 0, max_retries ≥ 0, max_backoff ≥ backoff")
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir(self.url)
        self.on_reject = on_reject
        headers = {"Content-Type": "application/x-ndjson", "User-Agent": "msewatch-python"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

        # everything below is guarded by _cond
        self._lock = threading.Lock()  # taken bare on the caller's path: cheaper than the Condition
        self._cond = threading.Condition(self._lock)
        self._queues: dict[EventKind, deque[bytes]] = {k: deque() for k in _KINDS}
        self._queued = 0
        self._first_at = 0.0  # when the oldest queued event arrived (monotonic)
        self._enqueued = dict.fromkeys(_KINDS, 0)  # events ever queued, by kind
        self._taken = dict.fromkeys(_KINDS, 0)  # of those, taken off the queue (FIFO)
        self._inflight: set[_Batch] = set()
        self._flushing = 0
        self._closed = False
        self._stats = ClientStats()
        self._spool_pending = True  # until a look at the spool directory finds nothing
        self._spool_writes = 0  # so that look cannot miss a file written meanwhile
        self._next_replay = 0.0
        self._probe = backoff
        self._down = False  # the last batch exhausted its retries: try new ones only once
        self._stop = threading.Event()  # set by close(): no more sending, spool what is left
        self._last_kind: EventKind = _KINDS[-1]  # so the first turn goes to predictions
        self._ignored_warned: set[tuple[str, ...]] = set()

        self._thread = threading.Thread(target=self._run, name="msewatch-client", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # -- the caller's side ---------------------------------------------------------------------
    def log_prediction(
        self,
        y_pred: float,
        *,
        prediction_id: str | None = None,
        ts: str | float | dt.datetime | None = None,
        model: str | None = None,
        version: str | None = None,
        **segments: Any,
    ) -> str:
        """Queue one prediction; its id (a new uuid4 hex when not given).

        `ts` defaults to now (UTC, ISO 8601); `segments` are extra scalar fields (segments or
        features). Raises ValueError for a NaN or infinite `y_pred` (the server would reject
        it) and TypeError for a value that is not a number or cannot be sent as JSON.
        """
        record: dict[str, Any] = {
            "prediction_id": _new_id() if prediction_id is None else str(prediction_id),
            "ts": dt.datetime.now(_UTC) if ts is None else ts,  # orjson writes ISO 8601
            "y_pred": _finite(y_pred, "y_pred"),
        }
        if (model := model or self.model) is not None:
            record["model"] = model
        if (version := version or self.version) is not None:
            record["version"] = version
        if segments:
            record.update(segments)
        self._put("predictions", [_dumps(record)])
        return record["prediction_id"]

    def log_shadow_prediction(
        self,
        y_pred: float,
        *,
        prediction_id: str,
        version: str,
        ts: str | float | dt.datetime | None = None,
        model: str | None = None,
    ) -> None:
        """Queue what the candidate `version` predicted for the request `prediction_id`.

        Shadow mode: a candidate scores the same requests as production, and its predictions
        are stored apart (`/v1/shadow`), never counted in the metrics, and judged against
        production's labels by `prediction_id`, which is therefore required (it is the id of
        production's prediction), as is `version` (the client's default is production's).
        `ts` defaults to now, `model` to the client's. Raises ValueError for a NaN or infinite
        `y_pred` and TypeError for a value that is not a number.
        """
        if prediction_id is None or version is None:
            raise ValueError("a shadow prediction needs the prediction_id of production's prediction and its version")
        record: dict[str, Any] = {
            "prediction_id": str(prediction_id),
            "ts": dt.datetime.now(_UTC) if ts is None else ts,
            "version": version,
            "y_pred": _finite(y_pred, "y_pred"),
        }
        if (model := model or self.model) is not None:
            record["model"] = model
        self._put("shadow", [_dumps(record)])

    def log_label(
        self, prediction_id: str, y_true: float, *, label_ts: str | float | dt.datetime | None = None
    ) -> None:
        """Queue the true value of a prediction; ValueError for a NaN or infinite `y_true`."""
        record: dict[str, Any] = {"prediction_id": str(prediction_id), "y_true": _finite(y_true, "y_true")}
        if label_ts is not None:
            record["label_ts"] = label_ts
        self._put("labels", [_dumps(record)])

    def log_predictions(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Queue prediction records (dicts with the server's field names); their ids.

        Missing `prediction_id`, `ts`, `model`, `version` are filled as in `log_prediction`.
        Other values go as they are, for the server to judge (a bad one comes back through
        `on_reject`), except a NaN or infinite `y_pred`: ValueError, and nothing is queued.
        """
        lines: list[bytes] = []
        ids: list[str] = []
        now = dt.datetime.now(_UTC)
        for i, rec in enumerate(records):
            _check_finite(rec, "y_pred", i)
            record = dict(rec)
            if record.get("prediction_id") is None:
                record["prediction_id"] = _new_id()
            if record.get("ts") is None:
                record["ts"] = now
            if self.model is not None:
                record.setdefault("model", self.model)
            if self.version is not None:
                record.setdefault("version", self.version)
            lines.append(_dumps(record))
            ids.append(str(record["prediction_id"]))
        self._put("predictions", lines)
        return ids

    def log_shadow_predictions(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Queue shadow prediction records (`prediction_id`, `version`, `y_pred`, optional `ts`, `model`).

        A missing `ts` is now and a missing `model` the client's; `prediction_id` and `version`
        have no default (ValueError, and nothing is queued), nor has a NaN or infinite `y_pred`.
        Fields besides those are ignored by the server (reported as ignored fields).
        """
        lines: list[bytes] = []
        now = dt.datetime.now(_UTC)
        for i, rec in enumerate(records):
            _check_finite(rec, "y_pred", i)
            if rec.get("prediction_id") is None or rec.get("version") is None:
                raise ValueError(f"record {i}: a shadow prediction needs prediction_id and version; nothing was queued")
            record = dict(rec)
            if record.get("ts") is None:
                record["ts"] = now
            if self.model is not None:
                record.setdefault("model", self.model)
            lines.append(_dumps(record))
        self._put("shadow", lines)

    def log_labels(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Queue label records (`prediction_id`, `y_true`, optional `label_ts`) as they are.

        A NaN or infinite `y_true` raises ValueError and nothing is queued; other bad values
        come back through `on_reject`.
        """
        lines = []
        for i, rec in enumerate(records):
            _check_finite(rec, "y_true", i)
            lines.append(_dumps(rec if type(rec) is dict else dict(rec)))
        self._put("labels", lines)

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued so far now; True once all of it was answered or spooled.

        False when `timeout` (seconds) passed first; the events stay queued.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("flush() cannot be called from on_reject (the sending thread)")
        with self._cond:
            target = dict(self._enqueued)
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._flushed(target), timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the thread; what `timeout` left unsent goes to the spool.

        Logging after `close()` raises RuntimeError; closing again does nothing.
        """
        with self._cond:
            if self._closed:
                return
        self.flush(timeout)
        self._stop.set()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._http.close()
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        self.close(timeout=self.timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counts."""
        with self._cond:
            return replace(self._stats)

    # -- queue bookkeeping (under _cond) -------------------------------------------------------
    def _put(self, kind: EventKind, lines: list[bytes]) -> None:
        n = len(lines)
        if not n:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("this msewatch Client is closed")
            if not self._queued:
                self._first_at = time.monotonic()
            queue = self._queues[kind]
            if n == 1:
                queue.append(lines[0])
            else:
                queue.extend(lines)
            self._enqueued[kind] += n
            before = self._queued
            self._queued += n
            if not before or before < self.batch_size <= self._queued:
                # the sender sleeps until the flush interval of the first event, or a full batch
                self._cond.notify_all()
        while True:
            # past max_queue the sender cannot keep up: the caller spools the oldest batch
            with self._cond:
                if self._queued <= self.max_queue:
                    return
                batch = self._take(max(_KINDS, key=lambda k: len(self._queues[k])))
            try:
                self._spool(batch.kind, batch.lines)
            finally:
                self._finish(batch)

    def _take(self, kind: EventKind) -> _Batch:
        queue = self._queues[kind]
        n = min(len(queue), self.batch_size)
        batch = _Batch(kind, [queue.popleft() for _ in range(n)], self._taken[kind])
        self._taken[kind] += n
        self._queued -= n
        self._first_at = time.monotonic()
        self._inflight.add(batch)
        return batch

    def _finish(self, batch: _Batch) -> None:
        with self._cond:
            self._inflight.discard(batch)
            self._cond.notify_all()

    def _flushed(self, target: Mapping[str, int]) -> bool:
        return all(self._taken[k] >= target[k] for k in _KINDS) and all(
            b.first >= target[b.kind] for b in self._inflight
        )

    # -- the sending thread --------------------------------------------------------------------
    def _run(self) -> None:
        replayed = False  # the last turn was a replay: under steady load, turns alternate
        while True:
            batch: _Batch | None = None
            with self._cond:
                while True:
                    now = time.monotonic()
                    replay_due = self._spool_pending and now >= self._next_replay and not self._closed
                    if replay_due and not replayed:
                        break
                    if self._queued and (
                        self._closed
                        or self._flushing
                        or self._queued >= self.batch_size
                        or now - self._first_at >= self.flush_interval
                    ):
                        kind = self._next_kind()
                        batch = self._take(kind)
                        break
                    if self._closed:
                        return
                    if replay_due:
                        break
                    waits = []
                    if self._queued:
                        waits.append(self._first_at + self.flush_interval - now)
                    if self._spool_pending:
                        waits.append(self._next_replay - now)
                    self._cond.wait(max(0.0, min(waits)) if waits else None)
            replayed = batch is None
            try:
                if batch is None:
                    self._replay_one()
                elif self._stop.is_set():
                    self._spool(batch.kind, batch.lines)
                else:
                    self._deliver(batch)
            except Exception:  # the thread must live on; the batch is kept
                log.exception("msewatch client: unexpected error while sending")
                if batch is not None:
                    self._spool(batch.kind, batch.lines)
                else:
                    self._note_failure(down=False)
            finally:
                if batch is not None:
                    self._finish(batch)

    def _next_kind(self) -> EventKind:
        """Take turns between the kinds that have events, so none starves the others."""
        start = _KINDS.index(self._last_kind)
        kind = self._last_kind
        for step in range(1, len(_KINDS) + 1):
            kind = _KINDS[(start + step) % len(_KINDS)]
            if self._queues[kind]:
                break
        self._last_kind = kind
        return kind

    def _deliver(self, batch: _Batch) -> None:
        with self._cond:
            self._stats.sent += len(batch.lines)
            retries = 0 if self._down else self.max_retries
        for piece in self._send(batch.kind, batch.lines, retries):
            self._spool(batch.kind, piece)
        # a batch that went to the spool has set _down (see _send)

    def _replay_one(self) -> None:
        """Send the oldest spool file once; delete it after a 200, else wait longer."""
        path = self._oldest_spool_file()
        if path is None:
            return
        kind: EventKind = next((k for k in _KINDS if path.name.endswith(f"-{k}.ndjson")), "predictions")
        try:
            lines = [line for line in path.read_bytes().split(b"\n") if line.strip()]
        except FileNotFoundError:
            return  # another client (sharing the directory) replayed it
        for start in range(0, len(lines), self.batch_size):
            if self._send(kind, lines[start : start + self.batch_size], None):
                return  # kept whole: what was answered will come back as duplicates
        path.unlink(missing_ok=True)
        with self._cond:
            self._stats.replayed += len(lines)
        log.info("msewatch client: replayed %d spooled %s", len(lines), kind)

    def _oldest_spool_file(self) -> Path | None:
        with self._cond:
            writes = self._spool_writes
        try:
            names = sorted(e.name for e in os.scandir(self.spool_dir) if e.name.endswith(".ndjson"))
        except FileNotFoundError:
            names = []
        if not names:
            with self._cond:
                self._spool_pending = self._spool_writes != writes
            return None
        return self.spool_dir / names[0]

    def _send(self, kind: EventKind, lines: list[bytes], retries: int | None) -> list[list[bytes]]:
        """POST `lines` until answered, at most `retries` times more; the pieces left unsent.

        `retries=None` is a replay: one attempt, and a failure only delays the next replay
        (a busy server answering 429 to a replay must not make live batches give up early).
        """
        attempt = 0
        while True:
            wait: float | None = None
            try:
                response = self._http.post(f"/v1/{kind}", content=b"\n".join(lines))
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status not in _RETRYABLE:
                    self._note_success()
                    if status == 413 and len(lines) > 1:  # a smaller limit than batch_size
                        half = len(lines) // 2
                        return self._send(kind, lines[:half], retries) + self._send(kind, lines[half:], retries)
                    self._answered(kind, lines, response)
                    return []
                reason = f"HTTP {status}: {_error_text(response)}"
                wait = _retry_after(response)
            if retries is None or attempt >= retries or self._stop.is_set():
                if retries is not None:
                    log.warning("msewatch client: %d %s not delivered (%s); spooling them", len(lines), kind, reason)
                self._note_failure(down=retries is not None)
                return [lines]
            if wait is None:
                wait = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
            else:
                wait *= random.uniform(1.0, 1.2)  # clients told the same Retry-After spread out
            attempt += 1
            with self._cond:
                self._stats.retries += 1
            log.debug("msewatch client: %s; retry %d in %.2fs", reason, attempt, wait)
            if self._stop.wait(wait):
                self._note_failure(down=True)
                return [lines]

    def _answered(self, kind: EventKind, lines: list[bytes], response: httpx.Response) -> None:
        """Count a final answer and report its rejected rows."""
        answer: Any = None
        if response.status_code == 200:
            try:
                answer = orjson.loads(response.content)
                accepted, duplicates = int(answer["accepted"]), int(answer["duplicates"])
                rejected = [(int(r["index"]), str(r["error"])) for r in answer["rejected"]]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("msewatch client: unexpected answer from %s (%s); counting it as accepted", self.url, exc)
                accepted, duplicates, rejected = len(lines), 0, []
            ignored = tuple(answer.get("ignored_fields") or ()) if isinstance(answer, dict) else ()
            if ignored and ignored not in self._ignored_warned:
                self._ignored_warned.add(ignored)
                log.warning("msewatch client: the server ignored the fields %s of %s", list(ignored), kind)
        else:  # a 4xx that no retry can cure: every row of the request is rejected
            accepted = duplicates = 0
            error = f"HTTP {response.status_code}: {_error_text(response)}"
            rejected = [(i, error) for i in range(len(lines))]
        with self._cond:
            self._stats.accepted += accepted
            self._stats.duplicates += duplicates
            self._stats.rejected += len(rejected)
        if rejected:
            log.warning("msewatch client: %d of %d %s rejected, e.g. %s", len(rejected), len(lines), kind, rejected[0][1])
            for index, error in rejected:
                if 0 <= index < len(lines):
                    self._report(kind, orjson.loads(lines[index]), error)

    def _report(self, kind: str, record: dict[str, Any], error: str) -> None:
        if self.on_reject is None:
            return
        try:
            self.on_reject(kind, record, error)
        except Exception:  # a failing callback must not stop the sending
            log.exception("msewatch client: on_reject raised")

    def _note_success(self) -> None:
        with self._cond:
            if self._down:
                log.info("msewatch client: %s answers again", self.url)
            self._down = False
            self._probe = self.backoff
            self._next_replay = time.monotonic()

    def _note_failure(self, *, down: bool) -> None:
        """Replay later; with `down` (a live batch gave up), new batches get one attempt only."""
        with self._cond:
            self._down = self._down or down
            self._next_replay = time.monotonic() + self._probe * random.uniform(0.5, 1.0)
            self._probe = min(self.max_backoff, self._probe * 2)

    def _spool(self, kind: EventKind, lines: list[bytes]) -> None:
        """Write events to a new spool file atomically (temp file, fsync, rename)."""
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}-{kind}.ndjson"
        tmp = self.spool_dir / f".{name}.tmp"
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(b"\n".join(lines) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.spool_dir / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.error("msewatch client: %d %s lost: cannot write the spool %s (%s)", len(lines), kind, self.spool_dir, exc)
            with self._cond:
                self._stats.dropped += len(lines)
            for line in lines:
                self._report(kind, orjson.loads(line), f"not delivered, and the spool could not be written: {exc}")
            return
        with self._cond:
            self._stats.spooled += len(lines)
            self._spool_writes += 1
            if not self._spool_pending:
                self._spool_pending = True
                self._cond.notify_all()


_V4_BITS = (4 << 76) | (0x8000 << 48)
_V4_MASK = ~((0xF << 76) | (0xC000 << 48))


def _new_id() -> str:
    """`uuid.uuid4().hex`, at half its cost (it is on the caller's path)."""
    return "%032x" % (int.from_bytes(os.urandom(16)) & _V4_MASK | _V4_BITS)


def _finite(value: Any, name: str) -> float | int:
    """`value` when it is a finite number; the server would reject anything else."""
    if type(value) is float or type(value) is int:  # the common case, fast
        if value - value == 0:  # false for NaN and ±inf
            return value
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    else:
        number = float(value)  # a NumPy scalar, Decimal, Fraction: sent as a float
        if math.isfinite(number):
            return number
    raise ValueError(f"{name} must be a finite number, not {value!r} (the server rejects NaN and infinity)")


def _check_finite(record: Mapping[str, Any], name: str, index: int) -> None:
    if not isinstance(record, Mapping):
        raise TypeError(f"record {index} is a {type(record).__name__}, not a dict")
    value = record.get(name)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
        raise ValueError(f"record {index}: {name} must be a finite number, not {value!r}; nothing was queued")


def _dumps(record: Mapping[str, Any]) -> bytes:
    """The record's JSON line, in a right-sized copy.

    orjson returns a buffer shrunk from a larger allocation; kept in the queue, each one pins
    fresh memory (a page fault per event, measured at 8 µs of the 10 µs a call cost); the copy
    costs 0.1 µs and lets the allocator pack the lines.
    """
    try:
        return bytes(memoryview(orjson.dumps(record, option=_DUMPS_OPTIONS)))
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"cannot send this record as JSON: {exc}") from None


def _error_text(response: httpx.Response) -> str:
    try:
        return str(orjson.loads(response.content)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):  # not our error shape: its start
        return response.text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds (a number or an HTTP date), when it gave one."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)
