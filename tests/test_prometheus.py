"""A real Prometheus scrapes a real `msewatch serve`, and PromQL agrees with `/v1/metrics`.

One Prometheus (the Debian package's binary, run as a subprocess on a free port with its own
TSDB directory, never the system service) scrapes two servers every second:
- job `plain`: two models, three versions, labels arriving before and after their predictions,
  re-sent rows and bad rows of every kind;
- job `segments`: `[metrics] segments = ["region"]`, `max_segment_values = 3`, so the fourth and
  later region values of a model become `region="__other__"`;
- job `overload`: `[server] max_pending_rows = 1`, so concurrent clients are told 429 and send
  the same body again; its bad rows must be counted once, not once per attempt.
The events are posted over HTTP, the module waits until Prometheus has scraped the final
counts, then each test asks Prometheus's HTTP API and compares with the server's own
`GET /v1/metrics` and with NumPy on the events as sent.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from servers import Prometheus, ServerProcess, require_binary

SCRAPE_TIMEOUT = 30.0
BUCKETS = [0.05, 0.25, 0.5, 1.0, 2.0, 6.0, 16.0, 64.0]  # the data's p85..p95 all lie in (2, 6]
REL = 1e-9
T0 = 1_717_200_000  # prediction times: epoch seconds, one per second from here


# -- the events ---------------------------------------------------------------------------------
@dataclass
class Sent:
    """What was posted to one server and what its answers said."""

    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)  # accepted, by id
    labels: dict[str, float] = field(default_factory=dict)  # accepted first labels, by id
    accepted_predictions: int = 0
    accepted_labels: int = 0
    duplicates: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, reason)

    def pairs(self) -> list[tuple[dict[str, Any], float]]:
        return [(p, self.labels[pid]) for pid, p in self.predictions.items() if pid in self.labels]

    def squared_errors(self, where: dict[str, str] | None = None) -> np.ndarray:
        sel = [
            (p["y_pred"] - y) ** 2
            for p, y in self.pairs()
            if all(p.get(k) == v for k, v in (where or {}).items())
        ]
        return np.asarray(sel, dtype=np.float64)


def post(client: httpx.Client, base: str, kind: str, records: list[Any], *, ndjson: bool = False) -> dict[str, Any]:
    """POST records (dicts, or raw strings for NDJSON lines) and return the JSON answer."""
    if ndjson:
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        r = client.post(
            f"{base}/v1/{kind}", content="\n".join(lines).encode(), headers={"content-type": "application/x-ndjson"}
        )
    else:
        r = client.post(f"{base}/v1/{kind}", json=records)
    assert r.status_code == 200, f"{kind}: {r.status_code} {r.text}"
    return r.json()


def send(
    client: httpx.Client, base: str, sent: Sent, kind: str, records: list[Any], *,
    ndjson: bool = False, expect_accepted: int | None = None, expect_rejected: dict[int, str] | None = None,
) -> dict[str, Any]:
    """Post and book-keep: accepted rows go into `sent`, and the answer is checked."""
    answer = post(client, base, kind, records, ndjson=ndjson)
    rejected_rows = {r["index"]: r["error"] for r in answer["rejected"]}
    if expect_rejected is not None:
        assert set(rejected_rows) == set(expect_rejected), answer
        for index, needle in expect_rejected.items():
            assert needle in rejected_rows[index], answer
            sent.rejected[(kind, reason_of(needle))] += 1
    if expect_accepted is not None:
        assert answer["accepted"] == expect_accepted, answer
    sent.duplicates[kind] += answer["duplicates"]
    if kind == "predictions":
        sent.accepted_predictions += answer["accepted"]
    else:
        sent.accepted_labels += answer["accepted"]
    return answer


REASONS = {
    "is not a number": "not_a_number",
    "is not a finite number": "not_finite",
    "not valid JSON": "malformed",
    "must be a string, number": "malformed",
    "is missing": "missing",
    "is empty": "missing",
    "with different content": "conflict",
    "is not an ISO 8601 time": "bad_timestamp",
}


def reason_of(needle: str) -> str:
    return REASONS[needle]


def plain_events(client: httpx.Client, base: str) -> Sent:
    """Two models, three versions; labels before and after predictions; re-sends; bad rows."""
    rng = np.random.default_rng(20240601)
    sent = Sent()
    groups = [("price", "v1", 1.0, 1200), ("price", "v2", 1.6, 900), ("eta", "v7", 0.6, 700)]
    preds: list[dict[str, Any]] = []
    truth: dict[str, float] = {}
    for model, version, scale, n in groups:
        y_true = rng.normal(50.0, 10.0, n)
        residual = rng.normal(0.2, scale, n)
        for i in range(n):
            pid = f"{model}-{version}-{i:05d}"
            preds.append(
                {"prediction_id": pid, "ts": T0 + len(preds), "model": model, "version": version,
                 "y_pred": float(y_true[i] + residual[i])}
            )
            truth[pid] = float(y_true[i])
    order = rng.permutation(len(preds))
    preds = [preds[i] for i in order]
    labeled = [p["prediction_id"] for p in preds if rng.random() < 0.85]  # ~15% never labeled
    early = set(labeled[: len(labeled) // 5])  # these labels arrive before their predictions

    send(client, base, sent, "labels", [{"prediction_id": pid, "y_true": truth[pid]} for pid in early],
         expect_accepted=len(early), expect_rejected={})
    for start in range(0, len(preds), 500):
        chunk = preds[start : start + 500]
        send(client, base, sent, "predictions", chunk, ndjson=start % 1000 == 0,
             expect_accepted=len(chunk), expect_rejected={})
    for p in preds:
        sent.predictions[p["prediction_id"]] = p
    late = [pid for pid in labeled if pid not in early]
    for start in range(0, len(late), 400):
        chunk = late[start : start + 400]
        send(client, base, sent, "labels", [{"prediction_id": pid, "y_true": truth[pid]} for pid in chunk],
             expect_accepted=len(chunk), expect_rejected={})
    sent.labels = {pid: truth[pid] for pid in labeled}

    # re-sent rows are duplicates: counted as such, never as new predictions or labels
    again = preds[:30]
    answer = send(client, base, sent, "predictions", again, expect_accepted=0, expect_rejected={})
    assert answer["duplicates"] == 30
    answer = send(client, base, sent, "labels", [{"prediction_id": pid, "y_true": truth[pid]} for pid in labeled[:20]],
                  expect_accepted=0, expect_rejected={})
    assert answer["duplicates"] == 20

    # bad rows, each with its reason, beside good rows that still land
    good = {"prediction_id": "price-v1-good-1", "ts": T0, "model": "price", "version": "v1", "y_pred": 3.0}
    bad_predictions: list[Any] = [
        {"prediction_id": "bad-1", "ts": T0, "model": "price", "version": "v1", "y_pred": "abc"},
        good,
        "{this is not json",
        {"prediction_id": "bad-2", "ts": T0, "model": "price", "version": "v1", "y_pred": "inf"},
        {"prediction_id": "bad-3", "ts": "yesterday", "model": "price", "version": "v1", "y_pred": 1.0},
        {"prediction_id": "", "ts": T0, "model": "price", "version": "v1", "y_pred": 1.0},
        {**preds[0], "y_pred": preds[0]["y_pred"] + 1.0},  # a stored id with other content
        {"prediction_id": "bad-4", "ts": T0, "model": "price", "version": "v1", "y_pred": "12,5"},
        {"prediction_id": "bad-5", "ts": T0, "model": "price", "version": "v1", "y_pred": {"v": 1}},
    ]
    send(client, base, sent, "predictions", bad_predictions, ndjson=True, expect_accepted=1, expect_rejected={
        0: "is not a number", 2: "not valid JSON", 3: "is not a finite number", 4: "is not an ISO 8601 time",
        5: "is empty", 6: "with different content", 7: "is not a number", 8: "must be a string, number",
    })
    sent.predictions[good["prediction_id"]] = good
    bad_labels = [
        {"prediction_id": "price-v1-good-1", "y_true": 2.5},
        {"prediction_id": "x-1", "y_true": None},
        {"prediction_id": "x-2", "y_true": "n/a"},
        {"prediction_id": "x-3"},
    ]
    send(client, base, sent, "labels", bad_labels, expect_accepted=1, expect_rejected={
        1: "is missing", 2: "is not a number", 3: "is missing",
    })
    sent.labels["price-v1-good-1"] = 2.5
    return sent


REGION_PLAN = [
    # (model, region, rows) in the order the requests are sent, one request each
    ("price", "north", 40), ("price", "south", 35), ("price", "east", 30),
    ("price", "west", 25), ("price", "central", 20), ("price", "islands", 15),
    ("eta", "west", 12), ("eta", "central", 11), ("eta", "islands", 10), ("eta", "north", 9), ("eta", "east", 8),
]
FIRST_THREE = {"price": {"north", "south", "east"}, "eta": {"west", "central", "islands"}}


def segment_events(client: httpx.Client, base: str) -> Sent:
    rng = np.random.default_rng(7)
    sent = Sent()
    for model, region, rows in REGION_PLAN:  # one request at a time: the order of first sight is known
        batch = []
        for i in range(rows):
            pid = f"{model}-{region}-{i}"
            p = {"prediction_id": pid, "ts": T0 + i, "model": model, "version": "v1", "region": region,
                 "y_pred": float(rng.normal(10.0, 2.0))}
            batch.append(p)
            sent.predictions[pid] = p
        send(client, base, sent, "predictions", batch, expect_accepted=rows, expect_rejected={})
    truth = {pid: float(p["y_pred"] + rng.normal(0.0, 1.0)) for pid, p in sent.predictions.items()}
    send(client, base, sent, "labels", [{"prediction_id": k, "y_true": v} for k, v in truth.items()],
         expect_accepted=len(truth), expect_rejected={})
    sent.labels = truth
    return sent


@dataclass
class Overload:
    answered: int = 0  # requests answered 200
    refused: int = 0  # attempts answered 429
    accepted: int = 0


def overload_events(base: str, clients: int = 4, batches: int = 5, rows: int = 300) -> Overload:
    """Concurrent clients against a queue of one request: each body (one bad row in it) is sent
    again after a 429 until it is answered."""
    import threading

    out = Overload()
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=60.0) as http:
            for b in range(batches):
                lines = [
                    json.dumps({"prediction_id": f"o{k}-{b}-{i}", "ts": T0 + i, "model": "price",
                                "version": "v1", "y_pred": float(i)})
                    for i in range(rows)
                ]
                lines.insert(rows // 2, '{"prediction_id": "broken"')
                body = "\n".join(lines).encode()
                while True:
                    r = http.post(f"{base}/v1/predictions", content=body,
                                  headers={"content-type": "application/x-ndjson"})
                    if r.status_code != 429:
                        break
                    assert r.headers.get("retry-after"), r.headers
                    with lock:
                        out.refused += 1
                    time.sleep(0.02)
                assert r.status_code == 200, r.text
                answer = r.json()
                assert answer["accepted"] == rows and len(answer["rejected"]) == 1, answer
                with lock:
                    out.answered += 1
                    out.accepted += answer["accepted"]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out.answered == clients * batches, "a client thread failed; see its traceback above"
    return out


@dataclass
class Scraped:
    prom: Prometheus
    plain: ServerProcess
    segments: ServerProcess
    sent_plain: Sent
    sent_segments: Sent
    overload: Overload


def _wait_scraped(prom: Prometheus, job: str, sent: Sent) -> None:
    """Until Prometheus's latest samples of `job` show every event that was sent."""
    expected = {
        f'sum(msewatch_labels_total{{job="{job}"}})': float(sent.accepted_labels),
        f'sum(msewatch_predictions_total{{job="{job}"}})': float(sent.accepted_predictions),
        f'sum(msewatch_squared_error_count{{job="{job}"}})': float(len(sent.pairs())),
        f'sum(msewatch_ingest_rejected_total{{job="{job}"}}) or vector(0)': float(sum(sent.rejected.values())),
    }
    deadline = time.monotonic() + SCRAPE_TIMEOUT
    seen: dict[str, float | None] = {}
    while time.monotonic() < deadline:
        seen = {q: prom.scalar(q) for q in expected}
        if seen == expected:
            return
        time.sleep(0.25)
    raise AssertionError(
        f"Prometheus did not scrape the final counts of {job} within {SCRAPE_TIMEOUT}s:\n"
        f"expected {expected}\nseen     {seen}\n{prom.log_text()}"
    )


