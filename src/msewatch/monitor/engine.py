"""One evaluation pass: SLO statuses and rule findings → alert states → notifications, persisted.

The server runs `Monitor.evaluate` every `[alerting] interval`; `msewatch alerts evaluate` runs
it once (cron and batch users). Alert states live in the store (`alert_state`, with every
transition in `alert_log`), so a restart or the next cron run continues where the last one
stopped: a pending alert keeps its `for` clock, a firing alert is not announced twice.
Silences (config and `msewatch silence add`) and declared maintenance windows mute
notifications; muted alerts still change state and are listed with what muted them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from msewatch.monitor.alerts import Alert, AlertBook, Finding
from msewatch.monitor.baselines import ensure_tables as ensure_baseline_tables
from msewatch.monitor.config import MonitorConfig, Silence
from msewatch.monitor.rules import RuleEvaluator
from msewatch.monitor.series import load_series
from msewatch.monitor.slo import SloStatus, evaluate_slo, series_span, slo_findings
from msewatch.store._rollups import track_thresholds

__all__ = [
    "MONITOR_DDL", "EvaluationReport", "Monitor", "add_silence", "ensure_tables", "expire_silence", "list_silences",
    "stored_silences",
]

log = logging.getLogger("msewatch.monitor")

MONITOR_DDL = """
CREATE TABLE IF NOT EXISTS alert_state (
    fingerprint VARCHAR PRIMARY KEY,
    state VARCHAR NOT NULL,
    labels VARCHAR NOT NULL,
    annotations VARCHAR NOT NULL,
    value DOUBLE,
    active_since TIMESTAMPTZ NOT NULL,
    starts_at TIMESTAMPTZ,
    ends_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    for_seconds INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_log (
    "at" TIMESTAMPTZ NOT NULL,
    fingerprint VARCHAR NOT NULL,
    alertname VARCHAR,
    model VARCHAR,
    severity VARCHAR,
    state VARCHAR NOT NULL,
    value DOUBLE,
    muted_by VARCHAR,
    labels VARCHAR NOT NULL,
    annotations VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    "at" TIMESTAMPTZ NOT NULL,
    notifier VARCHAR NOT NULL,
    group_key VARCHAR,
    status VARCHAR NOT NULL,
    attempts INTEGER,
    http_status INTEGER,
    error VARCHAR,
    n_alerts INTEGER,
    payload VARCHAR
);
CREATE SEQUENCE IF NOT EXISTS silence_ids START 1;
CREATE TABLE IF NOT EXISTS silences (
    id BIGINT PRIMARY KEY DEFAULT nextval('silence_ids'),
    matchers VARCHAR NOT NULL,
    starts TIMESTAMPTZ NOT NULL,
    ends TIMESTAMPTZ NOT NULL,
    comment VARCHAR,
    created_by VARCHAR,
    created_at TIMESTAMPTZ NOT NULL
);
"""


def ensure_tables(con: Any) -> None:
    con.execute(MONITOR_DDL)
    ensure_baseline_tables(con)


@dataclass
class EvaluationReport:
    at: dt.datetime
    statuses: list[SloStatus]
    findings: list[Finding]
    changed: list[Alert]
    alerts: list[Alert]
    muted: dict[str, str] = field(default_factory=dict)  # fingerprint → what mutes it
    deliveries: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Monitor:
    """Evaluates the configured SLOs and rules on a store connection and keeps alert state."""

    def __init__(self, config: MonitorConfig, con: Any, *, dispatcher: Any = None) -> None:
        self.config = config
        self.con = con
        self.dispatcher = dispatcher
        ensure_tables(con)
        self._track_thresholds()
        self.rules = RuleEvaluator(con)
        self.book = AlertBook(self._load_book())

    def _track_thresholds(self) -> None:
        by_model: dict[str, set[float]] = {}
        for slo in self.config.slos:
            if slo.kind == "event" and slo.threshold is not None:
                by_model.setdefault(slo.model, set()).add(slo.threshold)
        for model, thresholds in by_model.items():
            self.con.execute("BEGIN")
            try:
                track_thresholds(self.con, model, sorted(thresholds))
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise

    def _load_book(self) -> dict[str, Alert]:
        out = {}
        for fp, state, labels, notes, value, since, starts, ends, updated, for_s in self.con.execute(
            "SELECT * FROM alert_state"
        ).fetchall():
            out[fp] = Alert(json.loads(labels), json.loads(notes), state, since, value, starts, ends, updated, for_s)
        return out

    # ------------------------------------------------------------------ reading

    def slo_statuses(self, at: dt.datetime) -> list[SloStatus]:
        out = []
        for slo in self.config.slos:
            lo, hi = series_span(slo, at)
            series = load_series(self.con, slo.model, lo, hi, version=slo.version,
                                 threshold=slo.threshold if slo.kind == "event" else None)
            out.append(evaluate_slo(slo, series, at.timestamp()))
        return out

    def silences(self, at: dt.datetime) -> list[Silence]:
        return [*self.config.silences, *stored_silences(self.con, active_at=at)]

    def muted_by(self, alert: Alert, at: dt.datetime, silences: Sequence[Silence]) -> str | None:
        for m in self.config.maintenance:
            if m.covers(alert.labels, at):
                return f"maintenance: {m.reason or m.model}"
        for s in silences:
            if s.mutes(alert.labels, at):
                return f"silence: {s.comment or s.created_by}"
        return None

    # ------------------------------------------------------------------ one pass

    def evaluate(self, at: dt.datetime | None = None, *, notify: bool = True) -> EvaluationReport:
        """Evaluate everything at `at` (now), update and persist alert states, notify."""
        at = at or dt.datetime.now(dt.timezone.utc)
        findings: list[Finding] = []
        errors: list[str] = []
        statuses = []
        try:
            statuses = self.slo_statuses(at)
        except Exception as exc:  # a broken SLO must not stop the rules
            log.exception("SLO evaluation failed")
            errors.append(f"SLOs: {exc}")
        for status in statuses:
            findings.extend(slo_findings(status))
        for rule in self.config.rules:
            try:
                findings.extend(self.rules.findings(rule, at))
            except Exception as exc:
                log.exception("rule %s failed", rule.name)
                errors.append(f"{rule.name}: {exc}")
        changed = self.book.update(findings, at)
        silences = self.silences(at)
        alerts = list(self.book.alerts.values())
        muted = {a.fingerprint: why for a in alerts if (why := self.muted_by(a, at, silences))}
        self._persist(changed, at, muted)
        report = EvaluationReport(at, statuses, findings, changed, alerts, muted, errors=errors)
        if notify and self.dispatcher is not None:
            if hasattr(self.dispatcher, "set_silences"):
                self.dispatcher.set_silences(silences)
            report.deliveries = list(self.dispatcher.tick(alerts, at))
            self._log_deliveries(report.deliveries)
        return report

    def _persist(self, changed: list[Alert], at: dt.datetime, muted: dict[str, str]) -> None:
        self.con.execute("BEGIN")
        try:
            self.con.execute("DELETE FROM alert_state")
            for a in self.book.alerts.values():
                self.con.execute(
                    "INSERT INTO alert_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [a.fingerprint, a.state, json.dumps(dict(a.labels)), json.dumps(dict(a.annotations)),
                     _finite(a.value), a.active_since, a.starts_at, a.ends_at, a.updated_at, a.for_seconds],
                )
            for a in changed:
                self.con.execute(
                    "INSERT INTO alert_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [at, a.fingerprint, a.labels.get("alertname"), a.labels.get("model"),
                     a.labels.get("severity"), a.state, _finite(a.value), muted.get(a.fingerprint),
                     json.dumps(dict(a.labels)), json.dumps(dict(a.annotations))],
                )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def _log_deliveries(self, deliveries: Sequence[Any]) -> None:
        for d in deliveries:
            self.con.execute(
                "INSERT INTO notifications VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [d.at, d.notifier, d.group_key, d.status, d.attempts, d.http_status, d.error, d.n_alerts,
                 json.dumps(d.payload, default=str)],
            )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------------- silences in the store
# (the monitor's tables exist once a `Monitor` was made on the store, or `ensure_tables` ran)


def stored_silences(con: Any, *, active_at: dt.datetime | None = None) -> list[Silence]:
    where, params = ("WHERE ends > $t", {"t": active_at}) if active_at else ("", {})
    rows = con.execute(
        f"SELECT id, matchers, starts, ends, comment, created_by FROM silences {where} ORDER BY id", params
    ).fetchall()
    return [Silence(json.loads(m), s, e, c or "", f"{by or 'cli'} #{i}") for i, m, s, e, c, by in rows]


def list_silences(con: Any) -> list[dict[str, Any]]:
    rows = con.execute("SELECT id, matchers, starts, ends, comment, created_by, created_at FROM silences ORDER BY id").fetchall()
    return [{"id": i, "matchers": json.loads(m), "starts": s, "ends": e, "comment": c, "created_by": by, "created_at": at}
            for i, m, s, e, c, by, at in rows]


def add_silence(con: Any, matchers: dict[str, str], starts: dt.datetime, ends: dt.datetime, *,
                comment: str = "", created_by: str = "cli") -> int:
    now = dt.datetime.now(dt.timezone.utc)
    return int(con.execute(
        "INSERT INTO silences (matchers, starts, ends, comment, created_by, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        [json.dumps(matchers, sort_keys=True), starts, ends, comment, created_by, now],
    ).fetchall()[0][0])


def expire_silence(con: Any, silence_id: int) -> bool:
    """End a silence now; False when there is no such silence."""
    now = dt.datetime.now(dt.timezone.utc)
    found = con.execute("UPDATE silences SET ends = least(ends, ?) WHERE id = ? RETURNING id", [now, silence_id]).fetchall()
    return bool(found)
