"""Rendering evaluation rows as a terminal table, JSON or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

__all__ = ["format_value", "render"]

def format_value(value: Any) -> str:
    """Six significant digits for floats, '—' for null."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, *, title: str = "") -> str:
    """Rows as `table`, `json` (one object: {"rows": [...]}) or `csv` text."""
    if fmt == "json":
        return orjson.dumps({"rows": [{c: r.get(c) for c in columns} for r in rows]}).decode()
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            # the csv module writes floats with repr(): the shortest text that reads back exactly
            writer.writerow([row.get(c) for c in columns])
        return buffer.getvalue().rstrip("\n")
    shown = [c for c in columns if c not in _HIDDEN_IN_TABLE]
    table = Table(title=title or None, show_lines=False, header_style="bold")
    for name in shown:
        numeric = name not in ("window_start", "window_end") and not any(
            isinstance(r.get(name), str) for r in rows[:50]
        )
        table.add_column(_short(name), justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(*[_cell(name, row.get(name)) for name in shown])
    console = Console(width=200, record=True, file=io.StringIO(), force_terminal=False)
    console.print(table)
    if not rows:
        console.print("no rows: nothing matched the filters")
    return console.export_text().rstrip("\n")


_HIDDEN_IN_TABLE = {
    "window_end",
    "error_variance",
    "mape",
    "huber",
    "p50_sq_err",
    "p99_sq_err",
    "label_latency_p50_s",
    "label_latency_p90_s",
}


def _short(name: str) -> str:
    return {
        "n_predictions": "n_pred",
        "n_labeled": "n_lab",
        "label_coverage": "coverage",
        "window_start": "window (UTC)",
    }.get(name, name)


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "—"
    if name == "label_coverage":
        return f"{value:.1%}"
    if name == "window_start" and isinstance(value, str):
        return value.replace("T", " ").replace(":00Z", "").rstrip("Z")
    return format_value(value)
