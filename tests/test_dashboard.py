"""The dashboard of `msewatch serve` and `msewatch report`, drawn by a real Chromium.

One demo store (`msewatch demo`: three weeks of a pricing model, a drifting region, a worse v2)
is served with a read token. Playwright drives Debian's /usr/bin/chromium: every view loads with
no console error and draws every chart (an SVG with marks), a filter changes the data, and a
screenshot of each view is saved (to $MSEWATCH_SCREENSHOTS too when set: the README's comes from
there). The report is opened from file:// with the network off and must draw every chart.
Locally a missing chromium or playwright skips the browser tests; under CI=true it fails them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from conftest import run_cli
from servers import ServerProcess, require_binary

READ = "dashboard-read-token-0123456789"
INGEST = "dashboard-ingest-token-01234567"
VIEWS = ("executive", "oncall", "debug")
CHARTS = {
    "executive": {"rmse_30d", "rmse_90d", "cohort_heatmap", "versions_delta", "budget_burn"},
    "oncall": {"rolling_mse", "budget", "versions_mse", "coverage_annotated"},
    "debug": {"sq_error_hist", "pred_vs_truth", "features", "labels"},
}
TOKENS = f"""
[[tokens]]
name = "reader"
token = "{READ}"
scopes = ["read"]

[[tokens]]
name = "ingester"
token = "{INGEST}"
scopes = ["ingest"]
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dashboard")
    run = run_cli(["demo", "--db", "demo.duckdb", "--format", "json"], cwd=folder, timeout=600)
    assert run.returncode == 0, run
    config = folder / "msewatch.toml"
    config.write_text((folder / "demo-files" / "msewatch.toml").read_text(encoding="utf-8") + TOKENS, encoding="utf-8")
    report = folder / "report.html"
    run = run_cli(["report", "--db", "demo.duckdb", "--model", "pricing", "--config", config, "--out", report], cwd=folder)
    assert run.returncode == 0, run
    served = folder / "served.duckdb"
    shutil.copy(folder / "demo.duckdb", served)
    return {"folder": folder, "db": folder / "demo.duckdb", "config": config, "report": report, "served": served}


