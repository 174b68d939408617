"""`msewatch grafana`: the dashboards' files, and every PromQL expression in them run on a real Prometheus.

The module writes the dashboards with the CLI (a real subprocess) for a config with a segment
label, SLOs, an alert rule and a maintenance window, then starts a real `msewatch serve` with that
config and a real Prometheus (the Debian package's binary, a subprocess on a free port with its
own TSDB) scraping it every second. Events go in two phases:

- phase A creates every series (every model × version × region, all labels in one request, so
  every quality series is born in the same scrape), with prediction times over the two hours
  before `T_B` (complete hours, which the SLO budgets need), and Prometheus scrapes it;
- phase B sends as much again, with prediction times from `T_B` on.

Range functions (`rate`, `increase`) start from a series' first sample, so over any window that
holds the whole run they measure phase B alone, and every series gets the same extrapolation
factor (same scrape times, first sample well above zero), which cancels in a ratio: the MSE
panels equal NumPy on phase B and `GET /v1/metrics?since=T_B` to 1e-9. All queries are
evaluated at one instant `t_eval`, seconds after phase B, through `/api/v1/query`, after
Grafana's variables are replaced by concrete values (`$__rate_interval` → 1m, `$__range` → 1h,
`$__interval` → 30s, `$model` → a model, a multi-value `(a|b)` or `.*` for All).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from conftest import run_cli
from servers import Prometheus, ServerProcess, require_binary

REL = 1e-9
SCRAPE_TIMEOUT = 30.0
BUCKETS = [0.25, 1.0, 4.0, 9.0, 16.0, 64.0]
GROUPS = [  # model, version, residual sd, regions
    ("price", "v1", 1.0, ("north", "south", "east")),
    ("price", "v2", 1.6, ("north", "south", "east")),
    ("eta", "v7", 0.6, ("west", "east")),
]
PER_SERIES = 60  # predictions per (model, version, region) and phase
SLO_THRESHOLD = 1.0
SLO_OBJECTIVE = 0.99
PRICE_RUNBOOK = "https://runbooks.example/price-accuracy"
RMSE_RUNBOOK = "https://runbooks.example/price-rmse"
MAINTENANCE = (1714521600, 1714543200)  # 2024-05-01T00:00Z to 06:00Z
CONFIG = f"""
[metrics]
segments = ["region"]
squared_error_buckets = {json.dumps(BUCKETS)}

[alerting]
interval = "1s"

[[slos]]
name = "price-accuracy"
model = "price"
kind = "event"
threshold = {SLO_THRESHOLD}
objective = {SLO_OBJECTIVE}
runbook = "{PRICE_RUNBOOK}"

[[slos]]
name = "price-hourly-rmse"
model = "price"
kind = "window"
window = "1h"
max_rmse = 3.0
objective = 0.95
runbook = "{RMSE_RUNBOOK}"

[[alerts]]
name = "eta-coverage"
type = "label_coverage"
model = "eta"
severity = "ticket"
window = "1h"
min_coverage = 0.95
min_n = 100

