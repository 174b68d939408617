"""Event schemas and their row-level validation, as Ibis expressions.

`normalize` turns a raw table (columns as read from a file or request, any types) into the typed
shape of the data contract (DESIGN.md section 4) plus two bookkeeping columns: `_row`, the record
number in the source, `_ok`, true for a good row, and `_error`, null for a good row or the
reason the row is rejected.
Because it is an Ibis expression, the same validation runs in DuckDB at ingest and in any engine
at evaluation time. `clean_predictions` is the server's shortcut: Arrow checks that prove a batch
of predictions needs none of it.
"""

from __future__ import annotations

import datetime
import functools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.compute as pc

from msewatch.errors import InputError

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_STRING_LENGTH",
    "UTC",
    "ColumnMap",
    "Kind",
    "check_required",
    "clean_labels",
    "clean_predictions",
    "fits",
    "normalize",
    "required_columns",
    "verdict",
]

# "shadow": predictions of a candidate version scored beside production (the canary judge's
# shadow mode), validated like predictions; only the contract columns are kept (no extras)
Kind = Literal["predictions", "labels", "joined", "shadow"]

UTC = dt.Timestamp(timezone="UTC")
MAX_ID_LENGTH = 256
MAX_STRING_LENGTH = 1024
DEFAULT_MODEL = "default"
DEFAULT_VERSION = "default"

# epoch seconds accepted as timestamps: years 1 to 9999
_EPOCH_MIN = -62_135_596_800.0
_EPOCH_MAX = 253_402_300_799.0
_FIRST_TIME = datetime.datetime(1, 1, 1, tzinfo=datetime.timezone.utc)
_LAST_TIME = datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.timezone.utc)
_TS_MIN = ibis.literal(_FIRST_TIME).cast(UTC)
_TS_MAX = ibis.literal(_LAST_TIME).cast(UTC)