@pytest.fixture(scope="module")
def server(demo: dict[str, Path]) -> Iterator[ServerProcess]:
    with ServerProcess(demo["served"], config=demo["config"], env={"MSEWATCH_TOKENS": ""}) as srv:
        yield srv


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    path = require_binary("chromium", "the dashboard is checked in a real browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed, and CI must run the browser tests (pip install -e '.[test]')")
        pytest.skip("playwright is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


def _screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"{name}.png"
    page.screenshot(path=str(out), full_page=False)
    assert out.stat().st_size > 10_000
    extra = os.environ.get("MSEWATCH_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(extra) / out.name)
    return out


def _console(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def _drawn(page: Any, scope: str = "") -> dict[str, dict[str, Any]]:
    """Per chart container: its state and how many marks its SVG holds."""
    found = page.eval_on_selector_all(
        f"{scope} .chart",
        """els => els.map(e => [e.dataset.chart, e.dataset.rendered || null,
             e.querySelectorAll('svg .mark-line path, svg .mark-rect path, svg .mark-area path, svg .mark-symbol path,'
               + ' svg .mark-rule line, svg .mark-rect, svg path').length,
             e.querySelector('svg') ? e.querySelector('svg').getBoundingClientRect().width : 0])""",
    )
    return {c: {"state": s, "marks": n, "width": w} for c, s, n, w in found}


def _assert_all_drawn(charts: dict[str, dict[str, Any]], expected: set[str]) -> None:
    assert set(charts) == expected
    for name, c in charts.items():
        assert c["state"] == "drawn", (name, c)
        assert c["marks"] > 3 and c["width"] > 100, (name, c)


# -- the server ----------------------------------------------------------------------------------
def test_view_data_needs_a_read_token_and_the_pages_none(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/api/views/executive").status_code == 401
        assert c.get("/api/views/executive", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/api/views/executive", headers={"Authorization": f"Bearer {INGEST}"}).status_code == 403
        ok = c.get("/api/views/executive", headers={"Authorization": f"Bearer {READ}"})
        assert ok.status_code == 200 and ok.json()["model"] == "pricing"
        assert ok.headers["cache-control"] == "no-store"
        bad = c.get("/api/views/executive?cohort=nope", headers={"Authorization": f"Bearer {READ}"})
        assert bad.status_code == 400 and "segment column" in bad.json()["error"]
        assert c.get("/api/views/executive?colour=red", headers={"Authorization": f"Bearer {READ}"}).status_code == 400
        assert c.get("/api/views/nope", headers={"Authorization": f"Bearer {READ}"}).status_code == 404
        root = c.get("/")
        assert root.status_code == 307 and root.headers["location"].endswith("/dashboard/executive")
        page = c.get("/dashboard/oncall")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert not re.search(r'(src|href)="(https?:)?//', page.text)  # no CDN: every asset from the server
        js = c.get("/assets/vega-lite.min.js")
        assert js.status_code == 200 and "max-age=31536000" in js.headers["cache-control"]
        assert c.get("/assets/..%2Fcli.py").status_code == 404
        assert c.get("/assets/LICENSE.vega").status_code == 404  # only the listed assets


@pytest.mark.parametrize("view", VIEWS)
def test_each_view_loads_and_draws_every_chart(server: ServerProcess, chromium: Any, tmp_path: Path, view: str) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(f"sessionStorage.setItem('msewatch-token', {json.dumps(READ)})")
    page = context.new_page()
    errors = _console(page)
    page.goto(f"{server.url}/dashboard/{view}")
    page.wait_for_selector("#view[data-ready]", timeout=30_000, state="attached")
    assert page.get_attribute("#view", "data-ready") == "1", page.inner_text("#status")
    _assert_all_drawn(_drawn(page), CHARTS[view])
    assert page.locator("table").count() >= 1
    if view == "oncall":  # the same active alerts as /v1/alerts (the demo's have resolved by now)
        listed = httpx.get(f"{server.url}/v1/alerts", headers={"Authorization": f"Bearer {READ}"}).json()["alerts"]
        shown = page.inner_text("#table-alerts")
        for alert in listed:
            assert alert["labels"]["alertname"] in shown
        if not listed:
            assert "None." in shown
    _screenshot(page, tmp_path, f"dashboard-{view}")
    assert errors == []
    context.close()


def test_without_a_token_the_page_asks_for_one(server: ServerProcess, chromium: Any) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(f"{server.url}/dashboard/executive")
    page.wait_for_selector("#view[data-ready='error']", timeout=30_000, state="attached")
    assert "read token" in page.inner_text("#status")
    page.fill("#token", READ)
    page.dispatch_event("#token", "change")  # stored for the tab, and the page reloads
    page.wait_for_selector("#view[data-ready='1']", timeout=30_000, state="attached")
    _assert_all_drawn(_drawn(page), CHARTS["executive"])
    context.close()


def test_a_filter_changes_the_data(server: ServerProcess, chromium: Any, tmp_path: Path) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(f"sessionStorage.setItem('msewatch-token', {json.dumps(READ)})")
    page = context.new_page()
    errors = _console(page)
    with page.expect_response(lambda r: "/api/views/debug" in r.url) as first:
        page.goto(f"{server.url}/dashboard/debug")
    page.wait_for_selector("#view[data-ready='1']", timeout=30_000, state="attached")
    before = first.value.json()
    tail_before = page.inner_text("#table-tail")
    page.select_option("select[name=version]", "v2")
    page.fill("input[name=cohort_value]", "latam")
    with page.expect_response(lambda r: "/api/views/debug" in r.url) as second:
        page.click("button[type=submit]")
    page.wait_for_selector("#view[data-ready='1']", timeout=30_000, state="attached")
    after = second.value.json()
    assert after["filters"]["version"] == "v2" and after["filters"]["cohort_value"] == "latam"
    assert page.input_value("select[name=version]") == "v2"  # the form shows the filters in force
    hist = {c["id"]: c for c in before["charts"]}["sq_error_hist"]["spec"]["data"]["values"]
    hist2 = {c["id"]: c for c in after["charts"]}["sq_error_hist"]["spec"]["data"]["values"]
    assert sum(b["n"] for b in hist2) < sum(b["n"] for b in hist)
    tail = page.inner_text("#table-tail")
    assert tail != tail_before and "v1" not in tail.split() and "us-east" not in tail
    _assert_all_drawn(_drawn(page), CHARTS["debug"])
    _screenshot(page, tmp_path, "dashboard-debug-filtered")
    assert errors == []
    context.close()


# -- the report ----------------------------------------------------------------------------------
def test_report_is_self_contained(demo: dict[str, Path]) -> None:
    text = demo["report"].read_text(encoding="utf-8")
    assert not re.findall(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', text, flags=re.I)
    assert not re.findall(r'<script[^>]+src=', text) and not re.findall(r'<link[^>]+stylesheet', text)
    assert "@import" not in text and "url(http" not in text


def test_report_opens_offline_and_draws_every_chart(demo: dict[str, Path], chromium: Any, tmp_path: Path) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 800}, offline=True)
    requests: list[str] = []

    def only_the_file(route: Any) -> None:
        requests.append(route.request.url)
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_the_file)
    page = context.new_page()
    errors = _console(page)
    page.goto(demo["report"].as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=60_000, state="attached")
    for view in VIEWS:
        _assert_all_drawn(_drawn(page, f"#view-{view}"), CHARTS[view])
    assert [u for u in requests if not u.startswith("file://")] == []
    alerts = page.inner_text("#view-oncall #table-alerts")  # as the monitor last stored them, with runbooks
    assert "PricingMSERegression" in alerts and "roll it back" in alerts
    _screenshot(page, tmp_path, "report")
    assert errors == []
    context.close()


# -- the numbers ---------------------------------------------------------------------------------
def test_view_numbers_match_the_rows(demo: dict[str, Path]) -> None:
    """The rollup-based daily RMSE and the per-version MSE agree with the joined rows."""
    from msewatch.views import Filters, compute_view

    con = duckdb.connect(str(demo["db"]), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    doc = compute_view(con, "executive", Filters(model="pricing"))
    daily = {r["t"][:10]: r["rmse"] for r in {c["id"]: c for c in doc["charts"]}["rmse_30d"]["spec"]["data"]["values"]}
    rows = con.execute(
        """SELECT strftime(p.ts, '%Y-%m-%d'), sqrt(avg((p.y_pred - l.y_true) ^ 2)) FROM predictions p
        JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current WHERE p.model = 'pricing' GROUP BY 1"""
    ).fetchall()
    assert len(rows) == len(daily) > 10
    for day, rmse in rows:
        assert math.isclose(daily[day], rmse, rel_tol=1e-9), day
    versions = {r[0]: r for r in doc["tables"][0]["rows"]}
    assert set(versions) == {"v1", "v2"}
    v2 = con.execute(
        """SELECT avg((p.y_pred - l.y_true) ^ 2) FROM predictions p JOIN labels l ON l.prediction_id = p.prediction_id
        AND l.is_current WHERE p.version = 'v2'"""
    ).fetchall()[0][0]
    assert math.isclose(float(versions["v2"][4]), v2, rel_tol=1e-4)
    # a cohort filter reads the rows; without one the rollups: the same numbers for the whole model
    debug = compute_view(con, "debug", Filters(model="pricing", cohort="region", cohort_value="latam"))
    tail = {t["id"]: t for t in debug["tables"]}["tail"]
    assert tail["rows"] and all(r[-1] == "latam" for r in tail["rows"])
    con.close()


def test_report_command_errors(demo: dict[str, Path], tmp_path: Path) -> None:
    run = run_cli(["report", "--db", demo["db"], "--model", "nope", "--out", tmp_path / "r.html"], cwd=tmp_path)
    assert run.returncode == 2 and "no predictions of model 'nope'" in run.stderr
    run = run_cli(["report", "--db", demo["db"], "--cohort", "nope", "--out", tmp_path / "r.html"], cwd=tmp_path)
    assert run.returncode == 2 and "segment column" in run.stderr
    assert not (tmp_path / "r.html").exists()
