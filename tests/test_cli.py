"""The `msewatch` command, run as a real subprocess: ingest, eval, help, and every bad input.

Subprocesses cost about a second each, so independent invocations of one test run concurrently
(`cli_many`) and several checks share one invocation where that is natural.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import (
    Run,
    assert_nothing_written,
    assert_usage_error,
    query,
    row_count,
    write_csv,
    write_ndjson,
    write_parquet,
    write_records,
    write_text,
)

METRICS = [
    "n_predictions",
    "n_labeled",
    "label_coverage",
    "mse",
    "rmse",
    "mae",
    "bias",
    "error_variance",
    "r2",
    "mape",
    "huber",
    "p50_sq_err",
    "p90_sq_err",
    "p99_sq_err",
]
LABELED_ONLY = [m for m in METRICS if m not in ("n_predictions", "n_labeled", "label_coverage")]
EPOCH0 = 1714564800  # 2024-05-01T12:00:00Z
UTC = dt.UTC


def reference_metrics(
    y_pred: list[float], y_true: list[float], delta: float = 1.0
) -> dict[str, float]:
    """DESIGN.md section 4, computed with NumPy."""
    p, t = np.asarray(y_pred, float), np.asarray(y_true, float)
    r = p - t
    sq = r * r
    mse = float(sq.mean())
    bias = float(r.mean())
    ss = float(((t - t.mean()) ** 2).sum())
    absr = np.abs(r)
    return {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(absr.mean()),
        "bias": bias,
        "error_variance": mse - bias * bias,
        "r2": 1.0 - float(sq.sum()) / ss if ss > 0 else None,  # type: ignore[dict-item]
        "mape": float((absr / np.maximum(np.abs(t), np.finfo(float).eps)).mean()),
        "huber": float(np.where(absr <= delta, 0.5 * sq, delta * (absr - 0.5 * delta)).mean()),
        "p50_sq_err": float(np.quantile(sq, 0.5)),
        "p90_sq_err": float(np.quantile(sq, 0.9)),
        "p99_sq_err": float(np.quantile(sq, 0.99)),
    }


def assert_metrics(
    row: dict[str, Any], y_pred: list[float], y_true: list[float], n_predictions: int
) -> None:
    assert row["n_predictions"] == n_predictions
    assert row["n_labeled"] == len(y_true)
    assert row["label_coverage"] == pytest.approx(len(y_true) / n_predictions, rel=1e-12)
    for name, want in reference_metrics(y_pred, y_true).items():
        if want is None:
            assert row[name] is None, name
        else:
            assert row[name] == pytest.approx(want, rel=1e-9, abs=1e-12), name


def summary_of(run: Run) -> dict[str, int]:
    assert run.returncode == 0, str(run)
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, str(run)
    out = run.json()
    assert set(out) == {"accepted", "duplicates", "rejected"}, out
    return out


# -- help ----------------------------------------------------------------------------------------
def test_help(cli_many: Any) -> None:
    top, ev, ing, version = cli_many(
        [["--help"], ["eval", "--help"], ["ingest", "--help"], ["--version"]]
    )
    for run in (top, ev, ing):
        assert run.returncode == 0, str(run)
        assert run.stdout.startswith("Usage:"), str(run)
        assert run.stderr == ""
    assert "eval" in top.stdout and "ingest" in top.stdout
    for flag in (
        "--data",
        "--predictions",
        "--labels",
        "--db",
        "--window",
        "--rolling",
        "--step",
        "--by",
        "--format",
    ):
        assert flag in ev.stdout, flag
    for flag in (
        "--db",
        "--rejects",
        "--format",
        "--id-col",
        "--ts-col",
        "--pred-col",
        "--label-col",
        "--label-ts-col",
        "--model-col",
        "--version-col",
    ):
        assert flag in ing.stdout, flag
    assert version.returncode == 0 and "msewatch" in version.stdout


# -- unusable files ------------------------------------------------------------------------------
def make_unusable_files(tmp_path: Path) -> dict[str, str]:
    """Unusable input files → a word the error line must contain."""
    good = write_parquet(
        tmp_path / "good.parquet",
        {"prediction_id": ["a"] * 300, "ts": [EPOCH0] * 300, "y_pred": [1.0] * 300},
    )
    data = good.read_bytes()
    write_text(tmp_path / "p.txt", "prediction_id,ts,y_pred\na,1,1\n")
    write_text(tmp_path / "noext", "x")
    write_text(tmp_path / "empty.csv", "")
    write_text(tmp_path / "empty.jsonl", "")
    write_text(tmp_path / "empty.ndjson", "")
    write_text(tmp_path / "empty.parquet", "")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 garbage " * 10)
    (tmp_path / "truncated.parquet").write_bytes(data[: len(data) // 2])
    write_text(tmp_path / "header.csv", "prediction_id,ts,y_pred\n")
    return {
        "p.txt": "unknown file type",
        "noext": "unknown file type",
        "absent.csv": "no such file",
        "empty.csv": "empty",
        "empty.jsonl": "empty",
        "empty.ndjson": "empty",
        "empty.parquet": "Parquet",
        "corrupt.parquet": "not a readable Parquet file",
        "truncated.parquet": "Parquet",
        "header.csv": "no data rows",
    }


def test_unusable_files_fail_cleanly_and_write_nothing(tmp_path: Path, cli_many: Any) -> None:
    cases = make_unusable_files(tmp_path)
    names = ["p.txt", "absent.csv", "corrupt.parquet", "header.csv"]
    runs = cli_many(
        [["ingest", "predictions", name, "--db", f"s{i}.duckdb"] for i, name in enumerate(names)]
    )
    for i, (run, name) in enumerate(zip(runs, names)):
        assert_usage_error(run, name, cases[name])
        assert run.stdout == ""
        assert_nothing_written(tmp_path / f"s{i}.duckdb")


def test_unusable_files_every_kind(tmp_path: Path, main_in_process: Any) -> None:
    for i, (name, needle) in enumerate(make_unusable_files(tmp_path).items()):
        for kind in ("predictions", "labels"):
            run = main_in_process("ingest", kind, name, "--db", f"s{i}.duckdb", "--format", "json")
            assert_usage_error(run, name, needle)
            assert run.stdout == ""
            assert_nothing_written(tmp_path / f"s{i}.duckdb")
        assert_usage_error(main_in_process("eval", "--data", name), name, needle)
    write_csv(tmp_path / "labels.csv", ["prediction_id", "y_true"], [["a", 1.0]])
    write_csv(tmp_path / "preds.csv", ["prediction_id", "ts", "y_pred"], [["a", EPOCH0, 1.0]])
    assert_usage_error(
        main_in_process("eval", "--predictions", "corrupt.parquet", "--labels", "labels.csv"),
        "corrupt.parquet",
    )
    assert_usage_error(
        main_in_process("eval", "--predictions", "header.csv", "--labels", "labels.csv"),
        "header.csv",
    )
    assert_usage_error(
        main_in_process("eval", "--predictions", "preds.csv", "--labels", "empty.jsonl"),
        "empty.jsonl",
    )
    assert_usage_error(
        main_in_process("eval", "--predictions", "preds.csv", "--labels", "absent.csv"),
        "absent.csv",
    )


def test_directory_as_input_is_one_clear_line(tmp_path: Path, cli_many: Any) -> None:
    (tmp_path / "dir.csv").mkdir()
    ingest, ev = cli_many(
        [["ingest", "predictions", "dir.csv", "--db", "s.duckdb"], ["eval", "--data", "dir.csv"]]
    )
    assert ingest.returncode == 2 and ev.returncode == 2
    assert_nothing_written(tmp_path / "s.duckdb")
    assert_usage_error(ingest, "dir.csv")
    assert_usage_error(ev, "dir.csv")


# -- required columns ----------------------------------------------------------------------------
PRED = {"prediction_id": "a", "ts": EPOCH0, "y_pred": 1.0, "region": "eu"}
LABEL = {"prediction_id": "a", "y_true": 1.0, "label_ts": "2024-05-02"}
MISSING_CASES = [
    ("predictions", "prediction_id", "p1.csv"),
    ("predictions", "ts", "p2.parquet"),
    ("predictions", "y_pred", "p3.jsonl"),
    ("predictions", "ts", "p4.ndjson"),
    ("labels", "prediction_id", "l1.ndjson"),
    ("labels", "y_true", "l2.csv"),
    ("labels", "y_true", "l3.parquet"),
]


def write_missing_column_files(tmp_path: Path) -> None:
    for kind, missing, name in MISSING_CASES:
        record = PRED if kind == "predictions" else LABEL
        write_records(tmp_path / name, [{k: v for k, v in record.items() if k != missing}] * 2)


def test_missing_required_column(tmp_path: Path, cli_many: Any) -> None:
    write_missing_column_files(tmp_path)
    picked = [MISSING_CASES[2], MISSING_CASES[5]]
    runs = cli_many(
        [["ingest", kind, name, "--db", f"s{i}.duckdb"] for i, (kind, _, name) in enumerate(picked)]
    )
    for i, (run, (kind, missing, name)) in enumerate(zip(runs, picked)):
        assert_usage_error(run, name, f"'{missing}'", kind)
        assert_nothing_written(tmp_path / f"s{i}.duckdb")


def test_missing_required_column_every_case(tmp_path: Path, main_in_process: Any) -> None:
    write_missing_column_files(tmp_path)
    for i, (kind, missing, name) in enumerate(MISSING_CASES):
        run = main_in_process(
            "ingest", kind, name, "--db", f"s{i}.duckdb", "--rejects", f"r{i}.ndjson"
        )
        assert_usage_error(run, name, f"'{missing}'", kind)
        assert_nothing_written(tmp_path / f"s{i}.duckdb")
        assert not (tmp_path / f"r{i}.ndjson").exists()
    # the name asked for by a mapping option is the one reported
    run = main_in_process(
        "ingest", "predictions", "p1.csv", "--db", "m.duckdb", "--pred-col", "score"
    )
    assert_usage_error(run, "'score'")
    assert_nothing_written(tmp_path / "m.duckdb")
    # eval sources too
    write_csv(tmp_path / "j.csv", ["y_pred", "truth"], [[1.0, 2.0]])
    assert_usage_error(main_in_process("eval", "--data", "j.csv"), "'y_true'")
    assert_usage_error(
        main_in_process("eval", "--predictions", "p1.csv", "--labels", "l2.csv"), "'prediction_id'"
    )


# -- rejects and the summary ---------------------------------------------------------------------
def test_ingest_rejects_file_and_summaries(tmp_path: Path, cli_many: Any) -> None:
    write_text(
        tmp_path / "p.csv",
        "prediction_id,ts,y_pred\n"
        f"good1,{EPOCH0},1.5\n"
        f"nan,{EPOCH0},nan\n"
        f"inf,{EPOCH0},inf\n"
        f"neginf,{EPOCH0},-inf\n"
        f"abc,{EPOCH0},abc\n"
        f"empty,{EPOCH0},\n"
        f",{EPOCH0},1\n"
        "badts,yesterday,1\n"
        f"short,{EPOCH0}\n"
        "absurd,1e30,1\n"
        f"good2,{EPOCH0},-2\n",
    )
    preds, text = cli_many(
        [
            [
                "ingest",
                "predictions",
                "p.csv",
                "--db",
                "a.duckdb",
                "--rejects",
                "p_rejects.ndjson",
                "--format",
                "json",
            ],
            ["ingest", "predictions", "p.csv", "--db", "c.duckdb"],
        ]
    )
    assert summary_of(preds) == {"accepted": 2, "duplicates": 0, "rejected": 9}
    assert preds.stderr == ""
    rejects = [
        json.loads(line) for line in (tmp_path / "p_rejects.ndjson").read_text().splitlines()
    ]
    assert [r["row"] for r in rejects] == list(range(2, 11))
    by_row = {r["row"]: r["error"] for r in rejects}
    assert by_row[2] == "y_pred is not a finite number: 'nan'"
    assert by_row[3] == "y_pred is not a finite number: 'inf'"
    assert by_row[4] == "y_pred is not a finite number: '-inf'"
    assert by_row[5] == "y_pred is not a number: 'abc'"
    assert by_row[6] == "y_pred is missing"
    assert by_row[7] == "prediction_id is empty"
    assert by_row[8] == "ts is not an ISO 8601 time or epoch seconds: 'yesterday'"
    assert by_row[9] == "expected 3 fields, found 2"
    assert by_row[10] == "ts is not an ISO 8601 time or epoch seconds: '1e30'"
    assert rejects[0]["record"] == {"prediction_id": "nan", "ts": str(EPOCH0), "y_pred": "nan"}
    assert sorted(
        r[0] for r in query(tmp_path / "a.duckdb", "SELECT prediction_id FROM predictions")
    ) == ["good1", "good2"]

    # text format: a summary line on stdout, the first five rejects on stderr, and a hint
    assert text.returncode == 0, str(text)
    assert text.stdout.strip() == "predictions: 2 accepted, 0 duplicates, 9 rejected (c.duckdb)"
    err = text.stderr.splitlines()
    assert err[0] == "  rejected row 2: y_pred is not a finite number: 'nan'"
    assert len([e for e in err if e.startswith("  rejected row")]) == 5
    assert "and 4 more" in err[-1] and "--rejects" in err[-1]


def test_labels_rejects_from_ndjson(tmp_path: Path, main_in_process: Any) -> None:
    write_ndjson(
        tmp_path / "l.jsonl",
        [
            {"prediction_id": "good1", "y_true": 1},
            "{not json",
            "[1, 2]",
            {"prediction_id": "good2", "y_true": "nan"},
            {"prediction_id": "x", "y_true": "abc"},
            {"prediction_id": "good2", "y_true": -1.5},
            '"a string"',
            {"prediction_id": "", "y_true": 1},
            {"prediction_id": "y", "y_true": "-inf"},
            {"prediction_id": "z", "y_true": None},
        ],
    )
    run = main_in_process(
        "ingest",
        "labels",
        "l.jsonl",
        "--db",
        "b.duckdb",
        "--rejects",
        "r.ndjson",
        "--format",
        "json",
    )
    assert summary_of(run) == {"accepted": 2, "duplicates": 0, "rejected": 8}
    rejects = [json.loads(line) for line in (tmp_path / "r.ndjson").read_text().splitlines()]
    assert [r["row"] for r in rejects] == [2, 3, 4, 5, 7, 8, 9, 10]
    errors = {r["row"]: r["error"] for r in rejects}
    assert errors[2].startswith("not valid JSON")
    assert errors[3] == "expected a JSON object, found list"
    assert errors[4] == "y_true is not a finite number: 'nan'"
    assert errors[5] == "y_true is not a number: 'abc'"
    assert errors[7] == "expected a JSON object, found str"
    assert errors[8] == "prediction_id is empty"
    assert errors[9] == "y_true is not a finite number: '-inf'"
    assert errors[10] == "y_true is missing"
    assert query(tmp_path / "b.duckdb", "SELECT prediction_id, y_true FROM labels ORDER BY 1") == [
        ("good1", 1.0),
        ("good2", -1.5),
    ]


def test_all_rows_rejected_is_not_an_error(tmp_path: Path, main_in_process: Any) -> None:
    write_ndjson(
        tmp_path / "p.jsonl", ["{bad", "[]", {"prediction_id": "a", "ts": "never", "y_pred": 1}]
    )
    run = main_in_process(
        "ingest",
        "predictions",
        "p.jsonl",
        "--db",
        "s.duckdb",
        "--format",
        "json",
        "--rejects",
        "r.ndjson",
    )
    assert summary_of(run) == {"accepted": 0, "duplicates": 0, "rejected": 3}
    assert len((tmp_path / "r.ndjson").read_text().splitlines()) == 3
    assert row_count(tmp_path / "s.duckdb", "predictions") == 0


# -- idempotency, revisions, late labels ---------------------------------------------------------
def test_reingest_is_idempotent_and_conflicts_are_rejected(
    tmp_path: Path, cli: Any, main_in_process: Any
) -> None:
    records = [
        {"prediction_id": f"p{i}", "ts": EPOCH0 + i, "y_pred": float(i), "region": "eu"}
        for i in range(4)
    ]
    for suffix in (".csv", ".jsonl", ".ndjson", ".parquet"):
        write_records(tmp_path / f"p{suffix}", records)
    conflict = [
        dict(records[0], y_pred=42.0),
        {"prediction_id": "new", "ts": EPOCH0, "y_pred": 0.0, "region": "us"},
    ]
    conflict += [
        {"prediction_id": "twice", "ts": EPOCH0, "y_pred": 1.0},
        {"prediction_id": "twice", "ts": EPOCH0, "y_pred": 2.0},
    ]
    write_records(tmp_path / "conflict.jsonl", conflict)
    db = tmp_path / "s.duckdb"

    first = main_in_process("ingest", "predictions", "p.csv", "--db", db, "--format", "json")
    assert summary_of(first) == {"accepted": 4, "duplicates": 0, "rejected": 0}
    before = query(db, "SELECT * EXCLUDE (ingested_at) FROM predictions ORDER BY prediction_id")
    again = cli("ingest", "predictions", "p.parquet", "--db", db, "--format", "json")
    assert summary_of(again) == {"accepted": 0, "duplicates": 4, "rejected": 0}
    for suffix in (".csv", ".jsonl", ".ndjson"):  # the same rows in every format: all duplicates
        run = main_in_process("ingest", "predictions", f"p{suffix}", "--db", db, "--format", "json")
        assert summary_of(run) == {"accepted": 0, "duplicates": 4, "rejected": 0}, suffix
    assert (
        query(db, "SELECT * EXCLUDE (ingested_at) FROM predictions ORDER BY prediction_id")
        == before
    )

    run = cli(
        "ingest",
        "predictions",
        "conflict.jsonl",
        "--db",
        db,
        "--format",
        "json",
        "--rejects",
        "r.ndjson",
    )
    assert summary_of(run) == {"accepted": 2, "duplicates": 0, "rejected": 2}
    errors = [json.loads(line) for line in (tmp_path / "r.ndjson").read_text().splitlines()]
    assert [(e["row"], e["error"]) for e in errors] == [
        (1, "prediction_id 'p0' is already stored with different content"),
        (4, "prediction_id 'twice' appears earlier in this input (row 3) with different content"),
    ]
    assert query(db, "SELECT y_pred FROM predictions WHERE prediction_id = 'p0'") == [(0.0,)]
    assert row_count(db, "predictions") == 6


def test_labels_before_predictions_revisions_and_eval_db(
    tmp_path: Path, cli: Any, main_in_process: Any
) -> None:
    write_csv(
        tmp_path / "l1.csv",
        ["prediction_id", "y_true", "label_ts"],
        [["a", 1.0, "2024-05-02T00:00:00Z"], ["b", 4.0, "2024-05-02T00:00:00Z"], ["c", 9.0, ""]],
    )
    write_ndjson(
        tmp_path / "l2.jsonl",  # a corrects its label; b is re-sent unchanged
        [
            {"prediction_id": "a", "y_true": 2.0, "label_ts": "2024-05-03T00:00:00Z"},
            {"prediction_id": "b", "y_true": 4.0, "label_ts": "2024-05-02T00:00:00Z"},
        ],
    )
    write_parquet(
        tmp_path / "p.parquet",
        {
            "prediction_id": ["a", "b", "c", "d", "e"],
            "ts": pa.array(
                [dt.datetime(2024, 5, 1, 12, m, tzinfo=UTC) for m in (0, 10, 20, 30, 40)],
                pa.timestamp("us", tz="UTC"),
            ),
            "y_pred": [1.5, 5.0, 7.0, 3.0, 1.0],
            "region": ["eu", "eu", "us", "ap", "ap"],
        },
    )
    db = tmp_path / "s.duckdb"
    first = main_in_process("ingest", "labels", "l1.csv", "--db", db, "--format", "json")
    assert summary_of(first) == {"accepted": 3, "duplicates": 0, "rejected": 0}
    second = cli("ingest", "labels", "l2.jsonl", "--db", db, "--format", "json")
    assert summary_of(second) == {"accepted": 1, "duplicates": 1, "rejected": 0}
    assert query(
        db,
        "SELECT revision, y_true, is_current FROM labels WHERE prediction_id = 'a' ORDER BY revision",
    ) == [
        (1, 1.0, False),
        (2, 2.0, True),
    ]
    assert query(db, "SELECT count(*) FROM labels WHERE prediction_id = 'b'") == [(1,)]
    preds = main_in_process("ingest", "predictions", "p.parquet", "--db", db, "--format", "json")
    assert summary_of(preds) == {"accepted": 5, "duplicates": 0, "rejected": 0}

    run = cli("eval", "--db", db, "--by", "region", "--format", "json")
    assert run.returncode == 0, str(run)
    rows = {r["region"]: r for r in run.json()["rows"]}
    assert sorted(rows) == ["ap", "eu", "us"]
    assert_metrics(rows["eu"], [1.5, 5.0], [2.0, 4.0], n_predictions=2)  # a's revision 2 counts
    assert_metrics(rows["us"], [7.0], [9.0], n_predictions=1)
    ap = rows["ap"]
    assert ap["n_predictions"] == 2 and ap["n_labeled"] == 0 and ap["label_coverage"] == 0.0
    for name in LABELED_ONLY:
        assert ap[name] is None, name
    assert "NaN" not in run.stdout


# -- column mapping ------------------------------------------------------------------------------
def test_column_mapping_for_ingest_and_eval(
    tmp_path: Path, cli: Any, cli_many: Any, main_in_process: Any
) -> None:
    write_csv(
        tmp_path / "p.csv",
        ["ID", "WHEN", "SCORE", "MDL", "VER", "region"],
        [
            ["a", "2024-05-01T12:00:00Z", 1.0, "price", "v1", "eu"],
            ["b", "2024-05-01T13:30:00+02:00", 3.0, "price", "v2", "eu"],
            ["c", EPOCH0 + 7200, 6.0, "price", "v2", "us"],
            ["d", EPOCH0, 6.0, "other", "v2", "us"],
        ],
    )
    write_csv(
        tmp_path / "l.csv",
        ["ID", "TRUTH", "SEEN"],
        [["a", 2.0, "2024-05-02"], ["b", 1.0, "2024-05-02"], ["c", 6.5, ""], ["d", 0.0, ""]],
    )
    write_csv(
        tmp_path / "j.csv",
        ["guess", "actual", "region"],
        [[1.0, 2.0, "eu"], [2.0, 2.5, "eu"], [5.0, 3.0, "us"]],
    )
    mapping = [
        "--id-col",
        "ID",
        "--ts-col",
        "WHEN",
        "--pred-col",
        "SCORE",
        "--model-col",
        "MDL",
        "--version-col",
        "VER",
    ]
    label_mapping = ["--id-col", "ID", "--label-col", "TRUTH", "--label-ts-col", "SEEN"]
    db = tmp_path / "s.duckdb"
    ingest_p, files_eval = cli_many(
        [
            ["ingest", "predictions", "p.csv", "--db", db, "--format", "json", *mapping],
            [
                "eval",
                "--predictions",
                "p.csv",
                "--labels",
                "l.csv",
                "--model",
                "price",
                "--by",
                "version",
                "--format",
                "json",
                *mapping,
                "--label-col",
                "TRUTH",
                "--label-ts-col",
                "SEEN",
            ],
        ]
    )
    assert summary_of(ingest_p) == {"accepted": 4, "duplicates": 0, "rejected": 0}
    ingest_l = main_in_process(
        "ingest", "labels", "l.csv", "--db", db, "--format", "json", *label_mapping
    )
    assert summary_of(ingest_l) == {"accepted": 4, "duplicates": 0, "rejected": 0}
    assert query(
        db, "SELECT prediction_id, ts, model, version, y_pred FROM predictions ORDER BY 1"
    ) == [
        ("a", dt.datetime(2024, 5, 1, 12, tzinfo=UTC), "price", "v1", 1.0),
        ("b", dt.datetime(2024, 5, 1, 11, 30, tzinfo=UTC), "price", "v2", 3.0),
        ("c", dt.datetime(2024, 5, 1, 14, tzinfo=UTC), "price", "v2", 6.0),
        ("d", dt.datetime(2024, 5, 1, 12, tzinfo=UTC), "other", "v2", 6.0),
    ]
    assert query(db, "SELECT prediction_id, y_true, label_ts FROM labels ORDER BY 1") == [
        ("a", 2.0, dt.datetime(2024, 5, 2, tzinfo=UTC)),
        ("b", 1.0, dt.datetime(2024, 5, 2, tzinfo=UTC)),
        ("c", 6.5, None),
        ("d", 0.0, None),
    ]
    db_eval = cli("eval", "--db", db, "--by", "version", "--model", "price", "--format", "json")
    for run in (files_eval, db_eval):
        assert run.returncode == 0, str(run)
        rows = {r["version"]: r for r in run.json()["rows"]}
        assert sorted(rows) == ["v1", "v2"]
        assert_metrics(rows["v1"], [1.0], [2.0], n_predictions=1)
        assert_metrics(rows["v2"], [3.0, 6.0], [1.0, 6.5], n_predictions=2)
    joined = main_in_process(
        "eval",
        "--data",
        "j.csv",
        "--pred-col",
        "guess",
        "--label-col",
        "actual",
        "--by",
        "region",
        "--format",
        "json",
    )
    assert joined.returncode == 0, str(joined)
    rows = {r["region"]: r for r in joined.json()["rows"]}
    assert_metrics(rows["eu"], [1.0, 2.0], [2.0, 2.5], n_predictions=2)
    assert_metrics(rows["us"], [5.0], [3.0], n_predictions=1)
    # without the mapping the same files lack the contract columns
    assert_usage_error(
        main_in_process("ingest", "predictions", "p.csv", "--db", "other.duckdb"), "'prediction_id'"
    )


# -- hostile input -------------------------------------------------------------------------------
EVIL = 'x"; DROP TABLE predictions; --'


def test_hostile_names_and_values_are_data(tmp_path: Path, cli: Any, main_in_process: Any) -> None:
    write_parquet(
        tmp_path / "p.parquet",
        {
            "prediction_id": ["a", "'; DROP TABLE labels; --", "b", "L" * 300],
            "ts": [EPOCH0] * 4,
            "y_pred": [1.0, 2.0, 4.0, 1.0],
            EVIL: ["Zürich 東京 🚀", "Zürich 東京 🚀", "ελληνικά", "x"],
            "f'); DELETE FROM labels; --": [0.5, 1.5, 2.5, 3.5],
        },
    )
    write_csv(
        tmp_path / "l.csv",
        ["prediction_id", "y_true"],
        [["a", 0.0], ["'; DROP TABLE labels; --", 1.0], ["b", 1.0], ["L" * 300, 1.0]],
    )
    db = tmp_path / "s.duckdb"
    run = cli(
        "ingest",
        "predictions",
        "p.parquet",
        "--db",
        db,
        "--format",
        "json",
        "--rejects",
        "r.ndjson",
    )
    assert summary_of(run) == {"accepted": 3, "duplicates": 0, "rejected": 1}
    assert "prediction_id is longer than 256 characters" in (tmp_path / "r.ndjson").read_text()
    run = main_in_process("ingest", "labels", "l.csv", "--db", db, "--format", "json")
    assert summary_of(run) == {"accepted": 3, "duplicates": 0, "rejected": 1}
    assert row_count(db, "predictions") == 3 and row_count(db, "labels") == 3

    run = cli("eval", "--db", db, "--by", EVIL, "--format", "json")
    assert run.returncode == 0, str(run)
    rows = {r[EVIL]: r for r in run.json()["rows"]}
    assert sorted(rows) == sorted(["Zürich 東京 🚀", "ελληνικά"])
    assert_metrics(rows["Zürich 東京 🚀"], [1.0, 2.0], [0.0, 1.0], n_predictions=2)
    assert_metrics(rows["ελληνικά"], [4.0], [1.0], n_predictions=1)
    assert row_count(db, "predictions") == 3 and row_count(db, "labels") == 3


def test_hostile_names_in_eval_files(tmp_path: Path, main_in_process: Any) -> None:
    write_csv(
        tmp_path / "j.csv", ["y_pred", "y_true", EVIL], [[1.0, 2.0, "'); --"], [3.0, 2.0, "ok"]]
    )
    run = main_in_process("eval", "--data", "j.csv", "--by", EVIL, "--format", "json")
    assert run.returncode == 0, str(run)
    assert sorted(r[EVIL] for r in run.json()["rows"]) == ["'); --", "ok"]
    # hostile names as mapped contract columns
    pred_col, label_col = "p'); DROP TABLE x; --", 'y"""; SELECT 1; --'
    write_csv(
        tmp_path / "k.csv",
        [pred_col, label_col, EVIL],
        [[1.0, 2.0, "a"], [3.0, 2.0, "a"], [5.0, 1.0, "b"]],
    )
    run = main_in_process(
        "eval",
        "--data",
        "k.csv",
        "--pred-col",
        pred_col,
        "--label-col",
        label_col,
        "--by",
        EVIL,
        "--format",
        "json",
    )
    assert run.returncode == 0, str(run)
    rows = {r[EVIL]: r for r in run.json()["rows"]}
    assert_metrics(rows["a"], [1.0, 3.0], [2.0, 2.0], n_predictions=2)
    assert_metrics(rows["b"], [5.0], [1.0], n_predictions=1)


