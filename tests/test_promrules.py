"""`msewatch rules`: the Prometheus rule file is valid, and its rules do what they say.

`promtool` (Debian package `prometheus`) checks the generated files for several configs, and
runs unit tests this module writes: counter series of `msewatch_squared_error` with a known
share of bad events over known minutes, and the alerts that must (and must not) fire at given
times, with their exact labels and annotations. The recording rules are checked on series
taken verbatim from the exposition of the real `QualityCollector`, so a bucket selector that
spelled `le` differently from `/metrics` would fail. Locally a missing promtool skips those
tests; under CI=true it fails them.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from conftest import Run, assert_usage_error, write_text
from servers import require_binary

from msewatch.config import Config, load_config
from msewatch.errors import InputError
from msewatch.monitor.promrules import (
    ALERT_NAME,
    bucket_le,
    prometheus_rules,
    render_rules,
    rules_notes,
    write_rules,
)

# -- configs ----------------------------------------------------------------------------------
DEFAULTS = """
[[slos]]
name = "price-accuracy"
model = "price"
threshold = 25
objective = 0.99
"""

CUSTOM_TIERS = """
[[slos]]
name = "eta-fast"
model = "eta"
threshold = 0.5
objective = 0.995
period = "7d"
min_labels = 5
runbook = "https://runbooks.example.com/eta"
tiers = [
  {severity = "page", factor = 10, long = "90m", short = "90s"},
  {severity = "ticket", factor = 2.5, long = "12h", short = "1h"},
]
"""

VERSIONS = """
[[slos]]
name = "price-v2"
model = "price"
version = "v2"
threshold = 25
objective = 0.99
tiers = [{severity = "page", factor = 10, long = "1h", short = "5m"}]

[[slos]]
name = "price-all"
model = "price"
threshold = 25
objective = 0.99
tiers = [{severity = "page", factor = 10, long = "1h", short = "5m"}]
"""

MULTI = """
[metrics]
segments = ["region"]
squared_error_buckets = [0.01, 1, 100]

[models.price]
squared_error_buckets = [1, 4, 16, 64]
thresholds = [25.0]

[[slos]]
name = "price-accuracy"
model = "price"
threshold = 25
label_delay = "2h"
min_coverage = 0.5
runbook = "Call the pricing team."

[[slos]]
name = "price-loose"
model = "price"
threshold = 1e6
objective = 0.9

[[slos]]
name = "price-hourly-rmse"
model = "price"
kind = "window"
max_rmse = 6.0
objective = 0.95

