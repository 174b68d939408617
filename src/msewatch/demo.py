"""`msewatch demo`: a seeded production scenario, ingested and evaluated like real data.

A pricing model serves four regions for three weeks. Labels (the realised price) arrive hours
to days after each prediction, some never, and a few are corrected later; on day 7 the label
pipeline stops for 18 hours. From day 10 a data drift degrades one region; on day 15 version v2
takes a share of traffic and is worse. The scenario is ingested day by day, as it would have
arrived, through the same code paths as `msewatch ingest`, and the guardrails (SLOs and alert
rules of `DEMO_MONITOR_CONFIG`) are evaluated at the end of every day, as `msewatch alerts
evaluate` run from cron would; the evaluation goes through `msewatch eval`'s code path.
"""

from __future__ import annotations

import datetime as dt
import io
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msewatch.evaluate import EvalSpec, run_evaluation
from msewatch.sources import from_store
from msewatch.store import Store

__all__ = ["Scenario", "run_demo", "write_scenario"]

START = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
DAY = 86_400


@dataclass(frozen=True)
class Scenario:
    days: int = 21
    per_hour: int = 240
    regions: tuple[str, ...] = ("eu-west", "us-east", "ap-south", "latam")
    drift_region: str = "latam"
    drift_day: int = 10
    rollout_day: int = 15
    v2_share: float = 0.3
    never_labeled: float = 0.07
    corrected: float = 0.01
    # the label pipeline stops on day 7 at 14:00 for 18 hours; what it held arrives on recovery
    label_outage_day: int = 7
    label_outage_start_hour: int = 14
    label_outage_hours: int = 18


