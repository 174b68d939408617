"""`msewatch report`: the dashboard's views over a store as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from msewatch.cli import _engine_options, _engine_where, _fail, cli


@cli.command("report")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--model", default=None, help="The model [default: the first in the store].")
@click.option("--version", "model_version", default=None, help="Only this model version.")
@click.option("--cohort", default=None, metavar="COLUMN", help="Segment column of the cohort heatmap (and of --cohort-value).")
@click.option("--cohort-value", default=None, metavar="VALUE", help="Only predictions whose --cohort column has this value.")
@click.option("--since", default=None, metavar="TIME", help="Start of the range (ISO 8601 or a duration back from now).")
@click.option("--until", default=None, metavar="TIME", help="End of the range [default: the newest data].")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="msewatch.toml with the [[slos]] to report on (and an [engine] section for --engine/--lake).")
@click.option("--out", default="report.html", show_default=True, metavar="FILE", help="The HTML file to write.")
@_engine_options
def report_command(db: str | None, model: str | None, model_version: str | None, cohort: str | None,
                   cohort_value: str | None, since: str | None, until: str | None, config_path: str | None, out: str,
                   engine_url: str | None, predictions_table: str | None, labels_table: str | None,
                   lake: str | None) -> None:
    """Write the executive, on-call and debug views of MODEL as one HTML file.

    The file inlines the chart library (Vega and Vega-Lite), its styles and every chart's data:
    it opens offline and can be mailed or attached to a postmortem. Numbers are computed in the
    engine over the store, as `msewatch serve`'s dashboard does; alerts are those the server's
    monitor last stored.

    With --engine URL (or --lake DIR) the data is an engine's predictions and labels tables, or
    a lake written by `msewatch export` / `serve --sink`, instead of a store:

    \b
      msewatch report --engine duckdb:// --lake /data/msewatch-lake --model pricing
      msewatch report --engine pyspark:// --predictions-table ml.predictions --labels-table ml.labels
      msewatch report --engine chdb:// --lake /data/msewatch-lake --config msewatch.toml

    The engine computes the aggregates (per-minute and per-hour segment rollups, over the
    current label of each id) and the rows of the recent window the on-call and debug views join
    (4 days before the newest data, or what --since/--until ask for); the views then run locally
    over those. An engine holds no monitor state: no alerts, and no baseline recorded with
    `msewatch baseline set` (the default one, the median daily MSE of 30 days, is used).
    The [engine] section of --config fills in what the options leave out (its url, tables, lake
    and column names); without --engine or --lake the report reads the store.
    """
    from msewatch.config import load_config
    from msewatch.report import report_html
    from msewatch.views import Filters, compute_all, store_alerts, store_slos

    config = load_config(config_path)
    filters = Filters.from_query({"model": model, "version": model_version, "cohort": cohort,
                                  "cohort_value": cohort_value, "since": since, "until": until})
    alerts: list[dict[str, Any]] | None = None  # None: those the store's monitor last stored
    if predictions_table or labels_table or engine_url or lake:
        if db:
            _fail("--db reads a store; --engine/--lake read an engine's tables: give one of them.")
        store, source = _engine_report_store(config, filters, engine_url, lake, predictions_table, labels_table)
        alerts = []  # no monitor state on an engine
    else:
        from msewatch.store import Store
        from msewatch.store._duckdb import default_db_path

        source = db or default_db_path()
        store = Store(source, read_only=True)
        unfolded = store.unfolded_rows()
        if unfolded:
            click.echo(f"msewatch: warning: {unfolded:,} rows committed by a server that stopped abruptly are not "
                       "in the rollups yet, so the charts leave them out; the next `msewatch serve` or `msewatch "
                       "ingest` on this store folds them in.", err=True)
    with store:
        con = store.con
        views = compute_all(con, filters, slos=store_slos(con, config), alerts=store_alerts(con) if alerts is None else alerts,
                            canary=config.monitor.canary)
    if not views["executive"].get("model"):
        _fail(f"{source} holds no predictions.")
    Path(out).write_text(report_html(views, db=source, model=views["executive"]["model"]), encoding="utf-8")
    drawn = sum(1 for v in views.values() for c in v["charts"])
    click.echo(f"wrote {out}: {drawn} charts of model {views['executive']['model']!r}", err=True)


def _engine_report_store(config: Any, filters: Any, url: str | None, lake: str | None, predictions_table: str | None,
                         labels_table: str | None) -> tuple[Any, str]:
    """The in-memory store of the engine's aggregates, and what it was read from."""
    import datetime as dt

    from msewatch.engine_store import RAW_DAYS, engine_store
    from msewatch.engines import connect

    settings = config.engine
    url = url or settings.url or None
    lake = lake or settings.lake or None
    if not url and not lake:
        _fail("--predictions-table and --labels-table go with --engine URL.")
    where = _engine_where(settings, predictions_table, labels_table, lake)
    data = f"the lake {lake}" if lake else f"the tables {where.predictions} and {where.labels}"
    engine = connect(url or "duckdb://")
    # event SLO thresholds, counted per minute as a store counts tracked ones
    thresholds: dict[str, list[float]] = {}
    for slo in config.monitor.slos:
        if slo.kind == "event" and slo.threshold is not None:
            thresholds.setdefault(slo.model, []).append(float(slo.threshold))

    def raw_since(end: dt.datetime) -> dt.datetime:
        """The debug view's range and the period before it (its feature comparison)."""
        until = filters.until or end
        if filters.since is None:
            return until - dt.timedelta(days=RAW_DAYS)
        return filters.since - (until - filters.since)

    shown = _redacted(url or "duckdb://")  # stderr and the report's header: no password
    click.echo(f"msewatch: aggregates computed by {engine.name} ({shown}) over {data}; "
               "the views run locally over them", err=True)
    store = engine_store(engine, where, raw_since=raw_since, thresholds=thresholds,
                         models=[filters.model] if filters.model else None)
    return store, f"{data} ({shown})"


def _redacted(url: str) -> str:
    """`url` without the password of its user part (clickhouse://user:pw@host → user:***@host)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
