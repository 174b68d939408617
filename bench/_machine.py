"""The machine and package versions a benchmark ran on, for the header of its report.

Standard library only: the benchmark scripts are also their own child processes.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "?"


def describe(packages: Sequence[str]) -> str:
    """Two lines: cores, memory, CPU, OS and load; Python and the given packages' versions."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kib = int(next(ln for ln in fh if ln.startswith("MemTotal")).split()[1])
            mem = f", {kib / 1024**2:.1f} GiB RAM"
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{p} {version(p)}" for p in packages)
    return (
        f"machine: {os.cpu_count()} cores ({usable} usable){mem}, {cpu or platform.processor()}, "
        f"{platform.system()} {platform.release()}; load average {loadavg()}\n"
        f"python {platform.python_version()}; {versions}"
    )