@dataclass(frozen=True)
class ColumnMap:
    """Names of the contract columns in the user's data (`--id-col`, `--ts-col`, …)."""

    prediction_id: str = "prediction_id"
    ts: str = "ts"
    model: str = "model"
    version: str = "version"
    y_pred: str = "y_pred"
    y_true: str = "y_true"
    label_ts: str = "label_ts"

    def with_overrides(self, **names: str | None) -> ColumnMap:
        """This map with the given (non-None) names replaced."""
        return replace(self, **{k: v for k, v in names.items() if v})

    def source_names(self) -> dict[str, str]:
        """Contract name → source column name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def required_columns(kind: Kind) -> tuple[str, ...]:
    """Contract columns a source of this kind must have."""
    return {
        "predictions": ("prediction_id", "ts", "y_pred"),
        "labels": ("prediction_id", "y_true"),
        "joined": ("y_pred", "y_true"),
        "shadow": ("prediction_id", "ts", "y_pred"),
    }[kind]


def check_required(kind: Kind, columns: ColumnMap, present: Sequence[str], source: str) -> None:
    """InputError naming the required columns of `kind` that `present` lacks, if any."""
    names = columns.source_names()
    missing = [names[c] for c in required_columns(kind) if names[c] not in present]
    if missing:
        what = ", ".join(repr(m) for m in missing)
        found = ", ".join(repr(c) for c in present) or "none"
        raise InputError(
            f"{source or 'input'}: missing required column {what} for {kind}; found columns: {found}."
        )


def normalize(
    raw: ir.Table,
    kind: Kind,
    columns: ColumnMap = ColumnMap(),
    *,
    source: str = "",
    default_model: str | None = None,
    default_version: str | None = None,
    feature_columns: frozenset[str] = frozenset(),
    segment_columns: frozenset[str] = frozenset(),
    reasons: bool = True,
) -> ir.Table:
    """Typed contract columns, pass-through extras, `_row`, `_ok` and the rejection reason `_error`.

    With `reasons=False` there is no `_error` column: a smaller query, for callers that word
    the reasons of rejected rows separately.

    Extras (columns outside the contract) keep their values: those named in `feature_columns`,
    and numeric ones not named in `segment_columns`, become float64 features; everything else
    becomes a string segment.
    Raises InputError when a required column is missing.
    """
    names = columns.source_names()
    present = set(raw.columns)
    check_required(kind, columns, [c for c in raw.columns if c != "_row"], source)

    def col(contract: str) -> ir.Column | None:
        name = names[contract]
        return raw[name] if name in present else None

    checks: list[tuple[ir.BooleanValue, ir.StringValue]] = []
    out: dict[str, ir.Value] = {}

    pid = col("prediction_id")
    if pid is not None:
        pid_str = _as_string(pid)
        out["prediction_id"] = pid_str
        checks += [
            (pid_str.isnull() | _blank(pid_str), ibis.literal("prediction_id is empty")),
            (
                pid_str.length() > MAX_ID_LENGTH,
                ibis.literal(f"prediction_id is longer than {MAX_ID_LENGTH} characters"),
            ),
            (pid_str.contains("\x00"), ibis.literal("prediction_id contains a NUL character")),
        ]
    elif kind == "joined":
        out["prediction_id"] = raw["_row"].cast("string")

    for contract in ("y_pred",) if kind == "shadow" else ("y_pred", "y_true"):
        value = col(contract)
        if value is not None:
            # a prediction's y_true is optional (null: not known yet); predictions do not keep it
            required = not (kind == "predictions" and contract == "y_true")
            number, number_checks = _finite_number(value, contract, required=required)
            out[contract] = number
            checks += number_checks

    timed = (("ts", True),) if kind == "shadow" else (("ts", kind == "predictions"), ("label_ts", False))
    for contract, required in timed:
        value = col(contract)
        if value is None:
            continue
        stamp, stamp_checks = _timestamp(value, contract, required=required)
        out[contract] = stamp
        checks += stamp_checks

    if kind != "labels":
        for contract, default in (
            ("model", default_model or DEFAULT_MODEL),
            ("version", default_version or DEFAULT_VERSION),
        ):
            value = col(contract)
            if value is None:
                out[contract] = ibis.literal(default)
            else:
                text = _as_string(value)
                out[contract] = ibis.ifelse(text.isnull() | (text.length() == 0), default, text)
                checks.append(
                    (
                        text.length() > MAX_STRING_LENGTH,
                        ibis.literal(f"{contract} is longer than {MAX_STRING_LENGTH} characters"),
                    )
                )
        contract_sources = set(names.values())
        for name in raw.columns:
            if name in contract_sources or name.startswith("_") or kind == "shadow":  # no extras
                continue
            clash = next((k for k in out if k.casefold() == name.casefold()), None)
            if clash is not None:  # would overwrite a contract column, or differs only by case
                raise InputError(
                    f"{source or 'input'}: column {name!r} clashes with column {clash!r} "
                    "(names are case-insensitive); rename it, or map the columns with the options."
                )
            value = raw[name]
            numeric = value.type().is_numeric() and name not in segment_columns
            if numeric or name in feature_columns:
                number = _number(value)
                out[name] = number
                checks.append(
                    (
                        value.notnull() & (number.isnull() | _not_finite(number)),
                        "feature " + ibis.literal(repr(name)) + " is not a finite number: "
                        + _quoted(value),
                    )
                )
            else:
                text = _as_string(value)
                out[name] = text
                checks.append(
                    (
                        text.length() > MAX_STRING_LENGTH,
                        ibis.literal(
                            f"segment {name!r} is longer than {MAX_STRING_LENGTH} characters"
                        ),
                    )
                )

    ok, error = verdict(checks)
    if not reasons:
        return raw.select(**out, _row=raw["_row"].cast("int64"), _ok=ok)
    return raw.select(**out, _row=raw["_row"].cast("int64"), _ok=ok, _error=error)


def verdict(
    checks: Sequence[tuple[ir.BooleanValue, ir.StringValue | str]], *, null_fails: bool = False
) -> tuple[ir.BooleanValue, ir.StringValue]:
    """`_ok` (no check failed) and `_error` (the first failed check's reason, else null).

    `_ok` is cheap boolean work for every row; the message in `_error` (string building) is
    only computed where a consumer asks for it, which is for the rejected rows. A check that
    is null counts as failed with `null_fails`, else as passed.
    """
    if not checks:
        return ibis.literal(True), ibis.null("string")
    failed = [condition.fill_null(null_fails) for condition, _ in checks]
    reasons = [ibis.literal(r) if isinstance(r, str) else r for _, r in checks]
    return ~functools.reduce(operator.or_, failed), ibis.cases(*zip(failed, reasons), else_=ibis.null("string"))


def _blank(text: ir.StringValue) -> ir.BooleanValue:
    """Empty or only white space. Only values that sort before '!' can be (white space and
    control characters do), so the trim runs on those alone: a comparison on the string's
    prefix is about twice as fast as reading its first character."""
    return ibis.ifelse(text < "!", text.strip().length() == 0, False)


def _as_string(value: ir.Value) -> ir.StringValue:
    return value if value.type().is_string() else value.cast("string")


def _quoted(value: ir.Value) -> ir.StringValue:
    text = _as_string(value).substr(0, 80)
    return "'" + text.fill_null("") + "'"


def _number(value: ir.Value) -> ir.FloatingValue:
    typ = value.type()
    if typ.is_numeric():
        return value.cast("float64")
    if typ.is_string():
        return value.strip().try_cast("float64")
    return value.try_cast("float64")


def _not_finite(number: ir.FloatingValue) -> ir.BooleanValue:
    """NaN or ±inf: x − x is 0 only for a finite x. Not `isnan`: DuckDB folds `isnan(x)` to
    false in a filter pushed into a Parquet scan whose min/max statistics are finite (writers
    leave NaN out of them), so a NaN row would pass as valid."""
    return (number - number) != 0


def _finite_number(
    value: ir.Value, name: str, *, required: bool = True
) -> tuple[ir.FloatingValue, list[tuple[ir.BooleanValue, ir.StringValue]]]:
    """The value as a float64, and its checks: present (when `required`), a number, finite."""
    number = _number(value)
    checks = [(value.isnull(), ibis.literal(f"{name} is missing"))] if required else []
    checks += [
        (value.notnull() & number.isnull(), f"{name} is not a number: " + _quoted(value)),
        (_not_finite(number), f"{name} is not a finite number: " + _quoted(value)),
    ]
    return number, checks


def _epoch_to_timestamp(seconds: ir.FloatingValue) -> ir.TimestampValue:
    bounded = ibis.ifelse(seconds.between(_EPOCH_MIN, _EPOCH_MAX), seconds, ibis.null("float64"))
    millis = (bounded * 1000.0).round().cast("int64")
    return millis.as_timestamp("ms").cast(UTC)


def _timestamp(
    value: ir.Value, name: str, *, required: bool
) -> tuple[ir.TimestampValue, list[tuple[ir.BooleanValue, ir.StringValue]]]:
    """ISO 8601 (naive means UTC) or epoch seconds, as a UTC timestamp."""
    typ = value.type()
    checks: list[tuple[ir.BooleanValue, ir.StringValue]] = []
    if required:
        checks.append((value.isnull(), ibis.literal(f"{name} is missing")))
    if typ.is_timestamp() or typ.is_date():
        # already a time: only its range is checked; the value itself needs no rewriting
        stamp = value.cast(UTC)
        checks.append(
            (~stamp.between(_TS_MIN, _TS_MAX), f"{name} is outside the years 1 to 9999: " + _quoted(value))
        )
        return stamp, checks
    if typ.is_numeric():
        stamp = _epoch_to_timestamp(value.cast("float64"))
    else:
        text = _as_string(value).strip()
        stamp = ibis.coalesce(text.try_cast(UTC), _epoch_to_timestamp(text.try_cast("float64")))
        # years 1 to 9999 only: the engine also parses 'infinity', BC and five-digit years,
        # which no client can represent
        in_range = stamp.between(_TS_MIN, _TS_MAX).fill_null(False)
        stamp = ibis.ifelse(in_range, stamp, ibis.null(UTC))
    checks.append(
        (
            value.notnull() & stamp.isnull(),
            f"{name} is not an ISO 8601 time or epoch seconds: " + _quoted(value),
        )
    )
    return stamp, checks


def clean_predictions(batch: pa.RecordBatch, extras: Mapping[str, str]) -> pa.RecordBatch | None:
    """The rows `normalize` would make of `batch` (predictions, contract names), when every one
    of them certainly passes its checks; else None.

    A proof, not a second validator: any row it cannot vouch for with a few vectorised Arrow
    checks (text ids that might be blank, untyped times, numbers given as text, …) sends the
    whole batch back to the SQL of `normalize`, which words the reasons. What it returns holds
    `prediction_id, ts, model, version, y_pred` and then the `extras` (name → 'segment' |
    'feature'), typed as they are stored; `_`-prefixed columns are left out.
    """
    names = batch.schema.names
    if any(n not in names for n in ("prediction_id", "ts", "y_pred")) or batch.num_rows == 0:
        return None
    if "y_true" in names or "label_ts" in names:  # validated too, though predictions do not keep them
        return None
    contract = set(ColumnMap().source_names())
    wanted = [n for n in names if not n.startswith("_") and n not in contract]
    if set(wanted) != set(extras) or any(n.casefold() in contract for n in wanted):
        return None
    out: dict[str, pa.Array] = {}
    pid = _clean_ids(batch.column("prediction_id"))
    ts = _arrow_timestamp(batch.column("ts"), nulls=False)
    if pid is None or ts is None:
        return None
    out["prediction_id"], out["ts"] = pid, ts
    for name, default in (("model", DEFAULT_MODEL), ("version", DEFAULT_VERSION)):
        if name not in names:
            out[name] = pa.array([default] * batch.num_rows, pa.string())
            continue
        text = batch.column(name)
        if pa.types.is_null(text.type):
            text = text.cast(pa.string())
        if not _is_text(text) or not fits(text, MAX_STRING_LENGTH):
            return None
        text = text.cast(pa.string())
        out[name] = pc.if_else(pc.fill_null(pc.greater(pc.binary_length(text), 0), False), text, default)
    y_pred = _finite_floats(batch.column("y_pred"), nulls=False)
    if y_pred is None:
        return None
    out["y_pred"] = y_pred
    for name, kind in extras.items():
        column = batch.column(name)
        if pa.types.is_null(column.type):
            column = column.cast(pa.float64() if kind == "feature" else pa.string())
        if kind == "feature":
            column = _finite_floats(column, nulls=True)
        elif _is_text(column) and fits(column, MAX_STRING_LENGTH):
            column = column.cast(pa.string())
        else:
            column = None
        if column is None:
            return None
        out[name] = column
    return pa.RecordBatch.from_pydict(out)


def clean_labels(batch: pa.RecordBatch) -> pa.RecordBatch | None:
    """`prediction_id, y_true, label_ts, _row` as `normalize` would make them of a batch of
    labels, when every row certainly passes its checks; else None (see `clean_predictions`)."""
    names = batch.schema.names
    if any(n not in names for n in ("prediction_id", "y_true", "_row")) or batch.num_rows == 0:
        return None
    pid = _clean_ids(batch.column("prediction_id"))
    y_true = _finite_floats(batch.column("y_true"), nulls=False)
    label_ts = batch.column("label_ts") if "label_ts" in names else pa.nulls(batch.num_rows)
    label_ts = _arrow_timestamp(label_ts, nulls=True)
    if pid is None or y_true is None or label_ts is None:
        return None
    rows = batch.column("_row").cast(pa.int64())
    return pa.RecordBatch.from_pydict({"prediction_id": pid, "y_true": y_true, "label_ts": label_ts, "_row": rows})


def _clean_ids(pid: pa.Array) -> pa.Array | None:
    """Text ids that are certainly not blank, too long or holding NUL; else None."""
    if not _is_text(pid) or pid.null_count or not fits(pid, MAX_ID_LENGTH):
        return None
    # blank ids sort before '!' (white space, control characters): none may
    if pc.less(pc.min(pid), pa.scalar("!", pid.type)).as_py() or pc.any(pc.match_substring(pid, "\x00")).as_py():
        return None
    return pid.cast(pa.string())


def _arrow_timestamp(column: pa.Array, *, nulls: bool) -> pa.Array | None:
    """UTC times in the years 1 to 9999: typed ones, or epoch seconds rounded to the millisecond
    as `_epoch_to_timestamp` does; None when a value is missing (unless `nulls`) or would need
    the text parser."""
    utc = pa.timestamp("us", "UTC")
    if column.null_count == len(column):  # also a field no record had (a column of nulls)
        return pa.nulls(len(column), utc) if nulls else None
    if column.null_count and not nulls:
        return None
    if pa.types.is_timestamp(column.type) and column.type.tz == "UTC":
        stamp = column.cast(utc)
    else:
        seconds = _finite_floats(column, nulls=nulls)
        if seconds is None:
            return None
        low, high = pc.min_max(seconds).values()
        if low.as_py() < _EPOCH_MIN or high.as_py() > _EPOCH_MAX:
            return None
        millis = pc.round(pc.multiply(seconds, 1000.0), round_mode="half_towards_infinity").cast(pa.int64())
        stamp = millis.cast(pa.timestamp("ms", "UTC")).cast(utc)
    low, high = pc.min_max(stamp).values()
    return stamp if _FIRST_TIME <= low.as_py() and high.as_py() <= _LAST_TIME else None


def _is_text(column: pa.Array) -> bool:
    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


def fits(text: pa.Array, limit: int) -> bool:
    """No value longer than `limit` characters (code points: never fewer than the engine counts).

    A value has no more characters than bytes, and byte lengths come from the offsets alone:
    the characters are counted only when some value has more than `limit` bytes.
    """
    if not len(text) or (pc.max(pc.binary_length(text)).as_py() or 0) <= limit:
        return True
    return (pc.max(pc.utf8_length(text)).as_py() or 0) <= limit


def _finite_floats(column: pa.Array, *, nulls: bool) -> pa.Array | None:
    """float64 values, when each is a finite number (or null, with `nulls`); else None."""
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        return None
    if column.null_count and not nulls:
        return None
    try:
        number = column.cast(pa.float64())  # safe: an integer that float64 cannot hold exactly fails
    except pa.ArrowInvalid:
        return None
    if not pc.all(pc.is_finite(number)).as_py():  # all() skips nulls
        return None
    return number