def test_column_clashing_with_a_store_column_is_a_clean_error(
    tmp_path: Path, main_in_process: Any
) -> None:
    write_csv(
        tmp_path / "p.csv", ["prediction_id", "ts", "y_pred", "source"], [["a", EPOCH0, 1.0, "web"]]
    )
    assert_usage_error(
        main_in_process("ingest", "predictions", "p.csv", "--db", "s.duckdb"), "'source'"
    )
    assert_nothing_written(tmp_path / "s.duckdb")
    write_csv(tmp_path / "j.csv", ["T", "ts", "y_pred", "y_true"], [[EPOCH0, "junk", 1.0, 2.0]])
    assert_usage_error(
        main_in_process("eval", "--data", "j.csv", "--ts-col", "T", "--window", "1h"), "'ts'"
    )


# -- eval ----------------------------------------------------------------------------------------
@pytest.fixture
def eval_files(tmp_path: Path) -> None:
    """Predictions over three hours in three regions; region 'ap' has no labels at all."""
    preds = [
        ("p1", "2024-05-01T00:10:00Z", 1.0, "eu"),
        ("p2", "2024-05-01T00:50:00Z", 2.0, "eu"),
        ("p3", "2024-05-01T03:10:00+02:00", 3.0, "us"),  # 01:10 UTC
        ("p4", "2024-05-01T01:20:00", 4.0, "us"),  # naive = UTC
        ("p5", str(1714525200 + 3600), 5.0, "ap"),  # 02:00 UTC, epoch seconds
        ("p6", "2024-05-01T02:30:00Z", 6.0, "eu"),
        ("bad", "2024-05-01T02:30:00Z", "nan", "eu"),  # left out with a warning
    ]
    labels = [("p1", 1.5), ("p2", 2.0), ("p3", 2.0), ("p4", 5.5), ("p6", 3.0), ("zz", 1.0)]
    write_csv(tmp_path / "p.csv", ["prediction_id", "ts", "y_pred", "region"], preds)
    write_csv(tmp_path / "l.csv", ["prediction_id", "y_true"], labels)
    truth = dict(labels)
    joined = [(pid, ts, yp, truth[pid], region) for pid, ts, yp, region in preds if pid in truth]
    write_csv(tmp_path / "j.csv", ["prediction_id", "ts", "y_pred", "y_true", "region"], joined)


