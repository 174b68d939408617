"""`msewatch report --engine`: the views over an engine's aggregates equal the views over the store.

One small data set (two models, two versions with a canary, two segment columns, two features,
late labels, labels that come before their predictions, corrections, stale revisions that do not
count, labels without a time, labels of unknown ids) is ingested into a store, which is exported
with `msewatch export` (the real CLI) to a Parquet lake. `engine_store` over that lake in DuckDB,
PySpark and chdb must give views whose every chart value and table cell equals the store's: to
1e-9 relative for floats, exactly for counts and text; so must every column of the rollups it
builds and the raw rows of its recent window. The differences that are legitimate are named in
UNORDERED, ENGINE_HAS_NO and RECORDED_BASELINE (never ignored wholesale). PySpark takes about
8 s a query here, so each engine's store is built once per module.

Under CI=true a missing pyspark, Java or chdb fails the run; locally those engines skip.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from engines_support import ENGINES, RTOL, WARNING_FILTERS, close_engine, open_engine

from msewatch.config import load_config
from msewatch.engine_store import engine_store
from msewatch.engines import EngineTables
from msewatch.monitor.baselines import ensure_tables
from msewatch.store import Store
from msewatch.views import Filters, compute_all, dumps, store_alerts, store_slos

pytestmark = WARNING_FILTERS

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAYS = 20
N = 20_000
DAY_US = 86400 * 1_000_000
CONFIG = """
[[slos]]
name = "pricing-accuracy"
model = "pricing"
kind = "event"
threshold = 6.0
objective = 0.95
period = "28d"
min_labels = 30

[[slos]]
name = "pricing-hourly-rmse"
model = "pricing"
kind = "window"
window = "1h"
max_rmse = 2.5
objective = 0.9
period = "7d"
min_labels = 5

