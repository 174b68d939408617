"""The embedded store: a DuckDB file holding predictions, label revisions and an ingest log.

Writes are set-based and transactional: a file (or request) is staged in a temporary table
batch by batch through Arrow, validated by `schema.normalize`, then merged with one statement per
outcome inside a single transaction, so either every accepted row of the file is committed or
none is. Prediction ids are immutable (same content again is a duplicate, different content a
conflict); a different label for an id is a new revision. The label that counts is the one
with the latest `label_ts` (unknown counts as oldest), then the latest arrival: the rule that
`eval --labels FILE` applies, so the store and files agree. The rollups follow the committed rows
through `_pending`: in the same transaction for a file, or a step later for the server's
group commits (`defer_rollups`), which then runs `apply_pending` for many commits at once.

Shadow predictions (kind "shadow": a candidate version scoring the same requests as production,
for the canary judge's shadow mode) are validated like predictions and kept apart in
`shadow_predictions`, keyed by (prediction_id, version): they never enter `predictions`, the
rollups or anything evaluated from them, and carry no segment or feature columns.
"""

from __future__ import annotations

import bisect
import datetime as dt
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import ibis
import ibis.expr.types as ir
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute

from msewatch.errors import InputError, StoreError, StoreLockedError
from msewatch.io import BatchReader, ParseReject, concat_batches
from msewatch.schema import (
    ColumnMap,
    Kind,
    check_required,
    clean_labels,
    clean_predictions,
    normalize,
    required_columns,
)
from msewatch.store import _pending
from msewatch.store import _rollups as rollups
from msewatch.store._id_filter import id_hashes
from msewatch.store._journal import Journal, Record, journal_files, read_records

__all__ = ["GroupIngest", "IngestResult", "Reject", "Store", "default_db_path"]

_CORE_PREDICTION_COLUMNS = ("prediction_id", "ts", "model", "version", "y_pred")
_SHADOW_KEY = ("prediction_id", "version")
_SHADOW_CONTENT = ("ts", "model", "y_pred")
_OLDEST = "TIMESTAMPTZ '0001-01-01 00:00:00+00'"
_CAUTIOUS_COMMITS = 100  # after a group met a stored id: commits that check conflicts first

_DDL = """
CREATE TABLE IF NOT EXISTS predictions (
    prediction_id VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    model VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    y_pred DOUBLE NOT NULL,
    source VARCHAR,
    ingested_at TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS predictions_prediction_id ON predictions (prediction_id);
CREATE TABLE IF NOT EXISTS shadow_predictions (
    prediction_id VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    model VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    y_pred DOUBLE NOT NULL,
    source VARCHAR,
    ingested_at TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS shadow_predictions_key ON shadow_predictions (prediction_id, version);
CREATE TABLE IF NOT EXISTS labels (
    prediction_id VARCHAR NOT NULL,
    y_true DOUBLE NOT NULL,
    label_ts TIMESTAMPTZ,
    revision INTEGER NOT NULL,
    is_current BOOLEAN NOT NULL,
    source VARCHAR,
    ingested_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS extra_columns (
    name VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,  -- 'segment' (text) or 'feature' (number)
    added_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_log (
    kind VARCHAR NOT NULL,
    source VARCHAR,
    accepted BIGINT NOT NULL,
    duplicates BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS journal_applied (seq BIGINT NOT NULL);  -- see store/_journal.py
"""


def default_db_path() -> str:
    """`MSEWATCH_DB` if set, else `msewatch.duckdb` in the working directory."""
    return os.environ.get("MSEWATCH_DB") or "msewatch.duckdb"


