"""Cohort attribution: why the MSE changed between two periods or two versions.

The MSE of a side (a period, a version, a file) is the labeled-share-weighted mean of its
cohorts' MSEs::

    MSE_A = Σ_c w_c^A m_c^A        w_c = n_c / N  (share of the labeled predictions in cohort c)
    MSE_B = Σ_c w_c^B m_c^B        m_c = the MSE of cohort c

so a change of MSE has two sources: traffic moved between cohorts (mix), and the error changed
within cohorts (error). The symmetric (Shapley, or midpoint) split of each cohort's term is::

    mix_c   = (w_c^B − w_c^A) · (m_c^A + m_c^B) / 2
    error_c = (m_c^B − m_c^A) · (w_c^A + w_c^B) / 2

It does not depend on which factor is changed first (it is the mean of the two orders), and
the parts add up exactly. Proof: expand the two products::

    2·(mix_c + error_c) = w^B m^A + w^B m^B − w^A m^A − w^A m^B
                        + w^A m^B + w^B m^B − w^A m^A − w^B m^A
                        = 2·(w^B m^B − w^A m^A)

so mix_c + error_c = w_c^B m_c^B − w_c^A m_c^A for every cohort, and summing over the cohorts
Σ_c mix_c + Σ_c error_c = MSE_B − MSE_A. Each cohort's contribution mix_c + error_c is its own
term of the change, so cohorts are ranked by its magnitude.

**Cohorts in one side only.** A cohort with no labeled predictions on one side has no MSE
there. `CONVENTION`: its missing MSE is taken to be its MSE on the other side, so it contributes
pure mix (error_c = 0): a cohort that appears adds w^B·m^B, one that disappears removes
w^A·m^A. The identity stays exact whatever value is chosen, because the missing MSE is
multiplied by a share of 0 in w^B m^B − w^A m^A; this one is chosen because a cohort seen on one
side only gives no evidence of its error changing.

**Floating point.** The parts are floats: each is rounded, and the per-cohort parts are summed
with `math.fsum` (correctly rounded), so Σ parts agrees with MSE_B − MSE_A to a few units in
the last place of the largest part (about 1e-15 relative; `check_identity` verifies 1e-9).

The engine computes every cohort's n and MSE in one grouped evaluation per side
(`evaluate`); only the cohort table reaches Python.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from msewatch.errors import InputError

__all__ = [
    "CONVENTION",
    "Attribution",
    "CohortAttribution",
    "attribute",
    "check_identity",
    "cohort_table",
    "decompose",
]

CONVENTION = (
    "shares are of labeled predictions; mix_c = (share_b - share_a) * (mse_a + mse_b) / 2 and "
    "error_c = (mse_b - mse_a) * (share_a + share_b) / 2 (symmetric, Shapley), so "
    "mix_c + error_c = share_b * mse_b - share_a * mse_a and the parts add up to mse_b - mse_a; "
    "a cohort with no labeled predictions on one side takes its MSE from the other side, so it "
    "contributes pure mix (error 0)"
)

#: the fields of a cohort in `Attribution.to_dict`; a --by column may not take one of these names
COHORT_FIELDS = (
    "n_a", "n_b", "share_a", "share_b", "mse_a", "mse_b", "mix", "error", "contribution",
    "share_of_change",
)

#: (n labeled, MSE) per cohort key (a tuple of the --by values)
CohortTable = Mapping[tuple[Any, ...], tuple[int, float]]


@dataclass(frozen=True)
class CohortAttribution:
    """One cohort's part of the change. `mse_a`/`mse_b` are None where it had no labels."""

    key: tuple[Any, ...]
    n_a: int
    n_b: int
    share_a: float
    share_b: float
    mse_a: float | None
    mse_b: float | None
    mix: float
    error: float
    contribution: float
    share_of_change: float | None


@dataclass(frozen=True)
class Attribution:
    """The split of MSE_B − MSE_A into mix and error, and the cohorts ranked by contribution."""

    by: tuple[str, ...]
    n_a: int
    n_b: int
    mse_a: float
    mse_b: float
    mix: float
    error: float
    total_change: float
    cohorts: list[CohortAttribution] = field(default_factory=list)
    convention: str = CONVENTION
    #: the two `Evaluation`s it came from (with their counts of rejected input rows), if any
    evaluations: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """The JSON of `msewatch explain`: totals, then the `top` ranked cohorts (all: None)."""
        shown = self.cohorts if top is None else self.cohorts[:top]
        return {
            "total_change": self.total_change,
            "mse_a": self.mse_a,
            "mse_b": self.mse_b,
            "mix": self.mix,
            "error": self.error,
            "n_a": self.n_a,
            "n_b": self.n_b,
            "by": list(self.by),
            "n_cohorts": len(self.cohorts),
            "cohorts": [
                dict(zip(self.by, c.key))
                | {name: getattr(c, name) for name in COHORT_FIELDS}
                for c in shown
            ],
            "convention": self.convention,
        }


def cohort_table(
    rows: Iterable[Mapping[str, Any]], by: Sequence[str], *, side: str = "A"
) -> dict[tuple[Any, ...], tuple[int, float]]:
    """(n labeled, MSE) per cohort from evaluation rows; cohorts without labels are left out."""
    table: dict[tuple[Any, ...], tuple[int, float]] = {}
    for row in rows:
        n = int(row.get("n_labeled") or 0)
        if n <= 0:
            continue
        key = tuple(row[c] for c in by)
        mse = row.get("mse")
        if mse is None or not math.isfinite(mse):
            raise InputError(f"side {side}: the MSE of cohort {_describe(by, key)} is not a finite number.")
        table[key] = (n, float(mse))
    return table


