"""The monitor's statistical procedures, run by simulation in simulated time with fixed seeds.

The SLO tests build `MinuteSeries` straight from generated per-minute counts (the object the
server builds from the rollups) and step the evaluation instant through simulated time, feeding
`slo_findings(evaluate_slo(...))` into an `AlertBook` like the server's evaluation loop. The rule
tests ingest generated traffic into a real DuckDB store, slice by slice in time (predictions when
they are made, labels when they arrive), and run `Monitor.evaluate` after each slice.

Every test prints one line of figures (`pytest -s` shows them) and asserts them.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from msewatch.monitor.alerts import AlertBook
from msewatch.monitor.config import (
    DEFAULT_TIERS,
    AlertingConfig,
    AlertRule,
    Maintenance,
    MonitorConfig,
    Notifier,
    Slo,
)
from msewatch.monitor.engine import Monitor
from msewatch.monitor.series import MinuteSeries
from msewatch.monitor.slo import evaluate_slo, slo_findings
from msewatch.monitor.stats import benjamini_hochberg, regression_pvalue
from msewatch.notify import Delivery, Dispatcher
from msewatch.store import Store

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: minute 0 of every simulation, on an hour boundary
MINUTE, HOUR, DAY = 60, 3600, 86400

# Traffic of the SLO simulations: 55–210 predictions a minute, 95 % of them labeled, so
# ~52–200 labeled predictions a minute (mean ≈ 126).
PRED_LOW, PRED_HIGH, LABELED = 55, 210, 0.95
BASE_BAD = 0.005  # stable model: 0.5 % of labeled predictions have r² > τ → burn 0.5 at 0.99
TAU = 7.879  # χ²₁'s 99.5 % point: with r ~ N(0, 1), P(r² > τ) = 0.5 %


def utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


# --------------------------------------------------------------------------- SLO simulation


def event_series(rng: np.random.Generator, bad_rate: np.ndarray, *, labels_stop: int | None = None,
                 sigma2: np.ndarray | float = 1.0) -> MinuteSeries:
    """Per-minute counts with binomial noise: minute i has bad rate `bad_rate[i]`; from minute
    `labels_stop` on, predictions go on but no label arrives. Σr² is σ²·χ²(n_labeled)."""
    minutes = len(bad_rate)
    n_pred = rng.integers(PRED_LOW, PRED_HIGH + 1, minutes)
    n_lab = rng.binomial(n_pred, LABELED)
    if labels_stop is not None:
        n_lab[labels_stop:] = 0
    bad = rng.binomial(n_lab, bad_rate)
    sum_sq = np.where(n_lab > 0, rng.gamma(np.maximum(n_lab, 1) / 2.0, 2.0), 0.0) * sigma2
    return MinuteSeries(T0, n_pred, n_lab, sum_sq, n_good=n_lab - bad)


@dataclass
class SloRun:
    """What the alert book did over a run of evaluations."""

    evaluations: int = 0
    findings: int = 0
    fired: list[tuple[float, str, str]] = field(default_factory=list)  # (t, severity, description)
    resolved: list[tuple[float, str]] = field(default_factory=list)
    peak: dict[str, float] = field(default_factory=dict)  # tier → max of min(long, short) / factor
    last: Any = None  # the last SloStatus

    def first(self, severity: str) -> float | None:
        return next((t for t, s, _ in self.fired if s == severity), None)

    def count(self, severity: str) -> int:
        return sum(1 for _, s, _ in self.fired if s == severity)


def drive(slo: Slo, series: MinuteSeries, times: Any, *, stop_at_page: bool = False) -> SloRun:
    """Evaluate `slo` at each instant like the server does and record the alert transitions."""
    book = AlertBook()
    run = SloRun()
    for t in times:
        t = float(t)
        status = evaluate_slo(slo, series, t)
        findings = slo_findings(status)
        run.evaluations += 1
        run.findings += len(findings)
        run.last = status
        for tier in status.tiers:
            if tier.long_burn is not None and tier.short_burn is not None:
                seen = min(tier.long_burn, tier.short_burn) / tier.tier.factor
                run.peak[tier.tier.name] = max(run.peak.get(tier.tier.name, 0.0), seen)
        for alert in book.update(findings, utc(t)):
            if alert.state == "firing":
                run.fired.append((t, alert.labels["severity"], alert.annotations["description"]))
            elif alert.state == "resolved":
                run.resolved.append((t, alert.labels["severity"]))
        if stop_at_page and run.first("page") is not None:
            break
    return run


def peaks(run: SloRun) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in sorted(run.peak.items()))


EVENT_SLO = Slo("price-accuracy", "price", kind="event", threshold=TAU, objective=0.99)


def test_stable_model_30_days_never_alerts() -> None:
    """30 days of a stable model (event SLO: r² ≤ τ for 99 % of labeled predictions; true bad
    rate 0.5 %, i.e. burn 0.5; ~52–200 labeled predictions a minute, binomial noise), evaluated
    every 5 simulated minutes over all 30 days: no page and no ticket, ever. The figures are how
    close each tier came (the max over evaluations of min(long, short burn) / factor)."""
    rng = np.random.default_rng(101)
    minutes = 30 * DAY // MINUTE
    series = event_series(rng, np.full(minutes, BASE_BAD))
    run = drive(EVENT_SLO, series, range(T0 + HOUR, series.end + 1, 5 * MINUTE))
    budget = run.last.budget_remaining
    print(f"\nstable event SLO, 30 days: {run.evaluations} evaluations, pages={run.count('page')} "
          f"tickets={run.count('ticket')} findings={run.findings}; peak tier ratio {peaks(run)}; "
          f"budget remaining after 28 d {budget:.1%}")
    assert run.evaluations >= 8600
    assert run.findings == 0 and run.fired == []
    # the budget is spent at the burn rate, 0.5: about half of it left after a whole period
    assert 0.4 < budget < 0.6
    # no tier came near its threshold: the 1 h page tier sees burn ≈ 0.5 + noise, far below 14.4
    assert max(run.peak.values()) < 0.8


def test_stable_model_window_slo_never_pages() -> None:
    """30 days of a stable model under a window SLO (hourly RMSE ≤ X for 99 % of hours): the
    error scale follows a ±10 % daily cycle, X is 1.25× the mean RMSE; evaluated on every hour
    of the 30 days and every 5 simulated minutes over the last 3 (a window-SLO evaluation costs
    ~3 ms, 10× an event SLO's): no page and no ticket."""
    rng = np.random.default_rng(102)
    minutes = 30 * DAY // MINUTE
    t = np.arange(minutes) * MINUTE
    sigma2 = (1.0 + 0.1 * np.sin(2 * np.pi * t / DAY)) ** 2
    series = event_series(rng, np.full(minutes, BASE_BAD), sigma2=sigma2)
    slo = Slo("price-hourly-rmse", "price", kind="window", window=HOUR, max_rmse=1.25, objective=0.99)
    times = sorted({*range(T0 + HOUR, series.end + 1, HOUR),
                    *range(series.end - 3 * DAY, series.end + 1, 5 * MINUTE)})
    run = drive(slo, series, times)
    hours = series.sum_sq.reshape(-1, 60).sum(1) / series.n_labeled.reshape(-1, 60).sum(1)
    worst = math.sqrt(hours.max()) / slo.max_rmse
    print(f"\nstable window SLO, 30 days: {run.evaluations} evaluations, pages={run.count('page')} "
          f"tickets={run.count('ticket')}; worst hourly RMSE / X = {worst:.3f}; "
          f"good windows in the period {run.last.good}, bad {run.last.bad}")
    assert run.fired == [] and run.findings == 0
    assert run.last.bad == 0 and run.last.good == 28 * 24
    assert worst < 1.0


# ------------------------------------------------------------------------- fast regression

REG_MINUTE = 28 * 1440 + 13 * 60 + 7  # the regression starts on day 28 at 13:07
STEP = MINUTE  # evaluation step after the regression starts


def _crossing_sigma(b: float, x: float) -> float:
    """Standard deviation (minutes) of the instant the 1 h burn crosses 14.4 at burn b: binomial
    noise of the bad count plus the noise of the traffic mix (how many of the window's labels
    come after the step), over the burn's slope (b − 0.5) per hour."""
    width = PRED_HIGH - PRED_LOW + 1
    mid = (PRED_LOW + PRED_HIGH) / 2
    mu = mid * LABELED  # labels a minute: Binomial(Uniform{55..210}, 0.95)
    sd = math.sqrt(LABELED**2 * (width**2 - 1) / 12 + mid * LABELED * (1 - LABELED))
    labels = 60 * mu
    p_hi, p_lo = b / 100, BASE_BAD
    var_bad = labels * (x * p_hi * (1 - p_hi) + (1 - x) * p_lo * (1 - p_lo))
    sigma_binomial = math.sqrt(var_bad) / labels / 0.01
    sigma_mix = (b - 0.5) * sd / mu * math.sqrt(x * (1 - x) / 60)
    return math.hypot(sigma_binomial, sigma_mix) / ((b - 0.5) / 60)


@pytest.mark.parametrize("burn", [20.0, 15.0])
def test_fast_regression_pages_within_the_workbook_bound(burn: float) -> None:
    """After 28 days of stable data (burn 0.5) the bad rate jumps to burn·1 % (burn 20: 0.5 % →
    20 %; burn 15: → 15 %, just above the 14.4 page factor) on day 28 at 13:07. Evaluating every
    5 minutes over the 6 h before and every minute after, a page fires; the 1 h / 5 m tier's long
    window crosses 14.4 after ≈ (14.4 − 0.5)/(b − 0.5) h ≤ (14.4/b) h, so detection must come
    within (14.4/b)·1 h + one step + a slack of 4σ of the crossing time's noise, and not before the
    noise-free crossing minus that slack. 20 replicate regressions (independent seeds) give the
    distribution. At burn 20 every replicate meets the bound. At burn 15 the 1 h burn settles
    at 15 ± 0.4, barely above 14.4, and the 5 m window (~630 labels) is above 14.4 only ~65 %
    of the time, so detection there is a random delay: the median must meet the bound, every
    replicate must page within the 4 h simulated."""
    exact = (14.4 - BASE_BAD * 100) / (burn - BASE_BAD * 100) * 60  # minutes, noise-free
    bound = 14.4 / burn * 60
    slack = 4 * _crossing_sigma(burn, exact / 60)
    t_reg = T0 + REG_MINUTE * MINUTE
    delays, tickets_before, pages = [], 0, 0
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        rate = np.full(REG_MINUTE + 4 * 60, BASE_BAD)
        rate[REG_MINUTE:] = burn / 100
        series = event_series(rng, rate)
        before = drive(EVENT_SLO, series, range(t_reg - 6 * HOUR, t_reg, 5 * MINUTE))
        assert before.fired == [], before.fired  # the stable days never alerted
        run = drive(EVENT_SLO, series, range(t_reg, t_reg + 4 * HOUR, STEP), stop_at_page=True)
        first = run.first("page")
        assert first is not None, f"seed {seed}: no page within 4 h at burn {burn}"
        pages += 1
        page = next(d for t, s, d in run.fired if s == "page")
        assert "over 1h" in page, page  # the 1 h / 5 m tier
        tickets_before += sum(1 for t, s, _ in run.fired if s == "ticket" and t < first)
        delays.append((first - t_reg) / 60)
    d = np.array(delays)
    limit = bound + STEP / 60 + slack
    within = float(np.mean(d <= limit))
    print(f"\nburn {burn:g}: page after {d[0]:.0f} min in replicate 0; over {len(d)} replicates "
          f"min {d.min():.0f} / median {np.median(d):.0f} / max {d.max():.0f} min; "
          f"Workbook bound (14.4/b)·1h = {bound:.1f} min (noise-free crossing {exact:.1f}), "
          f"+ step {STEP // 60} min + slack {slack:.1f} min = {limit:.1f} min; "
          f"{within:.0%} of replicates within; tickets before the page: {tickets_before}")
    assert pages == 20 and tickets_before == 0
    assert d.min() >= exact - slack  # nothing fires before the window could have crossed
    if burn >= 20:
        assert d.max() <= limit
    else:
        assert np.median(d) <= limit and within >= 0.5


# ----------------------------------------------------------------------------- slow drift


def test_slow_drift_opens_a_ticket_and_never_pages() -> None:
    """After 28 stable days the bad rate rises linearly from 0.5 % to 3.5 % over 4 days (burn
    0.5 → 3.5) and stays there for a day. Evaluated every 5 minutes from day 27 to day 33: a
    ticket opens (first through the 3 d / 6 h tier at burn ≥ 1, ≈ 2 days into the drift) and
    no page ever fires (the page tiers need 6× and 14.4×)."""
    rng = np.random.default_rng(303)
    start, ramp, hold = 28 * 1440, 4 * 1440, 1440
    rate = np.full(start + ramp + hold, BASE_BAD)
    rate[start:start + ramp] = np.linspace(BASE_BAD, 0.035, ramp)
    rate[start + ramp:] = 0.035
    series = event_series(rng, rate)
    t_drift = T0 + start * MINUTE
    run = drive(EVENT_SLO, series, range(t_drift - DAY, series.end + 1, 5 * MINUTE))
    first = run.first("ticket")
    assert first is not None, "the drift never opened a ticket"
    minute = int((first - T0) // MINUTE)
    tier = next(d for t, s, d in run.fired if s == "ticket").split(" over ")[1].split(" ")[0]
    print(f"\nslow drift 0.5 % → 3.5 % over 4 d: first ticket {(first - t_drift) / HOUR:.1f} h into "
          f"the drift (tier {tier}, true burn then {rate[minute] * 100:.2f}), ticket firings "
          f"{run.count('ticket')}, resolutions {len(run.resolved)}, pages {run.count('page')}; "
          f"peak tier ratio {peaks(run)}")
    assert run.count("page") == 0
    assert first > t_drift  # nothing before the drift
    assert run.peak["page-6h"] < 1.0 and run.peak["page-1h"] < 1.0
    # a ticket is firing at the end, when the 1 d burn is ≈ 3.5
    assert any(t.firing and t.tier.severity == "ticket" for t in run.last.tiers)


# ------------------------------------------------------------------------ labels stopping


class SimStore:
    """Generated traffic, ingested slice by slice into a real store as simulated time passes:
    `advance(t)` ingests the predictions made and the labels arrived before `t`."""

    def __init__(self, path: Path, rng: np.random.Generator, since: float, until: float, *,
                 per_minute: float, cohorts: dict[str, tuple[float, float]] | None = None,
                 label_delay: tuple[float, float] = (60.0, 600.0), labels_stop: float | None = None,
                 scale: Any = None, model: str = "price") -> None:
        n = int(rng.poisson(per_minute * (until - since) / MINUTE))
        self.ts = np.sort(rng.uniform(since, until, n))
        cohorts = cohorts or {"all": (1.0, 1.0)}
        names = list(cohorts)
        shares = np.array([cohorts[c][0] for c in names])
        which = rng.choice(len(names), n, p=shares / shares.sum())
        self.cohort = np.array(names)[which]
        sigma = np.array([cohorts[c][1] for c in names])[which]
        if scale is not None:  # a change of error scale: scale(ts, cohort) multiplies σ
            sigma = sigma * scale(self.ts, self.cohort)
        self.y_true = rng.normal(50.0, 10.0, n)
        self.y_pred = self.y_true + rng.normal(0.0, 1.0, n) * sigma
        self.label_ts = self.ts + rng.uniform(*label_delay, n)
        self.has_label = np.ones(n, bool) if labels_stop is None else self.label_ts < labels_stop
        self.ids = np.char.add("p", np.arange(n).astype(str))
        self.model = model
        self.store = Store(path)
        self.cursor = -math.inf

    def _ingest(self, kind: str, columns: dict[str, Any]) -> None:
        table = pa.table(columns)
        if table.num_rows == 0:
            return
        table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype="int64")))
        result = self.store.ingest_batches(kind, table.to_batches())
        assert not result.rejects, result.rejects[:3]

    @staticmethod
    def _stamp(t: np.ndarray) -> pa.Array:
        return pa.array((t * 1e6).astype("int64"), pa.timestamp("us", tz="UTC"))

    def advance(self, until: float) -> None:
        p = (self.ts >= self.cursor) & (self.ts < until)
        self._ingest("predictions", {
            "prediction_id": self.ids[p], "ts": self._stamp(self.ts[p]),
            "model": np.full(p.sum(), self.model), "version": np.full(p.sum(), "v1"),
            "region": self.cohort[p], "y_pred": self.y_pred[p],
        })
        lab = self.has_label & (self.label_ts >= self.cursor) & (self.label_ts < until)
        self._ingest("labels", {
            "prediction_id": self.ids[lab], "y_true": self.y_true[lab],
            "label_ts": self._stamp(self.label_ts[lab]),
        })
        self.cursor = until

    def labels_in(self, lo: float, hi: float, *, arrived_by: float, cohort: str | None = None) -> int:
        """Labeled predictions made in [lo, hi) whose label arrived before `arrived_by`."""
        keep = (self.ts >= lo) & (self.ts < hi) & self.has_label & (self.label_ts < arrived_by)
        if cohort is not None:
            keep &= self.cohort == cohort
        return int(keep.sum())


