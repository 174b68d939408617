#!/usr/bin/env python
"""Scale benchmark: `msewatch eval` on 100M predictions, in DuckDB (memory-capped) and PySpark.

    python bench/scale_bench.py                          # 100M predictions (~90M labels): long
    python bench/scale_bench.py --rows 10000000          # 10M: a few minutes
    python bench/scale_bench.py --only msewatch-duckdb,duckdb-sql,numpy --memory-limit 2GB

The same seeded Parquet data as `eval_bench.py` (predictions over 30 days, 8 regions, three
versions, ~90% labeled, ~2% of labels revised, label rows shuffled), generated chunk by chunk.
Every candidate is a fresh process, evaluating hourly x region x version with every metric and
exact quantiles; wall time, peak RSS and rows/s are printed, with ratios against the references
measured in the same run:

  msewatch-duckdb  msewatch eval --engine "duckdb://?memory_limit=M&temp_directory=…"
                   --predictions P --labels L --window 1h --by region,version: DuckDB spills
                   to disk past the limit instead of growing
  msewatch-spark   msewatch eval --engine "pyspark://?spark.driver.memory=G" … (local mode, all
                   cores): the same query compiled to Spark SQL
  duckdb-sql       the hand-written DuckDB query of eval_bench.py, under the same memory limit
  numpy            the single-pass lower bound: read y_pred and y_true (pyarrow, all threads)
                   and sum their squared differences in one NumPy pass, without the join or
                   the grouping; no real evaluation can be faster than reading its input once

msewatch-duckdb, msewatch-spark and duckdb-sql must agree (same groups and counts, floats to
1e-9 relative); the script exits 1 otherwise. Timings are for reading, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_bench as eb  # noqa: E402  (the data generator, the reference query and the runner)
from _machine import describe  # noqa: E402

CANDIDATES = ("msewatch-duckdb", "msewatch-spark", "duckdb-sql", "numpy")
COMPARED = ("msewatch-duckdb", "msewatch-spark", "duckdb-sql")


def child_duckdb_limited(predictions: str, labels: str, out: str, memory_limit: str, temp_dir: str) -> None:
    t0 = time.perf_counter()
    import duckdb
    import pyarrow.parquet as pq

    t1 = time.perf_counter()
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": temp_dir})
    table = con.execute(eb.DUCKDB_SQL, {"predictions": predictions, "labels": labels}).to_arrow_table()
    t2 = time.perf_counter()
    pq.write_table(table, out)
    print(json.dumps({"import_s": t1 - t0, "query_s": t2 - t1, "rows": table.num_rows, "vmhwm_mb": eb._vmhwm_mb()}))


def child_numpy(predictions: str, labels: str, out: str) -> None:
    """Σ(y_pred − y_true)² over the files' rows paired by position: the cost of one read."""
    t0 = time.perf_counter()
    import numpy as np
    import pyarrow.parquet as pq

    t1 = time.perf_counter()
    total, n = 0.0, 0
    preds = pq.ParquetFile(predictions).iter_batches(batch_size=4_000_000, columns=["y_pred"])
    labs = pq.ParquetFile(labels).iter_batches(batch_size=4_000_000, columns=["y_true"])
    for p, lab in zip(preds, labs):
        a = p.column(0).to_numpy()
        b = lab.column(0).to_numpy()
        k = min(len(a), len(b))
        d = a[:k] - b[:k]
        total += float(np.dot(d, d))
        n += k
    for p in preds:  # the rest of the predictions is read too
        p.column(0).to_numpy().sum()
    t2 = time.perf_counter()
    Path(out).write_text(json.dumps({"n": n, "sum_sq": total}))
    print(json.dumps({"import_s": t1 - t0, "query_s": t2 - t1, "rows": n, "vmhwm_mb": eb._vmhwm_mb()}))


