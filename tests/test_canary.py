"""The canary judge on a real store, through the CLI, the HTTP API, and the Argo Rollouts and
Flagger examples of `docs/` run against a real server."""

from __future__ import annotations

import datetime as dt
import math
import re
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_cli
from servers import ServerProcess

from msewatch.monitor.canary import judge_canary, run_rollback
from msewatch.monitor.config import CanaryConfig
from msewatch.monitor.engine import ensure_tables
from msewatch.monitor.sequential import judge, moments
from msewatch.store import Store

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
DOCS = Path(__file__).resolve().parents[1] / "docs"
READ = "read-token-0123456789abcdef"


def _scenario(tmp_path: Path, *, worse: float, n: int = 6000, seed: int = 3, shadow: bool = False) -> dict:
    """Control v1 all along; canary v2 takes 30% of the traffic from hour 2 (split), or scores
    every request in shadow; its residual sd is √worse × the control's."""
    rng = np.random.default_rng(seed)
    t = T0.timestamp() + np.sort(rng.uniform(0, 12 * 3600, n))
    y = rng.lognormal(3, 0.4, n)
    v2 = (t >= T0.timestamp() + 7200) & (rng.random(n) < 0.3) if not shadow else np.zeros(n, bool)
    pred = y + rng.standard_t(5, n) * np.where(v2, math.sqrt(worse), 1.0)
    ids = np.array([f"r{i}" for i in range(n)])
    ts = pa.array((t * 1e6).astype("int64"), pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"prediction_id": ids, "ts": ts, "model": ["m"] * n,
                             "version": np.where(v2, "v2", "v1"), "y_pred": pred}), tmp_path / "p.parquet")
    labeled = rng.random(n) < 0.9
    pq.write_table(pa.table({"prediction_id": ids[labeled], "y_true": y[labeled],
                             "label_ts": pa.array(((t[labeled] + 600) * 1e6).astype("int64"),
                                                  pa.timestamp("us", tz="UTC"))}), tmp_path / "l.parquet")
    out = {"ids": ids, "y": y, "pred": pred, "v2": v2, "labeled": labeled, "t": t}
    if shadow:
        shadow_pred = y + rng.standard_t(5, n) * math.sqrt(worse)
        keep = t >= T0.timestamp() + 7200
        pq.write_table(pa.table({"prediction_id": ids[keep], "ts": ts.filter(pa.array(keep)), "model": ["m"] * int(keep.sum()),
                                 "version": ["v2"] * int(keep.sum()), "y_pred": shadow_pred[keep]}), tmp_path / "s.parquet")
        out.update(shadow_pred=shadow_pred, shadow_keep=keep)
    for kind, name in (("predictions", "p"), ("labels", "l")) + ((("shadow", "s"),) if shadow else ()):
        done = run_cli(["ingest", kind, f"{name}.parquet", "--db", "store.duckdb"], cwd=tmp_path)
        assert done.returncode == 0, done
    return out


NOW = T0 + dt.timedelta(days=1)
_BUILT: dict[tuple, tuple[Path, dict]] = {}


def _store(tmp_path: Path, factory: pytest.TempPathFactory, **kw: object) -> dict:
    """The scenario's store in tmp_path/store.duckdb (built once per scenario, then copied)."""
    import shutil

    key = tuple(sorted(kw.items()))
    if key not in _BUILT:
        where = factory.mktemp("canary-scenario")
        _BUILT[key] = (where / "store.duckdb", _scenario(where, **kw))  # type: ignore[arg-type]
    shutil.copy(_BUILT[key][0], tmp_path / "store.duckdb")
    return _BUILT[key][1]