def names(report: Any) -> list[str]:
    return sorted({f.labels["alertname"] for f in report.findings})


def test_labels_stopping_gates_slo_and_mse_alerts_and_freshness_fires(tmp_path: Path) -> None:
    """Labels stop after day 28 while predictions go on.

    Series part: minutes from day 28 on get n_labeled = 0; evaluating every 5 minutes over the
    2 days of the outage gives no slo_burn finding at all (windows without labels are neither
    good nor bad), burn rates of windows inside the outage are unknown (None), not 0, and the
    budget does not move.
    Store part: 3 days of traffic (10 predictions a minute, labels 1–10 minutes later), then no
    label arrives after the stop; `Monitor.evaluate` after each hour of simulated traffic (ingested
    as it happens): label_freshness (max_age 2 h) fires once the last label is > 2 h old;
    delta_mse (window 1 h) and slo_burn never fire."""
    rng = np.random.default_rng(404)
    stop = 28 * 1440
    series = event_series(rng, np.full(stop + 2 * 1440, BASE_BAD), labels_stop=stop)
    t_stop = T0 + stop * MINUTE
    run = drive(EVENT_SLO, series, range(t_stop - HOUR, series.end + 1, 5 * MINUTE))
    inside = evaluate_slo(EVENT_SLO, series, t_stop + 7 * HOUR)
    before = evaluate_slo(EVENT_SLO, series, t_stop)
    after = run.last
    assert run.findings == 0 and run.fired == []
    assert inside.burn_rates[HOUR] is None and inside.burn_rates[6 * HOUR] is None
    assert inside.tiers[0].long_burn is None and inside.tiers[0].short_burn is None
    # hours without labels count neither way: the same good/bad totals minus the 2 days that
    # slid out of the period, which hold ~2 % of the budget's events
    assert after.good + after.bad < before.good + before.bad
    assert abs(after.budget_remaining - before.budget_remaining) < 0.1

    start = T0
    s_stop = T0 + 3 * DAY
    sim = SimStore(tmp_path / "s.duckdb", rng, start, s_stop + 8 * HOUR, per_minute=10,
                   labels_stop=s_stop)
    slo = Slo("price-accuracy", "price", threshold=TAU, objective=0.99)
    rules = (
        AlertRule("price-labels-stale", "label_freshness", "price", max_age=2 * HOUR),
        AlertRule("price-mse-up", "delta_mse", "price", window=HOUR, max_increase_pct=10.0),
    )
    sim.advance(s_stop - 2 * HOUR)
    monitor = Monitor(MonitorConfig(slos=(slo,), rules=rules), sim.store.con)
    seen = []
    for offset in (-1.0, 0.5, 1.5, 2.5, 4.0, 6.0, 8.0):
        at = s_stop + offset * HOUR
        sim.advance(at)
        report = monitor.evaluate(utc(at), notify=False)
        seen.append((offset, names(report)))
    last_label = float(sim.label_ts[sim.has_label].max())
    fresh = [o for o, n in seen if "price-labels-stale" in n]
    print(f"\nlabels stop: series {run.evaluations} evaluations over the 2-day outage, slo_burn "
          f"findings {run.findings}, budget {before.budget_remaining:.1%} → {after.budget_remaining:.1%}; "
          f"store: last label {(s_stop - last_label) / 60:.1f} min before the stop, alerts by hour after "
          f"the stop {seen}; freshness first at +{fresh[0]:g} h")
    assert [o for o, n in seen if n] == fresh == [2.5, 4.0, 6.0, 8.0]
    for _, found in seen:
        assert "price-mse-up" not in found and "slo_burn" not in found


