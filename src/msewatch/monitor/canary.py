"""The canary judge: is the new version's MSE worse than the control's? pass / fail / continue.

Two modes. *split*: the canary and the control serve different requests (a traffic split);
each arm's squared errors come from the per-minute rollups (count, Σr², and the centred sum of
squares of r², merged across minutes), over the time since the canary's first prediction.
*shadow*: the canary scored the same requests as the control without serving them; its
predictions are in `shadow_predictions` (they never count in production metrics) and are paired
with the control's by `prediction_id`, so the judge works on d = r²_canary − r²_control.

The statistics are `msewatch.monitor.sequential.judge` (a mixture SPRT: the verdict stays
valid however often it is read). No verdict while either arm has fewer than `min_n` labeled
predictions or a label coverage under `min_coverage` ("continue", with the reason). On the
first "fail" for a (model, canary, control), the configured rollback hook runs (a webhook
POST of the verdict and/or a command) and is recorded in the alert log.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

import httpx

from msewatch.errors import InputError
from msewatch.monitor.config import CanaryConfig
from msewatch.monitor.sequential import SampleMoments, judge

__all__ = ["CanaryReport", "judge_canary", "run_rollback"]


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CanaryReport:
    model: str
    canary: str
    control: str
    mode: str
    verdict: str
    reason: str
    p_value: float | None
    mse_ratio: float | None
    ci: tuple[float, float] | None
    n_canary: int
    n_control: int
    label_coverage: float | None
    mse_canary: float | None
    mse_control: float | None
    since: dt.datetime | None
    until: dt.datetime | None
    coverage_by_arm: dict[str, float | None] = field(default_factory=dict)
    rollback: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "p_value": self.p_value,
            "mse_ratio": self.mse_ratio,
            "ci": list(self.ci) if self.ci else None,
            "n_canary": self.n_canary,
            "n_control": self.n_control,
            "label_coverage": self.label_coverage,
            "model": self.model,
            "canary": self.canary,
            "control": self.control,
            "mode": self.mode,
            "mse_canary": self.mse_canary,
            "mse_control": self.mse_control,
            "label_coverage_by_arm": self.coverage_by_arm,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "rollback": self.rollback,
        }


def _merged(rows: list[tuple[Any, ...]]) -> tuple[int, SampleMoments]:
    """Predictions and the moments of r² from per-minute rollup rows (n_pred, n_lab, Σr², m2)."""
    n_pred = sum(int(r[0]) for r in rows)
    parts = [(int(r[1]), float(r[2]), float(r[3] or 0.0)) for r in rows if r[1]]
    n = sum(p[0] for p in parts)
    if not n:
        return n_pred, SampleMoments(0, 0.0, 0.0)
    mean = sum(p[1] for p in parts) / n
    m2 = sum(p[2] + p[0] * (p[1] / p[0] - mean) ** 2 for p in parts)
    return n_pred, SampleMoments(n, mean, m2)


def _split(con: Any, model: str, version: str, since: dt.datetime, until: dt.datetime) -> tuple[int, SampleMoments]:
    rows = con.execute(
        """SELECT n_predictions, n_labeled, coalesce(sum_sq, 0), m2_sq FROM rollups
        WHERE model = $m AND version = $v AND bucket_start >= $lo AND bucket_start < $hi""",
        {"m": model, "v": version, "lo": since, "hi": until},
    ).fetchall()
    return _merged(rows)


def _canary_start(con: Any, model: str, canary: str, mode: str) -> dt.datetime | None:
    if mode == "shadow":
        row = con.execute("SELECT min(ts) FROM shadow_predictions WHERE model = $m AND version = $v",
                          {"m": model, "v": canary}).fetchall()
    else:
        row = con.execute("SELECT min(bucket_start) FROM rollups WHERE model = $m AND version = $v",
                          {"m": model, "v": canary}).fetchall()
    return row[0][0] if row else None


def _has_shadow_table(con: Any) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'shadow_predictions' AND schema_name = 'main'"
    ).fetchall()[0][0])


def judge_canary(con: Any, model: str, canary: str, control: str, *, mode: str = "split",
                 since: dt.datetime | None = None, until: dt.datetime | None = None,
                 config: CanaryConfig | None = None, now: dt.datetime | None = None) -> CanaryReport:
    """Judge `canary` against `control` of `model` on the store at `con`."""
    config = config or CanaryConfig()
    if mode not in ("split", "shadow"):
        raise InputError(f"mode must be split or shadow; got {mode!r}.")
    if canary == control:
        raise InputError("canary and control must be different versions.")
    if mode == "shadow" and not _has_shadow_table(con):
        raise InputError("no shadow predictions in this store: send them to POST /v1/shadow or `msewatch ingest shadow`.")
    now = now or dt.datetime.now(dt.timezone.utc)
    end = min(until or now, now - dt.timedelta(seconds=config.label_delay))
    start = since or _canary_start(con, model, canary, mode)

    def report(verdict: str, reason: str, **kw: Any) -> CanaryReport:
        base: dict[str, Any] = {"p_value": None, "mse_ratio": None, "ci": None, "n_canary": 0, "n_control": 0,
                                "label_coverage": None, "mse_canary": None, "mse_control": None}
        base.update(kw)
        return CanaryReport(model, canary, control, mode, verdict, reason, since=start, until=end, **base)

    if start is None:
        return report("continue", f"no predictions of {model} {canary} yet")
    if start >= end:
        delay = f" (now − label_delay {config.label_delay}s)" if config.label_delay else ""
        return report("continue", f"no prediction of {model} {canary} before {_iso(end)}{delay}")
    if mode == "split":
        pred_c, canary_m = _split(con, model, canary, start, end)
        pred_b, control_m = _split(con, model, control, start, end)
        paired = None
        coverage = {canary: canary_m.n / pred_c if pred_c else None, control: control_m.n / pred_b if pred_b else None}
    else:
        row = con.execute(
            """WITH pairs AS (
                SELECT (s.y_pred - l.y_true) * (s.y_pred - l.y_true) AS rc,
                       (p.y_pred - l.y_true) * (p.y_pred - l.y_true) AS rb
                FROM shadow_predictions s
                JOIN predictions p ON p.prediction_id = s.prediction_id AND p.model = s.model AND p.version = $control
                JOIN labels l ON l.prediction_id = s.prediction_id AND l.is_current
                WHERE s.model = $m AND s.version = $canary AND s.ts >= $lo AND s.ts < $hi)
            SELECT (SELECT count(*) FROM shadow_predictions s WHERE s.model = $m AND s.version = $canary
                        AND s.ts >= $lo AND s.ts < $hi),
                   count(*), avg(rc), var_pop(rc) * count(*), avg(rb), var_pop(rb) * count(*),
                   avg(rc - rb), var_pop(rc - rb) * count(*)
            FROM pairs""",
            {"m": model, "canary": canary, "control": control, "lo": start, "hi": end},
        ).fetchall()[0]
        n_shadow, n, mc, m2c, mb, m2b, md, m2d = row
        n = int(n)
        canary_m = SampleMoments(n, float(mc or 0.0), float(m2c or 0.0))
        control_m = SampleMoments(n, float(mb or 0.0), float(m2b or 0.0))
        paired = SampleMoments(n, float(md or 0.0), float(m2d or 0.0))
        coverage = {canary: n / n_shadow if n_shadow else None}
        pred_c = int(n_shadow)
    known = [c for c in coverage.values() if c is not None]
    worst = min(known) if known else None
    arms = {"n_canary": canary_m.n, "n_control": control_m.n, "label_coverage": worst,
            "mse_canary": canary_m.mean if canary_m.n else None,
            "mse_control": control_m.mean if control_m.n else None}
    if pred_c == 0:
        return report("continue", f"no predictions of {model} {canary} in the judged range", **arms)
    if worst is not None and worst < config.min_coverage:
        out = report("continue", f"label coverage {worst:.0%} is below min_coverage = {config.min_coverage:.0%}",
                     **arms)
        out.coverage_by_arm = coverage
        return out
    j = judge(canary_m, control_m, paired=paired, alpha=config.alpha, tau_rel=config.tau_rel, margin=config.margin,
              min_n=config.min_n)
    out = report(j.verdict, j.reason, p_value=j.p_value, mse_ratio=j.mse_ratio, ci=j.ci, **arms)
    out.coverage_by_arm = coverage
    return out


# ------------------------------------------------------------------------------------- rollback


def run_rollback(con: Any, report: CanaryReport, config: CanaryConfig, *, at: dt.datetime | None = None) -> dict[str, Any] | None:
    """Run the rollback hook once per failed (model, canary, control); record it in the alert log.

    Returns what was done (or was done before), None when no hook is configured.
    """
    if report.verdict != "fail" or not (config.rollback_webhook or config.rollback_command):
        return None
    at = at or dt.datetime.now(dt.timezone.utc)
    key = json.dumps({"alertname": "canary_rollback", "model": report.model, "canary": report.canary,
                      "control": report.control}, sort_keys=True)
    done = con.execute(
        "SELECT \"at\", annotations FROM alert_log WHERE alertname = 'canary_rollback' AND labels = ?", [key]
    ).fetchall()
    if done:
        return {"already_done_at": _iso(done[0][0]), **json.loads(done[0][1])}
    outcome: dict[str, Any] = {}
    body = report.to_dict()
    if config.rollback_webhook:
        try:
            r = httpx.post(config.rollback_webhook, json=body, timeout=config.rollback_timeout)
            outcome["webhook"] = {"url": config.rollback_webhook, "status": r.status_code}
        except httpx.HTTPError as exc:
            outcome["webhook"] = {"url": config.rollback_webhook, "error": f"{type(exc).__name__}: {exc}"}
    if config.rollback_command:
        env = {**os.environ, "MSEWATCH_MODEL": report.model, "MSEWATCH_CANARY": report.canary,
               "MSEWATCH_CONTROL": report.control, "MSEWATCH_VERDICT": json.dumps(body, default=str)}
        try:
            proc = subprocess.run(list(config.rollback_command), env=env, capture_output=True, text=True,
                                  timeout=config.rollback_timeout, check=False)
            outcome["command"] = {"argv": list(config.rollback_command), "exit_status": proc.returncode,
                                  "output": (proc.stdout + proc.stderr)[-2000:]}
        except (OSError, subprocess.TimeoutExpired) as exc:
            outcome["command"] = {"argv": list(config.rollback_command), "error": f"{type(exc).__name__}: {exc}"}
    con.execute(
        "INSERT INTO alert_log VALUES (?, ?, 'canary_rollback', ?, 'page', 'rollback', ?, NULL, ?, ?)",
        [at, report.model + ":" + report.canary, report.model, report.mse_ratio, key,
         json.dumps({"summary": f"{report.model} {report.canary} rolled back: {report.reason}", **outcome}, default=str)],
    )
    return outcome
