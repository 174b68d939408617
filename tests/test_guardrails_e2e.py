"""The guardrails end to end, through real processes: baselines, SLO budgets, alert rules,
notifications, silences and maintenance with the CLI, then `msewatch serve` with a real
Alertmanager.

A small realistic store is built once per module: model "m" predicts every minute for two
regions over three days, labels arrive 5 to 90 minutes late (5% never), a few labels are
corrected (the correction has the later `label_ts` but comes first in the file), and the
error of region "b" triples in the last 12 hours. A second model "m2" has no recorded
baseline. Every number the commands print is compared with NumPy on the same rows; the
evaluation instant is fixed with `--at`, so the for-clock and silences are exact.

The server evaluates at the wall clock, so its test writes the same scenario ending now and
sends it through the server's ingest API into an empty store (no recorded baseline there: the
rules use the trailing 30-day median); it checks `/v1/alerts`, `/v1/slo`, `/v1/silences`,
`/metrics`, tokens and scopes, and the path through a real Alertmanager to a local webhook
receiver.

Three tests pin bugs found here and fixed: the default baseline's day buckets, and one-shot
notifications that re-sent on an identical re-run or never retried a failed delivery.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Run, assert_usage_error, run_cli
from servers import ServerProcess, free_port, require_binary, stop_process

UTC = dt.UTC
DAY = 86400
AT = dt.datetime(2026, 3, 4, tzinfo=UTC)  # the evaluation instant of the CLI tests
TAU = 16.0  # SLO threshold on r²
OBJECTIVE = 0.99
BURN_WINDOWS = {"5m": 300, "30m": 1800, "1h": 3600, "2h": 7200, "6h": 6 * 3600, "1d": DAY, "3d": 3 * DAY}
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
REL = 1e-9
DEADLINE = 30.0

DELTA, COHORT, SUSTAINED = "m-mse-regression", "m-cohort-regression", "m-mse-sustained"
RUNBOOK = "https://runbooks.example/m-mse-regression"

READ = "read-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
INGEST = "ingest-token-0123456789abcdef"


def iso(t: dt.datetime | float) -> str:
    if not isinstance(t, dt.datetime):
        t = dt.datetime.fromtimestamp(t, UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def close(got: float | None, want: float) -> bool:
    return got is not None and math.isclose(got, want, rel_tol=REL, abs_tol=1e-12)


# -- the scenario ------------------------------------------------------------------------------------
@dataclass
class Scenario:
    """What was written, with the current label of each prediction (NaN when unlabeled)."""

    end: int  # epoch seconds; every prediction is before it
    ids: np.ndarray
    ts: np.ndarray
    model: np.ndarray
    region: np.ndarray
    y_pred: np.ndarray
    y_true: np.ndarray
    labeled: np.ndarray

    def pairs(self, model: str = "m", lo: float = -math.inf, hi: float = math.inf,
              region: str | None = None) -> np.ndarray:
        """r² of the labeled predictions of `model` with ts in [lo, hi)."""
        keep = self.labeled & (self.model == model) & (self.ts >= lo) & (self.ts < hi)
        if region is not None:
            keep &= self.region == region
        return (self.y_pred[keep] - self.y_true[keep]) ** 2

    def predictions_ndjson(self) -> bytes:
        return b"".join(
            json.dumps({"prediction_id": str(i), "ts": int(t), "model": str(m), "version": "v1", "region": str(r),
                        "y_pred": float(y)}).encode() + b"\n"
            for i, t, m, r, y in zip(self.ids, self.ts, self.model, self.region, self.y_pred, strict=True))


def write_scenario(directory: Path, end: int, seed: int) -> tuple[Scenario, Path, Path]:
    """Predictions (Parquet) and labels (NDJSON) of m and m2 over the three days before `end`."""
    rng = np.random.default_rng(seed)
    # m: one prediction a minute per region; region b's error ×3 (MSE) in the last 12 hours
    minutes = np.arange(end - 3 * DAY, end, 60)
    ts_m = np.repeat(minutes, 2)
    region_m = np.tile(np.array(["a", "b"]), len(minutes))
    sd_m = np.where((region_m == "b") & (ts_m >= end - 12 * 3600), math.sqrt(3.0), 1.0)
    # m2: one prediction every five minutes, a different spread each day (no recorded baseline)
    ts_m2 = np.arange(end - 3 * DAY, end, 300)
    sd_m2 = np.array([1.5, 2.0, 1.0])[(end - 1 - ts_m2) // DAY]
    ts = np.concatenate([ts_m, ts_m2])
    model = np.array(["m"] * len(ts_m) + ["m2"] * len(ts_m2))
    region = np.concatenate([region_m, np.full(len(ts_m2), "a")])
    sd = np.concatenate([sd_m, sd_m2])
    n = len(ts)
    y_true = rng.normal(100.0, 10.0, n)
    y_pred = y_true + rng.normal(0.0, 1.0, n) * sd
    labeled = rng.random(n) >= 0.05
    ids = np.array([f"{model[i]}-{i:06d}" for i in range(n)])
    delay = rng.integers(5, 91, n) * 60
    label_ts = np.minimum(ts + delay, end)

    preds = directory / "predictions.parquet"
    pq.write_table(pa.table({
        "prediction_id": ids,
        "ts": pa.array(ts * 1_000_000, pa.timestamp("us", tz="UTC")),
        "model": model,
        "version": np.full(n, "v1"),
        "region": region,
        "y_pred": y_pred,
    }), preds)

    # a few first-day labels of m are corrected: the right value has the later label_ts but comes
    # first in the file, so only the label_ts rule picks it
    first_day = np.flatnonzero(labeled & (model == "m") & (ts < end - 2 * DAY))
    corrected = set(rng.choice(first_day, 30, replace=False).tolist())
    labels = directory / "labels.ndjson"
    with open(labels, "w", encoding="utf-8") as fh:
        for i in np.flatnonzero(labeled):
            fh.write(json.dumps({"prediction_id": ids[i], "y_true": float(y_true[i]),
                                 "label_ts": iso(float(label_ts[i]))}) + "\n")
            if i in corrected:
                fh.write(json.dumps({"prediction_id": ids[i], "y_true": float(y_true[i]) + 40.0,
                                     "label_ts": iso(float(ts[i] + 60))}) + "\n")
    truth = Scenario(end, ids, ts, model, region, y_pred, np.where(labeled, y_true, np.nan), labeled)
    return truth, preds, labels


def build_store(directory: Path, end: int, seed: int) -> tuple[Scenario, Path, Run]:
    """Ingest the scenario with the CLI and record m's baseline from its first day, by region."""
    truth, preds, labels = write_scenario(directory, end, seed)
    db = directory / "store.duckdb"
    for kind, path in (("predictions", preds), ("labels", labels)):
        r = run_cli(["ingest", kind, path, "--db", db, "--format", "json"], cwd=directory)
        assert r.returncode == 0, str(r)
        assert r.json()["rejected"] == 0, str(r)
    since, until = iso(end - 3 * DAY), iso(end - 2 * DAY)
    baseline = run_cli(["baseline", "set", "--db", db, "--model", "m", "--since", since, "--until", until,
                        "--by", "region", "--format", "json"], cwd=directory)
    assert baseline.returncode == 0, str(baseline)
    return truth, db, baseline


