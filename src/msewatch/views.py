"""The data and Vega-Lite specs of the dashboard views (`msewatch serve` at /) and of `msewatch report`.

Every number is computed in the engine (DuckDB) over the store: time series from the per-minute
rollups, cohort series and the cohort × day heatmap from the hourly per-segment rollups (cheap on
any store size; a join of 10M predictions with their labels takes seconds); only the debug view
joins rows (its last 2 days by default), for the squared-error histogram, the top-N tail and a
reservoir sample. Baselines, the canary verdict and the drift numbers come from the monitor
package, so the dashboard says what the alert rules and `msewatch canary`/`drift` say. A view is
a dict of small JSON-able charts (a Vega-Lite spec with its data inlined) and tables, so the same
structure feeds the server's `/api/views/{view}` and the self-contained HTML report.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

from msewatch.errors import InputError

__all__ = ["VIEWS", "Filters", "compute_all", "compute_view", "dumps", "slo_dicts", "store_alerts", "store_slos"]

VIEWS = ("executive", "oncall", "debug")
DAY = 86400
SCATTER_SAMPLE = 2000
TAIL_ROWS = 20
_WIDTH = 520


@dataclass(frozen=True)
class Filters:
    model: str | None = None
    version: str | None = None
    cohort: str | None = None  # a segment column
    cohort_value: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @classmethod
    def from_query(cls, q: Any) -> Filters:
        from msewatch.units import parse_instant

        def instant(name: str) -> dt.datetime | None:
            text = (q.get(name) or "").strip()
            return parse_instant(text, option=name) if text else None

        def text(name: str) -> str | None:
            value = (q.get(name) or "").strip()
            return value or None

        out = cls(text("model"), text("version"), text("cohort"), text("cohort_value"), instant("since"), instant("until"))
        if out.since and out.until and out.since >= out.until:
            raise InputError("since must be earlier than until")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "cohort": self.cohort, "cohort_value": self.cohort_value,
                "since": _iso(self.since), "until": _iso(self.until)}


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Ctx:
    """The store connection, the resolved filters and what the store holds."""

    def __init__(self, con: Any, f: Filters) -> None:
        self.con = con
        models = [r[0] for r in con.execute("SELECT DISTINCT model FROM rollups ORDER BY 1").fetchall()]
        if not models:
            models = [r[0] for r in con.execute("SELECT DISTINCT model FROM predictions ORDER BY 1").fetchall()]
        if f.model and f.model not in models:
            raise InputError(f"no predictions of model {f.model!r}")
        self.models = models
        self.model = f.model or (models[0] if models else None)
        extras = dict(con.execute("SELECT name, kind FROM extra_columns ORDER BY added_at, name").fetchall())
        self.segments = [n for n, k in extras.items() if k == "segment"]
        self.features = [n for n, k in extras.items() if k == "feature"]
        if f.cohort and f.cohort not in self.segments:
            raise InputError(f"cohort must be a segment column ({', '.join(self.segments) or 'none stored'}); got {f.cohort!r}")
        if f.cohort_value and not f.cohort:
            raise InputError("cohort_value needs cohort (the segment column)")
        self.cohort = f.cohort or (self.segments[0] if self.segments else None)
        self.cohort_value = f.cohort_value
        self.version = f.version
        self.versions = [r[0] for r in con.execute(
            "SELECT version FROM rollups WHERE model = $m GROUP BY 1 ORDER BY min(bucket_start), 1", {"m": self.model}
        ).fetchall()] if self.model else []
        lo, hi = con.execute("SELECT epoch(min(bucket_start)), epoch(max(bucket_start)) + 60 FROM rollups WHERE model = $m",
                             {"m": self.model}).fetchall()[0] if self.model else (None, None)
        self.data_lo, self.data_hi = (lo or 0.0), (hi or 0.0)
        self.until = f.until.timestamp() if f.until else self.data_hi
        self.since = f.since.timestamp() if f.since else None
        self.filters = f
        self.seg_rollups = bool(con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'segment_rollups' AND schema_name = 'main'"
        ).fetchall()[0][0])  # absent from a store an older msewatch wrote and only read since

    def span(self, default: float) -> tuple[float, float]:
        """[since, until): the filter's range, else the last `default` seconds of data."""
        return (self.since if self.since is not None else self.until - default), self.until

    def where(self, alias: str = "p", *, cohort: bool = True) -> tuple[str, dict[str, Any]]:
        parts, params = [f"{alias}.model = $model"], {"model": self.model}
        if self.version:
            parts.append(f"{alias}.version = $version")
            params["version"] = self.version
        if cohort and self.cohort_value:
            parts.append(f"{alias}.{_q(self.cohort or '')} = $cohort_value")
            params["cohort_value"] = self.cohort_value
        return " AND ".join(parts), params

    def series(self, lo: float, hi: float, step: int, *, by_version: bool = False) -> list[dict[str, Any]]:
        """Per `step` seconds: n_predictions, n_labeled, sum_sq (and version when asked)."""
        lo_b = int(lo) // 60 * 60
        if self.cohort_value and self.seg_rollups:  # hourly per-segment rollups
            lo_b = int(lo) // 3600 * 3600
            where, params = self.where("r", cohort=False)
            sql = f"""SELECT (epoch(r.bucket_start)::BIGINT // {max(step, 3600)}) * {max(step, 3600)} AS t,
                {'r.version' if by_version else "''"} AS v, sum(r.n_predictions) AS n, sum(r.n_labeled) AS n_lab,
                sum(r.sum_sq) AS sum_sq FROM segment_rollups r
                WHERE {where} AND r.segment = $segment AND r.value = $cohort_value
                  AND r.bucket_start >= $lo AND r.bucket_start < $hi GROUP BY ALL ORDER BY 1"""
            params |= {"segment": self.cohort, "cohort_value": self.cohort_value}
        elif self.cohort_value:  # no segment rollups in this store: from the rows
            where, params = self.where()
            sql = f"""SELECT (floor(epoch(p.ts))::BIGINT // {step}) * {step} AS t, {'p.version' if by_version else "''"} AS v,
                count(*) AS n, count(l.y_true) AS n_lab, sum((p.y_pred - l.y_true) ^ 2) AS sum_sq
                FROM predictions p LEFT JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current
                WHERE {where} AND p.ts >= $lo AND p.ts < $hi GROUP BY ALL ORDER BY 1"""
        else:
            where, params = self.where("r", cohort=False)
            sql = f"""SELECT (epoch(r.bucket_start)::BIGINT // {step}) * {step} AS t, {'r.version' if by_version else "''"} AS v,
                sum(r.n_predictions) AS n, sum(r.n_labeled) AS n_lab, sum(r.sum_sq) AS sum_sq
                FROM rollups r WHERE {where} AND r.bucket_start >= $lo AND r.bucket_start < $hi GROUP BY ALL ORDER BY 1"""
        params |= {"lo": _ts(lo_b), "hi": _ts(hi)}
        out = []
        for t, v, n, n_lab, sum_sq in self.con.execute(sql, params).fetchall():
            mse = float(sum_sq) / n_lab if n_lab else None
            row = {"t": _iso(_ts(t)), "n": int(n), "n_labeled": int(n_lab), "mse": mse,
                   "rmse": math.sqrt(mse) if mse is not None else None,
                   "coverage": n_lab / n if n else None}
            if by_version:
                row["version"] = v
            out.append(row)
        return out

    def joined(self, lo: float, hi: float, extra: str = "") -> tuple[str, dict[str, Any]]:
        """SQL of the labeled rows of the filters in [lo, hi), with r2 and segment/feature columns."""
        where, params = self.where()
        cols = "".join(f", p.{_q(c)}" for c in (*self.segments, *self.features))
        sql = f"""SELECT p.prediction_id, p.ts, p.version, p.y_pred, l.y_true, l.label_ts,
            (p.y_pred - l.y_true) ^ 2 AS r2 {cols}
            FROM predictions p JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current
            WHERE {where} AND p.ts >= $lo AND p.ts < $hi {extra}"""
        return sql, params | {"lo": _ts(lo), "hi": _ts(hi)}


