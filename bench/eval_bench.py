#!/usr/bin/env python
"""Batch evaluation benchmark: `msewatch eval` against a hand-written DuckDB query and pandas.

DESIGN.md section 6: evaluating 10M predictions joined to ~9M labels, hourly x region x
version, all metrics with exact quantiles, should take at most 1.5x the time of a hand-written
DuckDB SQL query on the same Parquet files, be at least 2.5x faster than a pandas
implementation, and peak below 4 GB of resident memory.

    python bench/eval_bench.py                    # 10M predictions, 3 repeats (several minutes)
    python bench/eval_bench.py --rows 1000000     # a quick run
    python bench/eval_bench.py --only msewatch,duckdb-sql --repeat 5

What it does:
1. Generates seeded Parquet data in --data-dir (default bench/data/), chunk by chunk, or reuses
   files from an earlier run with the same --rows and --seed. Predictions: prediction_id, ts
   (UTC, spanning 30 days), model, version (v1, v2 rolled out from day 10, a v3 canary from
   day 22), region (8 values), y_pred. Labels: prediction_id, y_true, label_ts (ts plus a
   log-normal delay, median 6 h) for ~90% of the predictions; ~2% of those have an earlier,
   provisional revision as well, so "the latest label_ts counts" changes the result. Label rows
   are shuffled across the whole file.
2. Runs each candidate --repeat times, interleaved, each run a fresh process:
     msewatch    the real CLI: msewatch eval --predictions P --labels L --window 1h
                 --by region,version --format csv (stdout to a file, for the check below)
     duckdb-sql  a hand-written DuckDB query (read_parquet, arg_max for the latest label,
                 left join, group by) fetched to Arrow, in a python child
     pandas      read_parquet, sort + drop_duplicates for the latest label, merge, groupby
                 aggregations and quantiles, in a python child
   Wall time is time.perf_counter() around subprocess.run of the whole process (interpreter
   start and imports included). Peak RSS comes from /usr/bin/time (%M) when present, else from
   a small stdlib-only python intermediary that reads os.wait4's rusage. Not from this
   process's RUSAGE_CHILDREN or the child's RUSAGE_SELF: on Linux a child's ru_maxrss starts
   at its parent's RSS at fork/exec, and this parent has just generated the data.
3. Checks that the three results agree (same groups, equal counts, every float metric equal
   to 1e-9 relative) and exits 1 if they do not. Prints the medians, the ratios and whether
   each target is met. Missing a target does not change the exit status (timings are for
   people to read, never assertions).
"""

from __future__ import annotations

import argparse
import csv
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

from _machine import describe

# Keep the top-level imports to the standard library: this file is also the child process of
# the python candidates, which import only what they need.

GEN_VERSION = 2
CHUNK_ROWS = 1_000_000  # rows generated and held in memory at once
ROW_GROUP_ROWS = 262_144  # Parquet row group size of the generated files
START = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
SPAN_DAYS = 30
MODEL = "pricing"
REGIONS = ("us-east", "us-west", "eu-west", "eu-central", "ap-south", "ap-northeast", "sa-east", "af-south")
REGION_WEIGHTS = (0.25, 0.20, 0.15, 0.12, 0.10, 0.08, 0.06, 0.04)
VERSIONS = ("v1", "v2", "v3")
LABELED_SHARE = 0.90
REVISED_SHARE = 0.02  # of the labeled predictions, those with an earlier provisional label
MEDIAN_DELAY_S = 6 * 3600.0
DELAY_SIGMA = 1.0
ID_MULTIPLIER = 0x9E3779B97F4A7C15  # odd: i -> i*M mod 2^63 is a bijection, so ids are unique

WINDOW_S = 3600
HUBER_DELTA = 1.0
EPSILON = 2.220446049250313e-16  # float64 eps, as msewatch.metrics.EPSILON
KEYS = ("window_start", "region", "version")
COUNT_METRICS = ("n_predictions", "n_labeled")
FLOAT_METRICS = (
    "label_coverage", "mse", "rmse", "mae", "bias", "error_variance", "r2", "mape", "huber",
    "p50_sq_err", "p90_sq_err", "p99_sq_err", "label_latency_p50_s", "label_latency_p90_s",
)
REL_TOL = 1e-9
ABS_TOL = 1e-12  # only so that exact zeros compare equal; all real metrics here are far larger