@dataclass
class World:
    root: Path
    db: Path
    truth: Scenario
    baseline_set: Run
    _copies: int = 0

    def copy(self) -> Path:
        """A private copy of the store (alert state and silences live in it)."""
        self._copies += 1
        target = self.root / f"copy{self._copies}"
        target.mkdir()
        shutil.copy(self.db, target / "store.duckdb")
        return target / "store.duckdb"

    def cli(self, *args: Any) -> Run:
        return run_cli(list(args), cwd=self.root)

    def many(self, commands: Sequence[Sequence[Any]]) -> list[Run]:
        with ThreadPoolExecutor(max_workers=max(2, min(len(commands), os.cpu_count() or 1, 4))) as pool:
            return list(pool.map(lambda c: run_cli(list(c), cwd=self.root), commands))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("guardrails")
    truth, db, baseline = build_store(root, int(AT.timestamp()), seed=20260304)
    return World(root, db, truth, baseline)


@pytest.fixture(scope="module")
def m2_default(world: World) -> Run:
    """`baseline show` of m2, which has no recorded baseline (shared by two tests)."""
    return world.cli("baseline", "show", "--db", world.copy(), "--model", "m2", "--at", iso(AT), "--format", "json")


def config_text(*, notifiers: str = "", extra: str = "", interval: str = "30s") -> str:
    return f"""
[alerting]
interval = "{interval}"
repeat_interval = "4h"
external_url = "http://msewatch.example:8080"

[[slos]]
name = "m-accuracy"
model = "m"
threshold = {TAU}
objective = {OBJECTIVE}
min_labels = 1

[[alerts]]
name = "{DELTA}"
type = "delta_mse"
model = "m"
severity = "page"
window = "6h"
max_increase_pct = 20
labels = {{team = "pricing"}}
runbook = "{RUNBOOK}"

[[alerts]]
name = "{COHORT}"
type = "cohort_regression"
model = "m"
by = "region"
window = "6h"
max_increase_pct = 20

[[alerts]]
name = "{SUSTAINED}"
type = "delta_mse"
model = "m"
window = "6h"
max_increase_pct = 20
for = "1h"
{notifiers}
{extra}
"""


def webhook(url: str) -> str:
    return f'\n[[notifiers]]\nname = "oncall"\ntype = "webhook"\nurl = "{url}"\nretries = 0\ntimeout = 5\n'


