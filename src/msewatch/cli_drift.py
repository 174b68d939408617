"""`msewatch drift`: how far each column's distribution moved. Parses, calls the monitor, prints."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from msewatch.cli import _column_options, _columns, _engine_options, _engine_source, _fail, cli
from msewatch.cli_monitor import _echo_json, _instant, _num, _table

TESTS = ("auto", "ks", "psi", "wasserstein", "js")  # msewatch.monitor.drift.TESTS (imported when run)

_DAY = dt.timedelta(days=1)


@cli.command("drift")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--model", default=None, help="The model (required with the store; filters files that have a model column).")
@click.option("--version", "model_version", default=None, help="Only this model version.")
@click.option("--current-since", metavar="TIME", help="Current period start [default: 24h before its end].")
@click.option("--current-until", metavar="TIME", help="Current period end [default: now or --at].")
@click.option("--reference-since", metavar="TIME", help="Reference period start [default: 7 days before its end].")
@click.option("--reference-until", metavar="TIME", help="Reference period end [default: the current period's start].")
@click.option("--at", metavar="TIME", help="Take the default periods as of this time [default: now].")
@click.option("--current", "current_path", metavar="FILE", help="Current sample from a file (with --reference), not the store.")
@click.option("--reference", "reference_path", metavar="FILE", help="Reference sample from a file (with --current).")
@click.option("--columns", metavar="COL,…", default="",
              help="Columns to compare [default: every feature and segment column, y_pred and y_true].")
@click.option("--test", "test", type=click.Choice(TESTS), default="auto", show_default=True,
              help="Which test decides: auto (KS + effect size, JS + chi-square), ks, psi, wasserstein, js.")
@click.option("--alpha", type=float, default=0.01, show_default=True,
              help="Chance of any false drift flag across the columns (Bonferroni).")
@click.option("--min-n", type=int, default=100, show_default=True, help="Values needed on each side for a verdict.")
@click.option("--min-effect", type=float, default=0.1, show_default=True,
              help="PSI, Wasserstein/sd or JS distance that counts as a material shift.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_engine_options
@click.option("--config", "config_path", metavar="FILE", help="msewatch.toml with an [engine] section (for --engine).")
@_column_options
def drift_command(db: str | None, model: str | None, model_version: str | None, current_since: str | None,
                  current_until: str | None, reference_since: str | None, reference_until: str | None,
                  at: str | None, current_path: str | None, reference_path: str | None, columns: str,
                  test: str, alpha: float, min_n: int, min_effect: float, fmt: str, config_path: str | None,
                  **kw: Any) -> None:
    """Compare the distribution of every column between a current and a reference sample.

    \b
    From the store (current: the last 24h; reference: the 7 days before it):
      msewatch drift --db store.duckdb --model pricing
      msewatch drift --db store.duckdb --model pricing --current-since 2026-11-02 \\
          --reference-since 2026-10-01 --reference-until 2026-10-08 --format json
    From two files with the columns of predictions (Parquet, CSV or NDJSON):
      msewatch drift --current today.parquet --reference training.parquet
    In an engine (the queries run there; only per-column figures come back):
      msewatch drift --engine pyspark:// --predictions-table ml.predictions --labels-table ml.labels \\
          --model pricing
      msewatch drift --engine chdb:// --lake /data/msewatch-lake --model pricing
    Numeric columns: KS statistic and p-value, PSI over the reference's deciles, Wasserstein
    distance / the reference's sd. Text columns: Jensen–Shannon distance (base 2), PSI over
    categories, chi-square p-value. With --test auto a column drifts when its p-value is below
    alpha / (columns tested) and its effect is material (PSI or Wasserstein/sd ≥ min-effect;
    JS ≥ min-effect); columns with fewer than --min-n values on a side get no verdict.
    Exit status 0 whether or not anything drifts; 2 on a usage error.
    """
    from msewatch.monitor.drift import DriftSettings, drift_from_files, drift_from_store
    from msewatch.units import parse_instant

    engine_opts = {k: kw.pop(k) for k in ("engine_url", "predictions_table", "labels_table", "lake")}
    mapped = [k for k, v in kw.items() if v]
    column_map = _columns(kw)
    files = bool(current_path or reference_path)
    asked = [f"--{k.replace('_url', '').replace('_', '-')}" for k, v in engine_opts.items() if v]
    if config_path and (files or db):
        _fail("--config (its [engine] section) goes with --engine, not with --db or --current/--reference.")
    if config_path:
        asked.append("--config")
    if asked and (files or db):
        _fail(f"{asked[0]} reads the engine's tables: drop {'--db' if db else '--current/--reference'}.")
    if not 0 < alpha < 1:
        _fail(f"--alpha must be between 0 and 1; got {alpha:g}.")
    if min_n < 1:
        _fail(f"--min-n must be at least 1; got {min_n}.")
    if not min_effect > 0:
        _fail(f"--min-effect must be positive; got {min_effect:g}.")
    settings = DriftSettings(test=test, alpha=alpha, min_n=min_n, min_effect=min_effect)
    wanted = [c.strip() for c in columns.split(",") if c.strip()] or None
    if files:
        if not (current_path and reference_path):
            _fail("--current and --reference go together (two files to compare).")
        periods = [o for o, v in (("--db", db), ("--current-since", current_since), ("--current-until", current_until),
                                  ("--reference-since", reference_since), ("--reference-until", reference_until),
                                  ("--at", at)) if v]
        if periods:
            _fail(f"{periods[0]} goes with the store, not with --current/--reference files.")
        report = drift_from_files(current_path, reference_path, columns=wanted, model=model,
                                  version=model_version, column_map=column_map, settings=settings)
        title = f"drift: {current_path} vs reference {reference_path}"
    else:
        if not model:
            _fail("give --model (the store holds many models), or --current FILE --reference FILE.")
        if mapped and not asked:
            _fail(f"--{mapped[0].replace('_', '-')} applies to --current/--reference files or --engine, not to the store.")
        cur_hi = parse_instant(current_until, option="--current-until") if current_until else _instant(at, "--at")
        cur_lo = parse_instant(current_since, option="--current-since") if current_since else cur_hi - _DAY
        ref_hi = parse_instant(reference_until, option="--reference-until") if reference_until else cur_lo
        ref_lo = parse_instant(reference_since, option="--reference-since") if reference_since else ref_hi - 7 * _DAY
        if cur_lo >= cur_hi:
            _fail(f"the current period must end after it starts ({_iso(cur_lo)} to {_iso(cur_hi)}).")
        if ref_lo >= ref_hi:
            _fail(f"the reference period must end after it starts ({_iso(ref_lo)} to {_iso(ref_hi)}).")
        if asked:
            report = _engine_drift(engine_opts, column_map, config_path, model, (cur_lo, cur_hi), (ref_lo, ref_hi),
                                   model_version, wanted, settings)
        else:
            from msewatch.store import Store, default_db_path

            store = Store(db or default_db_path(), read_only=True)
            try:
                if not store.con.execute("SELECT count(*) FROM predictions WHERE model = ?", [model]).fetchall()[0][0]:
                    _fail(f"no predictions of model {model!r} in {store.path}.")
                report = drift_from_store(store.con, model, current=(cur_lo, cur_hi), reference=(ref_lo, ref_hi),
                                          version=model_version, columns=wanted, settings=settings)
            finally:
                store.close()
        title = (f"drift of {model}{' ' + model_version if model_version else ''}: "
                 f"{_iso(cur_lo)} to {_iso(cur_hi)} vs reference {_iso(ref_lo)} to {_iso(ref_hi)}")
    _show(report, title, fmt)


def _engine_drift(options: dict[str, Any], column_map: Any, config_path: str | None, model: str,
                  current: tuple[dt.datetime, dt.datetime], reference: tuple[dt.datetime, dt.datetime],
                  version: str | None, wanted: list[str] | None, settings: Any) -> Any:
    """drift_from_tables over the engine named by the options or the config's [engine]."""
    from msewatch.monitor.drift import drift_from_tables

    source = _engine_source(dict(options), column_map, config_path)
    if source is None:
        _fail(f"{config_path}: no [engine] url; give --engine URL.")
    report = drift_from_tables(source.engine, source.predictions, source.labels, model, current=current,
                               reference=reference, version=version, columns=wanted, settings=settings)
    if all(c.n_reference == c.n_current == 0 for c in report.columns):
        p = source.predictions
        if not p.filter(p.model == model).count().execute():
            _fail(f"no predictions of model {model!r} in the engine's predictions table.")
    return report


def _show(report: Any, title: str, fmt: str) -> None:
    if fmt == "json":
        _echo_json(report.to_dict())
        return
    _table(title, ["column", "kind", "n ref", "n cur", "test", "statistic", "p-value", "psi", "psi band",
                   "wass/sd", "js", "drift"],
           [[c.column, c.kind, c.n_reference, c.n_current, c.test, _num(c.statistic), _num(c.p_value), _num(c.psi),
             c.psi_band, _num(c.wasserstein_norm), _num(c.js), None if c.test == "none" else "DRIFT" if c.drift else "no"]
            for c in report.columns])
    tested = ", ".join(f"{c.column}: {c.note}" for c in report.columns if c.note)
    if tested:
        click.echo(f"notes: {tested}")
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(report.rule_text())
    drifting = report.drifting
    click.echo(f"drifting: {', '.join(drifting)}" if drifting else "no column drifts.")


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