@dataclass(frozen=True)
class Reject:
    """A row refused at ingest, with the reason and the values as received."""

    row: int
    error: str
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejects: list[Reject] = field(default_factory=list)
    duplicate_rows: list[int] | None = None  # filled when the caller asks to track rows
    ignored_columns: list[str] = field(default_factory=list)  # input columns not stored (shadow)

    def add_duplicates(self, rows: Sequence[int]) -> None:
        self.duplicates += len(rows)
        if self.duplicate_rows is not None:
            self.duplicate_rows.extend(rows)

    @property
    def rejected(self) -> int:
        return len(self.rejects)

    def summary(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


ProgressCallback = Callable[[int, int], None]


@dataclass
class GroupIngest:
    """Several requests committed in one transaction: a result per request, and the pairs.

    `pairs` holds the predictions that gained their first label in this commit (model,
    version, the asked segment columns, y_pred, y_true, label latency in seconds), for
    counters that count at label arrival.
    """

    results: list[IngestResult]
    pairs: pa.Table | None = None
    inserted: pa.Table | None = None  # new predictions: model, version, segments, n
    shadow: pa.Table | None = None  # new shadow predictions: model, version, n


class Store:
    """A DuckDB file (or `:memory:`) with msewatch's tables.

    >>> with Store(":memory:") as store:
    ...     store.count("predictions")
    0
    """

    def __init__(
        self, path: str | os.PathLike[str] = ":memory:", *, read_only: bool = False, threads: int | None = None
    ) -> None:
        """`threads`: DuckDB's `threads` setting for this database (default: one per core)."""
        self.path = str(path)
        if read_only and self.path != ":memory:" and not Path(self.path).exists():
            raise StoreError(f"{self.path}: no such store; create it with `msewatch ingest`.")
        if read_only and journal_files(self.path):  # answered rows a stopped server left to apply
            try:
                Store(self.path).close()
            except StoreLockedError:
                pass  # the running server applies them
            except StoreError as exc:  # e.g. no write permission: read what the tables hold
                warnings.warn(f"{self.path}: answered rows in its journal are not applied ({exc})", stacklevel=2)
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.IOException as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise StoreLockedError(
                    f"{self.path} is in use by another process (DuckDB allows one writer); "
                    "stop that process, or query it through its server with --server URL."
                ) from exc
            raise StoreError(f"{self.path}: cannot open the store ({text.splitlines()[0]}).") from exc
        except duckdb.Error as exc:
            raise StoreError(
                f"{self.path}: not a DuckDB database or unreadable ({str(exc).splitlines()[0]})."
            ) from exc
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if not read_only:
            try:
                self.con.execute(_DDL)
                self._migrate_waiting_labels()
                self._migrate_rollups()
            except duckdb.Error as exc:  # e.g. a store written by hand with repeated ids
                self.con.close()
                raise StoreError(
                    f"{self.path}: cannot prepare the store's tables ({str(exc).splitlines()[0]})."
                ) from exc
        self._attach(self.con)
        if not read_only:
            try:
                self._replay_journal()  # rows a server answered for but stopped before applying
                self.apply_pending()  # rows a server committed but stopped before folding in
            except duckdb.Error as exc:
                self.con.close()
                raise StoreError(
                    f"{self.path}: cannot apply the store's journal ({str(exc).splitlines()[0]})."
                ) from exc

    def _migrate_waiting_labels(self) -> None:
        """`waiting_labels`: the ids that have a label but no prediction yet.

        A prediction commit pairs its new ids with this small table instead of reading every
        stored label (a DuckDB join reads the whole table: about 30 ms per million labels on every
        commit). A store from an older msewatch gets it filled once, on its first write-open.
        """
        existed = self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'waiting_labels' AND schema_name = 'main'"
        ).fetchall()[0][0]
        if existed:
            return
        self.con.execute("BEGIN")
        self.con.execute("CREATE TABLE waiting_labels (prediction_id VARCHAR NOT NULL)")
        self.con.execute(
            """INSERT INTO waiting_labels SELECT DISTINCT l.prediction_id FROM labels l
            WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.prediction_id = l.prediction_id)"""
        )
        self.con.execute("COMMIT")

    def _migrate_rollups(self) -> None:
        """Create the rollup tables, adding columns a store from an older msewatch lacks."""
        existed = bool(self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'rollups' AND schema_name = 'main'"
        ).fetchall()[0][0])
        have = {r[0] for r in self.con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'rollups' AND schema_name = 'main'"
        ).fetchall()}
        missing = [sql for column, sql in rollups.ROLLUP_MIGRATIONS if existed and column not in have]
        no_segments = existed and not self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'segment_rollups' AND schema_name = 'main'"
        ).fetchall()[0][0]
        no_state = not self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'rollup_state' AND schema_name = 'main'"
        ).fetchall()[0][0]
        self.con.execute(rollups.ROLLUP_DDL)
        if no_state:  # a new store, or one whose every row an older msewatch folded in at ingest
            rollups.set_watermark(self.con)
        if missing or no_segments:
            self.con.execute("BEGIN")
            for sql in missing:
                self.con.execute(sql)
            if missing:
                rollups.rebuild(self.con)
            else:  # only the hourly segment rollups are new to this store
                rollups.segments.rebuild(self.con)
            self.con.execute("COMMIT")

    def track_thresholds(self, model: str, thresholds: Sequence[float]) -> list[float]:
        """Keep per-minute counts of squared errors ≤ each threshold of `model` (event SLOs)."""
        self.con.execute("BEGIN")
        try:
            new = rollups.track_thresholds(self.con, model, list(thresholds))
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return new

    def unfolded_rows(self) -> int:
        """Committed predictions and labels not in the rollups yet (0 on a store without rollups)."""
        try:
            return rollups.unfolded_rows(self.con)
        except duckdb.CatalogException:  # a read-only store from before the rollups
            return 0

    def apply_pending(self, pair_columns: Sequence[str] | None = None) -> _pending.Applied:
        """Fold the committed rows the rollups do not hold yet into them, in one transaction."""
        self.con.execute("BEGIN")
        try:
            applied = self._apply(pair_columns)
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return applied

    def _apply(self, pair_columns: Sequence[str] | None) -> _pending.Applied:
        # read, not cached: on the server another connection adds the columns
        return _pending.apply(self.con, rollups.segments.segment_columns(self.con), pair_columns)

    def _attach(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.con.execute("SET TimeZone = 'UTC'")
        self.engine = ibis.duckdb.from_connection(self.con)
        self._starts: Sequence[int] = ()
        self._pair_columns: Sequence[str] | None = None
        self._pairs: pa.Table | None = None
        self._inserted: pa.Table | None = None
        self._shadow_inserted: pa.Table | None = None
        self._cautious_commits = 0  # group commits left that check conflicts (after a re-sent id)
        # compiled validation SQL by input shape: many small requests share a few shapes
        self._normalize_sql: dict[tuple[Any, ...], tuple[str, str]] = {}

    # -- the journal (see store/_journal.py) ---------------------------------------------------------
    def journal_applied(self) -> int:
        """The sequence number of the last journal record the tables hold (0: none)."""
        row = self.con.execute("SELECT max(seq) FROM journal_applied").fetchall()
        return int(row[0][0] or 0)

    def _replay_journal(self) -> None:
        if self.path == ":memory:" or not journal_files(self.path):
            return
        group: list[Record] = []  # consecutive records of a kind, up to ~100,000 rows: one transaction

        def flush() -> None:
            if group:
                self.ingest_group(group[0].kind, [(r.batch, r.batch.num_rows) for r in group],
                                  defer_rollups=True, journal_seq=group[-1].seq, proven=True)
                group.clear()

        rows = 0
        for record in read_records(self.path, after=self.journal_applied()):
            if group and (record.kind != group[0].kind or rows >= 100_000):
                flush()
                rows = 0
            group.append(record)
            rows += record.batch.num_rows
        flush()
        for file in journal_files(self.path):  # every record is in the tables now
            file.unlink()

    def open_journal(self) -> Journal | None:
        """A journal for this store's answered groups (None for a store in memory)."""
        if self.path == ":memory:":
            return None
        return Journal(self.path, self.journal_applied() + 1)  # opening applied every record

    def id_hashes(self, kind: Kind, stamp: dt.datetime | None = None) -> np.ndarray:
        """The hash (`_id_filter.id_hashes`) of every stored prediction or label id; with `stamp`, of one commit's only."""
        if kind not in ("predictions", "labels"):
            raise ValueError(f"kind must be 'predictions' or 'labels'; got {kind!r}")
        where = "WHERE ingested_at = $stamp" if stamp is not None else ""
        reader = self.con.sql(
            f"SELECT prediction_id FROM {kind} {where}", params={"stamp": stamp} if stamp is not None else None
        ).to_arrow_reader(1 << 20)
        parts = [id_hashes(batch.column(0)) for batch in reader]
        return np.concatenate(parts) if parts else np.array([], np.uint64)

    @property
    def last_stamp(self) -> dt.datetime | None:
        """`ingested_at` of the last commit of this connection."""
        return getattr(self, "_last_stamp", None)

    def reader(self) -> Store:
        """Another connection to the same open database, for reads beside the writer.

        DuckDB lets one process hold many connections to a file; each read sees the last
        committed state. Close it when done.
        """
        view = Store.__new__(Store)
        view.path = self.path
        view._attach(self.con.cursor())
        return view

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------------
    def count(self, table: str) -> int:
        if table not in ("predictions", "labels", "ingest_log", "shadow_predictions"):
            raise ValueError(f"unknown table {table!r}")
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])

    def predictions(self) -> ir.Table:
        """All stored predictions, with segment and feature columns."""
        return self.engine.table("predictions")

    def shadow_predictions(self) -> ir.Table:
        """All stored shadow predictions: prediction_id, ts, model, version, y_pred, source, ingested_at."""
        return self.engine.table("shadow_predictions")

    def current_labels(self) -> ir.Table:
        """The newest revision of each label: prediction_id, y_true, label_ts."""
        labels = self.engine.table("labels")
        return labels.filter(labels.is_current).select("prediction_id", "y_true", "label_ts")

    def extra_columns(self) -> dict[str, str]:
        """Segment and feature columns of the predictions table: name → 'segment' | 'feature'."""
        cached = getattr(self, "_extras", None)
        if cached is None:
            cached = self._extras = dict(
                self.con.execute("SELECT name, kind FROM extra_columns ORDER BY name").fetchall()
            )
        return dict(cached)

    # -- writing --------------------------------------------------------------------------------
    def ingest_file(
        self,
        kind: Kind,
        path: str | os.PathLike[str],
        columns: ColumnMap = ColumnMap(),
        *,
        source: str | None = None,
        default_model: str | None = None,
        default_version: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> IngestResult:
        """Ingest one Parquet, CSV or NDJSON file in one transaction."""
        reader = BatchReader(Path(path))
        if reader.columns:  # Parquet and CSV know their columns before the first row
            check_required(kind, columns, reader.columns, str(path))

        def batches() -> Iterable[pa.RecordBatch]:
            for batch in reader:
                yield batch
                if progress:
                    progress(reader.position, reader.total)

        result = self.ingest_batches(
            kind,
            batches(),
            columns,
            source=source if source is not None else str(path),
            default_model=default_model,
            default_version=default_version,
            parse_rejects=reader.parse_rejects,
        )
        return result

    def ingest_batches(
        self,
        kind: Kind,
        batches: Iterable[pa.RecordBatch],
        columns: ColumnMap = ColumnMap(),
        *,
        source: str = "",
        default_model: str | None = None,
        default_version: str | None = None,
        parse_rejects: Sequence[ParseReject] = (),
    ) -> IngestResult:
        """Validate, deduplicate and commit Arrow batches (each with `_row`) as one transaction."""
        return self._ingest(
            kind, batches, columns, source=source, default_model=default_model,
            default_version=default_version, parse_rejects=parse_rejects,
        )

    def ingest_group(
        self,
        kind: Kind,
        requests: Sequence[tuple[pa.RecordBatch, int]],
        *,
        source: str = "http",
        pair_columns: Sequence[str] | None = None,
        defer_rollups: bool = False,
        journal_seq: int | None = None,
        proven: bool = False,
    ) -> GroupIngest:
        """Commit several requests in one transaction (group commit) and split the outcome.

        Each request is a batch whose `_row` holds 0-based record indexes, with its record
        count. A prediction id sent with different content by an earlier request of the same
        group is reported to the later one as already stored, as it would be one commit later.
        With `pair_columns`, also return the newly labeled pairs (see `GroupIngest`). With
        `defer_rollups` the commit holds the rows only; `apply_pending` folds them in later.
        `journal_seq`: the group is that journal record (and those before it), applied.
        `proven`: each batch is what `clean_predictions` (with `_row`) or `clean_labels` made.
        """
        starts: list[int] = []
        batches: list[pa.RecordBatch] = []
        offset = 1
        for batch, count in requests:
            starts.append(offset)
            rows = pa.compute.add(batch.column("_row").cast(pa.int64()), offset)
            batches.append(batch.set_column(batch.schema.get_field_index("_row"), "_row", rows))
            offset += count
        if len(batches) > 1:  # validated in one statement: its planning is the fixed cost
            batches = concat_batches(batches).combine_chunks().to_batches()
        self._pair_columns = pair_columns
        self._pairs = self._inserted = self._shadow_inserted = None
        # re-sent ids are rare: insert without the conflict check, and if one was stored before,
        # roll back and commit the group again with it (for the next commits too, while re-sends last)
        optimistic = self._cautious_commits == 0
        self._cautious_commits = max(0, self._cautious_commits - 1)
        try:
            while True:
                total = IngestResult(duplicate_rows=[])
                try:
                    self._ingest(kind, batches, ColumnMap(), source=source, result=total, starts=starts,
                                 defer_rollups=defer_rollups, optimistic=optimistic, journal_seq=journal_seq,
                                 proven=proven)
                    break
                except duckdb.ConstraintException:
                    if not optimistic:
                        raise
                    optimistic, self._cautious_commits = False, _CAUTIOUS_COMMITS
        finally:
            self._pair_columns = None
        results = [IngestResult() for _ in requests]
        which = lambda row: bisect.bisect_right(starts, row) - 1
        for row in total.duplicate_rows or ():
            results[which(row)].duplicates += 1
        for reject in total.rejects:
            i = which(reject.row)
            results[i].rejects.append(Reject(reject.row - starts[i], reject.error, reject.record))
        for i, (batch, _) in enumerate(requests):
            r = results[i]
            r.accepted = batch.num_rows - r.duplicates - r.rejected
        return GroupIngest(results, self._pairs, self._inserted, self._shadow_inserted)

    def _ingest(
        self,
        kind: Kind,
        batches: Iterable[pa.RecordBatch],
        columns: ColumnMap,
        *,
        source: str,
        default_model: str | None = None,
        default_version: str | None = None,
        parse_rejects: Sequence[ParseReject] = (),
        result: IngestResult | None = None,
        starts: Sequence[int] = (),
        defer_rollups: bool = False,
        optimistic: bool = False,
        journal_seq: int | None = None,
        proven: bool = False,
    ) -> IngestResult:
        if kind not in ("predictions", "labels", "shadow"):
            raise ValueError(f"kind must be 'predictions', 'labels' or 'shadow'; got {kind!r}")
        started = _now()
        result = result if result is not None else IngestResult()
        self._starts = starts
        con = self.con
        stage: _Stage | None = None
        con.execute("BEGIN TRANSACTION")
        try:
            stage = _Stage(self, kind, columns, source, default_model, default_version)
            stage.optimistic, stage.proven = optimistic, proven
            # one request group of predictions: validated straight into the table (no `_stage`)
            stage.direct = optimistic and kind == "predictions" and isinstance(batches, list) and len(batches) == 1
            for batch in batches:
                stage.add(batch, result)
            stage.finish()
            result.rejects[:0] = [Reject(p.row, p.error, {"_raw": p.raw}) for p in parse_rejects]
            if stage.inserted is not None:
                result.accepted += stage.inserted
            elif stage.rows:
                if kind == "predictions":
                    self._merge_predictions(stage, result)
                elif kind == "shadow":
                    self._merge_shadow(stage, result)
                else:
                    self._merge_labels(stage, result)
            if kind != "shadow" and not defer_rollups:
                applied = self._apply(self._pair_columns)
                self._pairs, self._inserted = applied.pairs, applied.inserted
            result.ignored_columns.extend(c for c in stage.ignored if c not in result.ignored_columns)
            result.rejects.sort(key=lambda r: r.row)
            con.execute(
                "INSERT INTO ingest_log VALUES (?, ?, ?, ?, ?, ?, ?)",
                [kind, source, result.accepted, result.duplicates, result.rejected, started, _now()],
            )
            if journal_seq is not None:
                con.execute("DELETE FROM journal_applied; INSERT INTO journal_applied VALUES (?)", [journal_seq])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            self._columns = self._extras = None  # a column added in this transaction is gone again
            raise
        finally:
            if stage is None or stage.inserted is None:
                con.execute("DROP TABLE IF EXISTS _stage")
        return result

    def _insert_new(self, stage: _Stage, result: IngestResult, *, table: str, key: Sequence[str],
                    content: Sequence[str], columns: Sequence[str], name: Callable[..., str]) -> dt.datetime:
        """Insert the valid staged rows into `table` once per `key`; return the commit's stamp.

        A key repeated inside the input, or already stored, with the same `content` is a
        duplicate and with other content a conflict (rejected: `name(*key values)` says which
        row). The table's unique index refuses stored keys, so the usual input (all new) costs
        index probes, not a scan of every stored key. The inserted rows are those of `table`
        whose `ingested_at` is the stamp.
        """
        con = self.con
        keys = ", ".join(_q(c) for c in key)
        on = lambda a, b: " AND ".join(f"{a}.{_q(c)} = {b}.{_q(c)}" for c in key)
        same_as = lambda a, b: " AND ".join(
            f"{a}.{_q(c)} IS NOT DISTINCT FROM {b}.{_q(c)}" for c in content
        )
        names = ", ".join(_q(c) for c in columns)
        # keys repeated inside the input are rare: one count tells, and without repeats the valid
        # staged rows are inserted as they are (statements are the fixed cost of a group commit)
        candidates, distinct = con.execute(
            f"SELECT count(*), count(DISTINCT ({keys})) FROM _stage WHERE _ok"
        ).fetchall()[0]
        source = "(SELECT * FROM _stage WHERE _ok)"
        if distinct < candidates:
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE _repeats AS SELECT {keys}, min(_row) AS _first
                FROM _stage WHERE _ok GROUP BY {keys} HAVING count(*) > 1"""
            )
            con.execute(
                f"""CREATE OR REPLACE TEMP VIEW _ranked AS
                SELECT s.*, (rp._first IS NULL OR s._row = rp._first) AS _is_first
                FROM _stage s LEFT JOIN _repeats rp USING ({keys}) WHERE s._ok"""
            )
            # repeats inside the input: identical ones are duplicates, different ones conflicts
            rows = con.execute(
                f"""SELECT r._row, f._row, {same_as('r', 'f')}, {', '.join('r.' + _q(c) for c in key)}
                FROM (SELECT * FROM _ranked WHERE NOT _is_first) r
                JOIN (SELECT * FROM _ranked SEMI JOIN _repeats USING ({keys}) WHERE _is_first) f ON {on('f', 'r')}"""
            ).fetchall()
            for row, first_row, same, *values in rows:
                if same:
                    result.add_duplicates([row])
                elif self._same_request(row, first_row):
                    first = self._request_row(first_row)
                    result.rejects.append(Reject(
                        row, f"{name(*values)} appears earlier in this input (row {first}) with different content", {}
                    ))
                else:
                    result.rejects.append(Reject(row, f"{name(*values)} is already stored with different content", {}))
            candidates = con.execute(
                f"CREATE OR REPLACE TEMP TABLE _insert AS SELECT {names}, _row FROM _ranked WHERE _is_first"
            ).fetchall()[0][0]
            source = "_insert"
        stamp = self._stamp()
        # optimistic: a stored key fails the statement (and the caller retries without it)
        conflicts = "" if stage.optimistic and source != "_insert" else "ON CONFLICT DO NOTHING"
        inserted = con.execute(
            f"""INSERT INTO {table} ({names}, source, ingested_at) SELECT {names}, ?, ? FROM {source}
            {conflicts}""",
            [stage.source, stamp],
        ).fetchall()
        accepted = int(inserted[0][0]) if inserted else 0
        result.accepted += accepted
        if accepted < candidates:  # some keys were stored before this commit: which, and how
            rows = con.execute(
                f"""SELECT i._row, {same_as('i', 'p')}, {', '.join('i.' + _q(c) for c in key)}
                FROM {source} i JOIN {table} p ON {on('p', 'i')}
                WHERE p.ingested_at <> ?""",
                [stamp],
            ).fetchall()
            for row, same, *values in rows:
                if same:
                    result.add_duplicates([row])
                else:
                    result.rejects.append(Reject(row, f"{name(*values)} is already stored with different content", {}))
        if source == "_insert":
            con.execute("DROP VIEW IF EXISTS _ranked; DROP TABLE IF EXISTS _insert; DROP TABLE IF EXISTS _repeats")
        return stamp

    def _merge_predictions(self, stage: _Stage, result: IngestResult) -> None:
        self._insert_new(
            stage, result, table="predictions", key=("prediction_id",),
            content=[*_CORE_PREDICTION_COLUMNS[1:], *stage.extras],
            columns=[*_CORE_PREDICTION_COLUMNS, *stage.extras], name=lambda pid: f"prediction_id {pid!r}",
        )

    def _merge_shadow(self, stage: _Stage, result: IngestResult) -> None:
        """Shadow predictions into `shadow_predictions`: no extras, no rollups, no pairs.

        The key is (prediction_id, version): the same key with the same ts, model and y_pred
        is a duplicate, with other content a conflict; a production prediction with the same
        id is another table and never compared.
        """
        stamp = self._insert_new(
            stage, result, table="shadow_predictions", key=_SHADOW_KEY, content=_SHADOW_CONTENT,
            columns=_CORE_PREDICTION_COLUMNS,
            name=lambda pid, version: f"shadow prediction_id {pid!r} of version {version!r}",
        )
        if self._pair_columns is not None:  # for the server's shadow counter
            self._shadow_inserted = self.con.sql(
                "SELECT model, version, count(*) AS n FROM shadow_predictions WHERE ingested_at = $t GROUP BY ALL",
                params={"t": stamp},
            ).to_arrow_table()

    def _merge_labels(self, stage: _Stage, result: IngestResult) -> None:
        con = self.con
        # usually no id of the input has a stored label yet (one scan of the labels tells, and
        # then nothing needs to look at stored labels again), and each id comes once
        rows, ids, stored = con.execute(
            """SELECT count(*), count(DISTINCT prediction_id), (SELECT count(*) FROM labels
                SEMI JOIN (SELECT prediction_id FROM _stage WHERE _ok) USING (prediction_id))
            FROM _stage WHERE _ok"""
        ).fetchall()[0]
        if not stored and ids == rows:  # every label is its id's first and current revision
            inserted = con.execute(
                "INSERT INTO labels SELECT prediction_id, y_true, label_ts, 1, true, ?, ? FROM _stage WHERE _ok",
                [stage.source, self._stamp()],
            ).fetchall()
            result.accepted += int(inserted[0][0]) if inserted else 0
            return
        if not stored:
            self._merge_fresh_labels(stage, result)
            return
        stored = """EXISTS (SELECT 1 FROM labels l
            WHERE l.prediction_id = s.prediction_id AND l.y_true = s.y_true
              AND l.label_ts IS NOT DISTINCT FROM s.label_ts)"""
        # order within the input: by label time (unknown first), then row; a label equal to one
        # already seen for the id (same value and label time) is a duplicate, never a revision
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _ranked AS
            SELECT s.*,
                row_number() OVER (PARTITION BY prediction_id, y_true, label_ts ORDER BY _row) AS _copy,
                {stored} AS _stored
            FROM _stage s WHERE _ok"""
        )
        if result.duplicate_rows is None:
            dup = con.execute("SELECT count(*) FROM _ranked WHERE _copy > 1 OR _stored").fetchall()
            result.duplicates += int(dup[0][0]) if dup else 0
        else:
            dup_rows = con.execute("SELECT _row FROM _ranked WHERE _copy > 1 OR _stored").fetchall()
            result.add_duplicates([r for (r,) in dup_rows])
        # revisions number the arrivals; which one counts is decided below
        con.execute(
            """CREATE OR REPLACE TEMP TABLE _new AS
            SELECT n.prediction_id, n.y_true, n.label_ts,
                coalesce(m.revision, 0) + row_number() OVER
                    (PARTITION BY n.prediction_id ORDER BY n.label_ts NULLS FIRST, n._row) AS revision
            FROM (SELECT * FROM _ranked WHERE _copy = 1 AND NOT _stored) n
            LEFT JOIN (SELECT prediction_id, max(revision) AS revision
                FROM labels SEMI JOIN _ranked USING (prediction_id)
                GROUP BY prediction_id) m USING (prediction_id)"""
        )
        inserted = con.execute(
            """INSERT INTO labels
            SELECT prediction_id, y_true, label_ts, revision, false, ?, ? FROM _new""",
            [stage.source, self._stamp()],
        ).fetchall()
        # the current label: latest label_ts (unknown counts as oldest), then latest arrival,
        # the same rule `eval --labels FILE` applies to a file, so store and files agree
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _best AS SELECT prediction_id,
                arg_max(revision, {{'t': coalesce(label_ts, {_OLDEST}), 'r': revision}}) AS revision
            FROM labels WHERE prediction_id IN (SELECT prediction_id FROM _new) GROUP BY prediction_id"""
        )
        con.execute(
            """UPDATE labels SET is_current = (labels.revision = b.revision)
            FROM _best b WHERE labels.prediction_id = b.prediction_id"""
        )
        result.accepted += int(inserted[0][0]) if inserted else 0
        con.execute("DROP TABLE IF EXISTS _ranked; DROP TABLE IF EXISTS _new; DROP TABLE IF EXISTS _best")

    def _merge_fresh_labels(self, stage: _Stage, result: IngestResult) -> None:
        """Labels for ids without a stored label (the usual commit): every step reads the input only.

        The same rules as `_merge_labels`, in fewer statements: an identical copy (id, value and
        label time) is a duplicate; revisions number the rest by label time (unknown first), then
        row, so the highest revision of an id is its current label.
        """
        con = self.con
        added = con.execute(
            """CREATE OR REPLACE TEMP TABLE _new AS
            SELECT prediction_id, y_true, label_ts, _row, row_number() OVER w AS revision,
                row_number() OVER w = count(*) OVER (PARTITION BY prediction_id) AS is_current
            FROM (SELECT prediction_id, y_true, label_ts, min(_row) AS _row FROM _stage WHERE _ok GROUP BY ALL)
            WINDOW w AS (PARTITION BY prediction_id ORDER BY label_ts NULLS FIRST, _row)"""
        ).fetchall()[0][0]
        if added < stage.rows:  # identical copies inside the input
            if result.duplicate_rows is None:
                result.duplicates += stage.rows - added
            else:
                rows = con.execute("SELECT _row FROM _stage WHERE _ok AND _row NOT IN (SELECT _row FROM _new)").fetchall()
                result.add_duplicates([r for (r,) in rows])
        stamp = self._stamp()
        inserted = con.execute(
            "INSERT INTO labels SELECT prediction_id, y_true, label_ts, revision, is_current, ?, ? FROM _new",
            [stage.source, stamp],
        ).fetchall()
        result.accepted += int(inserted[0][0]) if inserted else 0
        con.execute("DROP TABLE IF EXISTS _new")

    def _stamp(self) -> dt.datetime:
        """`ingested_at` of this commit: later than any before it, so it tells its rows apart.

        Later than every stamp already stored too (a restart after the clock stepped back),
        so `ingested_at` orders commits and the lake sink can export by it.
        """
        now = _now()
        last = getattr(self, "_last_stamp", None)
        if last is None:
            last = self.con.execute(
                "SELECT max(t) FROM (SELECT max(ingested_at) AS t FROM predictions UNION ALL "
                "SELECT max(ingested_at) FROM labels UNION ALL SELECT max(ingested_at) FROM shadow_predictions)"
            ).fetchall()[0][0]
        if last is not None and now <= last:
            now = last + dt.timedelta(microseconds=1)
        self._last_stamp = now
        return now

    def _stored_columns(self) -> set[str]:
        cached = getattr(self, "_columns", None)
        if cached is None:
            cached = self._columns = {
                c for (c,) in self.con.execute("SELECT column_name FROM (DESCRIBE predictions)").fetchall()
            }
        return cached

    def _request_row(self, row: int) -> int:
        """A row number of a group commit as its request numbers it."""
        starts = self._starts
        return row - starts[bisect.bisect_right(starts, row) - 1] if starts else row

    def _same_request(self, row: int, other: int) -> bool:
        starts = self._starts
        return not starts or bisect.bisect_right(starts, row) == bisect.bisect_right(starts, other)


class _Stage:
    """The temporary table `_stage` that one ingest fills batch by batch."""

    def __init__(
        self,
        store: Store,
        kind: Kind,
        columns: ColumnMap,
        source: str,
        default_model: str | None,
        default_version: str | None,
    ) -> None:
        self.store, self.kind, self.columns, self.source = store, kind, columns, source
        self.default_model, self.default_version = default_model, default_version
        self.known = store.extra_columns()
        self.extras: dict[str, str] = {}
        self.ignored: dict[str, None] = {}  # input columns a shadow row does not keep, in order
        self.rows = 0
        self.optimistic = False  # insert new keys without ON CONFLICT (see Store.ingest_group)
        self.direct = False  # optimistic, and one batch: insert its valid rows with the validation
        self.proven = False  # the batches passed the proof already (journal records)
        self.inserted: int | None = None  # rows the direct insert stored
        self.seen_required: set[str] = set()
        self.created = False

    def add(self, batch: pa.RecordBatch, result: IngestResult) -> None:
        names = self.columns.source_names()
        required = [names[c] for c in required_columns(self.kind)]
        self.seen_required |= {n for n in required if n in batch.schema.names}
        direct = self.direct and not self.created and all(n in batch.schema.names for n in required)
        optional = [names["label_ts"]] if self.kind == "labels" else []
        for name in [*required, *optional]:  # a key no record of this batch has is a null column
            if name not in batch.schema.names:
                batch = batch.append_column(name, pa.nulls(batch.num_rows, pa.string()))
        received = batch
        if self.kind == "predictions":
            self._register_extras(batch)
        elif self.kind == "shadow":  # only the contract columns: no segments or features
            keep = {names[c] for c in _CORE_PREDICTION_COLUMNS} | {"_row"}
            dropped = [n for n in batch.schema.names if n not in keep]
            if dropped:
                self.ignored.update(dict.fromkeys(dropped))
                batch = batch.drop_columns(dropped)
        # every row provably good (the usual request): no validation SQL (its planning is the cost)
        plain = self.columns == ColumnMap() and self.default_model is None and self.default_version is None
        clean = None
        if direct and plain:
            clean = batch if self.proven else clean_predictions(batch, self.extras)
        elif self.kind == "labels" and plain and self.store._starts and not self.created:  # a group commit
            clean = batch if self.proven else clean_labels(batch)
        sql, errors_sql = self._sql(batch.schema) if clean is None else ("", "")
        con = self.store.con
        con.register("_batch", batch if clean is None else clean)
        try:
            if direct:  # a new id per row: a stored or repeated one fails the statement (and the group)
                stored = ", ".join(_q(c) for c in [*_CORE_PREDICTION_COLUMNS, *self.extras])
                inserted = con.execute(
                    f"""INSERT INTO predictions ({stored}, source, ingested_at)
                    SELECT {stored}, ?, ? FROM {'_batch' if clean is not None else f'({sql}) WHERE _ok'}""",
                    [self.source, self.store._stamp()],
                ).fetchall()
                self.inserted = int(inserted[0][0]) if inserted else 0
                self.created = True
                n_bad = batch.num_rows - self.inserted
            elif clean is not None:  # labels: staged as they are, every row good
                con.execute("CREATE TEMP TABLE _stage AS SELECT *, true AS _ok FROM _batch")
                self.created = True
                n_bad = 0
            else:
                if not self.created:  # one statement: planning the validation SQL is its fixed cost
                    con.execute(f"CREATE TEMP TABLE _stage AS {sql}")
                    self.created = True
                else:
                    self._add_stage_columns()
                    con.execute(f"INSERT INTO _stage BY NAME {sql}")
                rows = batch.column("_row")
                # _row grows batch by batch, so the range scan touches this batch's row groups only
                n_bad = con.execute(
                    "SELECT count(*) FROM _stage WHERE _row BETWEEN ? AND ? AND NOT _ok",
                    [rows[0].as_py(), rows[len(rows) - 1].as_py()],
                ).fetchall()[0][0]
            # the reasons are worded only for the rejected rows, in a second pass over the batch
            bad = con.execute(f"{errors_sql} ORDER BY _row").fetchall() if n_bad else []
        finally:
            try:
                con.unregister("_batch")
            except duckdb.TransactionException:  # a failed direct insert aborted the transaction
                pass  # the caller rolls back; the next request registers its own batch
        if bad:
            position = {row: i for i, row in enumerate(batch.column("_row").to_pylist())}
            records = received.take(pa.array([position[row] for row, _ in bad])).to_pylist()
            for (row, error), record in zip(bad, records):
                record.pop("_row", None)
                result.rejects.append(Reject(row, error, record))
        self.rows += batch.num_rows - len(bad)

    def _sql(self, schema: pa.Schema) -> tuple[str, str]:
        """The validation SQL for inputs of this shape, and the SQL of its rejects' reasons."""
        key = (self.kind, self.columns, self.source, self.default_model, self.default_version,
               tuple(sorted(self.extras.items())), schema)
        cache = self.store._normalize_sql
        sqls = cache.get(key)
        if sqls is None:
            raw = ibis.table(ibis.Schema.from_pyarrow(schema), name="_batch")
            exprs = [
                normalize(
                    raw,
                    self.kind,
                    self.columns,
                    source=self.source,
                    default_model=self.default_model,
                    default_version=self.default_version,
                    feature_columns=frozenset(n for n, k in self.extras.items() if k == "feature"),
                    segment_columns=frozenset(n for n, k in self.extras.items() if k == "segment"),
                    reasons=reasons,
                )
                for reasons in (False, True)
            ]
            errors = exprs[1].filter(~exprs[1]._ok).select("_row", "_error")
            sqls = (ibis.to_sql(exprs[0], dialect="duckdb"), ibis.to_sql(errors, dialect="duckdb"))
            if len(cache) >= 256:
                cache.clear()
            cache[key] = sqls
        return sqls

    def _register_extras(self, batch: pa.RecordBatch) -> None:
        contract = set(self.columns.source_names().values())
        con = self.store.con
        for f in batch.schema:
            name = f.name
            if name in contract or name.startswith("_") or name in self.extras:
                continue
            kind = self.known.get(name) or _infer_kind(batch.column(name))
            self.extras[name] = kind
            if name not in self.known:
                stored = con.execute("SELECT column_name FROM (DESCRIBE predictions)").fetchall()
                clash = next((c for (c,) in stored if c.casefold() == name.casefold()), None)
                if clash is not None:  # 'source', 'ts' left over after a mapping, 'Region' vs 'region'
                    raise InputError(
                        f"{self.source}: column {name!r} clashes with the stored column {clash!r} "
                        "(names are case-insensitive); rename it, or map the columns with the options."
                    )
                sql_type = "DOUBLE" if kind == "feature" else "VARCHAR"
                con.execute(f"ALTER TABLE predictions ADD COLUMN {_q(name)} {sql_type}")
                self.store._columns = None
                con.execute("INSERT INTO extra_columns VALUES (?, ?, ?)", [name, kind, _now()])
                self.store._extras = None
                self.known[name] = kind

    def _add_stage_columns(self) -> None:
        if not self.created:
            return
        con = self.store.con
        have = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE _stage)").fetchall()}
        for name, kind in self.extras.items():
            if name not in have:
                con.execute(
                    f"ALTER TABLE _stage ADD COLUMN {_q(name)} {'DOUBLE' if kind == 'feature' else 'VARCHAR'}"
                )

    def finish(self) -> None:
        names = self.columns.source_names()
        missing = [names[c] for c in required_columns(self.kind) if names[c] not in self.seen_required]
        if self.created and missing:
            what = ", ".join(repr(m) for m in missing)
            raise InputError(f"{self.source}: missing required column {what} for {self.kind}.")
        if not self.created:
            self.rows = 0


def _infer_kind(column: pa.Array) -> str:
    """'feature' for numbers (or text that is all numbers), else 'segment'."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return "feature"
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        values = [v for v in column.to_pylist()[:10_000] if v is not None and v.strip()]
        if values and all(_is_number(v) for v in values):
            return "feature"
    return "segment"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _q(name: str) -> str:
    """A quoted SQL identifier; column names are data, never SQL."""
    return '"' + name.replace('"', '""') + '"'


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def rejects_to_ndjson(rejects: Iterable[Reject]) -> bytes:
    """One JSON object per rejected row: row, error and the values as received."""
    return b"".join(
        orjson.dumps({"row": r.row, "error": r.error, "record": r.record}, default=str) + b"\n"
        for r in rejects
    )
