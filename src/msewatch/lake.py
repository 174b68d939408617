"""The Parquet lake: the store's rows as Hive-partitioned files any engine can read.

Layout (fixed; readers are written against it)::

    DIR/predictions/model=<model>/day=<YYYY-MM-DD>/part-<lo>-<hi>-<n>.parquet   day of ts (UTC)
    DIR/shadow_predictions/model=<model>/day=<YYYY-MM-DD>/part-<lo>-<hi>-<n>.parquet
    DIR/labels/day=<YYYY-MM-DD>/part-<lo>-<hi>-<n>.parquet                      day of ingested_at
    DIR/_msewatch_lake.json                                                     this writer's state

Every file holds all of its table's columns, `model` included: the path only serves pruning.
Labels are every revision (immutable), never the in-place `is_current` flag.

Why exactly once: the store stamps each commit with one `ingested_at`, later than every stamp
before it, and commits one at a time, so once a stamp is visible every smaller one is too. An
export *round* takes, per table, the rows with `lo < ingested_at <= hi` (`lo` the watermark).
The round is first recorded as pending in the state file, then its files are written under
names derived from (lo, hi) alone, each to a `_tmp-*.inprogress` name, fsynced, and renamed;
last, the state file moves the watermark to `hi`. A crash anywhere leaves either nothing
visible of the round, or a pending round that the next start redoes over the same rows, under
the same names, replacing rather than adding files. The state file is replaced the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from msewatch.errors import InputError

__all__ = ["TABLES", "LakeFilters", "LakeWriter", "hive_escape", "store_id"]

log = logging.getLogger("msewatch.lake")

TABLES = ("predictions", "labels", "shadow_predictions")
STATE_FILE = "_msewatch_lake.json"
FORMAT = 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_UTC_US = pa.timestamp("us", tz="UTC")
_HIVE_UNSAFE = set('"#%\'*/:=?\\{[]^') | {chr(c) for c in range(0x20)} | {"\x7f"}
_MAX_NAME = 200  # bytes of a path component; file systems allow 255
Progress = Callable[[int, int], None]


def hive_escape(value: str) -> str:
    """`value` as Hive writes a partition value: unsafe ASCII as %XX, a leading . or _ too.

    Spark, Hive and DuckDB decode %XX, so they read back the value itself. A value too long
    for a file name is cut and suffixed with a hash (readers then see the cut value in the
    path column: read `model` from the files, `hive_partitioning = false`, for those).
    """
    if value == "":
        return "__HIVE_DEFAULT_PARTITION__"
    out = "".join(f"%{ord(ch):02X}" if ch in _HIVE_UNSAFE else ch for ch in value)
    if out[0] in "._":
        out = f"%{ord(out[0]):02X}" + out[1:]
    if len(out.encode()) > _MAX_NAME:
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        cut = out.encode()[: _MAX_NAME - 20].decode(errors="ignore").rsplit("%", 1)
        cut_text = cut[0] if len(cut) > 1 and len(cut[1]) < 2 else "%".join(cut)
        out = f"{cut_text}~{digest}"
    return out


def store_id(con: duckdb.DuckDBPyConnection) -> str:
    """The store's identity (created on first use), so a lake is never fed by two stores."""
    con.execute("CREATE TABLE IF NOT EXISTS lake_sink (store_id VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL)")
    row = con.execute("SELECT store_id FROM lake_sink LIMIT 1").fetchall()
    if row:
        return str(row[0][0])
    new = uuid.uuid4().hex
    con.execute("INSERT INTO lake_sink VALUES (?, now())", [new])
    return new


@dataclass(frozen=True)
class LakeFilters:
    """What part of the store a lake holds; fixed when the lake is created.

    `model`, `since` and `until` (ts, as ISO 8601) select predictions and shadow predictions.
    Labels are never filtered: they carry no model and may arrive before their prediction.
    """

    model: str | None = None
    since: str | None = None
    until: str | None = None

    def sql(self, table: str) -> tuple[str, list[Any]]:
        if table == "labels":
            return "", []
        parts, params = [], []
        if self.model is not None:
            parts.append("model = ?")
            params.append(self.model)
        if self.since is not None:
            parts.append("ts >= ?::TIMESTAMPTZ")
            params.append(self.since)
        if self.until is not None:
            parts.append("ts < ?::TIMESTAMPTZ")
            params.append(self.until)
        return "".join(f" AND {p}" for p in parts), params


