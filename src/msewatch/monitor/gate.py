"""`msewatch gate`: is a candidate model's MSE at most X % above a baseline's on the same holdout?

A CI step that blocks a model release. The candidate C and the baseline B scored the same
holdout rows; rows are paired by `prediction_id` and the test is on the paired differences

    a_i = r_cand,i²,  b_i = r_base,i²,  d_i = a_i − b_i,   ΔMSE% = 100 · mean(d) / mean(b)

so the label noise both models share cancels out and far fewer rows are needed than for two
independent samples. The test is one-sided (non-inferiority): the gate passes when the upper
confidence bound of ΔMSE% is at most `max_increase`; how much better a candidate is never
matters.

Two estimates of the uncertainty are reported:

* the **delta method** on the ratio of means with the paired covariance (Diebold–Mariano
  style): with R = ā / b̄ and the influence values ψ_i = (a_i − R·b_i) / b̄, the standard
  error of ΔMSE% is 100 · √(LRV(ψ) / n), where LRV is the sample variance of ψ for iid holdout
  rows (lag 0) or the Newey–West long-run variance with Bartlett weights up to `hac_lag` for
  time-ordered rows. Its interval is clipped to the range of ΔMSE% that any reweighting of the
  rows can reach, [min d_i/b_i, max d_i/b_i], so a candidate that is no worse on any row
  always passes.
* the **paired bootstrap**: pairs are resampled with replacement (percentile interval). For
  more than 10,000 rows the rows are first summed into 10,000 equal blocks (a seeded random
  partition, so the blocks are exchangeable), and the blocks are resampled: the sums of a and b
  over blocks are all a ratio of means needs, so each replicate costs 10,000 additions however
  large n is. With `hac_lag` K > 0 (time-ordered rows), non-overlapping blocks of at least
  K + 1 consecutive rows are resampled instead (a block bootstrap), at most 10,000 of them.

The verdict uses the bootstrap bound when the bootstrap is on, else the delta-method one.
`ci` is the central interval at 2·confidence − 1: its high end is the one-sided upper bound
at `confidence`, its low end the matching one-sided lower bound.

Cohorts (`by`): each value of each column gets the same paired estimate and a one-sided
z-test (delta-method standard error) of H0: ΔMSE% ≤ max_increase; Benjamini–Hochberg across
all cohorts at `fdr`; a discovery fails the gate. A cohort is thus failed only when it is
shown to be worse than the margin: small cohorts cannot show non-inferiority, only the whole
holdout has to.

Inputs (`load_pairs`): the files are read and validated like `msewatch eval`'s (invalid
values are rejects, reported with their row numbers); only the id, y_pred, y_true, ts and
cohort columns are read. A prediction_id twice in one file is an error. y_true comes from a
labels file (the latest label_ts per id), else the candidate, else the baseline (both: they
must agree). Rows left out of the comparison (invalid, id in one file only, pair without a
label) are counted, with the first few ids, against `max_unpaired` (a share of all candidate
and baseline rows). Rows are kept in the candidate's time order (`ts`, else file order) for
the lagged estimates.

Against a stored baseline (`msewatch baseline set`), the comparison is unpaired: the
candidate's MSE with its standard error against the baseline's mse and mse_se, by the delta
method of `monitor.stats.delta_pct_bounds`.

In a query engine (`msewatch.engines.connect`: DuckDB, Spark, ClickHouse, BigQuery…), the
inputs are `EngineTable`s (a table, or files the engine reads itself) and every step up to the
paired arrays runs there; only the compared rows come back. A row is valid when its id is not
null or blank, y_pred (and y_true, when read) is a finite number and ts, when given, is a time;
the reasons are coarser than a file's and the examples name ids, not row numbers. A table has
no row order, so rows are numbered by (ts, prediction_id), or prediction_id without ts, and a
labels table by (label_ts, prediction_id, revision when it has one): the lagged estimates and
the bootstrap follow that order (give unique times for a reproducible one), and of two labels
of an id with the same label_ts the engine picks one unless a `revision` column orders them.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from msewatch.engines import epoch_time
from msewatch.errors import InputError
from msewatch.monitor.stats import benjamini_hochberg, delta_pct_bounds, regression_pvalue
from msewatch.schema import ColumnMap, normalize, verdict

__all__ = [
    "BOOTSTRAP_UNITS",
    "Check",
    "CohortResult",
    "EngineTable",
    "GateInput",
    "GateOptions",
    "GateReport",
    "bootstrap_delta_pct",
    "delta_method",
    "delta_mse_pct",
    "grouped_delta_method",
    "junit_xml",
    "load_candidate",
    "load_pairs",
    "long_run_variance",
    "parse_baseline_ref",
    "parse_percent",
    "percentile_interval",
    "reachable_range",
    "run_gate",
    "summary_markdown",
]

_NORMAL = NormalDist()
#: resampling units of the bootstrap: more rows than this are summed into this many blocks
BOOTSTRAP_UNITS = 10_000
_CHUNK_CELLS = 4_000_000  # replicate × unit cells drawn at once (≈ 16 MB of int32 indices)
_NULL_COHORT = "(null)"
_EXAMPLES = 3
_METHOD_NAMES = {"bootstrap": "paired bootstrap", "delta": "delta method"}


# -- option values --------------------------------------------------------------------------------
_PERCENT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*%?\s*$")


def parse_percent(text: str | float, option: str, *, low: float = 0.0, high: float = math.inf) -> float:
    """'5%' or '5' (both five percent) as 5.0; InputError naming the option otherwise."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _PERCENT.match(str(text))
        if not match:
            raise InputError(f"{option} must be a percentage such as 5% or 5; got {text!r}.")
        value = float(match.group(1))
    if not (math.isfinite(value) and low <= value <= high):
        span = f"between {low:g}% and {high:g}%" if math.isfinite(high) else f"at least {low:g}%"
        raise InputError(f"{option} must be {span}; got {text!r}.")
    return value


def parse_baseline_ref(text: str) -> tuple[str, str | None]:
    """'MODEL@VERSION' (or 'MODEL' for the model's most recent baseline) as (model, version)."""
    model, sep, version = text.rpartition("@")
    if not sep:
        model, version = text, ""
    model, version = model.strip(), version.strip()
    if not model or (sep and not version):
        raise InputError(f"--baseline-model must look like MODEL@VERSION (or MODEL); got {text!r}.")
    return model, version or None


