"""The inputs of an evaluation: files read by the engine, or the store's tables.

Each returns an `EvalInput`: the engine, the prediction table, the label table (None for a
joined holdout file) and the count of rows left out because they failed validation, with the
first reasons, so the CLI can say what it skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import ibis
import ibis.expr.types as ir

from msewatch.evaluate import latest_labels
from msewatch.io import ParseReject, scan
from msewatch.schema import ColumnMap, Kind, normalize
from msewatch.store import Store

__all__ = ["EvalInput", "from_files", "from_joined", "from_store", "new_engine"]


@dataclass
class EvalInput:
    engine: Any
    predictions: ir.Table
    labels: ir.Table | None
    skipped: dict[str, int] = field(default_factory=dict)  # source → rows left out
    reasons: dict[str, list[str]] = field(default_factory=dict)  # source → first reasons


def new_engine() -> Any:
    """An in-memory DuckDB engine set to UTC."""
    engine = ibis.duckdb.connect()
    engine.raw_sql("SET TimeZone = 'UTC'")
    return engine


def _valid_rows(
    engine: Any, path: str | os.PathLike[str], kind: Kind, columns: ColumnMap, into: EvalInput,
    **options: Any,
) -> ir.Table:
    raw, parse_rejects = scan(engine, path)
    table = normalize(raw, kind, columns, source=str(path), **options)
    _count_skipped(engine, table, parse_rejects, str(path), into)
    return table.filter(table._error.isnull()).drop("_error")


def _count_skipped(
    engine: Any, table: ir.Table, parse_rejects: list[ParseReject], name: str, into: EvalInput
) -> None:
    bad = table.filter(table._error.notnull())
    first = engine.to_pyarrow(bad.select("_row", "_error").order_by("_row").limit(3)).to_pylist()
    total = len(parse_rejects)
    if first:
        total += int(engine.to_pyarrow(bad.count().as_table()).column(0)[0].as_py())
    if total:
        reasons = [f"row {p.row}: {p.error}" for p in parse_rejects[:3]]
        reasons += [f"row {r['_row']}: {r['_error']}" for r in first]
        into.skipped[name] = total
        into.reasons[name] = reasons[:3]


def from_files(
    predictions_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    columns: ColumnMap = ColumnMap(),
    *,
    engine: Any = None,
) -> EvalInput:
    """Prediction and label files; when an id has several labels the latest counts."""
    engine = engine or new_engine()
    out = EvalInput(engine, None, None)  # type: ignore[arg-type]
    preds = _valid_rows(engine, predictions_path, "predictions", columns, out)
    labels = _valid_rows(engine, labels_path, "labels", columns, out)
    out.predictions = preds.drop("_row")
    out.labels = latest_labels(labels)
    return out


def from_joined(
    path: str | os.PathLike[str], columns: ColumnMap = ColumnMap(), *, engine: Any = None
) -> EvalInput:
    """One file with y_pred and y_true on every row (a holdout set)."""
    engine = engine or new_engine()
    out = EvalInput(engine, None, None)  # type: ignore[arg-type]
    out.predictions = _valid_rows(engine, path, "joined", columns, out).drop("_row")
    return out


def from_store(store: Store) -> EvalInput:
    """The store's predictions and the current revision of their labels."""
    preds = store.predictions().drop("source", "ingested_at")
    return EvalInput(store.engine, preds, store.current_labels())