def check_window_row(row: dict[str, Any], by: list[str], hours: int) -> None:
    assert list(row)[: 2 + len(by)] == ["window_start", "window_end", *by]
    for name in METRICS:
        assert name in row, name
    assert row["window_start"].endswith("Z") and row["window_end"].endswith("Z")
    start = dt.datetime.fromisoformat(row["window_start"])
    end = dt.datetime.fromisoformat(row["window_end"])
    assert end - start == dt.timedelta(hours=hours)
    assert start.timestamp() % 3600 == 0  # aligned to the epoch


@pytest.mark.usefixtures("eval_files")
def test_eval_json_windows_groups_and_nulls(cli_many: Any) -> None:
    windowed, rolling = cli_many(
        [
            [
                "eval",
                "--predictions",
                "p.csv",
                "--labels",
                "l.csv",
                "--window",
                "1h",
                "--by",
                "region",
                "--format",
                "json",
            ],
            ["eval", "--data", "j.csv", "--rolling", "2h", "--step", "1h", "--format", "json"],
        ]
    )
    for run in (windowed, rolling):
        assert run.returncode == 0, str(run)
        assert "NaN" not in run.stdout
    # the invalid prediction is left out, and said so on stderr
    assert "msewatch: warning: left out 1 invalid row of p.csv" in windowed.stderr

    out = windowed.json()
    assert set(out) == {"rows"}
    keyed = {(r["window_start"], r["region"]): r for r in out["rows"]}
    assert list(keyed) == [
        ("2024-05-01T00:00:00Z", "eu"),
        ("2024-05-01T01:00:00Z", "us"),
        ("2024-05-01T02:00:00Z", "ap"),
        ("2024-05-01T02:00:00Z", "eu"),
    ]
    for row in out["rows"]:
        check_window_row(row, ["region"], hours=1)
    assert_metrics(keyed[("2024-05-01T00:00:00Z", "eu")], [1.0, 2.0], [1.5, 2.0], n_predictions=2)
    assert_metrics(keyed[("2024-05-01T01:00:00Z", "us")], [3.0, 4.0], [2.0, 5.5], n_predictions=2)
    assert_metrics(keyed[("2024-05-01T02:00:00Z", "eu")], [6.0], [3.0], n_predictions=1)
    ap = keyed[("2024-05-01T02:00:00Z", "ap")]
    assert ap["n_predictions"] == 1 and ap["n_labeled"] == 0
    for name in LABELED_ONLY:
        assert ap[name] is None, name

    rows = rolling.json()["rows"]
    for row in rows:
        check_window_row(row, [], hours=2)
    assert [r["window_start"] for r in rows] == [
        "2024-05-01T00:00:00Z",
        "2024-05-01T01:00:00Z",
        "2024-05-01T02:00:00Z",
    ]
    assert_metrics(rows[0], [1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, 5.5], n_predictions=4)
    assert_metrics(rows[1], [3.0, 4.0, 6.0], [2.0, 5.5, 3.0], n_predictions=3)
    assert_metrics(rows[2], [6.0], [3.0], n_predictions=1)


