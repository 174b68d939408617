"""The /metrics collector's arithmetic against a row-by-row reference.

`QualityCollector.observe_pairs` folds millions of rows per step with NumPy; here each of its
series (sums, counts, bucket counts, latency buckets) and its segment cap ("first come, first
kept", the rest `__other__`) is checked against the plain per-row definition, over random
batches observed one after another.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msewatch.config import Config, MetricsConfig, ModelConfig
from msewatch.server.exposition import OTHER, QualityCollector

MODELS = ["price", "eta", "ünï"]
VERSIONS = ["v1", "v2", ""]
REGIONS = ["eu", "us", "ap", "sa", "af", "x'; DROP", "🙂", None]
DEVICES = ["ios", "android", None]


def config(cap: int) -> Config:
    return Config(
        metrics=MetricsConfig(segments=("region", "device"), max_segment_values=cap,
                              squared_error_buckets=(0.01, 0.1, 1.0, 10.0), label_latency_buckets=(1.0, 60.0)),
        models={"eta": ModelConfig(squared_error_buckets=(0.5, 5.0), thresholds=(2.0,))},
    )


row = st.fixed_dictionaries({
    "model": st.sampled_from(MODELS),
    "version": st.sampled_from(VERSIONS),
    "region": st.sampled_from(REGIONS),
    "device": st.sampled_from(DEVICES),
    "y_pred": st.floats(-1e3, 1e3, allow_nan=False),
    "y_true": st.floats(-1e3, 1e3, allow_nan=False),
    "label_latency_s": st.one_of(st.none(), st.floats(0, 1e4, allow_nan=False)),
})


class Reference:
    """The collector's definition, one row at a time."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.seen: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.series: dict[tuple[str, ...], dict[str, Any]] = {}

    def capped(self, r: dict[str, Any]) -> dict[str, Any]:
        r = dict(r)
        for name in self.cfg.metrics.segments:
            value = r.get(name)
            if value is None:
                continue
            seen = self.seen[(r["model"], name)]
            if value not in seen:
                if len(seen) < self.cfg.metrics.max_segment_values:
                    seen.add(value)
                else:
                    r[name] = OTHER
        return r

    def observe(self, rows: list[dict[str, Any]]) -> None:
        for r in map(self.capped, rows):
            key = tuple("" if r.get(n) is None else str(r[n]) for n in ("model", "version", *self.cfg.metrics.segments))
            bounds = self.cfg.buckets_for(r["model"])
            lat_bounds = self.cfg.metrics.label_latency_buckets
            s = self.series.setdefault(key, {
                "sq": [], "abs": [], "pos": [], "neg": [], "lat": [],
                "buckets": [0] * (len(bounds) + 1), "lat_buckets": [0] * (len(lat_bounds) + 1)})
            e = r["y_pred"] - r["y_true"]
            s["sq"].append(e * e)
            s["abs"].append(abs(e))
            s["pos"].append(max(e, 0.0))
            s["neg"].append(max(-e, 0.0))
            s["buckets"][bisect.bisect_left(bounds, e * e)] += 1
            if r["label_latency_s"] is not None:
                s["lat"].append(r["label_latency_s"])
                s["lat_buckets"][bisect.bisect_left(lat_bounds, r["label_latency_s"])] += 1


def assert_same(collector: QualityCollector, reference: Reference) -> None:
    assert set(collector._series) == set(reference.series)
    for key, want in reference.series.items():
        got = collector._series[key]
        assert got.count == len(want["sq"]), key
        assert got.buckets.tolist() == want["buckets"], key
        assert got.lat_buckets.tolist() == want["lat_buckets"], key
        assert got.lat_count == len(want["lat"]), key
        for attr, name in (("sum_sq", "sq"), ("sum_abs", "abs"), ("sum_pos", "pos"), ("sum_neg", "neg"), ("lat_sum", "lat")):
            assert math.isclose(getattr(got, attr), math.fsum(want[name]), rel_tol=1e-9, abs_tol=1e-6), (key, attr)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(row, min_size=0, max_size=60), min_size=1, max_size=5), cap=st.integers(1, 4))
def test_observe_pairs_equals_the_row_by_row_definition(batches: list[list[dict[str, Any]]], cap: int) -> None:
    cfg = config(cap)
    collector, reference = QualityCollector(cfg), Reference(cfg)
    for rows in batches:
        table = pa.Table.from_pylist(rows, schema=pa.schema([
            ("model", pa.string()), ("version", pa.string()), ("region", pa.string()), ("device", pa.string()),
            ("y_pred", pa.float64()), ("y_true", pa.float64()), ("label_latency_s", pa.float64())]))
        collector.observe_pairs(table)
        reference.observe(rows)
        assert_same(collector, reference)


def test_a_large_step_of_many_chunks_and_values_past_the_cap() -> None:
    """200,000 rows in 7 chunks, 40 region values over a cap of 10 (first come, first kept),
    and a segment column that is not text: the same as the row-by-row definition."""
    cfg = config(10)
    rng = np.random.default_rng(3)
    n = 200_000
    rows = {
        "model": np.array(MODELS, dtype=object)[rng.integers(0, 3, n)].tolist(),
        "version": np.array(VERSIONS, dtype=object)[rng.integers(0, 3, n)].tolist(),
        "region": [None if i % 97 == 0 else f"r{v}" for i, v in enumerate(rng.integers(0, 40, n))],
        "device": rng.integers(0, 4, n).tolist(),  # integers: labelled by their text
        "y_pred": rng.normal(0, 3, n).tolist(),
        "y_true": rng.normal(0, 3, n).tolist(),
        "label_latency_s": [None if i % 5 == 0 else float(v) for i, v in enumerate(rng.exponential(100, n))],
    }
    table = pa.Table.from_pydict(rows)
    chunks = pa.Table.from_batches(table.to_batches(max_chunksize=30_000))
    assert chunks["region"].num_chunks == 7
    collector, reference = QualityCollector(cfg), Reference(cfg)
    collector.observe_pairs(chunks)
    reference.observe([{**r, "device": str(r["device"])} for r in table.to_pylist()])
    assert_same(collector, reference)
    assert any(key[2] == OTHER for key in collector._series)
    for model in MODELS:
        assert len(collector._seen[(model, "region")]) == 10


def test_an_answer_never_waits_for_a_step_s_series(monkeypatch: pytest.MonkeyPatch) -> None:
    """`observe_ingest` (the answer thread) goes on while `observe_pairs` holds the series lock."""
    collector = QualityCollector(config(5))
    inside, release = threading.Event(), threading.Event()
    plain = collector._capped

    def held(table: pa.Table) -> pa.Table:
        inside.set()
        release.wait(30)
        return plain(table)

    monkeypatch.setattr(collector, "_capped", held)
    step = threading.Thread(target=collector.observe_pairs, args=(pa.table({
        "model": ["price"], "version": ["v1"], "region": ["eu"], "device": [None],
        "y_pred": [1.0], "y_true": [0.0], "label_latency_s": [None]}),))
    step.start()
    assert inside.wait(30)
    answered = threading.Thread(target=collector.observe_ingest, args=("labels", 7, 1, ["y_true is missing"]))
    answered.start()
    answered.join(30)
    assert not answered.is_alive(), "observe_ingest waited for the step"
    release.set()
    step.join(30)
    assert collector._labels == 7 and collector._duplicates["labels"] == 1
    assert collector._series[("price", "v1", "eu", "")].count == 1
