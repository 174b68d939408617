#!/usr/bin/env python
"""Guardrails evaluation benchmark: SLO statuses from the rollups against a raw-table SQL query.

The server evaluates its SLOs and alert rules every `[alerting] interval` (30 s) from the
store's per-minute rollups, so that a 28-day SLO period never rescans raw rows. This script
shows what that buys, as ratios against a reference measured in the same run:

    python bench/monitor_bench.py                   # 5M predictions, 5 repeats
    python bench/monitor_bench.py --rows 1000000    # a quick run
    python bench/monitor_bench.py --keep /tmp/mb    # keep the data and the store in /tmp/mb

What it does:
1. Generates seeded Parquet data (NumPy RNG, chunk by chunk): --rows predictions over 30 days
   of one model (`pricing`), versions v1 and v2 (v2 rolled out from day 10), a `region` segment
   of 8 values; labels for ~90% of them (`label_ts` = `ts` + a log-normal delay, median
   5 min), ~2% of those with an earlier provisional revision; label rows with a `label_ts`
   after `at` (below) are left out: the store as the server sees it at `at`, so recent windows
   are partly labeled and label_freshness has no label from the future. In the last 90 minutes the errors of
   region eu-west grow fourfold (an incident), so short burn windows differ from long ones and
   the rules have something to find. With --keep DIR the files are kept there and reused by a
   later run with the same --rows and --seed.
2. Ingests them into a fresh store with the code of `msewatch ingest` (`Store.ingest_file`,
   predictions then labels, each one transaction), after registering the event SLO's
   threshold as the server does at start (`Store.track_thresholds`), so the ingest keeps the
   good-event counts too. Reports rows/s.
3. In one process, on one store connection, --repeat rounds, each timing in turn:
     slo_statuses(event)   Monitor(config with the event SLO only).slo_statuses(at)
     slo_statuses(both)    Monitor(config with the event and the window SLO).slo_statuses(at)
     reference A           a hand-written DuckDB query over the raw tables (predictions JOIN
                           the current labels, `is_current`): good and bad events over the
                           period, labeled and bad events over each burn window (5m, 30m, 1h,
                           2h, 6h, 1d, 3d) ending at `at`: what a tool without rollups runs
                           on every pass
     evaluate, cold        the first Monitor(full config).evaluate(at) of a new Monitor (empty
                           alert book, empty rule cache: the cohort rule reads its trailing
                           30-day baseline from the raw rows, the delta_mse rule its
                           default baseline from the rollups)
     evaluate, warm        the same Monitor's next pass, 30 s later (baselines cached)
   The full config has both SLOs and three rules: delta_mse (window 1h), cohort_regression
   (by region, window 1h) and label_freshness (6h). No notifiers: delivery is not timed.
   Then, per rule, RuleEvaluator.findings alone (warm cache; and the cohort rule cold).
   Every query runs once untimed first, so DuckDB's buffers hold the tables in all runs;
   "cold" means the rule cache, not the disk.
   `at` is the end of the generated data, on an hour boundary.
4. Checks that reference A and msewatch agree: the event SLO's `good` and `bad` equal A's
   counts (min_labels = 1, min_coverage = 0, label_delay = 0 and `at` on the hour, so the
   hour-by-hour gating of the period counts every labeled prediction), and every burn rate
   equals A's bad / labeled / (1 - objective) to 1e-12 relative. Prints "agree", or
   "DISAGREE" with the differences and exits 1.
5. Peak RSS: each of those once more in a fresh process of its own (VmHWM from
   /proc/self/status, which a child does not inherit), with the wall time of that first run
   in a fresh process (DuckDB's buffers empty, files in the page cache).

Timings are wall seconds (time.perf_counter) inside the process; each run also records the CPU
the rest of the machine used meanwhile (from /proc/stat, in cores) and the load average is
printed before each phase: the timings are for people to read, never assertions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe, loadavg

# Keep the top-level imports to the standard library: this file is also its own child process.

GEN_VERSION = 3
CHUNK_ROWS = 1_000_000
ROW_GROUP_ROWS = 262_144
START = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
SPAN_DAYS = 30
MODEL = "pricing"
VERSIONS = ("v1", "v2")
REGIONS = ("us-east", "us-west", "eu-west", "eu-central", "ap-south", "ap-northeast", "sa-east", "af-south")
REGION_WEIGHTS = (0.25, 0.20, 0.15, 0.12, 0.10, 0.08, 0.06, 0.04)
LABELED_SHARE = 0.90
REVISED_SHARE = 0.02
MEDIAN_DELAY_S = 300.0
DELAY_SIGMA = 1.0
ID_MULTIPLIER = 0x9E3779B97F4A7C15
INCIDENT_S = 90 * 60  # the last 90 minutes: eu-west errors x4
INCIDENT_REGION = "eu-west"
INCIDENT_FACTOR = 4.0

THRESHOLD = 25.0  # event SLO: a labeled prediction is good when its squared error <= 25
EVENT_OBJECTIVE = 0.99
MAX_RMSE = 2.0  # window SLO: an hour is good when its RMSE <= 2
WINDOW_OBJECTIVE = 0.95
PASS_INTERVAL_S = 30  # the server's default [alerting] interval
REL_TOL = 1e-12

BENCH_DIR = Path(__file__).resolve().parent
AT = START + dt.timedelta(days=SPAN_DAYS)  # evaluation instant: the end of the data, on the hour


# -- data ----------------------------------------------------------------------------------------
def generate(preds_path: Path, labels_path: Path, rows: int, seed: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ts_type = pa.timestamp("us", tz="UTC")
    pred_schema = pa.schema([
        ("prediction_id", pa.string()), ("ts", ts_type), ("model", pa.string()), ("version", pa.string()),
        ("region", pa.string()), ("y_pred", pa.float64()),
    ])
    label_schema = pa.schema([("prediction_id", pa.string()), ("y_true", pa.float64()), ("label_ts", ts_type)])
    start_us = int(START.timestamp()) * 1_000_000
    span_us = SPAN_DAYS * 86_400 * 1_000_000
    incident_us = span_us - INCIDENT_S * 1_000_000
    at_us = int(AT.timestamp()) * 1_000_000
    n_chunks = max(1, math.ceil(rows / CHUNK_ROWS))
    region_p = np.array(REGION_WEIGHTS) / sum(REGION_WEIGHTS)
    regions = np.array(REGIONS, dtype=object)
    versions = np.array(VERSIONS, dtype=object)
    incident_r = REGIONS.index(INCIDENT_REGION)
    # per (region, version): residual bias and noise; v2 a little better
    bias_rv = np.array([[0.1 + 0.05 * i, 0.05 + 0.05 * i] for i in range(len(REGIONS))])
    sigma_rv = np.array([[1.0 + 0.25 * i, 0.9 * (1.0 + 0.25 * i)] for i in range(len(REGIONS))])
    tmp_preds, tmp_labels = preds_path.with_suffix(".parquet.tmp"), labels_path.with_suffix(".parquet.tmp")
    n_labeled = n_revised = n_label_rows = 0
    try:
        with pq.ParquetWriter(tmp_preds, pred_schema) as pw, pq.ParquetWriter(tmp_labels, label_schema) as lw:
            for k in range(n_chunks):
                lo, hi = k * rows // n_chunks, (k + 1) * rows // n_chunks
                n = hi - lo
                rng = np.random.default_rng([seed, k])
                idx = np.arange(lo, hi, dtype=np.uint64)
                ids = (idx * np.uint64(ID_MULTIPLIER)) & np.uint64(2**63 - 1)
                pid = pc.binary_join_element_wise("p", pc.cast(pa.array(ids), pa.string()), "")
                t_lo, t_hi = start_us + span_us * lo // rows, start_us + span_us * hi // rows
                ts = np.sort(rng.integers(t_lo, t_hi, n, dtype=np.int64))
                frac = (ts - start_us) / span_us
                p_v2 = np.clip((frac - 10 / 30) * 15.0, 0.0, 0.5)  # v2 from day 10, half the traffic by day 11
                v_idx = (rng.random(n) < p_v2).astype(np.int64)
                r_idx = rng.choice(len(REGIONS), size=n, p=region_p)
                sigma = sigma_rv[r_idx, v_idx] * np.where((r_idx == incident_r) & (ts - start_us >= incident_us),
                                                          INCIDENT_FACTOR, 1.0)
                y_true = rng.lognormal(mean=3.5, sigma=0.6, size=n)
                y_pred = y_true + bias_rv[r_idx, v_idx] + sigma * rng.standard_normal(n)
                pw.write_table(pa.table({
                    "prediction_id": pid,
                    "ts": pa.array(ts, ts_type),
                    "model": pa.array(np.full(n, MODEL, dtype=object), pa.string()),
                    "version": pa.array(versions[v_idx], pa.string()),
                    "region": pa.array(regions[r_idx], pa.string()),
                    "y_pred": pa.array(y_pred, pa.float64()),
                }, schema=pred_schema), row_group_size=ROW_GROUP_ROWS)

                labeled = np.flatnonzero(rng.random(n) < LABELED_SHARE)
                delay_us = (rng.lognormal(math.log(MEDIAN_DELAY_S), DELAY_SIGMA, labeled.size) * 1e6).astype(np.int64)
                delay_us = np.maximum(delay_us, 2_000_000)
                final_ts = ts[labeled] + delay_us
                revised = labeled[rng.random(labeled.size) < REVISED_SHARE]
                rev_pos = np.searchsorted(labeled, revised)
                early_ts = ts[revised] + (delay_us[rev_pos] * rng.uniform(0.1, 0.9, revised.size)).astype(np.int64)
                early_ts = np.minimum(early_ts, final_ts[rev_pos] - 1_000_000)
                early_y = y_true[revised] + rng.normal(0.0, 5.0, revised.size)
                lab_rows = np.concatenate([labeled, revised])
                lab_ts = np.concatenate([final_ts, early_ts])
                arrived = lab_ts <= at_us  # a label after `at` has not arrived yet
                lab = pa.table({
                    "prediction_id": pid.take(pa.array(lab_rows)),
                    "y_true": pa.array(np.concatenate([y_true[labeled], early_y]), pa.float64()),
                    "label_ts": pa.array(lab_ts, ts_type),
                }, schema=label_schema).filter(pa.array(arrived))
                lw.write_table(lab.take(pa.array(rng.permutation(lab.num_rows))), row_group_size=ROW_GROUP_ROWS)
                n_labeled += np.unique(lab_rows[arrived]).size
                n_revised += int(arrived[labeled.size:].sum())
                n_label_rows += lab.num_rows
        os.replace(tmp_preds, preds_path)
        os.replace(tmp_labels, labels_path)
    finally:
        for p in (tmp_preds, tmp_labels):
            p.unlink(missing_ok=True)
    return {
        "gen_version": GEN_VERSION, "rows": rows, "seed": seed, "labeled_predictions": int(n_labeled),
        "revised_labels": int(n_revised), "label_rows": int(n_label_rows),
        "start": START.isoformat(), "span_days": SPAN_DAYS,
    }


def data_paths(work: Path, rows: int, seed: int) -> tuple[Path, Path, Path]:
    stem = f"{rows}-seed{seed}"
    return (work / f"mb-predictions-{stem}.parquet", work / f"mb-labels-{stem}.parquet",
            work / f"mb-meta-{stem}.json")


# -- the monitor's config and the reference ------------------------------------------------------
BURN_WINDOWS = (300, 1800, 3600, 7200, 6 * 3600, 86400, 3 * 86400)  # as msewatch.monitor.slo


def configs(days: int) -> dict:
    from msewatch.monitor.config import AlertRule, MonitorConfig, Slo

    period = days * 86400
    event = Slo(name="price-accuracy", model=MODEL, kind="event", threshold=THRESHOLD,
                objective=EVENT_OBJECTIVE, period=period, min_labels=1, min_coverage=0.0)
    window = Slo(name="price-hourly-rmse", model=MODEL, kind="window", window=3600, max_rmse=MAX_RMSE,
                 objective=WINDOW_OBJECTIVE, period=period)
    rules = (
        AlertRule("price-mse-regression", "delta_mse", MODEL, severity="page", window=3600),
        AlertRule("price-cohort-regression", "cohort_regression", MODEL, by="region", window=3600),
        AlertRule("price-labels-fresh", "label_freshness", MODEL, max_age=6 * 3600),
    )
    return {
        "event": MonitorConfig(slos=(event,)),
        "both": MonitorConfig(slos=(event, window)),
        "full": MonitorConfig(slos=(event, window), rules=rules),
        "rules": rules,
    }


def reference_sql() -> str:
    """Event-SLO numbers straight from the raw tables: a scan of the period on every pass."""
    cols = [
        "count(*) FILTER (WHERE ts >= $period_lo AND r2 <= $tau) AS good",
        "count(*) FILTER (WHERE ts >= $period_lo AND NOT r2 <= $tau) AS bad",
    ]
    for w in BURN_WINDOWS:
        cols.append(f"count(*) FILTER (WHERE ts >= $w{w}) AS n_{w}")
        cols.append(f"count(*) FILTER (WHERE ts >= $w{w} AND NOT r2 <= $tau) AS bad_{w}")
    select = ",\n    ".join(cols)
    return f"""WITH pairs AS (
    SELECT p.ts, (p.y_pred - l.y_true) * (p.y_pred - l.y_true) AS r2
    FROM predictions p
    JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current
    WHERE p.model = $model AND p.ts >= $lo AND p.ts < $end
)
SELECT
    {select}