[[maintenance]]
model = "legacy"
starts = "2024-05-01T00:00:00Z"
ends = "2024-05-01T06:00:00Z"
reason = "label backfill"
"""
FILES = [
    "dashboards/msewatch-executive.json",
    "dashboards/msewatch-oncall.json",
    "dashboards/msewatch-debug.json",
    "provisioning/dashboards/msewatch.yaml",
    "provisioning/datasources/prometheus.yaml",
]
# Grafana's values for its variables: All, a multi-value selection, one value each
ALL = {"model": ".*", "version": ".*", "region": ".*"}
MULTI = {"model": "(price|eta)", "version": "(v1|v2|v7)", "region": "(north|south|east|west)"}
ONE = {"model": "price", "version": "v2", "region": "north"}
BUILTIN = {"__rate_interval": "1m", "__range": "1h", "__interval": "30s"}


# -- the events -----------------------------------------------------------------------------------
@dataclass
class Phase:
    predictions: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, tuple[float, int]] = field(default_factory=dict)  # id → (y_true, label_ts)
    shadow: list[dict[str, Any]] = field(default_factory=list)
    bad: list[dict[str, Any]] = field(default_factory=list)  # rejected: 2 not_a_number, 1 missing

    def pairs(self, **where: str) -> list[tuple[dict[str, Any], float, int]]:
        return [(p, *self.labels[p["prediction_id"]]) for p in self.predictions
                if p["prediction_id"] in self.labels and all(p[k] == v for k, v in where.items())]

    def squared_errors(self, **where: str) -> np.ndarray:
        return np.asarray([(p["y_pred"] - y) ** 2 for p, y, _ in self.pairs(**where)], dtype=np.float64)

    def residuals(self, **where: str) -> np.ndarray:
        return np.asarray([p["y_pred"] - y for p, y, _ in self.pairs(**where)], dtype=np.float64)

    def latencies(self, **where: str) -> np.ndarray:
        return np.asarray([lts - p["ts"] for p, _, lts in self.pairs(**where)], dtype=np.float64)

    def n_predictions(self, **where: str) -> int:
        return sum(all(p[k] == v for k, v in where.items()) for p in self.predictions)


def make_phase(rng: np.random.Generator, tag: str, t_lo: int, t_hi: int, now: int) -> Phase:
    phase = Phase()
    for model, version, sd, regions in GROUPS:
        for region in regions:
            for i in range(PER_SERIES):
                ts = int(rng.integers(t_lo, t_hi))
                y_true = float(rng.normal(50.0, 10.0))
                pid = f"{tag}-{model}-{version}-{region}-{i}"
                phase.predictions.append({"prediction_id": pid, "ts": ts, "model": model, "version": version,
                                          "region": region, "y_pred": y_true + float(rng.normal(0.2, sd))})
                if rng.random() < 0.85:
                    phase.labels[pid] = (y_true, ts + int(rng.integers(1, max(2, now - ts))))
                if model == "price" and version == "v1" and i < 10:
                    phase.shadow.append({"prediction_id": pid, "ts": ts, "model": "price", "version": "v3",
                                         "y_pred": y_true + float(rng.normal(0.0, 0.8))})
    phase.bad = [
        {"prediction_id": f"{tag}-bad-1", "ts": t_lo, "model": "price", "version": "v1", "y_pred": "abc"},
        {"prediction_id": f"{tag}-bad-2", "ts": t_lo, "model": "price", "version": "v1", "y_pred": "12,5"},
        {"prediction_id": "", "ts": t_lo, "model": "price", "version": "v1", "y_pred": 1.0},
    ]
    return phase


def post(client: httpx.Client, base: str, kind: str, records: list[Any]) -> dict[str, Any]:
    r = client.post(f"{base}/v1/{kind}", json=records)
    assert r.status_code == 200, f"{kind}: {r.status_code} {r.text}"
    return r.json()


def send(client: httpx.Client, base: str, phase: Phase) -> None:
    """Each kind in one request, so the series it creates are born in one commit and one scrape."""
    answer = post(client, base, "predictions", [*phase.predictions, *phase.bad])
    assert answer["accepted"] == len(phase.predictions) and len(answer["rejected"]) == 3, answer
    labels = [{"prediction_id": k, "y_true": y, "label_ts": lts} for k, (y, lts) in phase.labels.items()]
    answer = post(client, base, "labels", labels)
    assert answer["accepted"] == len(labels) and not answer["rejected"], answer
    answer = post(client, base, "shadow", phase.shadow)
    assert answer["accepted"] == len(phase.shadow), answer


def wait_for(prom: Prometheus, expected: dict[str, float]) -> None:
    deadline = time.monotonic() + SCRAPE_TIMEOUT
    seen: dict[str, float | None] = {}
    while time.monotonic() < deadline:
        seen = {q: prom.scalar(q) for q in expected}
        if seen == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus did not scrape {expected} in {SCRAPE_TIMEOUT}s: {seen}\n{prom.log_text()}")


def scraped_counts(phases: list[Phase]) -> dict[str, float]:
    return {
        "sum(msewatch_predictions_total)": float(sum(len(p.predictions) for p in phases)),
        "sum(msewatch_squared_error_count)": float(sum(len(p.pairs()) for p in phases)),
        "sum(msewatch_labels_total)": float(sum(len(p.labels) for p in phases)),
        "sum(msewatch_ingest_rejected_total)": float(sum(len(p.bad) for p in phases)),
        "sum(msewatch_shadow_predictions_total)": float(sum(len(p.shadow) for p in phases)),
    }


# -- the module's world -----------------------------------------------------------------------------
@dataclass
class World:
    out: Path
    boards: dict[str, dict[str, Any]]
    prom: Prometheus
    server: ServerProcess
    a: Phase
    b: Phase
    t_b: int
    t_eval: float

    def board(self, key: str) -> dict[str, Any]:
        return self.boards[key]

    def panel(self, key: str, title: str) -> dict[str, Any]:
        found = [p for p in self.boards[key]["panels"] if p["title"].startswith(title)]
        assert len(found) == 1, (key, title, [p["title"] for p in self.boards[key]["panels"]])
        return found[0]

    def run(self, expr: str, values: dict[str, str] = ALL, at: float | None = None) -> list[dict[str, Any]]:
        return self.prom.query(substitute(expr, values), self.t_eval if at is None else at)

    def by(self, key: str, title: str, ref: str, *labels: str, values: dict[str, str] = ALL) -> dict[Any, float]:
        """A panel target's result at t_eval, keyed by the values of `labels` (one → the value itself)."""
        target = next(t for t in self.panel(key, title)["targets"] if t["refId"] == ref)
        out = {}
        for s in self.run(target["expr"], values):
            k = tuple(s["metric"].get(name, "") for name in labels)
            assert k not in out, f"two series for {k} in {title} {ref}"
            out[k[0] if len(k) == 1 else k] = s["value"]
        return out


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation with concrete values: built-ins, then the dashboard's variables."""
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTIN:
            return BUILTIN[name]
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)
    assert "$" not in out and "[[" not in out, out
    return out


