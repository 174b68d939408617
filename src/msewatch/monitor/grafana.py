"""Grafana dashboards over the Prometheus series of `msewatch serve` (`msewatch grafana`).

Three dashboards, written as Grafana dashboard JSON (schema 39) with provisioning files:

- **Executive** (`msewatch-executive`, last 30 days): RMSE over 30 and 90 days, the daily RMSE
  trend, RMSE per cohort × day (a heatmap per `[metrics] segments` label, or per version when
  there is none), versions ranked by ΔMSE against the model's previous week, error-budget
  remaining and burn rate per SLO.
- **On-call** (`msewatch-oncall`, last 24 hours): rolling MSE over 1h, 6h and 24h with the SLO
  limits and the error budget overlaid, burn rate of the event SLOs computed from the
  histogram, canary vs control (MSE by version over 1h, shadow traffic), active alerts with
  their runbooks.
- **Debug** (`msewatch-debug`, last 6 hours): the squared-error histogram and its quantiles
  (p50/p90/p99) beside the MSE, MAE and bias, label coverage and label latency, ingest rejects
  by reason, duplicates and queue depth, request rate and latency.

Every dashboard is templated by `datasource`, `model`, `version` and one variable per segment
label, and carries three annotation queries: **version changes** (a `(model, version)` whose
first predictions arrived in the last 5 minutes), **label bursts** (more than 100 labels in
5 minutes and more than 10× the previous day's 5-minute average: backfills, mostly) and, when
the config declares any, its `[[maintenance]]` windows.

The expressions are raw PromQL over the series of `/metrics` (see
`msewatch.server.exposition`), so the dashboards work without the recording rules of
`msewatch rules`. MSE is always `rate(_sum) / rate(_count)` of `msewatch_squared_error` (a ratio
of sums, never a mean of ratios), guarded by `> 0` so an hour without labels is a gap rather
than NaN. Notes on what Prometheus can and cannot express here:

- "ΔMSE vs baseline": the baselines of `msewatch baseline set` live in the store, not in
  Prometheus; the dashboard's baseline is the model's MSE (all versions) over the 7 days that
  ended a week ago (`[7d] offset 7d`), and ΔMSE = MSE of the version over the dashboard range
  divided by it, minus 1. It is empty until Prometheus holds two weeks of history.
- Counters count at label arrival, so "label coverage" over a window is labels landing per
  prediction made (equal to the coverage when the label delay is steady); the "since the server
  started" ratio beside it is exact for the process's lifetime.
- `msewatch_alerts` carries no runbook; the alerts table attaches the runbooks of the config
  (the SLOs' and rules', or the server's defaults) with `label_replace`, by alert name and
  model. Several SLOs of one model share the alert name `slo_burn`: their runbooks are joined.
- `msewatch_labels_total`, the ingest, queue and HTTP series are per server, not per model:
  those panels ignore `$model`.

`grafana_dashboards(config)` returns the three dashboards (dicts), `provisioning_files(...)` the
two YAML files, `write_grafana(config, out)` writes them all, `grafana_notes(config)` says what
the config leaves out.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from msewatch.config import Config
from msewatch.errors import InputError
from msewatch.monitor.config import Slo
from msewatch.monitor.promrules import bucket_le
from msewatch.monitor.rules import RULE_RUNBOOKS
from msewatch.monitor.slo import SLO_RUNBOOK

__all__ = [
    "BASELINE",
    "DASHBOARDS",
    "SCHEMA_VERSION",
    "check_uid",
    "grafana_dashboards",
    "grafana_notes",
    "provisioning_files",
    "runbooks",
    "write_grafana",
]

SCHEMA_VERSION = 39
DASHBOARDS = {  # key → (uid, title, default time range, refresh)
    "executive": ("msewatch-executive", "msewatch · Executive", "now-30d", "5m"),
    "oncall": ("msewatch-oncall", "msewatch · On-call", "now-24h", "1m"),
    "debug": ("msewatch-debug", "msewatch · Debug", "now-6h", "1m"),
}
BASELINE = ("7d", "7d")  # (window, offset): the model's MSE over the 7 days that ended a week ago
BURST_MIN_LABELS = 100  # label-burst annotation: at least this many labels in 5 minutes…
BURST_FACTOR = 10  # …and this many times the previous day's 5-minute average
NEW_VERSION_WINDOW = "5m"
DS = {"type": "prometheus", "uid": "${datasource}"}

_H = "msewatch_squared_error"
_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_LIVE = 'state=~"firing|pending"'


def check_uid(uid: str) -> str:
    """A Grafana datasource uid: 1 to 40 letters, digits, `-` or `_`."""
    if not _UID.match(uid):
        raise InputError(f"--datasource-uid {uid!r}: expected 1 to 40 letters, digits, '-' or '_'.")
    return uid


# --------------------------------------------------------------------------------- PromQL


def _quote(text: str) -> str:
    """A PromQL string literal (Go escapes, which JSON's are); `$` would be a Grafana variable."""
    return json.dumps(text.replace("$", "＄"), ensure_ascii=False)


def _num(x: float) -> str:
    r = repr(float(x))
    return r.removesuffix(".0")


class _Promql:
    """The selectors and expressions of the dashboards, given the segment labels."""

    def __init__(self, segments: Sequence[str]) -> None:
        self.segments = tuple(segments)
        self.variables = {s: _variable_name(s) for s in self.segments}

    def sel(self, *, version: bool = True, segments: bool = True, model: bool = True,
            extra: Iterable[str] = ()) -> str:
        parts = list(extra)
        if model:
            parts.append('model=~"$model"')
        if version:
            parts.append('version=~"$version"')
        if segments:
            parts += [f'{s}=~"${self.variables[s]}"' for s in self.segments]
        return "{" + ", ".join(parts) + "}"

    @staticmethod
    def ratio(num: str, den: str, by: str, window: str, sel: str, *, fn: str = "rate", offset: str = "") -> str:
        """sum(fn(num[window])) / (sum(fn(den[window])) > 0), by `by`."""
        agg = f"sum by ({by})" if by else "sum"
        rng = f"[{window}]" + (f" offset {offset}" if offset else "")
        return f"{agg} ({fn}({num}{sel}{rng}))\n/\n({agg} ({fn}({den}{sel}{rng})) > 0)"

    def mse(self, by: str, window: str, sel: str | None = None, *, fn: str = "rate") -> str:
        return self.ratio(f"{_H}_sum", f"{_H}_count", by, window, self.sel() if sel is None else sel, fn=fn)

    def rmse(self, by: str, window: str, sel: str | None = None, *, fn: str = "rate") -> str:
        return f"sqrt(\n{self.mse(by, window, sel, fn=fn)}\n)"


def _variable_name(label: str) -> str:
    """The Grafana variable of a segment label: the label itself unless that name is taken."""
    return f"seg_{label}" if label in ("datasource", "model", "version") or label.startswith("__") else label


# --------------------------------------------------------------------------------- panels


def _target(expr: str, ref: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series",
            interval: str = "") -> dict[str, Any]:
    t: dict[str, Any] = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "refId": ref,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": fmt,
    }
    if interval:
        t["interval"] = interval
    return t