# --------------------------------------------------------------------------- maintenance


@dataclass
class Recorder:
    """A sender that records each notification and reports it delivered."""

    sent: list[tuple[dt.datetime, Any]] = field(default_factory=list)

    def send(self, notifier: Notifier, payload: Any, *, group_key: str = "", n_alerts: int | None = None,
             at: dt.datetime | None = None) -> Delivery:
        assert at is not None
        self.sent.append((at, payload))
        return Delivery(at, notifier.name, group_key, "sent", 1, 200, None, n_alerts or 0, payload)


def test_declared_maintenance_mutes_then_notifies_after_it_ends(tmp_path: Path) -> None:
    """3 days of stable traffic (20 predictions a minute), then at R the model's MSE rises by
    50 % and stays up; a maintenance window (a declared label backfill) covers [R, R + 2 h).
    Evaluating every 10 minutes from R − 30 min to R + 3 h, with the data ingested as it happens
    and a `Dispatcher` (group_wait 30 s, group_interval 5 min) behind the monitor: the delta_mse
    alert fires inside the window, is reported muted ("maintenance: …") and nothing is sent;
    at the first evaluation after the window it is notified, firing."""
    rng = np.random.default_rng(505)
    r = T0 + 3 * DAY
    ends = r + 2 * HOUR

    def scale(ts: np.ndarray, cohort: np.ndarray) -> np.ndarray:
        return np.where(ts >= r, math.sqrt(1.5), 1.0)

    sim = SimStore(tmp_path / "s.duckdb", rng, T0, r + 3 * HOUR, per_minute=20,
                   label_delay=(30.0, 120.0), scale=scale)
    window = Maintenance("price", utc(r), utc(ends), reason="label backfill")
    config = MonitorConfig(
        alerting=AlertingConfig(group_wait=30, group_interval=300),
        rules=(AlertRule("price-mse-up", "delta_mse", "price", severity="page", window=1800,
                         max_increase_pct=10.0),),
        notifiers=(Notifier("oncall", "webhook", "http://127.0.0.1:9/hook"),),
        maintenance=(window,),
    )
    sender = Recorder()
    dispatcher = Dispatcher(config.alerting, config.notifiers, silences=config.silences,
                            maintenance=config.maintenance, sender=sender)
    sim.advance(r - HOUR)
    monitor = Monitor(config, sim.store.con, dispatcher=dispatcher)
    first_fire = None
    muted_evaluations = 0
    for at in range(r - 30 * MINUTE, r + 3 * HOUR + 1, 10 * MINUTE):
        sim.advance(at)
        report = monitor.evaluate(utc(at))
        firing = [a for a in report.alerts if a.state == "firing"]
        if firing and first_fire is None:
            first_fire = at
        for a in firing:
            if at < ends:
                assert report.muted.get(a.fingerprint, "").startswith("maintenance"), report.muted
                muted_evaluations += 1
            else:
                assert a.fingerprint not in report.muted
        if at < ends:
            assert sender.sent == [], "a notification went out during the maintenance window"
    assert first_fire is not None and r <= first_fire < ends
    assert sender.sent, "nothing was notified after the maintenance window"
    sent_at, payload = sender.sent[0]
    sent_at_s = sent_at.timestamp()
    logged = sim.store.con.execute(
        "SELECT muted_by FROM alert_log WHERE alertname = 'price-mse-up' AND state = 'firing'").fetchall()
    print(f"\nmaintenance: delta_mse fired {(first_fire - r) / 60:.0f} min after the step (inside "
          f"the window), muted at {muted_evaluations} evaluations, first notification "
          f"{(sent_at_s - ends) / 60:.0f} min after the window ended ({len(sender.sent)} sent in all); "
          f"alert_log muted_by {logged}")
    assert ends <= sent_at_s <= ends + config.alerting.group_interval
    assert payload["status"] == "firing"
    assert [a["labels"]["alertname"] for a in payload["alerts"]] == ["price-mse-up"]
    assert logged and logged[0][0].startswith("maintenance")


