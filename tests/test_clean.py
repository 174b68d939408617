"""`schema.clean_predictions` and `clean_labels`: the Arrow proofs that let a group commit skip
the validation SQL.

Whatever a request body holds, a group commit (which takes the proof when it holds) must answer
and store exactly what the staged path of a file ingest does (the validation SQL alone).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pyarrow as pa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from msewatch.schema import MAX_ID_LENGTH, MAX_STRING_LENGTH, clean_labels, clean_predictions, fits
from msewatch.server.bodies import parse_body
from msewatch.store import Store

NDJSON = "application/x-ndjson"
ROWS = "SELECT * EXCLUDE (source, ingested_at) FROM predictions ORDER BY prediction_id"
LABEL_ROWS = "SELECT * EXCLUDE (source, ingested_at) FROM labels ORDER BY prediction_id, revision"

_texts = st.text(alphabet=st.sampled_from([" ", "\t", "\x00", "!", "a", "Z", "0", "-", "é", "😀", "\x7f"]), max_size=6)
_ids = st.one_of(
    st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
    _texts,
    st.integers(-(2**63), 2**63 - 1),
    st.just("x" * (MAX_ID_LENGTH + 1)),
    st.just("y" * MAX_ID_LENGTH),
    st.none(),
)
_times = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30))
_ts = st.one_of(
    _times.map(lambda t: t.isoformat() + "Z"),
    _times.map(lambda t: t.isoformat()),
    _times.map(lambda t: t.isoformat() + "+02:00"),
    st.floats(-7e10, 3e11, allow_nan=False),  # epoch seconds, some past the years 1 to 9999
    st.integers(-(2**40), 2**40),
    st.sampled_from(["soon", "", "2026-13-01T00:00:00Z", "1767225600"]),
    st.none(),
)
_good_ts = [_times.map(lambda t: t.isoformat() + "Z"), st.floats(-6e10, 2.5e11), st.integers(0, 2**31)]
_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**60), 2**60),
    st.sampled_from(["1.5", "", True]),
    st.none(),
)
_labels = st.one_of(st.sampled_from(["", "m", "v2", "x" * MAX_STRING_LENGTH]), _texts, st.integers(0, 9), st.none())


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    present = draw(st.sets(st.sampled_from(["model", "version", "region", "score"])))
    records = []
    for _ in range(draw(st.integers(1, 12))):
        record: dict[str, Any] = {"prediction_id": draw(_ids), "ts": draw(_ts), "y_pred": draw(_numbers)}
        for name in present:
            if draw(st.integers(0, 5)):  # now and then a record leaves a field out
                record[name] = draw(_numbers if name == "score" else _labels)
        records.append(record)
    # a body of typical, valid rows now and then: the proof holds for those
    if draw(st.booleans()):
        good_ts = draw(st.sampled_from(_good_ts))  # one spelling per body, as clients send
        records = [
            {"prediction_id": f"p{i}", "ts": draw(good_ts),
             "model": "m", "region": draw(st.sampled_from(["eu", "us"])), "y_pred": draw(st.floats(-1e6, 1e6))}
            for i in range(len(records))
        ]
    return b"\n".join(orjson.dumps(r) for r in records)


@st.composite
def _label_bodies(draw: st.DrawFn) -> bytes:
    ids = st.sampled_from(["a", "b", "c"]) if draw(st.booleans()) else _ids  # repeats: revisions, copies
    has_time = draw(st.booleans())
    records = []
    for _ in range(draw(st.integers(1, 12))):
        record: dict[str, Any] = {"prediction_id": draw(ids), "y_true": draw(_numbers)}
        if has_time and draw(st.integers(0, 5)):
            record["label_ts"] = draw(_ts)
        records.append(record)
    if draw(st.booleans()):  # typical labels: the proof holds for those
        good_ts = draw(st.sampled_from([*_good_ts, st.none()]))
        records = [{"prediction_id": f"p{draw(st.integers(0, 5))}", "y_true": draw(st.floats(-1e6, 1e6)),
                    "label_ts": draw(good_ts)} for _ in records]
    return b"\n".join(orjson.dumps(r) for r in records)


def _answers(store: Store, batch: pa.RecordBatch, *, group: bool, kind: str = "predictions") -> tuple[Any, ...]:
    if group:
        (result,) = store.ingest_group(kind, [(batch, batch.num_rows)], defer_rollups=True).results
    else:
        result = store.ingest_batches(kind, [batch])
    rejects = [(r.row, r.error) for r in result.rejects]
    rows = store.con.execute(ROWS if kind == "predictions" else LABEL_ROWS).fetchall()
    return result.summary(), rejects, rows, store.extra_columns()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_bodies())
def test_a_group_commit_answers_and_stores_what_the_validation_sql_does(body: bytes) -> None:
    parsed = parse_body(body, NDJSON, "predictions", 1000)
    if parsed.batch is None:
        return
    with Store() as grouped, Store() as filed:
        answers = _answers(grouped, parsed.batch, group=True)
        assert answers == _answers(filed, parsed.batch, group=False)
        holds = clean_predictions(parsed.batch, answers[3]) is not None
        event("the proof holds" if holds else "the proof fails")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=_label_bodies(), second=_label_bodies())
def test_a_group_commit_of_labels_answers_and_stores_what_the_validation_sql_does(first: bytes, second: bytes) -> None:
    """Two commits, so that the second meets stored labels (revisions, duplicates) too."""
    with Store() as grouped, Store() as filed:
        for body in (first, second):
            parsed = parse_body(body, NDJSON, "labels", 1000)
            if parsed.batch is None:
                continue
            answers = _answers(grouped, parsed.batch, group=True, kind="labels")
            assert answers == _answers(filed, parsed.batch, group=False, kind="labels")
            event("the proof holds" if clean_labels(parsed.batch) is not None else "the proof fails")


def test_typical_requests_take_the_proof_and_odd_ones_do_not() -> None:
    """The proof holds for the rows clients usually send, and fails for each kind of doubtful row."""
    good = {"prediction_id": "p1", "ts": "2026-11-27T10:00:00.123Z", "model": "m", "version": "v",
            "region": "eu", "y_pred": 1.5}
    extras = {"region": "segment"}

    def proof(**change: Any) -> pa.RecordBatch | None:
        record = {k: v for k, v in {**good, **change}.items() if v is not ...}
        batch = parse_body(orjson.dumps(record), NDJSON, "predictions", 10).batch
        return clean_predictions(batch, {k: v for k, v in extras.items() if k in record})

    clean = proof()
    assert clean is not None and clean.schema.names == ["prediction_id", "ts", "model", "version", "y_pred", "region"]
    assert clean.to_pylist()[0]["ts"] == dt.datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=dt.timezone.utc)
    assert proof(model=..., version="")["model"].to_pylist() == ["default"]  # defaults, as normalize
    assert proof(ts=1_767_225_600.0005)["ts"].to_pylist()[0].microsecond == 1000  # epoch, to the ms
    doubtful = {
        "blank or white-space-led id": {"prediction_id": " p"},
        "NUL in the id": {"prediction_id": "p\x00"},
        "id too long": {"prediction_id": "p" * (MAX_ID_LENGTH + 1)},
        "numeric id": {"prediction_id": 7},
        "ts as text the fast parser leaves": {"ts": "1767225600"},
        "ts missing": {"ts": None},
        "epoch past the year 9999": {"ts": 3e11},
        "y_pred as text": {"y_pred": "1.5"},
        "y_pred missing": {"y_pred": None},
        "integer y_pred float64 cannot hold": {"y_pred": 2**53 + 1},
        "numeric segment": {"region": 3},
    }
    for why, change in doubtful.items():
        assert proof(**change) is None, why
    assert clean_predictions(parse_body(orjson.dumps(good), NDJSON, "predictions", 10).batch, {}) is None  # new column
    assert proof(y_true=1.0) is None  # a prediction with a y_true: that field is validated too


def test_typical_labels_take_the_proof_and_odd_ones_do_not() -> None:
    def proof(**record: Any) -> pa.RecordBatch | None:
        body = orjson.dumps({"prediction_id": "p1", "y_true": 2.5, **record})
        return clean_labels(parse_body(body, NDJSON, "labels", 10).batch)

    clean = proof(label_ts="2026-11-27T10:00:00Z")
    assert clean is not None and clean.schema.names == ["prediction_id", "y_true", "label_ts", "_row"]
    assert proof() is not None and proof()["label_ts"].null_count == 1  # no label time: null, as normalize
    for why, record in {
        "blank id": {"prediction_id": "\t"},
        "y_true missing": {"y_true": None},
        "y_true as text": {"y_true": "2.5"},
        "label_ts the text parser would read": {"label_ts": "yesterday"},
    }.items():
        assert proof(**record) is None, why


def test_fits_counts_characters_not_bytes() -> None:
    """Byte lengths decide only when no value has more bytes than the limit allows characters."""
    assert fits(pa.array(["x" * 256, "", None]), 256)
    assert not fits(pa.array(["x" * 257]), 256)
    assert fits(pa.array(["é" * 256, "日" * 256, "😀" * 256]), 256)  # 512-1,024 bytes each
    assert not fits(pa.array(["a", "é" * 257]), 256)
    assert fits(pa.array([], pa.string()), 0) and fits(pa.array([None, None], pa.string()), 0)
