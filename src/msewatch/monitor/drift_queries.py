"""Drift's engine part as portable Ibis expressions, so DuckDB, Spark and ClickHouse agree.

One implementation for every engine: the same expression compiles to each engine's SQL, and
every figure that comes back is either an exact count, an exact order statistic or a sum of
non-negative terms, so the engines agree to far better than 1e-9 relative. Two queries per
comparison at most (numeric columns, categorical columns), each batching all its columns.

Input: a table with `_side` (0 reference, 1 current) and one column per compared column:
float64 for numeric columns, non-null text for categorical ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np

__all__ = ["DECILES", "category_counts", "finite", "numeric_measures"]

DECILES = tuple(k / 10 for k in range(1, 10))


def finite(x: ir.FloatingValue) -> ir.BooleanValue:
    """Not null, NaN or ±inf: x − x is 0 only for finite x (Ibis compiles `isinf` to FALSE on Spark)."""
    return (x - x) == 0


def _long(source: ir.Table, names: Sequence[str], value: str) -> ir.Table:
    """(_side, col, value) rows: one per row and column (an unnest, so the source is read once)."""
    return source.select("_side", *names).pivot_longer(list(names), names_to="col", values_to=value)


def numeric_measures(source: ir.Table, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per column with a finite value: counts, the reference's sd, KS D, Wasserstein-1, PSI bin counts.

    The finite values are grouped to (col, x, a, b) (a, b: count in each side); cumulative
    counts ca, cb by a window ordered by x give the empirical CDFs, so KS D = max|Fa − Fb| and
    W = Σ|Fa − Fb|·dx. The reference's deciles (NumPy's linear interpolation) take the values
    at sorted positions ⌊h⌋ and ⌊h⌋ + 1, h = (n − 1)·p: the x whose row has ca − a ≤ pos < ca.
    The counts per PSI bin are the cumulative counts at the largest x ≤ each decile.
    """
    if not names:
        return {}
    long = _long(source, names, "x")
    long = long.filter(finite(long.x))
    g = long.group_by("col", "x").aggregate(a=long.x.count(where=long._side == 0),
                                             b=long.x.count(where=long._side == 1))
    whole = ibis.window(group_by="col")
    upto = ibis.window(group_by="col", order_by="x", rows=(None, 0))
    c = g.mutate(ca=g.a.sum().over(upto), cb=g.b.sum().over(upto),
                 dx=g.x.lead().over(ibis.window(group_by="col", order_by="x")) - g.x,
                 tot_a=g.a.sum().over(whole), tot_b=g.b.sum().over(whole), sum_ax=(g.a * g.x).sum().over(whole))
    na, nb = c.tot_a.nullif(0), c.tot_b.nullif(0)
    d = (c.ca / na - c.cb / nb).abs()
    dev = c.x - c.sum_ax / na
    aggs: dict[str, Any] = {
        "na": c.a.sum(), "nb": c.b.sum(), "ss": (c.a * dev * dev).sum(), "ks": d.max(), "w": (d * c.dx).sum(),
    }
    for k, p in enumerate(DECILES):
        h = (c.tot_a - 1).cast("float64") * ibis.literal(p, "float64")  # IEEE, as NumPy: the same positions
        lo = h.floor().cast("int64")
        hi = ibis.least(lo + 1, c.tot_a - 1)
        aggs[f"frac{k}"] = (h - lo).max()
        aggs[f"low{k}"] = c.x.min(where=(c.ca - c.a <= lo) & (lo < c.ca))
        aggs[f"high{k}"] = c.x.min(where=(c.ca - c.a <= hi) & (hi < c.ca))
    # (names unlike the engine's own aliases: ClickHouse's aliases are visible in every scope)
    s = c.group_by("col").aggregate(**aggs)
    edges = [f"edge{k}" for k in range(len(DECILES))]
    s = s.mutate(**{e: _lerp(s[f"low{k}"], s[f"high{k}"], s[f"frac{k}"]) for k, e in enumerate(edges)})
    j = c.join(s.select("col", *edges), "col")
    below = j.group_by("col").aggregate(**{
        f"cum_{side}{k}": j[f"c{side}"].max(where=j.x <= j[e]) for k, e in enumerate(edges) for side in "ab"})
    result = s.join(below, "col")
    out: dict[str, dict[str, Any]] = {}
    for r in result.to_pyarrow().to_pylist():
        n_ref, n_cur = int(r["na"]), int(r["nb"])
        m: dict[str, Any] = {"n_ref": n_ref, "n_cur": n_cur,
                             "sd": float(np.sqrt(r["ss"] / n_ref)) if n_ref and r["ss"] is not None else None,
                             "ks": r["ks"] if n_ref and n_cur else None, "w": (r["w"] or 0.0) if n_ref and n_cur else None}
        if n_ref:
            cum: dict[float, tuple[int, int]] = {}
            for k in range(len(DECILES)):  # repeated deciles merge bins
                cum[float(r[f"edge{k}"])] = (int(r[f"cum_a{k}"] or 0), int(r[f"cum_b{k}"] or 0))
            m["edges"] = sorted(cum)
            steps = np.array([[0, 0], *(cum[e] for e in m["edges"]), [n_ref, n_cur]], dtype=np.float64)
            m["bins"] = np.diff(steps, axis=0)  # (bins, 2): reference and current counts
        out[r["col"]] = m
    return out


def _lerp(a: ir.FloatingValue, b: ir.FloatingValue, t: ir.FloatingValue) -> ir.FloatingValue:
    """NumPy's interpolation between neighbouring order statistics (exact at t = 0 and 1)."""
    diff = b - a
    return ibis.ifelse(t >= 0.5, b - diff * (1 - t), a + diff * t)


def category_counts(source: ir.Table, names: Sequence[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per column: its categories (sorted in Python, the same on every engine) and their counts per side."""
    if not names:
        return {}
    long = _long(source, names, "v")
    g = long.group_by("col", "v").aggregate(a=long.v.count(where=long._side == 0),
                                             b=long.v.count(where=long._side == 1))
    found: dict[str, list[tuple[str, int, int]]] = {}
    for r in g.to_pyarrow().to_pylist():
        found.setdefault(r["col"], []).append((r["v"], int(r["a"]), int(r["b"])))
    out = {}
    for col, rows in found.items():
        rows.sort()
        out[col] = ([v for v, _, _ in rows], np.array([(a, b) for _, a, b in rows], dtype=np.float64).reshape(-1, 2))
    return out