@pytest.mark.usefixtures("eval_files")
def test_eval_unwindowed_and_time_range(main_in_process: Any) -> None:
    run = main_in_process("eval", "--predictions", "p.csv", "--labels", "l.csv", "--format", "json")
    assert run.returncode == 0, str(run)
    rows = run.json()["rows"]
    assert len(rows) == 1 and list(rows[0]) == METRICS
    assert_metrics(rows[0], [1.0, 2.0, 3.0, 4.0, 6.0], [1.5, 2.0, 2.0, 5.5, 3.0], n_predictions=6)

    run = main_in_process(
        "eval",
        "--data",
        "j.csv",
        "--since",
        "2024-05-01T01:00:00Z",
        "--until",
        str(1714525200 + 7200),
        "--format",
        "json",
    )
    assert run.returncode == 0, str(run)
    rows = run.json()["rows"]  # 01:00 ≤ ts < 03:00: p3, p4, p6
    assert_metrics(rows[0], [3.0, 4.0, 6.0], [2.0, 5.5, 3.0], n_predictions=3)

    run = main_in_process("eval", "--data", "j.csv", "--since", "2030-01-01", "--format", "json")
    assert run.returncode == 0, str(run)
    (row,) = run.json()["rows"]  # no data: one row, counts 0, every ratio null (never NaN)
    assert row["n_predictions"] == 0 and row["n_labeled"] == 0
    assert all(row[name] is None for name in ["label_coverage", *LABELED_ONLY])


