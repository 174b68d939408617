"""Cohort attribution (`msewatch explain`): MSE_B − MSE_A split into cohort mix and error within
cohorts. Known answers on constructed cases, the exact identity, agreement with NumPy on raw
rows, the store and file paths, and the CLI."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import assert_usage_error, write_parquet
from hypothesis import given, settings
from hypothesis import strategies as st

from msewatch.errors import InputError
from msewatch.evaluate import EvalSpec, run_evaluation
from msewatch.monitor.attribution import attribute, decompose
from msewatch.sources import from_joined, from_store, new_engine
from msewatch.store import Store

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _cohort(result: Any, *key: Any) -> Any:
    return next(c for c in result.cohorts if c.key == key)


def _identity_gap(result: Any) -> float:
    """|Σ parts − (MSE_B − MSE_A)| relative to the largest term (what floats can carry)."""
    terms = [result.mse_a, result.mse_b, *(c.mix for c in result.cohorts), *(c.error for c in result.cohorts)]
    return abs(result.total_change - (result.mse_b - result.mse_a)) / (max(abs(t) for t in terms) or 1.0)


# -- constructed cases with known answers ----------------------------------------------------------
def test_pure_mix_shift() -> None:
    """Cohort MSEs unchanged, traffic moves to the worse cohort: all mix, error exactly 0."""
    a = {("x",): (100, 1.0), ("y",): (100, 4.0)}
    b = {("x",): (40, 1.0), ("y",): (160, 4.0)}
    r = decompose(a, b, ("region",))
    assert (r.mse_a, r.mse_b) == pytest.approx((2.5, 3.4))
    assert r.error == 0.0
    assert all(c.error == 0.0 for c in r.cohorts)
    assert r.mix == pytest.approx(0.9) and r.total_change == pytest.approx(0.9)
    assert [c.key for c in r.cohorts] == [("y",), ("x",)]  # ranked by |contribution|
    assert _cohort(r, "y").mix == pytest.approx(0.3 * 4.0)
    assert _cohort(r, "x").mix == pytest.approx(-0.3 * 1.0)
    assert (_cohort(r, "x").share_a, _cohort(r, "x").share_b) == pytest.approx((0.5, 0.2))


def test_pure_error_change() -> None:
    """Same cohort shares, one cohort gets worse: all error, mix exactly 0."""
    a = {("x",): (100, 1.0), ("y",): (300, 2.0)}
    b = {("x",): (200, 3.0), ("y",): (600, 2.0)}  # twice the traffic, the same shares
    r = decompose(a, b, ("region",))
    assert r.mix == 0.0
    assert all(c.mix == 0.0 for c in r.cohorts)
    assert r.error == pytest.approx(0.5) and r.total_change == pytest.approx(0.5)
    assert r.mse_b - r.mse_a == pytest.approx(0.5)
    x, y = _cohort(r, "x"), _cohort(r, "y")
    assert x.error == pytest.approx((3.0 - 1.0) * 0.25)
    assert y.error == 0.0 and y.contribution == 0.0
    assert x.share_of_change == pytest.approx(1.0) and y.share_of_change == 0.0
    assert r.cohorts[0] is x


def test_mix_and_error_together() -> None:
    a = {("x",): (100, 1.0), ("y",): (100, 3.0)}
    b = {("x",): (100, 2.0), ("y",): (300, 5.0)}
    r = decompose(a, b, ("region",))
    x, y = _cohort(r, "x"), _cohort(r, "y")
    # by hand: w_A = (.5, .5), w_B = (.25, .75)
    assert x.mix == pytest.approx(-0.25 * (1 + 2) / 2)
    assert y.mix == pytest.approx(0.25 * (3 + 5) / 2)
    assert x.error == pytest.approx((2 - 1) * (0.5 + 0.25) / 2)
    assert y.error == pytest.approx((5 - 3) * (0.5 + 0.75) / 2)
    assert (r.mix, r.error) == pytest.approx((0.625, 1.625))
    assert (r.mse_a, r.mse_b, r.total_change) == pytest.approx((2.0, 4.25, 2.25))
    assert r.mix + r.error == r.total_change
    for c in r.cohorts:  # each cohort's contribution is its own term of the change
        assert c.contribution == pytest.approx(c.share_b * c.mse_b - c.share_a * c.mse_a)
    assert sum(c.share_of_change for c in r.cohorts) == pytest.approx(1.0)


def test_cohort_in_one_side_only_is_pure_mix() -> None:
    """A new cohort (only in B) and a vanished one (only in A): pure mix, MSE null where absent."""
    a = {("x",): (100, 2.0), ("gone",): (100, 8.0)}
    b = {("x",): (100, 2.0), ("new",): (100, 6.0)}
    r = decompose(a, b, ("region",))
    new, gone, x = _cohort(r, "new"), _cohort(r, "gone"), _cohort(r, "x")
    assert (new.n_a, new.share_a, new.mse_a, new.mse_b) == (0, 0.0, None, 6.0)
    assert (gone.n_b, gone.share_b, gone.mse_a, gone.mse_b) == (0, 0.0, 8.0, None)
    assert new.error == 0.0 and gone.error == 0.0
    assert new.mix == pytest.approx(0.5 * 6.0) and gone.mix == pytest.approx(-0.5 * 8.0)
    assert x.mix == 0.0 and x.error == 0.0
    assert (r.mse_a, r.mse_b, r.total_change) == pytest.approx((5.0, 4.0, -1.0))
    assert [c.key for c in r.cohorts] == [("gone",), ("new",), ("x",)]
    assert "other side" in r.convention and "pure mix" in r.convention


def test_simpsons_paradox() -> None:
    """Every cohort improves, yet the MSE rises: traffic moved to the hard cohort. The error
    part is negative and the mix part explains more than the whole rise."""
    a = {("easy",): (900, 1.0), ("hard",): (100, 10.0)}
    b = {("easy",): (100, 0.8), ("hard",): (900, 9.0)}
    r = decompose(a, b, ("segment",))
    assert all(c.mse_b < c.mse_a for c in r.cohorts)
    assert r.mse_b > r.mse_a
    assert (r.mse_a, r.mse_b) == pytest.approx((1.9, 8.18))
    assert r.error == pytest.approx(-0.2 * 0.5 + -1.0 * 0.5) and r.error < 0
    assert r.mix == pytest.approx(-0.8 * 0.9 + 0.8 * 9.5) and r.mix > r.total_change
    assert all(c.error < 0 for c in r.cohorts)
    assert r.total_change == pytest.approx(6.28)
    assert r.cohorts[0].key == ("hard",)


def test_no_change_has_no_share_of_change() -> None:
    a = {("x",): (10, 1.0), ("y",): (10, 2.0)}
    r = decompose(a, dict(a), ("region",))
    assert (r.total_change, r.mix, r.error) == (0.0, 0.0, 0.0)
    assert all(c.share_of_change is None for c in r.cohorts)


def test_empty_side_is_an_input_error() -> None:
    with pytest.raises(InputError, match="side A has no labeled predictions"):
        decompose({("x",): (0, 1.0)}, {("x",): (5, 1.0)})
    with pytest.raises(InputError, match="side B \\(v2\\) has no labeled"):
        decompose({("x",): (5, 1.0)}, {}, sides=("A (v1)", "B (v2)"))


# -- the identity, on random cohort tables ------------------------------------------------------
_mse = st.one_of(st.floats(0, 1e6), st.floats(1e-8, 1e12), st.sampled_from([0.0, 1.0, 2.5]))
_side = st.dictionaries(st.tuples(st.integers(0, 12)), st.tuples(st.integers(1, 10**9), _mse), min_size=1,
                        max_size=15)


@settings(max_examples=300, deadline=None)
@given(a=_side, b=_side)
def test_parts_add_up_to_the_change(a: dict, b: dict) -> None:
    r = decompose(a, b, ("k",))
    # Σ parts = MSE_B − MSE_A to rounding of the largest term
    assert _identity_gap(r) <= 1e-12
    assert r.mix + r.error == r.total_change
    # against exact rational arithmetic on the same inputs
    n_a, n_b = sum(n for n, _ in a.values()), sum(n for n, _ in b.values())
    exact_a = sum(Fraction(n) * Fraction(m) for n, m in a.values()) / n_a
    exact_b = sum(Fraction(n) * Fraction(m) for n, m in b.values()) / n_b
    scale = max(float(exact_a), float(exact_b), *(abs(c.mix) for c in r.cohorts), *(abs(c.error) for c in r.cohorts))
    scale = scale or 1.0
    assert abs(r.mse_a - float(exact_a)) <= 1e-12 * scale
    assert abs(r.mse_b - float(exact_b)) <= 1e-12 * scale
    assert abs(r.total_change - float(exact_b - exact_a)) <= 1e-12 * scale
    for c in r.cohorts:
        wa, wb = Fraction(c.n_a, n_a), Fraction(c.n_b, n_b)
        term = wb * Fraction(c.mse_b or 0.0) - wa * Fraction(c.mse_a or 0.0)
        assert abs(c.contribution - float(term)) <= 1e-12 * scale
    # ranked by |contribution|, and symmetric: swapping the sides negates every part exactly
    assert [abs(c.contribution) for c in r.cohorts] == sorted((abs(c.contribution) for c in r.cohorts), reverse=True)
    back = {c.key: c for c in decompose(b, a, ("k",)).cohorts}
    for c in r.cohorts:
        assert (back[c.key].mix, back[c.key].error) == (-c.mix, -c.error)


# -- raw rows: files, NumPy, the evaluation --------------------------------------------------------
def _rows(rng: np.random.Generator, n: int, shares: list[float], noise: list[float]) -> dict[str, Any]:
    regions = np.array(["eu", "us", "ap", "latam"])
    devices = np.array(["ios", "web"])
    k = rng.choice(len(shares), size=n, p=shares)
    d = rng.integers(0, 2, n)
    y = rng.normal(50, 10, n)
    sd = np.array(noise)[k] * np.where(d == 1, 1.5, 1.0)
    return {"region": regions[k], "device": devices[d], "y_true": y, "y_pred": y + rng.normal(0, 1, n) * sd}


def _numpy_attribution(a: dict[str, Any], b: dict[str, Any], by: tuple[str, ...]) -> dict[tuple, tuple[float, float]]:
    """(mix, error) per cohort straight from the rows, same convention."""
    def table(side: dict[str, Any]) -> dict[tuple, tuple[float, float]]:
        keys = list(zip(*(side[c] for c in by)))
        sq = (np.asarray(side["y_pred"]) - np.asarray(side["y_true"])) ** 2
        out = {}
        for key in set(keys):
            mask = np.array([k == key for k in keys])
            out[key] = (mask.sum() / len(keys), float(sq[mask].mean()))
        return out

    ta, tb = table(a), table(b)
    out = {}
    for key in set(ta) | set(tb):
        wa, ma = ta.get(key, (0.0, None))
        wb, mb = tb.get(key, (0.0, None))
        ma = mb if ma is None else ma
        mb = ma if mb is None else mb
        out[key] = ((wb - wa) * (ma + mb) / 2, (mb - ma) * (wa + wb) / 2)
    return out


def test_files_agree_with_numpy_and_the_evaluation(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    a = _rows(rng, 4000, [0.4, 0.3, 0.2, 0.1], [1.0, 1.0, 1.2, 1.0])
    b = _rows(rng, 3000, [0.25, 0.3, 0.2, 0.25], [1.0, 1.1, 1.2, 2.0])
    b["region"] = np.where(b["region"] == "ap", "apac", b["region"])  # a cohort renamed: one side each
    pa_, pb = write_parquet(tmp_path / "a.parquet", a), write_parquet(tmp_path / "b.parquet", b)
    engine = new_engine()
    sa, sb = from_joined(pa_, engine=engine), from_joined(pb, engine=engine)
    for by in (("region",), ("region", "device")):
        r = attribute(engine, sa.predictions, None, EvalSpec(by=by), sb.predictions, None, EvalSpec(by=by))
        want = _numpy_attribution(a, b, by)
        assert {c.key for c in r.cohorts} == set(want)
        for c in r.cohorts:
            assert (c.mix, c.error) == pytest.approx(want[c.key], rel=1e-9, abs=1e-12)
        # the overall MSEs of an ungrouped evaluation, and the identity against them
        mse_a = run_evaluation(engine, sa.predictions, None, EvalSpec())[0]["mse"]
        mse_b = run_evaluation(engine, sb.predictions, None, EvalSpec())[0]["mse"]
        assert (r.mse_a, r.mse_b) == pytest.approx((mse_a, mse_b), rel=1e-12)
        assert abs(r.total_change - (mse_b - mse_a)) <= 1e-9 * max(mse_a, mse_b)
        assert _identity_gap(r) <= 1e-12
        assert r.n_a == 4000 and r.n_b == 3000
    assert _cohort(r, "latam", "web").error > 0
    assert _cohort(r, "apac", "ios").mse_a is None and _cohort(r, "ap", "web").mse_b is None


# -- the store -------------------------------------------------------------------------------------
def _ingest(s: Store, kind: str, table: pa.Table) -> None:
    table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype="int64")))
    result = s.ingest_batches(kind, table.to_batches())
    assert not result.rejects, result.rejects[:3]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four days of one model: days 0–1 v1 only; days 2–3 v1 and v2, with latam's traffic up
    and latam's error up for both versions; v2 worse everywhere; 10% never labeled."""
    rng = np.random.default_rng(8)
    parts = []
    for day in range(4):
        late = day >= 2
        rows = _rows(rng, 1500, [0.4, 0.3, 0.2, 0.1] if not late else [0.3, 0.3, 0.15, 0.25],
                     [1.0, 1.0, 1.0, 2.5 if late else 1.0])
        n = len(rows["y_true"])
        v2 = late & (rng.random(n) < 0.4)
        rows["y_pred"] = np.where(v2, rows["y_pred"] + rng.normal(0, 1.0, n), rows["y_pred"])
        rows["version"] = np.where(v2, "v2", "v1")
        rows["ts"] = np.sort(rng.uniform(0, 86400, n)) + (T0 + day * DAY).timestamp()
        parts.append(rows)
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(data["y_true"])
    ids = np.char.add("id-", np.arange(n).astype(str))
    ts = pa.array((data["ts"] * 1e6).astype("int64"), pa.timestamp("us", tz="UTC"))
    labeled = rng.random(n) < 0.9
    path = tmp_path_factory.mktemp("attr") / "store.duckdb"
    with Store(path) as s:
        _ingest(s, "predictions", pa.table({
            "prediction_id": ids, "ts": ts, "model": ["m"] * n, "version": data["version"],
            "y_pred": data["y_pred"], "region": data["region"], "device": data["device"]}))
        _ingest(s, "labels", pa.table({
            "prediction_id": ids[labeled], "y_true": data["y_true"][labeled],
            "label_ts": ts.filter(pa.array(labeled))}))
        # a second model in the same store must not leak in
        _ingest(s, "predictions", pa.table({"prediction_id": ["other-1"], "ts": ts[:1], "model": ["other"],
                                            "version": ["v1"], "y_pred": [1e6], "region": ["eu"], "device": ["web"]}))
        _ingest(s, "labels", pa.table({"prediction_id": ["other-1"], "y_true": [0.0]}))
    np.savez(path.with_suffix(".npz"), ids=ids, labeled=labeled, **data)
    return path


