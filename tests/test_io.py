"""Reading Parquet, CSV and NDJSON files (msewatch.io): formats, record numbers, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import ibis
import pyarrow as pa
import pytest
from conftest import write_csv, write_ndjson, write_parquet, write_records, write_text

from msewatch.errors import InputError
from msewatch.io import BatchReader, file_format, scan

RECORDS = [
    {"prediction_id": "a", "ts": "2024-05-01T12:00:00Z", "y_pred": 1.5},
    {"prediction_id": "b", "ts": "2024-05-01T13:00:00Z", "y_pred": 2.5},
    {"prediction_id": "c", "ts": "2024-05-01T14:00:00Z", "y_pred": -3.0},
]


def read_all(path: Path, **kw: object) -> tuple[BatchReader, pa.Table]:
    reader = BatchReader(path, **kw)  # type: ignore[arg-type]
    batches = list(reader)
    table = pa.Table.from_batches(batches) if batches else pa.table({})
    return reader, table


# -- formats by extension ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("p.parquet", "parquet"),
        ("p.pq", "parquet"),
        ("p.csv", "csv"),
        ("p.jsonl", "ndjson"),
        ("p.ndjson", "ndjson"),
        ("P.CSV", "csv"),
        ("p.JSONL", "ndjson"),
    ],
)
def test_file_format_by_extension(tmp_path: Path, name: str, fmt: str) -> None:
    path = write_records(tmp_path / name.lower(), RECORDS).rename(tmp_path / name)
    assert file_format(path) == fmt
    reader, table = read_all(path)
    assert reader.fmt == fmt
    assert table.column("prediction_id").to_pylist() == ["a", "b", "c"]
    assert table.column("_row").to_pylist() == [1, 2, 3]
    assert table.column("_row").type == pa.int64()


@pytest.mark.parametrize("name", ["p.txt", "p.json", "p.xlsx", "p", "p.csv.gz", "p.parquet.bak"])
def test_unknown_extension_is_an_input_error(tmp_path: Path, name: str) -> None:
    path = write_text(tmp_path / name, "prediction_id,ts,y_pred\na,1,1\n")
    with pytest.raises(InputError, match="unknown file type") as info:
        BatchReader(path)
    assert ".csv" in str(info.value) and ".parquet" in str(info.value)  # says what is expected
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        BatchReader(tmp_path / "absent.csv")


def test_directory_with_a_known_extension(tmp_path: Path) -> None:
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        BatchReader(tmp_path / "dir.parquet")


@pytest.mark.skipif(
    os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root reads anything"
)
def test_unreadable_file(tmp_path: Path) -> None:
    path = write_records(tmp_path / "p.csv", RECORDS)
    path.chmod(0)
    try:
        with pytest.raises(InputError, match="permission denied"):
            BatchReader(path)
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "empty CSV file"),
        ("empty.jsonl", b"", "empty NDJSON file"),
        ("empty.ndjson", b"", "empty NDJSON file"),
        ("empty.parquet", b"", "not a readable Parquet file"),
        ("header_only.csv", b"prediction_id,ts,y_pred\n", "no data rows"),
        ("header_blank_lines.csv", b"prediction_id,ts,y_pred\n\n\n", "no data rows"),
        ("blank_header.csv", b",,\na,1,2\n", "empty CSV header"),
        ("dup_header.csv", b"prediction_id,ts,ts\na,1,2\n", "duplicate column names"),
        ("garbage.parquet", b"this is not parquet at all", "not a readable Parquet file"),
        ("csv_named.parquet", b"prediction_id,ts,y_pred\na,1,2\n", "not a readable Parquet file"),
    ],
)
def test_unusable_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        read_all(path)
    text = str(info.value)
    assert name in text  # names the file
    assert "\n" not in text


def test_truncated_parquet(tmp_path: Path) -> None:
    good = write_parquet(
        tmp_path / "good.parquet", {"prediction_id": ["a"] * 500, "y_pred": [1.0] * 500}
    )
    data = good.read_bytes()
    bad = tmp_path / "truncated.parquet"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="Parquet"):
        read_all(bad)


def test_parquet_with_corrupt_pages_fails_while_reading(tmp_path: Path) -> None:
    good = write_parquet(
        tmp_path / "good.parquet",
        {
            "prediction_id": [f"id{i}" for i in range(2000)],
            "y_pred": [float(i) for i in range(2000)],
        },
    )
    data = bytearray(good.read_bytes())
    data[8:200] = b"\xff" * 192  # clobber the first page header and data, keep the footer
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="Parquet") as info:
        read_all(bad)
    assert "corrupt.parquet" in str(info.value)


# -- CSV -----------------------------------------------------------------------------------------
def test_csv_values_stay_text_and_empty_is_null(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "p.csv",
        "prediction_id,ts,y_pred,region\n007,1714564800,1e3,\n008,2024-05-01,abc,eu\n",
    )
    _, table = read_all(path)
    assert table.schema.field("prediction_id").type == pa.string()
    assert table.column("prediction_id").to_pylist() == ["007", "008"]  # leading zeros kept
    assert table.column("y_pred").to_pylist() == ["1e3", "abc"]
    assert table.column("region").to_pylist() == [None, "eu"]


def test_csv_malformed_lines_are_parse_rejects_and_the_rest_is_read(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "p.csv",
        "prediction_id,ts,y_pred\n"
        "a,1714564800,1\n"
        "b,1714564800\n"  # too few fields
        "c,1714564800,3\n"
        "d,1714564800,4,extra\n"  # too many
        "e,1714564800,5\n",
    )
    reader, table = read_all(path)
    assert table.column("prediction_id").to_pylist() == ["a", "c", "e"]
    assert table.column("_row").to_pylist() == [1, 3, 5]
    assert [(p.row, p.error) for p in reader.parse_rejects] == [
        (2, "expected 3 fields, found 2"),
        (4, "expected 3 fields, found 4"),
    ]
    assert reader.parse_rejects[1].raw == "d,1714564800,4,extra"


def test_csv_quoted_fields_with_delimiters_newlines_and_quotes(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "p.csv",
        ["prediction_id", "ts", "y_pred", "note"],
        [
            ["a,1", "1714564800", "1", 'say "hi"; DROP TABLE x'],
            ["b", "1714564800", "2", "two\nlines"],
        ],
    )
    _, table = read_all(path)
    assert table.column("prediction_id").to_pylist() == ["a,1", "b"]
    assert table.column("note").to_pylist() == ['say "hi"; DROP TABLE x', "two\nlines"]
    assert table.column("_row").to_pylist() == [1, 2]


def test_csv_byte_order_mark_and_padded_header(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes("\ufeffprediction_id , ts,y_pred\na,1,2\n".encode())
    reader, table = read_all(path)
    assert reader.columns == ["prediction_id", "ts", "y_pred"]
    assert table.column("prediction_id").to_pylist() == ["a"]


def test_csv_unicode_values(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", ["prediction_id", "région"], [["ü-1", "Zürich 東京 🚀"]])
    _, table = read_all(path)
    assert table.column("région").to_pylist() == ["Zürich 東京 🚀"]


# -- NDJSON --------------------------------------------------------------------------------------
def test_ndjson_bad_lines_are_parse_rejects_with_line_numbers(tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "p.jsonl",
        [
            {"prediction_id": "a", "ts": 1, "y_pred": 1},
            "[1, 2, 3]",
            "{not json",
            '"just a string"',
            "",  # blank lines are skipped but still counted
            "42",
            "null",
            '{"prediction_id": "b", "ts": 2, "y_pred": NaN}',  # NaN is not JSON
            {"prediction_id": "c", "ts": 3, "y_pred": 3},
        ],
    )
    reader, table = read_all(path)
    assert table.column("prediction_id").to_pylist() == ["a", "c"]
    assert table.column("_row").to_pylist() == [1, 9]
    rejects = {p.row: p.error for p in reader.parse_rejects}
    assert sorted(rejects) == [2, 3, 4, 6, 7, 8]
    assert rejects[2] == "expected a JSON object, found list"
    assert rejects[4] == "expected a JSON object, found str"
    assert rejects[6] == "expected a JSON object, found int"
    assert rejects[7] == "expected a JSON object, found NoneType"
    assert rejects[3].startswith("not valid JSON")
    assert rejects[8].startswith("not valid JSON")


def test_ndjson_mixed_types_and_missing_keys(tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "p.ndjson",
        [
            {"prediction_id": 1, "ts": 1714564800, "y_pred": 1, "flag": True},
            {"prediction_id": "two", "ts": 1714564800.5, "y_pred": "2.5"},
            {"prediction_id": 3, "ts": "2024-05-01", "y_pred": 3.5, "extra": {"a": 1}},
        ],
    )
    _, table = read_all(path)
    assert table.column("prediction_id").to_pylist() == ["1", "two", "3"]  # mixed → text
    assert table.column("ts").to_pylist() == ["1714564800", "1714564800.5", "2024-05-01"]
    assert table.column("y_pred").to_pylist() == ["1", "2.5", "3.5"]
    assert table.column("flag").to_pylist() == [True, None, None]
    assert table.column("extra").to_pylist() == [None, None, '{"a":1}']


def test_ndjson_numbers_keep_their_type(tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "p.jsonl",
        [
            {"prediction_id": "a", "ts": 1714564800, "y_pred": 1},
            {"prediction_id": "b", "ts": 1714564801, "y_pred": 2.5},
        ],
    )
    _, table = read_all(path)
    assert table.schema.field("ts").type == pa.int64()
    assert table.schema.field("y_pred").type == pa.float64()


def test_ndjson_integer_beyond_int64_does_not_overflow(tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "p.jsonl",
        [{"prediction_id": "a", "y_pred": 2**70}, {"prediction_id": "b", "y_pred": 1}],
    )
    _, table = read_all(path)
    values = table.column("y_pred").to_pylist()
    assert float(values[0]) == float(2**70) and float(values[1]) == 1.0


def test_ndjson_floats_stay_numbers_and_a_huge_integer_beside_them_is_kept(tmp_path: Path) -> None:
    floats = write_ndjson(tmp_path / "f.jsonl", [{"y_pred": 1.5}, {"y_pred": -0.25}])
    _, table = read_all(floats)
    assert table.schema.field("y_pred").type == pa.float64()
    mixed = write_ndjson(tmp_path / "m.jsonl", [{"y_pred": 1.5}, {"y_pred": 2**64 - 1}, {"y_pred": 2}])
    _, table = read_all(mixed)
    assert table.column("y_pred").to_pylist() == ["1.5", str(2**64 - 1), "2"]


def test_ndjson_batches_keep_record_numbers(tmp_path: Path) -> None:
    lines: list[dict[str, object] | str] = []
    for i in range(1, 11):
        lines.append({"prediction_id": f"p{i}", "y_pred": i} if i != 5 else "oops")
    path = write_ndjson(tmp_path / "p.jsonl", lines)
    reader = BatchReader(path, batch_rows=3)
    batches = list(reader)
    assert len(batches) == 3
    rows = [r for b in batches for r in b.column("_row").to_pylist()]
    assert rows == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert [p.row for p in reader.parse_rejects] == [5]
    assert reader.position == reader.total == path.stat().st_size


def test_ndjson_with_only_blank_lines_yields_nothing(tmp_path: Path) -> None:
    path = write_text(tmp_path / "p.jsonl", "\n   \n\n")
    reader, table = read_all(path)
    assert table.num_rows == 0
    assert reader.parse_rejects == []


# -- Parquet -------------------------------------------------------------------------------------
def test_parquet_columns_known_before_reading_and_types_kept(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "p.parquet",
        pa.table(
            {
                "prediction_id": pa.array(["a", "b"]),
                "ts": pa.array([1, 2], pa.timestamp("s", tz="UTC")),
                "y_pred": pa.array([1.0, 2.0]),
            }
        ),
    )
    reader = BatchReader(path)
    assert reader.columns == ["prediction_id", "ts", "y_pred"]
    assert reader.total == 2
    _, table = read_all(path)
    ts_type = table.schema.field("ts").type
    assert pa.types.is_timestamp(ts_type) and ts_type.tz == "UTC"  # Parquet has no seconds unit
    assert table.column("_row").to_pylist() == [1, 2]


def test_parquet_batches_number_rows_across_batches(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "p.parquet", {"prediction_id": [f"p{i}" for i in range(7)]})
    reader = BatchReader(path, batch_rows=3)
    rows = [r for b in reader for r in b.column("_row").to_pylist()]
    assert rows == [1, 2, 3, 4, 5, 6, 7]
    assert reader.position == 7


def test_a_column_named_row_in_the_file_does_not_confuse_numbering(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "p.parquet", {"prediction_id": ["a", "b"], "_row": [99, 98]})
    _, table = read_all(path)
    assert table.column("_row").to_pylist() == [1, 2]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_progress_position_is_current_when_a_batch_arrives(tmp_path: Path, suffix: str) -> None:
    """The consumer reports progress as each batch arrives; position must already count it."""
    path = write_records(tmp_path / f"p{suffix}", RECORDS)
    reader = BatchReader(path)
    seen = [(reader.position, reader.total) for _ in reader]
    assert seen == [(reader.total, reader.total)]


# -- scan ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_scan_gives_an_engine_table_with_row_numbers(tmp_path: Path, suffix: str) -> None:
    path = write_records(tmp_path / f"p{suffix}", RECORDS)
    con = ibis.duckdb.connect()
    table, rejects = scan(con, path)
    assert rejects == []
    result = con.to_pyarrow(table.order_by("_row"))
    assert result.column("prediction_id").to_pylist() == ["a", "b", "c"]
    assert result.column("_row").to_pylist() == [1, 2, 3]


def test_scan_reports_parse_rejects(tmp_path: Path) -> None:
    path = write_text(tmp_path / "p.csv", "prediction_id,y_pred,y_true\na,1,2\nb,1\nc,3,4\n")
    con = ibis.duckdb.connect()
    table, rejects = scan(con, path)
    assert [p.row for p in rejects] == [2]
    assert con.to_pyarrow(table.order_by("_row")).column("_row").to_pylist() == [1, 3]


def test_scan_of_a_file_with_only_bad_lines_is_an_empty_table(tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "p.jsonl", ["[1]", "{bad"])
    con = ibis.duckdb.connect()
    table, rejects = scan(con, path)
    assert len(rejects) == 2
    assert con.to_pyarrow(table).num_rows == 0
    assert "_row" in table.columns