def write_scenario(out_dir: Path, scenario: Scenario = Scenario(), seed: int = 7) -> dict[str, Path]:
    """Write predictions (Parquet), labels (NDJSON) and label corrections (CSV) to out_dir."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = scenario.days * 24 * scenario.per_hour
    start = START.timestamp()
    t = np.sort(rng.uniform(start, start + scenario.days * DAY, n))
    day = (t - start) // DAY
    region_idx = rng.choice(len(scenario.regions), size=n, p=[0.35, 0.3, 0.2, 0.15])
    region = np.array(scenario.regions)[region_idx]
    basket = rng.lognormal(mean=3.5, sigma=0.5, size=n)  # feature: basket value
    distance = rng.gamma(2.0, 5.0, size=n)  # feature: delivery distance, km
    hour = ((t - start) % DAY) / 3600
    truth = 4.0 + 0.12 * basket + 0.35 * distance + 1.5 * np.sin(2 * np.pi * hour / 24)
    truth += rng.normal(0, 0.8, n)

    v2 = (day >= scenario.rollout_day) & (rng.random(n) < scenario.v2_share)
    version = np.where(v2, "v2", "v1")
    noise = rng.normal(0, 1.0, n) * np.where(v2, 1.45, 1.0)
    pred = truth + noise + np.where(v2, 0.6, 0.0)
    # drift: from drift_day, distances in one region are reported in miles, not km, so the
    # model's input shrinks and its price is too low
    drifted = (region == scenario.drift_region) & (day >= scenario.drift_day)
    ramp = np.clip((day - scenario.drift_day + 1) / 3, 0, 1)
    pred = np.where(drifted, pred - 0.35 * distance * (1 - 1 / 1.609) * ramp, pred)

    ids = np.char.add("p-", np.arange(n).astype(str))
    predictions = pa.table(
        {
            "prediction_id": ids,
            "ts": pa.array((t * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
            "model": np.full(n, "pricing"),
            "version": version,
            "y_pred": np.round(pred, 4),
            "region": region,
            "basket_value": np.round(basket, 2),
            "distance_km": np.round(distance, 2),
        }
    )
    paths = {"predictions": out_dir / "predictions.parquet"}
    pq.write_table(predictions, paths["predictions"])

    # labels: lognormal delay (median ~5 h, tail of days); some never come; the scenario
    # ends "now", so recent predictions are not labeled yet
    delay = rng.lognormal(mean=np.log(5 * 3600), sigma=1.1, size=n)
    label_t = t + delay
    outage_start = start + scenario.label_outage_day * DAY + scenario.label_outage_start_hour * 3600
    outage_end = outage_start + scenario.label_outage_hours * 3600
    held = (label_t >= outage_start) & (label_t < outage_end)
    label_t = np.where(held, outage_end + rng.uniform(0, 3600, n), label_t)
    now = start + scenario.days * DAY
    labeled = (rng.random(n) >= scenario.never_labeled) & (label_t <= now)
    order = np.argsort(label_t[labeled])
    idx = np.flatnonzero(labeled)[order]
    paths["labels"] = out_dir / "labels.ndjson"
    with open(paths["labels"], "wb") as fh:
        for i in idx:
            fh.write(
                orjson.dumps(
                    {
                        "prediction_id": ids[i],
                        "y_true": round(float(truth[i]), 4),
                        "label_ts": _iso(label_t[i]),
                    }
                )
                + b"\n"
            )
    # corrections: a labelling job re-measures a few prices a day later (backfill, M7)
    fix = idx[rng.random(idx.size) < scenario.corrected]
    fix_t = label_t[fix] + DAY
    fix_t = np.where((fix_t >= outage_start) & (fix_t < outage_end), outage_end + rng.uniform(0, 3600, fix.size), fix_t)
    keep = fix_t <= now
    fix, fix_t = fix[keep], fix_t[keep]
    corrections = pa.table(
        {
            "prediction_id": ids[fix],
            "y_true": np.round(truth[fix] + rng.normal(0, 0.5, fix.size), 4),
            "label_ts": [_iso(x) for x in fix_t],
        }
    )
    paths["corrections"] = out_dir / "label-corrections.csv"
    pacsv.write_csv(corrections, paths["corrections"])
    return paths


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(float(epoch), tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def run_demo(
    db: str, *, seed: int = 7, fmt: str = "text", echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build the scenario into `db` (recreated) and report what on-call needs to know."""
    scenario = Scenario()
    db_path = Path(db)
    for stale in (db_path, Path(f"{db}.wal")):
        if stale.exists():
            stale.unlink()
    files = write_scenario(db_path.with_name(db_path.stem + "-files"), scenario, seed)
    text = fmt == "text"
    config_path = files["predictions"].parent / "msewatch.toml"
    config_path.write_text(DEMO_MONITOR_CONFIG, encoding="utf-8")
    with Store(db_path) as store:
        ingested, guardrails = _replay(store, files, scenario, config_path)
        if text:
            for name, s in ingested.items():
                echo(
                    f"ingested {files[name]} day by day: {s['accepted']} accepted, "
                    f"{s['duplicates']} duplicates, {s['rejected']} rejected"
                )
        source = from_store(store)
        daily_region = run_evaluation(
            source.engine, source.predictions, source.labels, EvalSpec(window=DAY, by=("region",))
        )
        # cohorts are judged on the incumbent version, so a worse rollout is not mistaken for
        # a regression of every region
        daily_region_v1 = run_evaluation(
            source.engine,
            source.predictions,
            source.labels,
            EvalSpec(window=DAY, by=("region",), version="v1"),
        )
        daily_version = run_evaluation(
            source.engine, source.predictions, source.labels, EvalSpec(window=DAY, by=("version",))
        )
        daily = run_evaluation(source.engine, source.predictions, source.labels, EvalSpec(window=DAY))
        overall_version = run_evaluation(
            source.engine,
            source.predictions,
            source.labels,
            EvalSpec(by=("version",), since=START + dt.timedelta(days=scenario.rollout_day)),
        )
    findings = _findings(daily_region_v1, overall_version, scenario)
    report = {
        "db": str(db_path),
        "files": {k: str(v) for k, v in files.items()},
        "ingested": ingested,
        "findings": findings,
        "guardrails": guardrails,
        "daily_by_region": daily_region,
        "daily_by_version": daily_version,
        "daily": daily,
    }
    if text:
        _print_report(report, scenario, echo)
    else:
        echo(orjson.dumps(report).decode())
    return report