[canary]
min_n = 100
"""

#: charts whose rows the views' SQL leaves in the engine's row order (GROUP BY without ORDER BY,
#: or ORDER BY time alone with several rows per time): compared as multisets, not as lists
UNORDERED = {
    "versions_mse": "ORDER BY the hour only: the versions of one hour come in row order",
    "pred_vs_truth": "the labeled rows of the range, in the order the join gives them",
    "features": "histogram bins from a GROUP BY without ORDER BY",
}
#: what an engine does not hold (no monitor state lives there): view path → reason
ENGINE_HAS_NO = {
    ("oncall", "tables", "alerts"): "alerts are the server monitor's state in a store; an engine has none",
}
#: with a baseline recorded by `msewatch baseline set` in the store (it cannot be on an engine),
#: what changes: the versions ranked against it, and the debug view's reference period
RECORDED_BASELINE = {
    ("executive", "charts", "versions_delta"), ("executive", "tables", "versions"),
    ("debug", "charts", "features"), ("debug", "tables", "feature_drift"),
}


def _ts(us: Any) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC"))


def _dataset(tmp: Path) -> dict[str, Path]:
    """Predictions and label batches as Parquet files, in the order they are ingested."""
    rng = np.random.default_rng(20261127)
    ts_us = np.sort(T0 * 1_000_000 + rng.integers(0, DAYS * DAY_US, N)).astype(np.int64)
    day = (ts_us - T0 * 1_000_000) / DAY_US
    model = np.where(rng.random(N) < 0.15, "demand", "pricing")
    v2 = (day > DAYS - 6) & (rng.random(N) < 0.4)  # the canary: 40% of the traffic of the last 6 days
    region = rng.choice(["eu", "us", "latam"], N, p=[0.5, 0.35, 0.15])
    channel = rng.choice(["web", "app"], N)
    basket = rng.gamma(2.0, 30.0, N) * (1 + 0.3 * (day > DAYS - 3))  # drifts in the last 3 days
    distance = rng.exponential(5.0, N)
    y_true = 50 + 0.3 * basket + rng.standard_normal(N) * 5
    noise = np.where(region == "latam", 3.0, 1.5) * (1 + 0.5 * (day > DAYS - 4) * (region == "latam"))
    y_pred = y_true + rng.standard_normal(N) * noise + v2 * 0.4
    ids = np.array([f"p{i:06d}" for i in range(N)])
    preds = pa.table({"prediction_id": ids.tolist(), "ts": _ts(ts_us), "model": model.tolist(),
                      "version": np.where(v2, "v2", "v1").tolist(), "region": region.tolist(),
                      "channel": channel.tolist(), "basket_value": basket, "distance_km": distance, "y_pred": y_pred})
    label_us = ts_us + (rng.exponential(6 * 3600, N) * 1e6).astype(np.int64)
    labeled = (rng.random(N) < 0.9) & (label_us <= ts_us.max())  # late labels: the newest are missing
    idx = np.flatnonzero(labeled)
    no_time = rng.random(N) < 0.05  # a label without a time: its arrival stands in
    label_ts = pa.array([None if no_time[i] else int(label_us[i]) for i in range(N)], pa.int64()).cast(
        pa.timestamp("us", tz="UTC"))

    def labels(sel: np.ndarray, y: np.ndarray, ts: pa.Array) -> pa.Table:
        return pa.table({"prediction_id": ids[sel].tolist(), "y_true": y, "label_ts": ts})

    early = idx[rng.random(len(idx)) < 0.1]  # ingested before their predictions
    rest = np.setdiff1d(idx, early)
    old = idx[day[idx] < DAYS - 3]
    # corrections (a later label_ts wins) all through the old days, and in four hours of the last two
    recent = idx[(day[idx] > DAYS - 1.9) & (day[idx] < DAYS - 0.2)]
    fix = np.concatenate([old[::29], recent[[0, 1, 200, 201, 202, 500, 900, 901]]])
    stale = old[5::31]  # revisions with an older label_ts: kept as history, they do not count
    batches = {
        "early": labels(early, y_true[early], label_ts.take(pa.array(early))),
        "predictions": preds,
        "labels": pa.concat_tables([
            labels(rest, y_true[rest], label_ts.take(pa.array(rest))),
            pa.table({"prediction_id": ["unknown-1", "unknown-2"], "y_true": [1.0, 2.0],
                      "label_ts": pa.array([None, None], pa.timestamp("us", tz="UTC"))}),
        ]),
        "corrections": labels(fix, y_true[fix] + rng.standard_normal(len(fix)) * 8, _ts(label_us[fix] + 3600 * 10**6)),
        "stale": labels(stale, y_true[stale] - 20.0, _ts(ts_us[stale] + 1)),
    }
    out = {}
    for name, table in batches.items():
        out[name] = tmp / f"{name}.parquet"
        pq.write_table(table, out[name])
    return out


def _views(con: Any, config: Any, filters: Filters, alerts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    views = compute_all(con, filters, slos=store_slos(con, config),
                        alerts=store_alerts(con) if alerts is None else alerts, canary=config.monitor.canary)
    return json.loads(dumps(views))  # what the report inlines


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("report_engines")
    files = _dataset(tmp)
    db = tmp / "store.duckdb"
    with Store(db) as store:
        for kind, name in (("labels", "early"), ("predictions", "predictions"), ("labels", "labels"),
                           ("labels", "corrections"), ("labels", "stale")):
            store.ingest_file(kind, files[name])
        store.track_thresholds("pricing", [6.0])  # as `msewatch serve` does for an event SLO
        ensure_tables(store.con)  # the monitor's baselines table, none recorded
        revised = store.con.execute("SELECT count(*) FROM labels WHERE is_current AND revision > 1").fetchall()[0][0]
        assert revised > 100  # corrections count; stale revisions are history
    (tmp / "msewatch.toml").write_text(CONFIG, encoding="utf-8")
    lake = tmp / "lake"
    run = run_cli(["export", "--db", db, "--out", lake], cwd=tmp)
    assert run.returncode == 0, run
    config = load_config(tmp / "msewatch.toml")
    con = duckdb.connect(str(db), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    try:
        reference = {f: _views(con, config, FILTERS[f]) for f in FILTERS}
        tables = _tables(con)
    finally:
        con.close()
    return {"tmp": tmp, "db": db, "lake": lake, "config": config, "reference": reference, "tables": tables}


#: what engine_store fills, read back in one order; the raw rows are those of its window
TABLES = {
    "rollups": "SELECT * FROM rollups ORDER BY model, version, bucket_start",
    "segment_rollups": "SELECT * FROM segment_rollups ORDER BY model, version, segment, value, bucket_start",
    "rollup_good": "SELECT * FROM rollup_good ORDER BY ALL",
    "slo_thresholds": "SELECT * FROM slo_thresholds ORDER BY ALL",
    "extra_columns": "SELECT name, kind FROM extra_columns ORDER BY added_at, name",
    "window": """SELECT p.prediction_id, p.ts, p.model, p.version, p.y_pred, p.region, p.channel, p.basket_value,
        p.distance_km, l.y_true, l.label_ts, l.revision
        FROM predictions p LEFT JOIN labels l ON l.prediction_id = p.prediction_id AND l.is_current
        WHERE p.ts >= (SELECT max(bucket_start) FROM rollups r WHERE r.model = p.model) + INTERVAL 1 MINUTE - INTERVAL 4 DAY
        ORDER BY p.prediction_id""",
}


def _tables(con: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}


FILTERS = {
    "pricing": Filters(model="pricing"),
    "latam_v2": Filters(model="pricing", version="v2", cohort="region", cohort_value="latam"),
}


@pytest.fixture(scope="module")
def built(world: dict[str, Any]) -> Any:
    """engine name → the views over engine_store on that engine (built once per module)."""
    cache: dict[str, Any] = {}
    engines: list[Any] = []

    def get(name: str) -> dict[str, Any]:
        if name not in cache:
            engine = open_engine(name)
            engines.append(engine)
            thresholds = {"pricing": [6.0]}
            with engine_store(engine, EngineTables(lake=str(world["lake"])), thresholds=thresholds) as store:
                cache[name] = {f: _views(store.con, world["config"], FILTERS[f], alerts=[]) for f in FILTERS}
                cache[name]["tables"] = _tables(store.con)
        return cache[name]

    yield get
    for engine in engines:
        close_engine(engine)


# -- comparison -----------------------------------------------------------------------------------
def _key(row: Any) -> str:
    """A sort key of a row, floats to 9 digits (below the comparison's tolerance)."""
    if isinstance(row, dict):
        return json.dumps({k: _key(v) for k, v in sorted(row.items())})
    if isinstance(row, float):
        return f"{row:.9e}"
    return json.dumps(row)


def _same(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            out.append(f"{path}: keys {sorted(set(a) ^ set(b))}")
        for k in set(a) & set(b):
            _same(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} items vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float):
        if not math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-300):
            out.append(f"{path}: {a!r} vs {b!r}")
    elif type(a) is not type(b) or a != b:  # counts and text exactly (1 is not 1.0)
        out.append(f"{path}: {a!r} vs {b!r}")