def v1_metrics(server: ServerProcess, **params: str) -> list[dict[str, Any]]:
    r = httpx.get(server.url + "/v1/metrics", params=params, timeout=30.0)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    binary = require_binary("prometheus", "Debian package `prometheus`: every dashboard query is run on it")
    work = tmp_path_factory.mktemp("grafana")
    config = work / "msewatch.toml"
    config.write_text(CONFIG)
    out = work / "grafana"
    run = run_cli(["grafana", "--config", config, "--out", out, "--datasource-uid", "prom-test"], cwd=work)
    assert run.returncode == 0, str(run)
    assert run.stdout.split() == [str(out / f) for f in FILES], str(run)
    boards = {key: json.loads((out / f"dashboards/msewatch-{key}.json").read_text()) for key in
              ("executive", "oncall", "debug")}
    server = ServerProcess(work / "store.duckdb", config=config)
    prom = Prometheus(binary, work, {"msewatch": f"127.0.0.1:{server.port}"})
    try:
        server.start(wait=False)
        prom.start()
        server.wait_ready()
        prom.wait_ready()
        rng = np.random.default_rng(20250101)
        now = int(time.time())
        t_b = now - 300
        a = make_phase(rng, "a", t_b - 7200, t_b, now)  # complete hours, for the SLO budgets
        b = make_phase(rng, "b", t_b, now - 5, now)
        with httpx.Client(timeout=60.0) as client:
            started = time.time()
            send(client, server.url, a)
            wait_for(prom, scraped_counts([a]))
            time.sleep(2.0)  # a few samples of phase A before phase B
            send(client, server.url, b)
        wait_for(prom, scraped_counts([a, b]))
        # the SLO burn of price and the coverage rule of eta fire in the server, and are scraped
        wait_for(prom, {'count(msewatch_alerts{state="firing"} > 0)': 2.0})
        time.sleep(1.5)
        t_eval = time.time()
        # windows of 1m ($__rate_interval) must hold the whole run for the exact checks
        assert t_eval - started < 50, f"the run took {t_eval - started:.0f}s; 1m windows no longer hold it"
        yield World(out, boards, prom, server, a, b, t_b, t_eval)
    finally:
        prom.stop()
        server.__exit__(None, None, None)