def _store_rows(path: Path, since: dt.datetime | None, until: dt.datetime | None, version: str | None) -> dict:
    raw = np.load(path.with_suffix(".npz"))
    keep = raw["labeled"].copy()
    if since:
        keep &= raw["ts"] >= since.timestamp()
    if until:
        keep &= raw["ts"] < until.timestamp()
    if version:
        keep &= raw["version"] == version
    return {k: raw[k][keep] for k in ("region", "device", "y_true", "y_pred")}


@pytest.mark.parametrize(
    "a, b",
    [
        ((T0, T0 + 2 * DAY, None), (T0 + 2 * DAY, T0 + 4 * DAY, None)),  # two periods
        ((T0 + 2 * DAY, None, "v1"), (T0 + 2 * DAY, None, "v2")),  # two versions, one period
    ],
    ids=["periods", "versions"],
)
def test_store_agrees_with_numpy(store_path: Path, a: tuple, b: tuple) -> None:
    with Store(store_path, read_only=True) as s:
        src = from_store(s)
        spec_a = EvalSpec(by=("region", "device"), since=a[0], until=a[1], version=a[2], model="m")
        spec_b = EvalSpec(by=("region", "device"), since=b[0], until=b[1], version=b[2], model="m")
        r = attribute(src.engine, src.predictions, src.labels, spec_a, spec_b=spec_b)
        overall = [run_evaluation(src.engine, src.predictions, src.labels,
                                  EvalSpec(since=sp.since, until=sp.until, version=sp.version, model="m"))[0]
                   for sp in (spec_a, spec_b)]
    rows_a, rows_b = _store_rows(store_path, *a), _store_rows(store_path, *b)
    want = _numpy_attribution(rows_a, rows_b, ("region", "device"))
    assert {c.key for c in r.cohorts} == set(want)
    for c in r.cohorts:
        assert (c.mix, c.error) == pytest.approx(want[c.key], rel=1e-9, abs=1e-12)
    assert (r.n_a, r.n_b) == (len(rows_a["y_true"]), len(rows_b["y_true"]))
    assert (r.n_a, r.n_b) == (overall[0]["n_labeled"], overall[1]["n_labeled"])
    assert abs(r.total_change - (overall[1]["mse"] - overall[0]["mse"])) <= 1e-9 * overall[1]["mse"]
    assert r.total_change > 0


