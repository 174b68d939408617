"""Threads whose work may lag yield the cores to the threads that answer requests.

A request's answer waits on the event loop, the parse pool and the answer thread, which share
one GIL. The lake export spends its time in DuckDB and Parquet and may run behind (the lake
has its lag gauge). On Linux each thread has its own nice value: it runs at nice 19, so when
the cores are short the scheduler runs the answering threads first. It only reads the store.

Two threads are not lowered, because the answers wait for them in the end:
- The apply thread. At nice 19 it fell behind under a saturating load until the journal
  backlog reached `max_pending_rows` and the answers stopped for it: 60-s runs of
  `bench/ingest_bench.py` gave p99 206 ms and 2.1 s pauses, against p99 147 ms and at most
  422 ms at normal priority.
- The rollup step. It is a write transaction, and DuckDB defers its automatic checkpoint
  while one is open: the step's COMMIT then checkpoints the WAL of every commit made
  meanwhile, and the apply thread's commits wait for it. At nice 19, under label load, steps
  took up to 7.9 s, one COMMIT held an apply transaction 1.5 s, the backlog reached its
  bound and the answers waited 0.42 s; a /metrics scrape waited its 5 s limit, and peak RSS
  was 1.71-1.76 GB against 1.18-1.20 GB at normal priority (two runs each).
"""

from __future__ import annotations

import os
import sys
import threading

__all__ = ["BACKGROUND_NICE", "run_in_background"]

BACKGROUND_NICE = 19


def run_in_background() -> bool:
    """Lower the calling thread's CPU priority; False where threads have no priority of their
    own (not Linux: there `setpriority` would slow the whole process) or it is not allowed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError:
        return False
    return True
