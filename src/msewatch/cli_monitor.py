"""`msewatch baseline|slo|alerts|silence`: the guardrail commands. Parses, calls the monitor, prints."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import click
import orjson

from msewatch.cli import _column_options, _columns, _engine_options, _engine_source, _fail, cli

_SPARK = "▁▂▃▄▅▆▇█"


def _open_store(db: str | None) -> Any:
    """The store, with the monitor's tables (baselines, alert state, silences) in it."""
    from msewatch.monitor.engine import ensure_tables
    from msewatch.store import Store, default_db_path

    store = Store(db or default_db_path())
    ensure_tables(store.con)
    return store


def _instant(text: str | None, option: str) -> dt.datetime:
    from msewatch.units import parse_instant

    return parse_instant(text, option=option) if text else dt.datetime.now(dt.timezone.utc)


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, default=str).decode())


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M") + "Z"
    return str(value)


def _table(title: str, columns: list[str], rows: list[list[Any]], *, no_wrap: tuple[str, ...] = ()) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for c in columns:
        table.add_column(c, no_wrap=c in no_wrap)
    for r in rows:
        table.add_row(*[_cell(v) for v in r])
    Console(width=max(120, len(columns) * 14)).print(table)


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{v:.1%}"


def _num(v: float | None) -> str | None:
    return None if v is None else f"{v:.3g}"


def _spark(values: tuple[float | None, ...], ceiling: float) -> str:
    out = []
    for v in values:
        if v is None:
            out.append("·")
        else:
            out.append(_SPARK[min(int(v / ceiling * (len(_SPARK) - 1) + 0.5), len(_SPARK) - 1)])
    return "".join(out)


def _monitor(db: str | None, config_path: str | None, *, notify: bool = False) -> tuple[Any, Any, Any]:
    from msewatch.config import load_config
    from msewatch.monitor.engine import Monitor

    config = load_config(config_path)
    for warning in config.monitor.warnings:
        click.echo(f"msewatch: warning: {warning}", err=True)
    store = _open_store(db)
    dispatcher = None
    if notify and config.monitor.notifiers:
        from msewatch.monitor.delivery import one_shot_dispatcher

        dispatcher = one_shot_dispatcher(config.monitor, store.con)
    return config, store, Monitor(config.monitor, store.con, dispatcher=dispatcher)


# -- baseline -------------------------------------------------------------------------------------
@cli.group("baseline")
def baseline_group() -> None:
    """Record and show the baselines that delta_mse, cohort and tail rules compare against.

    Without an explicit baseline, rules use the median of the daily MSE over the trailing
    30 days, read from the store's rollups.
    """