DEMO_MONITOR_CONFIG = """\
# The guardrails of `msewatch demo` (see the README's Guardrails section).
[alerting]
interval = "30s"

[[slos]]
name = "pricing-accuracy"
model = "pricing"
kind = "event"
threshold = 6.63          # a prediction is good when its squared error is at most 6.63 (2.58 σ)
objective = 0.98
period = "28d"
min_labels = 30

[[alerts]]
name = "PricingMSERegression"
type = "delta_mse"
model = "pricing"
severity = "page"
window = "1d"
max_increase_pct = 15
min_n = 500

[[alerts]]
name = "PricingCohortRegression"
type = "cohort_regression"
model = "pricing"
by = "region"
severity = "ticket"
window = "1d"
max_increase_pct = 15
min_n = 200

[[alerts]]
name = "PricingLabelFreshness"
type = "label_freshness"
model = "pricing"
severity = "ticket"
max_age = "6h"

[[alerts]]
name = "PricingLabelCoverage"
type = "label_coverage"
model = "pricing"
severity = "ticket"
window = "1d"
label_delay = "3d"
min_coverage = 0.8
"""


def _label_times(column: Any) -> np.ndarray:
    """Epoch seconds of a label_ts column, read as ISO text (NDJSON) or as timestamps (CSV)."""
    import pyarrow.compute as pc

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.cast(column, pa.timestamp("us", tz="UTC"))
    return pc.divide(column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()), 1e6).to_numpy()