# ------------------------------------------------------------------ cohort false discoveries


def _cohort_round(rng: np.random.Generator, n: np.ndarray, sigma: np.ndarray, effect: np.ndarray,
                  base_factor: int) -> list[float]:
    """One evaluation of 20 cohorts the way `cohort_regression` tests them: each cohort's MSE of
    squared errors (r ~ N(0, σ²), so r²/σ² ~ χ²₁) and its standard error sqrt(var(r²)/n),
    against a baseline from an independent sample `base_factor` times larger, with its SE."""
    pvalues = []
    for cur_n, s, e in zip(n, sigma, effect):
        cur = (s * rng.standard_normal(cur_n)) ** 2 * e
        base = (s * rng.standard_normal(cur_n * base_factor)) ** 2
        pvalues.append(regression_pvalue(
            float(cur.mean()), math.sqrt(cur.var(ddof=1) / cur_n),
            float(base.mean()), math.sqrt(base.var(ddof=1) / len(base)), 0.0,
        ))
    return pvalues


def test_cohort_false_discoveries_and_power() -> None:
    """20 cohorts, no true change, 500 evaluation rounds: each round draws every cohort's
    squared errors (n 200–2000, σ 0.5–2, r² ~ σ²χ²₁: skewed, heavy right tail) and a baseline
    from an independent sample 5× larger, tests each with `regression_pvalue` (margin 0) and
    applies `benjamini_hochberg` at q = 0.05. Under the global null every discovery is false,
    so the fraction of rounds with any discovery is the FDR: it must be ≤ q + 3 binomial SEs.
    Power: with one of the 20 cohorts at +30 % MSE and n = 2000 (300 rounds), that cohort is
    discovered in ≥ 90 % of rounds, and the mean false-discovery proportion stays ≤ q."""
    q, m = 0.05, 20
    rng = np.random.default_rng(606)
    rounds = 500
    any_discovery = 0
    null_p05 = 0
    for _ in range(rounds):
        n = rng.integers(200, 2001, m)
        sigma = rng.uniform(0.5, 2.0, m)
        p = _cohort_round(rng, n, sigma, np.ones(m), 5)
        any_discovery += bool(benjamini_hochberg(p, q).any())
        null_p05 += sum(x <= 0.05 for x in p)
    fdr = any_discovery / rounds
    tolerance = 3 * math.sqrt(q * (1 - q) / rounds)
    per_test = null_p05 / (rounds * m)

    power_rounds = 300
    found_true, fdp = 0, []
    for _ in range(power_rounds):
        n = rng.integers(200, 2001, m)
        n[0] = 2000
        sigma = rng.uniform(0.5, 2.0, m)
        effect = np.ones(m)
        effect[0] = 1.3
        found = benjamini_hochberg(_cohort_round(rng, n, sigma, effect, 5), q)
        found_true += bool(found[0])
        fdp.append(found[1:].sum() / max(found.sum(), 1))
    power = found_true / power_rounds
    print(f"\ncohorts: global-null FDR (rounds with any discovery) {fdr:.3f} over {rounds} rounds "
          f"(limit q + 3 SE = {q + tolerance:.3f}); single-test rate at p ≤ 0.05: {per_test:.4f}; "
          f"power for +30 % at n = 2000: {power:.1%} over {power_rounds} rounds, mean FDP {np.mean(fdp):.4f}")
    assert fdr <= q + tolerance
    assert per_test <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / (rounds * m))
    assert power >= 0.9
    assert np.mean(fdp) <= q