def wait_until(prom: Prometheus, promql: str, value: float) -> None:
    deadline = time.monotonic() + SCRAPE_TIMEOUT
    seen = None
    while time.monotonic() < deadline:
        seen = prom.scalar(promql)
        if seen == value:
            return
        time.sleep(0.25)
    raise AssertionError(f"{promql}: {seen}, expected {value}, after {SCRAPE_TIMEOUT}s\n{prom.log_text()}")


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    binary = require_binary("prometheus", "Debian package `prometheus`: PromQL over the real /metrics")
    work = tmp_path_factory.mktemp("prometheus")
    seg_config = work / "segments.toml"
    seg_config.write_text(
        '[metrics]\nsegments = ["region"]\nmax_segment_values = 3\n'
        f"squared_error_buckets = {json.dumps(BUCKETS)}\n"
    )
    plain_config = work / "plain.toml"
    plain_config.write_text(f"[metrics]\nsquared_error_buckets = {json.dumps(BUCKETS)}\n")
    overload_config = work / "overload.toml"
    overload_config.write_text("[server]\nmax_pending_rows = 1\n")
    plain = ServerProcess(work / "plain.duckdb", config=plain_config)
    segments = ServerProcess(work / "segments.duckdb", config=seg_config)
    overloaded = ServerProcess(work / "overload.duckdb", config=overload_config)
    servers = {"plain": plain, "segments": segments, "overload": overloaded}
    prom = Prometheus(binary, work, {job: f"127.0.0.1:{s.port}" for job, s in servers.items()})
    try:
        for server in servers.values():
            server.start(wait=False)
        prom.start()
        for server in servers.values():
            server.wait_ready()
        with httpx.Client(timeout=60.0) as client:
            sent_plain = plain_events(client, plain.url)
            sent_segments = segment_events(client, segments.url)
        overload = overload_events(overloaded.url)
        prom.wait_ready()
        _wait_scraped(prom, "plain", sent_plain)
        _wait_scraped(prom, "segments", sent_segments)
        wait_until(
            prom, 'sum(msewatch_predictions_total{job="overload"})', float(overload.accepted)
        )
        yield Scraped(prom, plain, segments, sent_plain, sent_segments, overload)
    finally:
        prom.stop()
        for server in servers.values():
            server.__exit__(None, None, None)