def _thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


_GREEN = _thresholds(("green", None))


def _panel(kind: str, title: str, targets: list[dict[str, Any]], *, description: str = "",
           unit: str = "short", decimals: int | None = None, thresholds: dict[str, Any] | None = None,
           custom: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
           overrides: list[dict[str, Any]] | None = None, min_value: float | None = None,
           max_value: float | None = None, **extra: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "thresholds": thresholds or _GREEN, "mappings": []}
    if kind in ("timeseries", "stat", "bargauge"):
        defaults["color"] = {"mode": "palette-classic" if kind == "timeseries" else "thresholds"}
    if decimals is not None:
        defaults["decimals"] = decimals
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    if custom:
        defaults["custom"] = custom
    panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
    }
    panel.update(extra)
    return panel


def _timeseries(title: str, targets: list[dict[str, Any]], *, unit: str = "short", bars: bool = False,
                threshold_lines: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "axisPlacement": "auto",
        "stacking": {"mode": "normal" if bars else "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if threshold_lines else "off"},
    }
    options = {
        "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["lastNotNull", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel("timeseries", title, targets, unit=unit, custom=custom, options=options,
                  thresholds=threshold_lines, **kw)


def _stat(title: str, targets: list[dict[str, Any]], *, unit: str = "short", **kw: Any) -> dict[str, Any]:
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": "value_and_name",
    }
    return _panel("stat", title, targets, unit=unit, options=options, **kw)


def _bargauge(title: str, targets: list[dict[str, Any]], *, unit: str = "short", **kw: Any) -> dict[str, Any]:
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "orientation": "horizontal",
        "displayMode": "gradient",
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "auto",
        "minVizHeight": 10,
        "minVizWidth": 0,
    }
    return _panel("bargauge", title, targets, unit=unit, options=options, **kw)