CANDIDATES = ("msewatch", "duckdb-sql", "pandas")
TARGET_VS_DUCKDB = 1.5  # msewatch wall <= 1.5 x duckdb-sql wall
TARGET_VS_PANDAS = 2.5  # pandas wall >= 2.5 x msewatch wall
TARGET_PEAK_MB = 4096.0

BENCH_DIR = Path(__file__).resolve().parent


# -- data ----------------------------------------------------------------------------------------
def data_paths(data_dir: Path, rows: int, seed: int) -> tuple[Path, Path, Path]:
    stem = f"{rows}-seed{seed}"
    return (
        data_dir / f"predictions-{stem}.parquet",
        data_dir / f"labels-{stem}.parquet",
        data_dir / f"meta-{stem}.json",
    )


def ensure_data(data_dir: Path, rows: int, seed: int, *, force: bool = False) -> tuple[Path, Path, dict]:
    """The prediction and label files for (rows, seed), generated unless already present."""
    data_dir.mkdir(parents=True, exist_ok=True)
    preds, labels, meta_path = data_paths(data_dir, rows, seed)
    if not force and preds.exists() and labels.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("gen_version") == GEN_VERSION and meta.get("rows") == rows and meta.get("seed") == seed:
            import pyarrow.parquet as pq

            if pq.ParquetFile(preds).metadata.num_rows == rows and (
                pq.ParquetFile(labels).metadata.num_rows == meta["label_rows"]
            ):
                print(f"reusing {preds.name} and {labels.name} in {data_dir}")
                return preds, labels, meta
    print(f"generating {rows:,} predictions (seed {seed}) in {data_dir} …", flush=True)
    t0 = time.perf_counter()
    meta = _generate(preds, labels, rows, seed)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"generated in {time.perf_counter() - t0:.1f} s", flush=True)
    return preds, labels, meta


