"""`msewatch demo --serve`: the scenario replayed through the SDK into a real server.

The store the server fills must hold exactly what the file-based demo ingests: the same
evaluation to the last digit, and Prometheus must have counted every labeled prediction once.
"""

from __future__ import annotations

import math
from pathlib import Path

from conftest import run_cli
from servers import free_port


def test_demo_through_the_server_matches_the_file_demo(tmp_path: Path) -> None:
    served = run_cli(
        ["demo", "--serve", "--port", str(free_port()), "--replay-seconds", "3", "--exit",
         "--db", "served.duckdb", "--format", "json"],
        cwd=tmp_path,
        timeout=600,
    )
    assert served.returncode == 0, served
    report = served.json()
    stats = report["stats"]
    assert stats["rejected"] == 0 and stats["duplicates"] == 0, report
    assert stats["accepted"] == report["events"]
    assert report["rejected"] == []

    files = run_cli(["demo", "--db", "files.duckdb", "--format", "json"], cwd=tmp_path, timeout=600)
    assert files.returncode == 0, files

    args = ["--window", "1d", "--by", "region,version", "--format", "json"]
    a = run_cli(["eval", "--db", "served.duckdb", *args], cwd=tmp_path).json()["rows"]
    b = run_cli(["eval", "--db", "files.duckdb", *args], cwd=tmp_path).json()["rows"]
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                assert math.isclose(x[key], y[key], rel_tol=1e-12), (key, x, y)
            else:
                assert x[key] == y[key], (key, x, y)

    # every prediction with a label entered the Prometheus histogram exactly once
    n_labeled = sum(r["n_labeled"] for r in a)
    assert report["prometheus_count"] == n_labeled