def _heatmap(title: str, targets: list[dict[str, Any]], *, unit: str = "short", buckets: bool,
             **kw: Any) -> dict[str, Any]:
    options = {
        "calculate": False,
        "cellGap": 1,
        "color": {"mode": "scheme", "scheme": "Oranges", "fill": "dark-orange", "scale": "exponential",
                  "exponent": 0.5, "steps": 64, "reverse": False},
        "rowsFrame": {"layout": "le" if buckets else "auto"},
        "yAxis": {"axisPlacement": "left", "reverse": False, "unit": "short" if buckets else ""},
        "cellValues": {"unit": unit},
        "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": True},
        "legend": {"show": True},
        "showValue": "never",
        "filterValues": {"le": 1e-9},
    }
    return _panel("heatmap", title, targets, unit=unit, options=options,
                  custom={"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                          "scaleDistribution": {"type": "linear"}}, **kw)


def _table(title: str, targets: list[dict[str, Any]], *, transformations: list[dict[str, Any]],
           overrides: list[dict[str, Any]] | None = None, sort_by: str = "", **kw: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": True}]
    return _panel("table", title, targets, options=options, overrides=overrides,
                  custom={"align": "auto", "cellOptions": {"type": "auto", "wrapText": True}, "inspect": True},
                  transformations=transformations, **kw)


def _override(matcher: str, name: str, **props: Any) -> dict[str, Any]:
    return {"matcher": {"id": matcher, "options": name}, "properties": [{"id": k, "value": v} for k, v in props.items()]}


class _Grid:
    """Places panels left to right in rows of 24 columns and numbers them."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0

    def row(self, height: int, *cells: tuple[dict[str, Any], int]) -> None:
        x = 0
        for panel, width in cells:
            assert x + width <= 24, "a row is 24 columns wide"
            panel["gridPos"] = {"x": x, "y": self.y, "w": width, "h": height}
            panel["id"] = len(self.panels) + 1
            self.panels.append(panel)
            x += width
        self.y += height


# --------------------------------------------------------------------------------- dashboards


def grafana_dashboards(config: Config, *, datasource_uid: str = "prometheus") -> dict[str, dict[str, Any]]:
    """The three dashboards of `config` by key (`executive`, `oncall`, `debug`), as Grafana JSON."""
    check_uid(datasource_uid)
    q = _Promql(config.metrics.segments)
    builders = {"executive": _executive, "oncall": _oncall, "debug": _debug}
    out = {}
    for key, build in builders.items():
        uid, title, since, refresh = DASHBOARDS[key]
        grid = _Grid()
        build(grid, q, config)
        out[key] = {
            "id": None,
            "uid": uid,
            "title": title,
            "description": _DESCRIPTIONS[key],
            "tags": ["msewatch"],
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "editable": True,
            "graphTooltip": 1,
            "timezone": "browser",
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "refresh": refresh,
            "time": {"from": since, "to": "now"},
            "timepicker": {},
            "links": [{"type": "dashboards", "title": "msewatch", "tags": ["msewatch"], "asDropdown": False,
                       "includeVars": True, "keepTime": True, "targetBlank": False, "icon": "external link"}],
            "annotations": {"list": _annotations(q, config)},
            "templating": {"list": _variables(q, datasource_uid)},
            "panels": grid.panels,
        }
    return out


_DESCRIPTIONS = {
    "executive": "Model quality for the quarter: RMSE trend, cohorts, versions against the previous week, "
                 "error budgets. Written by `msewatch grafana`; raw PromQL over msewatch serve's /metrics.",
    "oncall": "Is the model burning its error budget right now, and why: rolling MSE with SLO limits, "
              "canary vs control, active alerts with runbooks. Written by `msewatch grafana`.",
    "debug": "Where the error comes from and whether the pipeline is healthy: squared-error distribution "
             "and tails, label coverage and latency, ingest rejects, request latency. Written by `msewatch grafana`.",
}


def _variables(q: _Promql, datasource_uid: str) -> list[dict[str, Any]]:
    def query_var(name: str, label: str, definition: str) -> dict[str, Any]:
        return {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": DS,
            "definition": definition,
            "query": {"query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
            "refresh": 2,  # on time range change
            "multi": True,
            "includeAll": True,
            "allValue": ".*",  # also matches series without the label (a segment never sent)
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
            "regex": "",
            "hide": 0,
            "options": [],
        }

    out: list[dict[str, Any]] = [{
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {"selected": False, "text": datasource_uid, "value": datasource_uid},
        "refresh": 1,
        "regex": "",
        "hide": 0,
        "options": [],
    }]
    out.append(query_var("model", "Model", "label_values(msewatch_predictions_total, model)"))
    out.append(query_var("version", "Version", 'label_values(msewatch_predictions_total{model=~"$model"}, version)'))
    for label in q.segments:
        out.append(query_var(
            q.variables[label], label,
            f'label_values(msewatch_predictions_total{{model=~"$model", version=~"$version"}}, {label})',
        ))
    return out


def _annotations(q: _Promql, config: Config) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }]
    preds = 'msewatch_predictions_total{model=~"$model"}'
    out.append({
        "name": "Version changes",
        "datasource": DS,
        "enable": True,
        "iconColor": "blue",
        "expr": (f"count by (model, version) ({preds})\nunless\n"
                 f"count by (model, version) ({preds} offset {NEW_VERSION_WINDOW})"),
        "step": "1m",
        "titleFormat": "New version {{version}} of {{model}}",
        "textFormat": f"first predictions of {{{{model}}}} {{{{version}}}} (within {NEW_VERSION_WINDOW})",
        "tagKeys": "model,version",
        "useValueForTime": False,
    })
    labels5m = "sum(increase(msewatch_labels_total[5m]))"
    out.append({
        "name": "Label bursts (backfills)",
        "datasource": DS,
        "enable": True,
        "iconColor": "purple",
        "expr": (f"{labels5m} > {BURST_MIN_LABELS}\nand\n{labels5m}\n  > {BURST_FACTOR} * "
                 f"(sum(increase(msewatch_labels_total[1d] offset 5m)) / 288 or vector(0))"),
        "step": "1m",
        "titleFormat": "Label burst",
        "textFormat": (f"more than {BURST_MIN_LABELS} labels in 5 minutes and {BURST_FACTOR}x the previous "
                       "day's 5-minute average: a backfill or a label pipeline catching up"),
        "tagKeys": "",
        "useValueForTime": False,
    })
    if config.monitor.maintenance:
        parts = []
        for m in config.monitor.maintenance:
            start, end = int(m.starts.timestamp()), int(m.ends.timestamp())
            one = f'label_replace(vector(1), "model", {_quote(m.model)}, "", "")'
            one = f'label_replace({one}, "reason", {_quote(m.reason or "maintenance")}, "", "")'
            parts.append(f"({one} and on () (vector(time()) >= {start} < {end}))")
        out.append({
            "name": "Maintenance (config)",
            "datasource": DS,
            "enable": True,
            "iconColor": "orange",
            "expr": "\nor\n".join(parts),
            "step": "5m",
            "titleFormat": "Maintenance of {{model}}",
            "textFormat": "{{reason}} ([[maintenance]] in msewatch.toml: alerts of the model are muted)",
            "tagKeys": "model",
            "useValueForTime": False,
        })
    return out


# -- executive ---------------------------------------------------------------------------------


def _executive(grid: _Grid, q: _Promql, config: Config) -> None:
    rmse_stat = [
        _stat(f"RMSE, last {days} days", [_target(q.rmse("model", f"{days}d", fn="increase"), "A", "{{model}}",
                                                  instant=True)],
              description=f"sqrt(Σr² / n) of the predictions labeled in the last {days} days, per model.",
              decimals=4)
        for days in (30, 90)
    ]
    budget = _bargauge(
        "Error budget remaining per SLO",
        [_target('msewatch_slo_budget_remaining{model=~"$model"}', "A", "{{slo}} ({{model}})", instant=True)],
        unit="percentunit", min_value=0, max_value=1,
        thresholds=_thresholds(("red", None), ("orange", 0.0), ("yellow", 0.25), ("green", 0.5)),
        description="Share of each SLO's error budget left over its period, as msewatch serve evaluates it "
                    "(below 0: overspent).",
    )
    grid.row(6, (rmse_stat[0], 6), (rmse_stat[1], 6), (budget, 12))
    trend = _timeseries(
        "RMSE trend",
        [_target(q.rmse("model", "1d"), "A", "{{model}} (1 day)"),
         _target(q.rmse("model", "7d"), "B", "{{model}} (7 days)")],
        description="RMSE per model over sliding 1-day and 7-day windows (of label arrival). Set the time "
                    "range to 90 days for the quarter.",
        interval="1h",
    )
    grid.row(9, (trend, 24))
    cohorts = q.segments or ("version",)
    for label in cohorts:
        heat = _heatmap(
            f"RMSE by {label} × day",
            [_target(q.rmse(label, "1d"), "A", f"{{{{{label}}}}}")],
            buckets=False, unit="short",
            description=(f"RMSE of each {label} over the day ending at each step: a cohort that degrades "
                         "shows as a row turning dark." + ("" if q.segments else
                         " No [metrics] segments are configured, so the cohorts are the versions.")),
            interval="1d",
        )
        grid.row(9, (heat, 24))
    baseline = q.ratio(f"{_H}_sum", f"{_H}_count", "model", BASELINE[0], q.sel(version=False), fn="increase",
                       offset=BASELINE[1])
    delta = (f"sort_desc(\n  (\n{q.mse('model, version', '$__range', fn='increase')}\n  )\n"
             f"  / on (model) group_left ()\n  (\n{baseline}\n  )\n  - 1\n)")
    ranked = _bargauge(
        "Versions ranked by ΔMSE vs the model's previous week",
        [_target(delta, "A", "{{model}} {{version}}", instant=True)],
        unit="percentunit", decimals=1,
        thresholds=_thresholds(("green", None), ("yellow", 0.05), ("red", 0.2)),
        description="MSE of each version over the dashboard's range, divided by the model's MSE (all "
                    "versions) over the 7 days that ended a week ago (offset 7d), minus 1. Prometheus holds "
                    "no msewatch baseline: empty until it has two weeks of history.",
    )
    per_version = _table(
        "MSE per version over the range",
        [_target(q.mse("model, version", "$__range", fn="increase"), "A", instant=True, fmt="table"),
         _target(f"sum by (model, version) (increase({_H}_count{q.sel()}[$__range]))", "B", instant=True,
                 fmt="table"),
         _target(baseline, "C", instant=True, fmt="table")],
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "renameByName": {"Value #A": "MSE", "Value #B": "labeled", "Value #C": "model MSE, week before last"},
            }},
        ],
        sort_by="MSE",
        description="Per version: MSE and labeled predictions over the range, beside the model's baseline "
                    "of the ΔMSE panel.",
    )
    grid.row(9, (ranked, 12), (per_version, 12))
    burn = _timeseries(
        "Error-budget burn rate per SLO",
        [_target('msewatch_slo_burn_rate{model=~"$model"}', "A", "{{slo}} over {{window}}")],
        threshold_lines=_thresholds(("green", None), ("red", 1.0)),
        description="Burn rate per SLO and window, as msewatch serve evaluates it: 1 spends the budget "
                    "exactly over the SLO period.",
    )
    remaining = _timeseries(
        "Error budget remaining over time",
        [_target('msewatch_slo_budget_remaining{model=~"$model"}', "A", "{{slo}} ({{model}})")],
        unit="percentunit",
        threshold_lines=_thresholds(("red", None), ("green", 0.0)),
    )
    grid.row(8, (burn, 12), (remaining, 12))


# -- on-call -----------------------------------------------------------------------------------


def _slo_limits(config: Config) -> str:
    """One constant series per SLO of a model on `$model`: the SLO's limit in units of MSE."""
    parts = []
    for slo in config.monitor.slos:
        on_model = f'max by (model) (0 * msewatch_predictions_total{{model={_quote(slo.model)}, model=~"$model"}})'
        if slo.kind == "window" and slo.max_rmse is not None:
            value, limit = slo.max_rmse ** 2, f"MSE ≤ {_num(slo.max_rmse ** 2)} per window"
        elif slo.threshold is not None:
            value, limit = slo.threshold, f"r² ≤ {_num(slo.threshold)} per prediction"
        else:
            continue
        expr = f'label_replace({on_model} + {_num(value)}, "slo", {_quote(slo.name)}, "", "")'
        parts.append(f'label_replace({expr}, "limit", {_quote(limit)}, "", "")')
    return "\nor\n".join(parts)


def _slo_burn(slo: Slo, window: str) -> str:
    """The burn rate of an event SLO over `window`, from the histogram (bad share / allowed share)."""
    assert slo.threshold is not None
    matchers = [f"model={_quote(slo.model)}", 'model=~"$model"']
    if slo.version is not None:
        matchers.append(f"version={_quote(slo.version)}")
    sel = "{" + ", ".join(matchers) + "}"
    bucket = "{" + ", ".join([*matchers, f"le={_quote(bucket_le(slo.threshold))}"]) + "}"
    count = f"sum by (model) (rate({_H}_count{sel}[{window}]))"
    good = f"sum by (model) (rate({_H}_bucket{bucket}[{window}]))"
    allowed = _num(round(1.0 - slo.objective, 12))
    ratio = f"(\n  {count}\n  -\n  {good}\n)\n/ ({count} > 0)\n/ {allowed}"
    return f'label_replace(\n{ratio},\n"slo", {_quote(slo.name)}, "", "")'


def runbooks(config: Config) -> dict[tuple[str, str], str]:
    """Runbook text by (alertname, model) of `msewatch_alerts`, as the server attaches it."""
    out: dict[tuple[str, str], list[str]] = {}
    by_model: dict[str, list[Slo]] = {}
    for slo in config.monitor.slos:
        by_model.setdefault(slo.model, []).append(slo)
    for model, slos in by_model.items():
        texts = [(s.name, s.runbook or SLO_RUNBOOK) for s in slos]
        if len({t for _, t in texts}) == 1:
            out[("slo_burn", model)] = [texts[0][1]]
        else:
            out[("slo_burn", model)] = [f"{name}: {text}" for name, text in texts]
    for rule in config.monitor.rules:
        text = rule.annotations.get("runbook") or rule.runbook or RULE_RUNBOOKS.get(rule.type, "")
        if text:
            out.setdefault((rule.name, rule.model), []).append(text)
    return {k: " | ".join(dict.fromkeys(v)) for k, v in out.items()}


def _alerts_expr(config: Config) -> str:
    parts = []
    for (alertname, model), text in runbooks(config).items():
        sel = f'{{alertname={_quote(alertname)}, model={_quote(model)}, model=~"$model", {_LIVE}}}'
        parts.append(f'label_replace(msewatch_alerts{sel} > 0, "runbook", {_quote(text)}, "", "")')
    parts.append(f'msewatch_alerts{{model=~"$model", {_LIVE}}} > 0')
    return "\nor ignoring (runbook)\n".join(parts)


def _oncall(grid: _Grid, q: _Promql, config: Config) -> None:
    mse_now = _stat("MSE, last hour", [_target(q.mse("model", "1h"), "A", "{{model}}", instant=True)],
                    decimals=4, description="Σr² / n of the predictions labeled in the last hour, per model.")
    labeled = _stat("Labeled, last hour",
                    [_target(f"sum by (model) (increase({_H}_count{q.sel()}[1h]))", "A", "{{model}}", instant=True)],
                    decimals=0, description="Predictions that got their label in the last hour.")
    firing = _stat("Firing alerts",
                   [_target('count(msewatch_alerts{model=~"$model", state="firing"} > 0) or vector(0)', "A",
                            "firing", instant=True)],
                   thresholds=_thresholds(("green", None), ("red", 1)), decimals=0)
    budget = _bargauge("Error budget remaining",
                       [_target('msewatch_slo_budget_remaining{model=~"$model"}', "A", "{{slo}}", instant=True)],
                       unit="percentunit", min_value=0, max_value=1,
                       thresholds=_thresholds(("red", None), ("orange", 0.0), ("yellow", 0.25), ("green", 0.5)))
    grid.row(5, (mse_now, 6), (labeled, 6), (firing, 4), (budget, 8))

    targets = [_target(q.mse("model", w), ref, f"{{{{model}}}} MSE {w}") for w, ref in (("1h", "A"), ("6h", "B"),
                                                                                        ("24h", "C"))]
    overrides = []
    limits = _slo_limits(config)
    if limits:
        targets.append(_target(limits, "D", "SLO {{slo}}: {{limit}}"))
        overrides.append(_override("byFrameRefID", "D", **{"custom.lineStyle": {"fill": "dash", "dash": [10, 10]},
                                                          "color": {"mode": "fixed", "fixedColor": "red"}}))
    targets.append(_target('msewatch_slo_budget_remaining{model=~"$model"}', "E", "budget left {{slo}}"))
    overrides.append(_override("byFrameRefID", "E", unit="percentunit", **{"custom.axisPlacement": "right",
                                                                          "custom.fillOpacity": 0}))
    rolling = _timeseries(
        "Rolling MSE (1h, 6h, 24h) with SLO limits and error budget",
        targets, overrides=overrides,
        description="MSE per model over sliding 1h, 6h and 24h windows. Dashed red: the limits of the "
                    "model's SLOs (window SLOs: max_rmse² on the window's MSE; event SLOs: the per-prediction "
                    "threshold on r²). Right axis: error budget left per SLO.",
    )
    grid.row(10, (rolling, 24))

    server_burn = _timeseries(
        "SLO burn rate (msewatch serve)",
        [_target('msewatch_slo_burn_rate{model=~"$model"}', "A", "{{slo}} over {{window}}")],
        threshold_lines=_thresholds(("green", None), ("orange", 6.0), ("red", 14.4)),
        description="Burn rates per SLO and window as msewatch serve evaluates them (prediction time, "
                    "label_delay and min_coverage applied).",
    )
    event_slos = [s for s in config.monitor.slos if s.kind == "event" and s.threshold is not None]
    if event_slos:
        burn_targets = [_target("\nor\n".join(_slo_burn(s, w) for s in event_slos), ref, f"{{{{slo}}}} over {w}")
                        for w, ref in (("5m", "A"), ("1h", "B"), ("6h", "C"))]
        slo_burn = _timeseries(
            "Event-SLO burn rate from the histogram",
            burn_targets,
            threshold_lines=_thresholds(("green", None), ("orange", 6.0), ("red", 14.4)),
            description="Share of labeled predictions with r² above the SLO threshold, over the share the "
                        "objective allows: 14.4 over 1h (and 5m) pages, 6 over 6h pages. Computed in Prometheus "
                        "(the histogram's threshold bucket), beside the server's own burn rates.",
        )
        grid.row(8, (slo_burn, 12), (server_burn, 12))
    else:
        grid.row(8, (server_burn, 24))

    canary = _bargauge(
        "Canary vs control: MSE by version, last hour",
        [_target(q.mse("model, version", "1h"), "A", "{{model}} {{version}}", instant=True)],
        decimals=4,
        description="MSE of every version of the model over the last hour, side by side. `msewatch canary` "
                    "gives the sequential verdict.",
    )
    by_version = _timeseries(
        "MSE by version (1h windows)",
        [_target(q.mse("model, version", "1h"), "A", "{{model}} {{version}}"),
         _target(f"sum by (model, version) (increase({_H}_count{q.sel()}[1h]))", "B",
                 "{{model}} {{version}} labeled/h")],
        overrides=[_override("byFrameRefID", "B", **{"custom.axisPlacement": "right", "custom.drawStyle": "bars",
                                                     "custom.fillOpacity": 20, "decimals": 0})],
        description="Left: MSE per version over the last hour at each step. Right (bars): labeled "
                    "predictions per version in that hour, so a canary's noise is visible.",
    )
    shadow = _timeseries(
        "Shadow predictions per second by version",
        [_target('sum by (model, version) (rate(msewatch_shadow_predictions_total{model=~"$model", '
                 'version=~"$version"}[$__rate_interval]))', "A", "{{model}} {{version}} (shadow)"),
         _target(f"sum by (model, version) (rate(msewatch_predictions_total{q.sel()}[$__rate_interval]))", "B",
                 "{{model}} {{version}}")],
        unit="reqps",
        description="Traffic of production versions and of shadow candidates (POST /v1/shadow).",
    )
    grid.row(8, (canary, 8), (by_version, 10), (shadow, 6))

    alerts = _table(
        "Active alerts with runbooks",
        [_target(_alerts_expr(config), "A", instant=True, fmt="table")],
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True, "__name__": True},
            "indexByName": {"alertname": 0, "model": 1, "severity": 2, "state": 3, "runbook": 4},
        }}],
        overrides=[_override("byName", "runbook", **{"custom.width": 900})],
        description="msewatch_alerts in state pending or firing (muted ones included), with the runbook the "
                    "config gives the alert (the SLO's or rule's `runbook`, else msewatch's default).",
    )
    grid.row(8, (alerts, 24))