def test_split_verdict_equals_the_judge_on_numpy_moments(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    truth = _store(tmp_path, tmp_path_factory, worse=1.8)
    with Store(tmp_path / "store.duckdb") as store:
        report = judge_canary(store.con, "m", "v2", "v1", now=NOW)
    r2 = (truth["pred"] - truth["y"]) ** 2
    since = truth["t"][truth["v2"]].min() // 60 * 60  # from the canary's first minute
    arm = lambda canary: truth["labeled"] & (truth["v2"] == canary) & (truth["t"] >= since)
    expected = judge(moments(r2[arm(True)]), moments(r2[arm(False)]))
    assert report.verdict == expected.verdict == "fail"
    assert (report.n_canary, report.n_control) == (expected.n_canary, expected.n_control)
    assert math.isclose(report.mse_ratio, expected.mse_ratio, rel_tol=1e-9)
    assert math.isclose(report.p_value, expected.p_value, rel_tol=1e-6)
    assert report.ci[0] > 1.0 and math.isclose(report.ci[1], expected.ci[1], rel_tol=1e-9)


def test_no_verdict_below_the_minimums(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    _store(tmp_path, tmp_path_factory, worse=2.0)
    with Store(tmp_path / "store.duckdb") as store:
        few = judge_canary(store.con, "m", "v2", "v1", now=NOW, config=CanaryConfig(min_n=100_000))
        assert few.verdict == "continue" and "min_n = 100000" in few.reason
        sparse = judge_canary(store.con, "m", "v2", "v1", now=NOW, config=CanaryConfig(min_coverage=0.95))
        assert sparse.verdict == "continue" and "coverage" in sparse.reason
        early = judge_canary(store.con, "m", "v2", "v1", now=T0 + dt.timedelta(hours=1))
        assert early.verdict == "continue" and "no prediction of m v2 before" in early.reason
        late = judge_canary(store.con, "m", "v2", "v1", now=NOW, config=CanaryConfig(label_delay=86400 * 3))
        assert late.verdict == "continue" and "label_delay" in late.reason


def test_rollback_hook_runs_once_and_is_logged(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    _store(tmp_path, tmp_path_factory, worse=2.0)
    marker = tmp_path / "rolled-back"
    code = f"import os, pathlib; pathlib.Path({str(marker)!r}).write_text(os.environ['MSEWATCH_CANARY'])"
    config = CanaryConfig(rollback_command=(sys.executable, "-c", code))
    with Store(tmp_path / "store.duckdb") as store:
        ensure_tables(store.con)
        report = judge_canary(store.con, "m", "v2", "v1", now=NOW, config=config)
        assert report.verdict == "fail"
        first = run_rollback(store.con, report, config)
        assert first["command"]["exit_status"] == 0 and marker.read_text() == "v2"
        marker.unlink()
        again = run_rollback(store.con, report, config)
        assert "already_done_at" in again and not marker.exists()
        rows = store.con.execute("SELECT alertname, state FROM alert_log WHERE alertname = 'canary_rollback'").fetchall()
        assert rows == [("canary_rollback", "rollback")]


def test_shadow_mode_pairs_by_prediction_id(tmp_path: Path) -> None:
    truth = _scenario(tmp_path, worse=1.3, n=4000, shadow=True)
    with Store(tmp_path / "store.duckdb") as store:
        report = judge_canary(store.con, "m", "v2", "v1", mode="shadow", now=NOW)
    keep = truth["shadow_keep"] & truth["labeled"]
    d = (truth["shadow_pred"] - truth["y"]) ** 2 - (truth["pred"] - truth["y"]) ** 2
    expected = judge(moments(((truth["shadow_pred"] - truth["y"]) ** 2)[keep]),
                     moments(((truth["pred"] - truth["y"]) ** 2)[keep]), paired=moments(d[keep]))
    assert report.mode == "shadow" and report.n_canary == int(keep.sum())
    assert report.verdict == expected.verdict
    assert math.isclose(report.p_value, expected.p_value, rel_tol=1e-6)
    assert math.isclose(report.mse_ratio, expected.mse_ratio, rel_tol=1e-9)


@pytest.mark.parametrize(("worse", "config", "status", "verdict"), [
    (2.0, "", 1, "fail"),
    (1.0, "[canary]\nmargin = 0.5\n", 0, "pass"),
    (1.0, "[canary]\nmin_n = 100000\n", 3, "continue"),
])
def test_cli_exit_status_follows_the_verdict(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, worse: float,
                                            config: str, status: int, verdict: str) -> None:
    _store(tmp_path, tmp_path_factory, worse=worse)
    (tmp_path / "msewatch.toml").write_text(config)
    done = run_cli(["canary", "--db", "store.duckdb", "--config", "msewatch.toml", "--model", "m", "--canary", "v2",
                    "--control", "v1", "--until", NOW.isoformat(), "--format", "json"], cwd=tmp_path)
    assert done.returncode == status, done
    assert done.json()["verdict"] == verdict
    table = run_cli(["canary", "--db", "store.duckdb", "--config", "msewatch.toml", "--model", "m", "--canary", "v2",
                     "--control", "v1", "--until", NOW.isoformat()], cwd=tmp_path)
    assert table.returncode == status and verdict.upper() in table.stdout


def test_cli_usage_errors(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    _store(tmp_path, tmp_path_factory, worse=1.0)
    same = run_cli(["canary", "--db", "store.duckdb", "--model", "m", "--canary", "v1", "--control", "v1"], cwd=tmp_path)
    assert same.returncode == 2 and "different versions" in same.stderr
    hook = run_cli(["canary", "--db", "store.duckdb", "--model", "m", "--canary", "v2", "--control", "v1", "--rollback"],
                   cwd=tmp_path)
    assert hook.returncode == 2 and "rollback_command" in hook.stderr
    bad = run_cli(["canary", "--db", "store.duckdb", "--model", "m", "--canary", "v2", "--control", "v1",
                   "--since", "yesterday"], cwd=tmp_path)
    assert bad.returncode == 2 and "--since" in bad.stderr


# ------------------------------------------------------------------- HTTP, Argo Rollouts, Flagger


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A server over a store whose canary (v2) is clearly worse, with a read token."""
    tmp_path = tmp_path_factory.mktemp("served")
    _store(tmp_path, tmp_path_factory, worse=2.0)
    config = tmp_path / "serve.toml"
    config.write_text(f'[[tokens]]\nname = "reader"\ntoken = "{READ}"\nscopes = ["read"]\n')
    with ServerProcess(tmp_path / "store.duckdb", config=config) as server:
        yield server


def _argo_request(template: dict, args: dict[str, str]) -> tuple[str, dict[str, str], str]:
    (metric,) = template["spec"]["metrics"]
    web = metric["provider"]["web"]

    def fill(text: str) -> str:
        return re.sub(r"\{\{args\.([\w-]+)\}\}", lambda m: args[m.group(1)], text)

    headers = {h["key"]: fill(h["value"]) for h in web.get("headers", [])}
    return fill(web["url"]), headers, web["jsonPath"]


def _argo_outcome(metric: dict, result: str) -> str:
    """Argo's reading of a measurement: Successful, Failed or Inconclusive."""

    def holds(condition: str) -> bool:
        m = re.fullmatch(r'\s*result\s*(==|!=)\s*["\'](\w+)["\']\s*', condition)
        assert m, f"condition not understood: {condition}"
        return (result == m.group(2)) == (m.group(1) == "==")

    if holds(metric["failureCondition"]):
        return "Failed"
    if holds(metric["successCondition"]):
        return "Successful"
    return "Inconclusive"


def test_argo_rollouts_analysis_template_against_the_server(served: ServerProcess) -> None:
    template = yaml.safe_load((DOCS / "argo-analysis-template.yaml").read_text())
    assert template["kind"] == "AnalysisTemplate"
    url, headers, json_path = _argo_request(template, {"model": "m", "canary-version": "v2", "stable-version": "v1",
                                                       "msewatch-token": READ})
    url = url.replace("http://msewatch.monitoring:8080", served.url)
    answer = httpx.get(url, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert json_path == "{$.verdict}"
    assert body["verdict"] == "fail" and body["mse_ratio"] > 1.5
    assert set(body) >= {"verdict", "p_value", "mse_ratio", "ci", "n_canary", "n_control", "label_coverage", "reason"}
    (metric,) = template["spec"]["metrics"]
    assert _argo_outcome(metric, body["verdict"]) == "Failed"
    assert _argo_outcome(metric, "continue") == "Inconclusive" and _argo_outcome(metric, "pass") == "Successful"
    # without the token the request is refused
    assert httpx.get(url, timeout=30).status_code == 401
    bad = httpx.get(f"{served.url}/v1/canary?model=m&canary=v2", headers=headers, timeout=30)
    assert bad.status_code == 400 and "control" in bad.json()["error"]


def test_flagger_webhooks_against_the_server(served: ServerProcess) -> None:
    canary = yaml.safe_load((DOCS / "flagger-canary.yaml").read_text())
    hooks = {h["type"]: h for h in canary["spec"]["analysis"]["webhooks"]}
    assert set(hooks) == {"rollout", "confirm-promotion"}
    for kind, hook in hooks.items():
        url = hook["url"].replace("http://msewatch.monitoring:8080", served.url)
        metadata = {**hook["metadata"], "model": "m", "token": READ}
        # Flagger's webhook body: name, namespace, phase, checksum, metadata
        body = {"name": "pricing", "namespace": "test", "phase": "Progressing", "checksum": "abc", "metadata": metadata}
        answer = httpx.post(url, json=body, timeout=30)
        assert answer.status_code == 412, (kind, answer.text)  # the canary is worse: the check fails
        assert answer.json()["verdict"] == "fail"
        no_token = {**body, "metadata": {k: v for k, v in metadata.items() if k != "token"}}
        assert httpx.post(url, json=no_token, timeout=30).status_code == 401
    url = hooks["rollout"]["url"].replace("http://msewatch.monitoring:8080", served.url)
    assert httpx.post(url, content=b"{not json", headers={"Authorization": f"Bearer {READ}"}, timeout=30).status_code == 400
    missing = {"metadata": {"model": "m", "canary": "v2", "token": READ}}
    assert httpx.post(url, json=missing, timeout=30).status_code == 400
