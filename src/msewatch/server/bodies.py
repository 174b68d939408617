"""Request bodies to Arrow: a JSON object, a JSON array of objects, or NDJSON.

A body that cannot be read as a whole (not JSON, too deep, the wrong shape) is a `BodyError`
(HTTP 400). Inside a body that can be read, each record stands alone: a record that is not an
object, holds a nested value or an oversized string is rejected with its index, and the rest go
on to validation by `schema.normalize` in the store. Index = position in the array, or the
0-based line number in NDJSON.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from msewatch.io import records_to_batch
from msewatch.schema import ColumnMap, Kind, fits, required_columns

__all__ = ["MAX_FIELDS", "MAX_FIELD_CHARS", "BodyError", "ParsedBody", "parse_body"]

MAX_FIELD_CHARS = 1024  # any longer string is rejected before it reaches the engine
MAX_FIELDS = 64  # per record
MAX_NAME_CHARS = 128
_SCALARS = (str, int, float, bool, type(None))
_NUMBERS = ("y_pred", "y_true")


class BodyError(ValueError):
    """The body as a whole is unusable: HTTP 400, or 413 when it holds too many records."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ParsedBody:
    batch: pa.RecordBatch | None  # accepted records, `_row` = their index
    count: int  # records in the body, including rejected ones
    rejects: list[tuple[int, str]] = field(default_factory=list)
    ignored_fields: set[str] = field(default_factory=set)