@pytest.mark.usefixtures("eval_files")
def test_eval_csv_and_table_formats(cli_many: Any) -> None:
    csv_run, table_run = cli_many(
        [
            ["eval", "--data", "j.csv", "--by", "region", "--window", "1d", "--format", "csv"],
            ["eval", "--predictions", "p.csv", "--labels", "l.csv", "--by", "region"],
        ]
    )
    assert csv_run.returncode == 0, str(csv_run)
    table = list(csv.DictReader(io.StringIO(csv_run.stdout)))
    assert list(table[0])[:3] == ["window_start", "window_end", "region"]
    assert set(METRICS) <= set(table[0])
    assert [(r["window_start"], r["window_end"], r["region"]) for r in table] == [
        ("2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z", "eu"),
        ("2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z", "us"),
    ]
    want = reference_metrics([1.0, 2.0, 6.0], [1.5, 2.0, 3.0])
    assert int(table[0]["n_predictions"]) == 3
    for name in ("mse", "mae", "bias", "p90_sq_err"):
        assert float(table[0][name]) == pytest.approx(want[name], rel=1e-12), name

    assert table_run.returncode == 0, str(table_run)
    lines = table_run.stdout.splitlines()
    header = next(line for line in lines if "mse" in line)
    assert "region" in header and "rmse" in header
    for region in ("ap", "eu", "us"):
        assert any(f" {region} " in line for line in lines), region
    ap_line = next(line for line in lines if " ap " in line)
    assert "—" in ap_line  # null metrics shown as a dash, never nan
    assert "nan" not in table_run.stdout.lower()