# -- the CLI ---------------------------------------------------------------------------------------
_PERIODS = ("--a-since", "2026-03-01", "--a-until", "2026-03-03", "--b-since", "2026-03-03", "--b-until", "2026-03-05")


def test_cli_table_and_json(store_path: Path, tmp_path: Path, cli_many: Any) -> None:
    a = _rows(np.random.default_rng(1), 500, [0.5, 0.2, 0.2, 0.1], [1.0] * 4)
    b = _rows(np.random.default_rng(2), 500, [0.2, 0.2, 0.2, 0.4], [1.0, 1.0, 1.0, 3.0])
    fa, fb = write_parquet(tmp_path / "a.parquet", a), write_parquet(tmp_path / "b.parquet", b)
    table, as_json, versions, files = cli_many([
        ("explain", "--db", store_path, "--model", "m", "--by", "region", *_PERIODS),
        ("explain", "--db", store_path, "--model", "m", "--by", "region,device", *_PERIODS, "--format", "json",
         "--top", "3"),
        ("explain", "--db", store_path, "--model", "m", "--by", "region", "--since", "2026-03-03",
         "--a-version", "v1", "--b-version", "v2", "--format", "json"),
        ("explain", "--a", fa, "--b", fb, "--by", "region", "--format", "json"),
    ])
    for run in (table, as_json, versions, files):
        assert run.returncode == 0, str(run)
    assert "latam" in table.stdout and "mix" in table.stdout and "contribution" in table.stdout
    assert table.stdout.index("latam") < min(table.stdout.index(r) for r in ("│ eu ", "│ us ", "│ ap "))

    doc = as_json.json()
    for key in ("total_change", "mse_a", "mse_b", "mix", "error", "cohorts", "convention"):
        assert key in doc
    assert doc["total_change"] == pytest.approx(doc["mse_b"] - doc["mse_a"], rel=1e-9)
    assert doc["mix"] + doc["error"] == doc["total_change"]
    assert len(doc["cohorts"]) == 3 and doc["n_cohorts"] == 8
    first = doc["cohorts"][0]
    assert set(first) == {"region", "device", "n_a", "n_b", "share_a", "share_b", "mse_a", "mse_b", "mix", "error",
                          "contribution", "share_of_change"}
    assert first["region"] == "latam"
    assert first["contribution"] == pytest.approx(first["mix"] + first["error"])
    # the CLI's numbers are the library's
    with Store(store_path, read_only=True) as s:
        src = from_store(s)
        r = attribute(src.engine, src.predictions, src.labels,
                      EvalSpec(by=("region", "device"), since=T0, until=T0 + 2 * DAY, model="m"),
                      spec_b=EvalSpec(by=("region", "device"), since=T0 + 2 * DAY, until=T0 + 4 * DAY, model="m"))
    assert doc["total_change"] == pytest.approx(r.total_change, rel=1e-12)
    assert [tuple(c[k] for k in ("region", "device")) for c in doc["cohorts"]] == [c.key for c in r.cohorts[:3]]

    v = versions.json()
    assert v["mse_b"] > v["mse_a"] and v["error"] > abs(v["mix"])  # v2 is worse everywhere
    f = files.json()
    assert f["cohorts"][0]["region"] == "latam" and f["n_a"] == f["n_b"] == 500
    assert f["a"].endswith("a.parquet)") and f["b"].endswith("b.parquet)")