def v1_metrics(server: ServerProcess, **params: str) -> list[dict[str, Any]]:
    r = httpx.get(server.url + "/v1/metrics", params=params, timeout=30.0)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=REL, abs_tol=0.0)


# -- the tests ------------------------------------------------------------------------------------
def test_both_targets_are_up(scraped: Scraped) -> None:
    up = {s["metric"]["job"]: s["value"] for s in scraped.prom.query("up")}
    assert up == {"plain": 1.0, "segments": 1.0, "overload": 1.0}


def test_promql_mse_equals_v1_metrics(scraped: Scraped) -> None:
    rows = v1_metrics(scraped.plain)
    assert len(rows) == 1
    mse = rows[0]["mse"]
    sq = scraped.sent_plain.squared_errors()
    assert rows[0]["n_labeled"] == len(sq)
    assert close(mse, float(np.mean(sq))), (mse, float(np.mean(sq)))
    promql = scraped.prom.scalar(
        'sum(msewatch_squared_error_sum{job="plain"}) / sum(msewatch_squared_error_count{job="plain"})'
    )
    assert close(promql, mse), f"PromQL {promql} != /v1/metrics {mse}"


def test_promql_mse_by_model_and_version(scraped: Scraped) -> None:
    rows = v1_metrics(scraped.plain, by="model,version")
    expected = {(r["model"], r["version"]): r["mse"] for r in rows}
    assert set(expected) == {("price", "v1"), ("price", "v2"), ("eta", "v7")}
    result = scraped.prom.query(
        'sum by (model, version)(msewatch_squared_error_sum{job="plain"})'
        ' / sum by (model, version)(msewatch_squared_error_count{job="plain"})'
    )
    got = {(s["metric"]["model"], s["metric"]["version"]): s["value"] for s in result}
    assert set(got) == set(expected)
    for key, mse in expected.items():
        numpy_mse = float(np.mean(scraped.sent_plain.squared_errors({"model": key[0], "version": key[1]})))
        assert close(mse, numpy_mse), (key, mse, numpy_mse)
        assert close(got[key], mse), f"{key}: PromQL {got[key]} != /v1/metrics {mse}"
    # the versions really differ, so a mix-up of label sets would show
    assert expected[("price", "v2")] > 1.5 * expected[("price", "v1")]


