"""Baselines: the MSE (and every other metric) a model is expected to have, with n and standard errors.

`msewatch baseline set` records one from a holdout file or from a stored production period,
for the whole model and, with `--by`, for each value of a segment column, so cohort rules
compare each cohort with its own baseline. Without an explicit baseline, rules use the median of
the daily MSE over the trailing 30 days (M4, M9), read from the rollups; its standard error is
the median's, 1.2533 · sd / √days.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from msewatch.errors import InputError
from msewatch.evaluate import EvalSpec, run_evaluation

__all__ = ["BASELINE_DDL", "Baseline", "default_baseline", "find_baseline", "list_baselines", "record_baseline"]

BASELINE_DDL = """
CREATE TABLE IF NOT EXISTS baselines (
    model VARCHAR NOT NULL,
    version VARCHAR NOT NULL,          -- '' : any version
    segment VARCHAR NOT NULL,          -- '' : the whole model
    segment_value VARCHAR NOT NULL,
    n BIGINT NOT NULL,
    metrics VARCHAR NOT NULL,          -- JSON: every metric of the evaluation, with *_se
    source VARCHAR NOT NULL,
    since TIMESTAMPTZ,
    until TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model, version, segment, segment_value)
);
"""

DEFAULT_DAYS = 30
_MEDIAN_SE = math.sqrt(math.pi / 2)  # asymptotic sd of a normal sample's median over the mean's


@dataclass(frozen=True)
class Baseline:
    model: str
    version: str
    n: int
    metrics: dict[str, Any]
    source: str
    segment: str = ""
    segment_value: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    created_at: dt.datetime | None = None
    explicit: bool = True
    cohorts: dict[str, Baseline] = field(default_factory=dict)

    @property
    def mse(self) -> float | None:
        return self.metrics.get("mse")

    @property
    def mse_se(self) -> float | None:
        return self.metrics.get("mse_se")

    def to_dict(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return None if t is None else t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")

        out = {
            "model": self.model, "version": self.version or None, "segment": self.segment or None,
            "segment_value": self.segment_value or None, "n": self.n, "source": self.source,
            "since": iso(self.since), "until": iso(self.until), "created_at": iso(self.created_at),
            "explicit": self.explicit, "metrics": self.metrics,
        }
        return out


def ensure_tables(con: Any) -> None:
    con.execute(BASELINE_DDL)


def record_baseline(con: Any, engine: Any, predictions: Any, labels: Any, *, model: str, version: str | None,
                    by: tuple[str, ...] = (), source: str, since: dt.datetime | None = None,
                    until: dt.datetime | None = None, holdout: bool = False) -> list[Baseline]:
    """Evaluate the input (with standard errors) and store it as the baseline of model/version.

    A `holdout` file is taken whole (it is that model's holdout set); the store is filtered to
    the model, version and time range. Replaces an earlier baseline of the same model and
    version, cohorts included.
    """
    ensure_tables(con)
    spec = EvalSpec(since=since, until=until, standard_errors=True,
                    model=None if holdout else model, version=None if holdout else version)
    rows = [({}, run_evaluation(engine, predictions, labels, spec))]
    for column in by:
        grouped = EvalSpec(by=(column,), since=since, until=until, standard_errors=True,
                           model=spec.model, version=spec.version)
        rows.append(({"segment": column}, run_evaluation(engine, predictions, labels, grouped)))
    now = dt.datetime.now(dt.timezone.utc)
    made: list[Baseline] = []
    for key, found in rows:
        for row in found:
            segment = key.get("segment", "")
            value = "" if not segment else str(row.pop(segment))
            if not row.get("n_labeled"):
                if not segment:
                    raise InputError(f"no labeled predictions for model {model!r} in that data; nothing to record.")
                continue
            metrics = {k: v for k, v in row.items() if k not in ("n_predictions", "n_labeled")}
            made.append(Baseline(model, version or "", int(row["n_labeled"]), metrics, source, segment, value,
                                 since, until, now))
    con.execute("BEGIN")
    try:
        con.execute("DELETE FROM baselines WHERE model = $m AND version = $v", {"m": model, "v": version or ""})
        for b in made:
            con.execute(
                "INSERT INTO baselines VALUES ($model, $version, $segment, $value, $n, $metrics, $source, "
                "$since, $until, $created)",
                {"model": b.model, "version": b.version, "segment": b.segment, "value": b.segment_value, "n": b.n,
                 "metrics": json.dumps(b.metrics), "source": b.source, "since": since, "until": until,
                 "created": now},
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return made


def _from_row(row: tuple[Any, ...]) -> Baseline:
    model, version, segment, value, n, metrics, source, since, until, created = row
    return Baseline(model, version, int(n), json.loads(metrics), source, segment, value, since, until, created)


def list_baselines(con: Any, model: str | None = None) -> list[Baseline]:
    """Every stored baseline (whole-model rows, each with its cohorts attached); none when the
    store has no baselines table (no `msewatch baseline set` or monitor ever wrote to it)."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'baselines' AND schema_name = 'main'"
    ).fetchall()[0][0]
    if not exists:
        return []
    where, params = ("WHERE model = $m", {"m": model}) if model else ("", {})
    rows = [_from_row(r) for r in con.execute(
        f"SELECT * FROM baselines {where} ORDER BY model, version, segment, segment_value", params
    ).fetchall()]
    tops = {(b.model, b.version): b for b in rows if not b.segment}
    for b in rows:
        if b.segment and (b.model, b.version) in tops:
            tops[(b.model, b.version)].cohorts[f"{b.segment}={b.segment_value}"] = b
    return list(tops.values())


def find_baseline(con: Any, model: str, version: str | None = None) -> Baseline | None:
    """The explicit baseline for model/version; for no version, the model's most recent one."""
    found = list_baselines(con, model)
    if version is not None:
        exact = [b for b in found if b.version == version]
        if exact:
            return exact[0]
    found.sort(key=lambda b: b.created_at or dt.datetime.min.replace(tzinfo=dt.timezone.utc), reverse=True)
    anyv = [b for b in found if b.version == ""] or found
    return anyv[0] if anyv else None


def default_baseline(con: Any, model: str, until: dt.datetime, *, version: str | None = None,
                     days: int = DEFAULT_DAYS) -> Baseline | None:
    """Median of the daily MSE over the `days` before `until`, from the rollups."""
    since = until - dt.timedelta(days=days)
    params: dict[str, Any] = {"m": model, "lo": since, "hi": until, "t0": until.timestamp()}
    version_sql = ""
    if version is not None:
        version_sql = "AND version = $v"
        params["v"] = version
    rows = con.execute(
        f"""SELECT floor((epoch(bucket_start) - $t0) / 86400) AS day, sum(n_labeled), sum(sum_sq)
        FROM rollups WHERE model = $m {version_sql} AND bucket_start >= $lo AND bucket_start < $hi
          AND n_labeled > 0
        GROUP BY 1 ORDER BY 1""",
        params,
    ).fetchall()
    if not rows:
        return None
    n = np.array([r[1] for r in rows], dtype=float)
    mse = np.array([r[2] for r in rows], dtype=float) / n
    median = float(np.median(mse))
    se = float(_MEDIAN_SE * mse.std(ddof=1) / math.sqrt(len(mse))) if len(mse) > 1 else None
    metrics = {"mse": median, "mse_se": se, "rmse": math.sqrt(median), "days": len(mse)}
    return Baseline(model, version or "", int(n.sum()), metrics, f"median of daily MSE, trailing {days} days",
                    since=since, until=until, explicit=False)