# ------------------------------------------------------------------ cohort step in a store


def test_cohort_step_fires_for_that_cohort_only(tmp_path: Path) -> None:
    """4 days of traffic (30 predictions a minute) over 4 regions with different shares and
    error scales; at S region "b" (30 % of traffic) gets +30 % MSE, i.e. +12.6 % for the whole
    model. Ingesting 10 minutes of traffic at a time for 3 h after S and evaluating after each
    slice (both rules over a 2 h window, baselines from the trailing data): cohort_regression
    fires for region=b and only b, delta_mse (max_increase_pct 3) fires too, later; the figures
    are the labels in the window (all, and since the step) when each first fires."""
    rng = np.random.default_rng(707)
    s = T0 + 4 * DAY
    cohorts = {"a": (0.4, 1.0), "b": (0.3, 1.5), "c": (0.2, 0.8), "d": (0.1, 2.0)}

    def scale(ts: np.ndarray, cohort: np.ndarray) -> np.ndarray:
        return np.where((ts >= s) & (cohort == "b"), math.sqrt(1.3), 1.0)

    sim = SimStore(tmp_path / "s.duckdb", rng, T0, s + 3 * HOUR, per_minute=30, cohorts=cohorts,
                   label_delay=(60.0, 300.0), scale=scale)
    window = 2 * HOUR
    rules = (
        AlertRule("price-cohort", "cohort_regression", "price", window=window, by="region",
                  max_increase_pct=5.0),
        AlertRule("price-mse-up", "delta_mse", "price", window=window, max_increase_pct=3.0),
    )
    sim.advance(s)
    monitor = Monitor(MonitorConfig(rules=rules), sim.store.con)
    quiet = monitor.evaluate(utc(s), notify=False)
    assert quiet.findings == [], [f.labels for f in quiet.findings]
    first: dict[str, tuple[float, int, int, int]] = {}
    cohorts_found: set[str] = set()
    for at in range(s + 10 * MINUTE, s + 3 * HOUR + 1, 10 * MINUTE):
        sim.advance(at)
        report = monitor.evaluate(utc(at), notify=False)
        for f in report.findings:
            name = f.labels["alertname"]
            if name == "price-cohort":
                cohorts_found.add(f.labels["cohort"])
            if name not in first:
                first[name] = (
                    (at - s) / 60,
                    sim.labels_in(at - window, at, arrived_by=at),
                    sim.labels_in(s, at, arrived_by=at),
                    sim.labels_in(s, at, arrived_by=at, cohort="b"),
                )
    final = {(f.labels["alertname"], f.labels.get("cohort")) for f in report.findings}
    fig = "; ".join(f"{k} first after {v[0]:.0f} min, {v[1]} labels in the window ({v[2]} since the "
                    f"step, {v[3]} of them in b)" for k, v in sorted(first.items()))
    print(f"\ncohort step +30 % on b: {fig}; cohorts ever found {sorted(cohorts_found)}")
    assert cohorts_found == {"b"}
    assert set(first) == {"price-cohort", "price-mse-up"}
    assert ("price-cohort", "b") in final and ("price-mse-up", None) in final