def test_histogram_quantile_lands_in_the_bucket_of_numpys_p90(scraped: Scraped) -> None:
    sq = scraped.sent_plain.squared_errors()
    p90 = float(np.quantile(sq, 0.9))
    assert close(v1_metrics(scraped.plain)[0]["p90_sq_err"], p90)
    i = int(np.searchsorted(BUCKETS, p90, side="left"))  # the bucket `le` holding p90
    assert 0 < i < len(BUCKETS), "p90 must fall inside a finite bucket for this check to mean something"
    lower, upper = BUCKETS[i - 1], BUCKETS[i]
    # the data keep p90 well inside its bucket, so Prometheus's rank lands in the same one
    assert lower < float(np.quantile(sq, 0.85)) and float(np.quantile(sq, 0.95)) <= upper
    estimate = scraped.prom.scalar(
        'histogram_quantile(0.9, sum by (le)(msewatch_squared_error_bucket{job="plain"}))'
    )
    assert estimate is not None and lower <= estimate <= upper, (
        f"histogram_quantile gave {estimate}; NumPy's p90 {p90} is in ({lower}, {upper}]"
    )
    # the buckets are cumulative counts of the squared errors sent
    buckets = scraped.prom.query('sum by (le)(msewatch_squared_error_bucket{job="plain"})')
    got = {s["metric"]["le"]: s["value"] for s in buckets}
    for bound in BUCKETS:
        le = next(k for k in got if k != "+Inf" and float(k) == bound)
        assert got[le] == float(np.count_nonzero(sq <= bound)), (bound, got[le])
    assert got["+Inf"] == float(len(sq))


