"""Ingestion into the embedded DuckDB store (msewatch.store) through its real interface.

Every test works on a DuckDB file in tmp_path; stored values are read back with plain SQL.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import query, write_csv, write_ndjson, write_parquet, write_records, write_text

from msewatch.errors import InputError, StoreError
from msewatch.io import BatchReader
from msewatch.schema import MAX_ID_LENGTH, ColumnMap
from msewatch.store import IngestResult, Store, rejects_to_ndjson

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # 1714564800
EPOCH0 = 1714564800
FORMATS = [".csv", ".jsonl", ".ndjson", ".parquet"]


def ingest(
    db: Path, kind: str, path: Path, columns: ColumnMap | None = None, **kw: Any
) -> IngestResult:
    with Store(db) as store:
        return store.ingest_file(kind, path, columns or ColumnMap(), **kw)  # type: ignore[arg-type]


def stored_ts(db: Path) -> dict[str, dt.datetime]:
    return dict(query(db, "SELECT prediction_id, ts FROM predictions"))


def reasons(result: IngestResult) -> dict[int, str]:
    return {r.row: r.error for r in result.rejects}


def counts(db: Path) -> tuple[int, int, int]:
    with Store(db) as store:
        return store.count("predictions"), store.count("labels"), store.count("ingest_log")


def preds(n: int, prefix: str = "p", **extra: Any) -> list[dict[str, Any]]:
    return [
        {"prediction_id": f"{prefix}{i}", "ts": EPOCH0 + 60 * i, "y_pred": float(i), **extra}
        for i in range(n)
    ]


# -- timestamps ----------------------------------------------------------------------------------
TEXT_TIMES = {
    "zulu": ("2024-05-01T12:00:00Z", T0),
    "offset": ("2024-05-01T14:00:00+02:00", T0),
    "negative_offset": ("2024-05-01T07:30:00-04:30", T0),
    "naive": ("2024-05-01T12:00:00", T0),
    "space": ("2024-05-01 12:00:00", T0),
    "fraction": ("2024-05-01T12:00:00.250Z", T0 + dt.timedelta(milliseconds=250)),
    "micros": ("2024-05-01T12:00:00.123456Z", T0 + dt.timedelta(microseconds=123456)),
    "date_only": ("2024-05-01", dt.datetime(2024, 5, 1, tzinfo=UTC)),
    "epoch_text": ("1714564800", T0),
    "epoch_text_fraction": ("1714564800.5", T0 + dt.timedelta(milliseconds=500)),
    "epoch_padded": (" 1714564800 ", T0),
    "epoch_zero": ("0", dt.datetime(1970, 1, 1, tzinfo=UTC)),
    "epoch_negative": ("-86400", dt.datetime(1969, 12, 31, tzinfo=UTC)),
}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".ndjson"])
def test_text_timestamps_become_utc_instants(db: Path, tmp_path: Path, suffix: str) -> None:
    records = [{"prediction_id": k, "ts": v, "y_pred": 1.0} for k, (v, _) in TEXT_TIMES.items()]
    path = write_records(tmp_path / f"p{suffix}", records)
    result = ingest(db, "predictions", path)
    assert result.rejects == []
    assert result.accepted == len(TEXT_TIMES)
    got = stored_ts(db)
    for key, (_, want) in TEXT_TIMES.items():
        assert got[key] == want, key
        assert got[key].utcoffset() == dt.timedelta(0)


def test_json_numbers_are_epoch_seconds(db: Path, tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "p.jsonl",
        [
            {"prediction_id": "int", "ts": EPOCH0, "y_pred": 1},
            {"prediction_id": "float", "ts": EPOCH0 + 0.75, "y_pred": 1},
            {"prediction_id": "text", "ts": str(EPOCH0), "y_pred": 1},
        ],
    )
    result = ingest(db, "predictions", path)
    assert result.summary() == {"accepted": 3, "duplicates": 0, "rejected": 0}
    got = stored_ts(db)
    assert got["int"] == T0
    assert got["float"] == T0 + dt.timedelta(milliseconds=750)
    assert got["text"] == T0


PARQUET_TIMES = {
    "naive_us": (pa.array([dt.datetime(2024, 5, 1, 12)], pa.timestamp("us")), T0),
    "naive_ns": (pa.array([dt.datetime(2024, 5, 1, 12)], pa.timestamp("ns")), T0),
    "naive_ms": (pa.array([dt.datetime(2024, 5, 1, 12)], pa.timestamp("ms")), T0),
    "utc_us": (pa.array([T0], pa.timestamp("us", tz="UTC")), T0),
    "utc_ns": (pa.array([T0], pa.timestamp("ns", tz="UTC")), T0),
    "berlin_ms": (pa.array([T0], pa.timestamp("ms", tz="Europe/Berlin")), T0),
    "offset_us": (pa.array([T0], pa.timestamp("us", tz="+05:30")), T0),
    "epoch_int": (pa.array([EPOCH0], pa.int64()), T0),
    "epoch_float": (pa.array([EPOCH0 + 0.5], pa.float64()), T0 + dt.timedelta(milliseconds=500)),
    "epoch_text": (pa.array([str(EPOCH0)], pa.string()), T0),
    "iso_text": (pa.array(["2024-05-01T14:00:00+02:00"], pa.string()), T0),
    "date32": (pa.array([dt.date(2024, 5, 1)], pa.date32()), dt.datetime(2024, 5, 1, tzinfo=UTC)),
}


def test_parquet_timestamp_columns(db: Path, tmp_path: Path) -> None:
    """Each Parquet time type as its own file, ingested into one store."""
    paths = []
    for name, (array, _) in PARQUET_TIMES.items():
        paths.append(
            write_parquet(
                tmp_path / f"{name}.parquet",
                {"prediction_id": [name], "ts": array, "y_pred": [1.0]},
            )
        )
    with Store(db) as store:
        for path in paths:
            result = store.ingest_file("predictions", path)
            assert result.summary() == {"accepted": 1, "duplicates": 0, "rejected": 0}, (
                path,
                result.rejects,
            )
    got = stored_ts(db)
    assert got == {name: want for name, (_, want) in PARQUET_TIMES.items()}


BAD_TIMES = [
    "garbage",
    "2024-13-01",
    "2024-02-30T00:00:00Z",
    "12:00",
    "1e30",
    "-1e30",
    "1e300",
    "NaN",
    "inf",
    "-inf",
    "infinity",
    "99999-01-01",
    "-0044-03-15",
    "  ",
]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_unparsable_and_absurd_timestamps_are_rejected(
    db: Path, tmp_path: Path, suffix: str
) -> None:
    records = [{"prediction_id": "good", "ts": "2024-05-01T12:00:00Z", "y_pred": 1.0}]
    records += [
        {"prediction_id": f"bad{i}", "ts": v, "y_pred": 1.0} for i, v in enumerate(BAD_TIMES)
    ]
    path = write_records(tmp_path / f"p{suffix}", records)
    result = ingest(db, "predictions", path)
    assert result.accepted == 1
    assert stored_ts(db) == {"good": T0}
    why = reasons(result)
    assert sorted(why) == list(range(2, len(BAD_TIMES) + 2))
    for row, value in enumerate(BAD_TIMES, start=2):
        assert why[row].startswith("ts is not an ISO 8601 time or epoch seconds"), (value, why[row])


def test_absurd_epoch_numbers_in_json_are_rejected(db: Path, tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "p.jsonl",
        [
            {"prediction_id": "ok", "ts": EPOCH0, "y_pred": 1},
            {"prediction_id": "huge", "ts": 1e30, "y_pred": 1},
            {"prediction_id": "tiny", "ts": -1e30, "y_pred": 1},
            {"prediction_id": "big_int", "ts": 10**15, "y_pred": 1},
            {"prediction_id": "bool", "ts": True, "y_pred": 1},
            {"prediction_id": "list", "ts": [EPOCH0], "y_pred": 1},
        ],
    )
    result = ingest(db, "predictions", path)
    assert result.accepted == 1
    assert sorted(reasons(result)) == [2, 3, 4, 5, 6]
    assert all("ts is not an ISO 8601 time or epoch seconds" in e for e in reasons(result).values())


def test_absurd_epoch_numbers_in_parquet_are_rejected(db: Path, tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "p.parquet",
        {
            "prediction_id": ["ok", "huge", "nan"],
            "ts": [float(EPOCH0), 1e30, float("nan")],
            "y_pred": [1.0] * 3,
        },
    )
    result = ingest(db, "predictions", path)
    assert result.accepted == 1
    assert sorted(reasons(result)) == [2, 3]


def test_missing_ts_is_rejected_for_predictions(db: Path, tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "p.jsonl",
        [
            {"prediction_id": "a", "ts": None, "y_pred": 1},
            {"prediction_id": "b", "y_pred": 1},
            {"prediction_id": "c", "ts": 5, "y_pred": 1},
        ],
    )
    result = ingest(db, "predictions", path)
    assert reasons(result) == {1: "ts is missing", 2: "ts is missing"}
    assert result.accepted == 1


# -- row-level rejects ---------------------------------------------------------------------------
NON_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "abc", "", "1e309", "0x10", "1,5"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("column", ["y_pred", "y_true"])
def test_non_finite_values_are_rejected_and_good_rows_land(
    db: Path, tmp_path: Path, suffix: str, column: str
) -> None:
    kind = "predictions" if column == "y_pred" else "labels"
    base = {"ts": EPOCH0} if kind == "predictions" else {}
    records = [{"prediction_id": "good1", **base, column: "1.5"}]
    records += [{"prediction_id": f"bad{i}", **base, column: v} for i, v in enumerate(NON_FINITE)]
    records += [{"prediction_id": "good2", **base, column: "-2e3"}]
    path = write_records(tmp_path / f"f{suffix}", records)
    result = ingest(db, kind, path)
    assert result.accepted == 2
    assert result.duplicates == 0
    why = reasons(result)
    assert sorted(why) == list(range(2, len(NON_FINITE) + 2))
    for row, value in enumerate(NON_FINITE, start=2):
        assert why[row].startswith(column), why[row]
        if value:
            assert repr(value) in why[row] or value in why[row], why[row]
    table = "predictions" if kind == "predictions" else "labels"
    assert dict(query(db, f"SELECT prediction_id, {column} FROM {table}")) == {
        "good1": 1.5,
        "good2": -2000.0,
    }


def test_reject_reasons_are_specific(db: Path, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "p.csv",
        ["prediction_id", "ts", "y_pred"],
        [
            ["ok", EPOCH0, 1],
            ["", EPOCH0, 1],
            ["   ", EPOCH0, 1],
            ["nan-pred", EPOCH0, "nan"],
            ["abc-pred", EPOCH0, "abc"],
            ["no-pred", EPOCH0, ""],
            ["bad-ts", "yesterday", 1],
        ],
    )
    result = ingest(db, "predictions", path)
    assert reasons(result) == {
        2: "prediction_id is empty",
        3: "prediction_id is empty",
        4: "y_pred is not a finite number: 'nan'",
        5: "y_pred is not a number: 'abc'",
        6: "y_pred is missing",
        7: "ts is not an ISO 8601 time or epoch seconds: 'yesterday'",
    }
    # a rejected row keeps the values as received, for the rejects file
    record = next(r.record for r in result.rejects if r.row == 7)
    assert record == {"prediction_id": "bad-ts", "ts": "yesterday", "y_pred": "1"}


def test_json_non_finite_and_non_numbers(db: Path, tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "p.jsonl",
        [
            {"prediction_id": "ok", "ts": 1, "y_pred": 2},
            {"prediction_id": "null", "ts": 1, "y_pred": None},
            {"prediction_id": "bool", "ts": 1, "y_pred": True},
            {"prediction_id": "list", "ts": 1, "y_pred": [1]},
            {"prediction_id": "obj", "ts": 1, "y_pred": {"v": 1}},
            {"prediction_id": "absent", "ts": 1},
        ],
    )
    result = ingest(db, "predictions", path)
    assert result.accepted == 1
    why = reasons(result)
    assert sorted(why) == [2, 3, 4, 5, 6]
    assert why[2] == why[6] == "y_pred is missing"


def test_malformed_lines_are_rejected_with_their_text(db: Path, tmp_path: Path) -> None:
    csv_path = write_text(
        tmp_path / "p.csv",
        f"prediction_id,ts,y_pred\na,{EPOCH0},1\nb,{EPOCH0}\nc,{EPOCH0},3,4\nd,{EPOCH0},4\n",
    )
    result = ingest(db, "predictions", csv_path)
    assert result.accepted == 2
    assert reasons(result) == {2: "expected 3 fields, found 2", 3: "expected 3 fields, found 4"}
    assert result.rejects[1].record == {"_raw": f"c,{EPOCH0},3,4"}

    json_path = write_ndjson(
        tmp_path / "p.jsonl",
        [{"prediction_id": "e", "ts": EPOCH0, "y_pred": 1}, "{broken", "[1, 2]", '"text"', "3.5"],
    )
    result = ingest(db, "predictions", json_path)
    assert result.accepted == 1
    why = reasons(result)
    assert why[2].startswith("not valid JSON")
    assert why[3] == "expected a JSON object, found list"
    assert why[4] == "expected a JSON object, found str"
    assert why[5] == "expected a JSON object, found float"
    assert sorted(r[0] for r in query(db, "SELECT prediction_id FROM predictions")) == [
        "a",
        "d",
        "e",
    ]


def test_a_file_of_only_bad_rows_commits_nothing_but_is_logged(db: Path, tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "p.jsonl", ["{bad", {"prediction_id": "x", "ts": 1, "y_pred": "nan"}]
    )
    result = ingest(db, "predictions", path)
    assert result.summary() == {"accepted": 0, "duplicates": 0, "rejected": 2}
    assert counts(db) == (0, 0, 1)


def test_rejects_to_ndjson(db: Path, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "p.csv",
        ["prediction_id", "ts", "y_pred", "région"],
        [["ok", EPOCH0, 1, "x"], ["bad", EPOCH0, "inf", "東京"]],
    )
    result = ingest(db, "predictions", path)
    lines = rejects_to_ndjson(result.rejects).decode().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["row"] == 2
    assert obj["error"] == "y_pred is not a finite number: 'inf'"
    assert obj["record"]["région"] == "東京"


# -- idempotency, conflicts ----------------------------------------------------------------------
@pytest.mark.parametrize("suffix", FORMATS)
def test_reingesting_the_same_file_is_a_no_op(db: Path, tmp_path: Path, suffix: str) -> None:
    records = preds(5, region="eu") + [
        {"prediction_id": "bad", "ts": EPOCH0, "y_pred": None, "region": "eu"}
    ]
    path = write_records(tmp_path / f"p{suffix}", records)
    first = ingest(db, "predictions", path)
    assert first.summary() == {"accepted": 5, "duplicates": 0, "rejected": 1}
    before = query(db, "SELECT * EXCLUDE (ingested_at) FROM predictions ORDER BY prediction_id")
    second = ingest(db, "predictions", path)
    assert second.summary() == {"accepted": 0, "duplicates": 5, "rejected": 1}
    after = query(db, "SELECT * EXCLUDE (ingested_at) FROM predictions ORDER BY prediction_id")
    assert after == before


def test_reingesting_the_same_labels_is_a_no_op(db: Path, tmp_path: Path) -> None:
    records = [
        {"prediction_id": f"p{i}", "y_true": float(i) + 0.5, "label_ts": EPOCH0 + i}
        for i in range(5)
    ]
    with Store(db) as store:
        for suffix in (".ndjson", ".parquet", ".csv"):
            path = write_records(tmp_path / f"l{suffix}", records)
            want = 5 if suffix == ".ndjson" else 0
            assert store.ingest_file("labels", path).summary() == {
                "accepted": want,
                "duplicates": 5 - want,
                "rejected": 0,
            }
        assert store.ingest_file("labels", path).duplicates == 5
    assert query(db, "SELECT count(*), max(revision), bool_and(is_current) FROM labels") == [
        (5, 1, True)
    ]


def test_same_content_in_another_format_is_a_duplicate(db: Path, tmp_path: Path) -> None:
    records = preds(3)
    assert ingest(db, "predictions", write_records(tmp_path / "p.csv", records)).accepted == 3
    for suffix in (".jsonl", ".parquet"):
        result = ingest(db, "predictions", write_records(tmp_path / f"p{suffix}", records))
        assert result.summary() == {"accepted": 0, "duplicates": 3, "rejected": 0}, suffix


def test_conflicting_prediction_across_files_is_rejected_and_store_unchanged(
    db: Path, tmp_path: Path
) -> None:
    ingest(db, "predictions", write_records(tmp_path / "a.csv", preds(3)))
    changed = preds(3)
    changed[1]["y_pred"] = 99.0  # same id p1, different content
    changed[2]["ts"] = EPOCH0 + 1  # same id p2, different time
    changed.append({"prediction_id": "new", "ts": EPOCH0, "y_pred": 1.0})
    result = ingest(db, "predictions", write_records(tmp_path / "b.jsonl", changed))
    assert result.summary() == {"accepted": 1, "duplicates": 1, "rejected": 2}
    why = reasons(result)
    assert why[2] == "prediction_id 'p1' is already stored with different content"
    assert why[3] == "prediction_id 'p2' is already stored with different content"
    stored = dict(query(db, "SELECT prediction_id, y_pred FROM predictions"))
    assert stored == {"p0": 0.0, "p1": 1.0, "p2": 2.0, "new": 1.0}


def test_conflicting_prediction_within_one_file(db: Path, tmp_path: Path) -> None:
    records = [
        {"prediction_id": "z", "ts": EPOCH0, "y_pred": 1.0},
        {"prediction_id": "z", "ts": EPOCH0, "y_pred": 2.0},  # conflict with row 1
        {"prediction_id": "z", "ts": EPOCH0, "y_pred": 1.0},  # duplicate of row 1
        {"prediction_id": "y", "ts": EPOCH0, "y_pred": 5.0},
    ]
    result = ingest(db, "predictions", write_records(tmp_path / "p.parquet", records))
    assert result.summary() == {"accepted": 2, "duplicates": 1, "rejected": 1}
    assert reasons(result) == {
        2: "prediction_id 'z' appears earlier in this input (row 1) with different content"
    }
    assert dict(query(db, "SELECT prediction_id, y_pred FROM predictions")) == {"z": 1.0, "y": 5.0}


def test_model_and_segment_are_part_of_the_content(db: Path, tmp_path: Path) -> None:
    ingest(db, "predictions", write_records(tmp_path / "a.csv", preds(1, model="m", region="eu")))
    result = ingest(
        db, "predictions", write_records(tmp_path / "b.csv", preds(1, model="m", region="us"))
    )
    assert result.summary() == {"accepted": 0, "duplicates": 0, "rejected": 1}
    result = ingest(
        db, "predictions", write_records(tmp_path / "c.csv", preds(1, model="other", region="eu"))
    )
    assert result.rejected == 1


# -- labels --------------------------------------------------------------------------------------
def labels_table(db: Path) -> list[tuple[Any, ...]]:
    return query(
        db,
        "SELECT prediction_id, y_true, label_ts, revision, is_current FROM labels "
        "ORDER BY prediction_id, revision",
    )


def test_label_revisions_and_duplicates(db: Path, tmp_path: Path) -> None:
    first = write_csv(tmp_path / "l1.csv", ["prediction_id", "y_true"], [["a", 1.0], ["b", 2.0]])
    second = write_csv(tmp_path / "l2.csv", ["prediction_id", "y_true"], [["a", 1.25], ["b", 2.0]])
    assert ingest(db, "labels", first).summary() == {"accepted": 2, "duplicates": 0, "rejected": 0}
    assert ingest(db, "labels", second).summary() == {"accepted": 1, "duplicates": 1, "rejected": 0}
    assert labels_table(db) == [
        ("a", 1.0, None, 1, False),
        ("a", 1.25, None, 2, True),
        ("b", 2.0, None, 1, True),
    ]
    # re-sending either file again changes nothing
    assert ingest(db, "labels", second).summary() == {"accepted": 0, "duplicates": 2, "rejected": 0}
    assert ingest(db, "labels", first).duplicates == 2
    assert len(labels_table(db)) == 3
    with Store(db) as store:
        current = store.engine.to_pyarrow(
            store.current_labels().order_by("prediction_id")
        ).to_pylist()
    assert [(r["prediction_id"], r["y_true"]) for r in current] == [("a", 1.25), ("b", 2.0)]


def test_label_revisions_with_label_times(db: Path, tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "l.jsonl",
        [
            {"prediction_id": "a", "y_true": 3.0, "label_ts": "2024-05-03T00:00:00Z"},
            {"prediction_id": "a", "y_true": 1.0, "label_ts": "2024-05-01T00:00:00Z"},
            {"prediction_id": "a", "y_true": 2.0, "label_ts": "2024-05-02T00:00:00+02:00"},
            {"prediction_id": "a", "y_true": 2.0, "label_ts": "2024-05-02T00:00:00+02:00"},
        ],
    )
    result = ingest(db, "labels", path)
    assert result.summary() == {"accepted": 3, "duplicates": 1, "rejected": 0}
    rows = labels_table(db)
    # revisions follow label time within one input; the latest label time is current
    assert [(r[1], r[3], r[4]) for r in rows] == [(1.0, 1, False), (2.0, 2, False), (3.0, 3, True)]
    assert rows[1][2] == dt.datetime(2024, 5, 1, 22, tzinfo=UTC)


def test_a_later_file_adds_a_revision_and_moves_is_current(db: Path, tmp_path: Path) -> None:
    ingest(
        db,
        "labels",
        write_csv(
            tmp_path / "a.csv", ["prediction_id", "y_true", "label_ts"], [["a", 1, "2024-05-01"]]
        ),
    )
    ingest(
        db,
        "labels",
        write_csv(
            tmp_path / "b.csv", ["prediction_id", "y_true", "label_ts"], [["a", 5, "2024-05-02"]]
        ),
    )
    assert query(db, "SELECT revision, y_true FROM labels WHERE is_current") == [(2, 5.0)]
    assert query(db, "SELECT count(*) FROM labels WHERE prediction_id = 'a'") == [(2,)]


def test_labels_without_label_ts_in_any_format(db: Path, tmp_path: Path) -> None:
    for i, suffix in enumerate(FORMATS):
        path = write_records(
            tmp_path / f"l{suffix}", [{"prediction_id": f"id{i}", "y_true": float(i)}]
        )
        assert ingest(db, "labels", path).summary() == {
            "accepted": 1,
            "duplicates": 0,
            "rejected": 0,
        }
    assert query(db, "SELECT count(*), count(label_ts) FROM labels") == [(4, 0)]


def test_labels_ndjson_where_label_ts_appears_only_in_a_later_batch(
    db: Path, tmp_path: Path
) -> None:
    path = write_ndjson(
        tmp_path / "l.jsonl",
        [
            {"prediction_id": "a", "y_true": 1.0},
            {"prediction_id": "b", "y_true": 2.0},
            {"prediction_id": "c", "y_true": 3.0, "label_ts": "2024-05-01T00:00:00Z"},
        ],
    )
    reader = BatchReader(path, batch_rows=2)
    with Store(db) as store:
        result = store.ingest_batches(
            "labels", reader, source=str(path), parse_rejects=reader.parse_rejects
        )
    assert result.summary() == {"accepted": 3, "duplicates": 0, "rejected": 0}
    assert query(db, "SELECT prediction_id, label_ts FROM labels ORDER BY 1") == [
        ("a", None),
        ("b", None),
        ("c", dt.datetime(2024, 5, 1, tzinfo=UTC)),
    ]


def test_bad_label_times_are_rejected_but_missing_ones_are_fine(db: Path, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "l.csv",
        ["prediction_id", "y_true", "label_ts"],
        [["a", 1, ""], ["b", 2, "not a time"], ["c", 3, "1e30"], ["d", 4, EPOCH0]],
    )
    result = ingest(db, "labels", path)
    assert result.accepted == 2
    assert sorted(reasons(result)) == [2, 3]
    assert all(e.startswith("label_ts is not an ISO 8601 time") for e in reasons(result).values())


def test_labels_may_arrive_before_their_predictions(db: Path, tmp_path: Path) -> None:
    ingest(
        db,
        "labels",
        write_csv(tmp_path / "l.csv", ["prediction_id", "y_true"], [["p0", 1.0], ["p1", 3.0]]),
    )
    assert counts(db) == (0, 2, 1)
    ingest(db, "predictions", write_records(tmp_path / "p.csv", preds(3)))
    with Store(db) as store:
        joined = store.predictions().left_join(store.current_labels(), "prediction_id")
        rows = store.engine.to_pyarrow(
            joined.select("prediction_id", "y_pred", "y_true").order_by("prediction_id")
        )
    assert rows.to_pylist() == [
        {"prediction_id": "p0", "y_pred": 0.0, "y_true": 1.0},
        {"prediction_id": "p1", "y_pred": 1.0, "y_true": 3.0},
        {"prediction_id": "p2", "y_pred": 2.0, "y_true": None},
    ]


# -- required columns and atomicity --------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "missing", "suffix"),
    [
        ("predictions", "prediction_id", ".csv"),
        ("predictions", "ts", ".parquet"),
        ("predictions", "ts", ".jsonl"),
        ("predictions", "y_pred", ".ndjson"),
        ("labels", "prediction_id", ".parquet"),
        ("labels", "prediction_id", ".jsonl"),
        ("labels", "y_true", ".csv"),
    ],
)
def test_missing_required_column_writes_nothing(
    db: Path, tmp_path: Path, kind: str, missing: str, suffix: str
) -> None:
    full = (
        {"prediction_id": "a", "ts": EPOCH0, "y_pred": 1.0}
        if kind == "predictions"
        else {"prediction_id": "a", "y_true": 1.0}
    )
    record = {k: v for k, v in full.items() if k != missing}
    record["region"] = "eu"
    path = write_records(
        tmp_path / f"f{suffix}",
        [record, record | {"prediction_id": "b"}] if missing != "prediction_id" else [record],
    )
    with pytest.raises(InputError, match=f"missing required column '{missing}' for {kind}") as info:
        ingest(db, kind, path)
    assert "\n" not in str(info.value)
    assert counts(db) == (0, 0, 0)
    with Store(db) as store:
        assert store.extra_columns() == {}  # the new segment column was rolled back too


def test_required_column_named_by_the_mapping(db: Path, tmp_path: Path) -> None:
    path = write_records(tmp_path / "p.csv", preds(2))
    with pytest.raises(InputError, match="'score'"):
        ingest(db, "predictions", path, ColumnMap(y_pred="score"))
    assert counts(db) == (0, 0, 0)


def test_a_failure_midway_rolls_back_the_whole_file(db: Path, tmp_path: Path) -> None:
    good = write_parquet(
        tmp_path / "good.parquet",
        {
            "prediction_id": [f"p{i}" for i in range(3000)],
            "ts": [EPOCH0] * 3000,
            "y_pred": [1.0] * 3000,
        },
    )
    data = bytearray(good.read_bytes())
    data[8:400] = b"\xff" * 392
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError):
        ingest(db, "predictions", bad)
    assert counts(db) == (0, 0, 0)


def test_unusable_files_raise_before_anything_is_written(db: Path, tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    write_text(tmp_path / "header.csv", "prediction_id,ts,y_pred\n")
    write_text(tmp_path / "empty.jsonl", "")
    write_text(tmp_path / "p.txt", "prediction_id,ts,y_pred\na,1,1\n")
    for name in ("absent.csv", "dir.csv", "header.csv", "empty.jsonl", "p.txt"):
        with pytest.raises(InputError):
            ingest(db, "predictions", tmp_path / name)
    assert counts(db) == (0, 0, 0)


# -- column mapping ------------------------------------------------------------------------------
def test_column_mapping_for_predictions_and_labels(db: Path, tmp_path: Path) -> None:
    p = write_records(
        tmp_path / "p.parquet",
        [
            {
                "ID": "a",
                "T": "2024-05-01T12:00:00Z",
                "P": 1.0,
                "M": "price",
                "V": "v2",
                "region": "eu",
            },
            {"ID": "b", "T": "2024-05-01T13:00:00Z", "P": 2.0, "M": None, "V": "", "region": "us"},
        ],
    )
    columns = ColumnMap(
        prediction_id="ID", ts="T", y_pred="P", model="M", version="V", y_true="Y", label_ts="LT"
    )
    assert ingest(db, "predictions", p, columns).accepted == 2
    assert query(
        db, "SELECT prediction_id, ts, y_pred, model, version, region FROM predictions ORDER BY 1"
    ) == [
        ("a", T0, 1.0, "price", "v2", "eu"),
        ("b", T0 + dt.timedelta(hours=1), 2.0, "default", "default", "us"),
    ]
    with Store(db) as store:
        assert store.extra_columns() == {"region": "segment"}  # mapped names are not extras
    l_path = write_csv(tmp_path / "l.csv", ["ID", "Y", "LT"], [["a", 1.5, "2024-05-02T00:00:00Z"]])
    assert ingest(db, "labels", l_path, columns).accepted == 1
    assert query(db, "SELECT prediction_id, y_true, label_ts FROM labels") == [
        ("a", 1.5, dt.datetime(2024, 5, 2, tzinfo=UTC))
    ]


def test_default_model_and_version(db: Path, tmp_path: Path) -> None:
    path = write_records(tmp_path / "p.csv", preds(2))
    ingest(
        db, "predictions", path, default_model="pricing", default_version="v7", source="batch-42"
    )
    assert query(db, "SELECT DISTINCT model, version, source FROM predictions") == [
        ("pricing", "v7", "batch-42")
    ]


# -- hostile and unusual input -------------------------------------------------------------------
HOSTILE_COLUMN = 'x"; DROP TABLE predictions; --'
HOSTILE_FEATURE = "f'); DELETE FROM labels; --"


def test_hostile_column_names_are_data(db: Path, tmp_path: Path) -> None:
    ingest(db, "labels", write_csv(tmp_path / "l.csv", ["prediction_id", "y_true"], [["a", 1.0]]))
    records = [
        {
            "prediction_id": "a",
            "ts": EPOCH0,
            "y_pred": 1.0,
            HOSTILE_COLUMN: "s1",
            HOSTILE_FEATURE: 0.5,
        },
        {
            "prediction_id": "'; DROP TABLE labels; --",
            "ts": EPOCH0,
            "y_pred": 2.0,
            HOSTILE_COLUMN: "'); --",
            HOSTILE_FEATURE: 1.5,
        },
    ]
    quoted = '"' + HOSTILE_COLUMN.replace('"', '""') + '"'
    feature = '"' + HOSTILE_FEATURE.replace('"', '""') + '"'
    with Store(db) as store:
        # Parquet creates the columns; CSV and NDJSON find them again (same rows: duplicates)
        for suffix, want in ((".parquet", (2, 0)), (".csv", (0, 2)), (".jsonl", (0, 2))):
            result = store.ingest_file(
                "predictions", write_records(tmp_path / f"p{suffix}", records)
            )
            assert (result.accepted, result.duplicates, result.rejected) == (*want, 0), suffix
        assert store.extra_columns() == {HOSTILE_COLUMN: "segment", HOSTILE_FEATURE: "feature"}
        assert (store.count("predictions"), store.count("labels")) == (2, 1)  # both tables intact
        rows = store.con.execute(
            f"SELECT prediction_id, {quoted}, {feature} FROM predictions ORDER BY y_pred"
        ).fetchall()
    assert rows == [("a", "s1", 0.5), ("'; DROP TABLE labels; --", "'); --", 1.5)]


def test_column_names_that_clash_with_store_columns(db: Path, tmp_path: Path) -> None:
    base = {"prediction_id": "a", "ts": EPOCH0, "y_pred": 1.0}
    for extra in (
        {"source": "web"},
        {"ingested_at": "x"},
        {"TS": "x"},
        {"Model": "m"},
        {"Region": "a", "region": "b"},
    ):
        path = write_records(tmp_path / "p.parquet", [base | extra])
        with pytest.raises(InputError, match="clashes with") as info:
            ingest(db, "predictions", path)
        assert "\n" not in str(info.value)
        assert counts(db) == (0, 0, 0), extra


def test_leftover_contract_column_after_mapping_clashes(db: Path, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", ["id", "when", "ts", "y_pred"], [["a", EPOCH0, "junk", 1]])
    with pytest.raises(InputError, match="'ts'"):
        ingest(db, "predictions", path, ColumnMap(prediction_id="id", ts="when"))
    assert counts(db) == (0, 0, 0)


def test_segment_case_variant_across_files_clashes(db: Path, tmp_path: Path) -> None:
    ingest(db, "predictions", write_records(tmp_path / "a.csv", preds(1, region="eu")))
    with pytest.raises(InputError, match="'Region'.*'region'"):
        ingest(
            db, "predictions", write_records(tmp_path / "b.csv", preds(1, prefix="q", Region="eu"))
        )
    assert counts(db) == (1, 0, 1)


def test_long_ids_are_rejected(db: Path, tmp_path: Path) -> None:
    limit = "x" * MAX_ID_LENGTH
    too_long = "y" * (MAX_ID_LENGTH + 1)
    very_long = "z" * 100_000
    path = write_records(
        tmp_path / "p.jsonl",
        [{"prediction_id": i, "ts": EPOCH0, "y_pred": 1.0} for i in (limit, too_long, very_long)],
    )
    result = ingest(db, "predictions", path)
    assert result.accepted == 1
    assert reasons(result) == {
        2: f"prediction_id is longer than {MAX_ID_LENGTH} characters",
        3: f"prediction_id is longer than {MAX_ID_LENGTH} characters",
    }
    labels = write_csv(
        tmp_path / "l.csv", ["prediction_id", "y_true"], [[too_long, 1.0], [limit, 2.0]]
    )
    result = ingest(db, "labels", labels)
    assert result.accepted == 1 and sorted(reasons(result)) == [1]
    assert query(db, "SELECT length(prediction_id) FROM predictions") == [(MAX_ID_LENGTH,)]


def test_unicode_survives(db: Path, tmp_path: Path) -> None:
    values = ["Zürich", "東京", "🚀 launch", "Ελλάδα", "مرحبا", "e\u0301 combining", "tab\there"]
    records = [
        {"prediction_id": f"ü-{i}-✓", "ts": EPOCH0, "y_pred": 1.0, "région": v, "model": "模型"}
        for i, v in enumerate(values)
    ]
    for suffix in (".csv", ".jsonl", ".parquet"):
        path = write_records(tmp_path / f"p{suffix}", records)
        result = ingest(db, "predictions", path)
        assert result.rejected == 0, suffix
    rows = query(
        db, 'SELECT prediction_id, "région", model FROM predictions ORDER BY prediction_id'
    )
    assert sorted(r[1] for r in rows) == sorted(values)
    assert {r[2] for r in rows} == {"模型"}
    assert {r[0] for r in rows} == {f"ü-{i}-✓" for i in range(len(values))}


def test_very_long_segment_values_are_rejected(db: Path, tmp_path: Path) -> None:
    path = write_records(
        tmp_path / "p.csv",
        preds(2, region="x")
        + [{"prediction_id": "long", "ts": EPOCH0, "y_pred": 1, "region": "r" * 5000}],
    )
    result = ingest(db, "predictions", path)
    assert result.accepted == 2
    assert reasons(result) == {3: "segment 'region' is longer than 1024 characters"}


def test_numeric_extras_are_features_and_text_extras_segments(db: Path, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "p.csv",
        ["prediction_id", "ts", "y_pred", "age", "region", "zip"],
        [["a", EPOCH0, 1, "31", "eu", "01234"], ["b", EPOCH0, 2, "45.5", "us", "x9"]],
    )
    ingest(db, "predictions", path)
    with Store(db) as store:
        assert store.extra_columns() == {"age": "feature", "region": "segment", "zip": "segment"}
    assert query(db, "SELECT age, zip FROM predictions ORDER BY 1") == [
        (31.0, "01234"),
        (45.5, "x9"),
    ]
    bad = write_csv(
        tmp_path / "q.csv",
        ["prediction_id", "ts", "y_pred", "age"],
        [["c", EPOCH0, 1, "old"], ["d", EPOCH0, 1, "7"]],
    )
    result = ingest(db, "predictions", bad)
    assert result.accepted == 1
    assert reasons(result) == {1: "feature 'age' is not a finite number: 'old'"}


# -- the store itself ----------------------------------------------------------------------------
def test_read_only_store_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store"):
        Store(tmp_path / "absent.duckdb", read_only=True)
    assert not (tmp_path / "absent.duckdb").exists()


def test_a_file_that_is_not_a_duckdb_database(tmp_path: Path) -> None:
    path = write_text(tmp_path / "fake.duckdb", "hello, I am text")
    with pytest.raises(StoreError) as info:
        Store(path)
    assert "\n" not in str(info.value)
    assert path.read_text() == "hello, I am text"


def test_ingest_log_records_every_file(db: Path, tmp_path: Path) -> None:
    path = write_records(
        tmp_path / "p.csv", preds(2) + [{"prediction_id": "", "ts": EPOCH0, "y_pred": 1}]
    )
    ingest(db, "predictions", path)
    ingest(db, "predictions", path)
    assert query(
        db,
        "SELECT kind, source, accepted, duplicates, rejected FROM ingest_log ORDER BY finished_at",
    ) == [
        ("predictions", str(path), 2, 0, 1),
        ("predictions", str(path), 0, 2, 1),
    ]


def _group(store: Store, *requests: list[dict[str, Any]]) -> list[IngestResult]:
    batches = []
    for records in requests:
        table = pa.Table.from_pylist(records)
        table = table.append_column("_row", pa.array(range(len(records)), pa.int64()))
        batches.append((table.combine_chunks().to_batches()[0], len(records)))
    return store.ingest_group("predictions", batches, defer_rollups=True).results


def test_a_group_commit_that_meets_a_stored_id_is_committed_again_with_the_check(tmp_path: Path) -> None:
    """Group commits insert new ids without the conflict check; one stored id makes the group
    commit again with it, and the next commits keep checking: the outcome is the same either way."""
    pred = lambda pid, y=1.0: {"prediction_id": pid, "ts": 1_767_225_600.0, "model": "m", "version": "v", "y_pred": y}
    with Store(tmp_path / "g.duckdb") as store:
        first = _group(store, [pred("a"), pred("b")], [pred("c")])
        assert [r.summary() for r in first] == [{"accepted": 2, "duplicates": 0, "rejected": 0},
                                                {"accepted": 1, "duplicates": 0, "rejected": 0}]
        assert store._cautious_commits == 0
        # a re-sent id, a changed one and a new one, in two requests of one group
        again = _group(store, [pred("a"), pred("d")], [pred("b", 2.0)])
        assert [r.summary() for r in again] == [{"accepted": 1, "duplicates": 1, "rejected": 0},
                                                {"accepted": 0, "duplicates": 0, "rejected": 1}]
        assert "already stored with different content" in again[1].rejects[0].error
        assert store._cautious_commits > 0
        assert _group(store, [pred("e"), pred("c")])[0].summary() == {"accepted": 1, "duplicates": 1, "rejected": 0}
        ids = store.con.execute("SELECT prediction_id, y_pred FROM predictions ORDER BY 1").fetchall()
        assert ids == [("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0), ("e", 1.0)]
        logged = store.con.execute("SELECT sum(accepted), sum(duplicates), sum(rejected) FROM ingest_log").fetchall()
        assert logged == [(5, 2, 1)]


def test_a_group_commit_with_bad_rows_and_a_new_column_answers_as_a_file_ingest(tmp_path: Path) -> None:
    """The group path validates straight into the table: its answers, reasons and stored rows are
    those of the staged path a file ingest takes."""
    records = [
        {"prediction_id": "a", "ts": 1_767_225_600.0, "model": "m", "version": "v", "y_pred": 1.0, "tier": "gold"},
        {"prediction_id": " ", "ts": 1_767_225_600.0, "model": "m", "version": "v", "y_pred": 1.0, "tier": "x"},
        {"prediction_id": "b", "ts": 1_767_225_660.0, "model": "m", "version": "v", "y_pred": None, "tier": "x"},
        {"prediction_id": "c", "ts": None, "model": "m", "version": "v", "y_pred": 2.0, "tier": None},
        {"prediction_id": "d", "ts": 1_767_225_720.0, "model": "", "version": "v", "y_pred": 3.0, "tier": "gold"},
    ]
    with Store(tmp_path / "group.duckdb") as grouped, Store(tmp_path / "file.duckdb") as filed:
        (answer,) = _group(grouped, records)
        table = pa.Table.from_pylist(records)
        table = table.append_column("_row", pa.array(range(len(records)), pa.int64()))
        expected = filed.ingest_batches("predictions", table.to_batches())
        assert answer.summary() == expected.summary() == {"accepted": 2, "duplicates": 0, "rejected": 3}
        assert [(r.row, r.error) for r in answer.rejects] == [(r.row, r.error) for r in expected.rejects]
        rows = "SELECT prediction_id, ts, model, version, y_pred, tier FROM predictions ORDER BY 1"
        assert grouped.con.execute(rows).fetchall() == filed.con.execute(rows).fetchall()
        assert grouped.extra_columns() == filed.extra_columns() == {"tier": "segment"}


def test_a_repeat_inside_a_group_request_names_the_row_as_its_request_numbers_it(tmp_path: Path) -> None:
    """Row numbers in a group commit's reasons are those of the request, as in its answer."""
    pred = lambda pid, y: {"prediction_id": pid, "ts": 1_767_225_600.0, "model": "m", "version": "v", "y_pred": y}
    with Store(tmp_path / "g.duckdb") as store:
        _, second = _group(store, [pred("a", 1.0), pred("b", 1.0)], [pred("c", 1.0), pred("d", 1.0), pred("d", 2.0)])
        assert [(r.row, r.error) for r in second.rejects] == [
            (2, "prediction_id 'd' appears earlier in this input (row 1) with different content")
        ]
