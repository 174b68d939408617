"""The monitor's parts against brute-force references: config validation, window sums and burn
rates, the alert lifecycle, Benjamini–Hochberg, baselines and the store-backed series."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msewatch.config import load_config
from msewatch.errors import InputError
from msewatch.monitor.alerts import AlertBook, Finding, fingerprint
from msewatch.monitor.baselines import default_baseline, find_baseline, record_baseline
from msewatch.monitor.config import BurnTier, Slo
from msewatch.monitor.series import MinuteSeries, load_series
from msewatch.monitor.slo import evaluate_slo
from msewatch.monitor.stats import benjamini_hochberg, delta_pct_bounds, mean_se, regression_pvalue
from msewatch.sources import from_store
from msewatch.store import Store

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
UTC = dt.UTC


# ---------------------------------------------------------------------------------------- config


def _load(tmp_path: Path, text: str):
    path = tmp_path / "msewatch.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('[[slos]]\nname = "a"\nmodel = "m"\n', ["slos[0]", "threshold"]),
        ('[[slos]]\nname = "a"\nmodel = "m"\nthreshold = 1\nobjective = 1.0\n', ["slos[0].objective", "1.0"]),
        ('[[slos]]\nname = "a"\nmodel = "m"\nthreshold = -1\n', ["slos[0].threshold", "-1"]),
        ('[[slos]]\nname = "a"\nmodel = "m"\nkind = "window"\n', ["max_rmse"]),
        ('[[slos]]\nname = "a"\nmodel = "m"\nkind = "hourly"\nthreshold = 1\n', ["slos[0].kind", "hourly"]),
        ('[[slos]]\nname = "a"\nmodel = "m"\nthreshold = 1\nperiod = "soon"\n', ["slos[0].period", "soon"]),
        ('[[slos]]\nname = "a"\nmodel = "m"\nthreshold = 1\nperiod = "1d"\n', ["slos[0].period", "shorter"]),
        ('[[slos]]\nname = "a"\nmodel = "m"\nthreshold = 1\ncolour = 1\n', ["unknown key slos[0].colour"]),
        ('[[slos]]\nname = "a"\nmodel = "m"\nthreshold = 1\ntiers = [{severity = "page", factor = 2, long = "5m", short = "1h"}]\n',
         ["tiers[0].short", "longer"]),
        ('[[alerts]]\nname = "a"\nmodel = "m"\ntype = "magic"\n', ["alerts[0].type", "magic", "delta_mse"]),
        ('[[alerts]]\nname = "a"\nmodel = "m"\ntype = "cohort_regression"\n', ["alerts[0]", "by"]),
        ('[[alerts]]\nname = "a"\nmodel = "m"\ntype = "delta_mse"\nseverity = "sms"\n', ["alerts[0].severity", "sms"]),
        ('[[alerts]]\nname = "a"\nmodel = "m"\ntype = "delta_mse"\nfor = "-5m"\n', ["alerts[0].for", "-5m"]),
        ('[[alerts]]\nname = "a"\nmodel = "m"\ntype = "delta_mse"\nlabels = {"bad-name" = "x"}\n', ["alerts[0].labels", "bad-name"]),
        ('[[alerts]]\nname = "a"\nmodel = "m"\ntype = "delta_mse"\n[[alerts]]\nname = "a"\nmodel = "m"\ntype = "tail_error"\n',
         ["'a' is used twice"]),
        ('[[notifiers]]\nname = "n"\ntype = "webhook"\nurl = "ftp://x"\n', ["notifiers[0].url", "ftp://x"]),
        ('[[notifiers]]\nname = "n"\ntype = "pager"\nurl = "http://x"\n', ["notifiers[0].type", "pager"]),
        ('[[silences]]\nmatchers = {model = "m"}\nstarts = "2026-01-02T00:00:00Z"\nends = "2026-01-01T00:00:00Z"\n',
         ["silences[0].ends", "after starts"]),
        ('[[silences]]\nmatchers = {}\nstarts = "2026-01-01T00:00:00Z"\nends = "2026-01-02T00:00:00Z"\n', ["at least one matcher"]),
        ('[[maintenance]]\nmodel = "m"\nstarts = "yesterday"\nends = "2026-01-02T00:00:00Z"\n', ["maintenance[0].starts", "yesterday"]),
        ('[alerting]\ninterval = "0s"\n', ["alerting.interval"]),
        ("slos = 3\n", ["slos", "[[slos]]"]),
    ],
)
def test_bad_monitor_config_names_key_and_value(tmp_path: Path, text: str, needles: list[str]) -> None:
    with pytest.raises(InputError) as err:
        _load(tmp_path, text)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_monitor_config_defaults_and_warnings(tmp_path: Path) -> None:
    config = _load(tmp_path, '[[slos]]\nname = "a"\nmodel = "m"\nthreshold = 4\nobjective = 0.9\n'
                             '[models.m]\nsquared_error_buckets = [1, 10]\n')
    assert config.monitor.alerting.group_wait == 30 and config.monitor.alerting.repeat_interval == 4 * 3600
    (slo,) = config.monitor.slos
    assert [t.factor for t in slo.tiers] == [14.4, 6.0, 3.0, 1.0]
    # objective 0.9: the highest burn is 10, so the 14.4× tier can never fire
    assert len(config.monitor.warnings) == 1 and "14.4" in config.monitor.warnings[0]
    assert 4.0 in config.buckets_for("m"), "an SLO threshold is always a histogram boundary"
    assert load_config(None).monitor.slos == ()


# ------------------------------------------------------------------------------- window sums


@st.composite
def _series(draw: st.DrawFn) -> tuple[MinuteSeries, np.ndarray]:
    minutes = draw(st.integers(1, 600))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_pred = rng.integers(0, 30, minutes)
    n_lab = rng.binomial(n_pred, draw(st.floats(0.0, 1.0)))
    bad = rng.binomial(n_lab, draw(st.floats(0.0, 1.0)))
    sum_sq = rng.uniform(0, 10, minutes) * n_lab
    start = T0 + draw(st.integers(0, 59)) * 60
    return MinuteSeries(start, n_pred, n_lab, sum_sq, n_good=n_lab - bad), bad


@settings(max_examples=150, deadline=None)
@given(_series(), st.integers(-3600, 40_000), st.integers(1, 40_000))
def test_window_sums_equal_a_brute_force_sum(data: tuple[MinuteSeries, np.ndarray], offset: int, length: int) -> None:
    series, bad = data
    since = series.start + offset
    until = since + length
    starts = series.start + 60 * np.arange(len(series.n_predictions))
    inside = (starts >= since) & (starts < until)
    got = series.sums(since, until)
    assert got.n_predictions == int(series.n_predictions[inside].sum())
    assert got.n_labeled == int(series.n_labeled[inside].sum())
    assert got.n_good == int((series.n_labeled - bad)[inside].sum())
    assert math.isclose(got.sum_sq, float(series.sum_sq[inside].sum()), rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=100, deadline=None)
@given(_series(), st.integers(0, 40_000), st.integers(1, 50), st.sampled_from([0.9, 0.99, 0.999]))
def test_event_burn_rates_equal_a_brute_force_ratio(data: tuple[MinuteSeries, np.ndarray], offset: int,
                                                     min_labels: int, objective: float) -> None:
    series, bad = data
    tier = BurnTier("page", 2.0, 3600, 300)
    slo = Slo("s", "m", threshold=1.0, objective=objective, min_labels=min_labels, tiers=(tier,), period=86400)
    at = series.start + offset
    status = evaluate_slo(slo, series, at)
    starts = series.start + 60 * np.arange(len(series.n_predictions))
    for window, burn in status.burn_rates.items():
        inside = (starts >= at - window) & (starts < at)
        labeled = int(series.n_labeled[inside].sum())
        if labeled < min_labels:
            assert burn is None
        else:
            expected = int(bad[inside].sum()) / labeled / (1 - objective)
            assert burn is not None and math.isclose(burn, expected, rel_tol=1e-12)
    (t,) = status.tiers
    assert t.firing == (t.long_burn is not None and t.short_burn is not None
                        and t.long_burn >= 2.0 and t.short_burn >= 2.0)


def test_window_slo_counts_good_and_bad_windows() -> None:
    # 48 hours; hour h has RMSE 1 except hours 40-43 (RMSE 3), hour 10 has too few labels
    minutes = 48 * 60
    n_lab = np.full(minutes, 10)
    n_lab[10 * 60: 11 * 60] = 0
    mse = np.ones(minutes)
    mse[40 * 60: 44 * 60] = 9.0
    series = MinuteSeries(T0, n_lab.copy(), n_lab, mse * n_lab)
    slo = Slo("w", "m", kind="window", max_rmse=2.0, window=3600, objective=0.9, min_labels=100,
              period=7 * 86400)
    status = evaluate_slo(slo, series, T0 + 48 * 3600)
    assert (status.good, status.bad) == (43, 4)  # hour 10 is neither good nor bad
    assert math.isclose(status.budget_remaining, 1 - 4 / (0.1 * 47))
    # the last 6 hours are hours 42-47: two of them (42, 43) are bad
    assert math.isclose(status.burn_rates[6 * 3600], (2 / 6) / 0.1)
    # a lookback shorter than a window reads the last complete window (hour 47: good)
    assert status.burn_rates[300] == 0.0


# ------------------------------------------------------------------------------ alert lifecycle


def _now(minutes: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(T0 + 60 * minutes, UTC)


def test_alert_lifecycle_pending_firing_resolved() -> None:
    book = AlertBook()
    f = Finding({"alertname": "x", "model": "m"}, {"summary": "s"}, 1.0, for_seconds=600)
    assert [a.state for a in book.update([f], _now(0))] == ["pending"]
    assert book.update([f], _now(5)) == []
    (fired,) = book.update([f], _now(10))
    assert fired.state == "firing" and fired.starts_at == _now(10) and fired.active_since == _now(0)
    (resolved,) = book.update([], _now(11))
    assert resolved.state == "resolved" and resolved.ends_at == _now(11)
    # fires again later: a new pending period
    assert [a.state for a in book.update([f], _now(20))] == ["pending"]
    # a pending alert that stops holding is dropped without a transition
    assert book.update([], _now(21)) == []
    assert f.fingerprint not in book.alerts or book.alerts[f.fingerprint].state == "resolved"
    # for = 0 fires at once
    g = Finding({"alertname": "y"}, {}, None)
    assert [a.state for a in book.update([g], _now(30))] == ["firing"]


def test_fingerprint_ignores_label_order() -> None:
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"a": "1", "b": "2"}) != fingerprint({"a": "1", "b": "3"})
    assert fingerprint({"a": "1\x01b"}) != fingerprint({"a": "1", "b": ""})


# ---------------------------------------------------------------------------------- statistics


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=0, max_size=40), st.floats(0.001, 0.5))
def test_benjamini_hochberg_matches_its_definition(pvalues: list[float], q: float) -> None:
    found = benjamini_hochberg(pvalues, q)
    m = len(pvalues)
    ranked = sorted(pvalues)
    k = max((i for i in range(1, m + 1) if ranked[i - 1] <= q * i / m), default=0)
    cutoff = ranked[k - 1] if k else -1.0
    assert found.tolist() == [k > 0 and p <= cutoff for p in pvalues]


def test_regression_test_and_bounds() -> None:
    assert regression_pvalue(2.0, 0.1, 1.0, 0.0, 20) < 1e-10
    assert regression_pvalue(1.0, 0.1, 1.0, 0.0, 20) > 0.9
    assert math.isclose(regression_pvalue(1.2, 0.1, 1.0, 0.0, 20), 0.5)
    b = delta_pct_bounds(1.5, 0.05, 1.0, None, 0.95)
    assert math.isclose(b.delta_pct, 50.0)
    assert math.isclose(b.low, (1.5 - 1.6448536269514722 * 0.05 - 1) * 100, rel_tol=1e-9)
    assert mean_se(None, 10) is None and mean_se(9.0, 1) is None
    assert math.isclose(mean_se(90.0, 10), math.sqrt(90 / 9 / 10))


# ----------------------------------------------------------------------- store-backed reading


def _ingest(store: Store, kind: str, table: pa.Table) -> None:
    table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype="int64")))
    result = store.ingest_batches(kind, table.to_batches())
    assert not result.rejects, result.rejects[:3]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    rng = np.random.default_rng(5)
    n = 6000
    ts = T0 + np.sort(rng.uniform(0, 2 * 86400, n))
    ids = np.array([f"id{i}" for i in range(n)])
    y = rng.normal(50, 3, n)
    version = np.where(rng.random(n) < 0.4, "v2", "v1")
    region = np.where(rng.random(n) < 0.5, "a", "b")
    pred = y + rng.normal(0, 1, n) * np.where(version == "v2", 1.5, 1.0)
    s = Store(tmp_path_factory.mktemp("monitor") / "s.duckdb")
    s.track_thresholds("m", [2.0])
    _ingest(s, "predictions", pa.table({"prediction_id": ids, "ts": ts, "model": ["m"] * n, "version": version,
                                        "region": region, "y_pred": pred}))
    labeled = rng.random(n) < 0.85
    _ingest(s, "labels", pa.table({"prediction_id": ids[labeled], "y_true": y[labeled],
                                   "label_ts": ts[labeled] + 3600}))
    s.truth = {"ts": ts, "r2": (pred - y) ** 2, "labeled": labeled, "version": version, "region": region}  # type: ignore[attr-defined]
    yield s
    s.close()


@pytest.mark.parametrize("version", [None, "v1"])
@pytest.mark.parametrize(("lo_h", "hi_h"), [(0, 48), (5, 6), (13.5, 30.25)])
def test_store_series_equals_the_raw_rows(store: Store, version: str | None, lo_h: float, hi_h: float) -> None:
    truth = store.truth  # type: ignore[attr-defined]
    lo, hi = T0 + lo_h * 3600, T0 + hi_h * 3600
    series = load_series(store.con, "m", dt.datetime.fromtimestamp(T0, UTC), dt.datetime.fromtimestamp(T0 + 2 * 86400, UTC),
                         version=version, threshold=2.0)
    minute = np.floor(truth["ts"] / 60) * 60
    keep = (minute >= lo) & (minute < hi) & ((truth["version"] == version) if version else True)
    got = series.sums(lo, hi)
    r2 = truth["r2"][keep & truth["labeled"]]
    assert got.n_predictions == int(keep.sum())
    assert got.n_labeled == len(r2)
    assert got.n_good == int((r2 <= 2.0).sum())
    assert math.isclose(got.sum_sq, float(r2.sum()), rel_tol=1e-9)
    assert math.isclose(series.m2(lo, hi), float(np.var(r2) * len(r2)), rel_tol=1e-9)
    assert series.last_label_at == pytest.approx(float(truth["ts"][truth["labeled"]].max() + 3600), abs=1e-3)


def test_recorded_baseline_matches_numpy(store: Store) -> None:
    truth = store.truth  # type: ignore[attr-defined]
    source = from_store(store)
    made = record_baseline(store.con, source.engine, source.predictions, source.labels, model="m", version=None,
                           by=("region",), source="test")
    r2 = truth["r2"][truth["labeled"]]
    top = made[0]
    assert top.n == len(r2)
    assert math.isclose(top.mse, float(r2.mean()), rel_tol=1e-9)
    assert math.isclose(top.mse_se, float(r2.std(ddof=1) / math.sqrt(len(r2))), rel_tol=1e-9)
    found = find_baseline(store.con, "m")
    assert found is not None and set(found.cohorts) == {"region=a", "region=b"}
    in_a = truth["labeled"] & (truth["region"] == "a")
    assert math.isclose(found.cohorts["region=a"].mse, float(truth["r2"][in_a].mean()), rel_tol=1e-9)


def test_default_baseline_is_the_median_of_daily_mse(store: Store) -> None:
    truth = store.truth  # type: ignore[attr-defined]
    until = dt.datetime.fromtimestamp(T0 + 2 * 86400, UTC)
    b = default_baseline(store.con, "m", until)
    days = np.floor((np.floor(truth["ts"] / 60) * 60 - (T0 + 2 * 86400)) / 86400)  # days end at `until`
    daily = [truth["r2"][truth["labeled"] & (days == d)].mean() for d in np.unique(days[truth["labeled"]])]
    assert b is not None and not b.explicit
    assert math.isclose(b.mse, float(np.median(daily)), rel_tol=1e-9)


def test_every_toml_example_of_the_readme_loads(tmp_path: Path) -> None:
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block, encoding="utf-8")
        config = load_config(path, env={"MSEWATCH_INGEST_TOKEN": "x" * 32, "MSEWATCH_READ_TOKEN": "y" * 32})
        assert not config.monitor.warnings, config.monitor.warnings


def test_baseline_from_a_holdout_file_through_the_cli(tmp_path: Path) -> None:
    """A holdout file without model or version columns is taken whole for the named model."""
    import pyarrow.parquet as pq
    from conftest import run_cli

    rng = np.random.default_rng(9)
    y = rng.normal(10, 2, 1000)
    p = y + rng.normal(0, 1, 1000)
    region = np.where(rng.random(1000) < 0.5, "a", "b")
    pq.write_table(pa.table({"y_true": y, "y_pred": p, "region": region}), tmp_path / "holdout.parquet")
    made = run_cli(["baseline", "set", "--db", "s.duckdb", "--model", "price", "--version", "v2", "--data",
                    "holdout.parquet", "--by", "region", "--format", "json"], cwd=tmp_path)
    assert made.returncode == 0, made
    r2 = (p - y) ** 2
    top, *cohorts = made.json()["baselines"]
    assert top["n"] == 1000 and top["version"] == "v2"
    assert math.isclose(top["metrics"]["mse"], float(r2.mean()), rel_tol=1e-9)
    assert math.isclose(top["metrics"]["mse_se"], float(r2.std(ddof=1) / math.sqrt(1000)), rel_tol=1e-9)
    assert {c["segment_value"]: c["n"] for c in cohorts} == {"a": int((region == "a").sum()), "b": int((region == "b").sum())}
    shown = run_cli(["baseline", "show", "--db", "s.duckdb", "--model", "price", "--version", "v2", "--format", "json"],
                    cwd=tmp_path)
    assert shown.returncode == 0 and shown.json()["explicit"] is True
    both = run_cli(["baseline", "set", "--db", "s.duckdb", "--model", "price", "--data", "holdout.parquet",
                    "--since", "2026-01-01"], cwd=tmp_path)
    assert both.returncode == 2 and "not both" in both.stderr
