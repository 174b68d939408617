"""Drift (M10): agreement with SciPy, false-alarm rates on identical distributions, known shifts,
the engine against NumPy and the files, the CLI, and the `drift` alert rule."""

from __future__ import annotations

import datetime as dt
import math
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import assert_usage_error
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from msewatch import cli_drift
from msewatch.errors import InputError
from msewatch.monitor.config import DRIFT_TESTS, AlertRule, MonitorConfig, parse_monitor
from msewatch.monitor.drift import (
    TESTS,
    DriftSettings,
    chi2_sf,
    compare,
    drift_from_files,
    drift_from_store,
    kolmogorov_sf,
    numpy_categorical,
    numpy_numeric,
    psi,
    psi_band,
)
from msewatch.monitor.engine import Monitor
from msewatch.monitor.rules import RULE_RUNBOOKS
from msewatch.store import Store

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
UTC = dt.UTC
DAY = 86_400


def _at(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(T0 + seconds, UTC)


def _close(a: float | None, b: float | None, rel: float, abs_: float = 0.0) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# -------------------------------------------------------------------- agreement with SciPy


def _ks_case(x: np.ndarray, y: np.ndarray) -> None:
    ours = numpy_numeric(x, y)
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # SciPy: n·m/(n+m) rounds to 0 for 1 vs 1
        warnings.simplefilter("ignore")
        ref = stats.ks_2samp(x, y, method="asymp")
    assert ours["ks"] == pytest.approx(float(ref.statistic), rel=1e-12, abs=1e-15)
    if math.isnan(ref.pvalue):
        assert ours["ks_p_value"] is None
    else:
        assert _close(ours["ks_p_value"], float(ref.pvalue), rel=1e-6, abs_=1e-12), (ours, ref)


@pytest.mark.parametrize("n1,n2", [(1, 1), (3, 7), (20, 20), (50, 130), (150, 160), (400, 900), (5000, 3000),
                                   (150_000, 90_000)])
@pytest.mark.parametrize("ties", [False, True])
def test_ks_statistic_and_pvalue_match_scipy_asymp(n1: int, n2: int, ties: bool) -> None:
    rng = np.random.default_rng(n1 * 7 + n2)
    for shift in (0.0, 0.05, 0.3):
        x = rng.normal(0, 1, n1)
        y = rng.normal(shift, 1, n2)
        if ties:
            x, y = np.round(x, 1), np.round(y, 1)
        _ks_case(x, y)


def test_kolmogorov_sf_matches_scipy_kstwo_on_every_branch() -> None:
    """Ruben–Gambino, Durbin, Pomeranz, Smirnov, Pelz–Good and the huge-n approximation."""
    worst = 0.0
    for n in (1, 2, 5, 30, 140, 141, 1000, 100_000, 100_001, 300_000, 1_000_001):
        k = 40 if n < 100_000 else 5  # SciPy takes a tenth of a second a point there
        grid = np.concatenate([np.linspace(1e-4, 0.999, k), np.sqrt(np.linspace(0.05, 25, k) / n)])
        for x in np.minimum(grid, 0.999):
            ours, ref = kolmogorov_sf(n, float(x)), float(stats.kstwo.sf(x, n))
            worst = max(worst, min(abs(ours - ref), abs(ours - ref) / max(ref, 1e-300)))
    assert worst < 1e-8


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=1, max_size=40),
    st.lists(st.integers(-3, 3), min_size=1, max_size=40),
)
def test_ks_on_tiny_samples_with_ties_matches_scipy(x: list[int], y: list[int]) -> None:
    _ks_case(np.array(x, dtype=float), np.array(y, dtype=float))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=60),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60),
)
def test_wasserstein_matches_scipy(x: list[float], y: list[float]) -> None:
    ours = numpy_numeric(x, y)
    w = stats.wasserstein_distance(x, y)
    assert ours["wasserstein"] == pytest.approx(w, rel=1e-9, abs=1e-9)
    if np.std(x) > 0:
        assert ours["wasserstein_norm"] == pytest.approx(w / np.std(x), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from("abcde"), min_size=1, max_size=80),
    st.lists(st.sampled_from("abcdef"), min_size=1, max_size=80),
)
def test_jensen_shannon_and_chi2_match_scipy(x: list[str], y: list[str]) -> None:
    ours = numpy_categorical(x, y)
    cats = sorted(set(x) | set(y))
    a = [x.count(c) for c in cats]
    b = [y.count(c) for c in cats]
    assert ours["js"] == pytest.approx(float(jensenshannon(a, b, base=2)), rel=1e-9, abs=1e-12)
    if len(cats) > 1:
        chi2, p, _, _ = stats.chi2_contingency([a, b], correction=False)
        assert ours["chi2"] == pytest.approx(chi2, rel=1e-9, abs=1e-12)
        assert ours["chi2_p_value"] == pytest.approx(p, rel=1e-9, abs=1e-15)


