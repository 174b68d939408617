"""Property tests of the evaluation engine against a straightforward NumPy computation.

`run_evaluation` runs one Ibis expression on an in-memory DuckDB engine; the reference below
does the same evaluation the obvious way in Python: pick each id's current label, filter, put
every prediction into its window(s), group, and compute each metric of DESIGN.md section 4 with
NumPy. Both must agree row for row, to the tolerances explained in tests/test_metrics.py:
1e-9 relative for sums of non-negative terms, 1e-9·mean|r| absolute for the bias, and the
Chan–Golub–LeVeque bound n·u·κ for centred second moments, which DuckDB's var_pop accumulates
with streaming (Welford) updates.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from msewatch.errors import InputError
from msewatch.evaluate import LATENCY_NAMES, EvalSpec, latest_labels, run_evaluation
from msewatch.metrics import EPSILON, METRIC_NAMES, QUANTILES
from msewatch.sources import from_store, new_engine
from msewatch.store import Store

U = float(np.finfo(np.float64).eps) / 2
RTOL = 1e-9
K = 16
QS = [q for _, q in QUANTILES]
UTC = dt.timezone.utc
US = 1_000_000  # microseconds per second
# label latency is a difference of two epoch times held as float64 seconds: around 2e9 s their
# spacing is 2.4e-7 s, so the engine's latency carries that much absolute rounding
LATENCY_ATOL = 1e-6

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REGIONS = ("apac", "eu", "us")
VERSIONS = ("v1", "v2")
MODELS = ("m1", "m2")


@pytest.fixture(scope="module")
def engine() -> Any:
    return new_engine()


# -- scenarios ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pred:
    pid: str
    ts_us: int  # epoch microseconds
    model: str
    version: str
    region: str
    y_pred: float


@dataclass(frozen=True)
class Label:
    pid: str
    y_true: float
    label_ts_us: int | None
    row: int


@dataclass
class Scenario:
    preds: list[Pred]
    labels: list[Label]

    def current(self) -> dict[str, Label]:
        """Each id's label: the latest label_ts (missing counts as oldest), then the larger _row."""
        best: dict[str, Label] = {}
        for lab in self.labels:
            key = (lab.label_ts_us if lab.label_ts_us is not None else -math.inf, lab.row)
            old = best.get(lab.pid)
            if old is None or key > (
                old.label_ts_us if old.label_ts_us is not None else -math.inf, old.row
            ):
                best[lab.pid] = lab
        return best


@st.composite
def scenarios(
    draw: st.DrawFn,
    min_preds: int = 1,
    max_preds: int = 40,
    p_unlabeled: float | None = None,
    max_labels_per_id: int = 3,
) -> Scenario:
    n = draw(st.integers(min_preds, max_preds))
    # around 2023-11-14, or just before the epoch (negative times floor to earlier windows)
    t0 = draw(st.sampled_from([1_700_000_000, -4 * 3600 + 17]))
    span = draw(st.sampled_from([2 * 3600, 26 * 3600, 3 * 86400]))
    kind = draw(st.sampled_from(["random", "offset", "integers"]))
    if p_unlabeled is None:
        p_unlabeled = draw(st.sampled_from([0.0, 0.3, 0.8]))

    def target() -> float:
        if kind == "offset":
            return 1e9 + draw(st.floats(-1.0, 1.0))
        if kind == "integers":  # ties and constant groups are common
            return float(draw(st.integers(-2, 2)))
        # 0, or 1e-6 ≤ |y| ≤ 1e3: a bounded dynamic range (see tests/test_metrics.py for the
        # tiny, huge and underflowing families)
        return draw(st.just(0.0) | st.floats(1e-6, 1e3) | st.floats(-1e3, -1e-6))

    preds: list[Pred] = []
    labels: list[tuple[str, float, int | None]] = []
    for i in range(n):
        ts_us = (t0 + draw(st.integers(0, span))) * US + draw(st.integers(0, US - 1))
        y = target()
        noise = draw(st.floats(-10.0, 10.0)) if kind != "integers" else float(draw(st.integers(-2, 2)))
        pid = f"p{i:03d}"
        preds.append(
            Pred(pid, ts_us, draw(st.sampled_from(MODELS)), draw(st.sampled_from(VERSIONS)),
                 draw(st.sampled_from(REGIONS)), y + noise)
        )
        if draw(st.floats(0.0, 1.0)) < p_unlabeled:
            continue
        times: list[int | None] = []
        for _ in range(draw(st.integers(1, max_labels_per_id))):
            choice = draw(st.sampled_from(["later", "missing", "tie"]))
            if choice == "missing":
                times.append(None)
            elif choice == "tie" and times and times[-1] is not None:
                times.append(times[-1])  # same label_ts: the larger _row must win
            else:
                times.append(ts_us + draw(st.integers(-60 * US, 5 * 86400 * US)))
            labels.append((pid, target(), times[-1]))
    for j in range(draw(st.integers(0, 3))):  # labels of unknown predictions are ignored
        labels.append((f"orphan{j}", target(), None))
    order = draw(st.permutations(range(len(labels))))  # _row order independent of time order
    rows = [Label(pid, y, t, order[k]) for k, (pid, y, t) in enumerate(labels)]
    return Scenario(preds, rows)