[[slos]]
name = "we\\"ird-model"
model = "a \\"quoted\\" model"
threshold = 0.1
objective = 0.999
"""

WINDOW_ONLY = """
[[slos]]
name = "price-hourly-rmse"
model = "price"
kind = "window"
max_rmse = 6.0
"""

CONFIGS = {"defaults": DEFAULTS, "custom-tiers": CUSTOM_TIERS, "versions": VERSIONS, "multi": MULTI}


def config_of(tmp_path: Path, text: str, name: str = "msewatch.toml") -> Config:
    return load_config(write_text(tmp_path / name, text))


@pytest.fixture
def promtool() -> str:
    return require_binary("promtool", "Debian package `prometheus`: checks and unit-tests the rule files")


def run_promtool(promtool: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"promtool {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def all_rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in doc["groups"] for rule in group["rules"]]


# -- the document ------------------------------------------------------------------------------
def test_rule_names_of_the_default_tiers(tmp_path: Path) -> None:
    doc = prometheus_rules(config_of(tmp_path, DEFAULTS))
    assert [g["name"] for g in doc["groups"]] == ["msewatch-quality", "msewatch-slo-price-accuracy"]
    quality, slo = (g["rules"] for g in doc["groups"])
    assert [r["record"] for r in quality] == [
        "model_version:msewatch_squared_error:mse_rate5m",
        "model_version:msewatch_squared_error:rmse_rate5m",
        "model_version:msewatch_squared_error:mse_rate1h",
        "model_version:msewatch_squared_error:rmse_rate1h",
    ]
    windows = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    records = [r["record"] for r in slo if "record" in r]
    assert records == [
        name for w in windows
        for name in (f"model:msewatch_slo_errors:ratio_rate{w}", f"model:msewatch_slo_events:increase{w}")
    ]
    assert all(r["labels"] == {"slo": "price-accuracy"} for r in slo if "record" in r)
    alerts = [r for r in slo if "alert" in r]
    assert [(a["alert"], a["labels"]["severity"], a["labels"]["long_window"], a["labels"]["short_window"])
            for a in alerts] == [
        (ALERT_NAME, "page", "1h", "5m"), (ALERT_NAME, "page", "6h", "30m"),
        (ALERT_NAME, "ticket", "1d", "2h"), (ALERT_NAME, "ticket", "3d", "6h"),
    ]
    assert all("for" not in a for a in alerts)  # the Workbook's policy: no `for`
    assert 'le="25.0"' in slo[0]["expr"] and 'model="price"' in slo[0]["expr"]
    assert "14.4 * (1 - 0.99)" in alerts[0]["expr"] and ">= 20" in alerts[0]["expr"]
    first = alerts[0]["annotations"]
    assert "14.4x" in first["summary"] and "1h" in first["summary"] and "5m" in first["summary"]
    assert "{{ $value | humanizePercentage }}" in first["description"]
    assert "label" in first["runbook"].lower() and "roll it back" in first["runbook"]
    assert "runbook_url" not in first


def test_bucket_le_is_the_expositions_spelling() -> None:
    from msewatch.server.exposition import _le

    for bound in (25, 25.0, 0.1, 1e-4, 1e5, 1e6, 2.5e-7, 123456789.0):
        assert bucket_le(bound) == _le(bound)


def test_versions_runbooks_and_notes(tmp_path: Path) -> None:
    doc = prometheus_rules(config_of(tmp_path, VERSIONS))
    v2 = all_rules(doc)[4:]  # after the quality group: the price-v2 group
    assert 'model="price", version="v2"' in v2[0]["expr"]
    assert v2[0]["labels"] == {"slo": "price-v2", "version": "v2"}
    alert = next(r for r in v2 if "alert" in r)
    assert alert["labels"] == {
        "severity": "page", "slo": "price-v2", "model": "price", "version": "v2",
        "long_window": "1h", "short_window": "5m",
    }
    custom = prometheus_rules(config_of(tmp_path, CUSTOM_TIERS))
    alerts = [r for r in all_rules(custom) if "alert" in r]
    assert [a["labels"]["long_window"] + "/" + a["labels"]["short_window"] for a in alerts] == ["90m/90s", "12h/1h"]
    assert all(a["annotations"]["runbook"] == "https://runbooks.example.com/eta" for a in alerts)
    assert all(a["annotations"]["runbook_url"] == "https://runbooks.example.com/eta" for a in alerts)
    assert ">= 5" in alerts[0]["expr"] and "(10 * (1 - 0.995))" in alerts[0]["expr"]

    multi = config_of(tmp_path, MULTI)
    names = {r["labels"]["slo"] for r in all_rules(prometheus_rules(multi)) if "labels" in r}
    assert names == {"price-accuracy", "price-loose", 'we"ird-model'}  # the window SLO is left out
    notes = rules_notes(multi)
    assert len(notes) == 3
    assert "price-hourly-rmse" in notes[2] and "msewatch serve" in notes[2]
    assert "label_delay" in notes[0] and "min_coverage" in notes[1]
    text = render_rules(multi)
    assert text.startswith("# Prometheus rules for msewatch")
    assert all(f"# Note: {n}" in text for n in notes)
    assert yaml.safe_load(text) == prometheus_rules(multi)


def test_no_event_slo_is_nothing_to_write(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing to write.*price-hourly-rmse.*window"):
        prometheus_rules(config_of(tmp_path, WINDOW_ONLY))
    with pytest.raises(InputError, match="--config"):
        prometheus_rules(load_config(None))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_promtool_check_rules(name: str, tmp_path: Path, promtool: str) -> None:
    config = config_of(tmp_path, CONFIGS[name])
    path = write_rules(config, tmp_path / "rules.yml")
    proc = run_promtool(promtool, "check", "rules", path, cwd=tmp_path)
    assert f"SUCCESS: {len(all_rules(prometheus_rules(config)))} rules found" in proc.stdout


# -- promtool unit tests ------------------------------------------------------------------------
GOOD_SQ, BAD_SQ = 1.0, 100.0  # squared errors of a good and of a bad event (threshold 25)


def counter(segments: Sequence[tuple[float, int]]) -> str:
    """promtool values, one a minute from 0, of a counter growing by `inc` a minute for `minutes`."""
    parts, value = [], 0.0
    for i, (inc, minutes) in enumerate(segments):
        if i == 0:
            parts.append(f"0+{inc:g}x{minutes}")
        else:
            parts.append(f"{value + inc:g}+{inc:g}x{minutes - 1}")
        value += inc * minutes
    return " ".join(parts)


def histogram(labels: str, phases: Sequence[tuple[float, float, int]], le: str = "25.0") -> list[dict[str, str]]:
    """Series of `msewatch_squared_error{labels}` for phases of (events, bad events) a minute."""
    good = [(n - bad, m) for n, bad, m in phases]
    total = [(n, m) for n, _, m in phases]
    sq = [((n - bad) * GOOD_SQ + bad * BAD_SQ, m) for n, bad, m in phases]
    name = "msewatch_squared_error"
    return [
        {"series": f'{name}_bucket{{{labels},le="{le}"}}', "values": counter(good)},
        {"series": f'{name}_bucket{{{labels},le="+Inf"}}', "values": counter(total)},
        {"series": f"{name}_count{{{labels}}}", "values": counter(total)},
        {"series": f"{name}_sum{{{labels}}}", "values": counter(sq)},
    ]


def expected(doc: dict[str, Any], slo: str, long: str, value: float) -> dict[str, Any]:
    """The alert of `slo`'s tier over `long`, its description rendered with the long ratio `value`."""
    rule = next(
        r for r in all_rules(doc)
        if r.get("alert") and r["labels"]["slo"] == slo and r["labels"]["long_window"] == long
    )
    annotations = dict(rule["annotations"])
    annotations["description"] = annotations["description"].replace(
        "{{ $value | humanizePercentage }}", f"{value * 100:.4g}%"
    )
    return {"exp_labels": dict(rule["labels"]), "exp_annotations": annotations}