EVAL_BAD_OPTIONS = [
    (["--data", "j.csv", "--window", "0"], ["--window", "'0'"]),
    (["--data", "j.csv", "--window", "5x"], ["--window", "'5x'"]),
    (["--data", "j.csv", "--window", "1.5h"], ["--window"]),
    (["--data", "j.csv", "--rolling", "0h"], ["--rolling"]),
    (["--data", "j.csv", "--rolling", "1h", "--step", "7m"], ["--rolling", "multiple", "--step"]),
    (["--data", "j.csv", "--rolling", "1h", "--step", "2h"], ["--rolling", "multiple", "--step"]),
    (["--data", "j.csv", "--window", "1h", "--rolling", "2h"], ["--window", "--rolling"]),
    (["--data", "j.csv", "--step", "1h"], ["--step", "--rolling"]),
    (["--data", "j.csv", "--by", "nope"], ["--by", "'nope'"]),
    (["--data", "j.csv", "--by", "region,nope"], ["--by", "'nope'"]),
    (["--data", "j.csv", "--by", "window_start"], ["--by", "window_start"]),
    (["--data", "j.csv", "--since", "2024-05-02", "--until", "2024-05-01"], ["--since", "--until"]),
    (["--data", "j.csv", "--since", "2024-05-01", "--until", "2024-05-01"], ["--since", "--until"]),
    (["--data", "j.csv", "--since", "last tuesday"], ["--since", "last tuesday"]),
    (["--data", "j.csv", "--until", "2024-99-99"], ["--until"]),
    (["--data", "j.csv", "--huber-delta", "0"], ["--huber-delta"]),
    (["--data", "j.csv", "--huber-delta", "nan"], ["--huber-delta"]),
    ([], ["--data", "--predictions", "--db"]),
    (["--predictions", "p.csv"], ["--predictions", "--labels"]),
    (["--data", "j.csv", "--predictions", "p.csv", "--labels", "l.csv"], ["one source"]),
    (["--data", "j.csv", "--db", "x.duckdb"], ["one source"]),
    (["--db", "absent.duckdb"], ["absent.duckdb", "no such store"]),
]