# -- Vega-Lite helpers --------------------------------------------------------------------------

def _chart(chart_id: str, title: str, spec: dict[str, Any], values: list[dict[str, Any]], note: str = "") -> dict[str, Any]:
    full = {"$schema": "vega-lite/v6", "width": _WIDTH, "height": 220, "data": {"values": values},
            "config": {"font": "system-ui, sans-serif", "axis": {"labelFontSize": 11, "titleFontSize": 12}}, **spec}
    if spec.get("mark") == "bar" and spec["encoding"].get("y", {}).get("type") == "nominal":
        full["height"] = {"step": 26}  # one row per bar, however few
    return {"id": chart_id, "title": title, "note": note, "n": len(values), "spec": full}


def _table(table_id: str, title: str, columns: list[str], rows: list[list[Any]], note: str = "") -> dict[str, Any]:
    return {"id": table_id, "title": title, "columns": columns, "rows": rows, "note": note}


_T = {"field": "t", "type": "temporal", "title": "time (UTC)"}


def _line(y: str, title: str, color: str | None = None) -> dict[str, Any]:
    enc: dict[str, Any] = {"x": _T, "y": {"field": y, "type": "quantitative", "title": title},
                           "tooltip": [_T, {"field": y, "type": "quantitative", "format": ".4g"}]}
    if color:
        enc["color"] = {"field": color, "type": "nominal"}
        enc["tooltip"].append({"field": color})
    return {"mark": {"type": "line", "point": False, "interpolate": "monotone"}, "encoding": enc}