def test_chi2_sf_matches_scipy() -> None:
    for dof in (1, 2, 3, 7, 40, 500):
        for x in (0.01, 0.5, 1.0, 3.0, dof, 2.5 * dof, 60.0, 400.0, 2000.0):
            assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)


def test_psi_definition_and_bands() -> None:
    # (p_cur − p_ref)·ln(p_cur/p_ref), an empty bin counting 1e-4
    a, b = [50, 30, 20, 0], [25, 25, 25, 25]
    p, q = np.array([0.5, 0.3, 0.2, 1e-4]), np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(a, b) == pytest.approx(float(np.sum((q - p) * np.log(q / p))), rel=1e-12)
    assert [psi_band(v) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == [
        "none", "none", "moderate", "moderate", "major", "major"]


# ------------------------------------------------------------------- false alarms and shifts


def _wide(samples: list[tuple[np.ndarray, np.ndarray]], kind: str = "numeric") -> tuple[duckdb.DuckDBPyConnection, str]:
    """One table holding many independent comparisons, one column each (side-tagged rows)."""
    n_ref, n_cur = len(samples[0][0]), len(samples[0][1])
    data = {"_side": np.r_[np.zeros(n_ref, int), np.ones(n_cur, int)]}
    for i, (a, b) in enumerate(samples):
        data[f"_v{i}"] = np.concatenate([a, b])
    con = duckdb.connect()
    con.register("wide", pa.table(data))
    return con, "SELECT * FROM wide"


def _run(samples: list[tuple[np.ndarray, np.ndarray]], kind: str, **kw: object) -> list:
    con, sql = _wide(samples, kind)
    rows, _ = compare(con, sql, {}, [(f"c{i}", kind) for i in range(len(samples))], DriftSettings(**kw))
    con.close()
    return rows


def _binomial_band(trials: int, p: float, sds: float = 3.5) -> tuple[float, float]:
    sd = math.sqrt(trials * p * (1 - p))
    return trials * p - sds * sd, trials * p + sds * sd


PAIRS = 400


def test_false_alarm_rate_on_identical_numeric_distributions() -> None:
    """KS rejects at its nominal rate; the auto flag (KS and a material effect) no more often."""
    rng = np.random.default_rng(2026)
    samples = [(rng.normal(0, 1, 300), rng.normal(0, 1, 300)) for _ in range(PAIRS)]
    rows = _run(samples, "numeric", alpha=0.05, bonferroni=False)
    p = np.array([r.ks_p_value for r in rows])
    for alpha in (0.01, 0.05, 0.10):
        low, high = _binomial_band(PAIRS, alpha)
        assert low <= np.sum(p < alpha) <= high, (alpha, np.sum(p < alpha))
    flagged = sum(r.drift for r in rows)
    assert flagged <= np.sum(p < 0.05)
    assert flagged <= _binomial_band(PAIRS, 0.05)[1]
    # with the default Bonferroni across the 400 columns, one run raises no false flag
    assert not any(r.drift for r in _run(samples, "numeric", alpha=0.01))


def test_false_alarm_rate_on_identical_categorical_distributions() -> None:
    rng = np.random.default_rng(7)
    shares = [0.4, 0.3, 0.15, 0.1, 0.05]
    cats = np.array(["a", "b", "c", "d", "e"])
    samples = [(rng.choice(cats, 300, p=shares), rng.choice(cats, 300, p=shares)) for _ in range(PAIRS)]
    rows = _run(samples, "categorical", alpha=0.05, bonferroni=False)
    p = np.array([r.chi2_p_value for r in rows])
    low, high = _binomial_band(PAIRS, 0.05)
    assert low <= np.sum(p < 0.05) <= high
    assert sum(r.drift for r in rows) <= high


def test_known_shifts_are_detected() -> None:
    rng = np.random.default_rng(11)
    n = 2000
    km = rng.lognormal(2.0, 0.6, 2 * n)
    samples = [
        (rng.normal(0, 1, n), rng.normal(0.3, 1, n)),  # mean shift of 0.3 sd
        (rng.normal(0, 1, n), rng.normal(0, 1.5, n)),  # scale change
        (km[:n], km[n:] / 1.609),  # km → miles, like the demo
        (rng.normal(5, 2, n), rng.normal(5, 2, n)),  # unchanged
    ]
    rows = _run(samples, "numeric")
    assert [r.drift for r in rows] == [True, True, True, False], rows
    assert rows[0].psi < 0.1 < rows[0].wasserstein_norm  # the small shift is material by Wasserstein
    assert rows[2].psi_band == "major"
    cats = np.array(["eu", "us", "apac"])
    old = rng.choice(cats, n, p=[0.5, 0.3, 0.2])
    new = np.where(rng.random(n) < 0.6, "latam", rng.choice(cats, n, p=[0.5, 0.3, 0.2]))
    rows = _run([(old, new), (old, rng.choice(cats, n, p=[0.5, 0.3, 0.2]))], "categorical")
    assert [r.drift for r in rows] == [True, False]
    assert rows[0].js > 0.4 and rows[0].psi_band == "major"


def test_large_samples_need_a_material_effect() -> None:
    """KS rejects a trivial shift of 0.02 sd at n = 200 000; auto does not call it drift."""
    rng = np.random.default_rng(5)
    rows = _run([(rng.normal(0, 1, 200_000), rng.normal(0.02, 1, 200_000))], "numeric")
    assert rows[0].ks_p_value < 1e-6 and rows[0].wasserstein_norm < 0.1 and rows[0].psi < 0.1
    assert not rows[0].drift
    assert _run([(rng.normal(0, 1, 200_000), rng.normal(0.02, 1, 200_000))], "numeric", test="ks")[0].drift


def test_small_samples_and_degenerate_columns_get_no_verdict() -> None:
    rng = np.random.default_rng(3)
    rows = _run([(rng.normal(0, 1, 50), rng.normal(3, 1, 50))], "numeric")
    assert rows[0].test == "none" and not rows[0].drift and "fewer than 100" in rows[0].note
    assert rows[0].ks is not None  # measured all the same
    rows = _run([(np.zeros(200), np.ones(200))], "numeric")  # constant reference
    assert rows[0].wasserstein_norm is None and rows[0].drift  # KS and PSI see it
    ids = [(np.array([f"id{i}" for i in range(1500)]), np.array([f"id{i}" for i in range(1500, 3000)]))]
    row = _run(ids, "categorical")[0]
    assert row.test == "none" and "id-like" in row.note


def test_explicit_tests_decide_alone() -> None:
    rng = np.random.default_rng(9)
    shifted = [(rng.normal(0, 1, 1000), rng.normal(0.5, 1, 1000))]
    for test, statistic in (("ks", "ks"), ("psi", "psi"), ("wasserstein", "wasserstein_norm")):
        row = _run(shifted, "numeric", test=test)[0]
        assert row.test == test and row.drift
        assert row.statistic == getattr(row, statistic)
        assert (row.p_value is None) == (test != "ks")
    row = _run(shifted, "numeric", test="js")[0]  # js does not apply to numbers: auto decides
    assert row.test == "ks"
    assert TESTS == DRIFT_TESTS == cli_drift.TESTS


# -------------------------------------------------------------------------- engine and files


def _ingest(store: Store, kind: str, table: pa.Table) -> None:
    table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype="int64")))
    result = store.ingest_batches(kind, table.to_batches())
    assert not result.rejects, result.rejects[:3]