def test_counters_of_predictions_labels_and_rejects(scraped: Scraped) -> None:
    sent = scraped.sent_plain
    prom = scraped.prom
    # every accepted prediction, per model and version; re-sent ones are not counted again
    per_mv = Counter((p["model"], p["version"]) for p in sent.predictions.values())
    result = prom.query('sum by (model, version)(msewatch_predictions_total{job="plain"})')
    assert {(s["metric"]["model"], s["metric"]["version"]): s["value"] for s in result} == {
        k: float(v) for k, v in per_mv.items()
    }
    assert sent.accepted_predictions == len(sent.predictions)
    assert prom.scalar('sum(msewatch_labels_total{job="plain"})') == float(len(sent.labels))
    dups = {s["metric"]["kind"]: s["value"] for s in prom.query('msewatch_ingest_duplicates_total{job="plain"}')}
    assert dups == {"predictions": 30.0, "labels": 20.0}
    rejects = {
        (s["metric"]["kind"], s["metric"]["reason"]): s["value"]
        for s in prom.query('msewatch_ingest_rejected_total{job="plain"}')
    }
    assert rejects == {
        ("predictions", "not_a_number"): 2.0,
        ("predictions", "malformed"): 2.0,
        ("predictions", "not_finite"): 1.0,
        ("predictions", "bad_timestamp"): 1.0,
        ("predictions", "missing"): 1.0,
        ("predictions", "conflict"): 1.0,
        ("labels", "missing"): 2.0,
        ("labels", "not_a_number"): 1.0,
    }
    assert rejects == {k: float(v) for k, v in sent.rejected.items()}


def test_segment_values_past_the_cap_become_other(scraped: Scraped) -> None:
    prom = scraped.prom
    expected: Counter[tuple[str, str]] = Counter()
    for model, region, rows in REGION_PLAN:
        expected[(model, region if region in FIRST_THREE[model] else "__other__")] += rows
    for metric in ("msewatch_predictions_total", "msewatch_squared_error_count"):
        result = prom.query(f'sum by (model, region)({metric}{{job="segments"}})')
        got = {(s["metric"]["model"], s["metric"]["region"]): s["value"] for s in result}
        assert got == {k: float(v) for k, v in expected.items()}, metric
    # at most max_segment_values + 1 region values per model, however many were sent
    result = prom.query('count by (model)(count by (model, region)(msewatch_squared_error_count{job="segments"}))')
    assert {s["metric"]["model"]: s["value"] for s in result} == {"price": 4.0, "eta": 4.0}
    # folding regions into __other__ loses no error: the MSE is still that of all events
    mse = v1_metrics(scraped.segments)[0]["mse"]
    assert close(mse, float(np.mean(scraped.sent_segments.squared_errors())))
    promql = prom.scalar(
        'sum(msewatch_squared_error_sum{job="segments"}) / sum(msewatch_squared_error_count{job="segments"})'
    )
    assert close(promql, mse), (promql, mse)
    # and per region below the cap, the same MSE as /v1/metrics by region
    by_region = {r["region"]: r["mse"] for r in v1_metrics(scraped.segments, model="price", by="region")}
    result = prom.query(
        'sum by (region)(msewatch_squared_error_sum{job="segments",model="price"})'
        ' / sum by (region)(msewatch_squared_error_count{job="segments",model="price"})'
    )
    got = {s["metric"]["region"]: s["value"] for s in result}
    for region in FIRST_THREE["price"]:
        assert close(got[region], by_region[region]), (region, got[region], by_region[region])


def test_a_body_sent_again_after_429_counts_its_bad_rows_once(scraped: Scraped) -> None:
    prom, load = scraped.prom, scraped.overload
    assert load.refused > 0, "the queue of one request never refused a client: nothing was tested"
    assert prom.scalar('sum(msewatch_predictions_total{job="overload"})') == float(load.accepted)
    rejects = {
        (s["metric"]["kind"], s["metric"]["reason"]): s["value"]
        for s in prom.query('msewatch_ingest_rejected_total{job="overload"}')
    }
    # one bad row per answered body, however many times the body was refused before
    assert rejects == {("predictions", "malformed"): float(load.answered)}, (rejects, load)
