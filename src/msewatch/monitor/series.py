"""Per-minute series of one model's labeled-error counts, read from the rollups (or, with
`engine_series`, computed from raw tables in any engine by one Ibis query).

A `MinuteSeries` holds, for every minute of prediction time in a range, how many predictions
were made, how many have a label, how many of those were good for a threshold, Σr² and the
centred sum of squares of r² (for standard errors), and the latest label time. Window sums are
differences of prefix sums, so a burn rate over any window costs O(1) once the series is built;
the same series serves the server's evaluation (built from the rollups at `now`) and the
simulations of the tests (built from generated arrays and read at many instants).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MinuteSeries", "WindowSums", "engine_series", "load_series"]

MINUTE = 60


@dataclass(frozen=True)
class WindowSums:
    n_predictions: int
    n_labeled: int
    n_good: int | None
    sum_sq: float

    @property
    def coverage(self) -> float | None:
        return self.n_labeled / self.n_predictions if self.n_predictions else None

    @property
    def mse(self) -> float | None:
        return self.sum_sq / self.n_labeled if self.n_labeled else None


@dataclass
class MinuteSeries:
    """Minute `i` starts at `start + 60 i` seconds (epoch, UTC)."""

    start: int
    n_predictions: np.ndarray
    n_labeled: np.ndarray
    sum_sq: np.ndarray
    n_good: np.ndarray | None = None
    m2_sq: np.ndarray | None = None
    last_label_at: float | None = None  # epoch seconds of the latest label time, if any
    label_times: np.ndarray | None = None  # per minute: latest label time of its predictions (NaN: none)
    _prefix: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("n_predictions", "n_labeled", "sum_sq", "n_good"):
            values = getattr(self, name)
            if values is not None:
                self._prefix[name] = np.concatenate(([0], np.cumsum(values)))

    @property
    def end(self) -> int:
        return self.start + MINUTE * len(self.n_predictions)

    def _index(self, t: float) -> int:
        """Minutes wholly before instant `t` (clipped to the series)."""
        return int(min(max((t - self.start) // MINUTE, 0), len(self.n_predictions)))

    def sums(self, since: float, until: float) -> WindowSums:
        """Totals of the minutes starting in [since, until)."""
        lo, hi = self._index(since + MINUTE - 1), self._index(until + MINUTE - 1)
        lo = min(lo, hi)

        def total(name: str) -> Any:
            p = self._prefix.get(name)
            return None if p is None else p[hi] - p[lo]

        good = total("n_good")
        return WindowSums(
            int(total("n_predictions")), int(total("n_labeled")), None if good is None else int(good),
            float(total("sum_sq")),
        )

    def m2(self, since: float, until: float) -> float | None:
        """Centred sum of squares of r² over [since, until), merged across minutes."""
        if self.m2_sq is None:
            return None
        lo, hi = self._index(since + MINUTE - 1), self._index(until + MINUTE - 1)
        n = self.n_labeled[lo:hi].astype(float)
        keep = n > 0
        if not keep.any():
            return None
        n, sq, m2 = n[keep], self.sum_sq[lo:hi][keep], self.m2_sq[lo:hi][keep]
        mean_i = sq / n
        mean = sq.sum() / n.sum()
        return float(m2.sum() + (n * (mean_i - mean) ** 2).sum())

    def last_label_before(self, t: float) -> float | None:
        """The latest label time at or before `t` (as known from the minutes' label times)."""
        found = [self.last_label_at] if self.last_label_at is not None and self.last_label_at <= t else []
        if self.label_times is not None:
            times = self.label_times[~np.isnan(self.label_times)]
            times = times[times <= t]
            if len(times):
                found.append(float(times.max()))
        return max(found) if found else None


def load_series(con: Any, model: str, since: dt.datetime, until: dt.datetime, *,
                version: str | None = None, threshold: float | None = None) -> MinuteSeries:
    """The minutes of `model` (and `version`) in [since, until) from the rollups, summed over
    versions; `n_good` counts squared errors ≤ `threshold` (which must be tracked)."""
    start = int(since.timestamp()) // MINUTE * MINUTE
    stop = -(-int(until.timestamp()) // MINUTE) * MINUTE
    size = max((stop - start) // MINUTE, 0)
    params: dict[str, Any] = {"model": model, "lo": dt.datetime.fromtimestamp(start, dt.timezone.utc),
                              "hi": dt.datetime.fromtimestamp(stop, dt.timezone.utc)}
    version_sql = ""
    if version is not None:
        version_sql = "AND r.version = $version"
        params["version"] = version
    good_sql, good_join = "NULL::BIGINT", ""
    if threshold is not None:
        good_sql = "sum(g.n_good)"
        good_join = ("LEFT JOIN rollup_good g ON g.model = r.model AND g.version = r.version "
                     "AND g.bucket_start = r.bucket_start AND g.threshold = $threshold")
        params["threshold"] = float(threshold)
    rows = con.execute(
        f"""SELECT ((epoch(r.bucket_start) - {start}) // {MINUTE})::BIGINT AS i,
            sum(r.n_predictions)::BIGINT, sum(r.n_labeled)::BIGINT, coalesce(sum(r.sum_sq), 0),
            {good_sql}, sum(r.m2_sq + CASE WHEN r.n_labeled > 0 THEN r.sum_sq * r.sum_sq / r.n_labeled ELSE 0 END),
            max(epoch(r.last_label_at))
        FROM rollups r {good_join}
        WHERE r.model = $model {version_sql} AND r.bucket_start >= $lo AND r.bucket_start < $hi
        GROUP BY 1 ORDER BY 1""",
        params,
    ).fetchnumpy()
    idx = rows["i"].astype(np.int64) if len(rows["i"]) else np.zeros(0, np.int64)
    cols = list(rows.values())

    def dense(values: Any, dtype: Any) -> np.ndarray:
        out = np.zeros(size, dtype=dtype)
        if len(idx):
            out[idx] = np.nan_to_num(np.asarray(values, dtype=float)).astype(dtype)
        return out

    n_lab = dense(cols[2], np.int64)
    sum_sq = dense(cols[3], float)
    # Σ over versions of (m2_i + n_i·mean_i²) − n·mean² is the merged m2 of the minute
    raw = dense(cols[5], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        m2 = np.where(n_lab > 0, raw - np.where(n_lab > 0, sum_sq * sum_sq / np.maximum(n_lab, 1), 0), 0.0)
    label_times = np.full(size, np.nan)
    if len(idx):
        # NULL (a minute without labels) arrives masked: NaN, not the masked slot's 0
        label_times[idx] = np.ma.filled(np.ma.asarray(cols[6]).astype(float), np.nan)
    last = con.execute(
        f"SELECT max(epoch(last_label_at)) FROM rollups r WHERE r.model = $model {version_sql}",
        {k: v for k, v in params.items() if k in ("model", "version")},
    ).fetchall()[0][0]
    return MinuteSeries(
        start=start,
        n_predictions=dense(cols[1], np.int64),
        n_labeled=n_lab,
        sum_sq=sum_sq,
        n_good=dense(cols[4], np.int64) if threshold is not None else None,
        m2_sq=np.maximum(m2, 0.0),
        last_label_at=None if last is None else float(last),
        label_times=label_times,
    )


def engine_series(engine: Any, predictions: Any, labels: Any, model: str, since: dt.datetime, until: dt.datetime, *,
                  version: str | None = None, threshold: float | None = None) -> MinuteSeries:
    """The series `load_series` reads from the rollups, computed from raw tables in `engine`.

    `predictions` and `labels` are as `msewatch.engines.engine_tables` gives them (one current
    label per id, `_label_time` = the label's time or else its arrival, in epoch seconds). The
    grouping happens in the engine; one row per minute comes back.
    """
    import ibis

    from msewatch.evaluate import epoch_seconds
    from msewatch.schema import UTC

    start = int(since.timestamp()) // MINUTE * MINUTE
    stop = -(-int(until.timestamp()) // MINUTE) * MINUTE
    size = max((stop - start) // MINUTE, 0)
    dialect = getattr(engine, "name", "")
    p = predictions.filter(predictions.model == model)
    if version is not None:
        p = p.filter(p.version == version)
    if "_ok" in p.columns:
        p = p.filter(p._ok)
    lo = ibis.literal(dt.datetime.fromtimestamp(start, dt.timezone.utc)).cast(UTC)
    hi = ibis.literal(dt.datetime.fromtimestamp(stop, dt.timezone.utc)).cast(UTC)
    has_time = "_label_time" in labels.columns
    j = p.left_join(labels, "prediction_id")
    j = j.select(ts=j.ts, y_pred=j.y_pred, y_true=j.y_true,
                 label_time=j._label_time if has_time else ibis.null("float64"))
    # the newest label time of the model, over all its predictions (what the rollups keep)
    last_expr = j.aggregate(last=j.label_time.max())
    j = j.filter((j.ts >= lo) & (j.ts < hi))
    r = j.y_pred - j.y_true
    sq = r * r
    minute = ((epoch_seconds(j.ts, dialect) - start) / MINUTE).floor().cast("int64")
    aggs: dict[str, Any] = {
        "n_predictions": j.count(), "n_labeled": j.y_true.count(), "sum_sq": sq.sum(),
        "m2": sq.var(how="pop") * sq.count(), "label_time": j.label_time.max(),
    }
    if threshold is not None:
        aggs["n_good"] = (sq <= float(threshold)).cast("int64").sum()
    rows = engine.to_pyarrow(j.group_by(i=minute).aggregate(**aggs)).to_pydict()
    last = engine.to_pyarrow(last_expr).to_pydict()["last"][0]
    idx = np.asarray(rows["i"], dtype=np.int64)

    def dense(name: str, dtype: Any, fill: float = 0) -> np.ndarray:
        out = np.full(size, fill, dtype=dtype)
        if len(idx):
            values = np.array([fill if v is None else v for v in rows[name]], dtype=float)
            out[idx] = np.nan_to_num(values, nan=fill).astype(dtype)
        return out

    return MinuteSeries(
        start=start,
        n_predictions=dense("n_predictions", np.int64),
        n_labeled=dense("n_labeled", np.int64),
        sum_sq=dense("sum_sq", float),
        n_good=dense("n_good", np.int64) if threshold is not None else None,
        m2_sq=np.maximum(dense("m2", float), 0.0),
        last_label_at=None if last is None else float(last),
        label_times=dense("label_time", float, np.nan),
    )