def _parts(views: dict[str, Any]) -> dict[tuple[str, str, str], Any]:
    """Every chart and table of every view, by (view, kind, id); unordered charts sorted."""
    out: dict[tuple[str, str, str], Any] = {}
    for name, view in views.items():
        for chart in view["charts"]:
            chart = json.loads(json.dumps(chart))
            if chart["id"] in UNORDERED:
                chart["spec"]["data"]["values"].sort(key=_key)
            out[(name, "charts", chart["id"])] = chart
        for table in view["tables"]:
            out[(name, "tables", table["id"])] = table
        out[(name, "head", "")] = {k: v for k, v in view.items() if k not in ("charts", "tables")}
    return out


def _differences(store_views: dict[str, Any], engine_views: dict[str, Any]) -> dict[tuple[str, str, str], list[str]]:
    a, b = _parts(store_views), _parts(engine_views)
    assert set(a) == set(b)
    found = {}
    for key in a:
        out: list[str] = []
        _same(a[key], b[key], "", out)
        if out:
            found[key] = out
    return found


# -- the tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("filters", list(FILTERS))
def test_views_over_the_engine_equal_the_store(world: dict[str, Any], built: Any, engine: str, filters: str) -> None:
    ref, got = world["reference"][filters], built(engine)[filters]
    assert [c["id"] for v in got.values() for c in v["charts"]] == [c["id"] for v in ref.values() for c in v["charts"]]
    drawn = {(v, c["id"]): c["n"] for v in ref for c in ref[v]["charts"]}
    if filters == "pricing":  # the data exercises every panel: no empty chart
        assert all(n > 0 for n in drawn.values()), drawn
    else:  # the cohort's hourly rollups feed the series; its rows the debug view
        assert all(drawn[k] > 0 for k in (("executive", "rmse_30d"), ("oncall", "versions_mse"), ("debug", "sq_error_hist"))), drawn
    assert ref["oncall"].get("canary") and ref["oncall"]["canary"]["verdict"] in ("pass", "continue", "fail")
    notes = {r[1] for r in {t["id"]: t for t in ref["oncall"]["tables"]}["annotations"]["rows"]}
    assert filters != "pricing" or any("revised" in n for n in notes)
    differences = _differences(ref, got)
    assert differences == {}, json.dumps({"/".join(k): v[:5] for k, v in differences.items()}, indent=1)[:4000]
    for view, kind, name in ENGINE_HAS_NO:  # no monitor state on an engine; none in this store either
        part = {t["id"]: t for t in got[view][kind]}[name]
        assert part["rows"] == []