def decompose(
    a: CohortTable, b: CohortTable, by: Sequence[str] = (), *, sides: tuple[str, str] = ("A", "B")
) -> Attribution:
    """Split MSE_B − MSE_A into mix and error parts per cohort (see the module docstring).

    `a` and `b` map a cohort key to (n labeled, MSE); keys with n ≤ 0 count as absent.
    `sides` names the two sides in error messages.
    Cohorts are ranked by |contribution|, largest first (ties: side A's order, then B's).
    """
    a = {k: v for k, v in a.items() if v[0] > 0}
    b = {k: v for k, v in b.items() if v[0] > 0}
    for side, table in zip(sides, (a, b)):
        if not table:
            raise InputError(f"side {side} has no labeled predictions: nothing to compare.")
        for key, (_, m) in table.items():
            if not math.isfinite(m) or m < 0:
                raise InputError(f"side {side}: the MSE of cohort {_describe(by, key)} is {m!r}.")
    n_a = sum(n for n, _ in a.values())
    n_b = sum(n for n, _ in b.values())
    mse_a = math.fsum(n * m for n, m in a.values()) / n_a
    mse_b = math.fsum(n * m for n, m in b.values()) / n_b

    parts: list[tuple[tuple[Any, ...], int, int, float, float, float | None, float | None, float, float]] = []
    for key in [*a, *(k for k in b if k not in a)]:
        ca, cb = a.get(key), b.get(key)
        wa = ca[0] / n_a if ca else 0.0
        wb = cb[0] / n_b if cb else 0.0
        # a cohort on one side only: its MSE on the other side is the one it has (pure mix)
        ma = ca[1] if ca else cb[1]  # type: ignore[index]
        mb = cb[1] if cb else ma
        mix = (wb - wa) * (ma + mb) / 2
        error = (mb - ma) * (wa + wb) / 2
        parts.append((key, ca[0] if ca else 0, cb[0] if cb else 0, wa, wb,
                      ca[1] if ca else None, cb[1] if cb else None, mix, error))

    mix_total = math.fsum(p[7] for p in parts)
    error_total = math.fsum(p[8] for p in parts)
    total = mix_total + error_total
    scale = max(abs(mse_a), abs(mse_b), *(abs(p[7]) for p in parts), *(abs(p[8]) for p in parts))
    meaningful = abs(total) > 1e-12 * scale  # below that, the change is rounding noise
    cohorts = [
        CohortAttribution(
            key=key, n_a=na, n_b=nb, share_a=wa, share_b=wb, mse_a=ma, mse_b=mb, mix=mix,
            error=error, contribution=mix + error,
            share_of_change=(mix + error) / total if meaningful else None,
        )
        for key, na, nb, wa, wb, ma, mb, mix, error in parts
    ]
    cohorts.sort(key=lambda c: -abs(c.contribution))  # stable: ties keep A's, then B's order
    result = Attribution(by=tuple(by), n_a=n_a, n_b=n_b, mse_a=mse_a, mse_b=mse_b, mix=mix_total,
                         error=error_total, total_change=total, cohorts=cohorts)
    check_identity(result)
    return result


def check_identity(result: Attribution, rel: float = 1e-9) -> None:
    """Raise AssertionError unless the parts add up to MSE_B − MSE_A (relative to the largest
    term: the parts are rounded floats, so that is the precision they can carry)."""
    terms = [result.mse_a, result.mse_b, *(c.mix for c in result.cohorts), *(c.error for c in result.cohorts)]
    scale = max(abs(t) for t in terms)
    gap = result.total_change - (result.mse_b - result.mse_a)
    if abs(gap) > rel * scale:
        raise AssertionError(f"attribution parts miss MSE_B - MSE_A by {gap!r} (scale {scale!r})")


def attribute(
    engine: Any,
    predictions_a: Any,
    labels_a: Any,
    spec_a: Any,
    predictions_b: Any = None,
    labels_b: Any = None,
    spec_b: Any = None,
    *,
    sides: tuple[str, str] = ("A", "B"),
) -> Attribution:
    """Attribute the change from side A to side B: one grouped evaluation per side on `engine`.

    `spec_a`/`spec_b` are `EvalSpec`s with the same `by` (the cohort columns) and no windows;
    side B reads `predictions_a`/`labels_a` unless given its own (two files), and uses
    `spec_a` unless given its own (two periods or versions of one source). `sides` names
    the two sides in error messages.
    """
    from msewatch.evaluate import evaluate

    spec_b = spec_b or spec_a
    if spec_a.by != spec_b.by:
        raise InputError("both sides must be split by the same --by columns.")
    if spec_a.windowed or spec_b.windowed:
        raise InputError("cohort attribution compares two whole sides: no --window or --rolling.")
    if not spec_a.by:
        raise InputError("--by is required: the columns whose values make the cohorts.")
    clash = [c for c in spec_a.by if c in COHORT_FIELDS]
    if clash:
        raise InputError(f"--by {clash[0]!r} clashes with a field of the output; rename the column.")
    if predictions_b is None:
        predictions_b, labels_b = predictions_a, labels_a
    eval_a = evaluate(engine, predictions_a, labels_a, spec_a)
    eval_b = evaluate(engine, predictions_b, labels_b, spec_b)
    result = decompose(cohort_table(eval_a.rows, spec_a.by, side=sides[0]),
                       cohort_table(eval_b.rows, spec_b.by, side=sides[1]), spec_a.by, sides=sides)
    return dataclasses.replace(result, evaluations=(eval_a, eval_b))


def _describe(by: Sequence[str], key: tuple[Any, ...]) -> str:
    return ", ".join(f"{c}={v}" for c, v in zip(by, key)) or "(all)"
