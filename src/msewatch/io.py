"""Reading Parquet, CSV and NDJSON files into Arrow, by extension.

Every record gets `_row`, its 1-based record number in the file (the line number for NDJSON),
so a rejected row can be found again. Records that cannot be parsed at all (a CSV line with the
wrong number of fields, a line that is not a JSON object) are kept as `ParseReject`s with their
reason; the rest of the file is read. A file that cannot be read at all raises `InputError`.

CSV and NDJSON values arrive as text or JSON scalars and are typed later by `schema.normalize`,
so one odd value never makes a whole column unreadable.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msewatch.errors import InputError

__all__ = ["FORMATS", "BatchReader", "ParseReject", "concat_batches", "file_format", "records_to_batch", "scan"]

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "ndjson",
    ".ndjson": "ndjson",
}
DEFAULT_BATCH_ROWS = 256 * 1024
_INT64_LIMIT = 2**63


@dataclass(frozen=True)
class ParseReject:
    """A record that could not be parsed into columns."""

    row: int
    error: str
    raw: str = ""


def file_format(path: str | os.PathLike[str]) -> str:
    """'parquet', 'csv' or 'ndjson' from the extension; InputError if the file is unusable."""
    p = Path(path)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise InputError(f"{p}: unknown file type {p.suffix or '(none)'!r}; expected one of {known}.")
    if not p.exists():
        raise InputError(f"{p}: no such file.")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file.")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: permission denied.")
    return fmt


@dataclass
class BatchReader:
    """Arrow record batches of one file, each with a `_row` column.

    `total` and `position` measure progress: rows for Parquet, bytes for CSV and NDJSON.
    """

    path: Path
    batch_rows: int = DEFAULT_BATCH_ROWS
    fmt: str = ""
    total: int = 0
    position: int = 0
    parse_rejects: list[ParseReject] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.fmt = file_format(self.path)
        if self.fmt == "parquet":
            try:
                self._parquet = pq.ParquetFile(self.path)
            except Exception as exc:  # pyarrow raises several types for a bad footer
                raise InputError(f"{self.path}: not a readable Parquet file ({_first_line(exc)}).") from exc
            self.total = self._parquet.metadata.num_rows
            self.columns = list(self._parquet.schema_arrow.names)
        else:
            self.total = self.path.stat().st_size
            if self.total == 0 and self.fmt == "ndjson":
                raise InputError(f"{self.path}: empty NDJSON file (0 bytes).")
            self.columns = self._csv_header() if self.fmt == "csv" else []

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self.fmt == "parquet":
            yield from self._iter_parquet()
        elif self.fmt == "csv":
            yield from self._iter_csv()
        else:
            yield from self._iter_ndjson()

    # -- Parquet ------------------------------------------------------------------------------
    def _iter_parquet(self) -> Iterator[pa.RecordBatch]:
        start = 0
        try:
            for batch in self._parquet.iter_batches(batch_size=self.batch_rows):
                out = _with_rows(batch, start + 1)
                start += batch.num_rows
                self.position = start  # before the yield: the consumer reports progress then
                yield out
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{self.path}: unreadable Parquet data ({_first_line(exc)}).") from exc

    # -- CSV ----------------------------------------------------------------------------------
    def _csv_header(self) -> list[str]:
        with open(self.path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            lines = csv.reader(fh)
            try:
                header = next(lines)
            except StopIteration:
                raise InputError(f"{self.path}: empty CSV file (no header line).") from None
            except csv.Error as exc:
                raise InputError(f"{self.path}: unreadable CSV header ({exc}).") from exc
            try:
                has_data = any(any(v.strip() for v in line) for line in lines)
            except csv.Error:
                has_data = True  # something follows the header; the reader reports it per row
            if not has_data:
                raise InputError(f"{self.path}: CSV file has a header line but no data rows.")
        names = [h.strip() for h in header]
        if not any(names):
            raise InputError(f"{self.path}: empty CSV header line.")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InputError(f"{self.path}: duplicate column names in the header: {dupes}.")
        return names

    def _iter_csv(self) -> Iterator[pa.RecordBatch]:
        skipped: list[int] = []

        def on_invalid(row: Any) -> str:
            number = getattr(row, "number", None)
            # pyarrow counts lines from 1 with the header; records count data rows from 1
            where = int(number) - 1 if number is not None and number > 0 else 0
            skipped.append(where)
            self.parse_rejects.append(
                ParseReject(
                    row=where,
                    error=f"expected {row.expected_columns} fields, found {row.actual_columns}",
                    raw=str(row.text)[:200],
                )
            )
            return "skip"

        read = pacsv.ReadOptions(
            column_names=self.columns, skip_rows=1, block_size=8 * 1024 * 1024, use_threads=False
        )
        parse = pacsv.ParseOptions(invalid_row_handler=on_invalid, newlines_in_values=True)
        convert = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in self.columns},
            strings_can_be_null=True,
            null_values=[""],
        )
        start = 0
        with open(self.path, "rb") as fh:
            try:
                reader = pacsv.open_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
                for batch in reader:
                    if batch.num_rows == 0:
                        continue
                    rows, start = _record_numbers(start, batch.num_rows, skipped)
                    self.position = fh.tell()  # before the yield: the consumer reports progress then
                    yield _with_rows(batch, rows)
            except (pa.ArrowException, UnicodeDecodeError) as exc:
                raise InputError(f"{self.path}: unreadable CSV ({_first_line(exc)}).") from exc
        self.position = self.total

    # -- NDJSON -------------------------------------------------------------------------------
    def _iter_ndjson(self) -> Iterator[pa.RecordBatch]:
        records: list[dict[str, Any]] = []
        rows: list[int] = []
        with open(self.path, "rb") as fh:
            for number, line in enumerate(fh, start=1):
                self.position += len(line)
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    self.parse_rejects.append(
                        ParseReject(number, f"not valid JSON ({exc})", _preview(line))
                    )
                    continue
                if not isinstance(obj, dict):
                    self.parse_rejects.append(
                        ParseReject(number, f"expected a JSON object, found {type(obj).__name__}", _preview(line))
                    )
                    continue
                records.append(obj)
                rows.append(number)
                if len(records) >= self.batch_rows:
                    yield records_to_batch(records, rows)
                    records, rows = [], []
            if records:
                yield records_to_batch(records, rows)


def scan(con: Any, path: str | os.PathLike[str]) -> tuple[ir.Table, list[ParseReject]]:
    """The whole file as an Ibis table on `con`, lazily for Parquet (the engine reads it)."""
    reader = BatchReader(Path(path))
    if reader.fmt == "parquet":
        table = con.read_parquet(str(reader.path), file_row_number=True)
        table = table.mutate(_row=table["file_row_number"] + 1).drop("file_row_number")
        return table, []
    batches = list(reader)
    if not batches:
        names = reader.columns or []
        empty = pa.table({**{n: pa.array([], pa.string()) for n in names}, "_row": pa.array([], pa.int64())})
        return ibis.memtable(empty), reader.parse_rejects
    return ibis.memtable(concat_batches(batches)), reader.parse_rejects


def _record_numbers(last: int, count: int, skipped: list[int]) -> tuple[pa.Array, int]:
    """The next `count` record numbers after `last`, passing over the malformed ones."""
    out: list[int] = []
    skip = set(skipped)
    n = last
    while len(out) < count:
        n += 1
        if n not in skip:
            out.append(n)
    return pa.array(out, pa.int64()), n


def _with_rows(batch: pa.RecordBatch, first: int | pa.Array) -> pa.RecordBatch:
    if isinstance(first, int):
        rows = pa.array(np.arange(first, first + batch.num_rows, dtype=np.int64))
    else:
        rows = first
    names = [n for n in batch.schema.names if n != "_row"]
    return pa.RecordBatch.from_arrays([batch.column(n) for n in names] + [rows], names=[*names, "_row"])


def records_to_batch(records: list[dict[str, Any]], rows: list[int]) -> pa.RecordBatch:
    names: dict[str, None] = {}
    for rec in records:
        for key in rec:
            names.setdefault(str(key), None)
    arrays = [_column([rec.get(name) for rec in records]) for name in names if name != "_row"]
    fields = [name for name in names if name != "_row"]
    return pa.RecordBatch.from_arrays([*arrays, pa.array(rows, pa.int64())], names=[*fields, "_row"])


def _column(values: list[Any]) -> pa.Array:
    """An Arrow array for JSON scalars: one type when they agree, else their text."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.array(values, pa.string())
    if kinds == {bool}:
        return pa.array(values, pa.bool_())
    if kinds == {int} and all(v is None or -_INT64_LIMIT <= v < _INT64_LIMIT for v in values):
        return pa.array(values, pa.int64())
    if kinds in ({float}, {int, float}) and all(
        type(v) is not int or -_INT64_LIMIT <= v < _INT64_LIMIT for v in values
    ):  # an integer beside floats is a float, rounded to the nearest (Arrow refuses to round)
        return pa.array([float(v) if type(v) is int else v for v in values], pa.float64())
    if kinds == {str}:
        return pa.array(values, pa.string())
    return pa.array([_text(v) for v in values], pa.string())


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if type(value) is int:  # any size, as written
        return str(value)
    return orjson.dumps(value).decode()


