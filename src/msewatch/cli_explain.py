"""`msewatch explain`: which cohorts drive a change of MSE. Parses, calls monitor.attribution, prints."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from msewatch.cli import _column_options, _columns, _fail, _warn_rejected, cli


def _side(kw: dict[str, Any], side: str) -> tuple[dt.datetime | None, dt.datetime | None, str | None]:
    """(since, until, version) of one side: its own --a-…/--b-… option, else the shared one."""
    from msewatch.units import parse_instant

    out: list[Any] = []
    for name in ("since", "until"):
        own, shared = kw[f"{side}_{name}"], kw[name]
        if own and shared:
            _fail(f"give --{name} (both sides) or --{side}-{name}, not both.")
        text, option = (own, f"--{side}-{name}") if own else (shared, f"--{name}")
        out.append(parse_instant(text, option=option) if text else None)
    since, until = out
    if since and until and since >= until:
        _fail(f"side {side.upper()}: --{side}-since (or --since) must be earlier than its --{side}-until (or --until).")
    own, shared = kw[f"{side}_version"], kw["model_version"]
    if own and shared:
        _fail(f"give --version (both sides) or --{side}-version, not both.")
    return since, until, own or shared


def _describe(name: str, source: str | None, since: dt.datetime | None, until: dt.datetime | None,
              version: str | None) -> str:
    def stamp(t: dt.datetime) -> str:
        text = t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return text.removesuffix("T00:00:00") if text.endswith("T00:00:00") else text.removesuffix(":00") + "Z"

    parts = [source] if source else []
    if version:
        parts.append(f"version {version}")
    if since or until:
        parts.append(f"{stamp(since) if since else '…'} to {stamp(until) if until else '…'}")
    return f"{name} ({', '.join(parts)})" if parts else name


@cli.command("explain")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--a", "a_path", metavar="FILE", help="Side A as a joined file (y_pred, y_true and the --by columns), with --b.")
@click.option("--b", "b_path", metavar="FILE", help="Side B as a joined file, with --a.")
@click.option("--model", default=None, help="Only this model [default: every model].")
@click.option("--version", "model_version", default=None, help="Only this version, on both sides.")
@click.option("--by", default=None, metavar="COL,…", help="The cohorts: each combination of these columns' values. Required.")
@click.option("--since", metavar="TIME", help="Both sides: predictions at or after this time.")
@click.option("--until", metavar="TIME", help="Both sides: predictions before this time.")
@click.option("--a-since", metavar="TIME", help="Side A: predictions at or after this time.")
@click.option("--a-until", metavar="TIME", help="Side A: predictions before this time.")
@click.option("--b-since", metavar="TIME", help="Side B: predictions at or after this time.")
@click.option("--b-until", metavar="TIME", help="Side B: predictions before this time.")
@click.option("--a-version", metavar="VERSION", help="Side A: this model version.")
@click.option("--b-version", metavar="VERSION", help="Side B: this model version.")
@click.option("--top", type=click.IntRange(min=1), default=None, metavar="N", help="Show the N cohorts that contribute most [default: all].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_column_options
def explain_command(**kw: Any) -> None:
    """Split a change of MSE into cohort mix and error within cohorts; rank the cohorts that drive it.

    \b
      msewatch explain --db store.duckdb --model pricing --by region \\
          --a-since 2026-10-09 --a-until 2026-10-11 --b-since 2026-10-18 --b-until 2026-10-20
      msewatch explain --db store.duckdb --model pricing --by region,device --a-version v1 --b-version v2
      msewatch explain --a holdout_may.parquet --b holdout_june.parquet --by region --format json

    \b
    With shares w_c of labeled predictions and cohort MSEs m_c, MSE = Σ w_c·m_c on each side and
      mix_c   = (w_c^B − w_c^A)·(m_c^A + m_c^B)/2    traffic moved between cohorts
      error_c = (m_c^B − m_c^A)·(w_c^A + w_c^B)/2    the error changed within the cohort
    (the symmetric, Shapley split: it does not depend on order, and Σ mix_c + Σ error_c =
    MSE_B − MSE_A exactly). Cohorts are ranked by |mix_c + error_c|. A cohort with labels on one
    side only takes its MSE from the other side, so it contributes pure mix.
    Each side is one grouped evaluation in the engine. Exit status 0; 2 on a usage error.
    """
    from msewatch.evaluate import EvalSpec
    from msewatch.monitor.attribution import attribute

    columns = _columns(kw)
    files = bool(kw["a_path"] or kw["b_path"])
    if files and kw["db"]:
        _fail("give --db (a store) or --a and --b (two joined files), not both.")
    if files and not (kw["a_path"] and kw["b_path"]):
        _fail("--a and --b go together: a joined file for each side.")
    by = tuple(c.strip() for c in (kw["by"] or "").split(",") if c.strip())
    if not by:
        _fail("--by is required: the columns whose values make the cohorts, e.g. --by region.")
    (a_since, a_until, a_version), (b_since, b_until, b_version) = _side(kw, "a"), _side(kw, "b")
    if not files and (a_since, a_until, a_version) == (b_since, b_until, b_version):
        _fail("the two sides select the same predictions: give --a-since/--a-until and --b-since/--b-until "
              "(two periods), or --a-version and --b-version (two versions).")
    spec_a = EvalSpec(by=by, since=a_since, until=a_until, model=kw["model"], version=a_version)
    spec_b = EvalSpec(by=by, since=b_since, until=b_until, model=kw["model"], version=b_version)
    names = (_describe("A", kw["a_path"], a_since, a_until, a_version),
             _describe("B", kw["b_path"], b_since, b_until, b_version))

    store = None
    try:
        if files:
            from msewatch.sources import from_joined, new_engine

            engine = new_engine()
            source_a = from_joined(kw["a_path"], columns, engine=engine)
            source_b = from_joined(kw["b_path"], columns, engine=engine)
            result = attribute(engine, source_a.predictions, None, spec_a, source_b.predictions, None, spec_b,
                               sides=names)
            for source, evaluation in zip((source_a, source_b), result.evaluations or ()):
                _warn_rejected(source, evaluation)  # rows left out of a file, counted in the same pass
        else:
            from msewatch.sources import from_store
            from msewatch.store import Store, default_db_path

            store = Store(kw["db"] or default_db_path(), read_only=True)
            source = from_store(store)
            result = attribute(source.engine, source.predictions, source.labels, spec_a, spec_b=spec_b, sides=names)
    finally:
        if store is not None:
            store.close()

    if kw["fmt"] == "json":
        from msewatch.cli_monitor import _echo_json

        _echo_json(result.to_dict(kw["top"]) | {"a": names[0], "b": names[1]})
        return
    _print_table(result, names, kw["top"])


def _print_table(result: Any, names: tuple[str, str], top: int | None) -> None:
    from msewatch.cli_monitor import _num, _pct, _table

    def signed(v: float) -> str:
        return f"{v:+.3g}"

    click.echo(f"{names[0]}: MSE {_num(result.mse_a)} over {result.n_a} labeled predictions")
    click.echo(f"{names[1]}: MSE {_num(result.mse_b)} over {result.n_b} labeled predictions")
    click.echo(f"change {signed(result.total_change)} = mix {signed(result.mix)} (traffic moved between cohorts) "
               f"+ error {signed(result.error)} (error changed within cohorts)")
    shown = result.cohorts if top is None else result.cohorts[:top]
    _table(
        f"cohorts by contribution to the change ({', '.join(result.by)})",
        [*result.by, "contribution", "of change", "mix", "error", "n A", "n B", "share A", "share B", "mse A",
         "mse B"],
        [[*("(null)" if v is None else v for v in c.key), signed(c.contribution), _pct(c.share_of_change),
          signed(c.mix), signed(c.error), c.n_a, c.n_b, _pct(c.share_a), _pct(c.share_b), _num(c.mse_a),
          _num(c.mse_b)] for c in shown],
    )
    if len(shown) < len(result.cohorts):
        click.echo(f"… and {len(result.cohorts) - len(shown)} more cohorts with smaller contributions.")
    if any(c.mse_a is None or c.mse_b is None for c in result.cohorts):
        click.echo("A cohort with labels on one side only (mse —) takes its MSE from the other side: pure mix.")
