"""Quality SLOs: error budgets and multiwindow, multi-burn-rate alerts (SRE Workbook, ch. 5).

Two kinds of SLO, both read from the per-minute rollups (a 28-day period never rescans raw rows):

- *event*: a labeled prediction is good when its squared error is ≤ `threshold`; the error
  ratio of a window is bad / labeled.
- *window*: a window of `window` seconds (aligned to the UTC epoch) is good when its RMSE is
  ≤ `max_rmse`; the error ratio over a lookback is bad windows / judged windows.

The burn rate is the error ratio over the allowed one, 1 − objective: at burn rate 1 the budget
lasts exactly the period. A tier fires when the burn rate is ≥ its factor over both its long and
its short window. Label completeness gating (F1): a window (a burn-rate window for event SLOs, an
SLO window for window SLOs) with fewer than `min_labels` labels or coverage below
`min_coverage` is neither good nor bad, so missing labels never look like a healthy or a broken
model; `label_freshness` alerts say that labels stopped. Predictions younger than `label_delay`
are not judged at all: every window ends at `now − label_delay`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from msewatch.monitor.alerts import Finding
from msewatch.monitor.config import BurnTier, Slo
from msewatch.monitor.series import MINUTE, MinuteSeries, engine_series
from msewatch.units import format_duration

__all__ = ["BURN_WINDOWS", "SloStatus", "TierStatus", "engine_slo_statuses", "evaluate_slo", "series_span",
           "slo_findings"]

BURN_WINDOWS = (300, 1800, 3600, 7200, 6 * 3600, 86400, 3 * 86400)


@dataclass(frozen=True)
class TierStatus:
    tier: BurnTier
    long_burn: float | None
    short_burn: float | None

    @property
    def firing(self) -> bool:
        return (
            self.long_burn is not None and self.short_burn is not None
            and self.long_burn >= self.tier.factor and self.short_burn >= self.tier.factor
        )


@dataclass(frozen=True)
class SloStatus:
    slo: Slo
    at: float  # evaluation instant, epoch seconds
    judged_until: float  # windows end here: at − label_delay
    good: int  # good events (event SLO) or good windows (window SLO) in the period
    bad: int
    budget_remaining: float | None  # 1 = untouched, 0 = spent, < 0 = overspent
    burn_rates: dict[int, float | None]
    tiers: tuple[TierStatus, ...]
    coverage: float | None  # label coverage over the period
    daily_burn: tuple[float | None, ...] = ()  # burn rate of each day of the period, oldest first

    @property
    def compliance(self) -> float | None:
        total = self.good + self.bad
        return self.good / total if total else None

    def to_dict(self) -> dict[str, Any]:
        def iso(t: float) -> str:
            return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")

        return {
            "slo": self.slo.name,
            "model": self.slo.model,
            "version": self.slo.version,
            "kind": self.slo.kind,
            "objective": self.slo.objective,
            "period": format_duration(self.slo.period),
            "at": iso(self.at),
            "judged_until": iso(self.judged_until),
            "good": self.good,
            "bad": self.bad,
            "compliance": self.compliance,
            "budget_remaining": self.budget_remaining,
            "label_coverage": self.coverage,
            "burn_rates": {format_duration(w): b for w, b in self.burn_rates.items()},
            "daily_burn": list(self.daily_burn),
            "tiers": [
                {"severity": t.tier.severity, "factor": t.tier.factor, "long": format_duration(t.tier.long),
                 "short": format_duration(t.tier.short), "long_burn": t.long_burn, "short_burn": t.short_burn,
                 "firing": t.firing}
                for t in self.tiers
            ],
        }


def series_span(slo: Slo, at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The prediction-time range an evaluation of `slo` at `at` reads."""
    end = at - dt.timedelta(seconds=slo.label_delay)
    longest = max([slo.period, *BURN_WINDOWS, *(t.long for t in slo.tiers)])
    return end - dt.timedelta(seconds=longest + slo.window), end


def _judged(slo: Slo, n_pred: int, n_lab: int) -> bool:
    return n_lab >= slo.min_labels and (n_pred == 0 or n_lab / n_pred >= slo.min_coverage)


def _event_ratio(slo: Slo, series: MinuteSeries, end: float, length: int) -> tuple[int, int] | None:
    s = series.sums(end - length, end)
    if not _judged(slo, s.n_predictions, s.n_labeled) or s.n_good is None:
        return None
    return s.n_labeled - s.n_good, s.n_labeled


