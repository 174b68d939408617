"""Shared fixtures: the CLI as a real subprocess, file writers, and store inspection.

The CLI is run exactly as a user runs it (the console script next to the interpreter, else
`python -m msewatch.cli`), in the test's own temporary directory and without `MSEWATCH_DB`, so
a stray default store can never land in the repository. Independent invocations can be run
concurrently with `cli_many`, which keeps the suite fast on small machines.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import settings

# In CI the property tests replay a fixed set of examples (derandomized), so a run is
# reproducible; locally each run explores new random examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

CLI_TIMEOUT = 120
ERROR_PREFIX = "msewatch: error:"


def msewatch_command() -> list[str]:
    """The installed console script when it sits next to this interpreter, else `-m`."""
    script = Path(sys.executable).with_name("msewatch")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "msewatch.cli"]


@dataclass
class Run:
    """A finished CLI invocation."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:  # shown by pytest when an assertion on a Run fails
        return (
            f"msewatch {' '.join(self.args)} -> {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MSEWATCH_DB"}
    env["PYTHONIOENCODING"] = "utf-8"
    env.pop("PYTHONWARNINGS", None)
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
) -> Run:
    argv = [str(a) for a in args]
    proc = subprocess.run(
        [*msewatch_command(), *argv],
        cwd=cwd,
        env=_clean_env(env),
        capture_output=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return Run(
        argv,
        proc.returncode,
        proc.stdout.decode("utf-8", errors="replace"),
        proc.stderr.decode("utf-8", errors="replace"),
    )


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., Run]:
    """`cli("eval", "--data", f)`: run msewatch in tmp_path and return the finished Run."""

    def run(*args: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Run:
        return run_cli(args, cwd=tmp_path, env=env)

    return run


@pytest.fixture
def cli_many(tmp_path: Path) -> Callable[[Iterable[Sequence[str | os.PathLike[str]]]], list[Run]]:
    """Run independent invocations concurrently (one per core); results in the given order."""

    def run_all(commands: Iterable[Sequence[str | os.PathLike[str]]]) -> list[Run]:
        commands = list(commands)
        workers = max(1, min(len(commands), os.cpu_count() or 1, 4))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda c: run_cli(c, cwd=tmp_path), commands))

    return run_all


@pytest.fixture
def main_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Run]:
    """Like `cli`, but calls the console script's entry point `msewatch.cli:main` in this process.

    Same working directory and environment rules as the subprocess; used for the long tails of
    option and file checks whose subprocess twins would cost a second each.
    """
    from msewatch.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MSEWATCH_DB", raising=False)

    def run(*args: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Run:
        argv = [str(a) for a in args]
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            m.setattr(sys, "argv", ["msewatch", *argv])
            capsys.readouterr()
            code: Any = 0
            try:
                main()
            except SystemExit as exc:
                code = exc.code
            out, err = capsys.readouterr()
        return Run(argv, 0 if code is None else code if isinstance(code, int) else 1, out, err)

    return run


def assert_usage_error(run: Run, *needles: str) -> None:
    """Exit status 2 and exactly one stderr line `msewatch: error: …` containing each needle."""
    assert run.returncode == 2, str(run)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr\n{run}"
    assert lines[0].startswith(ERROR_PREFIX), str(run)
    assert "Traceback" not in run.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in the message\n{run}"


# -- writers -------------------------------------------------------------------------------------
def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A well-formed CSV (None becomes an empty field)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
    return path


def write_ndjson(path: Path, records: Iterable[Mapping[str, Any] | str]) -> Path:
    """One JSON value a line; a str is written verbatim (for deliberately broken lines)."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            fh.write(rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False))
            fh.write("\n")
    return path


def write_parquet(path: Path, data: pa.Table | Mapping[str, Any]) -> Path:
    table = data if isinstance(data, pa.Table) else pa.table(dict(data))
    pq.write_table(table, path)
    return path


def write_records(path: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """The same records as CSV, NDJSON (.jsonl/.ndjson) or Parquet, chosen by the extension."""
    names: dict[str, None] = {}
    for rec in records:
        names.update(dict.fromkeys(rec))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return write_csv(path, list(names), ([rec.get(n) for n in names] for rec in records))
    if suffix in (".jsonl", ".ndjson"):
        return write_ndjson(path, records)
    if suffix in (".parquet", ".pq"):
        return write_parquet(
            path, pa.Table.from_pylist([{n: r.get(n) for n in names} for r in records])
        )
    raise ValueError(f"no writer for {path}")


# -- store inspection ----------------------------------------------------------------------------
def query(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query on a store file, opened read-only with UTC as the session time zone."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def row_count(db: Path, table: str) -> int:
    """Rows in a store table; 0 when the store file was never created or lacks the table."""
    if not db.exists():
        return 0
    tables = {r[0] for r in query(db, "SELECT table_name FROM information_schema.tables")}
    if table not in tables:
        return 0
    return int(query(db, f'SELECT count(*) FROM "{table}"')[0][0])


def assert_nothing_written(db: Path) -> None:
    """The store either does not exist or holds no predictions, labels or ingest log."""
    for table in ("predictions", "labels", "ingest_log"):
        assert row_count(db, table) == 0, f"{table} of {db} is not empty"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Path of a store file in tmp_path (not created yet)."""
    return tmp_path / "store.duckdb"