@pytest.mark.usefixtures("eval_files")
def test_eval_bad_options(cli_many: Any) -> None:
    picked = [EVAL_BAD_OPTIONS[i] for i in (0, 4, 17, 18)]
    runs = cli_many([["eval", *args] for args, _ in picked])
    for run, (_, needles) in zip(runs, picked):
        assert_usage_error(run, *needles)
        assert run.stdout == ""


@pytest.mark.usefixtures("eval_files")
def test_eval_bad_options_every_case(tmp_path: Path, main_in_process: Any) -> None:
    for args, needles in EVAL_BAD_OPTIONS:
        run = main_in_process("eval", *args)
        assert_usage_error(run, *needles)
        assert run.stdout == ""
    assert not (tmp_path / "absent.duckdb").exists()
    assert not (tmp_path / "x.duckdb").exists()


def test_window_without_prediction_times_is_an_error(tmp_path: Path, main_in_process: Any) -> None:
    write_csv(tmp_path / "j.csv", ["y_pred", "y_true"], [[1.0, 2.0], [2.0, 2.0]])
    assert_usage_error(main_in_process("eval", "--data", "j.csv", "--window", "1h"), "ts")


# -- the store itself ----------------------------------------------------------------------------
LOCK_HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
print("ready", flush=True)
sys.stdin.read()  # hold the write lock until the test closes stdin
"""


def test_locked_store(tmp_path: Path, cli_many: Any) -> None:
    from msewatch.store import Store

    path = write_csv(tmp_path / "p.csv", ["prediction_id", "ts", "y_pred"], [["a", EPOCH0, 1.0]])
    db = tmp_path / "s.duckdb"
    with Store(db) as store:
        store.ingest_file("predictions", path)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        ingest, ev = cli_many(
            [["ingest", "predictions", "p.csv", "--db", db], ["eval", "--db", db]]
        )
    finally:
        holder.communicate(input="", timeout=60)
    for run in (ingest, ev):
        assert_usage_error(run, "s.duckdb", "in use by another process")
        assert run.stdout == ""
    with Store(db) as store:  # released: usable again, and nothing changed meanwhile
        assert store.count("predictions") == 1
        assert store.ingest_file("predictions", path).summary() == {
            "accepted": 0,
            "duplicates": 1,
            "rejected": 0,
        }


def test_store_locations(tmp_path: Path, main_in_process: Any) -> None:
    write_csv(tmp_path / "p.csv", ["prediction_id", "ts", "y_pred"], [["a", EPOCH0, 1.0]])
    run = main_in_process(
        "ingest",
        "predictions",
        "p.csv",
        "--format",
        "json",
        env={"MSEWATCH_DB": str(tmp_path / "env.duckdb")},
    )
    assert summary_of(run)["accepted"] == 1
    assert row_count(tmp_path / "env.duckdb", "predictions") == 1
    assert not (tmp_path / "msewatch.duckdb").exists()
    assert (
        summary_of(main_in_process("ingest", "predictions", "p.csv", "--format", "json"))[
            "accepted"
        ]
        == 1
    )
    assert row_count(tmp_path / "msewatch.duckdb", "predictions") == 1
    # unusable store files: one line, exit 2, the file left as it was
    write_text(tmp_path / "notdb.duckdb", "plain text, not a database")
    for args in (
        ["ingest", "predictions", "p.csv", "--db", "notdb.duckdb"],
        ["eval", "--db", "notdb.duckdb"],
        ["ingest", "predictions", "p.csv", "--db", str(tmp_path / "no" / "such" / "dir.duckdb")],
    ):
        assert_usage_error(main_in_process(*args), args[-1].split("/")[-1])
    assert (tmp_path / "notdb.duckdb").read_text() == "plain text, not a database"