def test_cli_usage_errors(store_path: Path, tmp_path: Path, main_in_process: Any, cli: Any) -> None:
    base = ("explain", "--db", store_path, "--model", "m")
    fa = write_parquet(tmp_path / "a.parquet", {"y_pred": [1.0], "y_true": [2.0], "region": ["eu"]})
    cases = [
        ((*base, *_PERIODS), "--by is required"),
        ((*base, "--by", "nope", *_PERIODS), "no column 'nope'"),
        ((*base, "--by", "region"), "same predictions"),
        ((*base, "--by", "region", "--a-since", "2027-01-01", "--b-since", "2026-03-01"), "A (2027-01-01 to …) has no labeled"),
        ((*base, "--by", "region", "--a-version", "v9", "--b-version", "v1"), "no labeled"),
        ((*base, "--by", "region", "--a-since", "2026-03-03", "--a-until", "2026-03-01", "--b-since", "2026-03-01"),
         "must be earlier"),
        ((*base, "--by", "region", "--since", "2026-03-01", "--a-since", "2026-03-02"), "not both"),
        ((*base, "--by", "region", "--a-since", "yesterday-ish", "--b-since", "2026-03-01"), "--a-since"),
        (("explain", "--a", fa, "--by", "region"), "--a and --b go together"),
        (("explain", "--a", fa, "--b", fa, "--db", store_path, "--by", "region"), "not both"),
        (("explain", "--a", fa, "--b", tmp_path / "missing.csv", "--by", "region"), "missing.csv"),
        (("explain", "--db", tmp_path / "none.duckdb", "--by", "region", *_PERIODS), "no such store"),
    ]
    for args, needle in cases:
        assert_usage_error(main_in_process(*args), needle)
    # and once as a real process
    assert_usage_error(cli(*base, "--by", "region", "--a-version", "v9", "--b-version", "v1"), "no labeled")


