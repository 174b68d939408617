"""`msewatch gate`: the CI check on a candidate's MSE against a baseline's.

The gate on real models (scikit-learn regressors on the bundled diabetes data, out-of-fold
predictions so every row is a holdout row), the statistics against direct NumPy computations
and a coverage simulation, every exit status and output format through real subprocesses, and
bad inputs, each one clear line on stderr.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_usage_error, write_csv, write_parquet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msewatch.errors import InputError
from msewatch.monitor import gate

JSON_KEYS = {"verdict", "delta_mse_pct", "ci", "n", "mse_candidate", "mse_baseline", "rmse_candidate",
             "rmse_baseline", "method", "reasons", "cohorts", "unpaired", "checks"}


# -- real models -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Out-of-fold predictions of four regressors on the 442 rows of sklearn's diabetes data."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_predict

    x, y = load_diabetes(return_X_y=True)
    folds = KFold(5, shuffle=True, random_state=0)

    def boosted(seed: int) -> GradientBoostingRegressor:
        return GradientBoostingRegressor(n_estimators=100, max_depth=2, learning_rate=0.05, subsample=0.7,
                                         random_state=seed)

    models = {
        "gbr_seed0": boosted(0),
        "gbr_seed1": boosted(1),  # the same model retrained with another seed
        "ridge_weak": Ridge(alpha=100.0),  # shrunk almost to the mean: truly worse
    }
    out = tmp_path_factory.mktemp("diabetes")
    ids = pa.array([f"row-{i}" for i in range(len(y))])
    sex = pa.array(np.where(x[:, 1] > 0, "m", "f"))
    paths = {}
    for name, model in models.items():
        pred = cross_val_predict(model, x, y, cv=folds)
        paths[name] = write_parquet(out / f"{name}.parquet",
                                    {"prediction_id": ids, "y_pred": pred, "y_true": y, "sex": sex})
    return paths


def test_real_models(diabetes: dict[str, Path], cli_many: Any) -> None:
    worse, better, reseeded = cli_many([
        ["gate", "--candidate", diabetes["ridge_weak"], "--baseline", diabetes["gbr_seed0"],
         "--max-increase", "5%", "--by", "sex", "--format", "json"],
        ["gate", "--candidate", diabetes["gbr_seed0"], "--baseline", diabetes["ridge_weak"],
         "--max-increase", "0", "--format", "json"],
        ["gate", "--candidate", diabetes["gbr_seed1"], "--baseline", diabetes["gbr_seed0"],
         "--max-increase", "5%", "--by", "sex", "--format", "json"],
    ])
    assert worse.returncode == 1, str(worse)
    w = worse.json()
    assert w["verdict"] == "fail" and w["delta_mse_pct"] > 50 and w["ci"][1] > 5 and w["n"] == 442
    assert any("--max-increase 5%" in r for r in w["reasons"])
    assert {c["cohort"] for c in w["cohorts"]} == {"sex=m", "sex=f"}
    assert all(c["status"] == "fail" for c in w["cohorts"])  # each sex is worse too

    assert better.returncode == 0, str(better)
    b = better.json()
    assert b["verdict"] == "pass" and b["ci"][1] < -20 and b["mse_candidate"] < b["mse_baseline"]

    assert reseeded.returncode == 0, str(reseeded)
    r = reseeded.json()
    assert r["verdict"] == "pass" and abs(r["delta_mse_pct"]) < 5 and r["ci"][0] < r["delta_mse_pct"] < r["ci"][1]
    assert all(c["status"] == "pass" for c in r["cohorts"])


# -- statistics --------------------------------------------------------------------------------
residuals = st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=3, max_size=60)


def _squares(pairs: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    r = np.array(pairs, dtype=float)
    return r[:, 0] ** 2, r[:, 1] ** 2


@given(residuals, st.integers(0, 4))
@settings(max_examples=150, deadline=None)
def test_delta_method_matches_numpy(pairs: list[tuple[float, float]], lag: int) -> None:
    a, b = _squares(pairs)
    if b.mean() <= 1e-6:
        return
    n = len(a)
    delta, se = gate.delta_method(a, b, lag=lag)
    assert delta == pytest.approx(100 * ((a - b).mean() / b.mean()), rel=1e-9, abs=1e-9)
    ratio = a.mean() / b.mean()
    if lag == 0:  # var(a − R b) from the covariance matrix
        cov = np.cov(a, b, ddof=1)
        var = cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]
    else:  # Newey–West by the textbook sum
        psi = a - ratio * b
        psi = psi - psi.mean()
        var = sum(psi[t] * psi[t] for t in range(n))
        for k in range(1, min(lag, n - 1) + 1):
            var += 2 * (1 - k / (lag + 1)) * sum(psi[t] * psi[t - k] for t in range(k, n))
        var = max(var, 0.0) / (n - 1)
    expected = 100 * math.sqrt(max(var, 0.0) / n) / b.mean()
    scale = 100 * math.sqrt((np.var(a, ddof=1) + ratio**2 * np.var(b, ddof=1)) / n) / b.mean()
    assert abs(se - expected) <= 1e-6 * scale + 1e-12  # both sides cancel terms of this size


@given(residuals, st.lists(st.floats(0, 1), min_size=60, max_size=60), st.floats(0, 50),
       st.sampled_from([0, 200]), st.integers(0, 2))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_an_improvement_never_fails(pairs: list[tuple[float, float]], shrink: list[float], margin: float,
                                    replicates: int, lag: int) -> None:
    """A candidate at least as close as the baseline on every row passes at any margin ≥ 0."""
    r = np.array(pairs, dtype=float)
    r_base = r[:, 1]
    r_cand = r_base * np.array(shrink[: len(r)])
    a, b = r_cand**2, r_base**2
    if b.mean() <= 1e-6:
        return
    codes = (np.arange(len(a)) % 3).astype(np.int64)
    data = gate.GateInput(a, b, cohorts={"k": (codes, ["x", "y", "z"])}, rows={"candidate": len(a), "baseline": len(a)})
    report = gate.run_gate(data, gate.GateOptions(max_increase=margin, bootstrap=replicates, min_n=2, hac_lag=lag))
    assert report.verdict == "pass", report.reasons
    assert report.ci[1] <= 1e-9


def test_one_sided_a_large_improvement_passes_at_zero_margin() -> None:
    rng = np.random.default_rng(3)
    r_base = rng.standard_t(3, 2000)
    r_cand = r_base * 0.7 + rng.normal(0, 0.3, 2000)  # better on average, worse on some rows
    data = gate.GateInput(r_cand**2, r_base**2, rows={"candidate": 2000, "baseline": 2000})
    for replicates in (0, 2000):
        report = gate.run_gate(data, gate.GateOptions(max_increase=0.0, bootstrap=replicates))
        assert report.passed and report.delta_mse_pct < -20


def test_bootstrap_and_delta_cover_the_true_delta_at_the_nominal_rate() -> None:
    """200 holdouts of 300 rows with a true ΔMSE of +9%: the 95% upper bound covers it about
    95% of the time and the central 90% interval about 90% (binomial tolerance, 3.5 sd)."""
    rng = np.random.default_rng(20240501)
    reps, n, true = 200, 300, 100 * 0.3**2
    upper = {"bootstrap": 0, "delta": 0}
    central = {"bootstrap": 0, "delta": 0}
    for i in range(reps):
        r_base = rng.normal(size=n)
        r_cand = r_base + rng.normal(scale=0.3, size=n)  # E r_cand² = 1.09 · E r_base²
        a, b = r_cand**2, r_base**2
        boot, _ = gate.bootstrap_delta_pct(a, b, replicates=600, seed=i)
        lo_hi = {"bootstrap": gate.percentile_interval(boot, 0.95)}
        delta, se = gate.delta_method(a, b)
        lo_hi["delta"] = (delta - 1.6448536 * se, delta + 1.6448536 * se)
        for method, (lo, hi) in lo_hi.items():
            upper[method] += hi >= true
            central[method] += lo <= true <= hi
    for method in ("bootstrap", "delta"):
        tol_one, tol_two = 3.5 * math.sqrt(0.95 * 0.05 / reps), 3.5 * math.sqrt(0.9 * 0.1 / reps)
        assert abs(upper[method] / reps - 0.95) <= tol_one, (method, upper)
        assert abs(central[method] / reps - 0.90) <= tol_two, (method, central)


def test_block_bootstrap_for_large_and_time_ordered_data() -> None:
    rng = np.random.default_rng(11)
    n = 60_000
    r_base = rng.normal(size=n)
    a, b = (r_base + rng.normal(scale=0.2, size=n)) ** 2, r_base**2
    reps, how = gate.bootstrap_delta_pct(a, b, replicates=1000, seed=1)
    assert how["units"] == gate.BOOTSTRAP_UNITS and how["scheme"] == "random blocks"
    _, se = gate.delta_method(a, b)
    assert np.std(reps, ddof=1) == pytest.approx(se, rel=0.12)  # blocks do not change the spread
    # AR(1) squared-error differences: iid standard errors are too small; Newey–West and blocks of
    # consecutive rows both widen them
    e = np.empty(20_000)
    e[0] = 0.0
    shocks = rng.normal(size=len(e))
    for t in range(1, len(e)):
        e[t] = 0.8 * e[t - 1] + shocks[t]
    b2 = np.full(len(e), 4.0)
    a2 = b2 + 0.2 * e
    _, se_iid = gate.delta_method(a2, b2)
    _, se_hac = gate.delta_method(a2, b2, lag=30)
    assert se_hac > 2 * se_iid
    reps2, how2 = gate.bootstrap_delta_pct(a2, b2, replicates=800, seed=2, lag=30)
    assert how2["scheme"] == "consecutive blocks" and how2["rows_per_unit"] == 31
    assert np.std(reps2, ddof=1) == pytest.approx(se_hac, rel=0.25)


def test_cohort_fdr_and_parse_helpers() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    codes = np.repeat(np.arange(4), n // 4)
    r_base = rng.normal(size=n)
    scale = np.where(codes == 2, math.sqrt(1.4), 1.0)  # cohort 2: +40%
    data = gate.GateInput((r_base * scale) ** 2, r_base**2, cohorts={"region": (codes, ["eu", "us", "apac", "latam"])},
                          rows={"candidate": n, "baseline": n})
    report = gate.run_gate(data, gate.GateOptions(max_increase=15.0, bootstrap=0))
    by = {c.cohort: c for c in report.cohorts}
    assert by["region=apac"].status == "fail" and by["region=apac"].discovery
    assert [c.status for k, c in by.items() if k != "region=apac"] == ["pass"] * 3
    assert report.verdict == "fail" and report.checks[0].status == "pass"  # overall ~ +10% < 15%
    assert gate.parse_percent("5%", "--x") == gate.parse_percent(" 5 ", "--x") == 5.0
    assert gate.parse_percent("2.5 %", "--x") == 2.5
    for bad in ("abc", "5%%", "", "-1"):
        with pytest.raises(InputError):
            gate.parse_percent(bad, "--x")
    assert gate.parse_baseline_ref("pricing@v3") == ("pricing", "v3")
    assert gate.parse_baseline_ref("pricing") == ("pricing", None)


# -- CLI: exit codes and formats ------------------------------------------------------------------
def _holdout(tmp_path: Path, name: str, n: int = 400, *, seed: int = 0, scale: float = 1.0, regions: bool = True,
             eu_scale: float = 1.0, labels: bool = True) -> Path:
    """prediction_id, y_pred, y_true (and region): y ~ N(0, 4), residual sd `scale`."""
    rng = np.random.default_rng(100)
    y = rng.normal(0, 2, n)
    region = np.array(["eu", "us", "apac", "latam"])[np.arange(n) % 4]
    noise = np.random.default_rng(200).normal(size=n)  # the same noise for every file: a shared error
    own = np.random.default_rng(seed).normal(scale=0.05, size=n)
    pred = y + (noise + own) * scale * np.where(region == "eu", eu_scale, 1.0)
    data: dict[str, Any] = {"prediction_id": [f"id{i}" for i in range(n)], "y_pred": pred}
    if labels:
        data["y_true"] = y
    if regions:
        data["region"] = region
    return write_parquet(tmp_path / name, data)


def test_exit_codes_and_formats(tmp_path: Path, cli_many: Any) -> None:
    """Exit 0 and 1 in both formats, with the CI reports, as real subprocesses."""
    base = _holdout(tmp_path, "base.parquet")
    same = _holdout(tmp_path, "same.parquet", seed=1)
    worse = _holdout(tmp_path, "worse.parquet", seed=2, scale=1.3)
    md, xml_pass, xml_fail = tmp_path / "summary.md", tmp_path / "pass.xml", tmp_path / "fail.xml"
    table_pass, table_fail, json_pass, json_fail = cli_many([
        ["gate", "--candidate", same, "--baseline", base, "--max-increase", "5%",
         "--summary-md", md, "--junit", xml_pass],
        ["gate", "--candidate", worse, "--baseline", base, "--max-increase", "5"],
        ["gate", "--candidate", same, "--baseline", base, "--max-increase", "5%", "--format", "json", "--bootstrap", "0"],
        ["gate", "--candidate", worse, "--baseline", base, "--max-increase", "5%", "--format", "json",
         "--junit", xml_fail],
    ])
    assert table_pass.returncode == 0, str(table_pass)
    assert "msewatch gate: PASS" in table_pass.stdout and "delta_mse" in table_pass.stdout
    assert table_fail.returncode == 1, str(table_fail)
    assert "msewatch gate: FAIL" in table_fail.stdout and "above --max-increase 5%" in table_fail.stdout
    assert table_fail.stderr == ""

    p = json_pass.json()
    assert json_pass.returncode == 0 and JSON_KEYS <= set(p)
    assert p["verdict"] == "pass" and p["method"] == "delta" and p["n"] == 400 and p["bootstrap"] is None
    assert p["ci"][0] <= p["delta_mse_pct"] <= p["ci"][1] <= 5
    assert p["rmse_candidate"] == pytest.approx(math.sqrt(p["mse_candidate"]))
    f = json_fail.json()
    assert json_fail.returncode == 1 and f["verdict"] == "fail" and f["method"] == "bootstrap"
    assert f["delta_mse_pct"] == pytest.approx(69, abs=5) and f["ci"][1] > 5
    assert f["bootstrap"]["replicates"] == 2000 and f["bootstrap"]["scheme"] == "pairs"

    summary = md.read_text(encoding="utf-8")
    assert summary.startswith("### msewatch gate: ✅ pass") and "| delta_mse |" in summary
    root = ET.parse(xml_pass).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    assert {p.get("name"): p.get("value") for p in suite.iter("property")}["verdict"] == "pass"
    failed = ET.parse(xml_fail).getroot()
    cases = failed.findall(".//testcase")
    assert [x.get("name") for x in cases] == ["delta_mse"]
    failure = cases[0].find("failure")
    assert failure is not None and "above --max-increase 5%" in failure.get("message", "")
    assert failed.find("testsuite").get("failures") == "1"  # type: ignore[union-attr]


# The remaining command lines run the console script's entry point in this process (conftest's
# `main_in_process`): the same code path as a subprocess, without a second of start-up each.
def test_cohorts_and_ceilings(tmp_path: Path, main_in_process: Any) -> None:
    base = _holdout(tmp_path, "base.parquet")
    same = _holdout(tmp_path, "same.parquet", seed=1)
    eu_worse = _holdout(tmp_path, "eu.parquet", seed=3, eu_scale=1.5)
    cohort = main_in_process("gate", "--candidate", eu_worse, "--baseline", base, "--max-increase", "50%",
                             "--by", "region", "--format", "json", "--bootstrap", "500")
    c = cohort.json()  # overall ≈ +28% (+125% on a quarter of the rows): within 50%; eu fails
    assert cohort.returncode == 1, str(cohort)
    assert c["checks"][0]["name"] == "delta_mse" and c["checks"][0]["status"] == "pass"
    status = {x["cohort"]: x["status"] for x in c["cohorts"]}
    assert status == {"region=eu": "fail", "region=us": "pass", "region=apac": "pass", "region=latam": "pass"}
    assert [r for r in c["reasons"] if r.startswith("cohort ")] == [
        next(x["reason"] for x in c["cohorts"] if x["cohort"] == "region=eu")]

    ceiling = main_in_process("gate", "--candidate", same, "--baseline", base, "--max-increase", "5%",
                              "--max-rmse", "0.5", "--max-mse", "100", "--format", "json")
    m = ceiling.json()
    assert ceiling.returncode == 1 and m["verdict"] == "fail"
    assert m["reasons"] == [next(x["reason"] for x in m["checks"] if x["name"] == "max_rmse")]
    assert "above --max-rmse 0.5" in m["reasons"][0]
    assert [x["status"] for x in m["checks"]] == ["pass", "pass", "fail"]

    # every check in the reports: cohorts under --min-n are skipped, not failed
    md, junit = tmp_path / "step-summary.md", tmp_path / "gate.xml"
    md.write_text("earlier step\n", encoding="utf-8")
    run = main_in_process("gate", "--candidate", eu_worse, "--baseline", base, "--max-increase", "50%",
                          "--by", "region", "--max-mse", "100", "--summary-md", md, "--junit", junit, "--min-n", "101")
    assert run.returncode == 0, str(run)
    text = md.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n### msewatch gate: ✅ pass")  # appended
    assert text.count("⏭ skipped") == 4
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    names = [c.get("name") for c in suite.findall("testcase")]
    assert names == ["delta_mse", "max_mse", "cohort region=eu", "cohort region=us", "cohort region=apac",
                     "cohort region=latam"]
    assert suite.get("skipped") == "4" and suite.get("tests") == "6"
    assert all(c.find("skipped") is not None for c in suite.findall("testcase")[2:])


def test_labels_file_and_stored_baseline(tmp_path: Path, main_in_process: Any) -> None:
    base = _holdout(tmp_path, "base.parquet")
    worse = _holdout(tmp_path, "worse.parquet", seed=2, scale=1.3)
    unlabeled = _holdout(tmp_path, "cand.parquet", seed=1, labels=False, regions=False)
    unlabeled_base = _holdout(tmp_path, "base-nolabel.parquet", labels=False, regions=False)
    y = np.random.default_rng(100).normal(0, 2, 400)
    ids = [f"id{i}" for i in range(400)]
    # a wrong first label for every id, corrected later: the latest label_ts counts
    rows = [(i, v + 100, "2024-05-01T00:00:00Z") for i, v in zip(ids, y)]
    rows += [(i, v, "2024-05-02T00:00:00Z") for i, v in zip(ids, y)]
    labels = write_csv(tmp_path / "labels.csv", ["prediction_id", "y_true", "label_ts"], rows)
    with_labels = main_in_process("gate", "--candidate", unlabeled, "--baseline", unlabeled_base, "--labels", labels,
                                  "--max-increase", "5%", "--format", "json")
    assert with_labels.returncode == 0, str(with_labels)
    cand = pq.read_table(unlabeled)["y_pred"].to_numpy()
    assert with_labels.json()["mse_candidate"] == pytest.approx(float(np.mean((cand - y) ** 2)), rel=1e-9)

    db = tmp_path / "store.duckdb"
    recorded = main_in_process("baseline", "set", "--db", db, "--model", "pricing", "--version", "v3", "--data", base)
    assert recorded.returncode == 0, str(recorded)
    # unpaired against the stored numbers: a wider interval than the paired test's
    same = main_in_process("gate", "--candidate", base, "--baseline-model", "pricing@v3", "--db", db,
                           "--max-increase", "25%", "--format", "json")
    assert same.returncode == 0, str(same)
    s = same.json()
    assert s["delta_mse_pct"] == pytest.approx(0, abs=1e-9) and s["baseline"]["kind"] == "stored"
    assert s["method"] == "delta" and s["baseline"]["version"] == "v3" and s["ci"][1] > 10
    worse_run = main_in_process("gate", "--candidate", worse, "--baseline-model", "pricing@v3", "--db", db,
                                "--max-increase", "25%", "--format", "json")
    assert worse_run.returncode == 1 and worse_run.json()["verdict"] == "fail"


def test_left_out_rows_within_the_allowance(tmp_path: Path, main_in_process: Any) -> None:
    rows = [(f"p{i}", i * 0.1, i * 0.1 + (0.5 if i % 2 else -0.4)) for i in range(100)]
    cand = write_csv(tmp_path / "c.csv", ["prediction_id", "y_pred", "y_true"], rows)
    bad = rows[:98] + [("p98", "nan", 1.0), ("p99", "abc", 2.0)]
    base = write_csv(tmp_path / "b.csv", ["prediction_id", "y_pred", "y_true"], bad)
    allowed = main_in_process("gate", "--candidate", cand, "--baseline", base, "--max-increase", "5",
                              "--max-unpaired", "2%", "--format", "json")
    assert allowed.returncode == 0, str(allowed)
    assert "row 99: y_pred is not a finite number: 'nan'" in allowed.stderr
    assert "row 100: y_pred is not a number: 'abc'" in allowed.stderr
    u = allowed.json()["unpaired"]
    assert u["invalid"] == {"candidate": 0, "baseline": 2} and u["only_candidate"] == 2 and u["left_out"] == 4
    assert allowed.json()["n"] == 98
    strict = main_in_process("gate", "--candidate", cand, "--baseline", base, "--max-increase", "5")
    assert strict.returncode == 2
    assert strict.stderr.splitlines()[-1].startswith("msewatch: error: 4 of 200 candidate and baseline rows")
    assert "2 invalid rows in the baseline" in strict.stderr


# -- bad inputs -----------------------------------------------------------------------------------
def test_bad_inputs_exit_2_with_one_clear_line(tmp_path: Path, cli_many: Any, main_in_process: Any) -> None:
    rows = [(f"p{i}", i * 0.1, i * 0.1 + (0.5 if i % 2 else -0.5)) for i in range(50)]
    header = ["prediction_id", "y_pred", "y_true"]
    good = write_csv(tmp_path / "good.csv", header, rows)
    unpaired = write_csv(tmp_path / "unpaired.csv", header, rows[:45] + [(f"x{i}", 1, 1) for i in range(5)])
    dup = write_csv(tmp_path / "dup.csv", header, rows + [rows[3], rows[3], rows[7]])
    small = write_csv(tmp_path / "small.csv", header, rows[:10])
    nolabel = write_csv(tmp_path / "nolabel.csv", header[:2], [r[:2] for r in rows])
    # three as real subprocesses, the rest in process
    unpaired_run, missing_run, bad_pct = cli_many([
        ["gate", "--candidate", good, "--baseline", unpaired, "--max-increase", "5%"],
        ["gate", "--candidate", tmp_path / "missing.parquet", "--baseline", good, "--max-increase", "5%"],
        ["gate", "--candidate", good, "--baseline", good, "--max-increase", "five"],
    ])
    assert_usage_error(unpaired_run, "10 of 100", "5 ids only in the candidate", "'p45'",
                       "5 ids only in the baseline", "'x0'", "--max-unpaired")
    assert_usage_error(missing_run, "missing.parquet", "no such file")
    assert_usage_error(bad_pct, "--max-increase", "'five'")
    assert_usage_error(main_in_process("gate", "--candidate", good, "--baseline", dup, "--max-increase", "5%"),
                       "dup.csv", "2 prediction_ids appear more than once", "'p3' (3×)", "'p7' (2×)")
    assert_usage_error(main_in_process("gate", "--candidate", small, "--baseline", small, "--max-increase", "5%"),
                       "only 10 rows", "--min-n 30")
    assert_usage_error(main_in_process("gate", "--candidate", nolabel, "--baseline", nolabel, "--max-increase", "5%"),
                       "no labels", "'y_true'", "--labels")


def test_bad_options_and_inputs_in_process(tmp_path: Path, main_in_process: Any) -> None:
    rows = [(f"p{i}", i * 0.1, i * 0.1 + (0.5 if i % 2 else -0.5)) for i in range(50)]
    header = ["prediction_id", "y_pred", "y_true"]
    good = write_csv(tmp_path / "good.csv", header, rows)
    other_truth = write_csv(tmp_path / "truth.csv", header, [(i, p, t + (i == "p7")) for i, p, t in rows])
    nopred = write_csv(tmp_path / "nopred.csv", ["prediction_id", "y_true"], [(r[0], r[2]) for r in rows])
    noid = write_csv(tmp_path / "noid.csv", ["y_pred", "y_true"], [r[1:] for r in rows])
    db = tmp_path / "empty.duckdb"
    cases: list[tuple[list[Any], tuple[str, ...]]] = [
        (["--candidate", good, "--baseline", good], ("--max-increase",)),
        (["--baseline", good, "--max-increase", "5"], ("--candidate",)),
        (["--candidate", good, "--max-increase", "5"], ("--baseline",)),
        (["--candidate", good, "--baseline", good, "--baseline-model", "m@v", "--db", db, "--max-increase", "5"],
         ("one of them",)),
        (["--candidate", good, "--baseline-model", "m@v", "--max-increase", "5"], ("--db",)),
        (["--candidate", good, "--baseline-model", "m@", "--db", db, "--max-increase", "5"], ("MODEL@VERSION",)),
        (["--candidate", good, "--baseline", good, "--max-increase", "-5%"], ("--max-increase", "at least 0%")),
        (["--candidate", good, "--baseline", good, "--max-increase", "5", "--confidence", "1"], ("--confidence",)),
        (["--candidate", good, "--baseline", good, "--max-increase", "5", "--bootstrap", "10"], ("--bootstrap",)),
        (["--candidate", good, "--baseline", good, "--max-increase", "5", "--fdr", "0"], ("--fdr",)),
        (["--candidate", good, "--baseline", good, "--max-increase", "5", "--max-unpaired", "200"],
         ("--max-unpaired",)),
        (["--candidate", good, "--baseline", good, "--max-increase", "5", "--by", "region"],
         ("--by column 'region'", "'prediction_id'")),
        (["--candidate", good, "--baseline", other_truth, "--max-increase", "5"], ("disagree on y_true", "'p7'")),
        (["--candidate", nopred, "--baseline", good, "--max-increase", "5"], ("nopred.csv", "'y_pred'")),
        (["--candidate", good, "--baseline", noid, "--max-increase", "5"], ("noid.csv", "'prediction_id'")),
        (["--candidate", good, "--baseline", tmp_path / "x.txt", "--max-increase", "5"], ("unknown file type",)),
        (["--candidate", good, "--baseline-model", "m@v", "--db", tmp_path / "none.duckdb", "--max-increase", "5"],
         ("no such store",)),
    ]
    for args, needles in cases:
        assert_usage_error(main_in_process("gate", *args), *needles)
    duckdb.connect(str(db)).close()
    assert_usage_error(main_in_process("gate", "--candidate", good, "--baseline-model", "m@v", "--db", db,
                                       "--max-increase", "5"), "no baseline recorded for m@v")
