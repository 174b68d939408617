"""Threads whose work may lag yield the cores to the threads that answer requests.

A request's answer waits on the event loop, the parse pool and the answer thread, which share
one GIL. The rollup step and the lake export spend their time in DuckDB and Parquet and may
run behind (readers that need the rollups wait for them; the lake has its lag gauge). On Linux
each thread has its own nice value: these run at nice 19, so when the cores are short the
scheduler runs the answering threads first.

The apply thread is not one of them. At nice 19 it fell behind under a saturating load until
the journal backlog reached `max_pending_rows` and the answers stopped for it: 60-s runs of
`bench/ingest_bench.py` gave p99 206 ms and 2.1 s pauses, against p99 147 ms and at most
422 ms at normal priority.
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
