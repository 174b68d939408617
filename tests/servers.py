"""Real server processes for tests: `msewatch serve` and Prometheus, on free ports.

`ServerProcess` is a real `msewatch serve`: started on a free port, waited for, stopped.

Tests talk to it over real sockets with httpx or the SDK; `kill()` sends SIGKILL, `stop()`
SIGTERM, and `restart()` starts it again on the same store and port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from conftest import _clean_env, msewatch_command

START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(
        self,
        db: Path,
        *,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
        log: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.db = Path(db)
        self.config = config
        self.env = env or {}
        self.port = port or free_port()
        self.log = log or self.db.with_suffix(".server.log")
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ServerProcess:
        args = [*msewatch_command(), "serve", "--db", str(self.db), "--port", str(self.port), "--log-level", "warning"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        args += self.extra_args
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=_clean_env(self.env))
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._close_log()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close_log()
        return code

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc, getattr(self, "_log", None), wait=30)


def stop_process(proc: subprocess.Popen[bytes] | None, log: Any = None, wait: float = 20.0) -> None:
    """SIGTERM, SIGKILL if it has not exited after `wait` seconds, then close its log file."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if log is not None and not log.closed:
        log.close()


def require_binary(name: str, reason: str) -> str:
    """The path of a system binary; skip locally when absent, fail under CI (it must be there)."""
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed, and CI must run this test ({reason})")
        pytest.skip(f"{name} is not installed ({reason})")
    return path


class Prometheus:
    """`prometheus` on a free loopback port with a throwaway TSDB, scraping each target (job name →
    host:port) every second; queried over its HTTP API."""

    def __init__(self, binary: str, workdir: Path, targets: dict[str, str]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        jobs = "".join(
            f"""
  - job_name: {job}
    scrape_interval: 1s
    scrape_timeout: 1s
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
"""
            for job, target in targets.items()
        )
        self.config = workdir / "prometheus.yml"
        self.config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:{jobs}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector of `promql` (at `at`): [{"metric": {...}, "value": float}, …]."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        r = httpx.post(self.url + "/api/v1/query", data=params, timeout=10.0)
        assert r.status_code == 200, f"{promql}\n-> {r.status_code} {r.text}"
        body = r.json()
        assert body["status"] == "success", (promql, body)
        assert body["data"]["resultType"] == "vector", (promql, body)
        return [{"metric": s["metric"], "value": float(s["value"][1])} for s in body["data"]["result"]]

    def scalar(self, promql: str) -> float | None:
        """The single value of a query that yields at most one sample (None when empty)."""
        result = self.query(promql)
        assert len(result) <= 1, f"{promql} gave {len(result)} series: {result}"
        return result[0]["value"] if result else None

    def stop(self) -> None:
        stop_process(self.proc, getattr(self, "_log", None))
