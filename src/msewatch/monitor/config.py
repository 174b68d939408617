"""The monitor's part of `msewatch.toml`: SLOs, alert rules, notifiers, silences, maintenance.

Pure data and validation (no store, no network), so `msewatch.config` can read it with the
rest of the file. Every error names the key and the value, like the rest of the config.

    [alerting]
    interval = "30s"          # how often the server evaluates the rules
    group_wait = "30s"        # Alertmanager's defaults
    group_interval = "5m"
    repeat_interval = "4h"

    [[slos]]
    name = "price-accuracy"
    model = "price"
    kind = "event"            # a labeled prediction is good when its squared error ≤ threshold
    threshold = 25.0
    objective = 0.99          # over `period`
    period = "28d"
    label_delay = "0s"        # predictions younger than this are not judged yet
    min_labels = 20           # a burn-rate window with fewer labels is not judged (F1)
    min_coverage = 0.0

    [[slos]]
    name = "price-hourly-rmse"
    model = "price"
    kind = "window"           # a window is good when its RMSE ≤ max_rmse with ≥ min_labels
    window = "1h"
    max_rmse = 6.0
    objective = 0.95

    [[alerts]]
    name = "price-mse-regression"
    type = "delta_mse"        # delta_mse | cohort_regression | label_coverage | label_freshness | tail_error | drift
    model = "price"
    severity = "page"
    for = "10m"
    window = "6h"
    max_increase_pct = 20

    [[notifiers]]
    name = "oncall"
    type = "webhook"          # webhook | alertmanager | slack
    url = "http://127.0.0.1:9099/hook"

    [[silences]]
    matchers = {model = "price", alertname = "label_freshness"}
    starts = "2026-11-01T00:00:00Z"
    ends = "2026-11-02T00:00:00Z"
    comment = "label pipeline migration"

    [[maintenance]]             # declared backfills: every alert of the model is suppressed
    model = "price"
    starts = "2026-11-03T00:00:00Z"
    ends = "2026-11-03T06:00:00Z"
    reason = "label backfill"
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from msewatch.errors import InputError
from msewatch.units import format_duration, parse_duration, parse_instant

__all__ = [
    "DEFAULT_TIERS",
    "RULE_TYPES",
    "AlertRule",
    "AlertingConfig",
    "BurnTier",
    "CanaryConfig",
    "Maintenance",
    "MonitorConfig",
    "Notifier",
    "Silence",
    "Slo",
    "parse_monitor",
]

SEVERITIES = ("page", "ticket")
RULE_TYPES = ("delta_mse", "cohort_regression", "label_coverage", "label_freshness", "tail_error", "drift")
DRIFT_TESTS = ("auto", "ks", "psi", "wasserstein", "js")  # msewatch.monitor.drift.TESTS
NOTIFIER_TYPES = ("webhook", "alertmanager", "slack")
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class BurnTier:
    """Fire when the burn rate is ≥ `factor` over both the `long` and the `short` window."""

    severity: str
    factor: float
    long: int
    short: int

    @property
    def name(self) -> str:
        return f"{self.severity}-{format_duration(self.long)}"


# The SRE Workbook's multiwindow, multi-burn-rate policy (chapter 5, table 5-8).
DEFAULT_TIERS = (
    BurnTier("page", 14.4, 3600, 300),
    BurnTier("page", 6.0, 6 * 3600, 1800),
    BurnTier("ticket", 3.0, 86400, 7200),
    BurnTier("ticket", 1.0, 3 * 86400, 6 * 3600),
)


@dataclass(frozen=True)
class Slo:
    name: str
    model: str
    kind: str = "event"
    objective: float = 0.99
    period: int = 28 * 86400
    threshold: float | None = None
    window: int = 3600
    max_rmse: float | None = None
    version: str | None = None
    label_delay: int = 0
    min_labels: int = 20
    min_coverage: float = 0.0
    tiers: tuple[BurnTier, ...] = DEFAULT_TIERS
    runbook: str = ""

    @property
    def max_burn(self) -> float:
        """The highest burn rate possible: every event bad."""
        return 1.0 / (1.0 - self.objective)


@dataclass(frozen=True)
class AlertRule:
    name: str
    type: str
    model: str
    severity: str = "ticket"
    for_: int = 0
    window: int = 3600
    version: str | None = None
    by: str | None = None  # cohort_regression: the segment column
    max_increase_pct: float = 20.0  # delta_mse, cohort_regression, tail_error
    confidence: float = 0.95
    fdr: float = 0.05
    min_n: int = 100
    min_coverage: float = 0.5  # label_coverage
    label_delay: int = 0  # label_coverage: judge predictions at least this old
    max_age: int = 6 * 3600  # label_freshness
    columns: tuple[str, ...] = ()  # drift: the columns to compare (default: all) …
    reference: int = 7 * 86400  # … the `window` vs this period before it
    test: str = "auto"
    alpha: float = 0.01  # chance of any false flag across the columns
    min_effect: float = 0.1  # PSI, Wasserstein/sd or JS distance that counts as material
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    runbook: str = ""


@dataclass(frozen=True)
class Notifier:
    name: str
    type: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 5.0
    retries: int = 3
    matchers: Mapping[str, str] = field(default_factory=dict)  # route only alerts whose labels match


@dataclass(frozen=True)
class Silence:
    matchers: Mapping[str, str]
    starts: dt.datetime
    ends: dt.datetime
    comment: str = ""
    created_by: str = "config"

    def mutes(self, labels: Mapping[str, str], at: dt.datetime) -> bool:
        return self.starts <= at < self.ends and all(labels.get(k) == v for k, v in self.matchers.items())


@dataclass(frozen=True)
class Maintenance:
    model: str
    starts: dt.datetime
    ends: dt.datetime
    reason: str = ""

    def covers(self, labels: Mapping[str, str], at: dt.datetime) -> bool:
        return self.starts <= at < self.ends and labels.get("model") == self.model


@dataclass(frozen=True)
class AlertingConfig:
    interval: int = 30
    group_wait: int = 30
    group_interval: int = 300
    repeat_interval: int = 4 * 3600
    external_url: str = ""


@dataclass(frozen=True)
class CanaryConfig:
    """How the canary judge decides (`msewatch canary`, `GET /v1/canary`)."""

    alpha: float = 0.05  # false-fail rate, however often the verdict is read
    tau_rel: float = 0.1  # mixing sd of the mSPRT, as a fraction of the control's MSE
    margin: float = 0.05  # pass when the canary is at most this much worse (MSE ratio ≤ 1 + margin)
    min_n: int = 200  # labeled predictions per arm before any verdict
    min_coverage: float = 0.5  # labeled share of each arm's predictions before any verdict
    label_delay: int = 0  # judge only predictions at least this old
    rollback_webhook: str = ""  # POSTed the verdict on the first "fail"
    rollback_command: tuple[str, ...] = ()  # run on the first "fail" (argv; MSEWATCH_* in env)
    rollback_timeout: float = 60.0


@dataclass(frozen=True)
class MonitorConfig:
    alerting: AlertingConfig = AlertingConfig()
    slos: tuple[Slo, ...] = ()
    rules: tuple[AlertRule, ...] = ()
    notifiers: tuple[Notifier, ...] = ()
    silences: tuple[Silence, ...] = ()
    maintenance: tuple[Maintenance, ...] = ()
    warnings: tuple[str, ...] = ()
    canary: CanaryConfig = CanaryConfig()


def parse_monitor(data: Mapping[str, Any], where: str) -> MonitorConfig:
    """The monitor sections of a parsed TOML document (absent sections take defaults)."""
    warnings: list[str] = []
    alerting = _alerting(data.get("alerting", {}), where)
    slos = tuple(_slo(item, f"slos[{i}]", where, warnings) for i, item in enumerate(_array(data, "slos", where)))
    rules = tuple(_rule(item, f"alerts[{i}]", where) for i, item in enumerate(_array(data, "alerts", where)))
    notifiers = tuple(
        _notifier(item, f"notifiers[{i}]", where) for i, item in enumerate(_array(data, "notifiers", where))
    )
    silences = tuple(
        _silence(item, f"silences[{i}]", where) for i, item in enumerate(_array(data, "silences", where))
    )
    maintenance = tuple(
        _maintenance(item, f"maintenance[{i}]", where) for i, item in enumerate(_array(data, "maintenance", where))
    )
    for kind, names in (("slos", [s.name for s in slos]), ("alerts", [r.name for r in rules]),
                        ("notifiers", [n.name for n in notifiers])):
        seen = set()
        for name in names:
            if name in seen:
                raise InputError(f"{where}: {kind}: the name {name!r} is used twice.")
            seen.add(name)
    canary = _canary(data.get("canary", {}), where)
    return MonitorConfig(alerting, slos, rules, notifiers, silences, maintenance, tuple(warnings), canary)


# ---------------------------------------------------------------------------------- sections


def _fail(where: str, key: str, value: Any, why: str) -> InputError:
    return InputError(f"{where}: {key} = {value!r}: {why}.")


def _array(data: Mapping[str, Any], name: str, where: str) -> list[dict[str, Any]]:
    items = data.get(name, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _fail(where, name, items, f"expected an array of tables ([[{name}]])")
    return items


def _known(table: Mapping[str, Any], known: set[str], key: str, where: str) -> None:
    for name in table:
        if name not in known:
            raise InputError(f"{where}: unknown key {key}.{name}; known keys: {', '.join(sorted(known))}.")


def _duration(table: Mapping[str, Any], name: str, default: int, key: str, where: str, *, zero: bool = False) -> int:
    if name not in table:
        return default
    value = table[name]
    if zero and str(value).strip() in ("0", "0s", "0m", "0h"):
        return 0
    try:
        return parse_duration(str(value), option=f"{key}.{name}")
    except InputError:
        raise _fail(where, f"{key}.{name}", value, "expected a duration like 30s, 5m, 1h, 28d") from None


def _number(table: Mapping[str, Any], name: str, default: Any, key: str, where: str, *, low: float = 0.0,
            high: float = math.inf, open_low: bool = False, open_high: bool = False) -> Any:
    if name not in table:
        return default
    v = table[name]
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    if not ok:
        lo = f"> {low:g}" if open_low else f"≥ {low:g}"
        hi = "" if high == math.inf else (f" and < {high:g}" if open_high else f" and ≤ {high:g}")
        raise _fail(where, f"{key}.{name}", v, f"expected a number {lo}{hi}")
    return float(v)


def _whole(table: Mapping[str, Any], name: str, default: int, key: str, where: str, low: int = 0) -> int:
    if name not in table:
        return default
    v = table[name]
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise _fail(where, f"{key}.{name}", v, f"expected a whole number ≥ {low}")
    return v


def _text(table: Mapping[str, Any], name: str, key: str, where: str, default: str | None = None) -> Any:
    if name not in table:
        if default is None:
            raise InputError(f"{where}: {key}: {name} is required.")
        return default
    v = table[name]
    if not isinstance(v, str) or (not v.strip() and default is None):
        raise _fail(where, f"{key}.{name}", v, "expected a non-empty string")
    return v


def _choice(table: Mapping[str, Any], name: str, choices: tuple[str, ...], key: str, where: str,
            default: str | None = None) -> str:
    v = _text(table, name, key, where, default)
    if v not in choices:
        raise _fail(where, f"{key}.{name}", v, f"expected one of {', '.join(choices)}")
    return v


def _string_map(table: Mapping[str, Any], name: str, key: str, where: str, *, label_names: bool = True) -> dict[str, str]:
    value = table.get(name, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _fail(where, f"{key}.{name}", value, "expected a table of strings")
    if label_names:
        for k in value:
            if not _LABEL_NAME.match(k):
                raise _fail(where, f"{key}.{name}", value, f"{k!r} is not a label name (letters, digits, _)")
    return dict(value)


def _instant(table: Mapping[str, Any], name: str, key: str, where: str) -> dt.datetime:
    if name not in table:
        raise InputError(f"{where}: {key}: {name} is required.")
    value = table[name]
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    try:
        return parse_instant(str(value), option=f"{key}.{name}")
    except InputError:
        raise _fail(where, f"{key}.{name}", value, "expected an ISO 8601 time like 2026-11-01T00:00:00Z") from None


def _alerting(table: Any, where: str) -> AlertingConfig:
    if not isinstance(table, dict):
        raise _fail(where, "alerting", table, "expected a table")
    d = AlertingConfig()
    _known(table, set(d.__dataclass_fields__), "alerting", where)
    return AlertingConfig(
        interval=_duration(table, "interval", d.interval, "alerting", where),
        group_wait=_duration(table, "group_wait", d.group_wait, "alerting", where, zero=True),
        group_interval=_duration(table, "group_interval", d.group_interval, "alerting", where),
        repeat_interval=_duration(table, "repeat_interval", d.repeat_interval, "alerting", where),
        external_url=_text(table, "external_url", "alerting", where, ""),
    )


def _tiers(value: Any, key: str, where: str) -> tuple[BurnTier, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(where, key, value, "expected a non-empty array of {severity, factor, long, short} tables")
    out = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise _fail(where, k, item, "expected a table")
        _known(item, {"severity", "factor", "long", "short"}, k, where)
        tier = BurnTier(
            severity=_choice(item, "severity", SEVERITIES, k, where),
            factor=_number(item, "factor", None, k, where, open_low=True),
            long=_duration(item, "long", 0, k, where),
            short=_duration(item, "short", 0, k, where),
        )
        if tier.factor is None or not tier.long or not tier.short:
            raise InputError(f"{where}: {k}: severity, factor, long and short are all required.")
        if tier.short > tier.long:
            raise _fail(where, f"{k}.short", item["short"], "the short window must not be longer than the long one")
        out.append(tier)
    return tuple(out)


def _slo(item: dict[str, Any], key: str, where: str, warnings: list[str]) -> Slo:
    known = {"name", "model", "version", "kind", "objective", "period", "threshold", "window", "max_rmse",
             "label_delay", "min_labels", "min_coverage", "tiers", "runbook"}
    _known(item, known, key, where)
    kind = _choice(item, "kind", ("event", "window"), key, where, "event")
    slo = Slo(
        name=_text(item, "name", key, where),
        model=_text(item, "model", key, where),
        version=item["version"] if isinstance(item.get("version"), str) else _version(item, key, where),
        kind=kind,
        objective=_number(item, "objective", 0.99, key, where, open_low=True, high=1.0, open_high=True),
        period=_duration(item, "period", 28 * 86400, key, where),
        threshold=_number(item, "threshold", None, key, where, open_low=True),
        window=_duration(item, "window", 3600, key, where),
        max_rmse=_number(item, "max_rmse", None, key, where, open_low=True),
        label_delay=_duration(item, "label_delay", 0, key, where, zero=True),
        min_labels=_whole(item, "min_labels", 20, key, where, low=1),
        min_coverage=_number(item, "min_coverage", 0.0, key, where, high=1.0),
        tiers=_tiers(item["tiers"], f"{key}.tiers", where) if "tiers" in item else DEFAULT_TIERS,
        runbook=_text(item, "runbook", key, where, ""),
    )
    if kind == "event" and slo.threshold is None:
        raise InputError(f"{where}: {key}: an event SLO needs threshold (the largest good squared error).")
    if kind == "window" and slo.max_rmse is None:
        raise InputError(f"{where}: {key}: a window SLO needs max_rmse (the largest good RMSE of a window).")
    if slo.period < slo.window or slo.period < max(t.long for t in slo.tiers):
        raise _fail(where, f"{key}.period", format_duration(slo.period), "shorter than a window it contains")
    for tier in slo.tiers:
        if tier.factor > slo.max_burn:
            warnings.append(
                f"{where}: {key} ({slo.name}): the {tier.name} tier needs burn rate {tier.factor:g}, "
                f"but with objective {slo.objective:g} the highest possible is {slo.max_burn:.4g}; it can never fire."
            )
    return slo


def _version(item: Mapping[str, Any], key: str, where: str) -> None:
    if "version" in item:
        raise _fail(where, f"{key}.version", item["version"], "expected a string")


def _rule(item: dict[str, Any], key: str, where: str) -> AlertRule:
    d = AlertRule("", "", "")
    known = set(d.__dataclass_fields__) - {"for_"} | {"for"}
    _known(item, known, key, where)
    rule = AlertRule(
        name=_text(item, "name", key, where),
        type=_choice(item, "type", RULE_TYPES, key, where),
        model=_text(item, "model", key, where),
        version=item["version"] if isinstance(item.get("version"), str) else _version(item, key, where),
        severity=_choice(item, "severity", SEVERITIES, key, where, "ticket"),
        for_=_duration(item, "for", 0, key, where, zero=True),
        window=_duration(item, "window", d.window, key, where),
        by=_text(item, "by", key, where, "") or None,
        max_increase_pct=_number(item, "max_increase_pct", d.max_increase_pct, key, where, open_low=True),
        confidence=_number(item, "confidence", d.confidence, key, where, low=0.5, high=1.0, open_high=True),
        fdr=_number(item, "fdr", d.fdr, key, where, open_low=True, high=0.5),
        min_n=_whole(item, "min_n", d.min_n, key, where, low=2),
        min_coverage=_number(item, "min_coverage", d.min_coverage, key, where, high=1.0),
        label_delay=_duration(item, "label_delay", 0, key, where, zero=True),
        max_age=_duration(item, "max_age", d.max_age, key, where),
        columns=_names(item, "columns", key, where),
        reference=_duration(item, "reference", d.reference, key, where),
        test=_choice(item, "test", DRIFT_TESTS, key, where, d.test),
        alpha=_number(item, "alpha", d.alpha, key, where, open_low=True, high=1.0, open_high=True),
        min_effect=_number(item, "min_effect", d.min_effect, key, where, open_low=True),
        labels=_string_map(item, "labels", key, where),
        annotations=_string_map(item, "annotations", key, where),
        runbook=_text(item, "runbook", key, where, ""),
    )
    if rule.type == "cohort_regression" and not rule.by:
        raise InputError(f"{where}: {key}: a cohort_regression rule needs by (the segment column).")
    return rule


def _names(table: Mapping[str, Any], name: str, key: str, where: str) -> tuple[str, ...]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(where, f"{key}.{name}", value, "expected an array of column names")
    return tuple(value)


def _notifier(item: dict[str, Any], key: str, where: str) -> Notifier:
    _known(item, {"name", "type", "url", "headers", "timeout", "retries", "matchers"}, key, where)
    url = _text(item, "url", key, where)
    if not url.startswith(("http://", "https://")):
        raise _fail(where, f"{key}.url", url, "expected an http:// or https:// URL")
    return Notifier(
        name=_text(item, "name", key, where),
        type=_choice(item, "type", NOTIFIER_TYPES, key, where),
        url=url.rstrip("/") if item.get("type") == "alertmanager" else url,
        headers=_string_map(item, "headers", key, where, label_names=False),
        timeout=_number(item, "timeout", 5.0, key, where, open_low=True, high=300),
        retries=_whole(item, "retries", 3, key, where),
        matchers=_string_map(item, "matchers", key, where),
    )


def _span(item: Mapping[str, Any], key: str, where: str) -> tuple[dt.datetime, dt.datetime]:
    starts, ends = _instant(item, "starts", key, where), _instant(item, "ends", key, where)
    if ends <= starts:
        raise _fail(where, f"{key}.ends", item["ends"], "must be after starts")
    return starts, ends


def _silence(item: dict[str, Any], key: str, where: str) -> Silence:
    _known(item, {"matchers", "starts", "ends", "comment"}, key, where)
    matchers = _string_map(item, "matchers", key, where)
    if not matchers:
        raise InputError(f"{where}: {key}: a silence needs at least one matcher.")
    starts, ends = _span(item, key, where)
    return Silence(matchers, starts, ends, _text(item, "comment", key, where, ""))


def _maintenance(item: dict[str, Any], key: str, where: str) -> Maintenance:
    _known(item, {"model", "starts", "ends", "reason"}, key, where)
    starts, ends = _span(item, key, where)
    return Maintenance(_text(item, "model", key, where), starts, ends, _text(item, "reason", key, where, ""))


def _canary(table: Any, where: str) -> CanaryConfig:
    if not isinstance(table, dict):
        raise _fail(where, "canary", table, "expected a table")
    d = CanaryConfig()
    _known(table, set(d.__dataclass_fields__), "canary", where)
    command = table.get("rollback_command", [])
    if isinstance(command, str):
        command = [command]
    if not isinstance(command, list) or not all(isinstance(c, str) and c for c in command):
        raise _fail(where, "canary.rollback_command", table.get("rollback_command"), "expected a list of strings (argv)")
    webhook = _text(table, "rollback_webhook", "canary", where, "")
    if webhook and not webhook.startswith(("http://", "https://")):
        raise _fail(where, "canary.rollback_webhook", webhook, "expected an http:// or https:// URL")
    return CanaryConfig(
        alpha=_number(table, "alpha", d.alpha, "canary", where, open_low=True, high=0.5),
        tau_rel=_number(table, "tau_rel", d.tau_rel, "canary", where, open_low=True, high=10.0),
        margin=_number(table, "margin", d.margin, "canary", where, high=10.0),
        min_n=_whole(table, "min_n", d.min_n, "canary", where, low=2),
        min_coverage=_number(table, "min_coverage", d.min_coverage, "canary", where, high=1.0),
        label_delay=_duration(table, "label_delay", 0, "canary", where, zero=True),
        rollback_webhook=webhook,
        rollback_command=tuple(command),
        rollback_timeout=_number(table, "rollback_timeout", d.rollback_timeout, "canary", where, open_low=True,
                                 high=3600),
    )