def promtool_test(promtool: str, tmp_path: Path, config: Config, tests: list[dict[str, Any]]) -> None:
    write_rules(config, tmp_path / "rules.yml")
    spec = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    run_promtool(promtool, "test", "rules", "test.yml", cwd=tmp_path)


def alerts_at(doc: dict[str, Any], at: str, *exp: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": ALERT_NAME, "exp_alerts": list(exp)}


def test_burn_rate_alerts_of_the_default_tiers(tmp_path: Path, promtool: str) -> None:
    config = config_of(tmp_path, DEFAULTS)
    doc = prometheus_rules(config)
    labels = 'model="price",version="v1",region="eu"'
    other = 'model="price",version="v1",region="us"'  # segments are summed over
    tests = [
        {   # a busy good morning (2h, 1000 a minute), then 20% bad (burn rate 20) at 100 a
            # minute: the 1h/5m page fires once the last hour is bad, while the long windows,
            # which still hold the morning, stay below their tiers (0.95% at 3h); at 4h the
            # 3d window is 1.8% bad, above the 1x ticket's 1%, and the 6h window is 1.8% too
            "interval": "1m",
            "input_series": histogram(labels, [(600, 0, 120), (60, 12, 120)])
            + histogram(other, [(400, 0, 120), (40, 8, 120)]),
            "alert_rule_test": [
                alerts_at(doc, "2h"),
                alerts_at(doc, "2h20m"),  # 1h ratio 6.7% < 14.4%: not yet
                alerts_at(doc, "3h", expected(doc, "price-accuracy", "1h", 0.2)),
                alerts_at(
                    doc, "4h",
                    expected(doc, "price-accuracy", "1h", 0.2),
                    expected(doc, "price-accuracy", "3d", 2400 / 132000),
                ),
            ],
        },
        {   # 0.5% bad, burn rate 0.5: nothing ever fires
            "interval": "1m",
            "input_series": histogram(labels, [(200, 1, 240)]),
            "alert_rule_test": [alerts_at(doc, t) for t in ("10m", "1h", "4h")],
        },
        {   # 4% bad, burn rate 4, for 4h: the tickets fire, never a page (6x over 6h and 30m)
            "interval": "1m",
            "input_series": histogram(labels, [(100, 4, 240)]),
            "alert_rule_test": [
                alerts_at(
                    doc, t,
                    expected(doc, "price-accuracy", "1d", 0.04),
                    expected(doc, "price-accuracy", "3d", 0.04),
                )
                for t in ("1h", "4h")
            ],
        },
        {   # 1 labeled prediction a minute, half of them bad: 5m windows hold < min_labels = 20,
            # so the 1h/5m page stays quiet while the tiers with longer short windows fire
            "interval": "1m",
            "input_series": histogram(labels, [(1, 0.5, 120)]),
            "alert_rule_test": [
                alerts_at(doc, "15m"),  # no window holds 20 labels yet
                alerts_at(
                    doc, "2h",
                    expected(doc, "price-accuracy", "6h", 0.5),
                    expected(doc, "price-accuracy", "1d", 0.5),
                    expected(doc, "price-accuracy", "3d", 0.5),
                ),
            ],
        },
    ]
    promtool_test(promtool, tmp_path, config, tests)


def test_version_slo_only_sees_its_version(tmp_path: Path, promtool: str) -> None:
    config = config_of(tmp_path, VERSIONS)
    doc = prometheus_rules(config)
    v1, v2 = 'model="price",version="v1"', 'model="price",version="v2"'
    other_model = 'model="eta",version="v2"'
    tests = [
        {   # v2 is 16% bad (> 10% of the tier), v1 is good: the model as a whole is 8% bad
            "interval": "1m",
            "input_series": histogram(v1, [(50, 0, 90)]) + histogram(v2, [(50, 8, 90)])
            + histogram(other_model, [(50, 50, 90)]),
            "alert_rule_test": [alerts_at(doc, "1h", expected(doc, "price-v2", "1h", 0.16))],
        },
        {   # v1 is entirely bad and v2 good: only the model-wide SLO fires
            "interval": "1m",
            "input_series": histogram(v1, [(50, 50, 90)]) + histogram(v2, [(50, 0, 90)]),
            "alert_rule_test": [alerts_at(doc, "1h", expected(doc, "price-all", "1h", 0.5))],
        },
    ]
    promtool_test(promtool, tmp_path, config, tests)


def exposition_series(config: Config, minutes: int) -> list[dict[str, str]]:
    """The real exposition after one minute of pairs, as counters growing that much a minute."""
    from prometheus_client import CollectorRegistry, generate_latest

    from msewatch.server.exposition import QualityCollector

    collector = QualityCollector(config)
    errors = [1.0] * 80 + [10.0] * 20 + [2.0] * 50  # squared 1, 100 (bad for 25) and 4
    collector.observe_pairs(pa.table({
        "model": ["price"] * 150,
        "version": ["v1"] * 100 + ["v2"] * 50,
        "region": ["eu"] * 60 + ["us"] * 40 + ["eu"] * 50,
        "y_pred": [10.0 + e for e in errors],
        "y_true": [10.0] * 150,
        "label_latency_s": [30.0] * 150,
    }))
    registry = CollectorRegistry()
    registry.register(collector)
    series = []
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("msewatch_squared_error"):
            name, value = line.rsplit(" ", 1)
            series.append({"series": name, "values": f"0+{value}x{minutes}"})
    return series


def test_recording_rules_over_the_real_exposition(tmp_path: Path, promtool: str) -> None:
    config = config_of(tmp_path, MULTI)
    series = exposition_series(config, 90)
    assert any('le="25.0"' in s["series"] for s in series)
    assert any('le="1e+06"' in s["series"] for s in series)  # the price-loose threshold's bound

    def close(selector: str, labels: dict[str, str], value: float) -> dict[str, Any]:
        """`selector` has one series, with these labels and this value (to 1e-12 relative)."""
        tolerance = 1e-12 * max(1.0, abs(value))
        return {
            "expr": f"abs({selector} - {value!r}) < bool {tolerance!r}",
            "eval_time": "1h",
            "exp_samples": [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "value": 1}],
        }

    q = "model_version:msewatch_squared_error:"
    v1, v2 = {"model": "price", "version": "v1"}, {"model": "price", "version": "v2"}
    checks = []
    for w in ("rate5m", "rate1h"):
        checks.append(close(f'{q}mse_{w}{{version="v1"}}', v1, 20.8))  # (80·1 + 20·100) / 100
        checks.append(close(f'{q}mse_{w}{{version="v2"}}', v2, 4.0))
        checks.append(close(f'{q}rmse_{w}{{version="v1"}}', v1, math.sqrt(20.8)))
        checks.append(close(f'{q}rmse_{w}{{version="v2"}}', v2, 2.0))
    for w in ("5m", "1h", "1d"):
        ratio = f"model:msewatch_slo_errors:ratio_rate{w}"
        checks.append(close(f'{ratio}{{slo="price-accuracy"}}', {"model": "price", "slo": "price-accuracy"}, 20 / 150))
        checks.append(close(f'{ratio}{{slo="price-loose"}}', {"model": "price", "slo": "price-loose"}, 0.0))
    checks.append(close('model:msewatch_slo_events:increase5m{slo="price-accuracy"}',
                        {"model": "price", "slo": "price-accuracy"}, 750.0))
    tests = [{
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": checks,
        # 13% bad: every default tier of price-accuracy (objective 0.99) but the 14.4x one fires
        "alert_rule_test": [alerts_at(
            prometheus_rules(config), "1h",
            *(expected(prometheus_rules(config), "price-accuracy", w, 20 / 150) for w in ("6h", "1d", "3d")),
        )],
    }]
    promtool_test(promtool, tmp_path, config, tests)


