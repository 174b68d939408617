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

import math
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
        self._lock = threading.Lock()  # the series, their segment values, predictions, shadow
        self._counts_lock = threading.Lock()  # labels, rejects and duplicates (`observe_ingest`)
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
        """Newly labeled predictions: model, version, segments…, y_pred, y_true, label_latency_s.

        Vectorised per row (a step folds in a few seconds' labels, millions of rows); the lock
        is held to cap segment values and to add the per-series sums, not for the arithmetic.
        """
        n = pairs.num_rows
        if n == 0:
            return
        with self._lock:
            pairs = self._capped(pairs)
        keys, series = _series_of(pairs, self.label_names)
        groups = len(keys)
        r = pairs["y_pred"].to_numpy() - pairs["y_true"].to_numpy()
        sq = r * r
        latency = pc.cast(pairs["label_latency_s"], pa.float64())  # null when the label had no label_ts
        timed = pc.is_valid(latency).to_numpy(zero_copy_only=False)
        lat_values = pc.fill_null(latency, 0.0).to_numpy()
        bounds = {model: np.asarray(self.config.buckets_for(model)) for model in {k[0] for k in keys}}
        width = max(len(b) for b in bounds.values()) + 1
        bucket = np.empty(n, dtype=np.int64)
        group_model = np.array([k[0] for k in keys], dtype=object)
        for model, model_bounds in bounds.items():
            rows = (group_model == model)[series]
            bucket[rows] = np.searchsorted(model_bounds, sq[rows], side="left")
        n_lat = len(self._lat_bounds) + 1
        lat_bucket = np.searchsorted(self._lat_bounds, lat_values[timed], side="left")

        def per_group(weights: np.ndarray | None = None) -> np.ndarray:
            return np.bincount(series, weights=weights, minlength=groups)

        sum_sq, sum_abs = per_group(sq), per_group(np.abs(r))
        sum_pos, sum_neg = per_group(np.maximum(r, 0.0)), per_group(np.maximum(-r, 0.0))
        count = per_group()
        lat_sum = per_group(np.where(timed, lat_values, 0.0))
        lat_count = np.bincount(series[timed], minlength=groups)
        buckets = np.bincount(series * width + bucket, minlength=groups * width).reshape(groups, width)
        lat_buckets = np.bincount(series[timed] * n_lat + lat_bucket, minlength=groups * n_lat).reshape(groups, n_lat)
        with self._lock:
            for g, key in enumerate(keys):
                s = self._series.get(key)
                if s is None:
                    s = self._series[key] = _Series(len(bounds[key[0]]), len(self._lat_bounds))
                s.sum_sq += float(sum_sq[g])
                s.sum_abs += float(sum_abs[g])
                s.sum_pos += float(sum_pos[g])
                s.sum_neg += float(sum_neg[g])
                s.count += int(count[g])
                s.lat_sum += float(lat_sum[g])
                s.lat_count += int(lat_count[g])
                s.buckets += buckets[g, :len(s.buckets)]
                s.lat_buckets += lat_buckets[g]

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
        """Counted as each request is answered, under a lock of its own: an answer never waits
        for a step's series."""
        with self._counts_lock:
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
        """Segment values past the per-model cap replaced by `__other__` (under the lock).

        First come, first kept: a model's distinct values are taken in the order of their
        first row, so the outcome is that of a row-by-row pass, at the cost of one per value.
        """
        cap = self.config.metrics.max_segment_values
        model_codes, models = _codes(table["model"])
        for name in self.segments:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
                continue
            column = pc.cast(table[name], pa.string())
            value_codes, values = _codes(column)
            pairs = model_codes * len(values) + value_codes
            over = []
            for pair in _in_order_of_first_row(pairs, len(models) * len(values)):
                model, value = models[pair // len(values)], values[pair % len(values)]
                if value is None:
                    continue
                seen = self._seen[(model, name)]
                if value in seen:
                    continue
                if len(seen) < cap:
                    seen.add(value)
                else:
                    over.append(pair)
            if over:
                column = pc.if_else(pa.array(np.isin(pairs, over)), pa.scalar(OTHER), column)
            table = table.set_column(table.column_names.index(name), name, column)
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
            for (model, version), n in sorted(self._shadow.items()):
                shadow.add_metric([model, version], float(n))
        with self._counts_lock:
            labels.add_metric([], float(self._labels))
            for (kind, reason), n in sorted(self._rejects.items()):
                rejects.add_metric([kind, reason], float(n))
            for kind, n in sorted(self._duplicates.items()):
                dups.add_metric([kind], float(n))
        yield from (hist, latency, abs_err, pos, neg, preds, labels, shadow, rejects, dups)


def _codes(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[str | None]]:
    """Each row's index into the column's distinct values as text, and those values; a null's
    index is the last, whose value is None."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(pc.cast(column, pa.string()))
    values: list[str | None] = [*encoded.dictionary.to_pylist(), None]
    codes = pc.fill_null(encoded.indices, len(values) - 1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, values


def _in_order_of_first_row(codes: np.ndarray, space: int) -> np.ndarray:
    """The distinct values of `codes` (each in [0, space)), in the order of their first row."""
    if space <= max(1 << 22, 4 * len(codes)):
        first = np.full(space, len(codes), dtype=np.int64)
        np.minimum.at(first, codes, np.arange(len(codes), dtype=np.int64))
        present = np.flatnonzero(first < len(codes))
        return present[np.argsort(first[present], kind="stable")]
    distinct, first = np.unique(codes, return_index=True)
    return distinct[np.argsort(first, kind="stable")]


def _series_of(table: pa.Table, names: Sequence[str]) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The distinct label sets of the rows (their values as text, "" for null) and each row's
    index into them."""
    codes, values = zip(*(_codes(table[name]) for name in names))
    space = math.prod(len(v) for v in values)
    if space < 1 << 62:  # one integer per row: its codes as the digits of a mixed-radix number
        combined = np.zeros(table.num_rows, dtype=np.int64)
        for column_codes, column_values in zip(codes, values):
            combined = combined * len(column_values) + column_codes
        if space <= max(1 << 22, 4 * table.num_rows):
            distinct = np.flatnonzero(np.bincount(combined, minlength=space))
            renumber = np.zeros(space, dtype=np.int64)
            renumber[distinct] = np.arange(len(distinct))
            series = renumber[combined]
        else:
            distinct, series = np.unique(combined, return_inverse=True)
        rows = []
        for number in distinct.tolist():
            digits = []
            for column_values in reversed(values):
                number, digit = divmod(number, len(column_values))
                digits.append(column_values[digit])
            rows.append(digits[::-1])
    else:
        distinct, series = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
        rows = [[v[i] for v, i in zip(values, row)] for row in distinct.tolist()]
    keys = [tuple("" if v is None else str(v) for v in row) for row in rows]
    return keys, np.asarray(series, dtype=np.int64).reshape(-1)


def _le(bound: float) -> str:
    return floatToGoString(float(bound))