# -- statistics -----------------------------------------------------------------------------------
def delta_mse_pct(a: np.ndarray, b: np.ndarray) -> float:
    """ΔMSE% = 100 · (mean(a) / mean(b) − 1) = 100 · mean(a − b) / mean(b)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(100.0 * (a - b).mean() / b.mean())


def long_run_variance(psi: np.ndarray, lag: int = 0) -> float:
    """Variance of a mean-zero series for the standard error of its mean: the sample variance
    (n − 1) at lag 0, else the Newey–West estimate with Bartlett weights 1 − k/(lag + 1)."""
    psi = np.asarray(psi, float)
    n = len(psi)
    if n < 2:
        return math.nan
    psi = psi - psi.mean()
    total = float(psi @ psi)
    for k in range(1, min(lag, n - 1) + 1):
        total += 2.0 * (1.0 - k / (lag + 1)) * float(psi[k:] @ psi[:-k])
    return max(total, 0.0) / (n - 1)


def delta_method(a: np.ndarray, b: np.ndarray, *, lag: int = 0) -> tuple[float, float]:
    """(ΔMSE%, its standard error in percentage points) by the delta method on ā / b̄."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    mean_b = b.mean()
    ratio = a.mean() / mean_b
    psi = (a - ratio * b) / mean_b
    return float(100.0 * (ratio - 1.0)), float(100.0 * math.sqrt(long_run_variance(psi, lag) / len(a)))


