"""Prometheus exposition of what the server has ingested, updated a commit at a time.

These series count **at label arrival**: a prediction enters `msewatch_squared_error` when it
first has both its value and its label (whichever came second), in the commit that completed
the pair. `/v1/metrics` instead windows by prediction time and uses the latest label revision;
a later correction of a label shows there, but cannot be taken back from a counter here.

Per label set (`model`, `version`, the configured segment columns) the state is a few sums and
bucket counts updated with NumPy per commit, so exposition costs nothing per event. Segment
values past `max_segment_values` per model and segment become `__other__`, keeping the number
of series bounded however many values clients send. Counters start at zero when the server
starts, as Prometheus expects of a process restart.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from msewatch.config import Config

__all__ = ["OTHER", "QualityCollector", "reject_reason"]

OTHER = "__other__"

_REASONS = (
    ("not valid JSON", "malformed"),
    ("expected a JSON object", "malformed"),
    ("must be a string, number", "malformed"),
    ("fields", "malformed"),
    ("field name", "malformed"),
    ("different content", "conflict"),
    ("longer than", "too_long"),
    ("NUL", "bad_id"),
    ("not a finite number", "not_finite"),
    ("not a number", "not_a_number"),
    ("is empty", "missing"),
    ("is missing", "missing"),
    ("time", "bad_timestamp"),
)


def reject_reason(error: str) -> str:
    """A bounded reason label for a reject message."""
    for text, reason in _REASONS:
        if text in error:
            return reason
    return "invalid"


class _Series:
    __slots__ = ("buckets", "sum_sq", "count", "sum_abs", "sum_pos", "sum_neg", "lat_buckets", "lat_sum", "lat_count")

    def __init__(self, n_buckets: int, n_lat: int) -> None:
        self.buckets = np.zeros(n_buckets + 1, dtype=np.int64)  # the last is +Inf
        self.lat_buckets = np.zeros(n_lat + 1, dtype=np.int64)
        self.sum_sq = self.sum_abs = self.sum_pos = self.sum_neg = self.lat_sum = 0.0
        self.count = self.lat_count = 0


class QualityCollector(Collector):
    """Quality and ingest series for `/metrics`; `observe_*` are called by the commit thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.segments: tuple[str, ...] = config.metrics.segments
        self.label_names = ["model", "version", *self.segments]
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], _Series] = {}
        self._predictions: dict[tuple[str, ...], int] = defaultdict(int)
        self._shadow: dict[tuple[str, str], int] = defaultdict(int)  # (model, version) → n
        self._labels = 0
        self._rejects: dict[tuple[str, str], int] = defaultdict(int)
        self._duplicates: dict[str, int] = defaultdict(int)
        self._seen: dict[tuple[str, str], set[str]] = defaultdict(set)  # (model, segment) → values
        self._lat_bounds = np.asarray(config.metrics.label_latency_buckets)

    # -- updates (commit thread) -----------------------------------------------------------------
    def observe_pairs(self, pairs: pa.Table) -> None:
        """Newly labeled predictions: model, version, segments…, y_pred, y_true, label_latency_s."""
        if pairs.num_rows == 0:
            return
        with self._lock:
            pairs = self._capped(pairs)
            for model in pc.unique(pairs["model"]).to_pylist():
                part = pairs.filter(pc.equal(pairs["model"], model))
                bounds = np.asarray(self.config.buckets_for(model))
                r = part["y_pred"].to_numpy() - part["y_true"].to_numpy()
                sq = r * r
                latency = part["label_latency_s"]  # null when the label had no label_ts
                lat_values = pc.fill_null(latency, 0.0).to_numpy()
                table = pa.table(
                    {
                        **{n: part[n] for n in self.label_names},
                        "_b": np.searchsorted(bounds, sq, side="left"),
                        "_sq": sq,
                        "_abs": np.abs(r),
                        "_pos": np.maximum(r, 0.0),
                        "_neg": np.maximum(-r, 0.0),
                        "_lb": np.searchsorted(self._lat_bounds, lat_values, side="left"),
                        "_lat": latency,
                    }
                )
                sums = table.group_by(self.label_names).aggregate(
                    [("_sq", "sum"), ("_abs", "sum"), ("_pos", "sum"), ("_neg", "sum"), ("_sq", "count"),
                     ("_lat", "sum"), ("_lat", "count")]
                )
                for row in sums.to_pylist():
                    s = self._get(row, len(bounds))
                    s.sum_sq += row["_sq_sum"]
                    s.sum_abs += row["_abs_sum"]
                    s.sum_pos += row["_pos_sum"]
                    s.sum_neg += row["_neg_sum"]
                    s.count += row["_sq_count"]
                    s.lat_sum += row["_lat_sum"] or 0.0
                    s.lat_count += row["_lat_count"]
                for row in table.group_by([*self.label_names, "_b"]).aggregate([("_b", "count")]).to_pylist():
                    self._get(row, len(bounds)).buckets[row["_b"]] += row["_b_count"]
                timed = table.filter(pc.is_valid(table["_lat"]))
                for row in timed.group_by([*self.label_names, "_lb"]).aggregate([("_lb", "count")]).to_pylist():
                    self._get(row, len(bounds)).lat_buckets[row["_lb"]] += row["_lb_count"]

    def observe_predictions(self, inserted: pa.Table) -> None:
        """New predictions grouped by model, version, segments…, with their count `n`."""
        with self._lock:
            for row in self._capped(inserted).to_pylist():
                self._predictions[self._key(row)] += row["n"]

    def observe_shadow(self, inserted: pa.Table) -> None:
        """New shadow predictions by model and version, with their count `n` (no segments)."""
        with self._lock:
            for row in inserted.to_pylist():
                self._shadow[(str(row["model"]), str(row["version"]))] += row["n"]

    def observe_ingest(self, kind: str, accepted: int, duplicates: int, errors: Sequence[str]) -> None:
        with self._lock:
            if kind == "labels":
                self._labels += accepted
            self._duplicates[kind] += duplicates
            for error in errors:
                self._rejects[(kind, reject_reason(error))] += 1

    # -- helpers ----------------------------------------------------------------------------------
    def _key(self, row: dict) -> tuple[str, ...]:
        return tuple("" if row.get(n) is None else str(row[n]) for n in self.label_names)

    def _get(self, row: dict, n_buckets: int) -> _Series:
        key = self._key(row)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(n_buckets, len(self._lat_bounds))
        return series

    def _capped(self, table: pa.Table) -> pa.Table:
        """Segment values past the per-model cap replaced by `__other__` (under the lock)."""
        cap = self.config.metrics.max_segment_values
        for name in self.segments:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
                continue
            column = pc.cast(table[name], pa.string())
            models = table["model"].to_pylist()
            values = column.to_pylist()
            out = []
            for model, value in zip(models, values):
                if value is None:
                    out.append(None)
                    continue
                seen = self._seen[(model, name)]
                if value in seen:
                    out.append(value)
                elif len(seen) < cap:
                    seen.add(value)
                    out.append(value)
                else:
                    out.append(OTHER)
            table = table.set_column(table.column_names.index(name), name, pa.array(out, pa.string()))
        return table

    # -- exposition ---------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        names = self.label_names
        hist = HistogramMetricFamily(
            "msewatch_squared_error",
            "Squared error (y_pred - y_true)^2 of predictions, counted when their label arrives; "
            "rate(_sum)/rate(_count) is the MSE over a range.",
            labels=names,
        )
        latency = HistogramMetricFamily(
            "msewatch_label_latency_seconds", "label_ts - ts of labels that arrived with a label_ts.", labels=names
        )
        abs_err = CounterMetricFamily("msewatch_absolute_error", "Sum of |y_pred - y_true| (MAE = rate / rate of _count).", labels=names)
        pos = CounterMetricFamily("msewatch_residual_positive", "Sum of positive residuals (over-prediction).", labels=names)
        neg = CounterMetricFamily("msewatch_residual_negative", "Sum of |negative residuals| (under-prediction); bias = (pos - neg) / count.", labels=names)
        preds = CounterMetricFamily("msewatch_predictions", "Predictions stored.", labels=names)
        labels = CounterMetricFamily("msewatch_labels", "Label rows stored (first labels and revisions).")
        shadow = CounterMetricFamily(
            "msewatch_shadow_predictions",
            "Shadow predictions stored (a candidate version beside production; in no quality series).",
            labels=["model", "version"],
        )
        rejects = CounterMetricFamily("msewatch_ingest_rejected", "Rows refused at ingest, by reason.", labels=["kind", "reason"])
        dups = CounterMetricFamily("msewatch_ingest_duplicates", "Re-sent rows recognised as duplicates.", labels=["kind"])
        with self._lock:
            for key, s in sorted(self._series.items()):
                model = key[0]
                bounds = self.config.buckets_for(model)
                cumulative = np.cumsum(s.buckets)
                buckets = [(_le(b), float(c)) for b, c in zip(bounds, cumulative[:-1])]
                buckets.append(("+Inf", float(cumulative[-1])))
                hist.add_metric(list(key), buckets, s.sum_sq)
                lat_cum = np.cumsum(s.lat_buckets)
                lat = [(_le(b), float(c)) for b, c in zip(self._lat_bounds, lat_cum[:-1])]
                lat.append(("+Inf", float(lat_cum[-1])))
                latency.add_metric(list(key), lat, s.lat_sum)
                abs_err.add_metric(list(key), s.sum_abs)
                pos.add_metric(list(key), s.sum_pos)
                neg.add_metric(list(key), s.sum_neg)
            for key, n in sorted(self._predictions.items()):
                preds.add_metric(list(key), float(n))
            labels.add_metric([], float(self._labels))
            for (model, version), n in sorted(self._shadow.items()):
                shadow.add_metric([model, version], float(n))
            for (kind, reason), n in sorted(self._rejects.items()):
                rejects.add_metric([kind, reason], float(n))
            for kind, n in sorted(self._duplicates.items()):
                dups.add_metric([kind], float(n))
        yield from (hist, latency, abs_err, pos, neg, preds, labels, shadow, rejects, dups)


def _le(bound: float) -> str:
    return floatToGoString(float(bound))