def ts_array(values: list[int | None]) -> pa.Array:
    return pa.array(values, type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def predictions_table(s: Scenario) -> pa.Table:
    return pa.table(
        {
            "prediction_id": pa.array([p.pid for p in s.preds], pa.string()),
            "ts": ts_array([p.ts_us for p in s.preds]),
            "model": pa.array([p.model for p in s.preds], pa.string()),
            "version": pa.array([p.version for p in s.preds], pa.string()),
            "y_pred": pa.array([p.y_pred for p in s.preds], pa.float64()),
            "region": pa.array([p.region for p in s.preds], pa.string()),
        }
    )


def labels_table(labels: list[Label], with_row: bool = True) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "prediction_id": pa.array([lab.pid for lab in labels], pa.string()),
        "y_true": pa.array([lab.y_true for lab in labels], pa.float64()),
        "label_ts": ts_array([lab.label_ts_us for lab in labels]),
    }
    if with_row:
        cols["_row"] = pa.array([lab.row for lab in labels], pa.int64())
    return pa.table(cols)


# -- reference ----------------------------------------------------------------------------------
def iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def to_us(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)


def expected_rows(
    preds: list[Pred], current: dict[str, Label], spec: EvalSpec, *, latency: bool = True
) -> dict[tuple, dict[str, Any]]:
    """The evaluation done the obvious way: group key → metrics."""
    sel = [
        p for p in preds
        if (spec.since is None or p.ts_us >= to_us(spec.since))
        and (spec.until is None or p.ts_us < to_us(spec.until))
        and (spec.model is None or p.model == spec.model)
        and (spec.version is None or p.version == spec.version)
    ]
    groups: dict[tuple, list[Pred]] = defaultdict(list)
    for p in sel:
        seg = tuple(getattr(p, "region" if c == "region" else c) for c in spec.by)
        if spec.window:
            groups[((p.ts_us // (spec.window * US)) * spec.window, *seg)].append(p)
        elif spec.rolling:
            step = spec.step or spec.rolling
            first = (min(q.ts_us for q in sel) // (step * US)) * step
            base = (p.ts_us // (step * US)) * step
            for k in range(spec.rolling // step):  # every window that contains the prediction
                start = base - k * step
                if start >= first:  # leading windows before the first prediction's are dropped
                    groups[(start, *seg)].append(p)
        else:
            groups[seg].append(p)
    if not spec.by and not spec.windowed and not groups:
        groups[()] = []  # an ungrouped evaluation always has its one row
    out = {}
    for key, members in groups.items():
        out[key] = group_metrics(members, current, spec.huber_delta, latency=latency)
    return out


def group_metrics(
    members: list[Pred], current: dict[str, Label], delta: float, *, latency: bool = True
) -> dict[str, Any]:
    labeled = [(p, current[p.pid]) for p in members if p.pid in current]
    yt = np.array([lab.y_true for _, lab in labeled], dtype=np.float64)
    yp = np.array([p.y_pred for p, _ in labeled], dtype=np.float64)
    n = len(members)
    m: dict[str, Any] = {
        "n_predictions": n,
        "n_labeled": len(labeled),
        "label_coverage": len(labeled) / n if n else None,
        "_yt": yt,
        "_yp": yp,
    }
    if latency:
        lat = [
            (lab.label_ts_us - p.ts_us) / US for p, lab in labeled if lab.label_ts_us is not None
        ]
        qs = np.quantile(lat, [0.5, 0.9]) if lat else [None, None]
        m["label_latency_p50_s"], m["label_latency_p90_s"] = (
            (float(v) if v is not None else None) for v in qs
        )
    if not labeled:
        return m
    r = yp - yt
    a = np.abs(r)
    m.update(
        mse=float(np.mean(r * r)),
        rmse=math.sqrt(float(np.mean(r * r))),
        mae=float(np.mean(a)),
        bias=float(np.mean(r)),
        error_variance=float(np.var(r)),
        r2=r2_reference(yt, r),
        mape=float(np.mean(a / np.maximum(np.abs(yt), EPSILON))),
        huber=float(np.mean(0.5 * np.minimum(a, delta) ** 2 + delta * np.maximum(a - delta, 0.0))),
        **{name: float(v) for (name, _), v in zip(QUANTILES, np.quantile(r * r, QS))},
    )
    return m


def r2_reference(yt: np.ndarray, r: np.ndarray) -> float | None:
    d = yt - yt.mean()
    ss = float(np.dot(d, d))
    if np.all(yt == yt[0]) or ss == 0.0:  # null when the denominator is 0
        return None
    return float(1.0 - np.dot(r, r) / ss)


# -- comparison ---------------------------------------------------------------------------------
def close(name: str, got: Any, want: float, tol: float) -> None:
    assert isinstance(got, float) and math.isfinite(got), f"{name}: got {got!r}, want {want!r}"
    assert abs(got - want) <= tol, f"{name}: got {got!r}, want {want!r} (tol {tol:.3e})"


def check_row(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    for key, value in got.items():  # a contract promise: null, never NaN or inf
        assert not (isinstance(value, float) and not math.isfinite(value)), (where, key, value)
    assert got["n_predictions"] == want["n_predictions"], where
    assert got["n_labeled"] == want["n_labeled"], where
    if want["label_coverage"] is None:
        assert got["label_coverage"] is None, where
    else:
        close(f"{where} label_coverage", got["label_coverage"], want["label_coverage"], 1e-15)
    for name in LATENCY_NAMES:
        if name in want:
            if want[name] is None:
                assert got[name] is None, (where, name, got[name])
            else:
                close(f"{where} {name}", got[name], want[name], RTOL * abs(want[name]) + LATENCY_ATOL)
    yt, yp = want["_yt"], want["_yp"]
    n = yt.size
    if n == 0:
        for name in METRIC_NAMES[3:]:
            assert got[name] is None, f"{where}: {name} of a group without labels is {got[name]!r}"
        return
    r = yp - yt
    for name in ("mse", "mae", "mape", "huber", *(q for q, _ in QUANTILES)):
        close(f"{where} {name}", got[name], want[name], RTOL * want[name])
    close(f"{where} rmse", got["rmse"], want["rmse"], RTOL * want["rmse"])
    close(f"{where} bias", got["bias"], want["bias"], RTOL * (abs(want["bias"]) + np.abs(r).mean()))
    sum_r2 = float(np.dot(r, r))
    s_r = float(np.dot(r - r.mean(), r - r.mean()))
    close(
        f"{where} error_variance", got["error_variance"], want["error_variance"],
        RTOL * want["error_variance"] + K * U * math.sqrt(sum_r2 * s_r) + K * (n * U) ** 2 * sum_r2 / n,
    )
    if want["r2"] is None:
        assert got["r2"] is None, f"{where}: r2 of constant targets is {got['r2']!r}"
        return
    s_y = float(np.dot(yt - yt.mean(), yt - yt.mean()))
    kappa = math.sqrt(float(np.dot(yt, yt)) / s_y)
    if K * n * U * kappa >= 0.5:
        # targets a few ulps apart (1e9 and 1e9 + 1.2e-7): the bound on Σ(y − ȳ)² reaches 100 %,
        # so the engine may find it 0 (r2 null) or any size; the ratio means nothing here
        assert got["r2"] is None or math.isfinite(got["r2"]), (where, got["r2"])
        return
    q = sum_r2 / s_y  # 1 − r2, compared relatively; the spread is summed by Welford updates
    close(f"{where} r2", got["r2"], want["r2"], RTOL * (abs(want["r2"]) + q) + q * K * n * U * kappa)


def check_evaluation(rows: list[dict[str, Any]], want: dict[tuple, dict], spec: EvalSpec) -> None:
    keys = []
    for row in rows:
        key: tuple = ()
        if spec.windowed:
            start = dt.datetime.fromisoformat(row["window_start"].replace("Z", "+00:00"))
            seconds = int(start.timestamp())
            assert row["window_start"] == iso(seconds)
            assert row["window_end"] == iso(seconds + (spec.window or spec.rolling or 0))
            key = (seconds,)
        key += tuple(row[c] for c in spec.by)
        keys.append(key)
    assert len(keys) == len(set(keys)), "duplicate group rows"
    assert set(keys) == set(want), f"groups: got {sorted(keys)}, want {sorted(want)}"
    assert keys == sorted(keys), "rows are ordered by window_start, then the --by columns"
    names = list(METRIC_NAMES)
    if any(n in next(iter(want.values()), {}) for n in LATENCY_NAMES):
        names += list(LATENCY_NAMES)
    for row, key in zip(rows, keys):
        group_names = (["window_start", "window_end"] if spec.windowed else []) + list(spec.by)
        assert list(row) == group_names + names, list(row)
        check_row(row, want[key], f"group {key}")


def evaluate(engine, s: Scenario, spec: EvalSpec, *, pandas: bool = False) -> list[dict[str, Any]]:
    preds = predictions_table(s)
    labels = labels_table(s.labels)
    if pandas:
        p, lab = ibis.memtable(preds.to_pandas()), ibis.memtable(labels.to_pandas())
    else:
        p, lab = ibis.memtable(preds), ibis.memtable(labels)
    return run_evaluation(engine, p, latest_labels(lab), spec)


def specs(**fixed: Any) -> st.SearchStrategy[EvalSpec]:
    @st.composite
    def build(draw: st.DrawFn) -> EvalSpec:
        args = dict(fixed)
        if "by" not in args:
            args["by"] = draw(st.sampled_from([(), ("region",), ("version",), ("region", "version")]))
        return EvalSpec(**args)

    return build()


# -- tests --------------------------------------------------------------------------------------
@SETTINGS
@given(s=scenarios(), spec=specs(), delta=st.sampled_from([1.0, 0.25, 5.0]))
def test_by_segment_and_version(engine, s, spec, delta) -> None:
    spec = EvalSpec(by=spec.by, huber_delta=delta)
    note(spec)
    rows = evaluate(engine, s, spec, pandas=True)
    check_evaluation(rows, expected_rows(s.preds, s.current(), spec), spec)


WINDOWS = st.sampled_from(
    [{"window": 3600}, {"rolling": 7200, "step": 3600}, {"rolling": 3 * 1800, "step": 1800},
     {"rolling": 3600}]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=scenarios(), spec=WINDOWS.flatmap(lambda w: specs(**w)))
def test_tumbling_and_rolling_windows(engine, s, spec) -> None:
    note(spec)
    rows = evaluate(engine, s, spec)
    check_evaluation(rows, expected_rows(s.preds, s.current(), spec), spec)
    step = spec.window or spec.step or spec.rolling
    for row in rows:  # aligned to the epoch
        start = dt.datetime.fromisoformat(row["window_start"].replace("Z", "+00:00"))
        assert start.timestamp() % step == 0
    # each prediction counts in every window that contains it, bar leading windows that start
    # before the first prediction's
    first = min(p.ts_us for p in s.preds) // (step * US) * step
    size = spec.window or spec.rolling
    total = sum(
        sum(1 for k in range(size // step) if (p.ts_us // (step * US)) * step - k * step >= first)
        for p in s.preds
    )
    assert sum(r["n_predictions"] for r in rows) == total
    if spec.window:
        assert total == len(s.preds)


@SETTINGS
@given(s=scenarios(), data=st.data())
def test_since_until_and_filters(engine, s, data) -> None:
    times = sorted(p.ts_us for p in s.preds)
    lo, hi = times[0] - 3600 * US, times[-1] + 3600 * US

    def moment() -> dt.datetime | None:
        t = data.draw(st.none() | st.integers(lo, hi) | st.sampled_from(times))
        return None if t is None else dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=t)

    since, until = moment(), moment()
    if since is not None and until is not None and since >= until:
        with pytest.raises(InputError):
            EvalSpec(since=since, until=until)
        since, until = until - dt.timedelta(microseconds=1), since + dt.timedelta(microseconds=1)
    spec = EvalSpec(
        since=since,
        until=until,
        by=data.draw(st.sampled_from([(), ("region",)])),
        **data.draw(st.sampled_from([{}, {"window": 3600}, {"rolling": 7200, "step": 3600}])),
        model=data.draw(st.sampled_from([None, *MODELS])),
        version=data.draw(st.sampled_from([None, *VERSIONS])),
    )
    note(spec)
    rows = evaluate(engine, s, spec)
    check_evaluation(rows, expected_rows(s.preds, s.current(), spec), spec)


def test_since_is_inclusive_and_until_exclusive(engine) -> None:
    t = [1_700_000_000 * US + 123_457, 1_700_000_050 * US + 1, 1_700_000_100 * US + 999_999]
    s = Scenario([Pred(f"p{i}", ts, "m1", "v1", "eu", float(i)) for i, ts in enumerate(t)], [])
    at = [dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=ts) for ts in t]
    micro = dt.timedelta(microseconds=1)
    for since, until, n in [
        (at[0], at[2], 2), (at[0] + micro, at[2] + micro, 2), (at[1], at[1] + micro, 1),
        (at[0] - micro, at[0], 0), (None, at[1], 1), (at[1], None, 2),
    ]:
        spec = EvalSpec(since=since, until=until)
        rows = evaluate(engine, s, spec)
        assert rows[0]["n_predictions"] == n, (since, until)
        check_evaluation(rows, expected_rows(s.preds, {}, spec), spec)


def test_group_without_labels_has_null_metrics(engine) -> None:
    s = Scenario(
        preds=[
            Pred("a", 1_700_000_000 * US, "m1", "v1", "eu", 1.0),
            Pred("b", 1_700_000_100 * US, "m1", "v1", "us", 2.0),
            Pred("c", 1_700_000_200 * US, "m1", "v1", "us", 3.0),
        ],
        labels=[Label("a", 1.5, None, 0)],
    )
    spec = EvalSpec(by=("region",))
    rows = evaluate(engine, s, spec)
    check_evaluation(rows, expected_rows(s.preds, s.current(), spec), spec)
    us = next(r for r in rows if r["region"] == "us")
    assert us["n_predictions"] == 2 and us["n_labeled"] == 0 and us["label_coverage"] == 0.0
    assert all(us[name] is None for name in METRIC_NAMES[3:] + LATENCY_NAMES)
    eu = next(r for r in rows if r["region"] == "eu")
    assert eu["mse"] == 0.25 and eu["r2"] is None and eu["label_latency_p50_s"] is None


def test_ungrouped_evaluation_of_nothing(engine) -> None:
    s = Scenario([Pred("a", 1_700_000_000 * US, "m1", "v1", "eu", 1.0)], [])
    since = dt.datetime(2030, 1, 1, tzinfo=UTC)
    rows = evaluate(engine, s, EvalSpec(since=since))
    assert len(rows) == 1 and rows[0]["n_predictions"] == 0
    assert all(rows[0][name] is None for name in METRIC_NAMES[2:])
    assert evaluate(engine, s, EvalSpec(since=since, by=("region",))) == []
    assert evaluate(engine, s, EvalSpec(since=since, window=3600)) == []


@SETTINGS
@given(s=scenarios(max_preds=25, max_labels_per_id=4, p_unlabeled=0.0))
def test_latest_label_wins(engine, s) -> None:
    current = s.current()
    got = engine.to_pyarrow(latest_labels(ibis.memtable(labels_table(s.labels)))).to_pylist()
    assert len(got) == len(current)
    for row in got:
        want = current[row["prediction_id"]]
        assert row["y_true"] == want.y_true, (row, want)
        want_ts = want.label_ts_us
        got_ts = None if row["label_ts"] is None else to_us(row["label_ts"])
        assert got_ts == want_ts, (row, want)
    # without label_ts the last row (largest _row) wins
    no_ts = labels_table(s.labels).drop(["label_ts"])
    got = engine.to_pyarrow(latest_labels(ibis.memtable(no_ts))).to_pylist()
    last: dict[str, Label] = {}
    for lab in s.labels:
        if lab.pid not in last or lab.row > last[lab.pid].row:
            last[lab.pid] = lab
    assert {r["prediction_id"]: r["y_true"] for r in got} == {k: v.y_true for k, v in last.items()}


@SETTINGS
@given(s=scenarios(max_preds=30, p_unlabeled=0.0, max_labels_per_id=1), spec=specs(), joined=st.booleans())
def test_without_label_ts_and_joined_holdout(engine, s, spec, joined) -> None:
    """Labels without label_ts (the last row wins, no latency), or labels=None: y_true on the
    prediction rows themselves (a joined holdout set)."""
    last: dict[str, Label] = {}
    for lab in s.labels:
        if lab.pid not in last or lab.row > last[lab.pid].row:
            last[lab.pid] = lab
    preds = predictions_table(s)
    if joined:
        table = preds.append_column(
            "y_true", pa.array([last[p.pid].y_true for p in s.preds], pa.float64())
        )
        rows = run_evaluation(engine, ibis.memtable(table), None, spec)
    else:
        no_ts = ibis.memtable(labels_table(s.labels).drop(["label_ts"]))
        rows = run_evaluation(engine, ibis.memtable(preds), latest_labels(no_ts), spec)
    check_evaluation(rows, expected_rows(s.preds, last, spec, latency=False), spec)
    assert all(name not in row for row in rows for name in LATENCY_NAMES)


# -- through the store --------------------------------------------------------------------------
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(s=scenarios(max_preds=30, max_labels_per_id=1), data=st.data())
def test_store_end_to_end_uses_latest_revision(tmp_path: Path, s, data) -> None:
    here = tmp_path / uuid.uuid4().hex
    here.mkdir()
    preds = here / "predictions.parquet"
    pq.write_table(predictions_table(s), preds)
    labels = [lab for lab in s.labels if not lab.pid.startswith("orphan")]
    first = here / "labels.parquet"
    pq.write_table(labels_table(labels, with_row=False), first)
    # a corrected file: new values for some ids, labelled later than the originals
    fixed = []
    for lab in labels:
        if data.draw(st.booleans()):
            later = (lab.label_ts_us or 1_700_000_000 * US) + data.draw(st.integers(1, 86400)) * US
            fixed.append(Label(lab.pid, lab.y_true + data.draw(st.floats(-50.0, 50.0).filter(bool)), later, 0))
    second = here / "labels_fixed.parquet"
    pq.write_table(labels_table(fixed, with_row=False), second)

    with Store(here / "s.duckdb") as store:
        assert store.ingest_file("predictions", preds).accepted == len(s.preds)
        assert store.ingest_file("labels", first).accepted == len(labels)
        result = store.ingest_file("labels", second)
        assert result.accepted == len(fixed) and result.rejected == 0
        assert store.count("labels") == len(labels) + len(fixed)  # every revision is kept ...
        inp = from_store(store)  # ... and only the latest counts
        current = {lab.pid: lab for lab in labels} | {lab.pid: lab for lab in fixed}
        for spec in (EvalSpec(by=("region", "version")), EvalSpec(window=3600, by=("version",))):
            rows = run_evaluation(inp.engine, inp.predictions, inp.labels, spec)
            check_evaluation(rows, expected_rows(s.preds, current, spec), spec)


def test_nan_in_a_parquet_file_with_finite_statistics_is_a_reject(tmp_path: Path) -> None:
    """Parquet writers leave NaN out of a column's min/max statistics, and DuckDB then folds
    `isnan(x)` to false in a filter pushed into the scan: the NaN label must still be a reject,
    reported with its reason, and the metrics those of the other rows."""
    from msewatch.evaluate import evaluate as run
    from msewatch.sources import first_rejects, from_files

    n = 5
    pq.write_table(pa.table({"prediction_id": [f"p{i}" for i in range(n)], "ts": [1.7e9 + i for i in range(n)],
                             "y_pred": [1.0, 2.0, 3.0, 4.0, 5.0]}), tmp_path / "p.parquet")
    pq.write_table(pa.table({"prediction_id": [f"p{i}" for i in range(n)],
                             "y_true": [1.0, float("nan"), 3.0, 4.5, 5.0]}), tmp_path / "l.parquet")
    source = from_files(tmp_path / "p.parquet", tmp_path / "l.parquet")
    result = run(source.engine, source.predictions, source.labels, EvalSpec())
    assert result.rejected_labels == 1
    (row,) = result.rows
    assert row["n_labeled"] == 4
    assert math.isclose(row["mse"], 0.25 / 4, rel_tol=1e-12)
    assert first_rejects(source, str(tmp_path / "l.parquet")) == ["row 2: y_true is not a finite number: 'nan'"]