# -- debug -------------------------------------------------------------------------------------


def _debug(grid: _Grid, q: _Promql, config: Config) -> None:
    sel = q.sel()
    heat = _heatmap(
        "Squared-error distribution (histogram buckets)",
        [_target(f"sum by (le) (increase({_H}_bucket{sel}[$__rate_interval]))", "A", "{{le}}", fmt="heatmap")],
        buckets=True,
        description="Labeled predictions per squared-error bucket at each step ([metrics] squared_error_buckets).",
    )
    hist = _bargauge(
        "Squared errors per bucket over the range",
        [_target(f"sum by (le) (increase({_H}_bucket{sel}[$__range]))", "A", "{{le}}", instant=True, fmt="heatmap")],
        decimals=0, description="How many labeled predictions fell in each squared-error bucket (le = upper bound).",
    )
    grid.row(9, (heat, 16), (hist, 8))
    tails = [_target(f"histogram_quantile({p}, sum by (model, le) (rate({_H}_bucket{sel}[$__rate_interval])))",
                     ref, f"{{{{model}}}} p{round(p * 100)}") for p, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))]
    tails.append(_target(q.mse("model", "$__rate_interval"), "D", "{{model}} mean (MSE)"))
    quantiles = _timeseries(
        "Squared-error tails: p50, p90, p99 and the mean",
        tails,
        description="histogram_quantile over the buckets (linear inside a bucket, so as fine as the buckets). "
                    "A mean far above p90 means a few huge errors.",
    )
    quantiles["fieldConfig"]["defaults"]["custom"]["scaleDistribution"] = {"type": "log", "log": 10}
    mae_bias = _timeseries(
        "MAE and bias",
        [_target(q.ratio("msewatch_absolute_error_total", f"{_H}_count", "model", "$__rate_interval", sel), "A",
                 "{{model}} MAE"),
         _target(f"(\n  sum by (model) (rate(msewatch_residual_positive_total{sel}[$__rate_interval]))\n  -\n"
                 f"  sum by (model) (rate(msewatch_residual_negative_total{sel}[$__rate_interval]))\n)\n"
                 f"/ (sum by (model) (rate({_H}_count{sel}[$__rate_interval])) > 0)", "B", "{{model}} bias"),
         ],
        description="Mean |r| and mean r (y_pred − y_true: positive over-predicts). A bias that moves with the "
                    "MSE points to a shift, not noise.",
    )
    grid.row(9, (quantiles, 12), (mae_bias, 12))
    coverage = _timeseries(
        "Label coverage",
        [_target(q.ratio(f"{_H}_count", "msewatch_predictions_total", "model", "1h", sel), "A",
                 "{{model}} labels landed / predictions, last hour"),
         _target(f"sum by (model) ({_H}_count{sel})\n/\n(sum by (model) (msewatch_predictions_total{sel}) > 0)",
                 "B", "{{model}} labeled share since the server started")],
        unit="percentunit", min_value=0,
        description="Labels counted at arrival per prediction made over the last hour (the coverage when the "
                    "label delay is steady), and the labeled share of everything since the server started.",
    )
    latency = _timeseries(
        "Label latency (label_ts − ts)",
        [_target(f"histogram_quantile({p}, sum by (model, le) (rate(msewatch_label_latency_seconds_bucket{sel}"
                 f"[$__rate_interval])))", ref, f"{{{{model}}}} p{round(p * 100)}")
         for p, ref in ((0.5, "A"), (0.9, "B"))]
        + [_target(q.ratio("msewatch_label_latency_seconds_sum", "msewatch_label_latency_seconds_count", "model",
                           "$__rate_interval", sel), "C", "{{model}} mean")],
        unit="s",
        description="Of labels that carry a label_ts ([metrics] label_latency_buckets).",
    )
    grid.row(8, (coverage, 12), (latency, 12))
    rejects = _timeseries(
        "Ingest rejects by reason",
        [_target("sum by (kind, reason) (increase(msewatch_ingest_rejected_total[$__rate_interval]))", "A",
                 "{{kind}}: {{reason}}")],
        bars=True, decimals=0,
        description="Rows refused at ingest per step, by kind (predictions, labels, shadow) and reason. All "
                    "models: the reject has no trustworthy model.",
    )
    rejects_total = _table(
        "Rejects over the range",
        [_target("sort_desc(sum by (kind, reason) (increase(msewatch_ingest_rejected_total[$__range])))", "A",
                 instant=True, fmt="table")],
        transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True},
                                                        "renameByName": {"Value": "rows"}}}],
        sort_by="rows",
    )
    ingest = _timeseries(
        "Ingest: rows per second and queue",
        [_target(f"sum(rate(msewatch_predictions_total{sel}[$__rate_interval]))", "A", "predictions"),
         _target("sum(rate(msewatch_labels_total[$__rate_interval]))", "B", "labels (all models)"),
         _target("sum by (kind) (rate(msewatch_ingest_duplicates_total[$__rate_interval]))", "C",
                 "duplicate {{kind}}"),
         _target("sum(msewatch_ingest_queue_rows)", "D", "queued rows")],
        unit="short",
        overrides=[_override("byFrameRefID", "D", **{"custom.axisPlacement": "right", "decimals": 0})],
    )
    grid.row(8, (rejects, 10), (rejects_total, 6), (ingest, 8))
    http = "msewatch_http_request_duration_seconds"
    req_latency = _timeseries(
        "Request latency by route",
        [_target(f"histogram_quantile({p}, sum by (route, le) (rate({http}_bucket[$__rate_interval])))", ref,
                 f"{{{{route}}}} p{round(p * 100)}") for p, ref in ((0.5, "A"), (0.99, "B"))],
        unit="s",
    )
    req_rate = _timeseries(
        "Requests per second by route and status",
        [_target(f"sum by (route, status) (rate({http}_count[$__rate_interval]))", "A", "{{route}} {{status}}")],
        unit="reqps",
    )
    grid.row(8, (req_latency, 12), (req_rate, 12))


