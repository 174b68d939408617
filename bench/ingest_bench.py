#!/usr/bin/env python
"""HTTP ingestion benchmark: `msewatch serve` under concurrent NDJSON clients, against raw DuckDB appends.

Goal (on 2 cores): at least 100,000 prediction events/s durable (each request answered only
after its group commit), p99 request latency at most 100 ms per batch of 1,000 events.

    python bench/ingest_bench.py                      # defaults: ~1-2 minutes
    python bench/ingest_bench.py --seconds 60 --clients 16
    python bench/ingest_bench.py --profile            # + where the server spends its time (py-spy)
    python bench/ingest_bench.py --scrape 2           # + a /metrics scrape every 2 s, timed
    python bench/ingest_bench.py --json > ingest.json # machine-readable result on stdout

What it does:
1. Starts `msewatch serve --db <fresh store in a temp dir> --port <free port> --log-level
   warning` as a subprocess and waits for /readyz. With --preload N the store first receives
   eval_bench.py's seeded history (N predictions over 30 days, ~90% labelled) through
   `msewatch ingest`: work per commit that grows with the stored rows shows only then.
2. Warm-up (--warmup seconds): the same load as below, untimed, so that the server has compiled
   its validation SQL; its rate sizes the bodies of the timed phase.
3. Predictions (--seconds): --procs client processes (separate processes, so that client CPU
   never contends for the server's GIL) hold --clients keep-alive HTTP/1.1 connections
   between them (httpx.AsyncClient) and POST pre-serialised NDJSON bodies of --batch events
   each, built before the clock starts: unique prediction ids, 2 models, 3 versions, 8
   regions (a segment column), `ts` within the last --ts-spread seconds (live traffic).
   A connection sends its next body when the previous one is answered. Measured: accepted
   events/s (sum of "accepted" / wall time from start to the last answer), per-request
   latency p50/p99/max (of the answered attempt), 429/5xx answers (a 429 is retried after its
   Retry-After), the rate in each quarter of the phase (a falling rate means per-commit work
   grows with the store), CPU of the server (its main thread = event loop: HTTP + body
   parsing; the other threads = commit thread + DuckDB workers), of the clients, and of
   everything else on the machine.
4. Labels (--label-seconds, 0 to skip): the same for POST /v1/labels, one label for each
   prediction of phase 3, in the order they were posted.
5. Peak server RSS (VmHWM from /proc/<pid>/status), then SIGTERM (the server drains and
   exits), then the store is opened read-only: its row counts must equal the accepted counts,
   and its ingest_log (one row per group commit) gives commits, rows per commit and the
   duration of the commit transaction (BEGIN to just before COMMIT; excludes queueing and the
   WAL flush).
6. Reference, in a separate process, in the same run: raw DuckDB Arrow appends of the same
   columns into a fresh on-disk DuckDB file (INSERT ... SELECT * FROM <registered Arrow
   batch>, autocommit: one durable transaction per batch), --raw-rows rows with commits of
   --batch rows, then of --raw-group rows, then of --raw-indexed-group rows (about a server
   group commit) into a table whose prediction_id is a PRIMARY KEY, as the store's is (its
   unique index makes a re-sent id a duplicate): the commit p99 of that last one is what
   DuckDB's own checkpoints cost a writer of the server's shape. The server's rate is printed
   as a ratio of these.

--scrape S GETs /metrics every S seconds during each phase, as a Prometheus server would, and
reports how long the scrapes took: a scrape first waits (at most 5 s) for the rollup step to
fold in every answered request, so its time is how far the counters trail the answers.

Timings are for people to read; missing a target does not change the exit status. The exit
status is 1 only when the run itself fails (server error answers, rejected events, counts in
the store that differ from the accepted counts).

--profile runs `py-spy record --idle` (pip install py-spy) on the server during both timed
phases and prints where each server thread spends its wall time: parsing, HTTP and the event
loop, and each statement of the commit transaction (found from the sampled source line).
Sampling costs a little CPU, so a profiled run's figures are marked as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from _machine import describe, loadavg

# Keep the top-level imports to the standard library: this file is also the client and the
# reference process, each importing only what it needs (httpx; duckdb + pyarrow + numpy).

TARGET_EVENTS_PER_S = 100_000
TARGET_P99_MS = 100.0
MODELS = ("pricing", "eta")
VERSIONS = ("v1", "v2", "v3")
VERSION_CUM = (0.6, 0.95, 1.0)  # v1 60%, v2 35%, v3 5%
REGIONS = ("us-east", "us-west", "eu-west", "eu-central", "ap-south", "ap-northeast", "sa-east", "af-south")
NDJSON = "application/x-ndjson"
OTHER_LOAD_WARN = 0.25  # cores used by other processes during a timed phase before warning
BENCH_DIR = Path(__file__).resolve().parent


# -- bodies --------------------------------------------------------------------------------------
class _Iso:
    """ISO 8601 UTC text for epoch seconds, with the per-second prefix cached."""

    def __init__(self) -> None:
        self.cache: dict[int, str] = {}

    def __call__(self, t: float) -> str:
        s = int(t)
        prefix = self.cache.get(s)
        if prefix is None:
            prefix = self.cache[s] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        return f"{prefix}.{int((t - s) * 1000):03d}Z"


def _pid(tag: str, proc: int, body: int, row: int) -> str:
    return f"{tag}-{proc}-{body:07d}-{row:04d}"


def prediction_bodies(
    tag: str, proc: int, n_bodies: int, batch: int, seed: int, ts_spread: float, ts_format: str
) -> list[bytes]:
    rng = random.Random(f"{seed}/{tag}/{proc}")
    iso = _Iso()
    now = time.time()
    bodies = []
    for j in range(n_bodies):
        lines = []
        for i in range(batch):
            t = now - rng.random() * ts_spread
            ts = f'"{iso(t)}"' if ts_format == "iso" else f"{t:.3f}"
            u = rng.random()
            version = VERSIONS[0] if u < VERSION_CUM[0] else VERSIONS[1] if u < VERSION_CUM[1] else VERSIONS[2]
            lines.append(
                f'{{"prediction_id":"{_pid(tag, proc, j, i)}","ts":{ts},"model":"{MODELS[i & 1]}",'
                f'"version":"{version}","region":"{REGIONS[int(rng.random() * 8)]}",'
                f'"y_pred":{20.0 + 40.0 * rng.random():.4f}}}'
            )
        bodies.append(("\n".join(lines) + "\n").encode())
    return bodies


def label_bodies(tag: str, proc: int, n_bodies: int, batch: int, seed: int) -> list[bytes]:
    rng = random.Random(f"{seed}/{tag}/{proc}/labels")
    iso = _Iso()
    now = time.time()
    bodies = []
    for j in range(n_bodies):
        lines = [
            f'{{"prediction_id":"{_pid(tag, proc, j, i)}","y_true":{20.0 + 40.0 * rng.random():.4f},'
            f'"label_ts":"{iso(now + rng.random())}"}}'
            for i in range(batch)
        ]
        bodies.append(("\n".join(lines) + "\n").encode())
    return bodies


# -- the client process --------------------------------------------------------------------------
def child_client(spec: dict) -> int:
    """Build the bodies, print READY, wait for a line on stdin, run the load, print RESULT."""
    import resource

    import httpx

    t0 = time.perf_counter()
    if spec["kind"] == "predictions":
        bodies = prediction_bodies(spec["tag"], spec["proc"], spec["n_bodies"], spec["batch"], spec["seed"],
                                   spec["ts_spread"], spec["ts_format"])
    else:
        bodies = label_bodies(spec["tag"], spec["proc"], spec["n_bodies"], spec["batch"], spec["seed"])
    build_s = time.perf_counter() - t0
    print("READY " + json.dumps({"build_s": build_s, "bytes": sum(map(len, bodies))}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 0
    result = asyncio.run(_load(spec, bodies, httpx))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = ru.ru_utime + ru.ru_stime - result.pop("cpu_before")
    print("RESULT " + json.dumps(result), flush=True)
    return 0


async def _load(spec: dict, bodies: list[bytes], httpx) -> dict:
    import resource

    url = spec["url"] + ("/v1/predictions" if spec["kind"] == "predictions" else "/v1/labels")
    clients = spec["clients"]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": NDJSON}
    out = {"lat_ms": [], "done_at": [], "accepted_per_req": [], "accepted": 0, "duplicates": 0, "rejected": 0,
           "status": {}, "first_error": None, "retries": 0}
    next_body = 0
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300.0), http2=False) as client:
        # open the connections before the clock starts
        await asyncio.gather(*(client.get(spec["url"] + "/healthz") for _ in range(clients)))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_before"] = ru.ru_utime + ru.ru_stime
        start = time.monotonic()
        deadline = start + spec["seconds"]

        async def worker() -> None:
            nonlocal next_body
            while time.monotonic() < deadline and next_body < len(bodies):
                body = bodies[next_body]
                next_body += 1
                while True:
                    t = time.monotonic()
                    try:
                        r = await client.post(url, content=body, headers=headers)
                    except httpx.HTTPError as exc:
                        out["status"]["exception"] = out["status"].get("exception", 0) + 1
                        out["first_error"] = out["first_error"] or f"{type(exc).__name__}: {exc}"
                        break
                    done = time.monotonic()
                    code = str(r.status_code)
                    out["status"][code] = out["status"].get(code, 0) + 1
                    if r.status_code in (429, 503) and done < deadline + 30:
                        out["retries"] += 1
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    if r.status_code != 200:
                        out["first_error"] = out["first_error"] or f"HTTP {r.status_code}: {r.text[:300]}"
                        break
                    answer = r.json()
                    out["lat_ms"].append((done - t) * 1000)
                    out["done_at"].append(done - start)
                    out["accepted_per_req"].append(answer["accepted"])
                    out["accepted"] += answer["accepted"]
                    out["duplicates"] += answer["duplicates"]
                    out["rejected"] += len(answer["rejected"])
                    if answer["rejected"] and not out["first_error"]:
                        out["first_error"] = f"rejected: {answer['rejected'][0]}"
                    break

        await asyncio.gather(*(worker() for _ in range(clients)))
        end = time.monotonic()
    out.update(start=start, end=end, bodies_sent=next_body, ran_out=next_body >= len(bodies) and end < deadline)
    return out


# -- the reference process -----------------------------------------------------------------------
def child_raw(spec: dict) -> int:
    """Raw DuckDB Arrow appends into fresh on-disk files; prints one JSON line per commit size."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    n = spec["rows"]
    rng = np.random.default_rng(spec["seed"])
    now_us = int(time.time() * 1e6)
    table = pa.table(
        {
            "prediction_id": pa.array([f"raw-{i:010d}" for i in range(n)], pa.string()),
            "ts": pa.array(now_us - rng.integers(0, int(spec["ts_spread"] * 1e6) + 1, n), pa.timestamp("us", tz="UTC")),
            "model": pa.array(np.array(MODELS, dtype=object)[np.arange(n) & 1], pa.string()),
            "version": pa.array(
                np.array(VERSIONS, dtype=object)[np.searchsorted(VERSION_CUM, rng.random(n))], pa.string()
            ),
            "region": pa.array(np.array(REGIONS, dtype=object)[rng.integers(0, len(REGIONS), n)], pa.string()),
            "y_pred": pa.array(20.0 + 40.0 * rng.random(n), pa.float64()),
        }
    )
    results = []
    for rows_per_commit, indexed in spec["commit_rows"]:
        path = Path(spec["dir"]) / f"raw-{rows_per_commit}-{int(indexed)}.duckdb"
        con = duckdb.connect(str(path))
        con.execute(
            f"CREATE TABLE predictions (prediction_id VARCHAR {'PRIMARY KEY' if indexed else 'NOT NULL'},"
            " ts TIMESTAMPTZ NOT NULL, model VARCHAR NOT NULL, version VARCHAR NOT NULL, region VARCHAR,"
            " y_pred DOUBLE NOT NULL)"
        )
        batches = table.to_batches(max_chunksize=rows_per_commit)
        lat = []
        t0 = time.perf_counter()
        for b in batches:
            t = time.perf_counter()
            con.register("_batch", b)
            con.execute("INSERT INTO predictions SELECT * FROM _batch")  # autocommit: one transaction
            con.unregister("_batch")
            lat.append((time.perf_counter() - t) * 1000)
        wall = time.perf_counter() - t0
        stored = con.execute("SELECT count(*) FROM predictions").fetchall()[0][0]
        con.close()
        results.append({"commit_rows": rows_per_commit, "indexed": indexed, "rows": n, "stored": stored, "wall_s": wall,
                        "rows_per_s": n / wall, "commits": len(batches), "commit_ms": _pcts(lat)})
        for p in (path, Path(str(path) + ".wal")):
            p.unlink(missing_ok=True)
    print("RESULT " + json.dumps(results), flush=True)
    return 0