def reachable_range(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The range of ΔMSE% over every nonnegative reweighting of the rows (in percent)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    positive = b > 0
    hi = math.inf if bool(np.any(~positive & (a > 0))) else -math.inf
    lo = math.inf
    if positive.any():
        rel = (a[positive] - b[positive]) / b[positive]
        lo, hi = float(rel.min()) * 100.0, max(hi, float(rel.max()) * 100.0)
    return lo, hi


def _unit_sums(a: np.ndarray, b: np.ndarray, *, lag: int, rng: np.random.Generator,
               units: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Sums of a and b over resampling units: rows, random blocks, or contiguous blocks."""
    n = len(a)
    if lag > 0:
        length = max(lag + 1, -(-n // units))
        ids = np.arange(n) // length
        count = int(ids[-1]) + 1
    elif n <= units:
        return a, b, 1
    else:
        length = -(-n // units)
        ids = np.empty(n, dtype=np.int64)
        ids[rng.permutation(n)] = np.arange(n) * units // n  # equal sizes, random membership
        count = units
    return (np.bincount(ids, weights=a, minlength=count), np.bincount(ids, weights=b, minlength=count),
            length)


def bootstrap_delta_pct(a: np.ndarray, b: np.ndarray, *, replicates: int, seed: int = 0, lag: int = 0,
                        units: int = BOOTSTRAP_UNITS) -> tuple[np.ndarray, dict[str, Any]]:
    """Replicates of ΔMSE% under the paired (or block) bootstrap, and how it was run."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    sum_a, sum_b, length = _unit_sums(a, b, lag=lag, rng=rng, units=units)
    g = len(sum_a)
    out = np.empty(replicates)
    chunk = max(1, _CHUNK_CELLS // g)
    dtype = np.int32 if g < 2**31 else np.int64
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, replicates, chunk):
            k = min(chunk, replicates - start)
            idx = rng.integers(0, g, size=(k, g), dtype=dtype)
            sa, sb = sum_a[idx].sum(axis=1), sum_b[idx].sum(axis=1)
            rep = 100.0 * (sa / sb - 1.0)
            rep[sb <= 0] = np.where(sa[sb <= 0] > 0, math.inf, 0.0)
            out[start:start + k] = rep
    how = {"replicates": replicates, "seed": seed, "units": g, "rows_per_unit": length,
           "scheme": "pairs" if length == 1 else ("consecutive blocks" if lag > 0 else "random blocks")}
    return out, how


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central 2·confidence − 1 percentile interval: each end a one-sided bound."""
    lo, hi = np.quantile(replicates, [1.0 - confidence, confidence])
    return float(lo), float(hi)


@dataclass(frozen=True)
class GroupedDelta:
    n: np.ndarray
    mse_a: np.ndarray
    mse_b: np.ndarray
    delta_pct: np.ndarray  # nan where mean(b) is 0
    se_pct: np.ndarray  # nan where undefined (n < 2 or mean(b) is 0)


def grouped_delta_method(a: np.ndarray, b: np.ndarray, codes: np.ndarray, groups: int, *,
                         lag: int = 0) -> GroupedDelta:
    """`delta_method` for every group at once (vectorised at lag 0; rows kept in order)."""
    n = np.bincount(codes, minlength=groups).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_a = np.bincount(codes, weights=a, minlength=groups) / n
        mean_b = np.bincount(codes, weights=b, minlength=groups) / n
        ratio = mean_a / mean_b
        delta = 100.0 * (ratio - 1.0)
        if lag == 0:
            resid = a - ratio[codes] * b
            ss = np.bincount(codes, weights=resid * resid, minlength=groups)
            se = 100.0 * np.sqrt(ss / (n - 1) / n) / mean_b
        else:
            se = np.full(groups, math.nan)
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(groups + 1))
            for g in range(groups):
                rows = order[bounds[g]:bounds[g + 1]]
                if len(rows) >= 2 and mean_b[g] > 0:
                    se[g] = delta_method(a[rows], b[rows], lag=lag)[1]
    bad = ~(mean_b > 0)
    delta[bad] = math.nan
    se[bad | (n < 2)] = math.nan
    return GroupedDelta(n.astype(np.int64), mean_a, mean_b, delta, se)


def _stream_se(values: np.ndarray, lag: int) -> float:
    return math.sqrt(long_run_variance(values, lag) / len(values)) if len(values) > 1 else math.nan


# -- inputs ---------------------------------------------------------------------------------------
@dataclass
class GateInput:
    """Squared errors of the rows compared, with the bookkeeping of what was left out."""

    a: np.ndarray  # r_cand² of each compared row
    b: np.ndarray | None  # r_base² of the same rows (None: against a stored baseline)
    cohorts: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)  # col → (codes, values)
    rows: dict[str, int] = field(default_factory=dict)  # records read per role
    invalid: dict[str, int] = field(default_factory=dict)  # invalid records per role
    reject_reasons: dict[str, list[str]] = field(default_factory=dict)  # role → first reasons
    paths: dict[str, str] = field(default_factory=dict)
    found_columns: dict[str, list[str]] = field(default_factory=dict)  # role → the file's columns
    only_candidate: int = 0
    only_baseline: int = 0
    unlabeled: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.a)

    @property
    def compared_roles(self) -> tuple[str, ...]:
        return ("candidate",) if self.b is None else ("candidate", "baseline")

    @property
    def left_out(self) -> int:
        """Candidate and baseline records not in a compared pair (invalid, no partner, no label)."""
        return sum(self.rows[r] for r in self.compared_roles) - self.n * len(self.compared_roles)

    @property
    def left_out_fraction(self) -> float:
        total = sum(self.rows[r] for r in self.compared_roles)
        return self.left_out / total if total else 0.0

    def unpaired_dict(self) -> dict[str, Any]:
        return {
            "only_candidate": self.only_candidate, "only_baseline": self.only_baseline,
            "unlabeled": self.unlabeled, "invalid": dict(self.invalid), "rows": dict(self.rows),
            "left_out": self.left_out, "left_out_pct": 100.0 * self.left_out_fraction,
            "examples": {k: v for k, v in self.examples.items() if v},
        }

    def left_out_text(self) -> str:
        """'3 ids only in the candidate (first: 'a', 'b'), 2 invalid rows in the baseline' …"""
        parts = []
        for count, key, text in (
            (self.only_candidate, "only_candidate", "only in the candidate"),
            (self.only_baseline, "only_baseline", "only in the baseline"),
            (self.unlabeled, "unlabeled", "paired but without a label"),
        ):
            if count:
                first = ", ".join(repr(x) for x in self.examples.get(key, []))
                parts.append(f"{count} id{'s' * (count != 1)} {text}" + (f" (first: {first})" if first else ""))
        for role, count in self.invalid.items():
            if count:
                parts.append(f"{count} invalid row{'s' * (count != 1)} in the {role}")
        return ", ".join(parts)


@dataclass(frozen=True)
class EngineTable:
    """An input in a query engine (`msewatch.engines.connect`): a table, or files it reads.

    `name` (the table's name or the path) stands for it in messages; `kind` is "table" or
    "file". `EngineTable.of(engine, table="ml.holdout")` or `(…, path="cand/*.parquet")`."""

    table: ir.Table
    name: str
    kind: str = "table"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def of(cls, engine: Any, *, table: str | None = None, path: str | os.PathLike[str] | None = None,
           role: str = "input") -> EngineTable:
        from msewatch.engines import engine_table, read_file

        if table is not None:
            return cls(engine_table(engine, table, role), table, "table")
        if path is None:
            raise InputError(f"the {role}: give a table or a path.")
        return cls(read_file(engine, str(path)), str(path), "file")


Source = str | os.PathLike[str] | EngineTable


def _kind(source: Source) -> str:
    return source.kind if isinstance(source, EngineTable) else "file"


def _new_engine() -> Any:
    from msewatch.sources import new_engine

    return new_engine()


def _first_reasons(engine: Any, table: ir.Table, parse_rejects: list[Any], *, by_id: bool = False) -> list[str]:
    reasons = [f"row {p.row}: {p.error}" for p in parse_rejects[:_EXAMPLES]]
    bad = table.filter(~table._ok).select("_row", "_error", "prediction_id").order_by("_row").limit(_EXAMPLES)
    for r in engine.to_pyarrow(bad).to_pylist():
        where = f"id {r['prediction_id']!r}" if by_id else f"row {r['_row']}"
        reasons.append(f"{where}: {r['_error']}")
    return reasons[:_EXAMPLES]


def _wanted(role: str, names: dict[str, str], present: Sequence[str], source: Source, *, with_y_true: bool,
            by: Sequence[str]) -> tuple[list[str], bool]:
    """The source columns the gate reads (only those are validated: features may hold anything),
    and whether y_true is among them; InputError when a required one is missing."""
    needed = ("prediction_id", "y_true") if role == "labels" else ("prediction_id", "y_pred")
    missing = [names[c] for c in needed if names[c] not in present]
    if missing:
        what = " and ".join(repr(m) for m in missing)
        found = ", ".join(repr(c) for c in present) or "none"
        raise InputError(f"{source}: the {role} {_kind(source)} has no column {what}; found columns: {found} "
                         "(map yours with --id-col, --pred-col, --label-col).")
    if role == "labels":
        wanted: tuple[str, ...] = ("prediction_id", "y_true", "label_ts")
        has_y = True
    else:
        has_y = with_y_true and names["y_true"] in present
        wanted = ("prediction_id", "y_pred", "ts", *(("y_true",) if has_y else ()))
    keep = [names[c] for c in wanted if names[c] in present]
    return keep + [c for c in by if c in present and c not in keep], has_y


def _read(engine: Any, path: Source, role: str, columns: ColumnMap, *, with_y_true: bool,
          by: Sequence[str], into: GateInput) -> tuple[ir.Table, bool]:
    """A validated, materialised table of one input; whether it carries y_true."""
    if isinstance(path, EngineTable):
        return _read_engine(engine, path, role, columns, with_y_true=with_y_true, by=by, into=into)
    from msewatch.io import scan

    raw, parse_rejects = scan(engine, path)
    names = columns.source_names()
    present = [c for c in raw.columns if c != "_row"]
    into.found_columns[role] = present
    keep, has_y = _wanted(role, names, present, path, with_y_true=with_y_true, by=by)
    raw = raw.select(*keep, "_row")
    if role == "labels":
        table = normalize(raw, "labels", columns, source=str(path))
    else:
        if not has_y:  # validate the other columns as a holdout file, without a label
            raw = raw.mutate(**{names["y_true"]: ibis.literal(0.0)})
        table = normalize(raw, "joined", columns, source=str(path), segment_columns=frozenset(by))
        if not has_y:
            table = table.drop("y_true")
    table = engine.create_table(f"msewatch_gate_{role}", table, temp=True)
    counts = engine.to_pyarrow(table.aggregate(rows=table.count(), bad=table.count(where=~table._ok))).to_pylist()[0]
    into.rows[role] = int(counts["rows"]) + len(parse_rejects)
    into.invalid[role] = int(counts["bad"]) + len(parse_rejects)
    into.paths[role] = str(path)
    if into.invalid[role]:
        into.reject_reasons[role] = _first_reasons(engine, table, parse_rejects)
    return table, has_y


def _read_engine(engine: Any, source: EngineTable, role: str, columns: ColumnMap, *, with_y_true: bool,
                 by: Sequence[str], into: GateInput) -> tuple[ir.Table, bool]:
    """`_read` of a table in an engine, with portable checks: contract names, float64 values,
    UTC times, cohorts as text, `_ok`, a coarse `_error`, and `_row` numbering the rows by
    (ts, prediction_id) — labels by (label_ts, prediction_id, revision) — as a table has no order."""
    from msewatch.engines import UTC, finite

    raw = source.table
    names = columns.source_names()
    present = list(raw.columns)
    into.found_columns[role] = present
    keep, has_y = _wanted(role, names, present, source, with_y_true=with_y_true, by=by)
    contract = {v: k for k, v in names.items() if v in keep}
    pid = raw[names["prediction_id"]]
    pid = pid if pid.type().is_string() else pid.cast("string")
    out: dict[str, Any] = {"prediction_id": pid}
    checks: list[tuple[Any, str]] = [(pid.isnull() | (pid.strip().length() == 0), "prediction_id is empty")]
    for name in keep:
        key, value = contract.get(name, name), raw[name]
        if key in ("y_pred", "y_true"):
            number = value.cast("float64") if value.type().is_numeric() else value.try_cast("float64")
            out[key] = number
            checks.append((~finite(number), f"{key} is null or not finite"))
        elif key in ("ts", "label_ts"):
            typ = value.type()
            if typ.is_timestamp() or typ.is_date():
                stamp = value.cast(UTC)
            elif typ.is_numeric():  # epoch seconds
                stamp = epoch_time(value.cast("float64"), engine.name)
            else:  # ISO 8601 text, or epoch seconds as text
                stamp = ibis.coalesce(value.try_cast(UTC), epoch_time(value.try_cast("float64"), engine.name))
            out[key] = stamp
            checks.append((value.notnull() & stamp.isnull(), f"{key} is not a time"))
        elif key != "prediction_id":  # a cohort: its values as text
            out[key] = value if value.type().is_string() else value.cast("string")
    ok, error = verdict(checks, null_fails=True)
    order = ["label_ts" if role == "labels" else "ts", "prediction_id"]
    if role == "labels" and "revision" in present:
        out["_revision"] = raw["revision"]
        order.append("_revision")
    table = raw.select(**out, _ok=ok, _error=error)
    table = table.mutate(_row=ibis.row_number().over(order_by=[c for c in order if c in table.columns]) + 1)
    if "_revision" in table.columns:
        table = table.drop("_revision")
    table = _materialise(engine, table, role)
    counts = engine.to_pyarrow(table.aggregate(rows=table.count(), bad=table.count(where=~table._ok))).to_pylist()[0]
    into.rows[role] = int(counts["rows"])
    into.invalid[role] = int(counts["bad"] or 0)
    into.paths[role] = source.name
    if into.invalid[role]:
        into.reject_reasons[role] = _first_reasons(engine, table, [], by_id=True)
    return table, has_y


def _materialise(engine: Any, table: ir.Table, role: str) -> ir.Table:
    """The validated input computed once, as every later step reads it again: a temporary
    table on DuckDB, a cached DataFrame on Spark; elsewhere each query recomputes it. (Ibis's
    `cache` would do on DuckDB and ClickHouse, but its clean-up, a DROP TABLE, does not compile
    with the installed sqlglot.)"""
    if engine.name == "duckdb":
        name = f"msewatch_gate_{role}"
        engine.raw_sql(f'DROP TABLE IF EXISTS temp.main."{name}"')
        return engine.create_table(name, table, temp=True)
    if engine.name == "pyspark":
        return table.cache()
    return table


def _census(engine: Any, sides: Sequence[tuple[str, ir.Table, Source]], out: GateInput) -> None:
    """One pass over the valid ids of the inputs: duplicated ids are an error; ids in only one
    input are counted (with the first few, in file order) into `out`."""
    parts = [t.filter(t._ok).select(id=t.prediction_id, row=t._row, side=ibis.literal(i, "int8"))
             for i, (_, t, _) in enumerate(sides)]
    union = parts[0] if len(parts) == 1 else parts[0].union(parts[1])
    per_id = union.group_by("id").aggregate(
        **{f"n{i}": union.count(where=union.side == i) for i in range(len(sides))},
        **{f"r{i}": union.row.min(where=union.side == i) for i in range(len(sides))},
    )
    only = {}
    if len(sides) == 2:
        only = {"only_candidate": (per_id.n1 == 0, "r0"), "only_baseline": (per_id.n0 == 0, "r1")}
    counts = engine.to_pyarrow(per_id.aggregate(
        **{f"dup{i}": per_id.count(where=per_id[f"n{i}"] > 1) for i in range(len(sides))},
        **{key: per_id.count(where=cond) for key, (cond, _) in only.items()},
    )).to_pylist()[0]
    for i, (role, _, path) in enumerate(sides):
        total = int(counts[f"dup{i}"] or 0)
        if total:
            found = engine.to_pyarrow(per_id.filter(per_id[f"n{i}"] > 1).order_by(f"r{i}")
                                      .select("id", k=per_id[f"n{i}"]).limit(_EXAMPLES)).to_pylist()
            first = ", ".join(f"{r['id']!r} ({r['k']}×)" for r in found)
            raise InputError(f"{path}: {total} prediction_id{'s' * (total != 1)} appear more than once in the "
                             f"{role} {_kind(path)} (first: {first}); each holdout row must be scored once.")
    for key, (cond, row) in only.items():
        setattr(out, key, int(counts[key] or 0))
        if counts[key]:
            out.examples[key] = _examples(engine, per_id.filter(cond), "id", row)


def _labels(engine: Any, path: Source, columns: ColumnMap, into: GateInput) -> ir.Table:
    from msewatch.evaluate import latest_labels

    table, _ = _read(engine, path, "labels", columns, with_y_true=True, by=(), into=into)
    latest = latest_labels(table.filter(table._ok).drop("_ok", "_error"), dialect=engine.name)
    return latest.select("prediction_id", "y_true")


def _cohort_column(by: str, tables: Sequence[tuple[str, ir.Table]], into: GateInput) -> tuple[str, str]:
    for role, table in tables:
        if by in table.columns and not by.startswith("_"):
            return role, by
    found = sorted({c for role, _ in tables for c in into.found_columns.get(role, [])})
    where = " or ".join(role for role, _ in tables)
    raise InputError(f"--by column {by!r} is not in the {where} file; found columns: "
                     f"{', '.join(repr(c) for c in found)}.")


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    text = pc.fill_null(column.cast(pa.string()), _NULL_COHORT).combine_chunks()
    encoded = text.dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def _examples(engine: Any, expr: ir.Table, column: str, order: str) -> list[str]:
    return [str(r[column]) for r in engine.to_pyarrow(expr.order_by(order).select(column).limit(_EXAMPLES)).to_pylist()]


def _engine_of(inputs: Sequence[Source | None], engine: Any) -> Any:
    """The engine given, else the one of the `EngineTable` inputs, else a new DuckDB for files."""
    if engine is not None:
        return engine
    tables = [x for x in inputs if isinstance(x, EngineTable)]
    return ibis.get_backend(tables[0].table) if tables else _new_engine()


def load_pairs(candidate: Source, baseline: Source, labels: Source | None = None, columns: ColumnMap | None = None,
               *, by: Sequence[str] = (), engine: Any = None) -> GateInput:
    """Read, validate and pair the candidate and baseline files (and labels) by prediction_id.

    y_true comes from the labels file when given (the latest label_ts per id counts), else from
    the candidate, else the baseline; when both carry it they must agree. Rows are returned in
    the candidate's time order (its `ts` when it has one, else its row order; in an engine,
    `EngineTable` inputs, ts then prediction_id).
    """
    engine = _engine_of([candidate, baseline, labels], engine)
    columns = columns or ColumnMap()
    out = GateInput(np.empty(0), np.empty(0))
    tc, c_has_y = _read(engine, candidate, "candidate", columns, with_y_true=labels is None, by=by, into=out)
    tb, b_has_y = _read(engine, baseline, "baseline", columns, with_y_true=labels is None, by=by, into=out)
    if labels is None and not (c_has_y or b_has_y):
        raise InputError(f"no labels: neither {candidate} nor {baseline} has a {columns.y_true!r} column; "
                         "add it or give --labels FILE (or map yours with --label-col).")
    cohort_src = {col: _cohort_column(col, [("candidate", tc), ("baseline", tb)], out) for col in by}

    cgood, bgood = tc.filter(tc._ok), tb.filter(tb._ok)
    c = cgood.select(cid=cgood.prediction_id, c_row=cgood._row, c_pred=cgood.y_pred,
                     **({"c_true": cgood.y_true} if c_has_y else {}),
                     **({"c_ts": cgood.ts} if "ts" in cgood.columns else {}),
                     **{f"k_{i}": cgood[col] for i, col in enumerate(by) if cohort_src[col][0] == "candidate"})
    b = bgood.select(bid=bgood.prediction_id, b_row=bgood._row, b_pred=bgood.y_pred,
                     **({"b_true": bgood.y_true} if b_has_y else {}),
                     **{f"k_{i}": bgood[col] for i, col in enumerate(by) if cohort_src[col][0] == "baseline"})
    _census(engine, [("candidate", tc, candidate), ("baseline", tb, baseline)], out)
    pairs = c.join(b, c.cid == b.bid)
    if labels is not None:
        lab = _labels(engine, labels, columns, out)
        with_label = pairs.left_join(lab, pairs.cid == lab.prediction_id)
        out.unlabeled = int(engine.execute(with_label.filter(with_label.prediction_id.isnull()).count()))
        if out.unlabeled:
            out.examples["unlabeled"] = _examples(
                engine, with_label.filter(with_label.prediction_id.isnull()), "cid", "c_row")
        pairs = pairs.join(lab, pairs.cid == lab.prediction_id)
        truth = pairs.y_true
    else:
        truth = pairs.c_true if c_has_y else pairs.b_true
    keys = [f"k_{i}" for i in range(len(by))]
    order = (["c_ts"] if "c_ts" in pairs.columns else []) + ["c_row"]
    select = {"id": pairs.cid, "pc": pairs.c_pred, "pb": pairs.b_pred, "y": truth,
              **{k: pairs[k] for k in keys}}
    if labels is None and c_has_y and b_has_y:
        select["yb"] = pairs.b_true
    fetched = engine.to_pyarrow(pairs.order_by(order).select(**select))
    y = fetched["y"].to_numpy()
    if "yb" in fetched.column_names:
        yb = fetched["yb"].to_numpy()
        differ = np.abs(y - yb) > 1e-9 * np.maximum(1.0, np.abs(y))
        if differ.any():
            ids = fetched["id"].filter(pa.array(differ)).to_pylist()[:_EXAMPLES]
            raise InputError(
                f"the candidate and baseline files disagree on y_true for {int(differ.sum())} paired "
                f"id{'s' * (int(differ.sum()) != 1)} (first: {', '.join(repr(i) for i in ids)}); "
                "they must score the same holdout, or give the labels with --labels FILE.")
    out.a = (fetched["pc"].to_numpy() - y) ** 2
    out.b = (fetched["pb"].to_numpy() - y) ** 2
    out.cohorts = {col: _encode(fetched[k]) for col, k in zip(by, keys)}
    return out


def load_candidate(candidate: Source, labels: Source | None = None, columns: ColumnMap | None = None, *,
                   by: Sequence[str] = (), engine: Any = None) -> GateInput:
    """The candidate's squared errors alone (against a stored baseline)."""
    engine = _engine_of([candidate, labels], engine)
    columns = columns or ColumnMap()
    out = GateInput(np.empty(0), None)
    tc, c_has_y = _read(engine, candidate, "candidate", columns, with_y_true=labels is None, by=by, into=out)
    if labels is None and not c_has_y:
        raise InputError(f"no labels: {candidate} has no {columns.y_true!r} column; add it or give "
                         "--labels FILE (or map yours with --label-col).")
    for col in by:
        _cohort_column(col, [("candidate", tc)], out)
    _census(engine, [("candidate", tc, candidate)], out)
    good = tc.filter(tc._ok)
    c = good.select(cid=good.prediction_id, c_row=good._row, c_pred=good.y_pred,
                    **({"c_true": good.y_true} if c_has_y else {}),
                    **({"c_ts": good.ts} if "ts" in good.columns else {}),
                    **{f"k_{i}": good[col] for i, col in enumerate(by)})
    if labels is not None:
        lab = _labels(engine, labels, columns, out)
        with_label = c.left_join(lab, c.cid == lab.prediction_id)
        missing = with_label.filter(with_label.prediction_id.isnull())
        out.unlabeled = int(engine.execute(missing.count()))
        if out.unlabeled:
            out.examples["unlabeled"] = _examples(engine, missing, "cid", "c_row")
        c = c.join(lab, c.cid == lab.prediction_id)
        truth = c.y_true
    else:
        truth = c.c_true
    keys = [f"k_{i}" for i in range(len(by))]
    order = (["c_ts"] if "c_ts" in c.columns else []) + ["c_row"]
    fetched = engine.to_pyarrow(c.order_by(order).select(pc=c.c_pred, y=truth, **{k: c[k] for k in keys}))
    out.a = (fetched["pc"].to_numpy() - fetched["y"].to_numpy()) ** 2
    out.cohorts = {col: _encode(fetched[k]) for col, k in zip(by, keys)}
    return out


# -- the gate -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateOptions:
    max_increase: float  # percent
    confidence: float = 0.95
    bootstrap: int = 2000  # replicates; 0: delta method only
    seed: int = 0
    hac_lag: int = 0
    max_mse: float | None = None
    max_rmse: float | None = None
    fdr: float = 0.05
    min_n: int = 30
    max_unpaired: float = 0.0  # percent of candidate and baseline rows left out

    def validate(self) -> None:
        if not 0.5 < self.confidence < 1:
            raise InputError(f"--confidence must be between 0.5 and 1 (exclusive); got {self.confidence:g}.")
        if self.bootstrap and self.bootstrap < 100:
            raise InputError(f"--bootstrap must be 0 (off) or at least 100 replicates; got {self.bootstrap}.")
        if self.bootstrap < 0:
            raise InputError(f"--bootstrap must be 0 (off) or at least 100 replicates; got {self.bootstrap}.")
        if self.hac_lag < 0:
            raise InputError(f"--hac-lag must be 0 or more; got {self.hac_lag}.")
        if not 0 < self.fdr <= 0.5:
            raise InputError(f"--fdr must be above 0 and at most 0.5; got {self.fdr:g}.")
        if self.min_n < 2:
            raise InputError(f"--min-n must be at least 2; got {self.min_n}.")
        for name, value in (("--max-mse", self.max_mse), ("--max-rmse", self.max_rmse)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number ≥ 0; got {value:g}.")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | fail | skipped
    value: float | None
    limit: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "value": _finite(self.value),
                "limit": _finite(self.limit), "reason": self.reason}


@dataclass(frozen=True)
class CohortResult:
    cohort: str  # column=value
    n: int
    mse_candidate: float
    mse_baseline: float | None
    delta_mse_pct: float | None
    se_pct: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    discovery: bool
    status: str  # pass | fail | skipped
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"cohort": self.cohort, "n": self.n, "mse_candidate": _finite(self.mse_candidate),
                "mse_baseline": _finite(self.mse_baseline), "delta_mse_pct": _finite(self.delta_mse_pct),
                "se_pct": _finite(self.se_pct), "ci": None if self.ci is None else [_finite(v) for v in self.ci],
                "p_value": _finite(self.p_value), "discovery": self.discovery, "status": self.status,
                "reason": self.reason}


@dataclass
class GateReport:
    verdict: str
    delta_mse_pct: float
    ci: tuple[float, float]
    n: int
    mse_candidate: float
    mse_baseline: float
    method: str  # bootstrap | delta
    options: GateOptions
    baseline: dict[str, Any]
    delta: dict[str, Any]
    bootstrap: dict[str, Any] | None
    checks: list[Check]
    cohorts: list[CohortResult]
    unpaired: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def reasons(self) -> list[str]:
        failed = [c.reason for c in self.checks if c.status == "fail"]
        return failed or [c.reason for c in self.checks if c.status == "pass"]

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        return {
            "verdict": self.verdict,
            "delta_mse_pct": _finite(self.delta_mse_pct),
            "ci": [_finite(v) for v in self.ci],
            "n": self.n,
            "mse_candidate": self.mse_candidate,
            "mse_baseline": self.mse_baseline,
            "rmse_candidate": math.sqrt(self.mse_candidate),
            "rmse_baseline": math.sqrt(self.mse_baseline),
            "method": self.method,
            "confidence": o.confidence,
            "max_increase_pct": o.max_increase,
            "max_mse": o.max_mse,
            "max_rmse": o.max_rmse,
            "reasons": self.reasons,
            "checks": [c.to_dict() for c in self.checks],
            "cohorts": [c.to_dict() for c in self.cohorts],
            "fdr": o.fdr,
            "delta_method": self.delta,
            "bootstrap": self.bootstrap,
            "baseline": self.baseline,
            "unpaired": self.unpaired,
            "warnings": self.warnings,
        }


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _pct(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "+∞%" if v > 0 else "−∞%"
    return f"{v:+.2f}%"


def _check_input(data: GateInput, options: GateOptions) -> None:
    if data.n == 0:
        raise InputError(f"no rows to compare: {data.left_out_text() or 'the inputs are empty'}.")
    if data.left_out and 100.0 * data.left_out_fraction > options.max_unpaired:
        what = "candidate and baseline rows" if data.b is not None else "candidate rows"
        raise InputError(
            f"{data.left_out} of {sum(data.rows[r] for r in data.compared_roles)} {what} are left out of the "
            f"comparison ({100.0 * data.left_out_fraction:.3g}% > --max-unpaired {options.max_unpaired:g}%): "
            f"{data.left_out_text()}; both files must score the same holdout ids, or allow some with "
            "--max-unpaired PCT.")
    if data.n < options.min_n:
        raise InputError(f"only {data.n} row{'s' * (data.n != 1)} to compare; the gate needs at least "
                         f"--min-n {options.min_n}.")


def _ceilings(mse: float, options: GateOptions) -> list[Check]:
    out = []
    if options.max_mse is not None:
        ok = mse <= options.max_mse
        out.append(Check("max_mse", "pass" if ok else "fail", mse, options.max_mse,
                         f"candidate MSE {mse:.6g} is {'within' if ok else 'above'} --max-mse {options.max_mse:g}"))
    if options.max_rmse is not None:
        rmse = math.sqrt(mse)
        ok = rmse <= options.max_rmse
        out.append(Check("max_rmse", "pass" if ok else "fail", rmse, options.max_rmse,
                         f"candidate RMSE {rmse:.6g} is {'within' if ok else 'above'} --max-rmse {options.max_rmse:g}"))
    return out


def _main_check(delta: float, hi: float, options: GateOptions, method: str) -> Check:
    level = f"{options.confidence:.0%}".replace(".0%", "%")
    if hi <= options.max_increase:
        return Check("delta_mse", "pass", hi, options.max_increase,
                     f"ΔMSE {_pct(delta)}: its {level} upper bound ({method}) {_pct(hi)} is within "
                     f"--max-increase {options.max_increase:g}%")
    return Check("delta_mse", "fail", hi, options.max_increase,
                 f"ΔMSE {_pct(delta)}: its {level} upper bound ({method}) {_pct(hi)} is above "
                 f"--max-increase {options.max_increase:g}%")


def _cohort_checks(results: list[dict[str, Any]], options: GateOptions) -> tuple[list[CohortResult], list[Check]]:
    """Benjamini–Hochberg over the tested cohorts; a discovery fails."""
    tested = [r for r in results if r["p_value"] is not None]
    found = benjamini_hochberg([r["p_value"] for r in tested], options.fdr)
    flags = {id(r): bool(f) for r, f in zip(tested, found)}
    cohorts, checks = [], []
    for r in results:
        if r["p_value"] is None:
            status, discovery = "skipped", False
            reason = f"cohort {r['cohort']}: not tested ({r['why']})"
        else:
            discovery = flags[id(r)]
            status = "fail" if discovery else "pass"
            verb = "significantly above" if discovery else "not shown above"
            reason = (f"cohort {r['cohort']}: ΔMSE {_pct(r['delta'])} is {verb} --max-increase "
                      f"{options.max_increase:g}% (p = {r['p_value']:.3g}, Benjamini–Hochberg at FDR {options.fdr:g})")
        cohorts.append(CohortResult(r["cohort"], r["n"], r["mse_a"], r["mse_b"], r["delta"], r["se"], r["ci"],
                                    r["p_value"], discovery, status, reason))
        checks.append(Check(f"cohort {r['cohort']}", status, _finite(r["delta"]), options.max_increase, reason))
    return cohorts, checks


def _z(options: GateOptions) -> float:
    return _NORMAL.inv_cdf(options.confidence)


def _paired_cohorts(data: GateInput, options: GateOptions) -> list[dict[str, Any]]:
    assert data.b is not None
    z = _z(options)
    out = []
    for col, (codes, values) in data.cohorts.items():
        g = grouped_delta_method(data.a, data.b, codes, len(values), lag=options.hac_lag)
        for i, value in enumerate(values):
            n, d, se = int(g.n[i]), float(g.delta_pct[i]), float(g.se_pct[i])
            r: dict[str, Any] = {"cohort": f"{col}={value}", "n": n, "mse_a": float(g.mse_a[i]),
                                 "mse_b": float(g.mse_b[i]), "delta": None if math.isnan(d) else d,
                                 "se": None if math.isnan(se) else se, "ci": None, "p_value": None, "why": ""}
            if n < options.min_n:
                r["why"] = f"{n} rows < --min-n {options.min_n}"
            elif math.isnan(d):
                r["why"] = "the baseline's MSE is 0 in this cohort"
            else:
                se = 0.0 if math.isnan(se) else se
                r["ci"] = (d - z * se, d + z * se)
                if se > 0:
                    r["p_value"] = 1.0 - _NORMAL.cdf((d - options.max_increase) / se)
                else:
                    r["p_value"] = 0.0 if d > options.max_increase else 1.0
            out.append(r)
    return out


def _paired_gate(data: GateInput, options: GateOptions, baseline: dict[str, Any]) -> GateReport:
    a, b = data.a, data.b
    assert b is not None
    mse_a, mse_b = float(a.mean()), float(b.mean())
    if not mse_b > 0:
        raise InputError("the baseline's MSE is 0 on these rows, so ΔMSE% is undefined; "
                         "gate on --max-mse or --max-rmse instead.")
    delta, se = delta_method(a, b, lag=options.hac_lag)
    z = _z(options)
    lo_reach, hi_reach = reachable_range(a, b)
    d_ci = (min(max(delta - z * se, lo_reach), delta), max(min(delta + z * se, hi_reach), delta))
    delta_info = {"se_pct": se, "ci": [_finite(v) for v in d_ci], "hac_lag": options.hac_lag}
    boot = None
    method, ci = "delta", d_ci
    if options.bootstrap:
        reps, how = bootstrap_delta_pct(a, b, replicates=options.bootstrap, seed=options.seed, lag=options.hac_lag)
        b_ci = percentile_interval(reps, options.confidence)
        boot = {**how, "ci": [_finite(v) for v in b_ci], "se_pct": _finite(float(np.std(reps, ddof=1)))}
        method, ci = "bootstrap", b_ci
    checks = [_main_check(delta, ci[1], options, _METHOD_NAMES[method]), *_ceilings(mse_a, options)]
    cohorts, cohort_checks = _cohort_checks(_paired_cohorts(data, options), options)
    checks += cohort_checks
    verdict = "fail" if any(c.status == "fail" for c in checks) else "pass"
    return GateReport(verdict, delta, ci, data.n, mse_a, mse_b, method, options, baseline, delta_info, boot,
                      checks, cohorts, data.unpaired_dict())


def _stored_gate(data: GateInput, options: GateOptions, stored: Any) -> GateReport:
    a = data.a
    mse_a = float(a.mean())
    se_a = _stream_se(a, options.hac_lag)
    mse_b, se_b = stored.mse, stored.mse_se
    if mse_b is None or not mse_b > 0:
        raise InputError(f"the stored baseline of {stored.model} has no positive MSE; ΔMSE% is undefined.")
    bound = delta_pct_bounds(mse_a, se_a, mse_b, se_b, options.confidence)
    assert bound is not None
    rel_a = se_a / mse_a if mse_a > 0 and math.isfinite(se_a) else 0.0
    se_pct = 100.0 * mse_a / mse_b * math.hypot(rel_a, (se_b or 0.0) / mse_b)
    ci = (bound.low, bound.high)
    checks = [_main_check(bound.delta_pct, bound.high, options, "delta method"), *_ceilings(mse_a, options)]
    results = []
    z = _z(options)
    for col, (codes, values) in data.cohorts.items():
        n = np.bincount(codes, minlength=len(values))
        for i, value in enumerate(values):
            key = f"{col}={value}"
            rows = a[codes == i]
            r: dict[str, Any] = {"cohort": key, "n": int(n[i]), "mse_a": float(rows.mean()), "mse_b": None,
                                 "delta": None, "se": None, "ci": None, "p_value": None, "why": ""}
            base = stored.cohorts.get(key)
            if base is None or not (base.mse or 0) > 0:
                r["why"] = "no stored baseline for this cohort"
            elif n[i] < options.min_n:
                r["mse_b"] = base.mse
                r["why"] = f"{int(n[i])} rows < --min-n {options.min_n}"
            else:
                se_c = _stream_se(rows, options.hac_lag)
                cb = delta_pct_bounds(r["mse_a"], se_c, base.mse, base.mse_se, options.confidence)
                assert cb is not None
                r.update(mse_b=base.mse, delta=cb.delta_pct, ci=(cb.low, cb.high),
                         se=(cb.high - cb.delta_pct) / z,
                         p_value=regression_pvalue(r["mse_a"], se_c, base.mse, base.mse_se, options.max_increase))
            results.append(r)
    cohorts, cohort_checks = _cohort_checks(results, options)
    checks += cohort_checks
    verdict = "fail" if any(c.status == "fail" for c in checks) else "pass"
    baseline = {"kind": "stored", "model": stored.model, "version": stored.version or None, "n": stored.n,
                "mse": mse_b, "mse_se": se_b, "source": stored.source}
    delta_info = {"se_pct": se_pct, "ci": [_finite(v) for v in ci], "hac_lag": options.hac_lag,
                  "candidate_mse_se": _finite(se_a)}
    return GateReport(verdict, bound.delta_pct, ci, data.n, mse_a, mse_b, "delta",
                      options, baseline, delta_info, None, checks, cohorts, data.unpaired_dict())


def run_gate(data: GateInput, options: GateOptions, *, stored: Any = None,
             baseline: dict[str, Any] | None = None) -> GateReport:
    """The verdict on loaded inputs: paired (files) or against a stored `Baseline`."""
    options.validate()
    _check_input(data, options)
    if data.b is None:
        if stored is None:
            raise InputError("no baseline: give a baseline file or a stored baseline.")
        report = _stored_gate(data, options, stored)
    else:
        report = _paired_gate(data, options, baseline or {"kind": "file"})
    if data.left_out:
        report.warnings.append(f"left out {data.left_out} rows ({data.left_out_text()}), within --max-unpaired "
                               f"{options.max_unpaired:g}%")
    return report


# -- reports for CI -------------------------------------------------------------------------------
def _baseline_name(report: GateReport) -> str:
    b = report.baseline
    if b.get("kind") == "stored":
        return f"stored baseline {b['model']}" + (f"@{b['version']}" if b.get("version") else "")
    return str(b.get("path") or b.get("table") or "baseline")


def summary_markdown(report: GateReport, *, title: str = "msewatch gate") -> str:
    """GitHub-flavoured markdown for a CI step summary: a verdict line and two small tables."""
    mark = "✅ pass" if report.passed else "❌ fail"
    o = report.options
    lines = [
        f"### {title}: {mark}",
        "",
        (f"ΔMSE **{_pct(report.delta_mse_pct)}** (CI {_pct(report.ci[0])} … {_pct(report.ci[1])}, "
         f"{o.confidence:.0%} one-sided upper bound by {_METHOD_NAMES[report.method]}) on {report.n:,} rows, candidate vs "
         f"{_baseline_name(report)}; limit +{o.max_increase:g}%."),
        "",
        "| | candidate | baseline |",
        "|---|---:|---:|",
        f"| MSE | {report.mse_candidate:.6g} | {report.mse_baseline:.6g} |",
        f"| RMSE | {math.sqrt(report.mse_candidate):.6g} | {math.sqrt(report.mse_baseline):.6g} |",
        "",
        "| check | value | limit | result |",
        "|---|---:|---:|---|",
    ]
    for c in report.checks:
        pct = c.name == "delta_mse" or c.name.startswith("cohort ")
        value = _pct(c.value) if pct else ("n/a" if c.value is None else f"{c.value:.6g}")
        limit = f"≤ {c.limit:+g}%" if pct else f"≤ {c.limit:g}"
        icon = {"pass": "✅ pass", "fail": "❌ fail"}.get(c.status, "⏭ skipped")
        lines.append(f"| {_md(c.name)} | {value} | {limit} | {icon} |")
    if not report.passed:
        lines += ["", "**Why it failed:**", *[f"- {_md(r)}" for r in report.reasons]]
    for w in report.warnings:
        lines += ["", f"> ⚠️ {_md(w)}"]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def junit_xml(report: GateReport) -> str:
    """JUnit XML: one testcase per check (overall ΔMSE, each ceiling, each cohort)."""
    failures = sum(c.status == "fail" for c in report.checks)
    skipped = sum(c.status == "skipped" for c in report.checks)
    suites = ET.Element("testsuites", name="msewatch gate", tests=str(len(report.checks)),
                        failures=str(failures), errors="0", skipped=str(skipped))
    suite = ET.SubElement(suites, "testsuite", name="msewatch gate", tests=str(len(report.checks)),
                          failures=str(failures), errors="0", skipped=str(skipped))
    props = ET.SubElement(suite, "properties")
    for key, value in (("verdict", report.verdict), ("delta_mse_pct", _finite(report.delta_mse_pct)),
                       ("ci_low", _finite(report.ci[0])), ("ci_high", _finite(report.ci[1])),
                       ("n", report.n), ("method", report.method)):
        ET.SubElement(props, "property", name=key, value="" if value is None else str(value))
    for c in report.checks:
        case = ET.SubElement(suite, "testcase", classname="msewatch.gate", name=c.name, time="0")
        if c.status == "fail":
            failure = ET.SubElement(case, "failure", message=c.reason, type=c.name.split(" ")[0])
            failure.text = c.reason
        elif c.status == "skipped":
            ET.SubElement(case, "skipped", message=c.reason)
        else:
            ET.SubElement(case, "system-out").text = c.reason
    ET.SubElement(suite, "system-out").text = f"verdict: {report.verdict}\n" + "\n".join(report.reasons)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