def concat_batches(batches: list[pa.RecordBatch]) -> pa.Table:
    """One table from batches whose column sets or types may differ (NDJSON)."""
    types: dict[str, pa.DataType] = {}
    for batch in batches:
        for f in batch.schema:
            if f.name not in types or pa.types.is_null(types[f.name]):
                types[f.name] = f.type
            elif types[f.name] != f.type and not pa.types.is_null(f.type):
                types[f.name] = pa.string()
    tables = []
    for batch in batches:
        cols = {}
        for name, typ in types.items():
            if name in batch.schema.names:
                column = batch.column(name)
                cols[name] = column if column.type == typ else _cast_text(column, typ)
            else:
                cols[name] = pa.nulls(batch.num_rows, typ)
        tables.append(pa.table(cols))
    return pa.concat_tables(tables)


def _cast_text(column: pa.Array, typ: pa.DataType) -> pa.Array:
    if typ == pa.string() and pa.types.is_temporal(column.type):
        return column.cast(pa.string())  # ISO 8601 text, which normalize parses back
    if typ == pa.string():
        return pa.array([_text(v) for v in column.to_pylist()], pa.string())
    return column.cast(typ)


def _preview(line: bytes) -> str:
    return line[:200].decode("utf-8", errors="replace").rstrip("\r\n")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