def _us(t: dt.datetime) -> int:
    return (t - _EPOCH) // dt.timedelta(microseconds=1)


def _ts(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"_tmp-{uuid.uuid4().hex}.inprogress")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class LakeWriter:
    """Exports a store's new rows into a lake directory, a round at a time (see the module doc).

    `con` is a connection (or cursor) to the store used for reads only; `sid` is `store_id()`
    of that store. Opening checks that DIR is this store's lake (or empty) and that the rows up
    to its watermark still match the store; `full` first removes the lake's earlier output.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, root: str | os.PathLike[str], sid: str, *,
                 filters: LakeFilters | None = None, full: bool = False, round_rows: int = 1_000_000,
                 rows_per_file: int = 1_000_000, check: bool = True) -> None:
        self.con = con
        self.root = Path(root)
        self.sid = sid
        self.round_rows = max(1, round_rows)
        self.rows_per_file = max(1, rows_per_file)
        self.written = dict.fromkeys(TABLES, 0)  # rows written by this writer (for /metrics)
        self.state = self._open(filters, full)
        if check:
            self.verify()
        self._remove_temp_files()

    # -- state ------------------------------------------------------------------------------------
    def _open(self, filters: LakeFilters | None, full: bool) -> dict[str, Any]:
        root = self.root
        if root.exists() and not root.is_dir():
            raise InputError(f"{root}: the lake must be a directory; this is a file.")
        state_path = root / STATE_FILE
        state: dict[str, Any] | None = None
        if state_path.is_file():
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
                if state.get("format") != FORMAT:
                    raise ValueError(f"format {state.get('format')!r}")
            except (ValueError, OSError) as exc:
                raise InputError(f"{state_path}: unreadable lake state ({exc}).") from exc
            if state["store_id"] != self.sid:
                raise InputError(
                    f"{root} is the lake of another store (id {state['store_id']}); "
                    "give each store its own directory."
                )
        elif root.is_dir() and any(not p.name.startswith("_tmp-") for p in root.iterdir()):
            raise InputError(f"{root} is not empty and holds no msewatch lake; give an empty or new directory.")
        if state is not None and (full or state.get("clearing")):  # a crash while clearing: finish it
            state["clearing"] = True
            self._save(state)
            for table in TABLES:
                shutil.rmtree(root / table, ignore_errors=True)
            state = None
        if state is None:
            state = {"format": FORMAT, "store_id": self.sid, "filters": asdict(filters or LakeFilters()),
                     "tables": {t: {"through_us": None, "rows": 0} for t in TABLES}, "pending": None}
            root.mkdir(parents=True, exist_ok=True)
            self._save(state)
        elif filters is not None and asdict(filters) != state["filters"]:
            raise InputError(
                f"{root} was exported with filters {_describe(state['filters'])}, not {_describe(asdict(filters))}; "
                "use the same ones, or --full to rewrite the lake."
            )
        self.filters = LakeFilters(**state["filters"])
        return state

    def _save(self, state: dict[str, Any]) -> None:
        state["updated_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
        _write_atomic(self.root / STATE_FILE, json.dumps(state, indent=1).encode())

    def verify(self) -> None:
        """Raise when the store's rows up to the watermark are not those the lake counted."""
        for table in TABLES:
            t = self.state["tables"][table]
            if t["through_us"] is None:
                continue
            where, params = self.filters.sql(table)
            (n,), = self.con.execute(
                f"SELECT count(*) FROM {table} WHERE ingested_at <= ?{where}", [_ts(t["through_us"]), *params]
            ).fetchall()
            if n != t["rows"]:
                raise InputError(
                    f"{self.root}: the lake holds {t['rows']} {table} rows up to its watermark but the store "
                    f"has {n}; it was written from another copy of the store. Rewrite it with --full."
                )

    def _remove_temp_files(self) -> None:
        """Temporary files of a writer that died: invisible to readers, but taking space."""
        for p in self.root.glob("_tmp-*.inprogress"):
            p.unlink(missing_ok=True)
        for table in TABLES:
            for dirpath, _, names in os.walk(self.root / table):
                for name in names:
                    if name.startswith("_tmp-") and name.endswith(".inprogress"):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(dirpath, name))

    # -- exporting --------------------------------------------------------------------------------
    def backlog(self) -> int:
        """Rows committed to the store and not yet in the lake (before filters)."""
        total = 0
        for table in TABLES:
            through = self.state["tables"][table]["through_us"]
            (n,), = self.con.execute(
                f"SELECT count(*) FROM {table} WHERE ingested_at > ?", [_ts(through if through is not None else -1)]
            ).fetchall()
            total += int(n)
        return total

    def export(self, progress: Progress | None = None) -> dict[str, int]:
        """Export everything committed so far, round by round; rows written per table."""
        total = self.backlog() if progress else 0
        done = 0
        out = dict.fromkeys(TABLES, 0)
        while True:
            scanned, written = self.round()
            for table, n in written.items():
                out[table] += n
            if not scanned:
                return out
            done += scanned
            if progress:
                progress(min(done, total), total)

    def round(self) -> tuple[int, dict[str, int]]:
        """One round: redo a pending one, else take up to `round_rows` new rows per table.

        Returns the rows the round covered (before filters) and those written per table.
        """
        pending = self.state["pending"]
        if pending is None:
            pending = {}
            for table in TABLES:
                bounds = self._next_range(table)
                if bounds is not None:
                    pending[table] = bounds
            if not pending:
                return 0, {}
            self.state["pending"] = pending
            self.state["pending_rows_per_file"] = self.rows_per_file
            try:
                self._save(self.state)
            except BaseException:  # no file may be written under a range that is not recorded
                self.state["pending"] = None
                raise
        per_file = int(self.state.get("pending_rows_per_file") or self.rows_per_file)
        scanned, written, dirs = 0, {}, set()
        for table, (lo, hi, n) in pending.items():
            written[table] = self._write_range(table, lo, hi, per_file, dirs)
            scanned += n
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(d)
        for table, (_, hi, _) in pending.items():
            t = self.state["tables"][table]
            t["through_us"] = hi
            t["rows"] += written[table]
            self.written[table] += written[table]
        self.state["pending"] = None
        self._save(self.state)
        return scanned, written

    def _next_range(self, table: str) -> list[int] | None:
        """[lo, hi, rows]: whole commits past the watermark, about `round_rows` rows."""
        through = self.state["tables"][table]["through_us"]
        lo = through if through is not None else -1
        row = self.con.execute(
            f"""SELECT coalesce(max(ingested_at) FILTER (WHERE cum <= ?), min(ingested_at)),
                    coalesce(max(cum) FILTER (WHERE cum <= ?), min(cum))
            FROM (SELECT ingested_at, sum(n) OVER (ORDER BY ingested_at) AS cum
                  FROM (SELECT ingested_at, count(*) AS n FROM {table} WHERE ingested_at > ? GROUP BY ALL))""",
            [self.round_rows, self.round_rows, _ts(lo)],
        ).fetchall()
        hi, n = row[0]
        return None if hi is None else [lo, _us(hi), int(n)]

    def _columns(self, table: str) -> list[str]:
        if table == "labels":
            return ["prediction_id", "y_true", "label_ts", "revision", "ingested_at", "source"]
        if table == "shadow_predictions":
            return ["prediction_id", "ts", "model", "version", "y_pred", "source", "ingested_at"]
        extras = [n for (n,) in self.con.execute("SELECT name FROM extra_columns ORDER BY added_at, name").fetchall()]
        return ["prediction_id", "ts", "model", "version", "y_pred", *extras, "source", "ingested_at"]

    def _write_range(self, table: str, lo: int, hi: int, per_file: int, dirs: set[Path]) -> int:
        """Write the rows of (lo, hi] into their partitions; same rows, same file names."""
        cols = self._columns(table)
        where, params = self.filters.sql(table)
        by_model = table != "labels"
        day_sql = "ingested_at" if not by_model else "ts"
        key = "prediction_id, revision" if not by_model else "prediction_id, version"
        select = ", ".join(_q(c) for c in cols)
        reader = self.con.sql(
            f"""SELECT {select}, strftime(timezone('UTC', {day_sql}), '%Y-%m-%d') AS _day FROM {table}
            WHERE ingested_at > ? AND ingested_at <= ?{where}
            ORDER BY {'model, ' if by_model else ''}_day, ingested_at, {key}""",
            params=[_ts(lo), _ts(hi), *params],
        ).to_arrow_reader(65_536)
        files = _PartitionFiles(self.root / table, f"part-{lo + 1}-{hi}", per_file, dirs)
        rows = 0
        try:
            for batch in reader:
                batch = _normalize(batch)
                for part, piece in _runs(batch, by_model):
                    files.write(part, piece)
                    rows += piece.num_rows
            files.close()
        except BaseException:
            files.abort()
            raise
        finally:  # else the connection keeps an open result and refuses the next query
            reader.close()
        return rows