def test_a_by_column_named_like_an_output_field_is_refused(tmp_path: Path) -> None:
    f = write_parquet(tmp_path / "a.parquet", {"y_pred": [1.0, 2.0], "y_true": [2.0, 2.0], "mix": ["p", "q"]})
    engine = new_engine()
    src = from_joined(f, engine=engine)
    with pytest.raises(InputError, match="clashes with a field"):
        attribute(engine, src.predictions, None, EvalSpec(by=("mix",)), src.predictions, None, EvalSpec(by=("mix",)))


# -- the demo scenario -----------------------------------------------------------------------------
def test_demo_scenario_ranks_the_drifting_region_first(tmp_path: Path) -> None:
    """The demo's data drift hits latam from day 10: days 8–9 vs days 17–18 by region put latam
    first, its change within the cohort (error), not traffic (mix)."""
    from msewatch.demo import START, Scenario, write_scenario

    files = write_scenario(tmp_path / "files", Scenario(per_hour=60))
    with Store(tmp_path / "demo.duckdb") as s:
        s.ingest_file("predictions", files["predictions"])
        s.ingest_file("labels", files["labels"])
        s.ingest_file("labels", files["corrections"])
        src = from_store(s)
        day = dt.timedelta(days=1)
        r = attribute(src.engine, src.predictions, src.labels,
                      EvalSpec(by=("region",), model="pricing", since=START + 8 * day, until=START + 10 * day),
                      spec_b=EvalSpec(by=("region",), model="pricing", since=START + 17 * day, until=START + 19 * day))
    latam = r.cohorts[0]
    assert latam.key == ("latam",)
    assert latam.error > 10 * abs(latam.mix)
    assert latam.contribution > 2 * r.cohorts[1].contribution
    assert r.error > 10 * abs(r.mix)
