"""Shadow predictions: a candidate version scores the same requests as production, and its
predictions are stored apart (`shadow_predictions`, keyed by prediction_id and version) for the
canary judge's shadow mode.

Every ingestion path is covered (`msewatch ingest shadow`, `Store`, `POST /v1/shadow`, the SDK),
and above all that shadow rows never count in production's numbers: `msewatch eval --db`, the
rollups, `/v1/metrics` and the Prometheus prediction and quality series stay as they were, while
the shadow rows pair with production's predictions and labels by prediction_id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import query, write_ndjson, write_records
from prometheus_client.parser import text_string_to_metric_families
from servers import ServerProcess

from msewatch import Client
from msewatch.io import records_to_batch
from msewatch.store import Store

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
INGEST = "shadow-ingest-token-0123456789"
READ = "shadow-read-token-0123456789ab"
FAST = {"backoff": 0.05, "max_backoff": 0.5}

PAIRS_SQL = """
SELECT s.prediction_id, p.version AS control, s.version AS candidate, p.y_pred, s.y_pred, l.y_true
FROM shadow_predictions s JOIN predictions p USING (prediction_id)
JOIN labels l ON l.prediction_id = s.prediction_id AND l.is_current
{where} ORDER BY ALL
"""


def prod(i: int, model: str = "price", version: str = "v1", **extra: Any) -> dict[str, Any]:
    return {"prediction_id": f"{model}-{i}", "ts": T0 + 60 * i, "model": model, "version": version,
            "y_pred": float(i), **extra}


def shadow(i: int, model: str = "price", version: str = "v2", y_pred: float | None = None,
           **extra: Any) -> dict[str, Any]:
    return {"prediction_id": f"{model}-{i}", "ts": T0 + 60 * i, "model": model, "version": version,
            "y_pred": float(i) + 0.5 if y_pred is None else y_pred, **extra}


def lab(i: int, model: str = "price") -> dict[str, Any]:
    return {"prediction_id": f"{model}-{i}", "y_true": float(i) + 1.0}


def production_state(db: Path) -> tuple[Any, ...]:
    """Everything production's numbers are made of, read from a closed store file."""
    return (
        query(db, "SELECT * EXCLUDE (ingested_at) FROM predictions ORDER BY prediction_id"),
        query(db, "SELECT * EXCLUDE (ingested_at) FROM labels ORDER BY ALL"),
        query(db, "SELECT * FROM rollups ORDER BY ALL"),
    )


# -- files: `msewatch ingest shadow` and the Store -----------------------------------------------
def test_cli_ingest_shadow_leaves_production_untouched(cli: Any, tmp_path: Path, db: Path) -> None:
    write_records(tmp_path / "p.csv", [prod(i, region="eu" if i % 2 else "us") for i in range(20)])
    write_records(tmp_path / "l.ndjson", [lab(i) for i in range(0, 20, 2)])
    # the candidate scored the same requests; `region` is production's business, not shadow's
    write_records(tmp_path / "s.parquet", [shadow(i, region="eu") for i in range(20)])
    assert cli("ingest", "predictions", "p.csv", "--db", db).returncode == 0
    assert cli("ingest", "labels", "l.ndjson", "--db", db).returncode == 0
    evals = [["eval", "--db", db, "--format", "json"],
             ["eval", "--db", db, "--by", "version,region", "--window", "5m", "--format", "json"]]
    before = [cli(*args).json() for args in evals]
    state = production_state(db)

    run = cli("ingest", "shadow", "s.parquet", "--db", db)
    assert run.returncode == 0, run
    assert run.stdout.startswith("shadow: 20 accepted, 0 duplicates, 0 rejected"), run
    assert "ignored columns 'region'" in run.stderr, run
    again = cli("ingest", "shadow", "s.parquet", "--db", db, "--format", "json")
    assert again.json() == {"accepted": 0, "duplicates": 20, "rejected": 0, "ignored_columns": ["region"]}

    assert [cli(*args).json() for args in evals] == before
    assert production_state(db) == state
    assert query(db, "SELECT count(*), count(DISTINCT version) FROM shadow_predictions") == [(20, 1)]
    assert {c for (c,) in query(db, "SELECT column_name FROM (DESCRIBE shadow_predictions)")} == {
        "prediction_id", "ts", "model", "version", "y_pred", "source", "ingested_at"}
    assert query(db, "SELECT kind, accepted, duplicates FROM ingest_log WHERE kind = 'shadow'") == [
        ("shadow", 20, 0), ("shadow", 0, 20)]
    # the pairs: candidate and control on the same labeled requests
    pairs = query(db, PAIRS_SQL.format(where=""))
    assert pairs == [(f"price-{i}", "v1", "v2", float(i), i + 0.5, i + 1.0) for i in sorted(range(0, 20, 2), key=str)]