class _PartitionFiles:
    """The files of one range, a partition after another: temp name, fsync, rename."""

    def __init__(self, base: Path, stem: str, rows_per_file: int, dirs: set[Path]) -> None:
        self.base, self.stem, self.rows_per_file, self.dirs = base, stem, rows_per_file, dirs
        self.part: tuple[str, ...] | None = None
        self.seq = 0
        self.rows = 0
        self.buffer: list[pa.RecordBatch] = []
        self.buffered = 0
        self.writer: pq.ParquetWriter | None = None
        self.file: Any = None
        self.tmp: Path | None = None
        self.final: Path | None = None

    def write(self, part: tuple[str, ...], batch: pa.RecordBatch) -> None:
        if part != self.part:
            self._finish_file()
            self.part, self.seq = part, 0
        while batch.num_rows:
            room = self.rows_per_file - self.rows - self.buffered
            if room <= 0:
                self._finish_file()
                self.seq += 1
                continue
            self.buffer.append(batch.slice(0, room))
            self.buffered += min(room, batch.num_rows)
            batch = batch.slice(room)
            if self.buffered >= 131_072:
                self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_batches(self.buffer)
        if self.writer is None:
            directory = self.base.joinpath(*self.part or ())
            self._mkdirs(directory)
            self.final = directory / f"{self.stem}-{self.seq}.parquet"
            self.tmp = directory / f"_tmp-{uuid.uuid4().hex}.inprogress"
            self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed by _finish_file or abort)
            self.writer = pq.ParquetWriter(self.file, table.schema, compression="zstd")
        self.writer.write_table(table, row_group_size=len(table))
        self.rows += len(table)
        self.buffer, self.buffered = [], 0

    def _finish_file(self) -> None:
        self._flush()
        if self.writer is None:
            return
        self.writer.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        assert self.tmp is not None and self.final is not None
        os.replace(self.tmp, self.final)
        self.dirs.add(self.final.parent)
        self.writer = self.file = self.tmp = self.final = None
        self.rows = 0

    def _mkdirs(self, directory: Path) -> None:
        missing = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        directory.mkdir(parents=True, exist_ok=True)
        for m in missing:  # a new directory's entry lives in its parent: fsync those too
            self.dirs.add(m.parent)

    def close(self) -> None:
        self._finish_file()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self.file is not None:
                self.file.close()
            if self.tmp is not None:
                self.tmp.unlink(missing_ok=True)


