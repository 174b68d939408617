"""Prometheus recording and alert rules for the SLOs of `msewatch.toml` (`msewatch rules`).

For teams that alert from Prometheus rather than from `msewatch serve`, this writes a rule file
over the series `/metrics` exposes (see `msewatch.server.exposition`):

- group `msewatch-quality`: MSE and RMSE per model and version, over 5m and 1h
  (`model_version:msewatch_squared_error:mse_rate5m` = rate of `_sum` / rate of `_count`).
- one group `msewatch-slo-<name>` per event SLO (`kind = "event"`): for every window its burn
  tiers use, the error ratio (labeled predictions with squared error above `threshold`, over
  all labeled predictions) and the number of labeled predictions, then one alert per tier.

An event is bad when its squared error is above the threshold. Thresholds are always bucket
boundaries (`Config.buckets_for`), so good = `msewatch_squared_error_bucket{le="<threshold>"}`
and all = `msewatch_squared_error_count`, exactly; the `le` value is spelled by the function
the exposition uses (`floatToGoString`: 25 → "25.0", 1e6 → "1e+06").

Alerts follow the SRE Workbook's multiwindow, multi-burn-rate policy (chapter 5): a tier fires
while the error ratio is at least `factor × (1 − objective)` (burn rate ≥ factor, as in
`msewatch.monitor.slo`) over both its long and its short window. As the Workbook recommends for this policy, the alerts have **no `for` clause**: the
long window already demands a sustained burn (14.4× over 1h spends 2% of a 30-day budget), the
short window makes the alert resolve within minutes of recovery, and a `for` would only delay
detection by as much again. As in the server, a window with fewer than `min_labels` labeled
predictions is not judged: both windows of a tier need that many for the tier to fire.

Not expressible over these counters, and left to `msewatch serve`:

- window SLOs (`kind = "window"`: "a window is good when its RMSE ≤ max_rmse"): counting good
  windows needs every window's RMSE, not a rate; these are skipped with a note.
- `label_delay` and `min_coverage`: the histogram counts a prediction when its label arrives,
  so there is no prediction-time view to delay or to join against; a note says so when set.

`prometheus_rules(config)` is the rule document (a dict, as Prometheus reads it),
`rules_notes(config)` what it leaves out, `render_rules(config)` the YAML text with those notes
as comments, `write_rules(config, path)` writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString

from msewatch.config import Config
from msewatch.errors import InputError
from msewatch.monitor.config import BurnTier, Slo
from msewatch.units import format_duration

__all__ = [
    "ALERT_NAME",
    "QUALITY_WINDOWS",
    "bucket_le",
    "event_slos",
    "prometheus_rules",
    "render_rules",
    "rules_notes",
    "write_rules",
]

ALERT_NAME = "MsewatchErrorBudgetBurn"
QUALITY_WINDOWS = (300, 3600)  # MSE/RMSE recording rules: 5m and 1h

_HIST = "msewatch_squared_error"
_RATIO = "model:msewatch_slo_errors:ratio_rate{w}"
_EVENTS = "model:msewatch_slo_events:increase{w}"


def bucket_le(threshold: float) -> str:
    """The `le` label value of the bucket bounded by `threshold`, as `/metrics` spells it.

    >>> bucket_le(25), bucket_le(0.1), bucket_le(1e6)
    ('25.0', '0.1', '1e+06')
    """
    return floatToGoString(float(threshold))


def event_slos(config: Config) -> list[Slo]:
    """The SLOs that become rules: the event SLOs, in config order."""
    return [s for s in config.monitor.slos if s.kind == "event"]


def prometheus_rules(config: Config) -> dict[str, Any]:
    """The Prometheus rule document (`{"groups": [...]}`) for the event SLOs of `config`.

    Raises `InputError` when the config has no event SLO: a rule file without alerts is almost
    surely the wrong config file, and window SLOs cannot be written (see `rules_notes`).
    """
    slos = event_slos(config)
    if not slos:
        raise InputError(_nothing_to_write(config))
    groups = [_quality_group()]
    groups += [_slo_group(config, slo) for slo in slos]
    return {"groups": groups}


def rules_notes(config: Config) -> list[str]:
    """What the rule file leaves to `msewatch serve`, one sentence each."""
    notes = []
    for slo in config.monitor.slos:
        if slo.kind == "window":
            notes.append(
                f"SLO {slo.name!r} (kind = \"window\") is not written: whether a window's RMSE met "
                f"max_rmse cannot be computed from Prometheus counters; msewatch serve evaluates it."
            )
            continue
        if slo.label_delay:
            notes.append(
                f"SLO {slo.name!r}: label_delay = {format_duration(slo.label_delay)} does not apply "
                "in Prometheus (the histogram counts a prediction when its label arrives)."
            )
        if slo.min_coverage:
            notes.append(
                f"SLO {slo.name!r}: min_coverage = {slo.min_coverage:g} is not applied in Prometheus "
                "(coverage needs predictions joined to labels by prediction time); msewatch serve applies it."
            )
    return notes


def render_rules(config: Config) -> str:
    """The rule file: a comment header (source, notes) and the YAML document."""
    doc = prometheus_rules(config)
    source = Path(config.path).name if config.path else "the default config"
    header = [
        f"# Prometheus rules for msewatch, written by `msewatch rules` from {source}.",
        "# Load them with rule_files in prometheus.yml; check them with `promtool check rules FILE`.",
        "# Alerts: SRE Workbook multiwindow, multi-burn-rate policy (no `for`: the short window",
        "# confirms the burn is still going on). Series: msewatch serve's /metrics.",
    ]
    header += [f"# Note: {note}" for note in rules_notes(config)]
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000)
    return "\n".join(header) + "\n" + body


def write_rules(config: Config, path: str | os.PathLike[str]) -> Path:
    """Write `render_rules(config)` to `path` (replacing it whole, never half-written)."""
    text = render_rules(config)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{target}: cannot write the rules file ({exc.strerror or exc}).") from None
    return target


# --------------------------------------------------------------------------------- groups


def _quality_group() -> dict[str, Any]:
    rules = []
    by = "sum by (model, version)"
    for seconds in QUALITY_WINDOWS:
        w = _dur(seconds)
        mse = f"model_version:{_HIST}:mse_rate{w}"
        rules.append({
            "record": mse,
            "expr": f"{by} (rate({_HIST}_sum[{w}]))\n/\n{by} (rate({_HIST}_count[{w}]))\n",
        })
        rules.append({"record": f"model_version:{_HIST}:rmse_rate{w}", "expr": f"sqrt({mse})"})
    return {"name": "msewatch-quality", "rules": rules}


def _slo_group(config: Config, slo: Slo) -> dict[str, Any]:
    assert slo.threshold is not None  # an event SLO always has one (checked by the config)
    matchers = f"model={_quote(slo.model)}"
    if slo.version is not None:
        matchers += f", version={_quote(slo.version)}"
    labels = {"slo": slo.name}
    if slo.version is not None:
        labels["version"] = slo.version
    le = bucket_le(slo.threshold)
    windows = sorted({t.long for t in slo.tiers} | {t.short for t in slo.tiers})
    rules: list[dict[str, Any]] = []
    for seconds in windows:
        w = _dur(seconds)
        count = f"sum by (model) (rate({_HIST}_count{{{matchers}}}[{w}]))"
        good = f"sum by (model) (rate({_HIST}_bucket{{{matchers}, le={_quote(le)}}}[{w}]))"
        rules.append({
            "record": _RATIO.format(w=w),
            "expr": f"(\n  {count}\n  -\n  {good}\n)\n/\n{count}\n",
            "labels": dict(labels),
        })
        rules.append({
            "record": _EVENTS.format(w=w),
            "expr": f"sum by (model) (increase({_HIST}_count{{{matchers}}}[{w}]))",
            "labels": dict(labels),
        })
    rules += [_alert(config, slo, tier) for tier in slo.tiers]
    return {"name": f"msewatch-slo-{slo.name}", "rules": rules}


def _alert(config: Config, slo: Slo, tier: BurnTier) -> dict[str, Any]:
    long, short = _dur(tier.long), _dur(tier.short)
    sel = f"{{slo={_quote(slo.name)}}}"
    limit = f"({_num(tier.factor)} * (1 - {_num(slo.objective)}))"
    expr = (
        f"{_RATIO.format(w=long)}{sel} >= {limit}\n"
        f"and\n{_RATIO.format(w=short)}{sel} >= {limit}\n"
        f"and\n{_EVENTS.format(w=long)}{sel} >= {slo.min_labels}\n"
        f"and\n{_EVENTS.format(w=short)}{sel} >= {slo.min_labels}\n"
    )
    labels = {"severity": tier.severity, "slo": slo.name, "model": slo.model}
    if slo.version is not None:
        labels["version"] = slo.version
    labels |= {"long_window": long, "short_window": short}
    budget = 1.0 - slo.objective
    period = _dur(slo.period)
    who = f"model {slo.model}" + (f" version {slo.version}" if slo.version is not None else "")
    annotations = {
        "summary": (
            f"SLO {slo.name} ({who}): error budget burning at {_num(tier.factor)}x over {long} and {short}"
        ),
        "description": (
            f"{{{{ $value | humanizePercentage }}}} of the labeled predictions of {who} had a squared "
            f"error above {_num(slo.threshold)} over the last {long}, and at least "
            f"{_pct(tier.factor * budget)} over the last {short} too; the SLO allows {_pct(budget)} "
            f"({_pct(slo.objective)} good over {period}). At {_num(tier.factor)}x the whole {period} "
            f"budget lasts {_span(slo.period / tier.factor)}; the last {long} alone spent "
            f"{_pct(tier.factor * tier.long / slo.period)} of it."
        ),
        "runbook": slo.runbook or _default_runbook(config, slo),
    }
    if slo.runbook.startswith(("http://", "https://")):
        annotations["runbook_url"] = slo.runbook
    return {"alert": ALERT_NAME, "expr": expr, "labels": labels, "annotations": annotations}


def _default_runbook(config: Config, slo: Slo) -> str:
    by = ",".join(config.metrics.segments) or "SEGMENT"
    return (
        f"1. Check labels first: are labels of {slo.model} arriving (msewatch_labels_total, "
        f"msewatch_label_latency_seconds) and covering the predictions? Late or partial labels "
        f"skew the error ratio.\n"
        f"2. Recent deploys: compare versions (msewatch eval --server URL --model {slo.model} "
        f"--window 1h --by version); a new version is the usual cause.\n"
        f"3. Cohorts: --by {by} to find where the errors are, then look for feature drift upstream.\n"
        f"4. If a new version is worse, roll it back; otherwise fix the inputs or retrain."
    )


def _nothing_to_write(config: Config) -> str:
    if config.path is None:
        return "no SLOs to write rules for: give the config that declares them (--config msewatch.toml)."
    where = config.path
    windows = [s.name for s in config.monitor.slos if s.kind == "window"]
    if windows:
        return (
            f"{where}: nothing to write: its SLOs ({', '.join(windows)}) are window SLOs, which "
            f"Prometheus counters cannot express; msewatch serve evaluates them. Rules are written "
            f"for [[slos]] with kind = \"event\"."
        )
    return f"{where}: nothing to write: no [[slos]] with kind = \"event\" (rules are written for event SLOs)."


# --------------------------------------------------------------------------------- spelling


def _dur(seconds: int) -> str:
    """A Prometheus duration, in days rather than weeks: 28d, 1d, 6h, 5m."""
    return f"{seconds // 86400}d" if seconds % 86400 == 0 else format_duration(seconds)


def _quote(text: str) -> str:
    """A PromQL string literal (Go escapes, which JSON's are)."""
    return json.dumps(text, ensure_ascii=False)


def _num(x: float) -> str:
    """The shortest exact spelling of a number: 6.0 → '6', 14.4 → '14.4'."""
    r = repr(float(x))
    return r.removesuffix(".0")


def _pct(share: float) -> str:
    return f"{100 * share:.3g}%"


def _span(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.3g} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.3g} hours"
    return f"{seconds / 60:.3g} minutes"


class _Dumper(yaml.SafeDumper):
    """`yaml.SafeDumper` that writes multi-line strings (the PromQL) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
