#!/usr/bin/env python
"""Where a group commit spends its time: every DuckDB statement of `Store.ingest_group`, timed.

    python bench/commit_profile.py                    # groups of 4 x 1,000 rows, a step every 10 commits
    python bench/commit_profile.py --requests 8 --step-every 5

In one process, without HTTP: NDJSON bodies like `ingest_bench.py`'s (unique ids, 2 models,
3 versions, 8 regions) are parsed by the server's own parser, then committed as the server
does (`defer_rollups=True`, with `apply_pending` every --step-every commits, its time counted
in). First --commits groups of predictions, then as many groups of labels for them. The first
5 commits of each kind are warm-up. Prints the time per commit and rows/s, then the statements
by total time per commit (the step's statements show with a count below 1). The store is a
fresh DuckDB file in a temporary directory.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from msewatch.server.bodies import parse_body
from msewatch.store import Store

WARMUP = 5


class _Timed:
    """A DuckDB connection whose `execute` and `sql` (and its result fetches) add to `times`."""

    def __init__(self, con: Any, times: dict[str, float], counts: collections.Counter) -> None:
        self._con, self._times, self._counts = con, times, counts

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._con, name)
        if name not in ("execute", "sql"):
            return attr

        def timed(query: str, *args: Any, **kwargs: Any) -> Any:
            key = " ".join(str(query).split())[:90]
            started = time.perf_counter()
            result = attr(query, *args, **kwargs)
            self._add(key, started)
            return _TimedResult(result, key + " [fetch]", self) if name == "sql" else result

        return timed

    def _add(self, key: str, started: float) -> None:
        self._times[key] += time.perf_counter() - started
        self._counts[key] += 1


class _TimedResult:
    def __init__(self, rel: Any, key: str, owner: _Timed) -> None:
        self._rel, self._key, self._owner = rel, key, owner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._rel, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = attr(*args, **kwargs)
            self._owner._add(self._key, started)
            return result

        return timed


def _bodies(kind: str, group: int, requests: int, rng: random.Random) -> list[bytes]:
    now = time.time()
    out = []
    for k in range(requests):
        lines = []
        for j in range(1000):
            pid = f"p{group}-{k}-{j}"
            if kind == "predictions":
                record = {"prediction_id": pid, "ts": now - rng.random() * 60, "model": f"m{j % 2}",
                          "version": f"v{j % 3}", "region": f"r{j % 8}", "y_pred": rng.random()}
            else:
                record = {"prediction_id": pid, "y_true": rng.random(), "label_ts": now}
            lines.append(json.dumps(record))
        out.append("\n".join(lines).encode())
    return out


def run(kind: str, store: Store, args: argparse.Namespace, rng: random.Random) -> None:
    times: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()
    plain = store.con
    store.con = _Timed(plain, times, counts)
    total, measured = 0.0, 0
    try:
        for group in range(args.commits):
            requests = []
            for body in _bodies(kind, group, args.requests, rng):
                parsed = parse_body(body, "application/x-ndjson", kind, 100_000)
                requests.append((parsed.batch, parsed.count))
            started = time.perf_counter()
            store.ingest_group(kind, requests, pair_columns=["region"], defer_rollups=True)
            if group % args.step_every == args.step_every - 1:
                store.apply_pending(pair_columns=["region"])
            elapsed = time.perf_counter() - started
            if group == WARMUP - 1:
                times.clear()
                counts.clear()
            if group >= WARMUP:
                total += elapsed
                measured += 1
    finally:
        store.con = plain
    rows = args.requests * 1000
    print(f"{kind}: groups of {rows:,} rows, {total / measured * 1000:.1f} ms per commit (steps included), "
          f"{rows * measured / total:,.0f} rows/s")
    for key, seconds in sorted(times.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {seconds / measured * 1000:7.2f} ms  x{counts[key] / measured:<4.1f} {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4, help="requests of 1,000 rows per group commit (4)")
    parser.add_argument("--commits", type=int, default=30, help="group commits of each kind (30; 5 are warm-up)")
    parser.add_argument("--step-every", type=int, default=10, help="a rollup step after this many commits (10)")
    parser.add_argument("--top", type=int, default=20, help="statements to list (20)")
    args = parser.parse_args()
    if args.commits <= WARMUP:
        parser.error(f"--commits must be more than the {WARMUP} warm-up commits")
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "profile.duckdb") as store:
        run("predictions", store, args, rng)
        run("labels", store, args, rng)


if __name__ == "__main__":
    main()