@pytest.mark.parametrize("engine", ENGINES)
def test_aggregates_and_raw_window_equal_the_store(world: dict[str, Any], built: Any, engine: str) -> None:
    """Every column of the rollups (also those the views do not draw: Σ|r|, Σape, Σhuber, the means
    and centred sums of squares), the segment rollups, the good counts, the extras and the raw window."""
    ref, got = world["tables"], built(engine)["tables"]
    assert len(ref["rollups"]) > 10_000 and len(ref["segment_rollups"]) > 1000 and len(ref["window"]) > 3000
    for name in TABLES:
        out: list[str] = []
        _same([list(r) for r in ref[name]], [list(r) for r in got[name]], name, out)
        assert out == [], out[:10]


def test_a_recorded_baseline_is_the_one_named_difference(world: dict[str, Any], built: Any, tmp_path: Path) -> None:
    """`msewatch baseline set` records a baseline in the store; an engine has none, so the versions are
    ranked against the default one and the features compared with the previous period instead."""
    copy = tmp_path / "with_baseline.duckdb"
    shutil.copy(world["db"], copy)
    since = dt.datetime.fromtimestamp(T0 + 3 * 86400, dt.timezone.utc).isoformat()
    until = dt.datetime.fromtimestamp(T0 + 10 * 86400, dt.timezone.utc).isoformat()
    run = run_cli(["baseline", "set", "--db", copy, "--model", "pricing", "--since", since, "--until", until], cwd=tmp_path)
    assert run.returncode == 0, run
    con = duckdb.connect(str(copy), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    try:
        ref = _views(con, world["config"], FILTERS["pricing"])
    finally:
        con.close()
    differences = _differences(ref, built("duckdb")["pricing"])
    assert set(differences) == RECORDED_BASELINE, sorted(differences)


def test_report_command_on_an_engine(world: dict[str, Any], tmp_path: Path, cli_many: Any) -> None:
    out = tmp_path / "report.html"
    run, plain = cli_many([
        ["report", "--engine", "duckdb://", "--lake", world["lake"], "--model", "pricing",
         "--config", world["tmp"] / "msewatch.toml", "--out", out],
        ["report", "--lake", world["lake"], "--out", tmp_path / "plain.html"],  # --lake alone: read in DuckDB
    ])
    assert run.returncode == 0, run
    assert "aggregates computed by duckdb" in run.stderr and "wrote" in run.stderr
    text = out.read_text(encoding="utf-8")
    assert "msewatch report · pricing" in text and "pricing-accuracy" in text
    assert plain.returncode == 0, plain
    assert "of model 'demand'" in plain.stderr  # the first model, as on a store


def test_report_engine_errors(world: dict[str, Any], tmp_path: Path, cli_many: Any) -> None:
    out = tmp_path / "r.html"
    empty = tmp_path / "empty.duckdb"  # tables without a row: nothing to report
    con = duckdb.connect(str(empty))
    con.execute("CREATE TABLE predictions (prediction_id VARCHAR, ts TIMESTAMPTZ, model VARCHAR, version VARCHAR, y_pred DOUBLE)")
    con.execute("CREATE TABLE labels (prediction_id VARCHAR, y_true DOUBLE, label_ts TIMESTAMPTZ)")
    con.close()
    runs = cli_many([
        ["report", "--engine", "duckdb://", "--lake", tmp_path / "nope", "--out", out],
        ["report", "--db", world["db"], "--lake", world["lake"], "--out", out],
        ["report", "--engine", f"duckdb://{empty}", "--out", out],
    ])
    expected = ["no predictions/ directory", "give one of them", "holds no predictions"]
    for run, text in zip(runs, expected):
        assert run.returncode == 2 and text in run.stderr and "Traceback" not in run.stderr, run
    assert not out.exists()