@baseline_group.command("set")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--model", required=True, help="Model the baseline is for.")
@click.option("--version", "model_version", default=None, help="Version the baseline is for [default: any version].")
@click.option("--data", metavar="FILE", help="A holdout file with y_pred and y_true on each row.")
@click.option("--since", metavar="TIME", help="From the store: predictions at or after this time.")
@click.option("--until", metavar="TIME", help="From the store: predictions before this time.")
@click.option("--by", metavar="COL,…", default="", help="Also record a baseline per value of these segment columns.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_column_options
def baseline_set(db: str | None, model: str, model_version: str | None, data: str | None, since: str | None,
                 until: str | None, by: str, fmt: str, **kw: Any) -> None:
    """Record the baseline of a model (and version) from a holdout file or a stored period.

    Stores every metric with n and its standard error (for MSE, std(r²)/√n), for the whole
    model and, with --by, per cohort. Replaces an earlier baseline of the same model and version.
    """
    from msewatch.monitor.baselines import record_baseline
    from msewatch.sources import from_joined, from_store
    from msewatch.units import parse_instant

    columns = _columns(kw)
    if data and (since or until):
        _fail("give --data (a holdout file) or --since/--until (a stored period), not both.")
    store = _open_store(db)
    by_cols = tuple(c.strip() for c in by.split(",") if c.strip())
    if data:
        source = from_joined(data, columns)
        desc = f"holdout {data}"
        lo = hi = None
    else:
        if not (since and until):
            _fail("give --data FILE, or --since and --until for a stored production period.")
        source = from_store(store)
        lo, hi = parse_instant(since, option="--since"), parse_instant(until, option="--until")
        desc = f"store {since} to {until}"
    made = record_baseline(store.con, source.engine, source.predictions, source.labels, model=model,
                           version=model_version, by=by_cols, source=desc, since=lo, until=hi,
                           holdout=bool(data))
    if fmt == "json":
        _echo_json({"baselines": [b.to_dict() for b in made]})
        return
    _table(f"baseline of {model}" + (f" {model_version}" if model_version else ""),
           ["cohort", "n", "mse", "mse_se", "rmse", "mae", "p90_sq_err"],
           [[f"{b.segment}={b.segment_value}" if b.segment else "(all)", b.n, _num(b.mse), _num(b.mse_se),
             _num(b.metrics.get("rmse")), _num(b.metrics.get("mae")), _num(b.metrics.get("p90_sq_err"))] for b in made])


@baseline_group.command("list")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--model", default=None, help="Only this model.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def baseline_list(db: str | None, model: str | None, fmt: str) -> None:
    """List the recorded baselines."""
    from msewatch.monitor.baselines import list_baselines

    found = list_baselines(_open_store(db).con, model)
    if fmt == "json":
        _echo_json({"baselines": [b.to_dict() | {"cohorts": sorted(b.cohorts)} for b in found]})
        return
    _table("baselines", ["model", "version", "n", "mse", "mse_se", "cohorts", "source", "created"],
           [[b.model, b.version or "(any)", b.n, _num(b.mse), _num(b.mse_se), len(b.cohorts), b.source,
             b.created_at] for b in found])


@baseline_group.command("show")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--model", required=True)
@click.option("--version", "model_version", default=None)
@click.option("--at", metavar="TIME", help="For the default baseline: the 30 days end here [default: now].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def baseline_show(db: str | None, model: str, model_version: str | None, at: str | None, fmt: str) -> None:
    """Show the baseline rules would use: the recorded one, else the trailing 30-day median."""
    from msewatch.monitor.baselines import default_baseline, find_baseline

    con = _open_store(db).con
    b = find_baseline(con, model, model_version) or default_baseline(
        con, model, _instant(at, "--at"), version=model_version)
    if b is None:
        _fail(f"no baseline for model {model!r}: no recorded one and no labeled predictions in the trailing 30 days.")
    if fmt == "json":
        _echo_json(b.to_dict() | {"cohorts": {k: c.metrics for k, c in b.cohorts.items()}})
        return
    rows = [["(all)", b.n, *[_num(b.metrics.get(k)) for k in ("mse", "mse_se", "rmse", "mae", "bias", "p90_sq_err")]]]
    rows += [[k, c.n, *[_num(c.metrics.get(m)) for m in ("mse", "mse_se", "rmse", "mae", "bias", "p90_sq_err")]]
             for k, c in sorted(b.cohorts.items())]
    _table(f"baseline of {model} ({b.source})", ["cohort", "n", "mse", "mse_se", "rmse", "mae", "bias", "p90_sq_err"], rows)


# -- slo ------------------------------------------------------------------------------------------
@cli.group("slo")
def slo_group() -> None:
    """Quality SLOs: error budgets and burn rates."""


@slo_group.command("status")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--config", "config_path", default=None, metavar="FILE", help="msewatch.toml with [[slos]].")
@click.option("--server", metavar="URL", help="Ask a running `msewatch serve` (its own config) instead of --db.")
@click.option("--token", metavar="TOKEN", help="Bearer token for --server with the read scope [default: $MSEWATCH_TOKEN].")
@click.option("--at", metavar="TIME", help="Evaluate as of this time [default: now].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_engine_options
def slo_status(db: str | None, config_path: str | None, server: str | None, token: str | None, at: str | None,
               fmt: str, **engine: Any) -> None:
    """Budget left, burn rates over 5m…3d, the firing tiers and a daily burn chart per SLO.

    Computed from the store's per-minute rollups: a 28-day period never rescans raw rows.
    Windows with too few labels count neither good nor bad (see min_labels, min_coverage).
    With --engine (or [engine] url in the config) the per-minute counts are computed from the
    raw tables in that engine instead (one query per SLO), with the same arithmetic.
    """
    source = None
    if any(engine.values()) and (db or server):
        _fail("--engine reads the engine's tables: drop --db and --server.")
    if not db and not server:  # options, else the config's [engine] url, else the store
        from msewatch.config import load_config

        config = load_config(config_path)
        source = _engine_source(dict(engine), None, config_path, config=config)
    if source is not None:
        from msewatch.monitor.slo import engine_slo_statuses

        if not config.monitor.slos:
            _fail("no [[slos]] in the config; see `msewatch slo status --help` and the README's Guardrails section.")
        when = _instant(at, "--at")
        statuses = [s.to_dict() for s in engine_slo_statuses(config.monitor.slos, source.engine, source.predictions,
                                                             source.labels, when)]
    elif server:
        from msewatch.remote import get_json

        if db or config_path or at:
            _fail("--server answers with the server's own store, config and clock: drop --db, --config and --at.")
        statuses = get_json(server, "/v1/slo", {}, token=token)["slos"]
    else:
        config, _, monitor = _monitor(db, config_path)
        if not config.monitor.slos:
            _fail("no [[slos]] in the config; see `msewatch slo status --help` and the README's Guardrails section.")
        statuses = [s.to_dict() for s in monitor.slo_statuses(_instant(at, "--at"))]
    if fmt == "json":
        _echo_json({"slos": statuses})
        return
    rows = []
    for s in statuses:
        firing = ", ".join(f"{t['severity']} {t['factor']:g}×" for t in s["tiers"] if t["firing"]) or "none"
        daily = tuple(s["daily_burn"])
        known = [v for v in daily if v is not None]
        rows.append([s["slo"], s["model"], f"{s['objective']:g}", _pct(s["compliance"]), _pct(s["budget_remaining"]),
                     *[_num(s["burn_rates"].get(w)) for w in ("5m", "1h", "6h", "1d", "3d")], firing,
                     _spark(daily, max(2.0, *known) if known else 1.0)])
    _table("SLO status", ["slo", "model", "objective", "compliance", "budget left", "burn 5m", "1h", "6h", "1d", "3d",
                          "firing", "daily burn (oldest → newest)"], rows, no_wrap=("daily burn (oldest → newest)",))


# -- alerts ---------------------------------------------------------------------------------------
@cli.group("alerts")
def alerts_group() -> None:
    """Evaluate alert rules and list alerts."""


def _alert_rows(alerts: list[dict[str, Any]]) -> list[list[Any]]:
    """Table rows of alerts as `Alert.to_dict()` gives them (plus muted_by)."""
    order = {"firing": 0, "pending": 1, "resolved": 2}
    out = []
    for a in sorted(alerts, key=lambda a: (order.get(a["state"], 3), a["labels"].get("severity", ""),
                                           a["labels"].get("alertname", ""))):
        labels = a["labels"]
        extra = ", ".join(f"{k}={v}" for k, v in labels.items() if k not in ("alertname", "model", "severity", "rule"))
        since = (a.get("starts_at") or a.get("active_since") or "")[:16].replace("T", " ")
        out.append([a["state"], labels.get("severity"), labels.get("alertname"), labels.get("model"), extra,
                    _num(a.get("value")), since, a.get("muted_by") or "", a["annotations"].get("summary", "")])
    return out


_ALERT_COLUMNS = ["state", "severity", "alert", "model", "labels", "value", "since", "muted", "summary"]


@alerts_group.command("evaluate")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--config", "config_path", default=None, metavar="FILE", help="msewatch.toml with [[slos]], [[alerts]], [[notifiers]].")
@click.option("--at", metavar="TIME", help="Evaluate as of this time [default: now].")
@click.option("--no-notify", is_flag=True, help="Update alert states but send nothing.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def alerts_evaluate(db: str | None, config_path: str | None, at: str | None, no_notify: bool, fmt: str) -> None:
    """One evaluation pass, for cron and batch users: SLO burn rates and every alert rule.

    Alert states are kept in the store, so consecutive runs continue each other: a pending
    alert fires once its `for` has passed across runs, and a firing alert is not re-announced.
    Exit status 0 whatever fires; 2 on a usage error.
    """
    config, _, monitor = _monitor(db, config_path, notify=not no_notify)
    if not config.monitor.slos and not config.monitor.rules:
        _fail("no [[slos]] or [[alerts]] in the config: nothing to evaluate.")
    report = monitor.evaluate(_instant(at, "--at"), notify=not no_notify)
    for error in report.errors:
        click.echo(f"msewatch: warning: {error}", err=True)
    if fmt == "json":
        _echo_json({
            "at": report.at,
            "alerts": [a.to_dict() | {"muted_by": report.muted.get(a.fingerprint)} for a in report.alerts],
            "changed": [a.to_dict() for a in report.changed],
            "slos": [s.to_dict() for s in report.statuses],
            "notifications": [{"notifier": d.notifier, "status": d.status, "alerts": d.n_alerts, "error": d.error}
                              for d in report.deliveries],
            "errors": report.errors,
        })
        return
    _table(f"alerts at {report.at:%Y-%m-%d %H:%M:%S}Z", _ALERT_COLUMNS,
           _alert_rows([a.to_dict() | {"muted_by": report.muted.get(a.fingerprint)} for a in report.alerts]))
    for d in report.deliveries:
        click.echo(f"notified {d.notifier}: {d.status} ({d.n_alerts} alerts)" + (f": {d.error}" if d.error else ""))


@alerts_group.command("list")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--server", metavar="URL", help="Ask a running `msewatch serve` instead of --db.")
@click.option("--token", metavar="TOKEN", help="Bearer token for --server with the read scope [default: $MSEWATCH_TOKEN].")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="msewatch.toml: its [[silences]] and [[maintenance]] count in muted_by.")
@click.option("--at", metavar="TIME", help="Judge silences and maintenance windows at this time [default: now].")
@click.option("--state", type=click.Choice(["active", "firing", "pending", "resolved", "all"]), default="active", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def alerts_list(db: str | None, server: str | None, token: str | None, config_path: str | None, at: str | None,
                state: str, fmt: str) -> None:
    """The alerts as the last evaluation left them (with their runbooks in --format json)."""
    if server:
        from msewatch.remote import get_json

        if db or config_path or at:
            _fail("--server answers with the server's own store, config and clock: drop --db, --config and --at.")
        found = get_json(server, "/v1/alerts", {"state": state}, token=token)["alerts"]
    else:
        from msewatch.config import load_config
        from msewatch.monitor.engine import Monitor

        monitor = Monitor(load_config(config_path).monitor, _open_store(db).con)
        keep = {"active": ("pending", "firing"), "all": ("pending", "firing", "resolved")}.get(state, (state,))
        now = _instant(at, "--at")
        silences = monitor.silences(now)
        found = [a.to_dict() | {"muted_by": monitor.muted_by(a, now, silences)}
                 for a in monitor.book.alerts.values() if a.state in keep]
    if fmt == "json":
        _echo_json({"alerts": found})
        return
    _table("alerts", _ALERT_COLUMNS, _alert_rows(found))


# -- silence --------------------------------------------------------------------------------------
@cli.group("silence")
def silence_group() -> None:
    """Mute notifications of alerts whose labels match, for a time range."""


@silence_group.command("add")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--matcher", "matchers", multiple=True, required=True, metavar="LABEL=VALUE",
              help="Alert label to match (repeat: all must match), e.g. model=price alertname=slo_burn.")
@click.option("--duration", metavar="DURATION", help="How long from --starts (2h, 1d).")
@click.option("--starts", metavar="TIME", help="Start [default: now].")
@click.option("--ends", metavar="TIME", help="End (instead of --duration).")
@click.option("--comment", default="", help="Why (shown with the muted alerts).")
def silence_add(db: str | None, matchers: tuple[str, ...], duration: str | None, starts: str | None,
                ends: str | None, comment: str) -> None:
    """Add a silence; prints its id."""
    from msewatch.monitor.engine import add_silence
    from msewatch.units import parse_duration

    parsed = {}
    for m in matchers:
        name, sep, value = m.partition("=")
        if not sep or not name.strip() or not name.strip().isidentifier():
            _fail(f"--matcher must look like label=value; got {m!r}.")
        parsed[name.strip()] = value
    begin = _instant(starts, "--starts")
    if bool(duration) == bool(ends):
        _fail("give --duration or --ends (one of them).")
    end = begin + dt.timedelta(seconds=parse_duration(duration, option="--duration")) if duration else _instant(ends, "--ends")
    if end <= begin:
        _fail("the silence must end after it starts.")
    silence_id = add_silence(_open_store(db).con, parsed, begin, end, comment=comment)
    click.echo(str(silence_id))


@silence_group.command("list")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def silence_list(db: str | None, fmt: str) -> None:
    """List silences added with `silence add` (config silences live in msewatch.toml)."""
    from msewatch.monitor.engine import list_silences

    found = list_silences(_open_store(db).con)
    if fmt == "json":
        _echo_json({"silences": found})
        return
    now = dt.datetime.now(dt.timezone.utc)
    _table("silences", ["id", "matchers", "starts", "ends", "active", "comment"],
           [[s["id"], ", ".join(f"{k}={v}" for k, v in s["matchers"].items()), s["starts"], s["ends"],
             "yes" if s["starts"] <= now < s["ends"] else "no", s["comment"]] for s in found])


@silence_group.command("expire")
@click.argument("silence_id", type=int)
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
def silence_expire(silence_id: int, db: str | None) -> None:
    """End a silence now."""
    from msewatch.monitor.engine import expire_silence

    if not expire_silence(_open_store(db).con, silence_id):
        _fail(f"no silence with id {silence_id}.")
    click.echo(f"silence {silence_id} expired")


# -- canary ---------------------------------------------------------------------------------------
CANARY_EXIT = {"pass": 0, "fail": 1, "continue": 3}


@cli.command("canary")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--server", metavar="URL", help="Ask a running `msewatch serve` instead of --db.")
@click.option("--token", metavar="TOKEN", help="Bearer token for --server with the read scope [default: $MSEWATCH_TOKEN].")
@click.option("--config", "config_path", default=None, metavar="FILE", help="msewatch.toml with a [canary] section.")
@click.option("--model", required=True, help="The model.")
@click.option("--canary", "canary_version", required=True, metavar="VERSION", help="The new version being judged.")
@click.option("--control", required=True, metavar="VERSION", help="The version it replaces.")
@click.option("--mode", type=click.Choice(["split", "shadow"]), default="split", show_default=True,
              help="split: the versions serve different requests; shadow: the canary's predictions are in "
                   "shadow_predictions, paired with the control's by prediction_id.")
@click.option("--since", metavar="TIME", help="Judge predictions from here [default: the canary's first prediction].")
@click.option("--until", metavar="TIME", help="Judge predictions before this time [default: now − label_delay].")
@click.option("--rollback", is_flag=True, help="On fail, run the [canary] rollback hook (once per canary).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def canary_command(db: str | None, server: str | None, token: str | None, config_path: str | None, model: str,
                   canary_version: str, control: str, mode: str, since: str | None, until: str | None,
                   rollback: bool, fmt: str) -> None:
    """Judge a canary (or shadow) version against its control by MSE: pass, fail or continue.

    A mixture sequential probability ratio test on the difference of the two MSEs: the
    false-fail rate stays at most [canary] alpha (5%) however often the verdict is read, so a
    rollout controller can ask every minute. fail: the canary's MSE is higher with an
    always-valid p-value ≤ alpha. pass: the MSE ratio's confidence sequence is below
    1 + margin (5%). continue: not enough evidence yet, or fewer than min_n labeled
    predictions per arm, or label coverage under min_coverage.

    Exit status: 0 pass, 1 fail, 3 continue, 2 usage error.
    """
    from msewatch.units import parse_instant

    if server:
        from msewatch.remote import get_json

        if db or config_path or rollback:
            _fail("--server judges with the server's own store and config: drop --db, --config and --rollback.")
        result = get_json(server, "/v1/canary", {"model": model, "canary": canary_version, "control": control,
                                                  "mode": mode, "since": since, "until": until}, token=token)
    else:
        from msewatch.config import load_config
        from msewatch.monitor.canary import judge_canary, run_rollback

        config = load_config(config_path).monitor.canary
        store = _open_store(db)
        report = judge_canary(store.con, model, canary_version, control, mode=mode,
                              since=parse_instant(since, option="--since") if since else None,
                              until=parse_instant(until, option="--until") if until else None, config=config)
        if rollback:
            if not (config.rollback_webhook or config.rollback_command):
                _fail("--rollback needs rollback_webhook or rollback_command in the config's [canary] section.")
            report.rollback = run_rollback(store.con, report, config)
        result = report.to_dict()
    if fmt == "json":
        _echo_json(result)
    else:
        ratio = result["mse_ratio"]
        ci = result["ci"]
        _table(f"canary {model}: {canary_version} vs {control} ({result['mode']})",
               ["verdict", "mse ratio", "ci", "p-value", "n canary", "n control", "label coverage", "reason"],
               [[result["verdict"].upper(), _num(ratio), None if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]",
                 _num(result["p_value"]), result["n_canary"], result["n_control"], _pct(result["label_coverage"]),
                 result["reason"]]])
        if result.get("rollback"):
            click.echo(f"rollback: {json.dumps(result['rollback'], default=str)}")
    sys.exit(CANARY_EXIT[result["verdict"]])