class TreeMemory:
    """The peak, sampled every 0.2 s, of the summed RSS of this process's descendants."""

    def __init__(self) -> None:
        import threading

        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = os.getpid()
        page_mb = os.sysconf("SC_PAGE_SIZE") / 1024**2
        while not self._stop.wait(0.2):
            parent: dict[int, int] = {}
            rss: dict[int, int] = {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                    parent[int(entry)] = int(fields[1])
                    rss[int(entry)] = int(fields[21])
                except (OSError, IndexError, ValueError):
                    continue
            total, frontier = 0, [me]
            seen = {me}
            while frontier:
                pid = frontier.pop()
                for child, ppid in parent.items():
                    if ppid == pid and child not in seen:
                        seen.add(child)
                        frontier.append(child)
                        total += rss.get(child, 0)
            self.peak_mb = max(self.peak_mb, total * page_mb)


class ScaleRunner(eb.Runner):
    def __init__(self, *args: object, memory_limit: str, spark_memory: str, temp_dir: Path) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.memory_limit = memory_limit
        self.spark_memory = spark_memory
        self.temp_dir = temp_dir

    def command(self, candidate: str, out: Path) -> list[str]:
        window = ["--window", "1h", "--by", "region,version", "--format", "csv"]
        files = ["--predictions", str(self.predictions), "--labels", str(self.labels)]
        if candidate == "msewatch-duckdb":
            url = f"duckdb://?memory_limit={self.memory_limit}&temp_directory={self.temp_dir}"
            return [self.msewatch, "eval", "--engine", url, *files, *window]
        if candidate == "msewatch-spark":
            url = f"pyspark://?spark.driver.memory={self.spark_memory}&spark.local.dir={self.temp_dir}"
            return [self.msewatch, "eval", "--engine", url, *files, *window]
        me = str(Path(__file__).resolve())
        if candidate == "duckdb-sql":
            return [sys.executable, me, "--child", "duckdb", str(self.predictions), str(self.labels), str(out),
                    self.memory_limit, str(self.temp_dir)]
        return [sys.executable, me, "--child", "numpy", str(self.predictions), str(self.labels), str(out)]

    def run(self, candidate: str, i: int) -> dict:
        with TreeMemory() as tree:
            result = self._run_cli(candidate, i) if candidate.startswith("msewatch") else super().run(candidate, i)
        # Spark's JVM is a child the Python driver never waits for, so wait4's peak misses it:
        # the sampled peak of the whole process tree counts it
        result["peak_mb"] = max(result["peak_mb"], tree.peak_mb)
        return result

    def _run_cli(self, candidate: str, i: int) -> dict:
        """The Runner's CLI path (CSV on stdout, no JSON report) with this candidate's command."""
        original = self.command
        try:
            self.command = lambda _c, out: original(candidate, out)  # type: ignore[method-assign]
            result = eb.Runner.run(self, "msewatch", i)
        finally:
            self.command = original  # type: ignore[method-assign]
        target = self.work / f"{candidate}-{i}.csv"
        Path(result["out"]).replace(target)
        result["out"] = target
        return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, rest = argv[1], argv[2:]
        if kind == "duckdb":
            child_duckdb_limited(*rest)
        elif kind == "numpy":
            child_numpy(*rest)
        elif kind == "measure":
            return eb._child_main(["measure", *rest])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000_000, help="predictions to generate [100,000,000]")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=1, help="runs per candidate; the median counts [1]")
    ap.add_argument("--data-dir", type=Path, default=eb.BENCH_DIR / "data")
    ap.add_argument("--only", default=",".join(CANDIDATES), help=f"candidates [{','.join(CANDIDATES)}]")
    ap.add_argument("--memory-limit", default="4GB", help="DuckDB memory_limit for msewatch-duckdb and duckdb-sql [4GB]")
    ap.add_argument("--spark-memory", default="6g", help="spark.driver.memory for msewatch-spark [6g]")
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds allowed per run [7200]")
    args = ap.parse_args(argv)
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    if not chosen or any(c not in CANDIDATES for c in chosen):
        ap.error(f"--only: choose from {', '.join(CANDIDATES)}")

    print(describe(("msewatch", "duckdb", "ibis-framework", "pyspark", "pyarrow", "numpy")), flush=True)
    preds, labels, meta = eb.ensure_data(args.data_dir.resolve(), args.rows, args.seed)
    size_mb = (preds.stat().st_size + labels.stat().st_size) / 1024**2
    print(f"data: {meta['rows']:,} predictions, {meta['label_rows']:,} label rows, {size_mb:,.0f} MB of Parquet",
          flush=True)
    eb.warm_cache(preds, labels)
    with tempfile.TemporaryDirectory(prefix="scale-bench-", dir=args.data_dir) as tmp:
        work = Path(tmp)
        spill = work / "spill"
        spill.mkdir()
        runner = ScaleRunner(preds, labels, work, args.timeout, memory_limit=args.memory_limit,
                             spark_memory=args.spark_memory, temp_dir=spill)
        runs: dict[str, list[dict]] = {c: [] for c in chosen}
        for i in range(args.repeat):
            for c in chosen:
                r = runner.run(c, i)
                runs[c].append(r)
                print(f"  run {i + 1}/{args.repeat} {c:<16} {r['wall']:8.1f} s  {r['peak_mb']:7.0f} MB  "
                      f"cpu {r['cpu_s']:7.1f} s  others {r['other_cores']:.2f} cores", flush=True)
        compared = [c for c in chosen if c in COMPARED]
        results = {c: eb.load_result("msewatch" if c.startswith("msewatch") else c, runs[c][0]["out"]) for c in compared}
        problems: list[str] = []
        if len(results) > 1:
            reference = "duckdb-sql" if "duckdb-sql" in results else compared[0]
            problems, _ = eb.compare(results, reference)

    med = {c: statistics.median(r["wall"] for r in runs[c]) for c in chosen}
    peak = {c: max(r["peak_mb"] for r in runs[c]) for c in chosen}
    n = meta["rows"]
    print(f"\n{'candidate':<17} {'wall s':>9} {'peak RSS MB':>12} {'rows/s':>14} {'vs duckdb-sql':>14} {'vs numpy':>9}")
    for c in chosen:
        vs_sql = f"{med[c] / med['duckdb-sql']:.2f}x" if "duckdb-sql" in med else "-"
        vs_np = f"{med[c] / med['numpy']:.1f}x" if "numpy" in med else "-"
        print(f"{c:<17} {med[c]:>9.1f} {peak[c]:>12.0f} {n / med[c]:>14,.0f} {vs_sql:>14} {vs_np:>9}")
    print(f"DuckDB memory_limit {args.memory_limit}; Spark driver memory {args.spark_memory}; wall = whole process")
    if problems:
        print(f"RESULTS DISAGREE ({len(problems)}):", *problems[:20], sep="\n  ", file=sys.stderr)
        return 1
    if len(results) > 1:
        print(f"results agree: {', '.join(results)} (same groups and counts, floats within {eb.REL_TOL:g} relative)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
