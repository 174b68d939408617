"""Durability of `msewatch serve` under faults: kill -9 under load, and SIGTERM with requests in flight.

The contract (DESIGN.md §1, §4): a 2xx means committed to disk; re-sending the same event is a
no-op; SIGTERM stops taking requests, commits what was accepted and exits. The clients here
behave like real ones: NDJSON batches with unique ids over httpx, and on a connection error the
same batch is sent again until it is answered. The store is checked with DuckDB directly,
read-only, after the server has stopped.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pytest
from conftest import query
from servers import ServerProcess

from msewatch.store._journal import journal_files, read_records

BATCH = 200
RETRY_DEADLINE = 60.0  # a batch that cannot be acknowledged within this is a failure
NDJSON = {"content-type": "application/x-ndjson"}
KILLS = 5
# uvicorn re-raises the signal it caught once its graceful shutdown is done, so a drained server
# ends with "killed by SIGTERM" as its status (a supervisor sees why it stopped); 0 is also clean
CLEAN_EXIT = (0, -signal.SIGTERM)


def wait_for_acks(clients: list[Client], targets: list[int], timeout: float = RETRY_DEADLINE) -> None:
    """Until each client has at least its target number of acknowledged batches."""
    deadline = time.monotonic() + timeout
    while any(len(c.acked) < n and c.error is None for c, n in zip(clients, targets)):
        assert time.monotonic() < deadline, f"no progress: {[len(c.acked) for c in clients]} < {targets}"
        time.sleep(0.01)


def y_true_of(pid: str) -> float:
    """A label value derived from the id, so anyone can recompute what was sent."""
    return (sum(pid.encode()) % 97) / 7.0


def prediction(pid: str, k: int, seq: int) -> dict[str, Any]:
    return {
        "prediction_id": pid,
        "ts": 1_717_200_000 + seq,
        "model": "pricing",
        "version": f"v{k % 2 + 1}",
        "y_pred": y_true_of(pid) + ((seq * 7919) % 101 - 50) / 25.0,
    }


def ndjson(records: list[dict[str, Any]]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in records) + b"\n"


@dataclass
class Acked:
    """One batch as finally answered with 200, after `attempts` tries."""

    kind: str
    ids: list[str]
    attempts: int
    answer: dict[str, Any]


class Client(threading.Thread):
    """Posts prediction batches, then their labels, each until a 200 answer; records every ack."""

    def __init__(self, k: int, base: str, stop: threading.Event) -> None:
        super().__init__(name=f"client-{k}", daemon=True)
        self.k = k
        self.base = base
        self.stop_event = stop
        self.acked: list[Acked] = []
        self.transport_errors = 0
        self.error: BaseException | None = None

    def post_until_ok(self, http: httpx.Client, kind: str, body: bytes) -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + RETRY_DEADLINE
        attempts = 0
        backoff = 0.02
        while True:
            attempts += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no 200 for a {kind} batch within {RETRY_DEADLINE}s")
            try:
                r = http.post(f"{self.base}/v1/{kind}", content=body, headers=NDJSON)
            except httpx.TransportError:
                self.transport_errors += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, 0.2)
                continue
            if r.status_code in (429, 503):
                time.sleep(float(r.headers.get("retry-after", "1")) / 10)
                continue
            assert r.status_code == 200, f"{kind}: {r.status_code} {r.text}"
            return attempts, r.json()

    def run(self) -> None:
        try:
            with httpx.Client(timeout=30.0) as http:
                b = 0
                while not self.stop_event.is_set():
                    ids = [f"t{self.k}-b{b:04d}-{i:03d}" for i in range(BATCH)]
                    records = [prediction(pid, self.k, b * BATCH + i) for i, pid in enumerate(ids)]
                    attempts, answer = self.post_until_ok(http, "predictions", ndjson(records))
                    self.acked.append(Acked("predictions", ids, attempts, answer))
                    labels = [{"prediction_id": pid, "y_true": y_true_of(pid)} for pid in ids]
                    attempts, answer = self.post_until_ok(http, "labels", ndjson(labels))
                    self.acked.append(Acked("labels", ids, attempts, answer))
                    b += 1
        except BaseException as exc:
            self.error = exc


def test_kill_9_under_load_loses_no_acknowledged_row_and_stores_none_twice(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    server = ServerProcess(db)
    server.start()
    stop = threading.Event()
    clients = [Client(k, server.url, stop) for k in range(4)]
    rnd = random.Random(1234)
    journal_only: list[int] = []  # rows answered from the journal but not in the tables, at each kill
    try:
        for c in clients:
            c.start()
        for _ in range(KILLS):
            # kill under load: once every client has been answered since the (re)start, at a
            # random moment while they keep posting (they never pause)
            wait_for_acks(clients, [len(c.acked) + 1 for c in clients])
            time.sleep(rnd.uniform(0.0, 0.4))
            server.kill()
            journal_only.append(answered_but_not_applied(db))
            server.start()
        wait_for_acks(clients, [len(c.acked) + 2 for c in clients])
        stop.set()
        for c in clients:
            c.join(RETRY_DEADLINE + 30)
            assert not c.is_alive(), f"{c.name} did not finish"
            assert c.error is None, f"{c.name}: {c.error!r}"

        acked = [a for c in clients for a in c.acked]
        pred_batches = [a for a in acked if a.kind == "predictions"]
        label_batches = [a for a in acked if a.kind == "labels"]
        assert len(acked) >= len(clients) * (KILLS + 2), "every client was answered in every life"
        assert sum(c.transport_errors for c in clients) > 0, "no request ever met a killed server"
        assert any(journal_only), "no kill left answered rows in the journal only: its replay went untested"

        # a batch is one transaction: its answer is all new rows, or (after a lost answer) all
        # duplicates; a batch that was never re-sent has no duplicates
        for a in acked:
            ans = a.answer
            assert ans["rejected"] == [], ans
            assert ans["accepted"] + ans["duplicates"] == BATCH, ans
            assert ans["accepted"] in (0, BATCH), ans
            if a.attempts == 1:
                assert ans["duplicates"] == 0, ans

        # a re-sent batch whose first answer was lost: duplicates, nothing new (deterministic)
        with httpx.Client(timeout=30.0) as http:
            for a in pred_batches[:3]:
                k, b = int(a.ids[0][1]), int(a.ids[0].split("-b")[1][:4])
                records = [prediction(pid, k, b * BATCH + i) for i, pid in enumerate(a.ids)]
                r = http.post(server.url + "/v1/predictions", content=ndjson(records), headers=NDJSON)
                assert r.status_code == 200 and r.json() == {"accepted": 0, "duplicates": BATCH, "rejected": []}, r.text
                labels = [{"prediction_id": pid, "y_true": y_true_of(pid)} for pid in a.ids]
                r = http.post(server.url + "/v1/labels", content=ndjson(labels), headers=NDJSON)
                assert r.status_code == 200 and r.json() == {"accepted": 0, "duplicates": BATCH, "rejected": []}, r.text
            served = httpx.get(server.url + "/v1/metrics", timeout=30.0).json()["rows"][0]
        assert server.stop() in CLEAN_EXIT, server.log_text()
    finally:
        stop.set()
        server.__exit__(None, None, None)

    pred_ids = {pid for a in pred_batches for pid in a.ids}
    label_ids = {pid for a in label_batches for pid in a.ids}
    assert len(pred_ids) == BATCH * len(pred_batches), "ids are unique per batch"

    # every acknowledged id is stored, exactly once; nothing was stored that no client sent
    # (a client only stops after its batch is acknowledged, so sent = acknowledged here)
    (n, distinct), = query(db, "SELECT count(*), count(DISTINCT prediction_id) FROM predictions")
    assert n == distinct, f"{n - distinct} predictions stored twice"
    stored = {pid for (pid,) in query(db, "SELECT prediction_id FROM predictions")}
    lost = sorted(pred_ids - stored)
    assert not lost, f"{len(lost)} acknowledged predictions lost, e.g. {lost[:3]}"
    assert stored == pred_ids

    (n, distinct), = query(db, "SELECT count(*), count(DISTINCT prediction_id) FROM labels")
    assert n == distinct, f"{n - distinct} labels stored twice (a re-send became a revision)"
    stored_labels = dict(query(db, "SELECT prediction_id, y_true FROM labels"))
    assert set(stored_labels) == label_ids
    assert all(stored_labels[pid] == y_true_of(pid) for pid in label_ids)
    assert query(db, "SELECT DISTINCT revision, is_current FROM labels") == [(1, True)]

    # the ingest log is written in the same transaction as the rows it counts
    logged = dict(query(db, "SELECT kind, sum(accepted) FROM ingest_log GROUP BY kind"))
    assert logged == {"predictions": len(pred_ids), "labels": len(label_ids)}

    # the rows are intact: the MSE of the store is that of what was sent, and so are the rollups
    sent = {pid: prediction(pid, int(pid[1]), int(pid.split("-b")[1][:4]) * BATCH + int(pid[-3:])) for pid in pred_ids}
    sq = np.array([(sent[pid]["y_pred"] - y_true_of(pid)) ** 2 for pid in label_ids])
    assert served["n_predictions"] == len(pred_ids) and served["n_labeled"] == len(label_ids)
    assert served["mse"] == pytest.approx(float(np.mean(sq)), rel=1e-9)
    (n_pred, n_lab, sum_sq), = query(db, "SELECT sum(n_predictions), sum(n_labeled), sum(sum_sq) FROM rollups")
    assert (n_pred, n_lab) == (len(pred_ids), len(label_ids))
    assert sum_sq == pytest.approx(float(np.sum(sq)), rel=1e-9)


@dataclass
class Outcome:
    ids: list[str]
    status: int | None  # None: no answer (connection refused, reset, …)
    answered_at: float


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    # a group waits 100 ms for company: requests spend most of their time queued, so the signal
    # meets some (with the default 5 ms, a loaded machine's scrapes of the queue could miss them)
    config = tmp_path / "msewatch.toml"
    config.write_text("[server]\ncommit_delay_ms = 100\n")
    server = ServerProcess(db, config=config)
    server.start()
    rows = 3000  # large batches, so commits are under way when the signal comes
    outcomes: list[list[Outcome]] = [[] for _ in range(4)]
    turned_away = threading.Event()  # a load thread met the closing server

    def load(k: int) -> None:
        with httpx.Client(timeout=60.0) as http:
            b = 0
            while True:
                ids = [f"s{k}-b{b:04d}-{i:04d}" for i in range(rows)]
                body = ndjson([prediction(pid, k, b * rows + i) for i, pid in enumerate(ids)])
                try:
                    r = http.post(server.url + "/v1/predictions", content=body, headers=NDJSON)
                    status: int | None = r.status_code
                    if status == 200:
                        assert r.json()["accepted"] == rows, r.text
                except httpx.TransportError:
                    status = None
                outcomes[k].append(Outcome(ids, status, time.monotonic()))
                if status != 200:
                    turned_away.set()
                    return  # the server is going away: stop, as a client told 503/refused would
                b += 1

    def queued_rows() -> float:
        text = httpx.get(server.url + "/metrics", timeout=10.0).text
        gauge = (line for line in text.splitlines() if line.startswith("msewatch_ingest_queue_rows "))
        return float(next(gauge).split()[1])

    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(4)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while not all(any(o.status == 200 for o in out) for out in outcomes):  # every client is served
            assert time.monotonic() < deadline, "no load before the signal"
            time.sleep(0.02)
        while queued_rows() == 0:  # signal while a request waits for its commit
            assert time.monotonic() < deadline, "no request ever seen in the commit queue"
        signalled = time.monotonic()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)

        # once the server has turned a client away it takes no new request: no connection, or 503
        assert turned_away.wait(30), "no client was ever turned away after SIGTERM"
        probe_ids = [f"late-{i}" for i in range(10)]
        probes: list[int | None] = []
        while len(probes) < 3 or (server.proc.poll() is None and len(probes) < 50):
            try:
                r = httpx.post(
                    server.url + "/v1/predictions",
                    content=ndjson([prediction(pid, 0, i) for i, pid in enumerate(probe_ids)]),
                    headers=NDJSON,
                    timeout=10.0,
                )
                probes.append(r.status_code)
            except httpx.TransportError:
                probes.append(None)
            time.sleep(0.05)
        assert all(p in (None, 503) for p in probes), f"accepted after SIGTERM: {probes}"

        code = server.proc.wait(35)  # it exits by itself: graceful shutdown is bounded
        exited = time.monotonic()
        assert code in CLEAN_EXIT, server.log_text()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
    finally:
        server.__exit__(None, None, None)

    log = server.log_text()
    assert "Traceback" not in log, log
    # the store was closed, not abandoned: DuckDB checkpoints and removes its WAL on a clean close
    assert not Path(f"{db}.wal").exists(), "the store's WAL is still there: it was not closed cleanly"
    assert not journal_files(str(db)), "a journal file is left: the tables did not take every record"
    flat = [o for out in outcomes for o in out]
    ok = [o for o in flat if o.status == 200]
    assert all(o.status in (200, 503, None) for o in flat), [o.status for o in flat]
    # the requests in flight at the signal were answered, not dropped
    assert any(signalled < o.answered_at <= exited for o in ok), "no request in flight was drained"

    stored = {pid for (pid,) in query(db, "SELECT prediction_id FROM predictions")}
    (n,), = query(db, "SELECT count(*) FROM predictions")
    assert n == len(stored)
    for o in ok:
        assert set(o.ids) <= stored, "a request answered 200 is not in the store"
    # every batch is all or nothing; unanswered ones may or may not have landed, whole
    for o in flat:
        landed = len(set(o.ids) & stored)
        assert landed in (0, rows), f"a batch landed partly: {landed} of {rows}"
    assert not stored & set(probe_ids), "a request after SIGTERM was stored"
    sent = {pid for o in flat for pid in o.ids}
    assert stored <= sent


def answered_but_not_applied(db: Path) -> int:
    """Rows of the store's journal past the last record its tables hold (a killed server's)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        applied = con.execute("SELECT coalesce(max(seq), 0) FROM journal_applied").fetchall()[0][0]
    finally:
        con.close()
    return sum(r.batch.num_rows for r in read_records(str(db), after=applied))