def _raw_name(r: dict) -> str:
    return f"{r['commit_rows']:,}-row commits" + (" with the id index" if r.get("indexed") else "")


# -- measuring -----------------------------------------------------------------------------------
def _pcts(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan, "mean": math.nan}
    v = sorted(values)
    q = lambda p: v[min(len(v) - 1, max(0, math.ceil(p * len(v)) - 1))]  # noqa: E731 (nearest rank)
    return {"n": len(v), "p50": q(0.50), "p99": q(0.99), "max": v[-1], "mean": statistics.fmean(v)}


_HZ = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of a process, or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        with open(path) as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / _HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def _threads_cpu(pid: int) -> dict[int, float]:
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    return {tid: _proc_cpu(pid, tid) for tid in tids}


def _machine_busy() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, steal seconds) from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        return (f[0] + f[1] + f[2] + f[5] + f[6]) / _HZ, (f[7] if len(f) > 7 else 0) / _HZ
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


def _status_mb(pid: int, key: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _msewatch_executable() -> str:
    beside = Path(sys.executable).parent / "msewatch"
    if beside.exists():
        return str(beside)
    found = shutil.which("msewatch")
    if not found:
        raise SystemExit("msewatch: console script not found (pip install -e . in this venv)")
    return found


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Server:
    def __init__(self, work: Path, config: Path | None, log: Callable[[str], None]) -> None:
        self.db = work / "store.duckdb"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = work / "server.stderr"
        cmd = [_msewatch_executable(), "serve", "--db", str(self.db), "--port", str(self.port),
               "--log-level", "warning"]
        if config:
            cmd += ["--config", str(config)]
        self.cmd = cmd
        log(f"server: {' '.join(cmd)}")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with status {self.proc.returncode}:\n{self.stderr_text()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server was not ready after 90 s:\n{self.stderr_text()}")
            time.sleep(0.1)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 120.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _spawn_child(kind: str, spec: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def _read_tagged(proc: subprocess.Popen, tag: str) -> dict | list:
    for line in proc.stdout:
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    proc.wait()
    raise SystemExit(f"a child process ended (status {proc.returncode}) before printing {tag}")


def _scrape_loop(url: str, every: float, stop: threading.Event, took: list[float | None]) -> None:
    """GET /metrics every `every` s until `stop`, as Prometheus would: the seconds each took
    (None: failed). The server first waits for its rollup step (at most 5 s), so a scrape's
    time is how far the counters trail the answers."""
    while not stop.is_set():
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
                r.read()
            took.append(time.perf_counter() - t)
        except (urllib.error.URLError, OSError):
            took.append(None)
        stop.wait(max(0.0, every - (time.perf_counter() - t)))


def run_phase(server: Server, kind: str, args, tag: str, seconds: float, n_bodies: list[int], profile_to: Path | None,
              log: Callable[[str], None]) -> dict:
    """One load phase: the client processes build their bodies, then all start together."""
    procs = []
    for p, n in enumerate(n_bodies):
        spec = {"url": server.url, "kind": kind, "tag": tag, "proc": p, "n_bodies": n, "batch": args.batch,
                "seed": args.seed, "ts_spread": args.ts_spread, "ts_format": args.ts_format,
                "clients": args.clients // len(n_bodies) + (1 if p < args.clients % len(n_bodies) else 0),
                "seconds": seconds}
        procs.append(_spawn_child("client", spec))
    ready = [_read_tagged(p, "READY") for p in procs]
    spy = None
    if profile_to is not None:
        spy = subprocess.Popen(
            [_py_spy(), "record", "-p", str(server.pid), "--threads", "--idle", "--rate", "97", "--format", "raw",
             "--duration", str(max(1, int(seconds))), "--output", str(profile_to), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(0.3)  # py-spy attaches
    busy0, steal0 = _machine_busy()
    srv0, thr0 = _proc_cpu(server.pid), _threads_cpu(server.pid)
    spy0 = _proc_cpu(spy.pid) if spy else 0.0
    wall0 = time.time()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    scrapes: list[float | None] = []
    stop_scraping = threading.Event()
    scraper = None
    if args.scrape > 0:
        scraper = threading.Thread(target=_scrape_loop, args=(server.url, args.scrape, stop_scraping, scrapes),
                                   daemon=True)
        scraper.start()
    results = [_read_tagged(p, "RESULT") for p in procs]
    wall1 = time.time()
    stop_scraping.set()
    if scraper is not None:
        scraper.join(35)
    busy1, steal1 = _machine_busy()
    srv1, thr1 = _proc_cpu(server.pid), _threads_cpu(server.pid)
    spy_cpu = _proc_cpu(spy.pid) - spy0 if spy else 0.0
    for p in procs:
        p.wait()
    if spy is not None:
        _, err = spy.communicate(timeout=max(30, seconds + 30))
        if spy.returncode != 0:
            log(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    wall = end - start
    lat = [x for r in results for x in r["lat_ms"]]
    done = sorted((t + r["start"] - start, a) for r in results for t, a in zip(r["done_at"], r["accepted_per_req"]))
    quarters = []
    for q in range(4):
        lo, hi = wall * q / 4, wall * (q + 1) / 4
        quarters.append(sum(a for t, a in done if lo <= t < hi or (q == 3 and t >= hi)) / (wall / 4) if wall else 0.0)
    status: dict[str, int] = {}
    for r in results:
        for k, v in r["status"].items():
            status[k] = status.get(k, 0) + v
    client_cpu = sum(r["cpu_s"] for r in results)
    timed = wall1 - wall0  # a little longer than `wall` (process hand-offs), for the CPU shares
    server_cpu = srv1 - srv0
    main_cpu = thr1.get(server.pid, 0.0) - thr0.get(server.pid, 0.0)
    per_thread = sorted(((tid, thr1[tid] - thr0.get(tid, 0.0)) for tid in thr1), key=lambda x: -x[1])
    accepted = sum(r["accepted"] for r in results)
    return {
        "kind": kind,
        "tag": tag,
        "wall_s": wall,
        "requests": len(lat),
        "accepted": accepted,
        "duplicates": sum(r["duplicates"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "events_per_s": accepted / wall if wall else 0.0,
        "quarters_events_per_s": quarters,
        "latency_ms": _pcts(lat),
        "status": status,
        "retries": sum(r["retries"] for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
        "bodies_sent": [r["bodies_sent"] for r in results],
        "bodies_built": n_bodies,
        "ran_out": all(r["ran_out"] for r in results),
        "build_s": max(x["build_s"] for x in ready),
        "body_mb": sum(x["bytes"] for x in ready) / 1024**2,
        "server_cores": server_cpu / timed,
        "server_main_thread_cores": main_cpu / timed,
        "server_other_threads_cores": (server_cpu - main_cpu) / timed,
        "server_threads_cores": [(tid, c / timed) for tid, c in per_thread[:6]],
        "client_cores": client_cpu / timed,
        "other_cores": max(0.0, (busy1 - busy0) - server_cpu - client_cpu - spy_cpu) / timed,
        "profiler_cores": spy_cpu / timed,
        "steal_cores": (steal1 - steal0) / timed,
        "window": (wall0, wall1),
        "vmrss_mb": _status_mb(server.pid, "VmRSS"),
        "profile": str(profile_to) if profile_to else None,
        "scrape_s": _pcts([x for x in scrapes if x is not None]),
        "scrapes_failed": sum(x is None for x in scrapes),
    }


def preload_store(db: Path, args, log: Callable[[str], None]) -> dict:
    """Fill the store with eval_bench.py's seeded history (30 days of June 2024) via `msewatch ingest`."""
    sys.path.insert(0, str(BENCH_DIR))
    from eval_bench import ensure_data

    import contextlib

    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        preds, labels, meta = ensure_data(args.data_dir.resolve(), args.preload, args.seed)
    counts = {}
    t0 = time.perf_counter()
    for kind, path in (("predictions", preds), ("labels", labels)):
        log(f"preload: msewatch ingest {kind} {path.name} …")
        proc = subprocess.run([_msewatch_executable(), "ingest", kind, str(path), "--db", str(db), "--format", "json",
                               "--source", "preload"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"preload failed: {proc.stderr[-2000:]}")
        counts[kind] = json.loads(proc.stdout.strip().splitlines()[-1])["accepted"]
    log(f"preload: {counts['predictions']:,} predictions and {counts['labels']:,} labels in "
        f"{time.perf_counter() - t0:.0f} s")
    return counts


def store_stats(db: Path, phases: list[dict]) -> dict:
    """Row counts and, per phase, the group commits recorded in ingest_log."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {"predictions": con.execute("SELECT count(*) FROM predictions").fetchall()[0][0],
               "labels": con.execute("SELECT count(*) FROM labels").fetchall()[0][0], "phases": {}}
        for ph in phases:
            w0, w1 = ph["window"]
            rows = con.execute(
                """SELECT accepted + duplicates + rejected, (epoch(finished_at) - epoch(started_at)) * 1000
                FROM ingest_log WHERE kind = ? AND epoch(finished_at) BETWEEN ? AND ?""",
                [ph["kind"], w0, w1 + 1.0],
            ).fetchall()
            out["phases"][ph["name"]] = {
                "commits": len(rows),
                "rows_per_commit": _pcts([float(r[0]) for r in rows]),
                "txn_ms": _pcts([float(r[1]) for r in rows]),
            }
    finally:
        con.close()
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    out["file_mb"] = size / 1024**2
    return out


# -- the profile ---------------------------------------------------------------------------------
def _source_text(frame: str, cache: dict, lines: int = 6) -> str:
    """The source text at a py-spy frame 'func (pkg/module.py:123)': that line and the next few."""
    try:
        loc = frame.rsplit("(", 1)[1].rstrip(")")
        rel, line = loc.rsplit(":", 1)
        if rel not in cache:
            import importlib.util

            spec = importlib.util.find_spec("msewatch")
            root = Path(spec.origin).parent.parent
            cache[rel] = (root / rel).read_text().splitlines() if (root / rel).exists() else []
        i = int(line) - 1
        return " ".join(cache[rel][i : i + lines])
    except (IndexError, ValueError, OSError, AttributeError):
        return ""


# (text in the statement at the sampled line, step); the earliest match in the text wins
_COMMIT_STEPS = (
    ("CREATE TEMP TABLE _stage", "validate: CREATE _stage (plans the normalize SQL)"),
    ("INSERT INTO _stage", "validate: INSERT INTO _stage, normalize SQL, one statement per request"),
    ("SELECT _row, _error", "validate: fetch the rejects of the request"),
    ("DESCRIBE _stage", "validate: DESCRIBE _stage"),
    ("register(", "validate: register/unregister the Arrow batch"),
    ("DESCRIBE predictions", "schema: DESCRIBE predictions"),
    ("TEMP TABLE _repeats", "predictions: ids repeated inside the group"),
    ("TEMP VIEW _ranked", "predictions: _ranked view"),
    ("FROM (SELECT * FROM _ranked WHERE NOT _is_first)", "predictions: repeats inside the group"),
    ("JOIN predictions p ON", "predictions: duplicates, join against ALL stored predictions"),
    ("NOT EXISTS", "predictions: new ids, anti-join against ALL stored predictions (_insert)"),
    ("INSERT INTO predictions", "predictions: INSERT INTO predictions"),
    ("GROUP BY ALL", "metrics: per-segment counts of new predictions"),
    ("TEMP TABLE _np AS", "new predictions past the watermark (_np)"),
    ("TEMP TABLE _nl AS", "new labels past the watermark (_nl)"),
    ("TEMP TABLE _nlp AS", "newly labelled ids with their predictions, scan of ALL predictions (_nlp)"),
    ("TEMP TABLE _firsts AS", "first pairs with their current label (_firsts)"),
    ("MERGE INTO rollups", "rollups: MERGE new predictions' counts"),
    ("MERGE INTO segment_rollups", "segment rollups: MERGE new predictions' counts"),
    ("UPDATE rollups", "rollups: merge first pairs (parallel formula)"),
    ("waiting_labels", "waiting_labels"),
    ("rollup_state", "watermark"),
    ("row_number() OVER (PARTITION BY prediction_id, y_true",
     "labels: duplicates, EXISTS against stored labels (_ranked)"),
    ("_copy > 1 OR _stored", "labels: fetch duplicate rows"),
    ("TEMP TABLE _new", "labels: revisions, max(revision) over ALL labels (_new)"),
    ("INSERT INTO labels", "labels: INSERT INTO labels"),
    ("TEMP TABLE _best", "labels: current revision, arg_max (_best)"),
    ("UPDATE labels", "labels: UPDATE labels SET is_current"),
    ("TEMP TABLE _touched", "rollups: touched (model, version, minute) keys"),
    ("DELETE FROM rollups", "rollups: DELETE the touched rows"),
    ("INSERT INTO rollups", "rollups: recompute touched minutes from predictions JOIN labels"),
    ("COMMIT", "commit: COMMIT (WAL write + fsync)"),
    ("ROLLBACK", "commit: ROLLBACK"),
    ("BEGIN", "commit: BEGIN"),
    ("ingest_log", "commit: INSERT INTO ingest_log"),
    ("DROP ", "commit: DROP temp tables/views"),
)


def _classify_commit(frames: list[str], cache: dict) -> str:
    if any("exposition.py" in f for f in frames):
        return "metrics: update the /metrics counters (exposition.py)"
    deepest = None
    for f in frames:
        if "msewatch/store/" in f:
            deepest = f
    if deepest is None:
        if any("Condition.wait" in f for f in frames[-3:]):
            return "idle: waiting for requests"
        return "other: committer"
    name = deepest.split(" (", 1)[0]
    if name in ("Store._new_pairs", "Store._segments") or any(f.startswith("Store._new_pairs") for f in frames):
        return "metrics: new labelled pairs (_new_pairs)"
    if name == "Store.extra_columns":
        return "schema: extra_columns lookups"
    if name == "_Stage._sql":
        return "validate: compile the normalize SQL (ibis)"
    text = _source_text(deepest, cache)
    hits = [(text.find(key), label) for key, label in _COMMIT_STEPS if key in text]
    step = any("apply_pending" in f for f in frames)  # the rollup step, between group commits
    if hits:
        return f"rollup step: {min(hits)[1]}" if step else min(hits)[1]
    if step:
        return f"rollup step: {name}"
    if name == "Store.ingest_group":
        return "commit: group bookkeeping (Python)"
    return f"other: {name}"


def _classify_main(frames: list[str]) -> str:
    leaf = frames[-1] if frames else ""
    if "select (selectors.py" in leaf or "EpollSelector.select" in leaf:
        return "idle: waiting in epoll"
    if any("msewatch/server/bodies.py" in f or "msewatch/io.py" in f for f in frames):
        return "parse NDJSON -> Arrow (bodies.py, io.py)"
    if any("msewatch/server/committer.py" in f for f in frames):
        return "hand-off to the commit thread (committer.py)"
    if any("prometheus_client" in f for f in frames):
        return "Prometheus histogram"
    if any("orjson" in f or "_json (msewatch" in f for f in frames[-2:]):
        return "answer JSON"
    return "HTTP + event loop (uvicorn/h11/starlette/asyncio)"


def summarize_profile(path: Path) -> dict:
    """Per thread: share of wall-time samples by category."""
    cache: dict = {}
    threads: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        head = frames[0]
        name = head.split(":", 1)[1].strip() if ":" in head else head
        frames = frames[1:]
        if name == "MainThread":
            cat = _classify_main(frames)
        elif name == "msewatch-commit":
            cat = _classify_commit(frames, cache)
        elif name.startswith("AnyIO worker"):
            name = "AnyIO worker threads"
            cat = "idle" if any("Condition.wait" in f or "Queue.get" in f for f in frames[-3:]) else "busy"
        else:
            name = "other threads (DuckDB Arrow scans etc.)"
            cat = frames[-1].split(" (", 1)[0] if frames else "native"
        d = threads.setdefault(name, {})
        d[cat] = d.get(cat, 0) + int(n)
    return threads


def _thread_names(path: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    for line in path.read_text().splitlines():
        head = line.split(";", 1)[0]
        if head.startswith("thread (") and "):" in head:
            tid, name = head[len("thread ("):].split("):", 1)
            if tid.strip().isdigit():
                names[int(tid)] = name.strip()
    return names


def print_profile(threads: dict[str, dict[str, int]], out) -> None:
    order = ["MainThread", "msewatch-commit"]
    for name in order + sorted(set(threads) - set(order)):
        d = threads.get(name)
        if not d:
            continue
        total = sum(d.values())
        if name not in order and total < 0.05 * max(sum(v.values()) for v in threads.values()):
            continue
        busy = total - sum(v for k, v in d.items() if k.startswith("idle"))
        print(f"  {name}: {total} samples, busy {100 * busy / total:.0f}% of wall time", file=out)
        if name == "msewatch-commit":
            steps: dict[str, int] = {}
            for cat, n in d.items():
                head = cat.split(":", 1)[0] if ":" in cat else "other"
                steps[head] = steps.get(head, 0) + n
            print("    by step: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in
                                             sorted(steps.items(), key=lambda kv: -kv[1])), file=out)
        for cat, n in sorted(d.items(), key=lambda kv: -kv[1])[:14]:
            print(f"    {100 * n / total:5.1f}%  {cat}", file=out)


# -- report --------------------------------------------------------------------------------------
def machine() -> str:
    return describe(("msewatch", "duckdb", "uvicorn", "starlette", "httpx", "orjson", "pyarrow"))


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def report(res: dict, out) -> None:
    phases = res["phases"]
    print(file=out)
    if res.get("preload"):
        print(f"store preloaded with {res['preload']['predictions']:,} predictions and {res['preload']['labels']:,} "
              "labels before the server started", file=out)
    head = (f"{'phase':<12} {'requests':>8} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
            f"{'429/5xx':>7} {'server cores':>12} {'main thr':>8} {'client':>6} {'others':>6}")
    print(head, file=out)
    for ph in phases:
        lat = ph["latency_ms"]
        bad = sum(v for k, v in ph["status"].items() if k != "200")
        print(f"{ph['name']:<12} {ph['requests']:>8,} {_fmt_rate(ph['events_per_s']):>9} {lat['p50']:>7.0f} "
              f"{lat['p99']:>7.0f} {lat['max']:>7.0f} {bad:>7} {ph['server_cores']:>12.2f} "
              f"{ph['server_main_thread_cores']:>8.2f} {ph['client_cores']:>6.2f} {ph['other_cores']:>6.2f}", file=out)
    for ph in phases:
        q = ", ".join(_fmt_rate(x) for x in ph["quarters_events_per_s"])
        extra = "; ran out of prepared bodies before the time was up" if ph["ran_out"] else ""
        print(f"  {ph['name']}: {ph['accepted']:,} accepted in {ph['wall_s']:.1f} s by {res['args']['clients']} "
              f"connections; events/s by quarter: {q}{extra}", file=out)
        sc = ph.get("scrape_s") or {}
        if sc.get("n") or ph.get("scrapes_failed"):
            failed = f", {ph['scrapes_failed']} failed" if ph.get("scrapes_failed") else ""
            print(f"  {ph['name']}: /metrics scraped every {res['args']['scrape']:g} s: {sc['n']} scrapes, "
                  f"p50 {sc['p50']:.2f} s, max {sc['max']:.2f} s{failed}", file=out)
    st = res.get("store")
    if st:
        for ph in phases:
            s = st["phases"].get(ph["name"])
            if s and s["commits"]:
                print(f"  {ph['name']}: {s['commits']} group commits, "
                      f"{s['rows_per_commit']['mean']:,.0f} rows per commit "
                      f"(max {s['rows_per_commit']['max']:,.0f}); commit transaction p50 {s['txn_ms']['p50']:.0f} ms, "
                      f"p99 {s['txn_ms']['p99']:.0f} ms, max {s['txn_ms']['max']:.0f} ms (ingest_log, without COMMIT)",
                      file=out)
    print(f"server peak RSS (VmHWM) {res['peak_rss_mb']:.0f} MB; store {st['file_mb']:.0f} MB on disk" if st else
          f"server peak RSS (VmHWM) {res['peak_rss_mb']:.0f} MB", file=out)
    print("(cores = CPU seconds / wall seconds of the timed phase; main thr = the server's event loop thread: HTTP + "
          "parsing; others = every other process on the machine)", file=out)
    if res["raw"]:
        print(file=out)
        print(f"{'reference: raw DuckDB Arrow appends':<44} {'rows/s':>9} {'commit p50':>10} {'commit p99':>10}"
              f" {'others':>6}", file=out)
        for r in res["raw"]:
            label = f"{r['commits']:,} commits of {r['commit_rows']:,} rows" + (", id index" if r.get("indexed") else "")
            print(f"  {label:<42} {_fmt_rate(r['rows_per_s']):>9} {r['commit_ms']['p50']:>7.1f} ms "
                  f"{r['commit_ms']['p99']:>7.1f} ms {r.get('other_cores', math.nan):>6.2f}", file=out)
        pred = phases[0]["events_per_s"]
        ratios = ", ".join(f"{pred / r['rows_per_s']:.2f}x raw with {_raw_name(r)}" for r in res["raw"])
        print(f"  server predictions/s = {ratios}", file=out)
    print(file=out)
    print("targets (2 cores):", file=out)
    for text, detail, met in res["targets"]:
        print(f"  {text:<40} {detail:<20} {'met' if met else 'NOT MET'}", file=out)
    if res["warnings"]:
        print(file=out)
        for w in res["warnings"]:
            print(f"WARNING: {w}", file=out)
    for ph in phases:
        if ph.get("profile_summary"):
            where = ph["profile"] if res["args"]["keep"] else "--keep DIR keeps the raw samples"
            print(file=out)
            print(f"profile of the server during the {ph['name']} phase (py-spy --idle, share of wall time; {where}):",
                  file=out)
            threads = ", ".join(f"{n} {c:.2f}" for n, c in ph["server_threads_cores"] if c >= 0.01)
            print(f"  CPU by thread (cores): {threads}", file=out)
            print_profile(ph["profile_summary"], out)
    print(file=out)
    print(res["summary"], file=out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, spec = argv[1], json.loads(argv[2])
        return child_client(spec) if kind == "client" else child_raw(spec)
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Figures are noisy on a shared 2-core machine: run it 2-3 times and read the 'others' column.",
    )
    ap.add_argument("--clients", type=int, default=8,
                    help="concurrent HTTP connections, each with one request in flight")
    ap.add_argument("--procs", type=int, default=1, help="client processes the connections are spread over")
    ap.add_argument("--batch", type=int, default=1000, help="events per request (NDJSON lines)")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of the timed predictions phase")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of untimed load first (0: none)")
    ap.add_argument("--label-seconds", type=float, default=10.0, help="duration of the labels phase (0: skip it)")
    ap.add_argument("--max-events", type=int, default=8_000_000,
                    help="most events prepared for the timed phase (memory: ~130 bytes each)")
    ap.add_argument("--ts-spread", type=float, default=60.0,
                    help="prediction times lie within this many seconds before the bodies were built")
    ap.add_argument("--ts-format", choices=("iso", "epoch"), default="iso", help="ts as ISO 8601 text or epoch seconds")
    ap.add_argument("--raw-rows", type=int, default=1_000_000, help="rows of each raw DuckDB reference (0: skip it)")
    ap.add_argument("--raw-group", type=int, default=16_000, help="rows per commit of the second raw reference")
    ap.add_argument("--raw-indexed-group", type=int, default=4_000,
                    help="rows per commit of the third raw reference, into a table with a unique id index (4,000)")
    ap.add_argument("--preload", type=int, default=0,
                    help="first load this many predictions (and ~90%% labels) into the store with `msewatch ingest`, "
                         "from eval_bench.py's seeded Parquet files (generated once into --data-dir): per-commit "
                         "work that grows with the store shows only in a store that is not empty")
    ap.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data",
                    help="where --preload finds or makes its files")
    ap.add_argument("--config", type=Path, help="msewatch.toml passed to the server (limits, group size)")
    ap.add_argument("--seed", type=int, default=42, help="seed of the generated events (and of --preload files)")
    ap.add_argument("--scrape", type=float, default=0.0,
                    help="GET /metrics every this many seconds during each phase, as Prometheus would, and report "
                         "how long the scrapes took (0: none)")
    ap.add_argument("--profile", action="store_true",
                    help="run py-spy on the server during the timed phases and print where its threads spend "
                         "their time")
    ap.add_argument("--keep", type=Path, help="keep the store, server log and profile in this directory")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout (progress on stderr)")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.procs < 1 or args.procs > args.clients or args.batch < 1 or args.seconds <= 0:
        ap.error("need --clients >= --procs >= 1, --batch >= 1 and --seconds > 0")
    if args.profile and not _py_spy():
        ap.error("--profile needs py-spy: pip install py-spy")
    out = sys.stderr if args.json else sys.stdout

    def log(msg: str) -> None:
        print(msg, file=out, flush=True)

    log(machine())
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for p in args.keep.glob("store.duckdb*"):
            p.unlink()
        work, work_ctx = args.keep.resolve(), None
    else:
        work_ctx = tempfile.TemporaryDirectory(prefix="ingest-bench-")
        work = Path(work_ctx.name)
    tag = f"b{args.seed}"
    warnings: list[str] = []
    phases: list[dict] = []
    preload = None
    if args.preload > 0:
        preload = preload_store(work / "store.duckdb", args, log)
    server = Server(work, args.config, log)
    try:
        log(f"server pid {server.pid} ready at {server.url}; {args.clients} connections in {args.procs} client "
            f"process(es), {args.batch:,} events per request")
        rate_est = None
        if args.warmup > 0:
            per_proc = max(4 * args.clients, 150_000 // args.batch) // args.procs + 1
            log(f"warm-up: {args.warmup:g} s …")
            w = run_phase(server, "predictions", args, tag + "w", args.warmup, [per_proc] * args.procs, None, log)
            rate_est = w["events_per_s"]
            log(f"  warm-up: {_fmt_rate(rate_est)} events/s, p50 {w['latency_ms']['p50']:.0f} ms")
            if w["first_error"]:
                warnings.append(f"warm-up: {w['first_error']}")
        cap = max(1, args.max_events // args.batch)
        bodies = cap
        if rate_est is not None:  # twice the warm-up rate, so that a faster steady state does not run out
            bodies = min(cap, math.ceil(2.0 * rate_est * args.seconds / args.batch) + 4 * args.clients)
        per_proc = max(1, math.ceil(bodies / args.procs))
        log(f"predictions: {args.seconds:g} s, {per_proc * args.procs:,} bodies prepared "
            f"({per_proc * args.procs * args.batch:,} events) …")
        prof = work / "profile-predictions.txt" if args.profile else None
        ph = run_phase(server, "predictions", args, tag, args.seconds, [per_proc] * args.procs, prof, log)
        ph["name"] = "predictions"
        phases.append(ph)
        log(f"  {_fmt_rate(ph['events_per_s'])} events/s, p50 {ph['latency_ms']['p50']:.0f} ms, "
            f"p99 {ph['latency_ms']['p99']:.0f} ms (bodies built in {ph['build_s']:.1f} s)")
        if ph["ran_out"]:
            warnings.append("the predictions phase ran out of prepared bodies before --seconds: raise --max-events")
        if args.label_seconds > 0:
            log(f"labels: {args.label_seconds:g} s, for the {sum(ph['bodies_sent']) * args.batch:,} "
                "predictions just posted …")
            lab_prof = work / "profile-labels.txt" if args.profile else None
            lab = run_phase(server, "labels", args, tag, args.label_seconds, ph["bodies_sent"], lab_prof, log)
            lab["name"] = "labels"
            phases.append(lab)
            log(f"  {_fmt_rate(lab['events_per_s'])} events/s, p50 {lab['latency_ms']['p50']:.0f} ms, "
                f"p99 {lab['latency_ms']['p99']:.0f} ms")
        peak = _status_mb(server.pid, "VmHWM") or math.nan
    finally:
        code = server.stop()
    if code not in (0, None, -signal.SIGTERM):  # uvicorn re-raises SIGTERM once it has drained
        warnings.append(f"the server exited with status {code}: {server.stderr_text()[-500:]}")
    store = store_stats(server.db, phases)
    if preload:
        store["predictions"] -= preload["predictions"]
        store["labels"] -= preload["labels"]
    accepted_preds = sum(p["accepted"] for p in phases if p["kind"] == "predictions")
    accepted_preds += w["accepted"] if args.warmup > 0 else 0
    accepted_labels = sum(p["accepted"] for p in phases if p["kind"] == "labels")
    failed = False
    if store["predictions"] != accepted_preds or store["labels"] != accepted_labels:
        failed = True
        warnings.append(f"the store holds {store['predictions']:,} predictions and {store['labels']:,} labels; "
                        f"the server accepted {accepted_preds:,} and {accepted_labels:,}")
    for p in phases:
        bad = {k: v for k, v in p["status"].items() if k not in ("200", "429")}
        if bad or p["rejected"] or p["duplicates"]:
            failed = True
            warnings.append(f"{p['name']}: answers {p['status']}, {p['rejected']} rejected, "
                            f"{p['duplicates']} duplicates; "
                            f"first: {p['first_error']}")
        if p["status"].get("429"):
            warnings.append(f"{p['name']}: {p['status']['429']} answers were 429 (queue full), "
                            "retried after Retry-After")
        if p["other_cores"] > OTHER_LOAD_WARN:
            warnings.append(f"{p['name']}: other processes used {p['other_cores']:.2f} cores meanwhile "
                            f"(load average now {loadavg()}); the figures are unreliable")
        if p["steal_cores"] >= 0.05:
            warnings.append(f"{p['name']}: hypervisor steal {p['steal_cores']:.2f} cores")
    if args.profile:
        warnings.append("profiled run: py-spy sampling costs some CPU, the figures are a little low")

    raw = []
    if args.raw_rows > 0:
        log(f"reference: raw DuckDB Arrow appends, {args.raw_rows:,} rows, commits of {args.batch:,}, then "
            f"{args.raw_group:,} rows, then {args.raw_indexed_group:,} rows into a table with the id index …")
        import resource

        busy0, _ = _machine_busy()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        commit_rows = [(args.batch, False), (args.raw_group, False), (args.raw_indexed_group, True)]
        child = _spawn_child("raw", {"rows": args.raw_rows, "commit_rows": commit_rows,
                                     "seed": args.seed, "ts_spread": args.ts_spread, "dir": str(work)})
        child.stdin.close()
        raw = _read_tagged(child, "RESULT")
        child.wait()
        t1 = time.perf_counter()
        busy1, _ = _machine_busy()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # only the reference was waited for meanwhile
        own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        raw_other = max(0.0, (busy1 - busy0) - own) / (t1 - t0)
        for r in raw:
            r["other_cores"] = raw_other
            if r["stored"] != r["rows"]:
                failed = True
                warnings.append(f"raw reference stored {r['stored']} of {r['rows']} rows")
        if raw_other > OTHER_LOAD_WARN:
            warnings.append(f"raw reference: other processes used {raw_other:.2f} cores meanwhile; unreliable")

    pred = phases[0]
    lat99 = pred["latency_ms"]["p99"]
    targets = [
        (f"predictions >= {TARGET_EVENTS_PER_S:,} events/s", f"{_fmt_rate(pred['events_per_s'])} events/s",
         pred["events_per_s"] >= TARGET_EVENTS_PER_S),
        (f"p99 per {args.batch:,}-event request <= {TARGET_P99_MS:.0f} ms", f"{lat99:.0f} ms", lat99 <= TARGET_P99_MS),
    ]
    raw_text = ""
    if raw:
        raw_text = "; raw DuckDB appends " + ", ".join(
            f"{_fmt_rate(r['rows_per_s'])} rows/s ({_raw_name(r)}, commit p99 {r['commit_ms']['p99']:.0f} ms, "
            f"server = {pred['events_per_s'] / r['rows_per_s']:.2f}x)"
            for r in raw
        )
    lab_text = ""
    if len(phases) > 1:
        lab_text = (f"; labels {_fmt_rate(phases[1]['events_per_s'])} events/s "
                    f"(p99 {phases[1]['latency_ms']['p99']:.0f} ms)")
    summary = (
        f"SUMMARY: {_fmt_rate(pred['events_per_s'])} predictions/s durable, p50 {pred['latency_ms']['p50']:.0f} ms / "
        f"p99 {lat99:.0f} ms per {args.batch:,}-event request, {args.clients} connections, server peak RSS "
        f"{peak:.0f} MB{lab_text}{raw_text}; goal {TARGET_EVENTS_PER_S:,}/s and p99 <= {TARGET_P99_MS:.0f} ms: "
        + ("met" if all(t[2] for t in targets) else "NOT MET")
    )
    for p in phases:
        if p["profile"] and Path(p["profile"]).exists():
            p["profile_summary"] = summarize_profile(Path(p["profile"]))
            names = _thread_names(Path(p["profile"]))
            p["server_threads_cores"] = [(names.get(tid, str(tid)), c) for tid, c in p["server_threads_cores"]]
        elif p["profile"]:
            warnings.append(f"{p['name']}: py-spy wrote no profile")
    for p in phases:
        p.pop("window", None)
    res = {
        "machine": machine(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "server_cmd": server.cmd,
        "phases": phases,
        "warmup_events_per_s": rate_est,
        "preload": preload,
        "peak_rss_mb": peak,
        "store": store,
        "raw": raw,
        "targets": targets,
        "warnings": warnings,
        "summary": summary,
        "load_average_end": loadavg(),
    }
    report(res, out)
    if args.json:
        json.dump(res, sys.stdout, indent=2, default=str)
        print()
    if work_ctx is not None:
        work_ctx.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