# --------------------------------------------------------------------------------- files


def provisioning_files(*, datasource_uid: str = "prometheus", prometheus_url: str = "http://localhost:9090",
                       dashboards_path: str | os.PathLike[str], scrape_interval: str | None = None) -> dict[str, str]:
    """Grafana's provisioning files by path under the output directory, as YAML text."""
    check_uid(datasource_uid)
    datasource: dict[str, Any] = {
        "name": "msewatch Prometheus",
        "type": "prometheus",
        "uid": datasource_uid,
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": False,
        "editable": True,
        "jsonData": {"httpMethod": "POST"},
    }
    if scrape_interval:
        datasource["jsonData"]["timeInterval"] = scrape_interval
    providers = {
        "apiVersion": 1,
        "providers": [{
            "name": "msewatch",
            "orgId": 1,
            "folder": "msewatch",
            "type": "file",
            "disableDeletion": False,
            "updateIntervalSeconds": 30,
            "allowUiUpdates": False,
            "options": {"path": str(dashboards_path), "foldersFromFilesStructure": False},
        }],
    }
    head = "# Written by `msewatch grafana`: Grafana provisioning ({}).\n"
    return {
        "provisioning/dashboards/msewatch.yaml": head.format("dashboard provider")
        + yaml.safe_dump(providers, sort_keys=False, allow_unicode=True),
        "provisioning/datasources/prometheus.yaml": head.format("data source")
        + yaml.safe_dump({"apiVersion": 1, "datasources": [datasource]}, sort_keys=False, allow_unicode=True),
    }