def _replay(store: Store, files: dict[str, Path], scenario: Scenario, config_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ingest the scenario day by day and run the guardrails at the end of each day."""
    import pyarrow.json as pajson

    from msewatch.config import load_config
    from msewatch.monitor.baselines import record_baseline
    from msewatch.monitor.engine import Monitor

    tables = {
        "predictions": pq.read_table(files["predictions"]),
        "labels": pajson.read_json(files["labels"]),
        "corrections": pacsv.read_csv(files["corrections"]),
    }
    times = {
        "predictions": tables["predictions"]["ts"].cast(pa.int64()).to_numpy() / 1e6,
        "labels": _label_times(tables["labels"]["label_ts"]),
        "corrections": _label_times(tables["corrections"]["label_ts"]),
    }
    rows = {name: np.arange(t.num_rows, dtype=np.int64) for name, t in tables.items()}
    monitor = Monitor(load_config(config_path).monitor, store.con)
    ingested = {name: {"accepted": 0, "duplicates": 0, "rejected": 0} for name in tables}
    transitions: list[dict[str, Any]] = []
    start = START.timestamp()
    canary: dict[str, Any] | None = None

    def ingest(lo: float, hi: float) -> None:
        for name in ("predictions", "labels", "corrections"):
            mask = (times[name] >= lo) & (times[name] < hi)
            if not mask.any():
                continue
            part = tables[name].filter(pa.array(mask)).append_column("_row", pa.array(rows[name][mask]))
            kind = "predictions" if name == "predictions" else "labels"
            result = store.ingest_batches(kind, part.to_batches(), source=str(files[name]))  # type: ignore[arg-type]
            for key, value in result.summary().items():
                ingested[name][key] += value

    for day in range(scenario.days):
        lo, hi = start + day * DAY, start + (day + 1) * DAY
        if day == scenario.rollout_day:  # the rollout day hour by hour, the canary judged each hour
            for hour in range(24):
                ingest(lo + hour * 3600, lo + (hour + 1) * 3600)
                if canary is None:
                    canary = _judge_canary(store, dt.datetime.fromtimestamp(lo + (hour + 1) * 3600, dt.timezone.utc))
        else:
            ingest(lo, hi)
        at = dt.datetime.fromtimestamp(hi, dt.timezone.utc)
        if day + 1 == 7:  # a week of production is the baseline the rules compare with
            source = from_store(store)
            record_baseline(store.con, source.engine, source.predictions, source.labels, model="pricing",
                            version=None, by=("region",), source="production, first week",
                            since=START, until=at)
        report = monitor.evaluate(at)
        for alert in report.changed:
            transitions.append({"at": _iso(hi), **alert.to_dict()})
    statuses = [s.to_dict() for s in monitor.slo_statuses(dt.datetime.fromtimestamp(hi, dt.timezone.utc))]
    return ingested, {"config": str(config_path), "transitions": transitions, "slos": statuses, "canary": canary}


def _judge_canary(store: Store, at: dt.datetime) -> dict[str, Any] | None:
    """The canary verdict on v2 vs v1 at `at`; on the first fail, the rollback hook runs."""
    import sys

    from msewatch.monitor.canary import judge_canary, run_rollback
    from msewatch.monitor.config import CanaryConfig

    hook = CanaryConfig(rollback_command=(sys.executable, "-c", "print('rolling back pricing v2 to v1')"))
    report = judge_canary(store.con, "pricing", "v2", "v1", now=at, config=hook)
    if report.verdict == "continue":
        return None
    report.rollback = run_rollback(store.con, report, hook, at=at)
    return {"at": _iso(at.timestamp()), **report.to_dict()}


def _findings(
    daily_region: list[dict[str, Any]], by_version: list[dict[str, Any]], scenario: Scenario
) -> list[dict[str, Any]]:
    """Cohorts whose daily RMSE left their first-week range, and versions worse than v1."""
    out: list[dict[str, Any]] = []
    for region in scenario.regions:
        rows = [r for r in daily_region if r["region"] == region and r["rmse"] is not None]
        baseline = statistics.median(r["rmse"] for r in rows[:7])
        for a, b in zip(rows, rows[1:]):
            if all(x["rmse"] > 1.15 * baseline and x["n_labeled"] >= 100 for x in (a, b)):
                worst = max(rows, key=lambda x: x["rmse"])
                out.append(
                    {
                        "kind": "cohort_regression",
                        "region": region,
                        "since": a["window_start"],
                        "baseline_rmse": baseline,
                        "worst_rmse": worst["rmse"],
                        "worst_day": worst["window_start"],
                    }
                )
                break
    versions = {r["version"]: r for r in by_version}
    if "v1" in versions and "v2" in versions and versions["v1"]["mse"]:
        ratio = versions["v2"]["mse"] / versions["v1"]["mse"]
        if ratio > 1.0:
            out.append(
                {
                    "kind": "version_regression",
                    "version": "v2",
                    "control": "v1",
                    "mse_ratio": ratio,
                    "n_labeled": versions["v2"]["n_labeled"],
                }
            )
    return out


def _print_report(report: dict[str, Any], scenario: Scenario, echo: Callable[[str], None]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120, record=True, file=io.StringIO(), force_terminal=False)
    regions = scenario.regions

    trend = Table(title="Daily RMSE by region (label coverage overall)", header_style="bold")
    trend.add_column("day (UTC)")
    for region in regions:
        trend.add_column(region, justify="right")
    trend.add_column("v1", justify="right")
    trend.add_column("v2", justify="right")
    trend.add_column("coverage", justify="right")
    cells: dict[tuple[str, str], Any] = {
        (r["window_start"], r["region"]): r["rmse"] for r in report["daily_by_region"]
    }
    cells.update({(r["window_start"], r["version"]): r["rmse"] for r in report["daily_by_version"]})
    for row in report["daily"]:
        day = row["window_start"]
        coverage = row["label_coverage"]
        trend.add_row(
            day[:10],
            *[_fmt(cells.get((day, c))) for c in (*regions, "v1", "v2")],
            f"{coverage:.0%}" if coverage is not None else "—",
        )
    console.print(trend)
    echo(console.export_text().rstrip())
    echo("")
    echo("What on-call should know:")
    findings = report["findings"]
    if not findings:
        echo("  nothing regressed.")
    for f in findings:
        if f["kind"] == "cohort_regression":
            echo(
                f"  - cohort region={f['region']} regressed from {f['since'][:10]} (on v1): daily "
                f"RMSE {f['baseline_rmse']:.3f} in its first week, {f['worst_rmse']:.3f} on "
                f"{f['worst_day'][:10]}."
            )
        else:
            echo(
                f"  - version {f['version']} is worse than {f['control']} on the same days: "
                f"MSE ×{f['mse_ratio']:.2f} over {f['n_labeled']} labeled predictions."
            )
    last = report["daily"][-1]
    echo(
        f"  - labels are still arriving: {last['label_coverage']:.0%} of {last['window_start'][:10]}'s "
        "predictions are labeled so far, so its MSE is provisional."
    )
    _print_guardrails(report["guardrails"], scenario, echo)
    echo("")
    echo(f"Store: {report['db']}. Try:")
    echo(f"  msewatch eval --db {report['db']} --window 1d --by region")
    echo(f"  msewatch eval --db {report['db']} --since 2026-10-16 --by version --format json")
    config = report["guardrails"]["config"]
    echo(f"  msewatch slo status --db {report['db']} --config {config} --at 2026-10-22")
    echo(f"  msewatch alerts list --db {report['db']} --format json")
    echo(f"  msewatch canary --db {report['db']} --model pricing --canary v2 --control v1 --until 2026-10-17")
    echo(f"  msewatch explain --db {report['db']} --model pricing --by region --a-since 2026-10-08 "
         "--a-until 2026-10-10 --b-since 2026-10-17 --b-until 2026-10-19")


def _print_guardrails(guardrails: dict[str, Any], scenario: Scenario, echo: Callable[[str], None]) -> None:
    echo("")
    echo(f"Guardrails, evaluated at the end of each day as the data arrived ({guardrails['config']}):")
    transitions = [t for t in guardrails["transitions"] if t["state"] != "pending"]
    if not transitions:
        echo("  no alert fired.")
    for t in transitions:
        labels = t["labels"]
        extra = f" {labels['cohort']}" if "cohort" in labels else ""
        echo(f"  {t['at'][:10]} {t['state'].upper():8} {labels.get('severity', ''):6} "
             f"{labels['alertname']}{extra}: {t['annotations'].get('summary', '')}")
    pages = [t for t in transitions if t["state"] == "firing" and t["labels"].get("severity") == "page"]
    if pages:
        first = pages[0]
        echo(f"  First page, {first['at'][:10]}: {first['annotations'].get('description', '')}")
        echo(f"  Its runbook: {first['annotations'].get('runbook', '')}")
    start = START + dt.timedelta(days=scenario.label_outage_day, hours=scenario.label_outage_start_hour)
    end = start + dt.timedelta(hours=scenario.label_outage_hours)
    mse_rules = ("slo_burn", "delta_mse", "cohort_regression", "tail_error")
    during = [t for t in transitions if t["state"] == "firing" and t["labels"].get("rule", "slo_burn") in mse_rules
              and start.isoformat()[:19] <= t["at"][:19] <= end.isoformat()[:19]]
    echo(f"  Label outage {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC: "
         + ("no MSE alert fired while labels were missing." if not during
            else f"{len(during)} MSE alerts fired while labels were missing."))
    canary = guardrails.get("canary")
    if canary:
        verb = "failed" if canary["verdict"] == "fail" else "passed"
        echo(f"  Canary v2 vs v1 (judged hourly from the rollout): {verb} at {canary['at'][:16]}Z after "
             f"{canary['n_canary']} labeled v2 and {canary['n_control']} v1 predictions, MSE ratio "
             f"{canary['mse_ratio']:.2f} (CI {canary['ci'][0]:.2f}–{canary['ci'][1]:.2f}, "
             f"always-valid p = {canary['p_value']:.2g}).")
        if canary.get("rollback", {}).get("command"):
            echo(f"  Rollback hook ran: {canary['rollback']['command']['output'].strip()}")
    for s in guardrails["slos"]:
        left = s["budget_remaining"]
        echo(f"  SLO {s['slo']}: {'—' if left is None else f'{left:.0%}'} of the error budget left "
             f"(objective {s['objective']:g} over {s['period']}).")


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


# -- the demo through a running server --------------------------------------------------------------
DEMO_CONFIG = """\
# written by `msewatch demo --serve`
[metrics]
segments = ["region"]
max_segment_values = 20

[models.pricing]
squared_error_buckets = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]
thresholds = [9.0]
"""


def _timeline(files: dict[str, Path]) -> tuple[np.ndarray, list[tuple[str, dict[str, Any]]]]:
    """Every event of the scenario (predictions at `ts`, labels at `label_ts`), by time."""
    import pyarrow.compute as pc

    preds = pq.read_table(files["predictions"])
    pred_t = pc.divide(preds["ts"].cast(pa.int64()), 1e6).to_numpy()
    preds = preds.set_column(
        preds.column_names.index("ts"), "ts", pc.strftime(preds["ts"], "%Y-%m-%dT%H:%M:%SZ")
    )
    events: list[tuple[str, dict[str, Any]]] = [("predictions", r) for r in preds.to_pylist()]
    times = [pred_t]
    labels = [orjson.loads(line) for line in files["labels"].read_bytes().splitlines()]
    labels += pacsv.read_csv(
        files["corrections"], convert_options=pacsv.ConvertOptions(column_types={"label_ts": pa.string()})
    ).to_pylist()
    events += [("labels", r) for r in labels]
    times.append(
        np.array([dt.datetime.fromisoformat(r["label_ts"].replace("Z", "+00:00")).timestamp() for r in labels])
    )
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")
    return t[order], [events[i] for i in order]


def serve_demo(
    db: str,
    *,
    port: int = 8080,
    seed: int = 7,
    replay_seconds: float = 60.0,
    keep_serving: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Replay the scenario through the SDK into a running `msewatch serve`, in time order.

    Three weeks of traffic are compressed into `replay_seconds`, so `/metrics` and
    `/v1/metrics` move while it runs. The server keeps serving afterwards until Ctrl-C unless
    `keep_serving` is false. The server is a child process that owns the store.
    """
    import signal
    import subprocess
    import sys
    import time

    import httpx
    from rich.progress import BarColumn, Progress, TextColumn

    from msewatch.client import Client

    db_path = Path(db)
    for stale in (db_path, Path(f"{db}.wal")):
        if stale.exists():
            stale.unlink()
    files = write_scenario(db_path.with_name(db_path.stem + "-files"), Scenario(), seed)
    config = db_path.with_name(db_path.stem + "-serve.toml")
    config.write_text(DEMO_CONFIG)
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "msewatch", "serve", "--db", str(db_path), "--port", str(port),
         "--config", str(config), "--log-level", "warning"]
    )
    try:
        _wait_ready(server, url)
        echo(f"msewatch serve is running at {url} on {db_path} (pid {server.pid}).")
        echo(f"  watch: curl -s {url}/metrics | grep msewatch_squared_error_count")
        echo(f"         msewatch eval --server {url} --window 1d --by version")
        times, events = _timeline(files)
        rejected: list[str] = []
        start_wall = time.monotonic()
        span = times[-1] - times[0]
        sent = 0
        with Client(url, batch_size=2000, flush_interval=0.25, max_queue=len(events) + 2000, spool_dir=db_path.with_name(db_path.stem + "-spool"),
                    on_reject=lambda kind, rec, err: rejected.append(err)) as client, Progress(
            TextColumn("replaying"), BarColumn(), TextColumn("{task.description}"), transient=True
        ) as progress:
            task = progress.add_task("", total=len(events))
            while sent < len(events):
                elapsed = time.monotonic() - start_wall
                until = times[0] + span * min(1.0, elapsed / replay_seconds)
                end = int(np.searchsorted(times, until, side="right"))
                if end == sent and elapsed < replay_seconds:
                    time.sleep(0.05)
                    continue
                end = max(end, sent + 1)
                batch = events[sent:end]
                for kind in ("predictions", "labels"):
                    records = [r for k, r in batch if k == kind]
                    if records:
                        (client.log_predictions if kind == "predictions" else client.log_labels)(records)
                sent = end
                day = dt.datetime.fromtimestamp(float(times[sent - 1]), tz=dt.timezone.utc)
                progress.update(task, completed=sent, description=f"{day:%Y-%m-%d %H:%M} UTC, {sent:,} events")
            client.flush()
            stats = client.stats
        echo(
            f"replayed {len(events):,} events in {time.monotonic() - start_wall:.1f} s: "
            f"{stats.accepted:,} accepted, {stats.duplicates:,} duplicates, {stats.rejected:,} rejected"
        )
        rows = httpx.get(
            f"{url}/v1/metrics", params={"by": "version", "since": "2026-10-16"}, timeout=120
        ).json()["rows"]
        for row in rows:
            echo(f"  since 2026-10-16, version {row['version']}: RMSE {row['rmse']:.3f} over {row['n_labeled']:,} labels")
        exposition = httpx.get(f"{url}/metrics", timeout=30).text
        counted = sum(
            float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
            if line.startswith("msewatch_squared_error_count{")
        )
        echo(f"  Prometheus: msewatch_squared_error_count sums to {counted:,.0f} labeled predictions")
        if keep_serving:
            echo(f"Still serving at {url}; Ctrl-C to stop.")
            server.wait()
        return {"url": url, "events": len(events), "stats": stats.__dict__ if hasattr(stats, "__dict__") else str(stats),
                "by_version": rows, "prometheus_count": counted, "rejected": rejected}
    except KeyboardInterrupt:
        return {"url": url, "interrupted": True}
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()


def _wait_ready(server: Any, url: str, timeout: float = 60.0) -> None:
    import time

    import httpx

    from msewatch.errors import MsewatchError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise MsewatchError(f"the demo server exited with status {server.returncode} (is port {url} in use?)")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise MsewatchError(f"the demo server at {url} was not ready after {timeout:.0f} s")
