"""`msewatch report`: the dashboard's views over a store as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import click

from msewatch.cli import _fail, cli


@cli.command("report")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--model", default=None, help="The model [default: the first in the store].")
@click.option("--version", "model_version", default=None, help="Only this model version.")
@click.option("--cohort", default=None, metavar="COLUMN", help="Segment column of the cohort heatmap (and of --cohort-value).")
@click.option("--cohort-value", default=None, metavar="VALUE", help="Only predictions whose --cohort column has this value.")
@click.option("--since", default=None, metavar="TIME", help="Start of the range (ISO 8601 or a duration back from now).")
@click.option("--until", default=None, metavar="TIME", help="End of the range [default: the newest data].")
@click.option("--config", "config_path", default=None, metavar="FILE", help="msewatch.toml with the [[slos]] to report on.")
@click.option("--out", default="report.html", show_default=True, metavar="FILE", help="The HTML file to write.")
def report_command(db: str | None, model: str | None, model_version: str | None, cohort: str | None,
                   cohort_value: str | None, since: str | None, until: str | None, config_path: str | None, out: str) -> None:
    """Write the executive, on-call and debug views of MODEL as one HTML file.

    The file inlines the chart library (Vega and Vega-Lite), its styles and every chart's data:
    it opens offline and can be mailed or attached to a postmortem. Numbers are computed in the
    engine over the store, as `msewatch serve`'s dashboard does; alerts are those the server's
    monitor last stored.
    """
    from msewatch.config import load_config
    from msewatch.report import report_html
    from msewatch.store import Store
    from msewatch.store._duckdb import default_db_path
    from msewatch.views import Filters, compute_all, store_alerts, store_slos

    path = db or default_db_path()
    config = load_config(config_path)
    filters = Filters.from_query({"model": model, "version": model_version, "cohort": cohort,
                                  "cohort_value": cohort_value, "since": since, "until": until})
    with Store(path, read_only=True) as store:
        con = store.con
        views = compute_all(con, filters, slos=store_slos(con, config), alerts=store_alerts(con),
                            canary=config.monitor.canary)
    if not views["executive"].get("model"):
        _fail(f"{path} holds no predictions.")
    Path(out).write_text(report_html(views, db=path, model=views["executive"]["model"]), encoding="utf-8")
    drawn = sum(1 for v in views.values() for c in v["charts"])
    click.echo(f"wrote {out}: {drawn} charts of model {views['executive']['model']!r}", err=True)