# -- views --------------------------------------------------------------------------------------

def executive(ctx: _Ctx, slos: list[dict[str, Any]]) -> dict[str, Any]:
    charts, tables = [], []
    # 30 and 90 days back from the filter's end (or the newest data), whatever the filter's width
    for days in (30, 90):
        lo = max(ctx.until - days * DAY, ctx.data_lo)
        rows = [r for r in ctx.series(lo, ctx.until, DAY) if r["rmse"] is not None]
        clipped = ctx.until - days * DAY < ctx.data_lo
        charts.append(_chart(f"rmse_{days}d", f"RMSE by day, last {days} days", _line("rmse", "RMSE"), rows,
                             note=f"data starts {_iso(_ts(ctx.data_lo))[:10]}" if clipped and rows else ""))
    lo, hi = ctx.span(30 * DAY)
    lo = max(lo, ctx.data_lo)
    heat: list[dict[str, Any]] = []
    if ctx.cohort and ctx.seg_rollups:
        where, params = ctx.where("r", cohort=False)
        value = " AND r.value = $cohort_value" if ctx.cohort_value else ""
        q = f"""SELECT (epoch(r.bucket_start)::BIGINT // {DAY}) * {DAY}, r.value, sum(r.n_labeled), sum(r.sum_sq)
            FROM segment_rollups r WHERE {where} AND r.segment = $segment{value}
              AND r.bucket_start >= $lo AND r.bucket_start < $hi GROUP BY ALL HAVING sum(r.n_labeled) > 0 ORDER BY 1, 2"""
        params |= {"segment": ctx.cohort, "lo": _ts(int(lo) // 3600 * 3600), "hi": _ts(hi)}
        if ctx.cohort_value:
            params["cohort_value"] = ctx.cohort_value
        heat = [{"t": _iso(_ts(t)), "cohort": str(c), "n": int(n), "rmse": math.sqrt(ss / n)}
                for t, c, n, ss in ctx.con.execute(q, params).fetchall()]
    elif ctx.cohort:  # a store without segment rollups: from the rows
        sql, params = ctx.joined(lo, hi)
        q = f"""SELECT (floor(epoch(ts))::BIGINT // {DAY}) * {DAY}, {_q(ctx.cohort)}, count(*), avg(r2) FROM ({sql}) GROUP BY ALL ORDER BY 1, 2"""
        heat = [{"t": _iso(_ts(t)), "cohort": str(c), "n": int(n), "rmse": math.sqrt(m)}
                for t, c, n, m in ctx.con.execute(q, params).fetchall() if c is not None]
    charts.append(_chart("cohort_heatmap", f"RMSE by {ctx.cohort or 'cohort'} × day", {
        "mark": "rect",
        "encoding": {"x": {"field": "t", "type": "ordinal", "timeUnit": "yearmonthdate", "title": "day (UTC)"},
                     "y": {"field": "cohort", "type": "nominal", "title": ctx.cohort},
                     "color": {"field": "rmse", "type": "quantitative", "scale": {"scheme": "orangered"}, "title": "RMSE"},
                     "tooltip": [_T, {"field": "cohort"}, {"field": "rmse", "format": ".4g"}, {"field": "n"}]}},
        heat, note="" if ctx.cohort else "no segment column stored"))
    # versions ranked by ΔMSE vs the model's baseline (all versions, whatever the version filter)
    where, params = ctx.where("r", cohort=False)
    where = where.replace(" AND r.version = $version", "")
    params.pop("version", None)
    vrows = ctx.con.execute(
        f"""SELECT version, min(bucket_start), sum(n_predictions), sum(n_labeled), sum(sum_sq) FROM rollups r
        WHERE {where} AND bucket_start >= $lo AND bucket_start < $hi GROUP BY 1 ORDER BY 2""",
        params | {"lo": _ts(int(lo) // 60 * 60), "hi": _ts(hi)}).fetchall()
    from msewatch.view_panels import baseline

    base, base_note = baseline(ctx)
    ranked: list[dict[str, Any]] = []
    if base is not None:
        base_mse = float(base.mse)
        for v, first, n, n_lab, s in vrows:
            if n_lab:
                mse = s / n_lab
                ranked.append({"version": v, "first_seen": _iso(first), "n": int(n), "n_labeled": int(n_lab), "mse": mse,
                               "delta_mse": mse - base_mse, "delta_pct": 100 * (mse - base_mse) / base_mse if base_mse else None})
    ranked.sort(key=lambda r: -r["delta_mse"])
    charts.append(_chart("versions_delta", "Versions by ΔMSE vs the baseline", {
        "mark": "bar",
        "encoding": {"y": {"field": "version", "type": "nominal", "sort": "-x", "title": "version"},
                     "x": {"field": "delta_mse", "type": "quantitative", "title": "ΔMSE vs baseline"},
                     "color": {"condition": {"test": "datum.delta_mse > 0", "value": "#c0392b"}, "value": "#2e86c1"},
                     "tooltip": [{"field": "version"}, {"field": "mse", "format": ".4g"}, {"field": "delta_pct", "format": "+.1f", "title": "Δ%"},
                                 {"field": "n_labeled"}]}}, ranked, note=base_note))
    tables.append(_table("versions", "Versions", ["version", "first seen", "predictions", "labeled", "MSE", "ΔMSE", "Δ%"],
                         [[r["version"], r["first_seen"], r["n"], r["n_labeled"], _fmt(r["mse"]), _fmt(r["delta_mse"]),
                           _fmt(r["delta_pct"], ".1f")] for r in ranked], note=base_note))
    burn: list[dict[str, Any]] = []
    for s in slos:
        if s["model"] != ctx.model:
            continue
        days = len(s.get("daily_burn") or [])
        end = dt.datetime.fromisoformat(s["judged_until"]).timestamp()
        for i, b in enumerate(s.get("daily_burn") or []):
            if b is not None:
                burn.append({"slo": s["slo"], "t": _iso(_ts(end - (days - i) * DAY)), "burn": b})
    charts.append(_chart("budget_burn", "Error-budget burn rate per SLO (per day; 1 = on budget)", {
        "layer": [
            {"mark": {"type": "line", "point": True}, "encoding": {"x": _T, "y": {"field": "burn", "type": "quantitative", "title": "burn rate"},
                                                                  "color": {"field": "slo", "type": "nominal"},
                                                                  "tooltip": [_T, {"field": "slo"}, {"field": "burn", "format": ".3g"}]}},
            {"data": {"values": [{}]}, "mark": {"type": "rule", "strokeDash": [4, 4], "color": "#555"}, "encoding": {"y": {"datum": 1}}},
        ]}, burn, note="" if slos else "no SLOs configured"))
    tables.append(_table("slos", "SLOs", ["SLO", "objective", "period", "compliance", "budget remaining", "burn rates"],
                         [[s["slo"], s["objective"], s["period"], _fmt(s["compliance"], ".4f"), _fmt(s["budget_remaining"], ".1%"),
                           ", ".join(f"{k}: {_fmt(v, '.2f')}" for k, v in s["burn_rates"].items())]
                          for s in slos if s["model"] == ctx.model]))
    return {"charts": charts, "tables": tables}


def oncall(ctx: _Ctx, slos: list[dict[str, Any]], alerts: list[dict[str, Any]], canary: Any = None) -> dict[str, Any]:
    lo, hi = ctx.span(2 * DAY)
    step = 600 if hi - lo <= 3 * DAY and not ctx.cohort_value else 3600  # a cohort's rollups are hourly
    # rolling MSE over 1h/6h/24h, stepped every `step`: sums of the step buckets
    base = ctx.series(lo - DAY, hi, step)
    by_t = {dt.datetime.fromisoformat(r["t"]).timestamp(): r for r in base}
    rolling: list[dict[str, Any]] = []
    t = (int(lo) // step + 1) * step
    while t <= hi:
        for label, size in (("1h", 3600), ("6h", 6 * 3600), ("24h", DAY)):
            n = s = 0.0
            u = t - size
            while u < t:
                r = by_t.get(u)
                if r and r["mse"] is not None:
                    n += r["n_labeled"]
                    s += r["mse"] * r["n_labeled"]
                u += step
            if n:
                rolling.append({"t": _iso(_ts(t)), "window": label, "mse": s / n})
        t += step
    slo_rules = []
    for s in slos:
        if s["model"] == ctx.model and s.get("threshold_mse") is not None:
            slo_rules.append({"slo": s["slo"], "threshold": s["threshold_mse"]})
    layers: list[dict[str, Any]] = [
        {"mark": {"type": "line", "interpolate": "monotone"},
         "encoding": {"x": _T, "y": {"field": "mse", "type": "quantitative", "title": "MSE"},
                      "color": {"field": "window", "type": "nominal", "sort": ["1h", "6h", "24h"], "title": "rolling"},
                      "tooltip": [_T, {"field": "window"}, {"field": "mse", "format": ".4g"}]}}]
    for rule in slo_rules:
        layers.append({"data": {"values": [{}]}, "mark": {"type": "rule", "color": "#c0392b", "strokeDash": [6, 3]},
                       "encoding": {"y": {"datum": rule["threshold"]}}})
        layers.append({"data": {"values": [{}]}, "mark": {"type": "text", "color": "#c0392b", "align": "left", "dx": 4, "dy": -6, "fontSize": 11},
                       "encoding": {"y": {"datum": rule["threshold"]}, "x": {"value": 0},
                                    "text": {"value": f"SLO {rule['slo']}: {rule['threshold']:.4g}"}}})
    budget = [{"slo": s["slo"], "remaining": s["budget_remaining"]} for s in slos if s["model"] == ctx.model and s["budget_remaining"] is not None]
    note = "; ".join(f"SLO {b['slo']}: budget remaining {b['remaining']:.1%}" for b in budget)
    charts = [_chart("rolling_mse", "Rolling MSE (1h, 6h, 24h)" + (" with the SLO threshold" if slo_rules else ""),
                     {"layer": layers}, rolling, note=note)]
    charts.append(_chart("budget", "Error budget remaining per SLO", {
        "mark": "bar", "encoding": {"y": {"field": "slo", "type": "nominal"},
                                    "x": {"field": "remaining", "type": "quantitative", "axis": {"format": "%"}, "title": "budget remaining"},
                                    "color": {"condition": {"test": "datum.remaining < 0", "value": "#c0392b"}, "value": "#27ae60"},
                                    "tooltip": [{"field": "slo"}, {"field": "remaining", "format": ".1%"}]}},
        budget, note="" if budget else "no SLOs configured for this model"))
    # canary vs control: the judge's verdict, and each version's MSE per hour over the range
    from msewatch.view_panels import canary_verdict

    verdict, verdict_note = canary_verdict(ctx, lo, hi, canary)
    versions = ctx.series(lo, hi, 3600, by_version=True)
    versions = [r for r in versions if r["mse"] is not None]
    charts.append(_chart("versions_mse", "Canary vs control: MSE per hour by version", _line("mse", "MSE", "version"), versions))
    # annotations: version first seen, label corrections (backfills) by hour
    where, params = ctx.where("r", cohort=False)
    notes = [{"t": _iso(first), "event": f"version {v} first seen"} for v, first in ctx.con.execute(
        f"SELECT version, min(bucket_start) FROM rollups r WHERE {where} GROUP BY 1 HAVING min(bucket_start) >= $lo AND min(bucket_start) < $hi",
        params | {"lo": _ts(lo - DAY), "hi": _ts(hi)}).fetchall()]
    where, params = ctx.where()
    notes += [{"t": _iso(_ts(t)), "event": f"{n} labels revised (backfill)"} for t, n in ctx.con.execute(
        f"""SELECT (floor(epoch(p.ts))::BIGINT // 3600) * 3600, count(*) FROM predictions p JOIN labels l
        ON l.prediction_id = p.prediction_id AND l.is_current AND l.revision > 1
        WHERE {where} AND p.ts >= $lo AND p.ts < $hi GROUP BY 1 ORDER BY 2 DESC LIMIT 10""",
        params | {"lo": _ts(lo), "hi": _ts(hi)}).fetchall()]
    notes.sort(key=lambda r: r["t"])
    charts.append(_chart("coverage_annotated", "Predictions per hour, with version changes and backfills", {
        "layer": [
            {"data": {"values": ctx.series(lo, hi, 3600)}, "mark": {"type": "area", "opacity": 0.5},
             "encoding": {"x": _T, "y": {"field": "n", "type": "quantitative", "title": "predictions / hour"},
                          "tooltip": [_T, {"field": "n"}, {"field": "coverage", "format": ".0%"}]}},
            {"mark": {"type": "rule", "color": "#8e44ad", "strokeWidth": 2},
             "encoding": {"x": _T, "tooltip": [_T, {"field": "event"}]}},
        ]}, notes))
    tables = [
        _table("alerts", "Active alerts", ["alert", "state", "severity", "since", "summary", "runbook"],
               [[a["labels"].get("alertname", ""), a["state"], a["labels"].get("severity", ""), a.get("active_since") or "",
                 a["annotations"].get("summary", ""), a["annotations"].get("runbook", "")]
                for a in alerts if a["labels"].get("model", ctx.model) == ctx.model]),
        _table("annotations", "Version changes and backfills", ["time (UTC)", "event"], [[n["t"], n["event"]] for n in notes]),
    ]
    level = 1 - (canary.alpha if canary is not None else 0.05)
    margin = canary.margin if canary is not None else 0.05
    ratio = [] if verdict is None or verdict["mse_ratio"] is None else [{
        "arms": f"{verdict['canary']} / {verdict['control']}", "ratio": verdict["mse_ratio"], "verdict": verdict["verdict"],
        "lo": verdict["ci"][0] if verdict["ci"] else verdict["mse_ratio"], "hi": verdict["ci"][1] if verdict["ci"] else verdict["mse_ratio"]}]
    rule = {"data": {"values": [{}]}, "mark": {"type": "rule", "strokeDash": [4, 4]}}
    charts.insert(3, _chart("canary_ratio", f"Canary judge: MSE ratio with its {level:.0%} confidence sequence", {
        "height": 60,
        "layer": [
            {"mark": {"type": "rule", "strokeWidth": 3},
             "encoding": {"y": {"field": "arms", "type": "nominal", "title": None},
                          "x": {"field": "lo", "type": "quantitative", "scale": {"zero": False}, "title": "MSE ratio (canary / control)"},
                          "x2": {"field": "hi"}}},
            {"mark": {"type": "point", "filled": True, "size": 80},
             "encoding": {"y": {"field": "arms", "type": "nominal"}, "x": {"field": "ratio", "type": "quantitative"},
                          "color": {"field": "verdict", "type": "nominal",
                                    "scale": {"domain": ["pass", "continue", "fail"], "range": ["#27ae60", "#7f8c8d", "#c0392b"]}},
                          "tooltip": [{"field": "verdict"}, {"field": "ratio", "format": ".4f"}, {"field": "lo", "format": ".4f"},
                                      {"field": "hi", "format": ".4f"}]}},
            rule | {"encoding": {"x": {"datum": 1.0}}},
            rule | {"mark": {"type": "rule", "strokeDash": [2, 2], "color": "#c0392b"}, "encoding": {"x": {"datum": 1 + margin}}},
        ]}, ratio, note=verdict_note))
    tables.insert(0, _table(
        "canary", "Canary judge (newest version vs the previous one)",
        ["canary", "control", "verdict", "MSE ratio", f"{level:.0%} CI", "n canary", "n control", "MSE canary", "MSE control", "reason"],
        [] if verdict is None else [[
            verdict["canary"], verdict["control"], verdict["verdict"], _fmt(verdict["mse_ratio"], ".4f"),
            "" if not verdict["ci"] else f"[{verdict['ci'][0]:.4f}, {verdict['ci'][1]:.4f}]",
            verdict["n_canary"], verdict["n_control"], _fmt(verdict["mse_canary"]), _fmt(verdict["mse_control"]), verdict["reason"]]],
        note=verdict_note))
    body = {"charts": charts, "tables": tables}
    if verdict is not None:
        body["canary"] = verdict
    return body


def debug(ctx: _Ctx) -> dict[str, Any]:
    """The labeled rows of the range are joined once, into a temporary table of this connection,
    which the histogram, the tail, the sample and the latency then read.

    In two steps: the range's predictions first, so the engine knows how few they are and builds
    its hash table on them, probing the labels (left to estimates it may build on the labels);
    about half the time of the one join on 10M labels.
    """
    import uuid

    lo, hi = ctx.span(2 * DAY)  # as on-call: reading the labels' ids costs about 1 s per 10M labels
    where, params = ctx.where()
    table = f"_msewatch_debug_{uuid.uuid4().hex}"
    keep = "".join(", p." + _q(c) for c in ctx.segments)
    con = ctx.con
    try:
        con.execute(f"CREATE TEMP TABLE {table}_p AS SELECT p.prediction_id, p.ts, p.version, p.y_pred{keep} FROM predictions p "
                    f"WHERE {where} AND p.ts >= $lo AND p.ts < $hi", params | {"lo": _ts(lo), "hi": _ts(hi)})
        con.execute(f"CREATE TEMP TABLE {table} AS SELECT p.*, l.y_true, l.label_ts, (p.y_pred - l.y_true) ^ 2 AS r2 "
                    f"FROM {table}_p p JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current")
        return _debug(ctx, lo, hi, f"SELECT * FROM {table}", {})
    finally:
        for name in (table, f"{table}_p"):
            con.execute(f"DROP TABLE IF EXISTS {name}")


def _debug(ctx: _Ctx, lo: float, hi: float, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    con = ctx.con
    charts, tables = [], []
    # histogram of squared errors on a log scale (bins in the engine)
    hist = con.execute(
        f"""SELECT floor(log10(greatest(r2, 1e-6)) * 4) / 4 AS b, count(*) FROM ({sql}) GROUP BY 1 ORDER BY 1""", params).fetchall()
    charts.append(_chart("sq_error_hist", "Distribution of squared errors (log10 bins)", {
        "mark": "bar", "encoding": {"x": {"field": "lo", "type": "quantitative", "title": "log10 squared error", "bin": {"binned": True, "step": 0.25}},
                                    "x2": {"field": "hi"}, "y": {"field": "n", "type": "quantitative", "title": "predictions"},
                                    "tooltip": [{"field": "lo"}, {"field": "n"}]}},
        [{"lo": float(b), "hi": float(b) + 0.25, "n": int(n)} for b, n in hist]))
    seg_cols = ctx.segments
    tail = con.execute(f"SELECT prediction_id, ts, version, y_pred, y_true, r2{''.join(', ' + _q(c) for c in seg_cols)} "
                       f"FROM ({sql}) ORDER BY r2 DESC LIMIT {TAIL_ROWS}", params).fetchall()
    tables.append(_table("tail", f"Top {TAIL_ROWS} squared errors", ["prediction_id", "ts", "version", "y_pred", "y_true", "squared error", *seg_cols],
                         [[r[0], _iso(r[1]), r[2], _fmt(r[3]), _fmt(r[4]), _fmt(r[5]), *[str(x) for x in r[6:]]] for r in tail]))
    total = con.execute(f"SELECT count(*) FROM ({sql})", params).fetchall()[0][0]
    sample_sql = sql if total <= SCATTER_SAMPLE else f"{sql} USING SAMPLE reservoir({SCATTER_SAMPLE} ROWS) REPEATABLE (7)"
    pts = con.execute(f"SELECT y_true, y_pred, version FROM ({sample_sql})", params).fetchall()
    charts.append(_chart("pred_vs_truth", "Prediction vs truth" + (f" (sample of {SCATTER_SAMPLE} of {total})" if total > SCATTER_SAMPLE else ""), {
        "mark": {"type": "circle", "size": 12, "opacity": 0.5},
        "encoding": {"x": {"field": "y_true", "type": "quantitative", "scale": {"zero": False}, "title": "truth"},
                     "y": {"field": "y_pred", "type": "quantitative", "scale": {"zero": False}, "title": "prediction"},
                     "color": {"field": "version", "type": "nominal"}}},
        [{"y_true": _num(a), "y_pred": _num(b), "version": v} for a, b, v in pts]))
    # feature distributions: the range vs the recorded baseline's period, else the period before it
    from msewatch.view_panels import features, reference_period

    lo_r, hi_r, ref_note = reference_period(ctx, lo, hi)
    feats, drift_rows = features(ctx, (lo, hi), (lo_r, hi_r), ref_note.split(" period")[0])
    charts.append(_chart("features", f"Feature distributions: the range vs the {'baseline' if ref_note.startswith('baseline') else 'previous'} period", {
        "facet": {"column": {"field": "feature", "type": "nominal", "title": None}},
        "resolve": {"scale": {"x": "independent"}},
        "spec": {"width": 240, "height": 180, "mark": {"type": "line", "interpolate": "step"},
                 "encoding": {"x": {"field": "x", "type": "quantitative", "title": "value"},
                              "y": {"field": "share", "type": "quantitative", "axis": {"format": "%"}, "title": "share"},
                              "color": {"field": "period", "type": "nominal"},
                              "tooltip": [{"field": "feature"}, {"field": "period"}, {"field": "x", "format": ".3g"}, {"field": "share", "format": ".1%"}]}}},
        feats, note=ref_note if ctx.features else "no feature columns stored"))
    for c in charts[-1:]:
        c["spec"].pop("width"), c["spec"].pop("height")
    tables.append(_table("feature_drift", "Feature drift vs the reference period (msewatch drift's tests)",
                         ["feature", "n reference", "n range", "KS", "KS p-value", "PSI", "PSI band", "Wasserstein/sd", "drift"],
                         drift_rows, note=ref_note if ctx.features else "no feature columns stored"))
    # label coverage and latency over time
    step = 3600 if hi - lo <= 3 * DAY else 6 * 3600
    cov = ctx.series(lo, hi, step)
    lat = {_iso(_ts(t)): (_num(p50), _num(p90)) for t, p50, p90 in con.execute(
        f"""SELECT (floor(epoch(ts))::BIGINT // {step}) * {step}, quantile_cont(epoch(label_ts) - epoch(ts), 0.5) / 3600,
        quantile_cont(epoch(label_ts) - epoch(ts), 0.9) / 3600 FROM ({sql}) WHERE label_ts IS NOT NULL GROUP BY 1""", params).fetchall()}
    cl = []
    for r in cov:
        cl.append({"t": r["t"], "metric": "label coverage (%)", "value": 100 * r["coverage"] if r["coverage"] is not None else None})
        p50, p90 = lat.get(r["t"], (None, None))
        if p50 is not None:
            cl.append({"t": r["t"], "metric": "label latency p50 (h)", "value": p50})
            cl.append({"t": r["t"], "metric": "label latency p90 (h)", "value": p90})
    charts.append(_chart("labels", "Label coverage and latency over time", {
        "facet": {"row": {"field": "metric", "type": "nominal", "title": None}},
        "resolve": {"scale": {"y": "independent"}},
        "spec": {"width": _WIDTH, "height": 110, "mark": "line",
                 "encoding": {"x": _T, "y": {"field": "value", "type": "quantitative", "title": None},
                              "color": {"field": "metric", "type": "nominal", "legend": None},
                              "tooltip": [_T, {"field": "metric"}, {"field": "value", "format": ".3g"}]}}},
        [r for r in cl if r["value"] is not None]))
    charts[-1]["spec"].pop("width"), charts[-1]["spec"].pop("height")
    return {"charts": charts, "tables": tables}


def _fmt(x: Any, spec: str = ".5g") -> str:
    return "" if x is None else format(x, spec)


def slo_dicts(statuses: list[Any]) -> list[dict[str, Any]]:
    out = []
    for s in statuses:
        d = s.to_dict()
        # the line drawn over rolling MSE: a window SLO's max_rmse², an event SLO's per-prediction
        # squared-error threshold (as the Grafana on-call dashboard draws them)
        slo = s.slo
        d["threshold_mse"] = slo.max_rmse ** 2 if slo.kind == "window" and slo.max_rmse else slo.threshold
        out.append(d)
    return out


def compute_view(con: Any, view: str, filters: Filters, *, slos: list[dict[str, Any]] | None = None,
                 alerts: list[dict[str, Any]] | None = None, canary: Any = None) -> dict[str, Any]:
    """One view's charts and tables over the store connection `con` (a DuckDB connection);
    `canary` is the `[canary]` configuration (a `CanaryConfig`) the on-call judge uses."""
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")
    ctx = _Ctx(con, filters)
    head = {"view": view, "model": ctx.model, "models": ctx.models, "versions": ctx.versions, "segments": ctx.segments,
            "cohort": ctx.cohort, "filters": filters.to_dict(), "data_until": _iso(_ts(ctx.data_hi)) if ctx.data_hi else None}
    if ctx.model is None:
        return head | {"charts": [], "tables": [], "empty": True}
    if view == "executive":
        body = executive(ctx, slos or [])
    elif view == "oncall":
        body = oncall(ctx, slos or [], alerts or [], canary)
    else:
        body = debug(ctx)
    return head | body


def compute_all(con: Any, filters: Filters, **kw: Any) -> dict[str, dict[str, Any]]:
    return {v: compute_view(con, v, filters, **kw) for v in VIEWS}


def dumps(doc: Any) -> str:
    """JSON safe to inline in a <script> element."""
    return json.dumps(doc, default=str, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def store_slos(con: Any, config: Any, at: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The SLO statuses of `config` at `at` (default: the newest data of their model), read-only."""
    from msewatch.monitor.series import load_series
    from msewatch.monitor.slo import evaluate_slo, series_span

    out = []
    for slo in config.monitor.slos:
        when = at
        if when is None:
            hi = con.execute("SELECT max(bucket_start) FROM rollups WHERE model = $m", {"m": slo.model}).fetchall()[0][0]
            when = (hi + dt.timedelta(minutes=1)) if hi is not None else dt.datetime.now(dt.timezone.utc)
        lo, hi = series_span(slo, when)
        series = load_series(con, slo.model, lo, hi, version=slo.version,
                             threshold=slo.threshold if slo.kind == "event" else None)
        out.extend(slo_dicts([evaluate_slo(slo, series, when.timestamp())]))
    return out


def store_alerts(con: Any) -> list[dict[str, Any]]:
    """Active (pending or firing) alerts as the server's monitor last stored them."""
    import duckdb

    try:
        rows = con.execute("SELECT state, labels, annotations, value, active_since FROM alert_state "
                           "WHERE state IN ('pending', 'firing') ORDER BY active_since").fetchall()
    except duckdb.CatalogException:  # no monitor tables in this store
        return []
    return [{"state": s, "labels": json.loads(lab), "annotations": json.loads(ann), "value": v, "active_since": _iso(since)}
            for s, lab, ann, v, since in rows]