FROM pairs"""


def reference_params(days: int) -> dict:
    end = AT  # label_delay = 0
    period = days * 86400
    params = {"model": MODEL, "tau": THRESHOLD, "end": end,
              "lo": end - dt.timedelta(seconds=max(period, *BURN_WINDOWS)),
              "period_lo": end - dt.timedelta(seconds=period)}
    for w in BURN_WINDOWS:
        params[f"w{w}"] = end - dt.timedelta(seconds=w)
    return params


def run_reference(con, days: int) -> dict:
    cur = con.execute(reference_sql(), reference_params(days))
    names = [d[0] for d in cur.description]
    return dict(zip(names, cur.fetchall()[0]))


def check_agreement(status, ref: dict) -> list[str]:
    """Differences between msewatch's event-SLO status and reference A's counts."""
    problems = []
    if (status.good, status.bad) != (ref["good"], ref["bad"]):
        problems.append(f"period: msewatch good={status.good} bad={status.bad}, "
                        f"reference good={ref['good']} bad={ref['bad']}")
    allowed = 1.0 - status.slo.objective
    for w in BURN_WINDOWS:
        n, bad = ref[f"n_{w}"], ref[f"bad_{w}"]
        want = bad / n / allowed if n else None
        got = status.burn_rates.get(w)
        if (want is None) != (got is None) or (
            want is not None and not math.isclose(got, want, rel_tol=REL_TOL, abs_tol=0.0)
        ):
            problems.append(f"burn rate over {w} s: msewatch {got!r}, reference {want!r} ({bad} bad of {n})")
    return problems


# -- measuring (child processes) -----------------------------------------------------------------
def _vmhwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _machine_busy() -> float:
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def timed(fn):
    """(wall seconds, CPU cores the rest of the machine used meanwhile, fn's result)."""
    b0, c0 = _machine_busy(), time.process_time()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    others = max(0.0, (_machine_busy() - b0) - (time.process_time() - c0)) / wall if wall > 0 else 0.0
    return wall, others, out


def _emit(obj: dict) -> None:
    print("RESULT " + json.dumps(obj, default=str), flush=True)


def child_generate(preds: str, labels: str, meta_path: str, rows: int, seed: int) -> None:
    t0 = time.perf_counter()
    meta = generate(Path(preds), Path(labels), rows, seed)
    meta["generate_s"] = time.perf_counter() - t0
    Path(meta_path).write_text(json.dumps(meta, indent=2) + "\n")
    _emit(meta)


def child_ingest(db: str, preds: str, labels: str) -> None:
    from msewatch.store import Store

    out: dict = {}
    with Store(db) as store:
        store.track_thresholds(MODEL, [THRESHOLD])  # the server's Monitor does this at start
        for kind, path in (("predictions", preds), ("labels", labels)):
            wall, others, result = timed(lambda: store.ingest_file(kind, path))
            out[kind] = {"s": wall, "others": others, **result.summary()}
            print(f"  ingest {kind:<11} {wall:7.2f} s  {result.accepted:>11,} accepted  "
                  f"{result.duplicates} duplicates  {result.rejected} rejected  others {others:.2f} cores  "
                  f"load {loadavg()}", flush=True)
        out["current_labels"] = store.con.execute("SELECT count(*) FROM labels WHERE is_current").fetchall()[0][0]
        out["rollup_rows"] = store.con.execute("SELECT count(*) FROM rollups").fetchall()[0][0]
    out["db_mb"] = sum(p.stat().st_size for p in Path(db).parent.glob(Path(db).name + "*")) / 1024**2
    out["vmhwm_mb"] = _vmhwm_mb()
    _emit(out)


def child_measure(db: str, days: int, repeat: int) -> None:
    from msewatch.monitor.engine import Monitor
    from msewatch.monitor.rules import RuleEvaluator
    from msewatch.store import Store

    from msewatch.monitor.slo import BURN_WINDOWS as msewatch_windows

    if tuple(msewatch_windows) != BURN_WINDOWS:
        raise SystemExit(f"msewatch's burn windows changed to {msewatch_windows}; update BURN_WINDOWS")
    cfg = configs(days)
    store = Store(db)
    con = store.con
    m_event = Monitor(cfg["event"], con)
    m_both = Monitor(cfg["both"], con)

    def fresh_full() -> Monitor:
        con.execute("DELETE FROM alert_state; DELETE FROM alert_log")  # a server starting on this store
        return Monitor(cfg["full"], con)

    # untimed warm-up: DuckDB reads every table it will need into its buffers, compiles nothing twice
    m_event.slo_statuses(AT)
    m_both.slo_statuses(AT)
    run_reference(con, days)
    fresh_full().evaluate(AT)

    names = ("slo_event", "slo_both", "ref_a", "eval_cold", "eval_warm")
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    first: dict = {}
    for i in range(repeat):
        w, o, statuses = timed(lambda: m_event.slo_statuses(AT))
        runs["slo_event"].append((w, o))
        first.setdefault("status", statuses[0])
        w, o, both = timed(lambda: m_both.slo_statuses(AT))
        runs["slo_both"].append((w, o))
        first.setdefault("both", both)
        w, o, ref = timed(lambda: run_reference(con, days))
        runs["ref_a"].append((w, o))
        first.setdefault("ref", ref)
        monitor = fresh_full()
        w, o, cold = timed(lambda: monitor.evaluate(AT))
        runs["eval_cold"].append((w, o))
        first.setdefault("cold", cold)
        w, o, warm = timed(lambda: monitor.evaluate(AT + dt.timedelta(seconds=PASS_INTERVAL_S)))
        runs["eval_warm"].append((w, o))
        print(f"  round {i + 1}/{repeat}: " + "  ".join(f"{n} {runs[n][-1][0]:.3f} s" for n in names)
              + f"  load {loadavg()}", flush=True)

    # the rules one by one: warm (baselines cached), and the cohort rule with an empty cache
    parts: dict[str, list[tuple[float, float]]] = {}
    ev = RuleEvaluator(con)
    for rule in cfg["rules"]:
        ev.findings(rule, AT)
    for i in range(repeat):
        at = AT + dt.timedelta(seconds=PASS_INTERVAL_S * (i + 1))
        for rule in cfg["rules"]:
            w, o, _ = timed(lambda: ev.findings(rule, at))
            parts.setdefault(f"rule_{rule.type}", []).append((w, o))
        cohort = next(r for r in cfg["rules"] if r.type == "cohort_regression")
        w, o, _ = timed(lambda: RuleEvaluator(con).findings(cohort, AT))
        parts.setdefault("rule_cohort_regression_cold", []).append((w, o))
    store.close()

    status, ref, cold = first["status"], first["ref"], first["cold"]
    window_status = first["both"][1]
    _emit({
        "runs": runs, "parts": parts, "problems": check_agreement(status, ref), "vmhwm_mb": _vmhwm_mb(),
        "event": {"good": status.good, "bad": status.bad, "budget_remaining": status.budget_remaining,
                  "coverage": status.coverage,
                  "burn": {str(w): status.burn_rates.get(w) for w in BURN_WINDOWS}},
        "window": {"good": window_status.good, "bad": window_status.bad,
                   "budget_remaining": window_status.budget_remaining},
        "reference": ref,
        "findings": sorted(f.labels.get("alertname", "") + (f"/{f.labels['cohort']}" if "cohort" in f.labels else "")
                           for f in cold.findings),
        "errors": cold.errors,
    })


def child_rss(db: str, days: int, what: str) -> None:
    """One run of `what` in a fresh process: its wall time and the process's peak RSS."""
    t0 = time.perf_counter()
    from msewatch.monitor.engine import Monitor
    from msewatch.store import Store

    cfg = configs(days)
    store = Store(db)
    con = store.con
    opened = time.perf_counter() - t0
    if what == "open":
        fn = lambda: None  # noqa: E731
    elif what == "ref_a":
        fn = lambda: run_reference(con, days)  # noqa: E731
    elif what in ("slo_event", "slo_both"):
        m = Monitor(cfg["event" if what == "slo_event" else "both"], con)
        fn = lambda: m.slo_statuses(AT)  # noqa: E731
    elif what == "eval_cold":
        con.execute("DELETE FROM alert_state; DELETE FROM alert_log")
        m = Monitor(cfg["full"], con)
        fn = lambda: m.evaluate(AT)  # noqa: E731
    else:
        raise SystemExit(f"unknown run {what!r}")
    wall, others, _ = timed(fn)
    store.close()
    _emit({"what": what, "s": wall, "others": others, "open_s": opened, "vmhwm_mb": _vmhwm_mb()})


# -- the parent ----------------------------------------------------------------------------------
def run_child(*args: str) -> dict:
    """Run this script as a child; pass its lines through and return its RESULT."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0 or result is None:
        raise SystemExit(f"child failed with exit status {proc.returncode}: {' '.join(cmd)}")
    return result


LABELS = {
    "ref_a": "reference A: raw-table SQL, event SLO",
    "slo_event": "slo_statuses: event SLO",
    "slo_both": "slo_statuses: event + window SLO",
    "eval_cold": "evaluate: whole pass, cold",
    "eval_warm": "evaluate: whole pass, warm",
    "rule_delta_mse": "  rule delta_mse (warm)",
    "rule_cohort_regression": "  rule cohort_regression (warm)",
    "rule_cohort_regression_cold": "  rule cohort_regression (cold)",
    "rule_label_freshness": "  rule label_freshness (warm)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000, help="predictions to generate [5,000,000]")
    ap.add_argument("--days", type=int, default=28, help="SLO period in days [28]")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each; the median counts [5]")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--keep", type=Path, help="keep (and reuse) the data, and keep the store, in this directory")
    args = ap.parse_args(argv)
    if args.rows < 10_000 or args.repeat < 1 or args.days < 3:
        ap.error("--rows must be at least 10,000, --repeat at least 1, --days at least 3")

    print(describe(("msewatch", "duckdb", "ibis-framework", "pyarrow", "numpy")), flush=True)
    work_ctx = None
    if args.keep:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work_ctx = tempfile.TemporaryDirectory(prefix="monitor-bench-")
        work = Path(work_ctx.name)
    try:
        return _run(args, work)
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()


def _run(args, work: Path) -> int:
    t_start = time.perf_counter()
    preds, labels, meta_path = data_paths(work, args.rows, args.seed)
    meta = None
    if preds.exists() and labels.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("gen_version") != GEN_VERSION:
            meta = None
        else:
            print(f"reusing {preds.name} and {labels.name} in {work}")
    if meta is None:
        print(f"generating {args.rows:,} predictions (seed {args.seed}) in {work} … load {loadavg()}", flush=True)
        meta = run_child("generate", str(preds), str(labels), str(meta_path), str(args.rows), str(args.seed))
        print(f"generated in {meta['generate_s']:.1f} s")
    size_mb = (preds.stat().st_size + labels.stat().st_size) / 1024**2
    print(f"data: {meta['rows']:,} predictions, {meta['label_rows']:,} label rows ({meta['labeled_predictions']:,} "
          f"labeled predictions, {meta['revised_labels']:,} of them provisional revisions), {size_mb:,.0f} MB of Parquet")

    db = work / "store.duckdb"
    for p in (db, db.with_name(db.name + ".wal")):
        p.unlink(missing_ok=True)
    print(f"\ningest into a fresh store ({db}) with Store.ingest_file … load {loadavg()}", flush=True)
    ing = run_child("ingest", str(db), str(preds), str(labels))
    for kind, expected in (("predictions", meta["rows"]), ("labels", meta["label_rows"])):
        if ing[kind]["rejected"] or ing[kind]["accepted"] != expected:
            raise SystemExit(f"ingest of {kind}: {ing[kind]['accepted']:,} accepted, {ing[kind]['rejected']:,} "
                             f"rejected, {ing[kind]['duplicates']:,} duplicates of {expected:,} rows")
    n_ingested = ing["predictions"]["accepted"] + ing["labels"]["accepted"]
    s_ingest = ing["predictions"]["s"] + ing["labels"]["s"]
    print(f"  predictions {ing['predictions']['accepted'] / ing['predictions']['s']:,.0f} rows/s, labels "
          f"{ing['labels']['accepted'] / ing['labels']['s']:,.0f} rows/s, both {n_ingested / s_ingest:,.0f} rows/s; "
          f"store {ing['db_mb']:,.0f} MB, {ing['rollup_rows']:,} rollup rows, {ing['current_labels']:,} current "
          f"labels; ingest peak RSS {ing['vmhwm_mb']:,.0f} MB")

    print(f"\nevaluation at {AT.isoformat()} (SLO period {args.days} d), {args.repeat} rounds in one process, "
          f"one store connection … load {loadavg()}", flush=True)
    res = run_child("measure", str(db), str(args.days), str(args.repeat))

    print(f"\npeak RSS: each once more in a fresh process … load {loadavg()}", flush=True)
    fresh = {}
    for what in ("open", "slo_event", "slo_both", "ref_a", "eval_cold"):
        fresh[what] = run_child("rss", str(db), str(args.days), what)

    # -- report
    med = {k: statistics.median(w for w, _ in v) for k, v in {**res["runs"], **res["parts"]}.items()}
    spread = {k: (min(w for w, _ in v), max(w for w, _ in v), max(o for _, o in v))
              for k, v in {**res["runs"], **res["parts"]}.items()}
    ref = med["ref_a"]
    print()
    print(f"{'what':<40} {'median s':>9} {'min-max s':>15} {'vs ref A':>9} {'others':>7} "
          f"{'fresh proc s':>12} {'peak RSS MB':>11}")
    for key in ("ref_a", "slo_event", "slo_both", "eval_cold", "eval_warm", "rule_delta_mse",
                "rule_cohort_regression", "rule_cohort_regression_cold", "rule_label_freshness"):
        lo, hi, others = spread[key]
        f = fresh.get(key)
        fs = f"{f['s']:.3f}" if f else "-"
        rss = f"{f['vmhwm_mb']:.0f}" if f and f["vmhwm_mb"] else "-"
        print(f"{LABELS[key]:<40} {med[key]:>9.4f} {f'{lo:.4f}-{hi:.4f}':>15} {med[key] / ref:>8.3f}x "
              f"{others:>7.2f} {fs:>12} {rss:>11}")
    print(f"{'(a fresh process that only opens the store)':<40} {'':>9} {'':>15} {'':>9} {'':>7} "
          f"{fresh['open']['open_s']:>12.3f} {fresh['open']['vmhwm_mb']:>11.0f}")
    print(f"ref A / slo_statuses(event): {ref / med['slo_event']:,.1f}x; ref A / slo_statuses(both): "
          f"{ref / med['slo_both']:,.1f}x; evaluate cold / warm: {med['eval_cold'] / med['eval_warm']:.1f}x")
    print(f"others = the most CPU (in cores of {os.cpu_count()}) the rest of the machine used during one run; "
          f"measuring process peak RSS {res['vmhwm_mb']:.0f} MB; load now {loadavg()}")
    busy = max(o for _, _, o in spread.values())
    if busy > 0.25:
        print(f"WARNING: other processes used up to {busy:.2f} cores during a timed run; "
              "the timings are noisy, the ratios less so (the runs are interleaved).")

    ev, win = res["event"], res["window"]
    burns = ", ".join(f"{_dur(int(w))} {b:.3g}" if b is not None else f"{_dur(int(w))} -" for w, b in ev["burn"].items())
    print(f"\nevent SLO: good {ev['good']:,}, bad {ev['bad']:,}, budget remaining {ev['budget_remaining']:.3f}; "
          f"burn rates {burns}")
    print(f"window SLO: {win['good']} good and {win['bad']} bad hours, budget remaining {win['budget_remaining']:.3f}")
    print(f"cold pass findings: {', '.join(res['findings']) or 'none'}"
          + (f"; errors: {res['errors']}" if res["errors"] else ""))
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if res["problems"]:
        bar = "!" * 78
        print(f"\n{bar}\nDISAGREE: msewatch's event SLO and reference A differ:", file=sys.stderr)
        for p in res["problems"]:
            print(f"  {p}", file=sys.stderr)
        print(bar, file=sys.stderr)
        return 1
    print(f"agree: good and bad equal reference A's counts, all {len(BURN_WINDOWS)} burn rates within "
          f"{REL_TOL:g} relative")
    return 0


def _dur(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _child_main(argv: list[str]) -> int:
    kind, rest = argv[0], argv[1:]
    if kind == "generate":
        preds, labels, meta, rows, seed = rest
        child_generate(preds, labels, meta, int(rows), int(seed))
    elif kind == "ingest":
        child_ingest(*rest)
    elif kind == "measure":
        db, days, repeat = rest
        child_measure(db, int(days), int(repeat))
    elif kind == "rss":
        db, days, what = rest
        child_rss(db, int(days), what)
    else:
        raise SystemExit(f"unknown child {kind!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
