"""The inputs of an evaluation: files read by the engine, or the store's tables.

File inputs are validated, not filtered: each row carries `_ok` (and `_row`), so the evaluation
leaves rejected rows out of every metric and counts them in the same pass over the data.
`first_rejects` then fetches the reasons of the first few, only when there are any.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import ibis
import ibis.expr.types as ir

from msewatch.evaluate import DUCKDB_MACROS, latest_labels
from msewatch.io import ParseReject, scan
from msewatch.schema import ColumnMap, Kind, normalize
from msewatch.store import Store

__all__ = ["EvalInput", "first_rejects", "from_files", "from_joined", "from_store", "new_engine"]


@dataclass
class EvalInput:
    engine: Any
    predictions: ir.Table
    labels: ir.Table | None
    #: per source file: its validated table and the records that could not be parsed at all
    checked: dict[str, tuple[ir.Table, list[ParseReject]]] = field(default_factory=dict)


def new_engine() -> Any:
    """An in-memory DuckDB engine set to UTC."""
    engine = ibis.duckdb.connect()
    engine.raw_sql("SET TimeZone = 'UTC'")
    engine.raw_sql(DUCKDB_MACROS)
    return engine


def _checked(
    engine: Any, path: str | os.PathLike[str], kind: Kind, columns: ColumnMap, into: EvalInput
) -> ir.Table:
    raw, parse_rejects = scan(engine, path)
    table = normalize(raw, kind, columns, source=str(path))
    into.checked[str(path)] = (table, parse_rejects)
    return table


def first_rejects(source: EvalInput, name: str, limit: int = 3) -> list[str]:
    """'row N: reason' for the first rejected rows of one source file."""
    table, parse_rejects = source.checked[name]
    reasons = [f"row {p.row}: {p.error}" for p in parse_rejects[:limit]]
    bad = table.filter(~table._ok).select("_row", "_error").order_by("_row").limit(limit)
    reasons += [f"row {r['_row']}: {r['_error']}" for r in source.engine.to_pyarrow(bad).to_pylist()]
    return reasons[:limit]


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
    out.predictions = _checked(engine, predictions_path, "predictions", columns, out).drop("_error", "_row")
    labels = _checked(engine, labels_path, "labels", columns, out).drop("_error")
    out.labels = latest_labels(labels, dialect=engine.name)
    return out


def from_joined(
    path: str | os.PathLike[str], columns: ColumnMap = ColumnMap(), *, engine: Any = None
) -> EvalInput:
    """One file with y_pred and y_true on every row (a holdout set)."""
    engine = engine or new_engine()
    out = EvalInput(engine, None, None)  # type: ignore[arg-type]
    out.predictions = _checked(engine, path, "joined", columns, out).drop("_error", "_row")
    return out


def from_store(store: Store) -> EvalInput:
    """The store's predictions and the current revision of their labels."""
    preds = store.predictions().drop("source", "ingested_at")
    return EvalInput(store.engine, preds, store.current_labels())