def _windows(slo: Slo, series: MinuteSeries, since: float, end: float) -> tuple[int, int]:
    """Bad and judged SLO windows (aligned to the epoch) that end in (since, end]."""
    w = slo.window
    first_end = int(since) // w * w + w
    last_end = int(end) // w * w
    if last_end < first_end:
        return 0, 0
    starts = np.arange(first_end, last_end + 1, w, dtype=np.float64) - w
    lo = np.clip((starts - series.start) // MINUTE, 0, len(series.n_labeled)).astype(np.int64)
    hi = np.clip((starts + w - series.start) // MINUTE, 0, len(series.n_labeled)).astype(np.int64)
    p = series._prefix
    n_pred = p["n_predictions"][hi] - p["n_predictions"][lo]
    n_lab = p["n_labeled"][hi] - p["n_labeled"][lo]
    sq = p["sum_sq"][hi] - p["sum_sq"][lo]
    judged = (n_lab >= slo.min_labels) & ((n_pred == 0) | (n_lab >= slo.min_coverage * n_pred))
    with np.errstate(divide="ignore", invalid="ignore"):
        bad = judged & (sq / np.maximum(n_lab, 1) > slo.max_rmse**2)  # type: ignore[operator]
    return int(bad.sum()), int(judged.sum())


def _burn(slo: Slo, series: MinuteSeries, end: float, length: int) -> float | None:
    allowed = 1.0 - slo.objective
    if slo.kind == "event":
        got = _event_ratio(slo, series, end, length)
        return None if got is None else got[0] / got[1] / allowed
    # window SLO: the windows that end in the lookback; a lookback shorter than a window reads
    # the last complete one
    bad, judged = _windows(slo, series, end - max(length, slo.window), end)
    return None if not judged else bad / judged / allowed


def evaluate_slo(slo: Slo, series: MinuteSeries, at: float) -> SloStatus:
    """The budget and burn rates of `slo` at instant `at` (epoch seconds)."""
    end = at - slo.label_delay
    since = end - slo.period
    if slo.kind == "event":
        # the period is judged hour by hour (or by the SLO window), so a stretch without labels
        # counts neither way
        w = slo.window
        good = bad = 0
        p = series._prefix
        first = -(-int(since) // w) * w
        starts = np.arange(first, int(end) // w * w, w, dtype=np.float64)
        if len(starts):
            lo = np.clip((starts - series.start) // MINUTE, 0, len(series.n_labeled)).astype(np.int64)
            hi = np.clip((starts + w - series.start) // MINUTE, 0, len(series.n_labeled)).astype(np.int64)
            n_pred = p["n_predictions"][hi] - p["n_predictions"][lo]
            n_lab = p["n_labeled"][hi] - p["n_labeled"][lo]
            n_good = p["n_good"][hi] - p["n_good"][lo] if "n_good" in p else n_lab
            judged = (n_lab >= slo.min_labels) & ((n_pred == 0) | (n_lab >= slo.min_coverage * n_pred))
            good = int(n_good[judged].sum())
            bad = int((n_lab - n_good)[judged].sum())
        total = good + bad
    else:
        bad, total = _windows(slo, series, since, end)
        good = total - bad
    allowed = (1.0 - slo.objective) * total
    remaining = None if total == 0 else 1.0 - bad / allowed
    windows = sorted({*BURN_WINDOWS, *(t.long for t in slo.tiers), *(t.short for t in slo.tiers)})
    burns = {w: _burn(slo, series, end, w) for w in windows}
    tiers = tuple(TierStatus(t, burns[t.long], burns[t.short]) for t in slo.tiers)
    period = series.sums(since, end)
    days = tuple(_burn(slo, series, end - k * 86400, 86400) for k in range(slo.period // 86400 - 1, -1, -1))
    return SloStatus(slo, at, end, good, bad, remaining, burns, tiers, period.coverage, days)


def slo_findings(status: SloStatus) -> list[Finding]:
    """One `slo_burn` finding per severity whose tier fires; a firing page silences the ticket."""
    slo = status.slo
    firing = [t for t in status.tiers if t.firing]
    if any(t.tier.severity == "page" for t in firing):
        firing = [t for t in firing if t.tier.severity == "page"]
    out = []
    for severity in ("page", "ticket"):
        tiers = [t for t in firing if t.tier.severity == severity]
        if not tiers:
            continue
        worst = max(tiers, key=lambda t: t.long_burn or 0.0)
        labels = {"alertname": "slo_burn", "slo": slo.name, "model": slo.model, "severity": severity}
        if slo.version:
            labels["version"] = slo.version
        budget = "unknown" if status.budget_remaining is None else f"{status.budget_remaining:.1%}"
        what = (f"squared error ≤ {slo.threshold:g}" if slo.kind == "event"
                else f"{format_duration(slo.window)} RMSE ≤ {slo.max_rmse:g}")
        out.append(Finding(
            labels,
            {
                "summary": f"{slo.model}: SLO {slo.name} burning its error budget {worst.long_burn:.1f}× too fast",
                "description": (
                    f"Burn rate {worst.long_burn:.2f} over {format_duration(worst.tier.long)} and "
                    f"{worst.short_burn:.2f} over {format_duration(worst.tier.short)} (tier ≥ {worst.tier.factor:g}×); "
                    f"objective {slo.objective:g} of {what} over {format_duration(slo.period)}; "
                    f"budget remaining {budget}."
                ),
                "runbook": slo.runbook or SLO_RUNBOOK,
            },
            worst.long_burn,
        ))
    return out


SLO_RUNBOOK = (
    "1. Check label freshness and coverage first: a label pipeline delay or a backfill can move "
    "MSE (msewatch alerts list; label_freshness / label_coverage). "
    "2. Was a new version or a config change rolled out at the start of the burn? Compare versions "
    "(msewatch eval --by version --window 1h). "
    "3. Find the cohort: msewatch eval --by <segment> --window 1h; a single cohort points to "
    "upstream data for that segment. "
    "4. Check feature drift and upstream schema changes for the affected cohort. "
    "5. Mitigate: roll back the new version, or fall back to the previous model, then open a "
    "postmortem with the MSE timeline."
)


def engine_slo_statuses(slos: Sequence[Slo], engine: Any, predictions: Any, labels: Any,
                        at: dt.datetime) -> list[SloStatus]:
    """SLO statuses computed in another engine from raw tables (`msewatch slo status --engine`):
    the same arithmetic as the store's, over a series the engine aggregates per minute."""
    out = []
    for slo in slos:
        lo, hi = series_span(slo, at)
        series = engine_series(engine, predictions, labels, slo.model, lo, hi, version=slo.version,
                               threshold=slo.threshold if slo.kind == "event" else None)
        out.append(evaluate_slo(slo, series, at.timestamp()))
    return out
