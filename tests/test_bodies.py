"""Request bodies: Arrow's fast NDJSON reader and the careful per-record path agree.

The server reads a clean NDJSON body with Arrow's C++ reader and anything unusual record by
record; for every body the fast path accepts, both must hand the store the same columns and
values, so which path ran never changes what is stored or rejected.
"""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msewatch.server.bodies import BodyError, _fast_ndjson, parse_body

NDJSON = "application/x-ndjson"

names = st.sampled_from(["prediction_id", "ts", "model", "version", "y_pred", "y_true", "label_ts",
                         "region", "basket", "_private", "Zone"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00+02:00", "2026-01-01T00:00:00",
                     "1700000000", "2026-01-01", " eu "]),
)
records = st.lists(st.dictionaries(names, scalars, max_size=6), min_size=1, max_size=30)


def careful(body: bytes, kind: str):
    """The per-record path, forced by a trailing blank line (which the fast path refuses)."""
    return parse_body(body + b"\n\n", NDJSON, kind, 100_000)


def rows(batch) -> list[dict]:
    out = []
    for rec in batch.to_pylist():
        out.append({k: v for k, v in rec.items() if v is not None})
    return out


def same_value(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return float(a) == float(b) or (math.isnan(float(a)) and math.isnan(float(b)))
    return a == b


@settings(max_examples=300, deadline=None)
@given(records, st.sampled_from(["predictions", "labels"]))
def test_fast_path_agrees_with_the_careful_path(recs: list[dict], kind: str) -> None:
    body = b"\n".join(orjson.dumps(r) for r in recs)
    fast = _fast_ndjson(body, kind, 100_000)
    if fast is None:
        return  # the careful path handles it alone
    slow = careful(body, kind)
    assert fast.count == len(recs) and slow.rejects == [] and fast.rejects == []
    assert fast.ignored_fields == slow.ignored_fields
    assert set(fast.batch.schema.names) == set(slow.batch.schema.names)
    for name in fast.batch.schema.names:
        assert fast.batch.schema.field(name).type == slow.batch.schema.field(name).type, name
    for a, b in zip(rows(fast.batch), rows(slow.batch), strict=True):
        assert a.keys() == b.keys()
        assert all(same_value(a[k], b[k]) for k in a), (a, b)


@pytest.mark.parametrize(
    "body",
    [
        b'{"prediction_id":"a","ts":0,"y_pred":1}\n\n{"prediction_id":"b","ts":0,"y_pred":2}',  # blank line
        b'{"prediction_id":"a","ts":0,"y_pred":NaN}',  # not JSON
        b'{"prediction_id":"a","ts":0,"y_pred":{"v":1}}',  # nested
        b'{"prediction_id":"a","ts":0,"y_pred":true}',  # a boolean prediction
        b'{"prediction_id":"a","ts":0,"y_pred":1}\n{"prediction_id":"b","ts":0,"y_pred":"x"}',  # mixed
        b'{"prediction_id":"\\u00e9","ts":0,"y_pred":1}',  # escapes
        b'{"prediction_id":"a\\"b","ts":0,"y_pred":1}',  # any escape
        b'{"prediction_id":"a","ts":0,"y_pred":Infinity}',  # not JSON, though Arrow reads it
        b'{"prediction_id":"a","ts":0,"y_pred":-Infinity}',
        b'{"prediction_id":"a","ts":NaN,"y_pred":1}',  # in a column read as text
        b'{"prediction_id":NaN,"ts":0,"y_pred":1}',
        b'{"prediction_id":"a","ts":0,"y_pred":1,"f":NaN}',  # a column of NaN alone
        b'{"prediction_id":"a","ts":0,"y_pred":1,"i":5}\n{"prediction_id":"b","ts":0,"y_pred":1,"i":NaN}',
        b'{"prediction_id":"a","ts":0,"y_pred":1e400}',  # no float64 holds it
        b'{"prediction_id":1.5,"ts":0,"y_pred":1}',  # a fractional id
        b'{"prediction_id":"a","ts":0,"y_pred":1,"y_pred":2}',  # a repeated key
        b'{"prediction_id":"a","ts":0,"y_pred":1}\r\n',  # CRLF
        ('{"prediction_id":"a","ts":0,"y_pred":1,"r":"' + "x" * 1025 + '"}').encode(),  # long text
    ],
)
def test_unusual_bodies_take_the_careful_path(body: bytes) -> None:
    assert _fast_ndjson(body, "predictions", 100_000) is None


def test_clean_body_takes_the_fast_path_with_line_indexes() -> None:
    body = b"\n".join(
        orjson.dumps({"prediction_id": f"p{i}", "ts": "2026-01-01T00:00:00Z", "y_pred": i / 3, "_x": 1})
        for i in range(5)
    )
    fast = _fast_ndjson(body, "predictions", 100_000)
    assert fast is not None and fast.count == 5 and fast.ignored_fields == {"_x"}
    assert fast.batch.column("_row").to_pylist() == [0, 1, 2, 3, 4]
    assert str(fast.batch.schema.field("ts").type) == "timestamp[us, tz=UTC]"


def test_too_many_lines_is_refused_by_either_path() -> None:
    body = b"\n".join(b'{"prediction_id":"a","ts":0,"y_pred":1}' for _ in range(11))
    with pytest.raises(BodyError, match="more than 10 records"):
        parse_body(body, NDJSON, "predictions", 10)


def test_an_integer_beside_floats_is_read_as_the_nearest_float() -> None:
    """2**53 + 1 has no float64; beside floats it is rounded, as JSON readers do, not an error."""
    records = [{"prediction_id": "a", "ts": 0, "y_pred": 1.5}, {"prediction_id": "b", "ts": 0, "y_pred": 2**53 + 1}]
    body = orjson.dumps(records)
    parsed = parse_body(body, "application/json", "predictions", 10)
    assert parsed.rejects == [] and parsed.batch.column("y_pred").to_pylist() == [1.5, float(2**53)]
