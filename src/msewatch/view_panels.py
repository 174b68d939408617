"""The dashboard panels that ask the monitor package: the baseline the versions are ranked
against, the canary judge's verdict, and the feature comparison with the baseline period.

They reuse `msewatch.monitor` (find_baseline/default_baseline, judge_canary, drift.compare) so
the dashboard shows what the alert rules, `msewatch canary` and `msewatch drift` would say.
"""

from __future__ import annotations

import uuid
from typing import Any

from msewatch.views import _Ctx, _fmt, _iso, _q, _ts

__all__ = ["baseline", "canary_verdict", "features", "reference_period"]


def baseline(ctx: _Ctx, version: str | None = None) -> tuple[Any, str]:
    """The model's baseline as msewatch's alert rules pick it, and a note saying which it is:
    the recorded one (`msewatch baseline set`), else the median daily MSE of the trailing 30 days."""
    from msewatch.monitor.baselines import default_baseline, find_baseline

    b = find_baseline(ctx.con, ctx.model, version)
    if b is not None and b.mse is not None:
        period = f", period {_iso(b.since) or 'start'} → {_iso(b.until) or 'end'}" if b.since or b.until else ""
        return b, (f"baseline: recorded for {ctx.model}{' ' + b.version if b.version else ''} "
                   f"(MSE {b.mse:.4g}, n {b.n}, {b.source}{period})")
    b = default_baseline(ctx.con, ctx.model, _ts(ctx.until), version=version)
    if b is None or b.mse is None:
        return None, "baseline: none (no recorded baseline and no labeled data in the trailing 30 days)"
    return b, (f"baseline: no recorded baseline; the median of the daily MSE over the 30 days before "
               f"{_iso(_ts(ctx.until))} (MSE {b.mse:.4g}, {b.metrics.get('days')} days), as the alert rules use")


def canary_verdict(ctx: _Ctx, lo: float, hi: float, config: Any) -> tuple[dict[str, Any] | None, str]:
    """The canary judge's verdict on the newest version against the one before it, when both
    served in [lo, hi): judged as `msewatch canary` does, from the canary's first prediction."""
    from msewatch.monitor.canary import judge_canary

    if len(ctx.versions) < 2:
        return None, "one version only: nothing to judge"
    canary, control = ctx.versions[-1], ctx.versions[-2]
    served = {v for (v,) in ctx.con.execute(
        "SELECT DISTINCT version FROM rollups WHERE model = $m AND version IN ($c, $b) AND bucket_start >= $lo "
        "AND bucket_start < $hi AND n_predictions > 0",
        {"m": ctx.model, "c": canary, "b": control, "lo": _ts(int(lo) // 60 * 60), "hi": _ts(hi)}).fetchall()}
    if served != {canary, control}:
        return None, f"no verdict: the newest version {canary} and the previous one {control} did not both serve in the range"
    report = judge_canary(ctx.con, ctx.model, canary, control, until=_ts(hi), config=config).to_dict()
    ci = report["ci"]
    note = (f"canary {canary} vs control {control}: {report['verdict']}"
            + (f", MSE ratio {report['mse_ratio']:.3f}" if report["mse_ratio"] is not None else "")
            + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            + f" ({report['reason']})")
    return report, note


def reference_period(ctx: _Ctx, lo: float, hi: float) -> tuple[float, float, str]:
    """The recorded baseline's period when it has one, else the period of the same length before [lo, hi)."""
    from msewatch.monitor.baselines import find_baseline

    b = find_baseline(ctx.con, ctx.model, ctx.version)
    if b is not None and b.since is not None and b.until is not None:
        note = (f"baseline period {_iso(b.since)} → {_iso(b.until)} (the recorded baseline of {ctx.model}"
                f"{' ' + b.version if b.version else ''}, {b.source})")
        return b.since.timestamp(), b.until.timestamp(), note
    why = "the recorded baseline has no period" if b is not None else "no recorded baseline with a period"
    return lo - (hi - lo), lo, f"previous period {_iso(_ts(lo - (hi - lo)))} → {_iso(_ts(lo))} ({why})"


def features(ctx: _Ctx, cur: tuple[float, float], ref: tuple[float, float],
              ref_name: str) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """20-bin histograms of each feature in the range and the reference period (bins over their
    joint 1st–99th percentiles), and msewatch drift's comparison of the two (KS, PSI, W/sd)."""
    from msewatch.monitor.drift import compare

    if not ctx.features:
        return [], []
    con = ctx.con
    where, wparams = ctx.where()
    cols = ", ".join(f"p.{_q(n)}::DOUBLE AS _v{i}" for i, n in enumerate(ctx.features))
    source = " UNION ALL ".join(
        f"SELECT {side} AS _side, {cols} FROM predictions p WHERE {where} AND p.ts >= ${k}_lo AND p.ts < ${k}_hi"
        for side, k in ((0, "ref"), (1, "cur")))
    params = wparams | {"ref_lo": _ts(ref[0]), "ref_hi": _ts(ref[1]), "cur_lo": _ts(cur[0]), "cur_hi": _ts(cur[1])}
    table = f"_msewatch_features_{uuid.uuid4().hex}"  # per request, like the debug view's join
    con.execute(f"CREATE TEMP TABLE {table} AS {source}", params)
    try:
        rows, _ = compare(con, f"SELECT * FROM {table}", {}, [(n, "numeric") for n in ctx.features])
        feats: list[dict[str, Any]] = []
        for i, name in enumerate(ctx.features):
            col = f"_v{i}"
            lims = con.execute(f"SELECT quantile_cont({col}, 0.01), quantile_cont({col}, 0.99) FROM {table}").fetchall()[0]
            if lims[0] is None or lims[1] is None or lims[1] <= lims[0]:
                continue
            a, width = float(lims[0]), (float(lims[1]) - float(lims[0])) / 20
            counts = con.execute(
                f"""SELECT CASE WHEN _side = 1 THEN 'range' ELSE '{ref_name} period' END, least(greatest(floor(({col} - {a}) / {width}), 0), 19),
                count(*) FROM {table} WHERE {col} IS NOT NULL GROUP BY ALL""").fetchall()
            totals: dict[str, int] = {}
            for period, _, n in counts:
                totals[period] = totals.get(period, 0) + n
            feats += [{"feature": name, "period": period, "x": a + (b + 0.5) * width, "share": n / totals[period]}
                      for period, b, n in counts]
    finally:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    drift_rows = [[r.column, r.n_reference, r.n_current, _fmt(r.ks, ".4f"), _fmt(r.ks_p_value, ".3g"), _fmt(r.psi, ".4f"),
                   r.psi_band or "", _fmt(r.wasserstein_norm, ".4f"), "yes" if r.drift else ("" if r.test == "none" else "no")]
                  for r in rows]
    return feats, drift_rows