# -- files ----------------------------------------------------------------------------------------------
def test_files_are_grafana_json_and_provisioning_yaml(world: World) -> None:
    for name in FILES:
        assert (world.out / name).is_file(), name
    expected = {"executive": ("msewatch-executive", "now-30d"), "oncall": ("msewatch-oncall", "now-24h"),
                "debug": ("msewatch-debug", "now-6h")}
    for key, (uid, since) in expected.items():
        board = world.board(key)
        assert board["uid"] == uid and board["title"] and board["tags"] == ["msewatch"]
        assert 36 <= board["schemaVersion"] <= 41
        assert board["time"] == {"from": since, "to": "now"}
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert list(variables) == ["datasource", "model", "version", "region"]
        ds = variables["datasource"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus" and ds["current"]["value"] == "prom-test"
        assert variables["model"]["definition"] == "label_values(msewatch_predictions_total, model)"
        assert variables["version"]["definition"] == 'label_values(msewatch_predictions_total{model=~"$model"}, version)'
        for name in ("model", "version", "region"):
            v = variables[name]
            assert v["type"] == "query" and v["multi"] and v["includeAll"] and v["allValue"] == ".*"
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    providers = yaml.safe_load((world.out / FILES[3]).read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == str((world.out / "dashboards").resolve())
    sources = yaml.safe_load((world.out / FILES[4]).read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prom-test" and source["access"] == "proxy"
    assert source["url"] == "http://localhost:9090"


def test_panels_have_targets_unique_ids_and_fit_the_grid(world: World) -> None:
    kinds: set[str] = set()
    for key, board in world.boards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), key
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            kinds.add(panel["type"])
            assert panel["targets"], f"{key}: {panel['title']} has no targets"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
            for t in panel["targets"]:
                assert t["expr"].strip() and t["refId"] and "legendFormat" in t, (panel["title"], t)
                assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, (panel["title"], g)
            for x in range(g["x"], g["x"] + g["w"]):  # and no two panels overlap
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{key}: {panel['title']} overlaps at {(x, y)}"
                    cells.add((x, y))
    assert kinds == {"timeseries", "heatmap", "table", "stat", "bargauge"}


def test_every_promql_expression_runs_on_prometheus(world: World) -> None:
    """Panel targets and annotation queries, for All, a multi-value and a single-value selection."""
    n = 0
    for key, board in world.boards.items():
        exprs = [(f"{panel['title']} {t['refId']}", t["expr"]) for panel in board["panels"] for t in panel["targets"]]
        exprs += [(f"annotation {a['name']}", a["expr"]) for a in board["annotations"]["list"]
                  if a["datasource"]["type"] == "prometheus"]
        assert len(exprs) >= 15, key
        for where, expr in exprs:
            for values in (ALL, MULTI, ONE):
                try:
                    world.run(expr, values)
                except AssertionError as exc:
                    raise AssertionError(f"{key}: {where}: {exc}") from None
                n += 1
    assert n > 150


def test_variable_queries_list_the_label_values(world: World) -> None:
    """`label_values(selector, label)`, as Grafana asks it of Prometheus (/api/v1/label/…/values)."""
    expected = {"model": {"price", "eta"}, "version": {"v1", "v2"}, "region": {"north", "south", "east"}}
    for board in world.boards.values():
        for v in board["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["definition"])
            assert m and v["query"]["query"] == v["definition"], v
            selector = substitute(m.group(1), {**ALL, "model": "price"})
            r = httpx.get(f"{world.prom.url}/api/v1/label/{m.group(2)}/values",
                          params={"match[]": selector, "start": world.t_eval - 600, "end": world.t_eval}, timeout=10)
            assert r.status_code == 200 and r.json()["status"] == "success", r.text
            got = set(r.json()["data"])
            want = expected[v["name"]] if v["name"] != "model" else {"price", "eta"}
            assert got == want, (v["name"], got)


# -- values ---------------------------------------------------------------------------------------------
def test_rmse_and_mse_panels_equal_numpy_and_v1_metrics(world: World) -> None:
    b = world.b
    since = str(world.t_b)
    rows = {r["model"]: r for r in v1_metrics(world.server, since=since, by="model")}
    mse = {}
    for model in ("price", "eta"):
        mse[model] = float(np.mean(b.squared_errors(model=model)))
        assert close(rows[model]["mse"], mse[model]), (model, rows[model]["mse"], mse[model])
    rmse = {m: math.sqrt(v) for m, v in mse.items()}
    checks = [
        (world.by("executive", "RMSE, last 30 days", "A", "model"), rmse),
        (world.by("executive", "RMSE, last 90 days", "A", "model"), rmse),
        (world.by("executive", "RMSE trend", "A", "model"), rmse),
        (world.by("executive", "RMSE trend", "B", "model"), rmse),
        (world.by("oncall", "MSE, last hour", "A", "model"), mse),
        (world.by("debug", "Squared-error tails", "D", "model"), mse),
    ]
    checks += [(world.by("oncall", "Rolling MSE", ref, "model"), mse) for ref in "ABC"]
    for got, want in checks:
        assert set(got) == set(want), got
        for model in want:
            assert close(got[model], want[model]), (model, got[model], want[model])
    # one model, one version, one region: the segment variable filters
    got = world.by("oncall", "MSE, last hour", "A", "model", values=ONE)
    assert set(got) == {"price"}
    assert close(got["price"], float(np.mean(b.squared_errors(model="price", version="v2", region="north"))))


def test_versions_cohorts_and_delta_mse(world: World) -> None:
    b = world.b
    since = str(world.t_b)
    rows = {(r["model"], r["version"]): r["mse"] for r in v1_metrics(world.server, since=since, by="model,version")}
    want = {}
    for model, version, _, _ in GROUPS:
        want[(model, version)] = float(np.mean(b.squared_errors(model=model, version=version)))
        assert close(rows[(model, version)], want[(model, version)])
    for got in (world.by("oncall", "Canary vs control", "A", "model", "version"),
                world.by("oncall", "MSE by version", "A", "model", "version"),
                world.by("executive", "MSE per version over the range", "A", "model", "version")):
        assert set(got) == set(want)
        for k, value in want.items():
            assert close(got[k], value), (k, got[k], value)
    assert want[("price", "v2")] > 1.5 * want[("price", "v1")]  # the versions really differ

    regions = {r["region"]: r["rmse"] for r in v1_metrics(world.server, since=since, by="region")}
    got = world.by("executive", "RMSE by region", "A", "region")
    assert set(got) == {"north", "south", "east", "west"}
    for region, value in got.items():
        assert close(value, math.sqrt(float(np.mean(b.squared_errors(region=region))))), region
        assert close(value, regions[region]), (region, value, regions[region])

    # ΔMSE vs the previous week: Prometheus has no week-old data here, so the panel is empty…
    delta = world.panel("executive", "Versions ranked by ΔMSE")["targets"][0]["expr"]
    assert "[7d] offset 7d" in delta
    assert world.run(delta) == []
    # …and with the baseline window moved onto this run, it is MSE(version) / MSE(model) - 1, sorted
    model_mse = {m: float(np.mean(b.squared_errors(model=m))) for m in ("price", "eta")}
    result = world.run(delta.replace("[7d] offset 7d", "[1h]"))
    got = {(s["metric"]["model"], s["metric"]["version"]): s["value"] for s in result}
    assert set(got) == set(want)
    for (model, version), value in got.items():
        assert close(value, want[(model, version)] / model_mse[model] - 1), (model, version, value)
    values = [s["value"] for s in result]
    assert values == sorted(values, reverse=True)


def test_slo_limits_budget_burn_and_alerts_with_runbooks(world: World) -> None:
    from msewatch.monitor.rules import RULE_RUNBOOKS

    limits = world.by("oncall", "Rolling MSE", "D", "model", "slo")
    assert limits == {("price", "price-accuracy"): SLO_THRESHOLD, ("price", "price-hourly-rmse"): 9.0}
    assert world.by("oncall", "Rolling MSE", "D", "model", "slo", values={**ALL, "model": "eta"}) == {}
    budgets = world.by("oncall", "Rolling MSE", "E", "slo")
    assert set(budgets) == {"price-accuracy", "price-hourly-rmse"} and all(v <= 1 for v in budgets.values())
    assert set(world.by("executive", "Error budget remaining per SLO", "A", "slo")) == set(budgets)
    assert world.by("executive", "Error-budget burn rate per SLO", "A", "slo", "window")

    # the burn rate of the event SLO from the histogram: bad share / allowed share, as NumPy says
    sq = world.b.squared_errors(model="price")
    burn = float(np.mean(sq > SLO_THRESHOLD)) / (1 - SLO_OBJECTIVE)
    assert burn > 14.4  # the page tier fires, as the server's alert says
    for ref in "ABC":
        got = world.by("oncall", "Event-SLO burn rate", ref, "slo")
        assert set(got) == {"price-accuracy"}
        assert math.isclose(got["price-accuracy"], burn, rel_tol=REL), (ref, got, burn)

    rows = world.run(world.panel("oncall", "Active alerts with runbooks")["targets"][0]["expr"])
    table = {(s["metric"]["alertname"], s["metric"]["model"], s["metric"]["severity"], s["metric"]["state"]):
             s["metric"].get("runbook") for s in rows}
    assert len(table) == len(rows), rows  # each alert once: with its runbook, not again without
    assert set(table) == {("slo_burn", "price", "page", "firing"), ("eta-coverage", "eta", "ticket", "firing")}
    price = table[("slo_burn", "price", "page", "firing")]
    assert price is not None and PRICE_RUNBOOK in price and RMSE_RUNBOOK in price
    assert table[("eta-coverage", "eta", "ticket", "firing")] == RULE_RUNBOOKS["label_coverage"]
    assert world.by("oncall", "Firing alerts", "A", "__name__") == {"": 2.0}
    only_eta = world.run(world.panel("oncall", "Active alerts")["targets"][0]["expr"], {**ALL, "model": "eta"})
    assert {s["metric"]["alertname"] for s in only_eta} == {"eta-coverage"}


def test_debug_distribution_tails_coverage_latency_bias(world: World) -> None:
    b = world.b
    since = str(world.t_b)
    # buckets: every configured bound and +Inf
    for title in ("Squared-error distribution", "Squared errors per bucket"):
        got = world.by("debug", title, "A", "le")
        assert {float(le) for le in got} == {*BUCKETS, math.inf}, got
    # p90 lands in the bucket of NumPy's p90 (between the buckets of p85 and p95, to allow for ranks)
    p90 = world.by("debug", "Squared-error tails", "B", "model")
    bounds = [0.0, *BUCKETS, math.inf]
    for model in ("price", "eta"):
        sq = b.squared_errors(model=model)
        lo_q, hi_q = np.quantile(sq, [0.85, 0.95])
        lo = bounds[int(np.searchsorted(BUCKETS, lo_q, side="left"))]
        hi = bounds[int(np.searchsorted(BUCKETS, hi_q, side="left")) + 1]
        assert lo <= p90[model] <= hi, (model, p90[model], lo, hi, np.quantile(sq, 0.9))
    assert set(world.by("debug", "Squared-error tails", "C", "model")) == {"price", "eta"}

    rows = {r["model"]: r for r in v1_metrics(world.server, since=since, by="model")}
    everything = {r["model"]: r for r in v1_metrics(world.server, by="model")}
    mae = world.by("debug", "MAE and bias", "A", "model")
    bias = world.by("debug", "MAE and bias", "B", "model")
    coverage = world.by("debug", "Label coverage", "A", "model")
    coverage_all = world.by("debug", "Label coverage", "B", "model")
    latency = world.by("debug", "Label latency", "C", "model")
    for model in ("price", "eta"):
        r = b.residuals(model=model)
        assert close(mae[model], float(np.mean(np.abs(r)))) and close(mae[model], rows[model]["mae"])
        assert close(bias[model], float(np.mean(r))) and close(bias[model], rows[model]["bias"])
        share = len(b.pairs(model=model)) / b.n_predictions(model=model)
        assert close(coverage[model], share) and close(coverage[model], rows[model]["label_coverage"])
        assert close(coverage_all[model], everything[model]["label_coverage"])
        assert close(latency[model], float(np.mean(b.latencies(model=model)))), (model, latency[model])
    assert set(world.by("debug", "Label latency", "B", "model")) == {"price", "eta"}


def test_ingest_and_http_panels(world: World) -> None:
    rejects = world.by("debug", "Ingest rejects by reason", "A", "kind", "reason")
    total = world.by("debug", "Rejects over the range", "A", "kind", "reason")
    for got in (rejects, total):
        # counts are extrapolated by rate(); both reasons share the factor, so the shares are exact
        assert set(got) == {("predictions", "not_a_number"), ("predictions", "missing")}, got
        assert math.isclose(got[("predictions", "not_a_number")] / got[("predictions", "missing")], 2.0,
                            rel_tol=REL)
    assert world.by("debug", "Ingest: rows per second", "A", "__name__")
    assert world.by("debug", "Ingest: rows per second", "B", "__name__")
    assert world.by("debug", "Ingest: rows per second", "D", "__name__") == {"": 0.0}
    for title in ("Request latency by route", "Requests per second"):
        routes = {k[0] if isinstance(k, tuple) else k for k in world.by("debug", title, "A", "route", "status")}
        assert {"/v1/predictions", "/v1/labels", "/v1/shadow"} <= routes, routes
    shadow = world.by("oncall", "Shadow predictions", "A", "model", "version")
    assert set(shadow) == {("price", "v3")} and shadow[("price", "v3")] > 0


def test_annotations_mark_new_versions_label_bursts_and_maintenance(world: World) -> None:
    for board in world.boards.values():
        notes = {a["name"]: a for a in board["annotations"]["list"] if a["datasource"]["type"] == "prometheus"}
        assert set(notes) == {"Version changes", "Label bursts (backfills)", "Maintenance (config)"}
        versions = {(s["metric"]["model"], s["metric"]["version"]) for s in world.run(notes["Version changes"]["expr"])}
        assert versions == {(m, v) for m, v, _, _ in GROUPS}  # all appeared less than 5 minutes ago
        assert len(world.run(notes["Label bursts (backfills)"]["expr"])) == 1
        # a past window of the config: present inside it, absent now
        maintenance = notes["Maintenance (config)"]["expr"]
        inside = world.run(maintenance, at=MAINTENANCE[0] + 3600)
        assert [s["metric"] for s in inside] == [{"model": "legacy", "reason": "label backfill"}]
        assert world.run(maintenance, at=MAINTENANCE[1] + 1) == []
        assert world.run(maintenance) == []


# -- the command ------------------------------------------------------------------------------------------
def test_defaults_without_a_config(main_in_process: Any, tmp_path: Path) -> None:
    run = main_in_process("grafana", "--out", "out", "--prometheus-url", "http://prom:9090",
                          "--dashboards-path", "/var/lib/grafana/dashboards/msewatch", "--scrape-interval", "15s")
    assert run.returncode == 0, str(run)
    assert "no [metrics] segments" in run.stderr and "offset 7d" in run.stderr
    board = json.loads((tmp_path / "out/dashboards/msewatch-executive.json").read_text())
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "model", "version"]
    assert any(p["title"] == "RMSE by version × day" for p in board["panels"])
    notes = [a["name"] for a in board["annotations"]["list"]]
    assert "Maintenance (config)" not in notes and "Version changes" in notes
    oncall = json.loads((tmp_path / "out/dashboards/msewatch-oncall.json").read_text())
    rolling = next(p for p in oncall["panels"] if p["title"].startswith("Rolling MSE"))
    assert [t["refId"] for t in rolling["targets"]] == ["A", "B", "C", "E"]  # no SLO, no limit lines
    provider = yaml.safe_load((tmp_path / "out/provisioning/dashboards/msewatch.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/msewatch"
    source = yaml.safe_load((tmp_path / "out/provisioning/datasources/prometheus.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prom:9090"
    assert source["datasources"][0]["uid"] == "prometheus"
    assert source["datasources"][0]["jsonData"]["timeInterval"] == "15s"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "--out"),
        (("--out", "o", "--datasource-uid", "no spaces please"), "--datasource-uid"),
        (("--out", "o", "--config", "missing.toml"), "missing.toml"),
        (("--out", "o", "--prometheus-url", "localhost:9090"), "--prometheus-url"),
        (("--out", "o", "--scrape-interval", "often"), "--scrape-interval"),
    ],
)
def test_usage_errors_exit_2(main_in_process: Any, tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    run = main_in_process("grafana", *args)
    assert run.returncode == 2, str(run)
    assert needle in run.stderr, str(run)
    assert not (tmp_path / "o").exists()