# ---------------------------------------------------- window SLOs off the window boundaries


def test_window_slo_regression_pages() -> None:
    """A window SLO (hourly RMSE ≤ 1.25, objective 0.99) whose model regresses to RMSE 1.5 on
    day 28 at 13:00: every hour from then on is bad. Evaluating every 5 minutes at instants that
    are not hour-aligned (17 s past, as a server started at any time), a page must fire within
    the first bad hour's end + one hour + one step."""
    rng = np.random.default_rng(808)
    reg = 28 * 1440 + 13 * 60
    minutes = reg + 6 * 60
    sigma2 = np.ones(minutes)
    sigma2[reg:] = 1.5**2
    series = event_series(rng, np.full(minutes, BASE_BAD), sigma2=sigma2)
    slo = Slo("price-hourly-rmse", "price", kind="window", window=HOUR, max_rmse=1.25, objective=0.99)
    t_reg = T0 + reg * MINUTE
    run = drive(slo, series, range(t_reg - HOUR + 17, series.end, 5 * MINUTE), stop_at_page=True)
    first, ticket = run.first("page"), run.first("ticket")
    print(f"\nwindow SLO regression: page after "
          f"{'never' if first is None else f'{(first - t_reg) / 60:.0f} min'}, ticket after "
          f"{'never' if ticket is None else f'{(ticket - t_reg) / 60:.0f} min'}")
    assert first is not None and first - t_reg <= 2 * HOUR + 5 * MINUTE


def test_default_tiers_are_the_workbook_table() -> None:
    """The simulations above assume the SRE Workbook's table 5-8."""
    assert [(t.severity, t.factor, t.long, t.short) for t in DEFAULT_TIERS] == [
        ("page", 14.4, HOUR, 5 * MINUTE), ("page", 6.0, 6 * HOUR, 30 * MINUTE),
        ("ticket", 3.0, DAY, 2 * HOUR), ("ticket", 1.0, 3 * DAY, 6 * HOUR),
    ]