def test_cli_shadow_conflicts_and_bad_rows(cli: Any, tmp_path: Path, db: Path) -> None:
    write_ndjson(tmp_path / "s1.ndjson", [shadow(i) for i in range(3)])
    assert cli("ingest", "shadow", "s1.ndjson", "--db", db).returncode == 0
    write_ndjson(tmp_path / "s2.ndjson", [
        # rows are record numbers, from 1
        shadow(0),  # 1: a duplicate
        shadow(1, y_pred=99.0),  # 2: same key, other content: a conflict
        shadow(1, version="v3", y_pred=7.0),  # 3: another candidate on the same request: fine
        shadow(5) | {"prediction_id": ""},  # 4
        shadow(6) | {"ts": "yesterday"},  # 5
        shadow(7) | {"y_pred": "NaN"},  # 6
        {k: v for k, v in shadow(8).items() if k != "ts"},  # 7: ts is required, as for predictions
        shadow(9) | {"version": "v" * 2000},  # 8
        shadow(10),  # 9
        shadow(10, y_pred=3.0),  # 10: conflicts with row 9 of this file
        shadow(10),  # 11: repeats row 9
    ])
    run = cli("ingest", "shadow", "s2.ndjson", "--db", db, "--rejects", "rejects.ndjson", "--format", "json")
    assert run.returncode == 0, run
    assert run.json() == {"accepted": 2, "duplicates": 2, "rejected": 7}
    reasons = {r["row"]: r["error"] for r in map(orjson.loads, (tmp_path / "rejects.ndjson").read_bytes().splitlines())}
    assert set(reasons) == {2, 4, 5, 6, 7, 8, 10}
    assert reasons[2] == "shadow prediction_id 'price-1' of version 'v2' is already stored with different content"
    assert reasons[4] == "prediction_id is empty"
    assert "ts is not an ISO 8601 time" in reasons[5]
    assert "y_pred is not a finite number" in reasons[6]
    assert reasons[7] == "ts is missing"
    assert "version is longer than" in reasons[8]
    assert reasons[10].endswith("appears earlier in this input (row 9) with different content")
    assert query(db, "SELECT prediction_id, version, y_pred FROM shadow_predictions ORDER BY ALL") == [
        ("price-0", "v2", 0.5), ("price-1", "v2", 1.5), ("price-1", "v3", 7.0), ("price-10", "v2", 10.5),
        ("price-2", "v2", 2.5)]
    assert query(db, "SELECT count(*) FROM predictions") == [(0,)]


def test_cli_shadow_needs_the_prediction_columns(cli: Any, tmp_path: Path, db: Path) -> None:
    write_records(tmp_path / "s.csv", [{"prediction_id": "a", "y_pred": 1.0}])
    run = cli("ingest", "shadow", "s.csv", "--db", db)
    assert run.returncode != 0
    assert "missing required column 'ts' for shadow" in run.stderr, run
    # the column options map shadow files too
    write_records(tmp_path / "m.csv", [{"id": "a", "when": T0, "pred": 2.0, "version": "v9"}])
    run = cli("ingest", "shadow", "m.csv", "--db", db, "--id-col", "id", "--ts-col", "when", "--pred-col", "pred",
              "--model", "price")
    assert run.returncode == 0, run
    assert query(db, "SELECT prediction_id, model, version, y_pred FROM shadow_predictions") == [("a", "price", "v9", 2.0)]