def _normalize(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Timestamps as timestamp[us, tz=UTC], whatever the session's time zone was."""
    fields = []
    arrays = []
    for f, a in zip(batch.schema, batch.columns):
        if pa.types.is_timestamp(f.type):
            a = a.cast(_UTC_US)
            f = f.with_type(_UTC_US)
        fields.append(f)
        arrays.append(a)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _runs(batch: pa.RecordBatch, by_model: bool) -> Iterator[tuple[tuple[str, ...], pa.RecordBatch]]:
    """Consecutive rows of one partition (the batch is sorted by partition), without `_day`."""
    n = batch.num_rows
    if not n:
        return
    keys = [batch.column("_day"), *([batch.column("model")] if by_model else [])]
    change = pc.not_equal(keys[0].slice(1), keys[0].slice(0, n - 1))
    for k in keys[1:]:
        change = pc.or_(change, pc.not_equal(k.slice(1), k.slice(0, n - 1)))
    starts = [0, *(i + 1 for i in pc.indices_nonzero(change).to_pylist()), n]
    body = batch.drop_columns(["_day"])
    for start, end in itertools.pairwise(starts):
        day = f"day={keys[0][start].as_py()}"
        part = (f"model={hive_escape(keys[1][start].as_py())}", day) if by_model else (day,)
        yield part, body.slice(start, end - start)


def _describe(filters: dict[str, Any]) -> str:
    given = [f"--{k} {v}" for k, v in filters.items() if v is not None]
    return " ".join(given) if given else "(none)"
