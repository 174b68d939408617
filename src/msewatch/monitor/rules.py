"""Alert rules: each reads the store at an instant and reports the conditions that hold.

- `delta_mse`: MSE over the window vs the baseline; fires when the one-sided lower confidence
  bound of ΔMSE% clears `max_increase_pct` with at least `min_n` labels.
- `cohort_regression`: per value of a segment column vs that cohort's baseline, one-sided
  z-tests with Benjamini–Hochberg control of false discoveries across cohorts, each discovery
  ranked by its contribution to the total ΔMSE.
- `tail_error`: p90 of squared errors vs the baseline's (M5), on a lower confidence bound of
  the quantile.
- `label_coverage`: labeled share of the predictions old enough to be labeled (M6, F1).
- `label_freshness`: no new label for `max_age` while predictions keep coming (F1).
- `drift`: the distribution of each column (features, segments, y_pred, y_true) over the window
  vs the `reference` period before it (`msewatch.monitor.drift`); one finding per drifting column.

Whole-model rules read the per-minute rollups; cohort and tail rules read the raw rows of their
window only (and of the 30-day default baseline, cached for an hour).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np

from msewatch.errors import InputError
from msewatch.monitor.alerts import Finding
from msewatch.monitor.baselines import Baseline, default_baseline, find_baseline
from msewatch.monitor.config import AlertRule
from msewatch.monitor.series import load_series
from msewatch.monitor.stats import (
    benjamini_hochberg,
    delta_pct_bounds,
    mean_se,
    quantile_lower_bound,
    regression_pvalue,
)
from msewatch.units import format_duration

__all__ = ["RULE_RUNBOOKS", "RuleEvaluator"]

RULE_RUNBOOKS = {
    "delta_mse": (
        "1. Check label freshness and coverage: late or partial labels bias MSE. "
        "2. Did a deploy, feature change or upstream schema change happen at the step? "
        "3. Break it down: msewatch eval --db … --by version,<segment> --window 1h. "
        "4. If a new version is worse, roll it back; otherwise check feature drift and retrain."
    ),
    "cohort_regression": (
        "1. Confirm the cohort's labels are complete (coverage per cohort). "
        "2. Look for upstream data changes for that segment (new source, missing feature, unit change). "
        "3. Compare versions inside the cohort; roll back if a new version causes it. "
        "4. Consider a cohort-specific fallback while the model is fixed."
    ),
    "tail_error": (
        "1. Inspect the worst predictions (largest squared errors) and their segments. "
        "2. Check for outliers or unit errors in recent labels and features. "
        "3. A growing tail with a stable mean points to a sub-population: break down by segment."
    ),
    "label_coverage": (
        "1. Check the label pipeline's backlog and error logs. "
        "2. MSE over under-labeled windows is biased toward the predictions labeled first; do not "
        "act on MSE alone until coverage recovers."
    ),
    "label_freshness": (
        "1. Labels stopped: check the label pipeline (jobs, credentials, upstream source). "
        "2. MSE alerts are gated while labels are missing; they are not evidence the model is fine. "
        "3. Declare a maintenance window if a backfill is planned."
    ),
    "drift": (
        "1. Check the upstream data of the column: pipeline changes, new sources, missing values, "
        "schema or unit changes (km vs miles, cents vs dollars). "
        "2. Check the cohort: did the traffic mix change (new region, client, campaign)? "
        "msewatch drift --db … --model … --format json shows every column. "
        "3. Compare with MSE (msewatch eval --db … --window 1h): drift without an MSE change may be "
        "benign; drift with one points at the cause. Retrain if the new population is here to stay."
    ),
}

_CACHE_SECONDS = 3600


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RuleEvaluator:
    """Evaluates alert rules on a store connection; caches slow default baselines for an hour."""

    def __init__(self, con: Any) -> None:
        self.con = con
        self._cache: dict[tuple[Any, ...], tuple[float, Any]] = {}

    def findings(self, rule: AlertRule, at: dt.datetime) -> list[Finding]:
        method = getattr(self, f"_{rule.type}")
        return method(rule, at)

    # ------------------------------------------------------------------ helpers

    def _labels(self, rule: AlertRule, **extra: str) -> dict[str, str]:
        labels = {"alertname": rule.name, "rule": rule.type, "model": rule.model, "severity": rule.severity}
        if rule.version:
            labels["version"] = rule.version
        labels.update(rule.labels)
        labels.update(extra)
        return labels

    def _annotations(self, rule: AlertRule, summary: str, description: str) -> dict[str, str]:
        out = {"summary": summary, "description": description, "runbook": rule.runbook or RULE_RUNBOOKS[rule.type]}
        out.update(rule.annotations)
        return out

    def _span(self, rule: AlertRule, at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        end = at - dt.timedelta(seconds=rule.label_delay)
        return end - dt.timedelta(seconds=rule.window), end

    def _cached(self, key: tuple[Any, ...], at: dt.datetime, make: Any) -> Any:
        hit = self._cache.get(key)
        if hit is not None and abs(at.timestamp() - hit[0]) < _CACHE_SECONDS:
            return hit[1]
        value = make()
        self._cache[key] = (at.timestamp(), value)
        return value

    def _baseline(self, rule: AlertRule, before: dt.datetime) -> Baseline | None:
        explicit = find_baseline(self.con, rule.model, rule.version)
        if explicit is not None:
            return explicit
        return self._cached(("default", rule.model, rule.version), before,
                            lambda: default_baseline(self.con, rule.model, before, version=rule.version))

    def _pairs_sql(self, rule: AlertRule, select: str, group: str = "") -> tuple[str, dict[str, Any]]:
        version = "AND p.version = $version" if rule.version else ""
        sql = f"""SELECT {select} FROM (
            SELECT p.*, (p.y_pred - l.y_true) * (p.y_pred - l.y_true) AS r2
            FROM predictions p JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current
            WHERE p.model = $model {version} AND p.ts >= $lo AND p.ts < $hi) {group}"""
        params: dict[str, Any] = {"model": rule.model}
        if rule.version:
            params["version"] = rule.version
        return sql, params

    # ------------------------------------------------------------------ rule types

    def _delta_mse(self, rule: AlertRule, at: dt.datetime) -> list[Finding]:
        lo, hi = self._span(rule, at)
        series = load_series(self.con, rule.model, lo, hi, version=rule.version)
        sums = series.sums(lo.timestamp(), hi.timestamp())
        if sums.n_labeled < rule.min_n or sums.mse is None:
            return []
        base = self._baseline(rule, lo)
        if base is None or not base.mse:
            return []
        se = mean_se(series.m2(lo.timestamp(), hi.timestamp()), sums.n_labeled)
        bound = delta_pct_bounds(sums.mse, se, base.mse, base.mse_se, rule.confidence)
        if bound is None or bound.low <= rule.max_increase_pct:
            return []
        desc = (
            f"MSE {sums.mse:.6g} over the {format_duration(rule.window)} before {_iso(hi)} "
            f"(n={sums.n_labeled}) vs baseline {base.mse:.6g} ({base.source}): ΔMSE {bound.delta_pct:+.1f}%, "
            f"{rule.confidence:.0%} lower bound {bound.low:+.1f}% > {rule.max_increase_pct:g}%."
        )
        return [Finding(
            self._labels(rule),
            self._annotations(rule, f"{rule.model}: MSE up {bound.delta_pct:.0f}% vs baseline", desc),
            bound.delta_pct, rule.for_,
        )]

    def _cohort_stats(self, rule: AlertRule, lo: dt.datetime, hi: dt.datetime) -> list[tuple[str, int, float, float]]:
        column = rule.by or ""
        available = {r[0] for r in self.con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'predictions'").fetchall()}
        if column not in available:
            raise InputError(f"rule {rule.name}: the predictions have no column {column!r} to group cohorts by.")
        quoted = '"' + column.replace('"', '""') + '"'
        sql, params = self._pairs_sql(
            rule, f"coalesce(CAST({quoted} AS VARCHAR), '(null)') AS cohort, count(*), avg(r2), var_samp(r2)",
            "GROUP BY 1 ORDER BY 1",
        )
        params.update(lo=lo, hi=hi)
        return [(c, int(n), float(m), float(v or 0.0)) for c, n, m, v in self.con.execute(sql, params).fetchall()]

    def _cohort_regression(self, rule: AlertRule, at: dt.datetime) -> list[Finding]:
        lo, hi = self._span(rule, at)
        current = self._cohort_stats(rule, lo, hi)
        if not current:
            return []
        explicit = find_baseline(self.con, rule.model, rule.version)
        if explicit is not None and any(k.startswith(f"{rule.by}=") for k in explicit.cohorts):
            base = {k.split("=", 1)[1]: (b.mse, b.mse_se) for k, b in explicit.cohorts.items()
                    if k.startswith(f"{rule.by}=")}
            source = explicit.source
        else:
            trailing = self._cached(
                ("cohorts", rule.name), lo,
                lambda: self._cohort_stats(rule, lo - dt.timedelta(days=30), lo),
            )
            base = {c: (m, math.sqrt(v / n) if n > 1 else None) for c, n, m, v in trailing}
            source = "trailing 30 days"
        tested = [(c, n, m, v) for c, n, m, v in current if n >= rule.min_n and base.get(c, (None,))[0]]
        if not tested:
            return []
        pvalues = [regression_pvalue(m, math.sqrt(v / n), base[c][0], base[c][1], rule.max_increase_pct)
                   for c, n, m, v in tested]
        found = benjamini_hochberg(pvalues, rule.fdr)
        total_n = sum(n for _, n, _, _ in current)
        contribution = {c: n / total_n * (m - base[c][0]) for c, n, m, _ in tested}
        delta_total = sum(n / total_n * (m - base[c][0]) for c, n, m, _ in current if c in base)
        hits = sorted((i for i in np.flatnonzero(found)), key=lambda i: -contribution[tested[i][0]])
        out = []
        for rank, i in enumerate(hits, start=1):
            cohort, n, mse, _ = tested[i]
            b = base[cohort][0]
            pct = (mse / b - 1) * 100
            share = contribution[cohort] / delta_total if delta_total > 0 else float("nan")
            desc = (
                f"{rule.by}={cohort}: MSE {mse:.6g} (n={n}) vs its baseline {b:.6g} ({source}): {pct:+.1f}%, "
                f"p={pvalues[i]:.2g} for an increase over {rule.max_increase_pct:g}% "
                f"(Benjamini–Hochberg at FDR {rule.fdr:g} across {len(tested)} cohorts). "
                f"Rank {rank} of {len(hits)} by contribution to ΔMSE"
                + (f": {share:.0%} of the total." if math.isfinite(share) else ".")
            )
            out.append(Finding(
                self._labels(rule, segment=rule.by or "", cohort=cohort),
                self._annotations(rule, f"{rule.model}: cohort {rule.by}={cohort} MSE up {pct:.0f}%", desc),
                pct, rule.for_,
            ))
        return out

    def _tail(self, rule: AlertRule, lo: dt.datetime, hi: dt.datetime, low_q: float | None) -> tuple[int, Any, Any]:
        qs = [0.9] if low_q is None else [0.9, low_q]
        sql, params = self._pairs_sql(rule, f"count(*), quantile_cont(r2, {qs!r})")
        params.update(lo=lo, hi=hi)
        n, values = self.con.execute(sql, params).fetchall()[0]
        return int(n), (values or [None])[0], (values[1] if values and len(values) > 1 else None)

    def _tail_error(self, rule: AlertRule, at: dt.datetime) -> list[Finding]:
        lo, hi = self._span(rule, at)
        sql, params = self._pairs_sql(rule, "count(*)")
        params.update(lo=lo, hi=hi)
        n = int(self.con.execute(sql, params).fetchall()[0][0])
        if n < rule.min_n:
            return []
        _, p90, low = self._tail(rule, lo, hi, quantile_lower_bound(n, 0.9, rule.confidence))
        explicit = find_baseline(self.con, rule.model, rule.version)
        if explicit is not None and explicit.metrics.get("p90_sq_err"):
            base, source = explicit.metrics["p90_sq_err"], explicit.source
        else:
            base = self._cached(("tail", rule.name), lo,
                                lambda: self._tail(rule, lo - dt.timedelta(days=30), lo, None)[1])
            source = "trailing 30 days"
        if not base or low is None or low <= base * (1 + rule.max_increase_pct / 100):
            return []
        pct = (p90 / base - 1) * 100
        desc = (
            f"p90 squared error {p90:.6g} over the {format_duration(rule.window)} before {_iso(hi)} (n={n}) vs "
            f"baseline {base:.6g} ({source}): {pct:+.1f}%; its {rule.confidence:.0%} lower bound {low:.6g} "
            f"is above +{rule.max_increase_pct:g}%."
        )
        return [Finding(self._labels(rule), self._annotations(rule, f"{rule.model}: p90 squared error up {pct:.0f}%", desc),
                        pct, rule.for_)]

    def _label_coverage(self, rule: AlertRule, at: dt.datetime) -> list[Finding]:
        lo, hi = self._span(rule, at)
        sums = load_series(self.con, rule.model, lo, hi, version=rule.version).sums(lo.timestamp(), hi.timestamp())
        if sums.n_predictions < rule.min_n or sums.coverage is None or sums.coverage >= rule.min_coverage:
            return []
        desc = (
            f"{sums.n_labeled} of {sums.n_predictions} predictions made in the {format_duration(rule.window)} before "
            f"{_iso(hi)} have a label ({sums.coverage:.1%}; minimum {rule.min_coverage:.0%})."
        )
        return [Finding(self._labels(rule), self._annotations(rule, f"{rule.model}: label coverage {sums.coverage:.0%}", desc),
                        sums.coverage, rule.for_)]

    def _label_freshness(self, rule: AlertRule, at: dt.datetime) -> list[Finding]:
        lo = at - dt.timedelta(seconds=rule.max_age)
        series = load_series(self.con, rule.model, lo, at, version=rule.version)
        recent = series.sums(lo.timestamp(), at.timestamp())
        if recent.n_predictions == 0:
            return []  # no traffic: nothing is waiting for labels
        last = series.last_label_before(at.timestamp())
        age = math.inf if last is None else at.timestamp() - last
        if age <= rule.max_age:
            return []
        when = "never" if last is None else _iso(dt.datetime.fromtimestamp(last, dt.timezone.utc))
        desc = (
            f"The latest label of {rule.model} is from {when}"
            + ("" if last is None else f" ({format_duration(int(age) // 60 * 60 or 60)} ago)")
            + f", while {recent.n_predictions} predictions were made since {_iso(lo)}. "
            "MSE alerts are gated until labels arrive again."
        )
        return [Finding(self._labels(rule), self._annotations(rule, f"{rule.model}: no labels for {format_duration(rule.max_age)}", desc),
                        None if last is None else age, rule.for_)]

    def _drift(self, rule: AlertRule, at: dt.datetime) -> list[Finding]:
        from msewatch.monitor.drift import DriftSettings, drift_from_store

        # a scan of the raw rows of both periods: reused for a twelfth of the window (1 min to 1 h)
        hit = self._cache.get(("drift", rule.name))
        if hit is not None and 0 <= at.timestamp() - hit[0] < min(_CACHE_SECONDS, max(60, rule.window // 12)):
            report = hit[1]
        else:
            lo, hi = self._span(rule, at)
            settings = DriftSettings(test=rule.test, alpha=rule.alpha, min_n=rule.min_n, min_effect=rule.min_effect)
            report = drift_from_store(self.con, rule.model, current=(lo, hi),
                                      reference=(lo - dt.timedelta(seconds=rule.reference), lo),
                                      version=rule.version, columns=rule.columns or None, settings=settings)
            self._cache[("drift", rule.name)] = (at.timestamp(), report)
        out = []
        for c in report.columns:
            if not c.drift:
                continue
            figures = ", ".join(f"{k} {v:.3g}" for k, v in (
                ("KS", c.ks), ("p", c.p_value), ("PSI", c.psi), ("Wasserstein/sd", c.wasserstein_norm), ("JS", c.js),
            ) if v is not None)
            desc = (
                f"{c.column} ({c.kind}) over the {format_duration(rule.window)} before {_iso(report.current['until'])} "
                f"(n={c.n_current}) vs the {format_duration(rule.reference)} before it (n={c.n_reference}): "
                f"{figures}. Test {report.rule_text()}"
            )
            summary = f"{rule.model}: {c.column} drifted ({c.test} {c.statistic:.3g})"
            out.append(Finding(self._labels(rule, column=c.column), self._annotations(rule, summary, desc),
                               c.statistic, rule.for_))
        return out