# -- a local HTTP receiver (as in test_notify.py) -----------------------------------------------------
class Receiver:
    """An HTTP server in a thread that records every POST; the first `fail` answers are 500."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                              "body": json.loads(raw or b"null")})
                    status = 500 if receiver.fail > 0 else 200
                    receiver.fail = max(receiver.fail - 1, 0)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [r["body"] for r in self.requests if r["path"] == path]

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def eventually(check: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll `check` until it returns something truthy; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline:g}s waiting for {what}")
        time.sleep(0.1)


def by_name(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for a in alerts:
        name = a["labels"]["alertname"]
        assert name not in out, f"two alerts named {name}: {alerts}"
        out[name] = a
    return out


def evaluate(world: World, db: Path, config: Path, at: dt.datetime) -> dict[str, Any]:
    r = world.cli("alerts", "evaluate", "--db", db, "--config", config, "--at", iso(at), "--format", "json")
    assert r.returncode == 0, str(r)
    assert "Traceback" not in r.stderr, str(r)
    out = r.json()
    assert out["errors"] == [], out["errors"]
    return out


# -- 1. baselines ---------------------------------------------------------------------------------------
def check_baseline_numbers(row: dict[str, Any], r2: np.ndarray, what: str) -> None:
    n = len(r2)
    assert row["n"] == n, what
    metrics = row["metrics"]
    assert close(metrics["mse"], float(r2.mean())), (what, metrics["mse"], r2.mean())
    assert close(metrics["mse_se"], float(r2.std(ddof=1) / math.sqrt(n))), (what, metrics["mse_se"])


def test_baseline_set_list_show_match_numpy(world: World, m2_default: Run) -> None:
    t = world.truth
    lo, hi = t.end - 3 * DAY, t.end - 2 * DAY
    whole, in_a, in_b = t.pairs("m", lo, hi), t.pairs("m", lo, hi, "a"), t.pairs("m", lo, hi, "b")
    assert len(whole) > 2500 and len(in_a) + len(in_b) == len(whole)

    made = world.baseline_set.json()["baselines"]
    assert [(b["segment"], b["segment_value"]) for b in made] == [(None, None), ("region", "a"), ("region", "b")]
    for b, r2, what in zip(made, (whole, in_a, in_b), ("all", "region=a", "region=b"), strict=True):
        assert b["model"] == "m" and b["version"] is None and b["explicit"] is True, b
        assert (b["since"], b["until"]) == (iso(lo), iso(hi)), b
        check_baseline_numbers(b, r2, what)

    listed, shown, unknown, unknown_set = world.many([
        ("baseline", "list", "--db", world.copy(), "--format", "json"),
        ("baseline", "show", "--db", world.copy(), "--model", "m", "--format", "json"),
        ("baseline", "show", "--db", world.copy(), "--model", "nope", "--at", iso(AT), "--format", "json"),
        ("baseline", "set", "--db", world.copy(), "--model", "nope", "--since", iso(lo), "--until", iso(hi)),
    ])
    assert listed.returncode == 0, str(listed)
    (top,) = listed.json()["baselines"]
    assert top["model"] == "m" and top["cohorts"] == ["region=a", "region=b"], top
    check_baseline_numbers(top, whole, "list")
    assert top["source"] == f"store {iso(lo)} to {iso(hi)}"

    assert shown.returncode == 0, str(shown)
    show = shown.json()
    assert show["explicit"] is True and set(show["cohorts"]) == {"region=a", "region=b"}, show
    check_baseline_numbers(show, whole, "show")
    for region, r2 in (("a", in_a), ("b", in_b)):
        cohort = show["cohorts"][f"region={region}"]
        assert close(cohort["mse"], float(r2.mean())) and close(cohort["mse_se"], float(r2.std(ddof=1) / math.sqrt(len(r2))))

    # m2 has no recorded baseline: the median of the daily MSE over the trailing 30 days
    assert m2_default.returncode == 0, str(m2_default)
    fallback = m2_default.json()
    assert fallback["explicit"] is False and fallback["model"] == "m2", fallback
    assert fallback["source"] == "median of daily MSE, trailing 30 days"
    assert (fallback["since"], fallback["until"]) == (iso(AT - dt.timedelta(days=30)), iso(AT))
    assert fallback["n"] == len(t.pairs("m2")) and fallback["cohorts"] == {}
    assert close(fallback["metrics"]["rmse"], math.sqrt(fallback["metrics"]["mse"]))

    assert_usage_error(unknown, "no baseline for model 'nope'")
    assert_usage_error(unknown_set, "no labeled predictions for model 'nope'")


def test_default_baseline_is_the_median_of_whole_days(world: World, m2_default: Run) -> None:
    t = world.truth
    daily = np.array([t.pairs("m2", t.end - (k + 1) * DAY, t.end - k * DAY).mean() for k in range(3)])
    metrics = m2_default.json()["metrics"]
    assert metrics["days"] == 3, metrics
    assert close(metrics["mse"], float(np.median(daily))), (metrics, daily)
    assert close(metrics["mse_se"], math.sqrt(math.pi / 2) * float(daily.std(ddof=1)) / math.sqrt(3))


# -- 2. SLO status --------------------------------------------------------------------------------------
def test_slo_status_budget_and_burn_rates_match_numpy(world: World) -> None:
    config = world.root / "slo.toml"
    config.write_text(config_text(), encoding="utf-8")
    as_json, as_table = world.many([
        ("slo", "status", "--db", world.copy(), "--config", config, "--at", iso(AT), "--format", "json"),
        ("slo", "status", "--db", world.copy(), "--config", config, "--at", iso(AT)),
    ])
    assert as_json.returncode == 0, str(as_json)
    (s,) = as_json.json()["slos"]
    t = world.truth
    end = t.end
    r2 = t.pairs("m")  # everything is inside the 28-day period
    good, bad = int((r2 <= TAU).sum()), int((r2 > TAU).sum())
    assert bad > 0 and good > 8000
    assert (s["slo"], s["model"], s["kind"], s["objective"], s["period"]) == ("m-accuracy", "m", "event", OBJECTIVE, "4w")
    assert (s["at"], s["judged_until"]) == (iso(AT), iso(AT))
    assert (s["good"], s["bad"]) == (good, bad)
    assert close(s["compliance"], good / (good + bad))
    assert close(s["budget_remaining"], 1.0 - bad / ((1.0 - OBJECTIVE) * (good + bad)))
    in_m = t.model == "m"
    assert close(s["label_coverage"], int((t.labeled & in_m).sum()) / int(in_m.sum()))
    assert set(s["burn_rates"]) == set(BURN_WINDOWS), s["burn_rates"]
    for name, seconds in BURN_WINDOWS.items():
        w = t.pairs("m", end - seconds, end)
        assert len(w) > 0
        assert close(s["burn_rates"][name], float((w > TAU).sum()) / len(w) / (1.0 - OBJECTIVE)), name
    assert len(s["daily_burn"]) == 28 and s["daily_burn"][:25] == [None] * 25
    for k, value in zip((2, 1, 0), s["daily_burn"][25:], strict=True):
        w = t.pairs("m", end - (k + 1) * DAY, end - k * DAY)
        assert close(value, float((w > TAU).sum()) / len(w) / (1.0 - OBJECTIVE)), (k, value)
    assert [(x["severity"], x["factor"], x["long"], x["short"]) for x in s["tiers"]] == [
        ("page", 14.4, "1h", "5m"), ("page", 6.0, "6h", "30m"), ("ticket", 3.0, "1d", "2h"), ("ticket", 1.0, "3d", "6h")]
    for tier in s["tiers"]:
        burns = s["burn_rates"][tier["long"]], s["burn_rates"][tier["short"]]
        assert (tier["long_burn"], tier["short_burn"]) == burns
        assert tier["firing"] == (min(burns) >= tier["factor"])

    assert as_table.returncode == 0, str(as_table)
    assert "Traceback" not in as_table.stderr
    assert "SLO status" in as_table.stdout and "m-accuracy" in as_table.stdout
    assert f"{1.0 - bad / ((1.0 - OBJECTIVE) * (good + bad)):.1%}" in as_table.stdout


# -- 3. alerts, notifications, the for clock, silences, maintenance --------------------------------------
def expected_deltas(t: Scenario, at: dt.datetime) -> tuple[float, float]:
    """ΔMSE % of the 6h window before `at` vs the first-day baseline: whole model, region b."""
    lo, hi, end = t.end - 3 * DAY, t.end - 2 * DAY, at.timestamp()
    whole = t.pairs("m", end - 6 * 3600, end).mean() / t.pairs("m", lo, hi).mean()
    in_b = t.pairs("m", end - 6 * 3600, end, "b").mean() / t.pairs("m", lo, hi, "b").mean()
    return float((whole - 1) * 100), float((in_b - 1) * 100)


def check_webhook(body: dict[str, Any], alert: dict[str, Any]) -> None:
    """An Alertmanager webhook v4 body for the group of one firing alert."""
    name = alert["labels"]["alertname"]
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "oncall", body
    assert body["groupLabels"] == {"model": "m", "alertname": name}
    assert body["groupKey"] == f'{{}}:{{alertname="{name}", model="m"}}'
    assert body["externalURL"] == "http://msewatch.example:8080" and body["truncatedAlerts"] == 0
    assert body["commonLabels"] == alert["labels"] and body["commonAnnotations"] == alert["annotations"]
    (sent,) = body["alerts"]
    assert sent == {"status": "firing", "labels": alert["labels"], "annotations": alert["annotations"],
                    "startsAt": alert["starts_at"], "endsAt": GO_ZERO_TIME,
                    "generatorURL": "http://msewatch.example:8080", "fingerprint": alert["fingerprint"]}


def test_alerts_evaluate_notify_for_clock_and_silences(world: World, receiver: Receiver) -> None:
    db = world.copy()
    config = db.with_name("msewatch.toml")
    config.write_text(config_text(notifiers=webhook(receiver.url + "/hook")), encoding="utf-8")
    t = world.truth
    delta_pct, b_pct = expected_deltas(t, AT)

    # the first run: both regressions fire and are notified; the rule with `for` is pending
    first = evaluate(world, db, config, AT)
    alerts = by_name(first["alerts"])
    assert set(alerts) == {DELTA, COHORT, SUSTAINED}
    delta, cohort, sustained = alerts[DELTA], alerts[COHORT], alerts[SUSTAINED]
    assert delta["labels"] == {"alertname": DELTA, "rule": "delta_mse", "model": "m", "severity": "page",
                               "team": "pricing"}
    assert cohort["labels"] == {"alertname": COHORT, "rule": "cohort_regression", "model": "m",
                                "severity": "ticket", "segment": "region", "cohort": "b"}
    assert delta["annotations"]["runbook"] == RUNBOOK
    assert cohort["annotations"]["runbook"].startswith("1. Confirm the cohort's labels are complete")
    assert set(delta["annotations"]) == set(cohort["annotations"]) == {"summary", "description", "runbook"}
    assert close(delta["value"], delta_pct) and close(cohort["value"], b_pct), (delta["value"], delta_pct)
    assert delta_pct > 40 and b_pct > 100
    assert delta["annotations"]["summary"] == f"m: MSE up {delta_pct:.0f}% vs baseline"
    assert cohort["annotations"]["summary"] == f"m: cohort region=b MSE up {b_pct:.0f}%"
    for a in (delta, cohort):
        assert (a["state"], a["active_since"], a["starts_at"], a["ends_at"], a["muted_by"]) == (
            "firing", iso(AT), iso(AT), None, None)
    assert (sustained["state"], sustained["active_since"], sustained["starts_at"]) == ("pending", iso(AT), None)
    assert sorted(first["notifications"], key=lambda d: d["alerts"]) == [
        {"notifier": "oncall", "status": "sent", "alerts": 1, "error": None}] * 2
    hooks = receiver.bodies("/hook")
    assert len(hooks) == 2
    sent = {b["groupLabels"]["alertname"]: b for b in hooks}
    check_webhook(sent[DELTA], delta)
    check_webhook(sent[COHORT], cohort)
    assert receiver.requests[0]["headers"]["Content-Type"] == "application/json"

    # the next run: nothing changed, nothing is sent again before repeat_interval (4h)
    later = evaluate(world, db, config, AT + dt.timedelta(minutes=5))
    assert later["notifications"] == [] and later["changed"] == []
    assert len(receiver.bodies("/hook")) == 2
    assert by_name(later["alerts"])[SUSTAINED]["state"] == "pending"

    # the for clock: pending since AT, firing when evaluated again an hour later, and notified then
    hour = evaluate(world, db, config, AT + dt.timedelta(hours=1))
    alerts = by_name(hour["alerts"])
    assert (alerts[SUSTAINED]["state"], alerts[SUSTAINED]["active_since"], alerts[SUSTAINED]["starts_at"]) == (
        "firing", iso(AT), iso(AT + dt.timedelta(hours=1)))
    assert alerts[DELTA]["starts_at"] == iso(AT)  # still the same alert
    assert [a["labels"]["alertname"] for a in hour["changed"]] == [SUSTAINED]
    assert hour["notifications"] == [{"notifier": "oncall", "status": "sent", "alerts": 1, "error": None}]
    hooks = receiver.bodies("/hook")
    assert len(hooks) == 3
    check_webhook(hooks[2], alerts[SUSTAINED])

    # a silence from AT+90m that lasts past the wall clock (alerts list judges silences now)
    starts = AT + dt.timedelta(minutes=90)
    ends = max(dt.datetime.now(UTC), AT + dt.timedelta(hours=3)) + dt.timedelta(days=1)
    bad_matcher, bad_name, unknown, added = world.many([
        ("silence", "add", "--db", db.with_name("unused.duckdb"), "--matcher", "alertname", "--duration", "1h"),
        ("silence", "add", "--db", db.with_name("unused.duckdb"), "--matcher", "bad name=x", "--duration", "1h"),
        ("silence", "expire", "999", "--db", world.copy()),
        ("silence", "add", "--db", db, "--matcher", f"alertname={DELTA}", "--matcher", "model=m",
         "--starts", iso(starts), "--ends", iso(ends), "--comment", "known regression"),
    ])
    assert_usage_error(bad_matcher, "--matcher", "label=value")
    assert_usage_error(bad_name, "--matcher", "bad name=x")
    assert_usage_error(unknown, "no silence with id 999")
    assert not db.with_name("unused.duckdb").exists()
    assert added.returncode == 0, str(added)
    silence_id = int(added.stdout.strip())

    muted = evaluate(world, db, config, AT + dt.timedelta(hours=2))
    assert {name: a["muted_by"] for name, a in by_name(muted["alerts"]).items()} == {
        DELTA: "silence: known regression", COHORT: None, SUSTAINED: None}
    assert all(a["state"] == "firing" for a in muted["alerts"])  # muted alerts keep their state
    assert muted["notifications"] == [] and len(receiver.bodies("/hook")) == 3

    # alerts list shows the states the last evaluation left, and what mutes them at the wall clock
    listed = world.cli("alerts", "list", "--db", db, "--format", "json")
    assert listed.returncode == 0, str(listed)
    states = {name: (a["state"], a["starts_at"], a["muted_by"]) for name, a in by_name(listed.json()["alerts"]).items()}
    assert states == {DELTA: ("firing", iso(AT), "silence: known regression"), COHORT: ("firing", iso(AT), None),
                      SUSTAINED: ("firing", iso(AT + dt.timedelta(hours=1)), None)}

    expired = world.cli("silence", "expire", str(silence_id), "--db", db)
    assert (expired.returncode, expired.stdout.strip()) == (0, f"silence {silence_id} expired"), str(expired)
    after = world.cli("alerts", "list", "--db", db, "--format", "json")
    silences = world.cli("silence", "list", "--db", db, "--format", "json")
    assert after.returncode == 0, str(after)
    assert {name: a["muted_by"] for name, a in by_name(after.json()["alerts"]).items()} == {
        DELTA: None, COHORT: None, SUSTAINED: None}
    assert silences.returncode == 0, str(silences)
    (s,) = silences.json()["silences"]
    assert s["id"] == silence_id and s["matchers"] == {"alertname": DELTA, "model": "m"}
    assert s["comment"] == "known regression" and s["created_by"] == "cli"
    assert dt.datetime.fromisoformat(str(s["starts"])) == starts
    assert dt.datetime.fromisoformat(str(s["ends"])) <= dt.datetime.now(UTC)


def test_maintenance_mutes_every_alert_of_the_model(world: World, receiver: Receiver) -> None:
    db = world.copy()
    config = db.with_name("msewatch.toml")
    maintenance = (f'\n[[maintenance]]\nmodel = "m"\nstarts = "{iso(AT - dt.timedelta(hours=1))}"\n'
                   f'ends = "{iso(AT + dt.timedelta(hours=1))}"\nreason = "label backfill"\n')
    config.write_text(config_text(notifiers=webhook(receiver.url + "/hook"), extra=maintenance), encoding="utf-8")
    report = evaluate(world, db, config, AT)
    alerts = by_name(report["alerts"])
    assert set(alerts) == {DELTA, COHORT, SUSTAINED}
    assert {name: a["state"] for name, a in alerts.items()} == {DELTA: "firing", COHORT: "firing", SUSTAINED: "pending"}
    assert all(a["muted_by"] == "maintenance: label backfill" for a in alerts.values()), alerts
    assert report["notifications"] == []
    assert receiver.requests == []


def test_identical_rerun_sends_nothing_new(world: World, receiver: Receiver) -> None:
    db = world.copy()
    config = db.with_name("msewatch.toml")
    config.write_text(config_text(notifiers=webhook(receiver.url + "/hook")), encoding="utf-8")
    first = evaluate(world, db, config, AT)
    assert len(first["notifications"]) == 2 and len(receiver.requests) == 2
    again = evaluate(world, db, config, AT)
    assert again["changed"] == []
    assert again["notifications"] == [] and len(receiver.requests) == 2


def test_failed_notification_is_retried_by_the_next_run(world: World, receiver: Receiver) -> None:
    db = world.copy()
    config = db.with_name("msewatch.toml")
    config.write_text(config_text(notifiers=webhook(receiver.url + "/hook")), encoding="utf-8")
    receiver.fail = 2
    first = evaluate(world, db, config, AT)
    assert [d["status"] for d in first["notifications"]] == ["failed", "failed"]
    retry = evaluate(world, db, config, AT + dt.timedelta(minutes=5))
    assert [d["status"] for d in retry["notifications"]] == ["sent", "sent"]
    assert {b["groupLabels"]["alertname"] for b in receiver.bodies("/hook")[2:]} == {DELTA, COHORT}


# -- 4. the server with a real Alertmanager ---------------------------------------------------------------
class Alertmanager:
    """The Debian package's Alertmanager on a free port, with its own storage and no cluster."""

    def __init__(self, binary: str, workdir: Path, webhook_url: str) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "alertmanager.log"
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(f"""
route:
  receiver: local
  group_by: [model, alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: local
    webhook_configs:
      - url: "{webhook_url}"
        send_resolved: true
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config}", f"--storage.path={self.workdir / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        return self

    def wait_ready(self) -> None:
        try:
            eventually(self._ready, "alertmanager ready")
        except BaseException:
            self.__exit__()
            raise

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"alertmanager exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            return httpx.get(self.url + "/-/ready", timeout=1.0, trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, timeout=5.0, trust_env=False)
        assert r.status_code == 200, r.text
        return r.json()

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc, getattr(self, "_log", None), wait=10)


def check_annotations(annotations: dict[str, str]) -> None:
    """The delta_mse alert's annotations (its numbers and instant change from pass to pass)."""
    assert set(annotations) == {"summary", "description", "runbook"}, annotations
    assert annotations["runbook"] == RUNBOOK
    assert re.fullmatch(r"m: MSE up \d+% vs baseline", annotations["summary"]), annotations
    assert re.fullmatch(r"MSE \S+ over the 6h before \S+Z \(n=\d+\) vs baseline \S+ \(median of daily MSE, "
                        r"trailing 30 days\): .*", annotations["description"]), annotations


def server_config(am_url: str) -> str:
    tokens = "".join(f'\n[[tokens]]\nname = "{name}"\ntoken = "{token}"\nscopes = ["{name}"]\n'
                     for name, token in (("read", READ), ("admin", ADMIN), ("ingest", INGEST)))
    notifier = f'\n[[notifiers]]\nname = "am"\ntype = "alertmanager"\nurl = "{am_url}"\nretries = 1\ntimeout = 5\n'
    return config_text(notifiers=notifier, interval="1s") + tokens


def test_server_evaluates_notifies_through_alertmanager_and_takes_silences(
        tmp_path: Path, receiver: Receiver) -> None:
    binary = require_binary("prometheus-alertmanager", "the server's Alertmanager notifier end to end")
    now = int(time.time()) // 60 * 60
    truth, _, labels = write_scenario(tmp_path, now, seed=7)
    db, config = tmp_path / "live.duckdb", tmp_path / "msewatch.toml"

    with Alertmanager(binary, tmp_path, receiver.url + "/am") as am:
        config.write_text(server_config(am.url), encoding="utf-8")
        server = ServerProcess(db, config=config, env={"MSEWATCH_TOKENS": ""}, log=tmp_path / "server.log")
        try:
            server.start()
            run_against_server(server, am, receiver, truth, labels.read_bytes())
        finally:
            server.__exit__()
        assert am.proc is not None and am.proc.poll() is None, am.log_text()


def run_against_server(server: ServerProcess, am: Alertmanager, receiver: Receiver, truth: Scenario,
                       labels: bytes) -> None:
    read, admin, ingest = ({"Authorization": f"Bearer {tok}"} for tok in (READ, ADMIN, INGEST))
    ndjson = {"Content-Type": "application/x-ndjson"}
    with httpx.Client(base_url=server.url, timeout=60.0, trust_env=False) as http:
        # the data arrives through the ingest API while the server evaluates every second
        predictions = truth.predictions_ndjson()
        assert http.post("/v1/predictions", content=predictions, headers={**read, **ndjson}).status_code == 403
        r = http.post("/v1/predictions", content=predictions, headers={**ingest, **ndjson})
        assert (r.status_code, r.json()) == (200, {"accepted": len(truth.ts), "duplicates": 0, "rejected": []}), r.text
        r = http.post("/v1/labels", content=labels, headers={**ingest, **ndjson})
        assert (r.status_code, r.json()) == (200, {"accepted": labels.count(b"\n"), "duplicates": 0, "rejected": []})
        am.wait_ready()

        def firing() -> dict[str, Any] | None:
            r = http.get("/v1/alerts", headers=read)
            assert r.status_code == 200, r.text
            found = by_name(r.json()["alerts"])
            ok = {DELTA, COHORT} <= {n for n, a in found.items() if a["state"] == "firing"}
            return found if ok else None

        ours = eventually(firing, "the delta_mse and cohort alerts firing in /v1/alerts")
        delta = ours[DELTA]
        assert delta["labels"] == {"alertname": DELTA, "rule": "delta_mse", "model": "m", "severity": "page",
                                   "team": "pricing"}
        check_annotations(delta["annotations"])
        assert delta["muted_by"] is None
        assert ours[COHORT]["labels"]["cohort"] == "b"
        assert http.get("/v1/alerts").status_code == 401
        assert http.get("/v1/alerts", headers=ingest).status_code == 403
        assert http.get("/v1/alerts", params={"state": "bogus"}, headers=read).status_code == 400
        remote = run_cli(["alerts", "list", "--server", server.url, "--token", READ, "--state", "firing",
                          "--format", "json"], cwd=server.db.parent)
        assert remote.returncode == 0, str(remote)
        assert {DELTA, COHORT} <= set(by_name(remote.json()["alerts"])), str(remote)

        # Alertmanager holds our alert with our labels and annotations, and tells its receiver
        def in_alertmanager() -> dict[str, Any] | None:
            return next((a for a in am.get("/api/v2/alerts") if a["labels"].get("alertname") == DELTA), None)

        theirs = eventually(in_alertmanager, "our alert in Alertmanager's /api/v2/alerts")
        assert theirs["labels"] == delta["labels"]
        check_annotations(theirs["annotations"])
        assert theirs["status"]["state"] == "active"
        assert theirs["generatorURL"] == "http://msewatch.example:8080"
        skew = dt.datetime.fromisoformat(theirs["startsAt"]) - dt.datetime.fromisoformat(delta["starts_at"])
        assert abs(skew) < dt.timedelta(milliseconds=1), skew  # its API shows milliseconds

        def am_webhook() -> dict[str, Any] | None:
            return next((b for b in receiver.bodies("/am") if b["groupLabels"].get("alertname") == DELTA), None)

        hook = eventually(am_webhook, "Alertmanager's webhook for the delta_mse group")
        assert hook["version"] == "4" and hook["status"] == "firing" and hook["receiver"] == "local"
        assert hook["groupLabels"] == {"model": "m", "alertname": DELTA}
        assert [a["labels"] for a in hook["alerts"]] == [delta["labels"]]
        check_annotations(hook["alerts"][0]["annotations"])

        # the SLO, as of the server's clock: whole hours of the 28-day period are judged
        r = http.get("/v1/slo", headers=read)
        assert r.status_code == 200, r.text
        (slo,) = r.json()["slos"]
        at = dt.datetime.fromisoformat(slo["at"]).timestamp()
        r2 = truth.pairs("m", -math.inf, at // 3600 * 3600)
        assert slo["slo"] == "m-accuracy" and slo["kind"] == "event"
        assert (slo["good"], slo["bad"]) == (int((r2 <= TAU).sum()), int((r2 > TAU).sum()))
        assert close(slo["budget_remaining"], 1.0 - slo["bad"] / ((1.0 - OBJECTIVE) * len(r2)))
        assert set(slo["burn_rates"]) == set(BURN_WINDOWS)

        r = http.get("/metrics", headers=read)
        assert r.status_code == 200, r.text
        text = r.text
        line = re.search(r'^msewatch_alerts\{([^}]*)\} (\S+)$', text, re.MULTILINE)
        assert line, text[-3000:]
        samples = {frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(1))): float(m.group(2))
                   for m in re.finditer(r'^msewatch_alerts\{([^}]*)\} (\S+)$', text, re.MULTILINE)}
        key = frozenset({("alertname", DELTA), ("model", "m"), ("severity", "page"), ("state", "firing")})
        assert samples.get(key) == 1.0, samples
        budget = re.search(r'^msewatch_slo_budget_remaining\{([^}]*)\} (\S+)$', text, re.MULTILINE)
        assert budget and set(re.findall(r'(\w+)="([^"]*)"', budget.group(1))) == {
            ("slo", "m-accuracy"), ("model", "m")}, text[-3000:]
        # the latest pass judged the same whole hours, unless an hour began in between
        assert abs(float(budget.group(2)) - slo["budget_remaining"]) < 0.1 and 0.0 < slo["budget_remaining"] <= 1.0
        assert re.search(r'^msewatch_slo_burn_rate\{[^}]*window="1h"[^}]*\} \S+$', text, re.MULTILINE)

        # silences through the API: admin only; they mute at once and expire on DELETE
        body = {"matchers": {"alertname": DELTA}, "duration": "1h", "comment": "e2e"}
        assert http.post("/v1/silences", json=body, headers=read).status_code == 403
        assert http.post("/v1/silences", json=body, headers=ingest).status_code == 403
        assert http.post("/v1/silences", json=body).status_code == 401
        r = http.post("/v1/silences", json=body, headers=admin)
        assert r.status_code == 201, r.text
        created = r.json()
        silence_id = created["id"]
        assert created["matchers"] == {"alertname": DELTA} and created["comment"] == "e2e"
        starts = dt.datetime.fromisoformat(created["starts"])
        assert dt.datetime.fromisoformat(created["ends"]) - starts == dt.timedelta(hours=1)

        r = http.get("/v1/silences", headers=read)
        assert r.status_code == 200, r.text
        (listed,) = [s for s in r.json()["silences"] if s["id"] == silence_id]
        assert listed["matchers"] == {"alertname": DELTA} and listed["created_by"] == "api"
        alerts = by_name(http.get("/v1/alerts", headers=read).json()["alerts"])
        assert alerts[DELTA]["muted_by"] == "silence: e2e" and alerts[COHORT]["muted_by"] is None
        assert alerts[DELTA]["state"] == "firing"

        assert http.delete(f"/v1/silences/{silence_id}", headers=read).status_code == 403
        r = http.delete(f"/v1/silences/{silence_id}", headers=admin)
        assert (r.status_code, r.json()) == (200, {"id": silence_id, "expired": True})
        assert http.delete("/v1/silences/987654", headers=admin).status_code == 404
        assert http.delete("/v1/silences/not-a-number", headers=admin).status_code == 404
        alerts = by_name(http.get("/v1/alerts", headers=read).json()["alerts"])
        assert alerts[DELTA]["muted_by"] is None

        later = iso(dt.datetime.now(UTC) + dt.timedelta(hours=2))
        earlier = iso(dt.datetime.now(UTC) + dt.timedelta(hours=1))
        for bad in (b"not json", b"[1, 2]",
                    json.dumps({"matchers": {}, "duration": "1h"}).encode(),
                    json.dumps({"matchers": {"alertname": DELTA}, "starts": later, "ends": earlier}).encode(),
                    json.dumps({"matchers": {"alertname": DELTA}, "duration": "1h", "colour": "red"}).encode(),
                    json.dumps({"matchers": {"alertname": DELTA}}).encode(),
                    json.dumps({"matchers": {"alertname": DELTA}, "starts": "yesterday", "duration": "1h"}).encode()):
            r = http.post("/v1/silences", content=bad, headers={**admin, "Content-Type": "application/json"})
            assert r.status_code == 400, (bad, r.status_code, r.text)
            assert r.json()["error"], r.text
        ids = [s["id"] for s in http.get("/v1/silences", headers=read).json()["silences"]]
        assert ids == [silence_id]  # nothing else was stored

        assert server.proc is not None and server.proc.poll() is None, server.log_text()