def _generate(preds_path: Path, labels_path: Path, rows: int, seed: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ts_type = pa.timestamp("us", tz="UTC")
    pred_schema = pa.schema(
        [
            ("prediction_id", pa.string()),
            ("ts", ts_type),
            ("model", pa.string()),
            ("version", pa.string()),
            ("region", pa.string()),
            ("y_pred", pa.float64()),
        ]
    )
    label_schema = pa.schema([("prediction_id", pa.string()), ("y_true", pa.float64()), ("label_ts", ts_type)])
    start_us = int(START.timestamp()) * 1_000_000
    span_us = SPAN_DAYS * 86_400 * 1_000_000
    n_chunks = max(1, math.ceil(rows / CHUNK_ROWS))
    n_buckets = n_chunks  # label rows are scattered over buckets, then each bucket is shuffled
    region_p = np.array(REGION_WEIGHTS) / sum(REGION_WEIGHTS)
    regions = np.array(REGIONS, dtype=object)
    versions = np.array(VERSIONS, dtype=object)
    # per (region, version): residual bias and noise, so groups differ
    # (no true bias of 0: a mean residual near 0 would make the 1e-9 relative check ill-conditioned)
    bias_rv = np.array([[0.1 + 0.05 * i, 0.5 + 0.05 * i, -0.3] for i in range(len(REGIONS))])
    sigma_rv = np.array([[1.0 + 0.25 * i, 1.4 + 0.25 * i, 0.9 + 0.25 * i] for i in range(len(REGIONS))])

    tmp_preds = preds_path.with_suffix(".parquet.tmp")
    tmp_labels = labels_path.with_suffix(".parquet.tmp")
    bucket_dir = Path(tempfile.mkdtemp(prefix="labels-buckets-", dir=labels_path.parent))
    bucket_paths = [bucket_dir / f"b{b}.parquet" for b in range(n_buckets)]
    bucket_writers = [pq.ParquetWriter(p, label_schema) for p in bucket_paths]
    n_labeled = n_revised = 0
    try:
        with pq.ParquetWriter(tmp_preds, pred_schema) as pw:
            for k in range(n_chunks):
                lo, hi = k * rows // n_chunks, (k + 1) * rows // n_chunks
                n = hi - lo
                rng = np.random.default_rng([seed, k])
                idx = np.arange(lo, hi, dtype=np.uint64)
                ids = (idx * np.uint64(ID_MULTIPLIER)) & np.uint64(2**63 - 1)
                pid = pc.binary_join_element_wise("p", pc.cast(pa.array(ids), pa.string()), "")
                # prediction times: this chunk's share of the 30 days, sorted
                t_lo, t_hi = start_us + span_us * lo // rows, start_us + span_us * hi // rows
                ts = np.sort(rng.integers(t_lo, t_hi, n, dtype=np.int64))
                frac = (ts - start_us) / span_us
                p_v3 = np.where(frac > 22 / 30, 0.05, 0.0)
                p_v2 = np.clip((frac - 10 / 30) * 3.0, 0.0, 0.6)
                u = rng.random(n)
                v_idx = np.where(u < p_v3, 2, np.where(u < p_v3 + p_v2, 1, 0))
                r_idx = rng.choice(len(REGIONS), size=n, p=region_p)
                y_true = rng.lognormal(mean=3.5, sigma=0.6, size=n)
                y_pred = y_true + bias_rv[r_idx, v_idx] + sigma_rv[r_idx, v_idx] * rng.standard_normal(n)
                pw.write_table(
                    pa.table(
                        {
                            "prediction_id": pid,
                            "ts": pa.array(ts, ts_type),
                            "model": pa.array(np.full(n, MODEL, dtype=object), pa.string()),
                            "version": pa.array(versions[v_idx], pa.string()),
                            "region": pa.array(regions[r_idx], pa.string()),
                            "y_pred": pa.array(y_pred, pa.float64()),
                        },
                        schema=pred_schema,
                    ),
                    row_group_size=ROW_GROUP_ROWS,
                )

                # labels: ~90% of the predictions, ts + log-normal delay
                labeled = np.flatnonzero(rng.random(n) < LABELED_SHARE)
                delay_us = (rng.lognormal(math.log(MEDIAN_DELAY_S), DELAY_SIGMA, labeled.size) * 1e6).astype(np.int64)
                delay_us = np.maximum(delay_us, 2_000_000)
                final_ts = ts[labeled] + delay_us
                # ~2%: an earlier provisional label with a different value
                revised = labeled[rng.random(labeled.size) < REVISED_SHARE]
                rev_pos = np.searchsorted(labeled, revised)
                early_ts = ts[revised] + (delay_us[rev_pos] * rng.uniform(0.1, 0.9, revised.size)).astype(np.int64)
                early_ts = np.minimum(early_ts, final_ts[rev_pos] - 1_000_000)
                early_y = y_true[revised] + rng.normal(0.0, 5.0, revised.size)
                lab_rows = np.concatenate([labeled, revised])
                lab = pa.table(
                    {
                        "prediction_id": pid.take(pa.array(lab_rows)),
                        "y_true": pa.array(np.concatenate([y_true[labeled], early_y]), pa.float64()),
                        "label_ts": pa.array(np.concatenate([final_ts, early_ts]), ts_type),
                    },
                    schema=label_schema,
                )
                bucket = rng.integers(0, n_buckets, lab.num_rows)
                order = np.argsort(bucket, kind="stable")
                bounds = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
                for b in range(n_buckets):
                    part = order[bounds[b] : bounds[b + 1]]
                    if part.size:
                        bucket_writers[b].write_table(lab.take(pa.array(part)))
                n_labeled += labeled.size
                n_revised += revised.size
                if sys.stdout.isatty():
                    print(f"  chunk {k + 1}/{n_chunks}", end="\r", flush=True)
        for w in bucket_writers:
            w.close()
        bucket_writers = []
        shuffle_rng = np.random.default_rng([seed, 1_000_003])
        with pq.ParquetWriter(tmp_labels, label_schema) as lw:
            for p in bucket_paths:
                part = pq.read_table(p)
                lw.write_table(part.take(pa.array(shuffle_rng.permutation(part.num_rows))), row_group_size=ROW_GROUP_ROWS)
                del part
        os.replace(tmp_preds, preds_path)
        os.replace(tmp_labels, labels_path)
    finally:
        for w in bucket_writers:
            w.close()
        shutil.rmtree(bucket_dir, ignore_errors=True)
        for p in (tmp_preds, tmp_labels):
            p.unlink(missing_ok=True)
    if sys.stdout.isatty():
        print(" " * 40, end="\r")
    return {
        "gen_version": GEN_VERSION,
        "rows": rows,
        "seed": seed,
        "labeled_predictions": int(n_labeled),
        "revised_labels": int(n_revised),
        "label_rows": int(n_labeled + n_revised),
        "start": START.isoformat(),
        "span_days": SPAN_DAYS,
    }


# -- candidates (each runs in its own process) ---------------------------------------------------
DUCKDB_SQL = f"""
WITH latest AS (
    SELECT prediction_id, arg_max(y_true, label_ts) AS y_true, max(label_ts) AS label_ts
    FROM read_parquet($labels)
    GROUP BY prediction_id
),
joined AS (
    SELECT
        CAST(floor(epoch(p.ts) / {WINDOW_S}) AS BIGINT) * {WINDOW_S} AS window_start,
        p.region,
        p.version,
        l.y_true,
        p.y_pred - l.y_true AS r,
        epoch(l.label_ts) - epoch(p.ts) AS latency
    FROM read_parquet($predictions) AS p
    LEFT JOIN latest AS l USING (prediction_id)
),
agg AS (
    SELECT
        window_start, region, version,
        count(*) AS n_predictions,
        count(y_true) AS n_labeled,
        sum(r * r) AS sum_sq,
        avg(r * r) AS mse,
        avg(abs(r)) AS mae,
        avg(r) AS bias,
        var_pop(r) AS error_variance,
        var_pop(y_true) AS var_y,
        min(y_true) AS y_min,
        max(y_true) AS y_max,
        avg(abs(r) / greatest(abs(y_true), {EPSILON!r})) AS mape,
        avg(CASE WHEN abs(r) <= {HUBER_DELTA!r} THEN 0.5 * r * r
                 ELSE {HUBER_DELTA!r} * (abs(r) - 0.5 * {HUBER_DELTA!r}) END) AS huber,
        quantile_cont(r * r, [0.5, 0.9, 0.99]) AS q,
        quantile_cont(latency, [0.5, 0.9]) AS lat
    FROM joined
    GROUP BY window_start, region, version
)
SELECT
    window_start, region, version, n_predictions, n_labeled,
    n_labeled / n_predictions AS label_coverage,
    mse, sqrt(mse) AS rmse, mae, bias, error_variance,
    CASE WHEN n_labeled > 0 AND y_max > y_min THEN 1 - sum_sq / (var_y * n_labeled) END AS r2,
    mape, huber,
    q[1] AS p50_sq_err, q[2] AS p90_sq_err, q[3] AS p99_sq_err,
    lat[1] AS label_latency_p50_s, lat[2] AS label_latency_p90_s
FROM agg
ORDER BY window_start, region, version
"""


def _vmhwm_mb() -> float | None:
    """This process's own peak RSS (VmHWM is per address space, so not inherited)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_duckdb(predictions: str, labels: str, out: str) -> None:
    t0 = time.perf_counter()
    import duckdb
    import pyarrow.parquet as pq

    t1 = time.perf_counter()
    con = duckdb.connect()
    table = con.execute(DUCKDB_SQL, {"predictions": predictions, "labels": labels}).to_arrow_table()
    t2 = time.perf_counter()
    pq.write_table(table, out)
    print(json.dumps({"import_s": t1 - t0, "query_s": t2 - t1, "rows": table.num_rows, "vmhwm_mb": _vmhwm_mb()}))


def child_pandas(predictions: str, labels: str, out: str) -> None:
    t0 = time.perf_counter()
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    t1 = time.perf_counter()
    preds = pd.read_parquet(predictions, columns=["prediction_id", "ts", "region", "version", "y_pred"])
    labs = pd.read_parquet(labels, columns=["prediction_id", "y_true", "label_ts"])
    latest = labs.sort_values("label_ts", kind="stable").drop_duplicates("prediction_id", keep="last")
    del labs
    df = preds.merge(latest, on="prediction_id", how="left")
    del preds, latest
    epoch = pd.Timestamp(0, tz="UTC")
    ts_s = (df["ts"] - epoch).dt.total_seconds()
    df["window_start"] = (np.floor(ts_s / WINDOW_S) * WINDOW_S).astype("int64")
    df["latency"] = (df["label_ts"] - epoch).dt.total_seconds() - ts_s
    r = df["y_pred"] - df["y_true"]
    absr = r.abs()
    df["r"] = r
    df["sq"] = r * r
    df["absr"] = absr
    df["ape"] = absr / np.maximum(df["y_true"].abs(), EPSILON)
    df["hub"] = np.where(absr <= HUBER_DELTA, 0.5 * df["sq"], HUBER_DELTA * (absr - 0.5 * HUBER_DELTA))
    df.loc[r.isna(), "hub"] = np.nan
    g = df.groupby(list(KEYS), sort=True, observed=True)
    res = g.agg(
        n_predictions=("y_pred", "size"),
        n_labeled=("y_true", "count"),
        sum_sq=("sq", "sum"),
        mse=("sq", "mean"),
        mae=("absr", "mean"),
        bias=("r", "mean"),
        mape=("ape", "mean"),
        huber=("hub", "mean"),
        y_min=("y_true", "min"),
        y_max=("y_true", "max"),
    )
    res["error_variance"] = g["r"].var(ddof=0)
    var_y = g["y_true"].var(ddof=0)
    q = g["sq"].quantile([0.5, 0.9, 0.99]).unstack()
    lat = g["latency"].quantile([0.5, 0.9]).unstack()
    res["label_coverage"] = res["n_labeled"] / res["n_predictions"]
    res["rmse"] = np.sqrt(res["mse"])
    ok = (res["n_labeled"] > 0) & (res["y_max"] > res["y_min"])
    res["r2"] = (1.0 - res["sum_sq"] / (var_y * res["n_labeled"])).where(ok)
    res["p50_sq_err"], res["p90_sq_err"], res["p99_sq_err"] = q[0.5], q[0.9], q[0.99]
    res["label_latency_p50_s"], res["label_latency_p90_s"] = lat[0.5], lat[0.9]
    res = res.reset_index()[[*KEYS, *COUNT_METRICS, *FLOAT_METRICS]]
    t2 = time.perf_counter()
    table = pa.Table.from_pandas(res, preserve_index=False)
    pq.write_table(table, out)
    print(json.dumps({"import_s": t1 - t0, "query_s": t2 - t1, "rows": table.num_rows, "vmhwm_mb": _vmhwm_mb()}))


def child_measure(cmd: list[str], stdout_path: str, rusage_path: str) -> int:
    """Run cmd and write its peak RSS (KiB, from wait4) to rusage_path: a stand-in for
    /usr/bin/time. This intermediary imports only the standard library, so the RSS the
    command inherits at fork (a few MB) hardly counts."""
    with open(stdout_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    Path(rusage_path).write_text(str(usage.ru_maxrss))
    return proc.returncode


# -- running and measuring -----------------------------------------------------------------------
def _cpu_snapshot() -> tuple[float, float, float]:
    """(busy CPU seconds of the whole machine, steal seconds, CPU seconds of our waited-for children)."""
    import resource

    busy = steal = 0.0
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        # user nice system idle iowait irq softirq steal ...
        busy = (f[0] + f[1] + f[2] + f[5] + f[6]) / hz
        steal = (f[7] if len(f) > 7 else 0) / hz
    except (OSError, ValueError, IndexError):
        pass
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, steal, ru.ru_utime + ru.ru_stime


class Runner:
    def __init__(self, predictions: Path, labels: Path, work: Path, timeout: float) -> None:
        self.predictions = predictions
        self.labels = labels
        self.work = work
        self.timeout = timeout
        self.time_bin = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
        self.msewatch = _msewatch_executable()

    def command(self, candidate: str, out: Path) -> list[str]:
        if candidate == "msewatch":
            return [
                self.msewatch, "eval", "--predictions", str(self.predictions), "--labels", str(self.labels),
                "--window", "1h", "--by", "region,version", "--format", "csv",
            ]
        child = {"duckdb-sql": "duckdb", "pandas": "pandas"}[candidate]
        return [sys.executable, str(Path(__file__).resolve()), "--child", child,
                str(self.predictions), str(self.labels), str(out)]

    def run(self, candidate: str, i: int) -> dict:
        """One run: wall seconds, peak RSS MB, the child's own report, the result path."""
        suffix = "csv" if candidate == "msewatch" else "parquet"
        out = self.work / f"{candidate}-{i}.{suffix}"
        stdout_path = self.work / f"{candidate}-{i}.stdout"
        rss_path = self.work / f"{candidate}-{i}.rss"
        stderr_path = self.work / f"{candidate}-{i}.stderr"
        cmd = self.command(candidate, out)
        if candidate == "msewatch":
            stdout_path = out  # the CSV on stdout is the result
        before = _cpu_snapshot()
        if self.time_bin:
            full = [self.time_bin, "-f", "%M", "-o", str(rss_path), *cmd]
            with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
                t0 = time.perf_counter()
                proc = subprocess.run(full, stdout=so, stderr=se, timeout=self.timeout)
                wall = time.perf_counter() - t0
        else:
            full = [sys.executable, str(Path(__file__).resolve()), "--child", "measure",
                    str(stdout_path), str(rss_path), "--", *cmd]
            with open(stderr_path, "wb") as se:
                t0 = time.perf_counter()
                proc = subprocess.run(full, stderr=se, timeout=self.timeout)
                wall = time.perf_counter() - t0
        after = _cpu_snapshot()
        own_cpu = after[2] - before[2]
        # CPU the rest of the machine used meanwhile (other processes, hypervisor steal), in cores
        other = max(0.0, (after[0] - before[0]) - own_cpu) / wall
        steal = (after[1] - before[1]) / wall
        if proc.returncode != 0:
            sys.stderr.write(stderr_path.read_text(errors="replace"))
            raise SystemExit(f"{candidate} failed with exit status {proc.returncode}: {' '.join(cmd)}")
        peak_kib = int(rss_path.read_text().strip().splitlines()[-1])
        report = {}
        if candidate != "msewatch":
            report = json.loads(stdout_path.read_text().strip().splitlines()[-1])
        return {"wall": wall, "peak_mb": peak_kib / 1024, "report": report, "out": out,
                "cpu_s": own_cpu, "other_cores": other, "steal_cores": steal}


def _msewatch_executable() -> str:
    beside = Path(sys.executable).parent / "msewatch"
    if beside.exists():
        return str(beside)
    found = shutil.which("msewatch")
    if not found:
        raise SystemExit("msewatch: console script not found (pip install -e . in this venv)")
    return found


def warm_cache(*paths: Path) -> None:
    """Read the files once so every candidate, including the first run, finds them cached."""
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(16 << 20):
                pass


# -- results -------------------------------------------------------------------------------------
def load_result(candidate: str, path: Path) -> dict[tuple, dict]:
    """A result as {(window_start epoch s, region, version): {metric: value}}; null is None."""
    rows: list[dict]
    if candidate == "msewatch":
        rows = []
        with open(path, newline="") as fh:
            for rec in csv.DictReader(fh):
                ws = int(dt.datetime.fromisoformat(rec["window_start"]).timestamp())
                we = int(dt.datetime.fromisoformat(rec["window_end"]).timestamp())
                row: dict = {"window_start": ws, "region": rec["region"], "version": rec["version"],
                             "_window_end_ok": we == ws + WINDOW_S}
                for m in COUNT_METRICS:
                    row[m] = int(rec[m])
                for m in FLOAT_METRICS:
                    row[m] = float(rec[m]) if rec.get(m, "") != "" else None
                rows.append(row)
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    out: dict[tuple, dict] = {}
    for row in rows:
        for m in FLOAT_METRICS:
            v = row.get(m)
            if v is not None and not math.isfinite(v):
                row[m] = None
        out[(int(row["window_start"]), row["region"], row["version"])] = row
    return out


def compare(results: dict[str, dict[tuple, dict]], reference: str) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Disagreements against the reference, and the largest relative difference per metric."""
    problems: list[str] = []
    max_rel: dict[str, dict[str, float]] = {}
    ref = results[reference]
    for name, res in results.items():
        if name == reference:
            continue
        worst = max_rel.setdefault(name, {})
        missing, extra = ref.keys() - res.keys(), res.keys() - ref.keys()
        if missing or extra:
            problems.append(
                f"{name} vs {reference}: groups differ: {len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                f"{len(extra)} extra (e.g. {sorted(extra)[:3]})"
            )
        for key in sorted(ref.keys() & res.keys()):
            a, b = ref[key], res[key]
            if b.get("_window_end_ok") is False:
                problems.append(f"{name} {key}: window_end is not window_start + {WINDOW_S}s")
            for m in COUNT_METRICS:
                if a[m] != b[m]:
                    problems.append(f"{name} {key} {m}: {b[m]} != {reference} {a[m]}")
            for m in FLOAT_METRICS:
                x, y = a.get(m), b.get(m)
                if x is None or y is None:
                    if (x is None) != (y is None):
                        problems.append(f"{name} {key} {m}: {y!r} != {reference} {x!r}")
                    continue
                rel = abs(x - y) / max(abs(x), abs(y)) if x != y else 0.0
                worst[m] = max(worst.get(m, 0.0), rel)
                if not math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL):
                    problems.append(f"{name} {key} {m}: {y!r} != {reference} {x!r} (rel {rel:.2e})")
    return problems, max_rel


# -- report --------------------------------------------------------------------------------------
def machine() -> str:
    return describe(("msewatch", "duckdb", "ibis-framework", "pandas", "pyarrow", "numpy"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="predictions to generate [10,000,000]")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=3, help="runs per candidate; the median counts [3]")
    ap.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data")
    ap.add_argument("--regenerate", action="store_true", help="regenerate the data even if present")
    ap.add_argument("--only", default=",".join(CANDIDATES), help=f"candidates to run [{','.join(CANDIDATES)}]")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per run [3600]")
    ap.add_argument("--keep", type=Path, help="keep the candidates' outputs in this directory")
    args = ap.parse_args(argv)
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CANDIDATES]
    if unknown or not chosen:
        ap.error(f"--only: unknown candidate(s) {unknown}; choose from {', '.join(CANDIDATES)}")
    if args.rows < 1000 or args.repeat < 1:
        ap.error("--rows must be at least 1000 and --repeat at least 1")

    print(machine(), flush=True)
    preds, labels, meta = ensure_data(args.data_dir.resolve(), args.rows, args.seed, force=args.regenerate)
    size_mb = (preds.stat().st_size + labels.stat().st_size) / 1024**2
    print(
        f"data: {meta['rows']:,} predictions, {meta['label_rows']:,} label rows "
        f"({meta['labeled_predictions']:,} labeled predictions, {meta['revised_labels']:,} with two revisions), "
        f"{size_mb:,.0f} MB of Parquet",
        flush=True,
    )
    warm_cache(preds, labels)

    work_ctx = None
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep
    else:
        work_ctx = tempfile.TemporaryDirectory(prefix="eval-bench-")
        work = Path(work_ctx.name)
    runner = Runner(preds, labels, work, args.timeout)
    how = "/usr/bin/time %M" if runner.time_bin else "wait4 in a stdlib-only intermediary"
    print(f"peak RSS from {how}; each run is a fresh process; {args.repeat} runs each, interleaved", flush=True)

    runs: dict[str, list[dict]] = {c: [] for c in chosen}
    for i in range(args.repeat):
        for c in chosen:
            r = runner.run(c, i)
            runs[c].append(r)
            extra = f"  cpu {r['cpu_s']:6.1f} s  others {r['other_cores']:.2f} cores"
            if r["steal_cores"] >= 0.05:
                extra += f", steal {r['steal_cores']:.2f}"
            if r["report"]:
                extra += f"  (query {r['report']['query_s']:.2f} s, imports {r['report']['import_s']:.2f} s)"
            print(f"  run {i + 1}/{args.repeat} {c:<11} {r['wall']:7.2f} s  {r['peak_mb']:7.0f} MB{extra}", flush=True)

    results = {c: load_result(c, runs[c][0]["out"]) for c in chosen}
    reference = "duckdb-sql" if "duckdb-sql" in results else chosen[0]
    problems, max_rel = compare(results, reference)
    if work_ctx is not None:
        work_ctx.cleanup()

    med = {c: statistics.median(r["wall"] for r in runs[c]) for c in chosen}
    peak = {c: max(r["peak_mb"] for r in runs[c]) for c in chosen}
    query = {
        c: statistics.median(r["report"]["query_s"] for r in runs[c]) for c in chosen if runs[c][0]["report"]
    }
    n = meta["rows"]
    print()
    print(f"{'candidate':<12} {'median wall s':>13} {'peak RSS MB':>12} {'rows/s':>13} {'in-process query s':>19}")
    for c in chosen:
        q = f"{query[c]:.2f}" if c in query else "-"
        print(f"{c:<12} {med[c]:>13.2f} {peak[c]:>12.0f} {n / med[c]:>13,.0f} {q:>19}")
    print(f"groups: {len(results[reference]):,}; runs per candidate: {args.repeat}; wall = whole process")
    all_runs = [r for c in chosen for r in runs[c]]
    busy_other = max(r["other_cores"] for r in all_runs)
    if busy_other > 0.25:
        print(
            f"WARNING: other processes (or hypervisor steal) used up to {busy_other:.2f} of the "
            f"{os.cpu_count()} cores during a timed run; the timings and ratios are unreliable. "
            "Rerun on a quiet machine."
        )
    print()

    verdicts: list[tuple[str, bool | None, str]] = []
    if "msewatch" in med and "duckdb-sql" in med:
        ratio = med["msewatch"] / med["duckdb-sql"]
        vs_query = med["msewatch"] / query["duckdb-sql"]
        verdicts.append(
            (f"msewatch / duckdb-sql <= {TARGET_VS_DUCKDB}", ratio <= TARGET_VS_DUCKDB,
             f"{ratio:.2f}x (whole process; vs the query alone inside its process: {vs_query:.2f}x)")
        )
    if "msewatch" in med and "pandas" in med:
        ratio = med["pandas"] / med["msewatch"]
        verdicts.append((f"pandas / msewatch >= {TARGET_VS_PANDAS}", ratio >= TARGET_VS_PANDAS, f"{ratio:.2f}x"))
    if "msewatch" in peak:
        verdicts.append(
            (f"msewatch peak RSS < {TARGET_PEAK_MB / 1024:.0f} GB", peak["msewatch"] < TARGET_PEAK_MB,
             f"{peak['msewatch']:.0f} MB")
        )
    print("targets (DESIGN.md section 6):")
    for text, met, detail in verdicts:
        print(f"  {text:<32} {detail:<70} {'met' if met else 'NOT MET'}")
    print()

    if len(results) > 1:
        worst = {m: max(v.get(m, 0.0) for v in max_rel.values()) for m in FLOAT_METRICS}
        print(f"largest relative difference against {reference}: "
              + ", ".join(f"{m} {worst[m]:.1e}" for m in FLOAT_METRICS))
    if problems:
        bar = "!" * 78
        print(f"\n{bar}\nRESULTS DISAGREE ({len(problems)} differences, tolerance {REL_TOL:g} relative):", file=sys.stderr)
        for p in problems[:30]:
            print(f"  {p}", file=sys.stderr)
        if len(problems) > 30:
            print(f"  … and {len(problems) - 30} more", file=sys.stderr)
        print(bar, file=sys.stderr)
        return 1
    if len(results) > 1:
        print(f"results agree: {', '.join(chosen)} (same groups, counts equal, floats within {REL_TOL:g} relative)")
    return 0


def _child_main(argv: list[str]) -> int:
    kind, rest = argv[0], argv[1:]
    if kind == "duckdb":
        child_duckdb(*rest)
        return 0
    if kind == "pandas":
        child_pandas(*rest)
        return 0
    if kind == "measure":
        stdout_path, rusage_path, sep, *cmd = rest
        assert sep == "--"
        return child_measure(cmd, stdout_path, rusage_path)
    raise SystemExit(f"unknown child {kind!r}")


if __name__ == "__main__":
    sys.exit(main())