def test_store_same_id_in_both_tables_and_group_ingest(tmp_path: Path) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        store.ingest_batches("predictions", [records_to_batch([prod(i) for i in range(4)], list(range(1, 5)))])
        store.ingest_batches("labels", [records_to_batch([lab(i) for i in range(4)], list(range(1, 5)))])
        rollups = store.con.execute("SELECT * FROM rollups ORDER BY ALL").fetchall()
        # a group commit (the server's path): a conflict with an earlier request of the group
        # is reported to the later one as already stored; counts for the shadow counter only
        outcome = store.ingest_group("shadow", [
            (records_to_batch([shadow(0), shadow(1)], [0, 1]), 2),
            (records_to_batch([shadow(1, y_pred=-1.0), shadow(2), shadow(0)], [0, 1, 2]), 3),
        ], pair_columns=("region",))
        assert [r.summary() for r in outcome.results] == [
            {"accepted": 2, "duplicates": 0, "rejected": 0}, {"accepted": 1, "duplicates": 1, "rejected": 1}]
        assert "already stored with different content" in outcome.results[1].rejects[0].error
        assert outcome.results[1].rejects[0].row == 0
        assert outcome.pairs is None and outcome.inserted is None
        assert outcome.shadow is not None and outcome.shadow.to_pylist() == [{"model": "price", "version": "v2", "n": 3}]
        assert store.count("predictions") == 4 and store.count("shadow_predictions") == 3
        assert store.con.execute("SELECT * FROM rollups ORDER BY ALL").fetchall() == rollups
        assert store.shadow_predictions().count().execute() == 3
        # a production prediction of the candidate's own version on the same id is no conflict
        result = store.ingest_batches("predictions", [records_to_batch([prod(9, version="v2")], [1])])
        assert result.accepted == 1
        with pytest.raises(ValueError, match="kind must be"):
            store.ingest_batches("joined", [])  # type: ignore[arg-type]


# -- HTTP: POST /v1/shadow ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("shadow-server")
    config = folder / "msewatch.toml"
    config.write_text('[server]\nmax_rows_per_request = 100\n\n[metrics]\nsegments = ["region"]\n', encoding="utf-8")
    env = {"MSEWATCH_TOKENS": f"ingest:{INGEST},read:{READ}"}
    with ServerProcess(folder / "store.duckdb", config=config, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60.0) as c:
        yield c


