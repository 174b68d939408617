"""The Python SDK (`msewatch.Client`) against a real `msewatch serve`, no mocks.

Two servers are shared by the module (started together, to save start-up time):
- `plain`: default settings; each test logs under its own model names, so tests do not meet;
- `strict`: `max_pending_rows = 1` (a request arriving while another is being committed gets
  429), `max_rows_per_request = 50`, and a Bearer token (`MSEWATCH_TOKENS`).
The spool test starts its own server, on a port the client was already (vainly) sending to.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from conftest import query
from servers import ServerProcess, free_port

from msewatch import Client
from msewatch.client import ClientStats

REL = 1e-9
TOKEN = "client-test-token-0123456789"
FAST = {"backoff": 0.05, "max_backoff": 0.5}  # retry and replay quickly in tests


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    root = tmp_path_factory.mktemp("client-servers")
    config = root / "strict.toml"
    config.write_text("[server]\nmax_pending_rows = 1\nmax_rows_per_request = 50\n")
    running = {
        "plain": ServerProcess(root / "plain.duckdb"),
        "strict": ServerProcess(
            root / "strict.duckdb", config=config, env={"MSEWATCH_TOKENS": f"ingest+read:{TOKEN}"}
        ),
    }
    try:
        for server in running.values():
            server.start(wait=False)
        for server in running.values():
            server.wait_ready()
        yield running
    finally:
        for server in running.values():
            server.__exit__(None, None, None)


@pytest.fixture
def plain(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["plain"]


@pytest.fixture
def strict(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["strict"]


class Rejects:
    """An `on_reject` callback that keeps what it is given (called from the client's thread)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self._lock = threading.Lock()

    def __call__(self, kind: str, record: dict[str, Any], error: str) -> None:
        with self._lock:
            self.calls.append((kind, record, error))


def metrics(server: ServerProcess, token: str | None = None, **params: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(server.url + "/v1/metrics", params=params, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def spool_lines(directory: Path) -> list[bytes]:
    return [
        line for f in sorted(directory.glob("*.ndjson")) for line in f.read_bytes().splitlines() if line
    ]


# -- no server needed ----------------------------------------------------------------------------
def test_import_msewatch_stays_light() -> None:
    code = (
        "import sys, msewatch\n"
        "assert 'httpx' not in sys.modules and 'msewatch.client' not in sys.modules\n"
        "import msewatch.client\n"
        "assert msewatch.Client is msewatch.client.Client\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_values_raise_at_the_call_and_nothing_is_queued(tmp_path: Path) -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", spool_dir=tmp_path / "spool", **FAST)
    try:
        for bad in (float("nan"), float("inf"), -np.inf, np.float32("nan")):
            with pytest.raises(ValueError, match="finite"):
                client.log_prediction(bad)
            with pytest.raises(ValueError, match="finite"):
                client.log_label("p1", bad)
        for bad in ("1.5", None, True):
            with pytest.raises(TypeError, match="number"):
                client.log_prediction(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="JSON"):
            client.log_prediction(1.0, region=object())
        with pytest.raises(ValueError, match="record 1"):
            client.log_labels([{"prediction_id": "a", "y_true": 1.0}, {"prediction_id": "b", "y_true": np.nan}])
        with pytest.raises(ValueError, match="record 0"):
            client.log_predictions([{"y_pred": float("-inf")}])
        assert client.flush(timeout=5)
        assert client.stats == ClientStats()
    finally:
        client.close()
    assert not list((tmp_path / "spool").glob("*"))
    with pytest.raises(RuntimeError, match="closed"):
        client.log_prediction(1.0)


def test_overflow_spools_the_oldest_events_and_loses_none(tmp_path: Path) -> None:
    """Server down and the sender stuck in retries: past max_queue, callers spool batches."""
    spool = tmp_path / "spool"
    client = Client(
        f"http://127.0.0.1:{free_port()}", spool_dir=spool, batch_size=10, max_queue=20,
        max_retries=2, backoff=0.5, max_backoff=1.0,
    )
    try:
        ids = [client.log_prediction(float(i), model="overflow") for i in range(100)]
        assert client.stats.spooled >= 60  # written by the callers, synchronously
    finally:
        client.close()
    stats = client.stats
    assert stats.spooled == 100 and stats.accepted == 0 and stats.dropped == 0
    records = [orjson.loads(line) for line in spool_lines(spool)]
    assert sorted(r["prediction_id"] for r in records) == sorted(ids)
    assert not list(spool.glob(".*"))  # no temporary files left behind


def test_close_with_a_timeout_spools_what_is_left_unsent(tmp_path: Path) -> None:
    """A process shutting down does not wait out the retry budget: the rest goes to the spool."""
    spool = tmp_path / "spool"
    client = Client(f"http://127.0.0.1:{free_port()}", spool_dir=spool, max_retries=1000, **FAST)
    ids = [client.log_prediction(1.0) for _ in range(5)]
    client.log_label(ids[0], 2.0)
    started = time.monotonic()
    client.close(timeout=0.5)
    assert time.monotonic() - started < 5
    assert client.stats.spooled == 6
    assert sorted(orjson.loads(line)["prediction_id"] for line in spool_lines(spool)) == sorted([*ids, ids[0]])


# -- against a server ----------------------------------------------------------------------------
def test_end_to_end_metrics_equal_numpy(plain: ServerProcess, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 1200
    models = rng.choice(["e2e-price", "e2e-eta"], n)
    versions = rng.choice(["v1", "v2"], n)
    regions = rng.choice(["eu", "us", "ap"], n)
    y_pred = rng.normal(50.0, 10.0, n)
    labeled = rng.random(n) < 0.75
    y_true = y_pred + rng.normal(0.0, 3.0, n)
    start = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)

    with Client(plain.url, batch_size=400, flush_interval=0.2, spool_dir=tmp_path / "spool", **FAST) as client:
        ids: list[str] = []
        for i in range(n // 2):  # one by one, with every kind of timestamp
            ts: Any = [None, start + dt.timedelta(seconds=i), 1_717_200_000 + i][i % 3]
            ids.append(
                client.log_prediction(
                    y_pred[i], ts=ts, model=str(models[i]), version=str(versions[i]), region=str(regions[i])
                )
            )
        batch = [
            {"prediction_id": f"e2e-{i}", "y_pred": float(y_pred[i]), "model": str(models[i]),
             "version": str(versions[i]), "region": str(regions[i])}
            for i in range(n // 2, n)
        ]
        ids += client.log_predictions(batch)
        assert ids[n // 2 :] == [f"e2e-{i}" for i in range(n // 2, n)]
        assert len(set(ids)) == n
        for i in np.flatnonzero(labeled[: n // 2]):
            client.log_label(ids[i], float(y_true[i]), label_ts=start + dt.timedelta(hours=1))
        client.log_labels(
            {"prediction_id": ids[i], "y_true": float(y_true[i])} for i in np.flatnonzero(labeled) if i >= n // 2
        )
        assert client.flush(timeout=60)
        stats = client.stats
    assert stats.accepted == n + labeled.sum()
    assert stats.rejected == stats.duplicates == stats.retries == stats.spooled == 0

    rows = [r for r in metrics(plain, by="model,version") if r["model"].startswith("e2e-")]
    assert {(r["model"], r["version"]) for r in rows} == set(zip(models, versions))
    for row in rows:
        group = (models == row["model"]) & (versions == row["version"])
        pairs = group & labeled
        r = y_pred[pairs] - y_true[pairs]
        assert row["n_predictions"] == group.sum()
        assert row["n_labeled"] == pairs.sum()
        assert row["mse"] == pytest.approx(np.mean(r**2), rel=REL)
        assert row["mae"] == pytest.approx(np.mean(np.abs(r)), rel=REL)
        assert row["bias"] == pytest.approx(np.mean(r), rel=REL, abs=1e-12)


def test_events_are_sent_after_flush_interval_without_a_flush(plain: ServerProcess, tmp_path: Path) -> None:
    with Client(plain.url, model="interval", flush_interval=0.2, spool_dir=tmp_path / "spool") as client:
        client.log_prediction(1.0)
        wait_until(lambda: client.stats.accepted == 1, timeout=10)
        client.log_prediction(2.0)  # and again, after the sender went back to sleep
        wait_until(lambda: client.stats.accepted == 2, timeout=10)


def test_resent_events_count_as_duplicates_and_are_stored_once(plain: ServerProcess, tmp_path: Path) -> None:
    """A retry re-sends a batch that may be committed already: the server counts duplicates."""
    start = dt.datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)  # microseconds survive
    preds = [
        {"prediction_id": f"dup-{i}", "ts": 1_717_200_000 + i if i % 2 else start + dt.timedelta(seconds=i),
         "model": "dup", "version": "v1", "y_pred": i * 0.5, "region": "eu"}
        for i in range(300)
    ]
    labels = [{"prediction_id": f"dup-{i}", "y_true": i * 0.25} for i in range(0, 300, 2)]
    for attempt in range(2):
        with Client(plain.url, batch_size=120, spool_dir=tmp_path / "spool", **FAST) as client:
            client.log_predictions(preds)
            client.log_labels(labels)
        stats = client.stats
        if attempt == 0:
            assert (stats.accepted, stats.duplicates) == (450, 0)
        else:
            assert (stats.accepted, stats.duplicates) == (0, 450)
    # a spool file of events the server already has (an answer lost after the commit) replays
    # at start-up into duplicates, and is deleted
    spool = tmp_path / "replay"
    spool.mkdir()
    (spool / f"{time.time_ns():020d}-x-predictions.ndjson").write_bytes(
        b"\n".join(orjson.dumps(p, option=orjson.OPT_NAIVE_UTC) for p in preds[:100]) + b"\n"
    )
    with Client(plain.url, spool_dir=spool, **FAST) as client:
        wait_until(lambda: client.stats.replayed == 100)
    assert (client.stats.accepted, client.stats.duplicates) == (0, 100)
    assert not list(spool.glob("*.ndjson"))

    [row] = metrics(plain, model="dup", by="model")
    assert (row["n_predictions"], row["n_labeled"]) == (300, 150)


def test_rejected_rows_reach_on_reject_and_good_rows_beside_them_land(
    plain: ServerProcess, tmp_path: Path
) -> None:
    rejects = Rejects()
    with Client(plain.url, model="rej", spool_dir=tmp_path / "spool", on_reject=rejects, **FAST) as client:
        a = client.log_prediction(2.0, prediction_id="rej-a")
        b = client.log_prediction(4.0, prediction_id="rej-b")
        client.log_prediction(6.0, prediction_id="rej-c")
        assert client.flush(timeout=30)
        client.log_labels(
            [
                {"prediction_id": a, "y_true": 1.0},
                {"prediction_id": b, "y_true": "four"},
                {"prediction_id": "rej-c", "y_true": 5.0},
            ]
        )
        client.log_prediction(99.0, prediction_id="rej-a")  # the same id with other content
        assert client.flush(timeout=30)
        stats = client.stats
    assert (stats.accepted, stats.rejected, stats.retries, stats.spooled) == (5, 2, 0, 0)
    by_kind = {kind: (record, error) for kind, record, error in rejects.calls}
    assert len(rejects.calls) == 2
    assert by_kind["labels"][0] == {"prediction_id": "rej-b", "y_true": "four"}
    assert "y_true is not a number" in by_kind["labels"][1]
    assert by_kind["predictions"][0]["y_pred"] == 99.0
    assert "already stored with different content" in by_kind["predictions"][1]
    [row] = metrics(plain, model="rej", by="model")
    assert (row["n_predictions"], row["n_labeled"]) == (3, 2)
    assert row["mse"] == pytest.approx(1.0, rel=REL)


def test_spooled_while_unreachable_then_replayed_exactly_once(tmp_path: Path) -> None:
    """No server yet: events go to the spool; once it runs they are replayed, each stored once.

    Client `a` stays up and replays in the background when the server answers; client `b` is
    closed with its spool full, and a new client `c` on that spool replays it at start-up.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    options = dict(batch_size=100, flush_interval=0.1, max_retries=1, **FAST)
    a = Client(url, spool_dir=tmp_path / "spool-a", **options)  # type: ignore[arg-type]
    b = Client(url, spool_dir=tmp_path / "spool-b", **options)  # type: ignore[arg-type]
    c: Client | None = None
    try:
        ids_a = [a.log_prediction(float(i), model="spool", version="a") for i in range(250)]
        for i in range(0, 250, 2):
            a.log_label(ids_a[i], i + 1.0)
        ids_b = b.log_predictions({"y_pred": float(i), "model": "spool", "version": "b"} for i in range(120))
        b.log_labels({"prediction_id": pid, "y_true": 0.0} for pid in ids_b)
        assert a.flush(timeout=30) and b.flush(timeout=30)
        b.close()
        assert (a.stats.spooled, a.stats.accepted) == (375, 0)
        assert (b.stats.spooled, b.stats.accepted) == (240, 0)
        assert len(spool_lines(tmp_path / "spool-a")) == 375
        assert len(spool_lines(tmp_path / "spool-b")) == 240

        server = ServerProcess(tmp_path / "s.duckdb", port=port)
        with server:
            wait_until(lambda: a.stats.replayed == 375)
            assert not list((tmp_path / "spool-a").glob("*.ndjson"))
            c = Client(url, spool_dir=tmp_path / "spool-b", **options)  # type: ignore[arg-type]
            wait_until(lambda: c is not None and c.stats.replayed == 240)
            assert not list((tmp_path / "spool-b").glob("*.ndjson"))
            a.log_prediction(1.0, model="spool", version="a")  # and new events flow directly
            assert a.flush(timeout=30)
            rows = {r["version"]: r for r in metrics(server, model="spool", by="version")}
        assert (rows["a"]["n_predictions"], rows["a"]["n_labeled"]) == (251, 125)
        assert (rows["b"]["n_predictions"], rows["b"]["n_labeled"]) == (120, 120)
        for client, accepted in ((a, 376), (c, 240)):
            assert (client.stats.accepted, client.stats.duplicates, client.stats.rejected) == (accepted, 0, 0)
        assert query(server.db, "SELECT count(*), count(DISTINCT prediction_id) FROM predictions") == [(371, 371)]
        assert query(server.db, "SELECT count(*) FROM labels") == [(245,)]
    finally:
        for client in (a, b, c):
            if client is not None:
                client.close(timeout=10)


def test_overloaded_server_429_is_retried_until_everything_is_delivered(
    strict: ServerProcess, tmp_path: Path
) -> None:
    clients = [
        Client(strict.url, token=TOKEN, model="busy", version=f"c{k}", batch_size=50, flush_interval=0.05,
               max_retries=50, spool_dir=tmp_path / f"spool-{k}", **FAST)
        for k in range(4)
    ]
    per_client = 200
    flushed: list[bool] = []

    def load(client: Client) -> None:
        for i in range(per_client):
            client.log_prediction(float(i % 7))
        flushed.append(client.flush(timeout=60))

    threads = [threading.Thread(target=load, args=(c,)) for c in clients]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        for c in clients:
            c.close(timeout=10)
    stats = [c.stats for c in clients]
    assert flushed == [True] * len(clients)
    assert sum(s.retries for s in stats) > 0, "no 429 seen: the load was not concurrent enough"
    assert all((s.accepted, s.spooled, s.rejected) == (per_client, 0, 0) for s in stats), stats
    [row] = metrics(strict, TOKEN, model="busy", by="model")
    assert row["n_predictions"] == 4 * per_client


def test_batches_larger_than_the_server_takes_are_split(strict: ServerProcess, tmp_path: Path) -> None:
    """413 (max_rows_per_request = 50 < batch_size): halves are sent instead, never retried."""
    with Client(strict.url, token=TOKEN, model="split", batch_size=120, spool_dir=tmp_path / "spool") as client:
        client.log_predictions({"y_pred": float(i)} for i in range(240))
        assert client.flush(timeout=30)
        stats = client.stats
    assert (stats.accepted, stats.rejected, stats.retries, stats.spooled) == (240, 0, 0, 0)


def test_wrong_token_401_is_reported_and_not_retried(strict: ServerProcess, tmp_path: Path) -> None:
    rejects = Rejects()
    spool = tmp_path / "spool"
    with Client(strict.url, token="not-the-right-token-000", model="auth", spool_dir=spool,
                on_reject=rejects, **FAST) as client:
        ids = [client.log_prediction(float(i)) for i in range(3)]
        client.log_label(ids[0], 1.0)
        assert client.flush(timeout=30)
        stats = client.stats
    assert (stats.rejected, stats.retries, stats.accepted, stats.spooled) == (4, 0, 0, 0)
    assert sorted(r["prediction_id"] for _, r, _ in rejects.calls) == sorted([*ids, ids[0]])
    assert all(error.startswith("HTTP 401") for _, _, error in rejects.calls)
    assert not list(spool.glob("*"))
    assert all(row["n_predictions"] == 0 for row in metrics(strict, TOKEN, model="auth"))