# -- the command ----------------------------------------------------------------------------------
def test_cli_rules(tmp_path: Path, cli_many: Callable[..., list[Run]], promtool: str) -> None:
    write_text(tmp_path / "msewatch.toml", MULTI)
    write_text(tmp_path / "window.toml", WINDOW_ONLY)
    write_text(tmp_path / "bad.toml", DEFAULTS + 'colour = "blue"\n')
    to_file, to_stdout, window_only, bad, no_config, bad_out = cli_many([
        ["rules", "--config", "msewatch.toml", "--out", "rules.yml"],
        ["rules", "--config", "msewatch.toml"],
        ["rules", "--config", "window.toml", "--out", "window-rules.yml"],
        ["rules", "--config", "bad.toml", "--out", "bad-rules.yml"],
        ["rules"],
        ["rules", "--config", "msewatch.toml", "--out", "no/such/dir/rules.yml"],
    ])
    config = load_config(tmp_path / "msewatch.toml")
    assert to_file.returncode == 0, str(to_file)
    assert to_file.stdout == ""
    assert "wrote rules.yml: 46 recording rules, 12 alerts" in to_file.stderr
    assert "price-hourly-rmse" in to_file.stderr and "msewatch: note:" in to_file.stderr
    assert (tmp_path / "rules.yml").read_text(encoding="utf-8") == render_rules(config)
    run_promtool(promtool, "check", "rules", "rules.yml", cwd=tmp_path)

    assert to_stdout.returncode == 0, str(to_stdout)
    assert yaml.safe_load(to_stdout.stdout) == prometheus_rules(config)

    assert_usage_error(window_only, "nothing to write", "price-hourly-rmse", "window", "msewatch serve")
    assert_usage_error(bad, "bad.toml", "colour")
    assert_usage_error(no_config, "--config")
    assert_usage_error(bad_out, "rules.yml", "cannot write")
    assert not (tmp_path / "window-rules.yml").exists() and not (tmp_path / "bad-rules.yml").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