def post(http: httpx.Client, kind: str, body: Any, token: str | None = INGEST, ndjson: bool = False) -> httpx.Response:
    headers = {"Content-Type": "application/x-ndjson" if ndjson else "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if isinstance(body, bytes):
        content = body
    else:
        content = b"".join(orjson.dumps(r) + b"\n" for r in body) if ndjson else orjson.dumps(body)
    return http.post(f"/v1/{kind}", content=content, headers=headers)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def metrics_rows(http: httpx.Client, **params: str) -> list[dict[str, Any]]:
    return ok(http.get("/v1/metrics", params=params, headers={"Authorization": f"Bearer {READ}"}))["rows"]


def prometheus(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = http.get("/metrics", headers={"Authorization": f"Bearer {READ}"}).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
        if not s.name.startswith(("process_", "python_", "msewatch_http_"))
    }


_QUALITY = ("msewatch_squared_error", "msewatch_label_latency_seconds", "msewatch_absolute_error",
            "msewatch_residual_", "msewatch_predictions")


def production_series(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[Any, float]:
    """The prediction and quality series (counted at label arrival)."""
    return {k: v for k, v in samples.items() if k[0].startswith(_QUALITY)}


def test_http_shadow_answers_like_predictions(http: httpx.Client) -> None:
    model = "http-answers"
    body = [shadow(i, model=model, region="eu") for i in range(3)] + [
        shadow(3, model=model) | {"y_pred": "x"}, {"prediction_id": f"{model}-4", "ts": T0, "version": "v2"},
    ]
    answer = ok(post(http, "shadow", body))
    assert answer["accepted"] == 3 and answer["duplicates"] == 0
    assert answer["ignored_fields"] == ["region"]
    assert {r["index"]: r["error"] for r in answer["rejected"]} == {
        3: "y_pred is not a number: 'x'", 4: "y_pred is missing"}
    again = ok(post(http, "shadow", [shadow(0, model=model), shadow(1, model=model, y_pred=5.0)], ndjson=True))
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    assert again["rejected"] == [{"index": 1, "error": f"shadow prediction_id '{model}-1' of version 'v2' is "
                                  "already stored with different content"}]
    # the scope of predictions: ingest
    assert post(http, "shadow", [shadow(9, model=model)], token=READ).status_code == 403
    assert post(http, "shadow", [shadow(9, model=model)], token=None).status_code == 401
    assert http.get("/v1/shadow").status_code == 405
    # and its limits
    too_many = post(http, "shadow", [shadow(i, model=model) for i in range(101)])
    assert too_many.status_code == 413
    assert post(http, "shadow", b"{nope").status_code == 400


def test_http_shadow_never_counts_in_production(http: httpx.Client) -> None:
    model = "http-prod"
    ok(post(http, "predictions", [prod(i, model=model, region="eu") for i in range(10)]))
    ok(post(http, "labels", [lab(i, model=model) for i in range(0, 10, 2)]))
    rows_before = metrics_rows(http, model=model, by="version")
    windows_before = metrics_rows(http, model=model, window="5m", by="region")
    prom_before = prometheus(http)
    assert prom_before[("msewatch_predictions_total", (("model", model), ("region", "eu"), ("version", "v1")))] == 10

    # shadow rows for the same requests, and shadow rows whose labels arrive after them
    answer = ok(post(http, "shadow", [shadow(i, model=model, region="eu") for i in range(12)]))
    assert answer["accepted"] == 12
    ok(post(http, "labels", [lab(i, model=model) for i in (10, 11)]))  # labels of shadow-only ids

    assert metrics_rows(http, model=model, by="version") == rows_before
    assert metrics_rows(http, model=model, window="5m", by="region") == windows_before
    assert metrics_rows(http, model=model, version="v2") == [] or all(
        r["n_predictions"] == 0 for r in metrics_rows(http, model=model, version="v2"))
    prom_after = prometheus(http)
    assert production_series(prom_before)  # the series are there to compare
    assert production_series(prom_after) == production_series(prom_before)
    assert not any(dict(labels).get("version") == "v2" for name, labels in prom_after
                   if dict(labels).get("model") == model and not name.startswith("msewatch_shadow_"))
    # the labels of ids only the candidate scored are stored (and counted) as labels, no more
    assert prom_after[("msewatch_labels_total", ())] == prom_before[("msewatch_labels_total", ())] + 2
    assert prom_after[("msewatch_shadow_predictions_total", (("model", model), ("version", "v2")))] == 12
    # re-sent shadow rows are counted under their own kind
    dup_key = ("msewatch_ingest_duplicates_total", (("kind", "shadow"),))
    before_dups = prom_after.get(dup_key, 0.0)
    ok(post(http, "shadow", [shadow(0, model=model)]))
    assert prometheus(http)[dup_key] == before_dups + 1


def test_http_kinds_share_the_committer(http: httpx.Client) -> None:
    """Concurrent requests of three kinds: the commit thread groups each kind apart."""
    model = "http-mixed"

    def send(i: int) -> dict[str, Any]:
        kind = ("predictions", "shadow", "labels")[i % 3]
        n = i // 3
        rows = {"predictions": [prod(n, model=model)], "shadow": [shadow(n, model=model)],
                "labels": [lab(n, model=model)]}[kind]
        return ok(post(http, kind, rows))

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(send, range(60)))
    assert all(a["accepted"] == 1 for a in answers), answers
    [row] = metrics_rows(http, model=model)
    assert (row["n_predictions"], row["n_labeled"]) == (20, 20)
    assert prometheus(http)[("msewatch_shadow_predictions_total", (("model", model), ("version", "v2")))] == 20


def test_openapi_documents_shadow(http: httpx.Client) -> None:
    doc = ok(http.get("/openapi.json"))
    post_doc = doc["paths"]["/v1/shadow"]["post"]
    assert post_doc["security"] == [{"bearer": ["ingest"]}, {}]
    assert post_doc["summary"] == "Store shadow predictions"
    assert "One shadow prediction object" in post_doc["description"]
    schema = doc["components"]["schemas"]["ShadowPrediction"]
    assert schema["required"] == ["prediction_id", "ts", "y_pred"]
    assert set(post_doc["responses"]) == set(doc["paths"]["/v1/predictions"]["post"]["responses"])


# -- the SDK -------------------------------------------------------------------------------------
def test_sdk_logs_shadow_predictions(server: ServerProcess, http: httpx.Client, tmp_path: Path) -> None:
    model = "sdk"
    rejects: list[tuple[str, dict[str, Any], str]] = []
    lock = threading.Lock()

    def on_reject(kind: str, record: dict[str, Any], error: str) -> None:
        with lock:
            rejects.append((kind, record, error))

    with Client(server.url, token=INGEST, model=model, version="v1", spool_dir=tmp_path / "spool",
                on_reject=on_reject, **FAST) as client:
        ids = [client.log_prediction(float(i), ts=T0 + i) for i in range(5)]
        for i, pid in enumerate(ids):
            client.log_shadow_prediction(i + 0.5, prediction_id=pid, version="v2", ts=T0 + i)
        client.log_shadow_predictions([{"prediction_id": pid, "version": "v3", "y_pred": 1.0} for pid in ids])
        client.log_labels([{"prediction_id": pid, "y_true": 1.0} for pid in ids])
        assert client.flush(timeout=30)
        client.log_shadow_prediction(42.0, prediction_id=ids[0], version="v2")  # a conflict
        assert client.flush(timeout=30)
        stats = client.stats
        with pytest.raises(ValueError, match="finite"):
            client.log_shadow_prediction(float("nan"), prediction_id="x", version="v2")
        with pytest.raises(ValueError, match="prediction_id and version"):
            client.log_shadow_predictions([{"prediction_id": "x", "version": "v2", "y_pred": 1.0},
                                           {"prediction_id": "y", "y_pred": 1.0}])
        with pytest.raises(TypeError):
            client.log_shadow_prediction(1.0, version="v2")  # type: ignore[call-arg]
    assert (stats.accepted, stats.rejected, stats.spooled) == (20, 1, 0)
    assert [(k, r["y_pred"]) for k, r, _ in rejects] == [("shadow", 42.0)]
    assert "already stored with different content" in rejects[0][2]
    [row] = metrics_rows(http, model=model)
    assert (row["n_predictions"], row["n_labeled"]) == (5, 5)
    samples = prometheus(http)
    assert samples[("msewatch_shadow_predictions_total", (("model", model), ("version", "v2")))] == 5
    assert samples[("msewatch_shadow_predictions_total", (("model", model), ("version", "v3")))] == 5


def test_sdk_replays_a_shadow_spool_file(server: ServerProcess, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    records = [shadow(i, model="sdk-spool") for i in range(7)]
    (spool / f"{time.time_ns():020d}-x-shadow.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with Client(server.url, token=INGEST, spool_dir=spool, **FAST) as client:
        deadline = time.monotonic() + 30
        while client.stats.replayed < 7:
            assert time.monotonic() < deadline, client.stats
            time.sleep(0.05)
    assert client.stats.accepted == 7
    assert not list(spool.glob("*.ndjson"))


def test_store_after_the_server_pairs_shadow_with_production(server: ServerProcess) -> None:
    """Last: the server's store, read once the server stopped, joins the pairs."""
    assert server.stop() in (0, -15)  # uvicorn re-raises SIGTERM once drained
    db = server.db
    pairs = query(db, PAIRS_SQL.format(where="WHERE s.model = 'http-prod'"))
    assert len(pairs) == 5  # production's labeled requests; shadow-only ids have no production row
    assert all(control == "v1" and candidate == "v2" and s == p + 0.5 for _, control, candidate, p, s, _ in pairs)
    assert query(db, "SELECT count(*) FROM predictions WHERE model = 'http-prod'") == [(10,)]
    assert query(db, "SELECT count(*) FROM shadow_predictions WHERE model = 'http-prod'") == [(12,)]
    assert query(db, "SELECT count(*) FROM predictions WHERE version <> 'v1' AND model LIKE 'http-%'") == [(0,)]
