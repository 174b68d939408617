"""The server's evaluation loop: every `[alerting] interval`, SLOs and alert rules, then notifications.

Runs in its own thread on its own DuckDB cursor (the ingest thread keeps writing beside it) and
keeps the latest report for `/v1/alerts`, `/v1/slo` and the `msewatch_slo_*` / `msewatch_alerts`
series of `/metrics`. A failing pass is logged and retried at the next interval; it never stops
ingestion.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from msewatch.config import Config
from msewatch.monitor.engine import EvaluationReport, Monitor
from msewatch.notify.dispatch import Dispatcher
from msewatch.store import Store
from msewatch.units import format_duration

__all__ = ["MonitorLoop"]

log = logging.getLogger("msewatch.monitor")


class MonitorLoop:
    def __init__(self, store: Store, config: Config) -> None:
        self.config = config
        self.cursor = store.reader()
        monitor_config = config.monitor
        self.dispatcher = Dispatcher(monitor_config.alerting, monitor_config.notifiers,
                                     silences=monitor_config.silences, maintenance=monitor_config.maintenance)
        self.monitor = Monitor(monitor_config, self.cursor.con, dispatcher=self.dispatcher)
        self.lock = threading.Lock()  # one pass at a time, and API reads of alert state between passes
        self.latest: EvaluationReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.failures = 0
        #: waits until answered requests are in the rollups (the server's committer sets it)
        self.settle: Callable[[], object] | None = None

    @property
    def enabled(self) -> bool:
        m = self.config.monitor
        return bool(m.slos or m.rules)

    def start(self) -> None:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="msewatch-monitor", daemon=True)
            self._thread.start()

    def run_once(self, at: dt.datetime | None = None) -> EvaluationReport:
        if self.settle is not None:
            self.settle()
        with self.lock:
            report = self.monitor.evaluate(at)
            self.latest = report
            self.passes += 1
            return report

    def _run(self) -> None:
        interval = self.config.monitor.alerting.interval
        while not self._stop.is_set():
            try:
                report = self.run_once()
                for error in report.errors:
                    log.warning("monitor: %s", error)
            except Exception:  # keep evaluating: the next pass may succeed
                self.failures += 1
                log.exception("monitor pass failed")
            self._stop.wait(interval)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.dispatcher.close()
        self.cursor.close()

    # ------------------------------------------------------------------ Prometheus

    def collect(self) -> Iterator[Any]:
        report = self.latest
        budget = GaugeMetricFamily("msewatch_slo_budget_remaining",
                                   "Error budget left over the SLO period (1 = untouched, below 0 = overspent).",
                                   labels=["slo", "model"])
        burn = GaugeMetricFamily("msewatch_slo_burn_rate", "Error-budget burn rate over a window (1 = on budget).",
                                 labels=["slo", "model", "window"])
        alerts = GaugeMetricFamily("msewatch_alerts", "Alerts by name, severity and state (muted ones included).",
                                   labels=["alertname", "model", "severity", "state"])
        if report is not None:
            for s in report.statuses:
                if s.budget_remaining is not None:
                    budget.add_metric([s.slo.name, s.slo.model], s.budget_remaining)
                for window, value in s.burn_rates.items():
                    if value is not None:
                        burn.add_metric([s.slo.name, s.slo.model, format_duration(window)], value)
            counts: dict[tuple[str, str, str, str], int] = {}
            for a in report.alerts:
                key = (a.name, a.labels.get("model", ""), a.labels.get("severity", ""), a.state)
                counts[key] = counts.get(key, 0) + 1
            for key, n in sorted(counts.items()):
                alerts.add_metric(list(key), n)
        yield budget
        yield burn
        yield alerts