def _frame(n: int, seed: int, *, shift: bool) -> pa.Table:
    """Two days of predictions of model m: the second day is 'current'."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.uniform(0, 2 * DAY, n))
    cur = ts >= T0 + DAY
    km = rng.lognormal(2.0, 0.5, n)
    dist = np.where(cur, km / 1.609, km) if shift else km  # an upstream unit change: km → miles
    region = rng.choice(["eu", "us", "apac"], n, p=[0.5, 0.3, 0.2])
    y = 3.0 * np.log(km) + rng.normal(0, 1, n)
    return pa.table({
        "prediction_id": [f"p{seed}-{i}" for i in range(n)],
        "ts": pa.array((ts * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
        "model": ["m"] * n,
        "version": np.where(rng.random(n) < 0.5, "v1", "v2"),
        "y_pred": np.round(y + rng.normal(0, 0.5, n), 2),  # ties
        "distance": dist,
        "hour": rng.integers(0, 24, n).astype(float),  # many ties
        "region": region,
        "y_true": y,
    })


def _store(frame: pa.Table, path: str = ":memory:") -> Store:
    store = Store(path)
    _ingest(store, "predictions", frame.drop_columns(["y_true"]))
    labeled = np.random.default_rng(1).random(frame.num_rows) < 0.8
    _ingest(store, "labels", frame.filter(pa.array(labeled)).select(["prediction_id", "y_true"]))
    return store


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, Path]:
    frame = _frame(3000, 21, shift=True)
    path = tmp_path_factory.mktemp("drift") / "store.duckdb"
    _store(frame, str(path)).close()
    return frame, path


def _sides(frame: pa.Table) -> tuple[pa.Table, pa.Table]:
    ts = frame.column("ts").cast(pa.int64()).to_numpy() / 1e6
    cur = ts >= T0 + DAY
    return frame.filter(pa.array(~cur)), frame.filter(pa.array(cur))


def test_engine_equals_numpy_and_scipy(shifted: tuple[pa.Table, Path]) -> None:
    frame, path = shifted
    store = Store(path, read_only=True)
    report = drift_from_store(store.con, "m", current=(_at(DAY), _at(2 * DAY)), reference=(_at(0), _at(DAY)))
    store.close()
    assert [c.column for c in report.columns] == ["distance", "hour", "region", "y_pred", "y_true"]
    ref, cur = _sides(frame)
    labeled = np.random.default_rng(1).random(frame.num_rows) < 0.8
    ts = frame.column("ts").cast(pa.int64()).to_numpy() / 1e6
    rows = {c.column: c for c in report.columns}
    for name in ("distance", "hour", "y_pred", "y_true"):
        a, b = ref.column(name).to_numpy(), cur.column(name).to_numpy()
        if name == "y_true":  # through the current labels
            full = frame.column("y_true").to_numpy()
            a, b = full[labeled & (ts < T0 + DAY)], full[labeled & (ts >= T0 + DAY)]
        row, ours = rows[name], numpy_numeric(a, b)
        assert (row.n_reference, row.n_current) == (len(a), len(b))
        assert row.ks == ours["ks"] == pytest.approx(stats.ks_2samp(a, b, method="asymp").statistic, rel=1e-12)
        assert row.ks_p_value == pytest.approx(stats.ks_2samp(a, b, method="asymp").pvalue, rel=1e-6, abs=1e-12)
        assert row.wasserstein_norm == pytest.approx(stats.wasserstein_distance(a, b) / np.std(a), rel=1e-9)
        assert row.psi == pytest.approx(ours["psi"], rel=1e-12, abs=1e-15)
    a, b = ref.column("region").to_pylist(), cur.column("region").to_pylist()
    cats = sorted(set(a) | set(b))
    assert rows["region"].js == pytest.approx(
        jensenshannon([a.count(c) for c in cats], [b.count(c) for c in cats], base=2), rel=1e-9)
    assert rows["region"].psi == pytest.approx(numpy_categorical(a, b)["psi"], rel=1e-12)
    assert report.drifting == ["distance"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(-4, 4).map(lambda v: v / 2), min_size=1, max_size=50),
    st.lists(st.integers(-4, 6).map(lambda v: v / 2), min_size=1, max_size=50),
)
def test_engine_equals_numpy_on_small_samples_with_ties(x: list[float], y: list[float]) -> None:
    con = duckdb.connect()
    con.register("t", pa.table({"_side": [0] * len(x) + [1] * len(y), "_v0": x + y}))
    row = compare(con, "SELECT * FROM t", {}, [("c", "numeric")])[0][0]
    con.close()
    ours = numpy_numeric(x, y)
    assert (row.n_reference, row.n_current) == (len(x), len(y))
    assert row.ks == ours["ks"] and row.ks_p_value == ours["ks_p_value"]
    assert row.psi == pytest.approx(ours["psi"], rel=1e-12, abs=1e-15)
    if ours["wasserstein_norm"] is None:
        assert row.wasserstein_norm in (None, 0.0)
    else:
        assert row.wasserstein_norm == pytest.approx(ours["wasserstein_norm"], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_files_equal_the_store(shifted: tuple[pa.Table, Path], tmp_path: Path, suffix: str) -> None:
    frame, path = shifted
    store = Store(path, read_only=True)
    columns = ["distance", "hour", "region", "y_pred"]
    expected = drift_from_store(store.con, "m", current=(_at(DAY), _at(2 * DAY)), reference=(_at(0), _at(DAY)),
                                columns=columns)
    by_version = drift_from_store(store.con, "m", current=(_at(DAY), _at(2 * DAY)), reference=(_at(0), _at(DAY)),
                                  columns=columns, version="v2")
    store.close()
    ref, cur = _sides(frame)
    files = []
    for name, table in (("ref", ref), ("cur", cur)):
        out = tmp_path / f"{name}{suffix}"
        if suffix == ".csv":
            pacsv.write_csv(table.drop_columns(["y_true"]), out)
        else:
            pq.write_table(table.drop_columns(["y_true"]), out)
        files.append(out)
    got = drift_from_files(files[1], files[0], model="m")
    assert [c.column for c in got.columns] == columns
    for e, g in zip(expected.columns, got.columns):
        assert (e.kind, e.n_reference, e.n_current, e.drift) == (g.kind, g.n_reference, g.n_current, g.drift)
        for f in ("ks", "ks_p_value", "psi", "wasserstein_norm", "js"):
            a, b = getattr(e, f), getattr(g, f)
            assert (a is None and b is None) or b == pytest.approx(a, rel=1e-9, abs=1e-15), (e.column, f)
    got_v2 = drift_from_files(files[1], files[0], model="m", version="v2", columns=columns)
    assert [c.n_current for c in got_v2.columns] == [c.n_current for c in by_version.columns]
    with pytest.raises(InputError, match="no column 'nope'"):
        drift_from_files(files[1], files[0], columns=["nope"])


# --------------------------------------------------------------------------------------- CLI


def test_cli_table_json_and_usage_errors(shifted: tuple[pa.Table, Path], tmp_path: Path, cli_many) -> None:
    frame, path = shifted
    ref, cur = _sides(frame)
    pq.write_table(ref, tmp_path / "ref.parquet")
    pq.write_table(cur, tmp_path / "cur.parquet")
    period = ["--current-since", "2026-01-02T00:00:00Z", "--current-until", "2026-01-03T00:00:00Z",
              "--reference-since", "2026-01-01T00:00:00Z", "--reference-until", "2026-01-02T00:00:00Z"]
    store = ["drift", "--db", path]
    model = [*store, "--model", "m"]
    table, js, files, *errors = cli_many([
        [*model, *period],
        [*model, "--at", "2026-01-03T00:00:00Z", "--reference-since", "2026-01-01T00:00:00Z",
         "--columns", "distance,region", "--format", "json"],
        ["drift", "--current", "cur.parquet", "--reference", "ref.parquet", "--format", "json"],
        store,
        ["drift", "--current", "cur.parquet"],
        [*store, "--current", "cur.parquet", "--reference", "ref.parquet"],
        [*model, "--columns", "nope"],
        [*model, "--alpha", "2"],
        [*model, "--current-since", "2026-01-03", "--current-until", "2026-01-02"],
        [*store, "--model", "nobody"],
        [*model, "--current-since", "yesterday"],
        [*model, "--pred-col", "p"],
    ])
    assert table.returncode == 0, table
    assert "distance" in table.stdout and "DRIFT" in table.stdout and "drifting: distance" in table.stdout
    assert js.returncode == 0, js
    out = js.json()
    assert out["current"]["since"].startswith("2026-01-02T00:00:00")
    assert out["reference"]["until"].startswith("2026-01-02T00:00:00")
    assert [c["column"] for c in out["columns"]] == ["distance", "region"]
    assert set(out["columns"][0]) == {"column", "kind", "n_reference", "n_current", "test", "statistic", "p_value",
                                      "psi", "psi_band", "wasserstein_norm", "js", "drift", "note"}
    assert out["drifting"] == ["distance"] and out["alpha_per_column"] == pytest.approx(0.005)
    assert files.returncode == 0, files
    assert files.json()["drifting"] == ["distance"] and len(files.json()["columns"]) == 5
    needles = ["--model", "--reference", "--db", "nope", "--alpha", "current period", "nobody", "--current-since",
               "--pred-col"]
    for run, needle in zip(errors, needles, strict=True):
        assert_usage_error(run, needle)


# -------------------------------------------------------------------------------- the rule


def test_drift_rule_fires_on_a_shifted_feature_only(shifted: tuple[pa.Table, Path]) -> None:
    rule = AlertRule("FeatureDrift", "drift", "m", severity="ticket", window=DAY, reference=DAY)
    fired = Monitor(MonitorConfig(rules=(rule,)), _store(shifted[0]).con).evaluate(_at(2 * DAY), notify=False)
    assert not fired.errors
    assert [f.labels["column"] for f in fired.findings] == ["distance"]
    finding = fired.findings[0]
    assert dict(finding.labels) == {"alertname": "FeatureDrift", "rule": "drift", "model": "m",
                                    "severity": "ticket", "column": "distance"}
    assert finding.annotations["runbook"] == RULE_RUNBOOKS["drift"]
    assert "distance" in finding.annotations["summary"] and finding.value > 0
    calm = Monitor(MonitorConfig(rules=(rule,)), _store(_frame(3000, 22, shift=False)).con)
    assert calm.evaluate(_at(2 * DAY), notify=False).findings == []
    only = AlertRule("RegionDrift", "drift", "m", window=DAY, reference=DAY, columns=("region",))
    assert Monitor(MonitorConfig(rules=(only,)), _store(shifted[0]).con).evaluate(_at(2 * DAY)).findings == []


def test_drift_rule_config() -> None:
    parsed = parse_monitor({"alerts": [{"name": "d", "type": "drift", "model": "m", "window": "1d",
                                        "reference": "14d", "columns": ["a", "b"], "test": "psi",
                                        "alpha": 0.05, "min_effect": 0.2}]}, "msewatch.toml")
    rule = parsed.rules[0]
    assert (rule.type, rule.window, rule.reference, rule.columns, rule.test, rule.alpha, rule.min_effect) == (
        "drift", DAY, 14 * DAY, ("a", "b"), "psi", 0.05, 0.2)
    for bad in ({"columns": "a"}, {"test": "chi2"}, {"alpha": 1.5}, {"reference": "soon"}):
        with pytest.raises(InputError):
            parse_monitor({"alerts": [{"name": "d", "type": "drift", "model": "m", **bad}]}, "msewatch.toml")
