"""Threads that work behind the answers yield the cores to the threads that give them.

A request's answer waits on the event loop, the parse pool and the answer thread, which share
one GIL. The threads that apply the journal to the tables, fold rollups and export to the lake
spend their time in DuckDB, outside the GIL, and only need to keep up. On Linux each thread
has its own nice value: these run at nice 19, so when the cores are short the scheduler runs
the answering threads first and the background ones take what is left. Measured with
`bench/ingest_bench.py`, 8 connections on 2 cores, DuckDB on one thread (see
`ServerConfig.engine_threads`): 83-94k predictions/s at p99 144-175 ms before, 112-122k at
p99 123-132 ms after. They do not fall behind without bound: past `max_pending_rows`
unapplied rows the answer thread waits for the apply thread, and readers that need the
rollups wait for them.
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