def is_ndjson(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind in ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/json-seq")


def parse_body(body: bytes, content_type: str, kind: Kind, max_rows: int) -> ParsedBody:
    """Records of one request; BodyError when the body cannot be used at all."""
    items: list[tuple[int, Any]] = []
    rejects: list[tuple[int, str]] = []
    if is_ndjson(content_type):
        fast = _fast_ndjson(body, kind, max_rows)
        if fast is not None:
            return fast
        lines = body.split(b"\n")
        for index, line in enumerate(lines):
            line = line.removeprefix(b"\x1e")  # application/json-seq (RFC 7464): RS before each record
            if not line.strip():
                continue
            if len(items) + len(rejects) >= max_rows:
                raise BodyError(f"more than {max_rows} records in one request; split it.", 413)
            try:
                items.append((index, orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                rejects.append((index, f"not valid JSON ({_reason(exc)})"))
        count = len(lines)
    else:
        if not body.strip():
            raise BodyError("empty body; send a JSON object, a JSON array of objects, or NDJSON.")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            hint = "; NaN and Infinity are not JSON, send null or leave the row out" if _has_non_finite(body) else ""
            raise BodyError(f"not valid JSON ({_reason(exc)}){hint}.") from exc
        if isinstance(doc, dict):
            doc = [doc]
        if not isinstance(doc, list):
            raise BodyError(f"expected a JSON object or an array of objects, found {_json_type(doc)}.")
        if len(doc) > max_rows:
            raise BodyError(f"{len(doc)} records in one request, more than {max_rows}; split it.", 413)
        items = list(enumerate(doc))
        count = len(doc)
    records: list[dict[str, Any]] = []
    indexes: list[int] = []
    ignored: set[str] = set()
    for index, item in items:
        error = _record_error(item)
        if error:
            rejects.append((index, error))
            continue
        for key in [k for k in item if k.startswith("_")]:
            ignored.add(key)
            del item[key]
        records.append(item)
        indexes.append(index)
    rejects.sort()
    if not records:
        return ParsedBody(None, count, rejects, ignored)
    batch = _typed_times(records_to_batch(records, indexes))
    return ParsedBody(_with_required(batch, kind), count, rejects, ignored)


def _with_required(batch: pa.RecordBatch, kind: Kind) -> pa.RecordBatch:
    """A required field no record has becomes a null column, so each row gets its own reason."""
    names = ColumnMap().source_names()
    for contract in required_columns(kind):
        if names[contract] not in batch.schema.names:
            batch = batch.append_column(names[contract], pa.nulls(batch.num_rows, pa.string()))
    return batch


_FAST_TYPES = (pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.null())
_TEXT_TIMES = pa.schema([("ts", pa.string()), ("label_ts", pa.string())])


def _fast_ndjson(body: bytes, kind: Kind, max_rows: int) -> ParsedBody | None:
    """NDJSON read by Arrow's C++ reader (about 2.5x faster), or None to take the careful path.

    Only a body whose every line is a flat object that the careful path would accept as is
    comes back: anything unusual (blank or bad lines, NaN literals, any escape, nested or mixed
    values, long strings, odd field names) goes value by value through the path that words a
    reason for each record. Both give the same columns for the bodies this one takes.
    """
    # one byte each, found by memchr (a scan for "NaN" or "\\u" took 8x longer); NaN and
    # Infinity literals, which Arrow reads, show as non-finite floats below
    if not body or b"\\" in body or b"\r" in body:
        return None
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    if lines > max_rows:
        return None
    try:
        table = pajson.read_json(
            io.BytesIO(body),
            read_options=pajson.ReadOptions(use_threads=False),  # small bodies: threads cost more
            parse_options=pajson.ParseOptions(explicit_schema=_TEXT_TIMES, unexpected_field_behavior="infer"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != lines or table.num_columns > MAX_FIELDS:
        return None
    columns: dict[str, pa.Array] = {}
    ignored: set[str] = set()
    for f in table.schema:
        name = f.name
        if not name.strip() or len(name) > MAX_NAME_CHARS or not name.isprintable():
            return None
        if f.type not in _FAST_TYPES or (name in _NUMBERS and f.type == pa.bool_()):
            return None
        if name == "prediction_id" and f.type not in (pa.string(), pa.int64(), pa.null()):
            return None
        column = table.column(name).combine_chunks()
        if f.type == pa.string() and not fits(column, MAX_FIELD_CHARS):
            return None
        if f.type == pa.float64() and not pc.all(pc.is_finite(column)).as_py():  # all() skips nulls
            return None
        if name.startswith("_"):
            ignored.add(name)
            continue
        columns[name] = column.cast(pa.string()) if f.type == pa.null() else column
    for name in ("ts", "label_ts"):  # the explicit schema adds them; absent means absent
        if name in columns and columns[name].null_count == len(columns[name]) and f"\"{name}\"".encode() not in body:
            del columns[name]
    columns["_row"] = pa.array(np.arange(table.num_rows, dtype=np.int64))
    batch = pa.RecordBatch.from_pydict(columns)
    return ParsedBody(_with_required(_typed_times(batch), kind), table.num_rows, [], ignored)


def _typed_times(batch: pa.RecordBatch) -> pa.RecordBatch:
    """ISO 8601 time columns parsed by Arrow when every value parses (the usual case).

    Typed times skip the engine's text parsing; a column with any other spelling (epoch text,
    dates, mixed zones) stays text and is parsed, value by value, by `schema.normalize`.
    """
    for name in ("ts", "label_ts"):
        if name not in batch.schema.names or batch.schema.field(name).type != pa.string():
            continue
        column = batch.column(name)
        for typ in (pa.timestamp("us", "UTC"), pa.timestamp("us")):
            try:
                parsed = pc.cast(column, typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            if typ.tz is None:  # naive ISO 8601 means UTC
                parsed = pc.assume_timezone(parsed, "UTC")
            batch = batch.set_column(batch.schema.get_field_index(name), name, parsed)
            break
    return batch


def _record_error(item: Any) -> str | None:
    if not isinstance(item, dict):
        return f"expected a JSON object, found {_json_type(item)}"
    if len(item) > MAX_FIELDS:
        return f"more than {MAX_FIELDS} fields"
    for key, value in item.items():
        if not key.strip():  # no column can be named so ("" is not even an SQL identifier)
            return "a field name is empty or blank"
        if len(key) > MAX_NAME_CHARS or not key.isprintable():
            return f"field name {key[:40]!r}… is longer than {MAX_NAME_CHARS} characters or not printable"
        if not isinstance(value, _SCALARS):
            return f"field {key!r} must be a string, number, boolean or null, not {_json_type(value)}"
        if isinstance(value, bool) and key in _NUMBERS:  # else a column of booleans becomes 0/1
            return f"{key} is not a number: {'true' if value else 'false'}"
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            return f"field {key!r} is longer than {MAX_FIELD_CHARS} characters"
    return None


def _has_non_finite(body: bytes) -> bool:
    return any(word in body for word in (b"NaN", b"Infinity", b"nan", b"inf"))


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]
