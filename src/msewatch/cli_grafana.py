"""`msewatch grafana`: Grafana dashboards and provisioning files. Parses, calls the monitor, prints."""

from __future__ import annotations

import click

from msewatch.cli import cli


@cli.command("grafana")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="msewatch.toml: segment labels, SLOs, rules and runbooks of the dashboards.")
@click.option("--out", required=True, metavar="DIR", help="Write dashboards/ and provisioning/ under this directory.")
@click.option("--datasource-uid", default="prometheus", show_default=True, metavar="UID",
              help="uid of the Prometheus data source the dashboards use by default and provisioning creates.")
@click.option("--prometheus-url", default="http://localhost:9090", show_default=True, metavar="URL",
              help="URL of that data source (provisioning/datasources/prometheus.yaml).")
@click.option("--dashboards-path", default=None, metavar="PATH",
              help="The dashboards directory as Grafana sees it [default: DIR/dashboards, absolute].")
@click.option("--scrape-interval", default=None, metavar="DURATION",
              help="Prometheus's scrape interval (the data source's timeInterval, for $__rate_interval).")
def grafana_command(config_path: str | None, out: str, datasource_uid: str, prometheus_url: str,
                    dashboards_path: str | None, scrape_interval: str | None) -> None:
    """Write Grafana dashboards over msewatch serve's Prometheus series, with provisioning files.

    \b
    DIR/dashboards/msewatch-executive.json  RMSE over 30/90 days, cohort × day heatmap, versions
                                            ranked by ΔMSE vs the model's previous week, budgets
    DIR/dashboards/msewatch-oncall.json     rolling MSE 1h/6h/24h with SLO limits and budget,
                                            canary vs control, active alerts with runbooks
    DIR/dashboards/msewatch-debug.json      squared-error histogram and p50/p90/p99, coverage,
                                            label latency, ingest rejects, request latency
    DIR/provisioning/dashboards/msewatch.yaml    file provider for DIR/dashboards
    DIR/provisioning/datasources/prometheus.yaml the Prometheus data source (--datasource-uid)
    Templated by data source, model, version and each [metrics] segments label; annotated with
    new versions, label bursts (backfills) and [[maintenance]] windows. Raw PromQL: the
    recording rules of `msewatch rules` are not needed. Point Grafana's paths.provisioning at
    DIR/provisioning, or copy the two files into its provisioning directory.
    """
    from msewatch.cli import _fail
    from msewatch.config import load_config
    from msewatch.monitor.grafana import check_uid, grafana_notes, write_grafana
    from msewatch.units import parse_duration

    check_uid(datasource_uid)
    if not prometheus_url.startswith(("http://", "https://")):
        _fail(f"--prometheus-url {prometheus_url!r}: expected an http:// or https:// URL.")
    if scrape_interval is not None:
        parse_duration(scrape_interval, option="--scrape-interval")
    config = load_config(config_path)
    written = write_grafana(config, out, datasource_uid=datasource_uid, prometheus_url=prometheus_url,
                            dashboards_path=dashboards_path, scrape_interval=scrape_interval)
    for warning in config.monitor.warnings:
        click.echo(f"msewatch: warning: {warning}", err=True)
    for note in grafana_notes(config):
        click.echo(f"msewatch: note: {note}", err=True)
    for path in written:
        click.echo(str(path))
    click.echo(f"msewatch: wrote {len(written)} files under {out}", err=True)