def grafana_notes(config: Config) -> list[str]:
    """What the dashboards of `config` leave out or approximate, one sentence each."""
    notes = [(
        f"ΔMSE is against the model's MSE over the 7 days that ended a week ago ([{BASELINE[0]}] offset "
        f"{BASELINE[1]}): Prometheus holds no msewatch baseline, and the panel is empty until it has two "
        "weeks of history."
    )]
    if not config.metrics.segments:
        notes.append("no [metrics] segments are configured: the cohort × day heatmap groups by version.")
    if not config.monitor.slos:
        notes.append("no [[slos]] in the config: the SLO panels stay empty and the MSE panel has no limit lines.")
    return notes


def write_grafana(config: Config, out: str | os.PathLike[str], *, datasource_uid: str = "prometheus",
                  prometheus_url: str = "http://localhost:9090", dashboards_path: str | None = None,
                  scrape_interval: str | None = None) -> list[Path]:
    """Write the dashboards and provisioning files under `out`; the paths written."""
    root = Path(out)
    dashboards = grafana_dashboards(config, datasource_uid=datasource_uid)
    board_dir = root / "dashboards"
    files: dict[Path, str] = {
        board_dir / f"{DASHBOARDS[key][0]}.json": json.dumps(board, indent=2, ensure_ascii=False) + "\n"
        for key, board in dashboards.items()
    }
    path = dashboards_path or str(board_dir.resolve())
    for rel, text in provisioning_files(datasource_uid=datasource_uid, prometheus_url=prometheus_url,
                                        dashboards_path=path, scrape_interval=scrape_interval).items():
        files[root / rel] = text
    written = []
    for target, text in files.items():
        _write(target, text)
        written.append(target)
    return written


def _write(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{target}: cannot write ({exc.strerror or exc}).") from None
