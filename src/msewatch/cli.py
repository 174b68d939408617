"""The `msewatch` command: parses options, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from msewatch import __version__
from msewatch.errors import MsewatchError

USAGE_ERROR = 2


def _column_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options that map the contract's column names onto the user's."""
    options = [
        ("--id-col", "prediction_id", "column holding the prediction id"),
        ("--ts-col", "ts", "column holding the prediction time (ISO 8601 or epoch seconds)"),
        ("--model-col", "model", "column holding the model name"),
        ("--version-col", "version", "column holding the model version"),
        ("--pred-col", "y_pred", "column holding the prediction"),
        ("--label-col", "y_true", "column holding the true value (label)"),
        ("--label-ts-col", "label_ts", "column holding the time the label became known"),
    ]
    for flag, default, text in reversed(options):
        func = click.option(flag, default=None, metavar="NAME", help=f"{text} [default: {default}]")(func)
    return func


def _columns(kw: dict[str, Any]) -> Any:
    from msewatch.schema import ColumnMap

    return ColumnMap().with_overrides(
        prediction_id=kw.pop("id_col"),
        ts=kw.pop("ts_col"),
        model=kw.pop("model_col"),
        version=kw.pop("version_col"),
        y_pred=kw.pop("pred_col"),
        y_true=kw.pop("label_col"),
        label_ts=kw.pop("label_ts_col"),
    )


def _engine_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options that run the command's queries in another engine (msewatch.engines)."""
    options = [
        click.option("--engine", "engine_url", metavar="URL",
                     help="Run the queries in this engine: duckdb://FILE, pyspark://, chdb://, clickhouse://…, "
                          "bigquery://… [default: [engine] url of --config]."),
        click.option("--predictions-table", metavar="NAME", help="Predictions table in the engine [default: predictions]."),
        click.option("--labels-table", metavar="NAME", help="Labels table in the engine [default: labels]."),
        click.option("--lake", metavar="DIR", help="Read a lake written by `msewatch serve --sink` / `msewatch export` "
                                               "instead of tables (with --engine, or in DuckDB)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _engine_source(kw: dict[str, Any], columns: Any = None, config_path: str | None = None, *,
                   files: tuple[str, str] | None = None, config: Any = None) -> Any:
    """An EvalInput over the engine named by the options (or None when none is asked for).

    Pops the engine options from `kw`; the options win over `[engine]` of the config file (or
    of `config`, when the caller has loaded it already)."""
    from msewatch.config import load_config
    from msewatch.engines import connect, engine_source

    url, lake = kw.pop("engine_url", None), kw.pop("lake", None)
    pred_table, label_table = kw.pop("predictions_table", None), kw.pop("labels_table", None)
    if config is None and config_path:
        config = load_config(config_path)
    settings = config.engine if config is not None else None
    if settings is not None and not url:
        url = settings.url or None
    if not url and not lake:
        if pred_table or label_table:
            _fail("--predictions-table and --labels-table go with --engine URL.")
        return None
    where = _engine_where(settings, pred_table, label_table, lake, columns, files=files)
    return engine_source(connect(url or "duckdb://"), where)


def _engine_where(settings: Any, predictions_table: str | None, labels_table: str | None, lake: str | None,
                  columns: Any = None, *, files: tuple[str, str] | None = None) -> Any:
    """Where the engine finds the data: the options, else `[engine]` of the config (`settings`)."""
    from msewatch.config import EngineConfig
    from msewatch.engines import EngineTables

    settings = settings or EngineConfig()
    return EngineTables(
        predictions=predictions_table or settings.predictions_table,
        labels=labels_table or settings.labels_table,
        lake=lake or settings.lake or None,
        columns=_engine_columns(settings, columns),
        predictions_files=files[0] if files else None,
        labels_files=files[1] if files else None,
    )


def _engine_columns(settings: Any, columns: Any = None) -> Any:
    """Column names of the engine's tables: `[engine.columns]`, overridden by the --*-col options."""
    from msewatch.schema import ColumnMap

    mapping = {**(settings.columns if settings else {})}
    if columns is not None:
        mapping.update({k: v for k, v in columns.source_names().items() if v != k})
    return ColumnMap().with_overrides(**mapping)


def _fail(message: str) -> None:
    click.echo(f"msewatch: error: {message}", err=True)
    sys.exit(USAGE_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="msewatch")
def cli() -> None:
    """Measure and guard regression models by Mean Squared Error.

    Evaluate holdout sets and production predictions joined to labels that arrive late, by
    time window, cohort and version. Start with `msewatch demo`.
    """


# -- eval ----------------------------------------------------------------------------------------
@cli.command("eval")
@click.option("--data", help="Joined file: y_pred and y_true on each row (a holdout set).")
@click.option("--predictions", "predictions_path", help="Predictions file (with --labels).")
@click.option("--labels", "labels_path", help="Labels file (with --predictions); the latest label_ts per id counts.")
@click.option("--db", help="Evaluate the store in this DuckDB file.")
@click.option("--server", metavar="URL", help="Ask a running `msewatch serve` (which owns its store file).")
@click.option("--token", metavar="TOKEN", help="Bearer token for --server with the read scope [default: $MSEWATCH_TOKEN].")
@click.option("--model", help="Only this model.")
@click.option("--version", "model_version", help="Only this model version.")
@click.option("--window", metavar="DURATION", help="Tumbling windows by prediction time, aligned to the UTC epoch: 15m, 1h, 1d…")
@click.option("--rolling", metavar="DURATION", help="Sliding windows of this size (with --step).")
@click.option("--step", metavar="DURATION", help="Step between sliding windows [default: the window size].")
@click.option("--by", metavar="COL,…", help="Group by these columns (segments, version, model).")
@click.option("--since", metavar="TIME", help="Predictions at or after this time (ISO 8601 or epoch seconds).")
@click.option("--until", metavar="TIME", help="Predictions before this time.")
@click.option("--huber-delta", type=float, default=1.0, show_default=True, help="δ of the Huber loss.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@_engine_options
@click.option("--config", "config_path", metavar="FILE", help="msewatch.toml with an [engine] section (for --engine).")
@_column_options
def eval_command(**kw: Any) -> None:
    """Evaluate MSE, RMSE, MAE, bias, R², MAPE, Huber and squared-error quantiles.

    \b
    Three sources:
      msewatch eval --data holdout.parquet
      msewatch eval --predictions preds.parquet --labels labels.csv --window 1h --by region,version
      msewatch eval --db msewatch.duckdb --model pricing --rolling 24h --step 1h
      msewatch eval --server http://127.0.0.1:8080 --window 1h --by version
      msewatch eval --engine pyspark:// --predictions-table ml.predictions --labels-table ml.labels --window 1h
      msewatch eval --engine chdb:// --lake /data/msewatch-lake --by version
      msewatch eval --engine "duckdb://?memory_limit=4GB" --predictions 'p/*.parquet' --labels 'l/*.parquet'
    Rows that fail validation are left out and counted on stderr; `msewatch ingest` lists them.
    With --engine the whole query runs in that engine and only the result rows come back.
    """
    from msewatch.evaluate import EvalSpec, evaluate
    from msewatch.output import render

    columns = _columns(kw)
    engine_asked = any(kw.get(k) for k in ("engine_url", "lake", "predictions_table", "labels_table")) or (
        kw["config_path"] and not any(kw[m] for m in ("data", "predictions_path", "db", "server")))
    # with --engine, --predictions/--labels files are read by that engine (e.g. Spark on a lake path)
    engine_files = bool(kw.get("engine_url") and kw["predictions_path"])
    modes = [m for m in ("data", "predictions_path", "db", "server") if kw[m] and not (engine_files and m == "predictions_path")]
    modes += ["engine"] * bool(engine_asked)
    if len(modes) != 1:
        _fail(
            "give exactly one source: --data FILE, --predictions FILE --labels FILE, --db FILE, "
            "--server URL or --engine URL (or --lake DIR)."
        )
    if kw["token"] and not kw["server"]:
        _fail("--token goes with --server.")
    if bool(kw["predictions_path"]) != bool(kw["labels_path"]):
        _fail("--predictions and --labels go together.")
    if kw["data"] and kw["labels_path"]:
        _fail("--data already holds labels; drop --labels.")
    spec = EvalSpec.from_options(
        window=kw["window"], rolling=kw["rolling"], step=kw["step"], by=kw["by"],
        since=kw["since"], until=kw["until"], model=kw["model"], version=kw["model_version"],
        huber_delta=kw["huber_delta"],
    )
    if kw["server"]:
        from msewatch.remote import get_json

        params = {
            "model": kw["model"], "version": kw["model_version"], "window": kw["window"],
            "rolling": kw["rolling"], "step": kw["step"], "by": kw["by"], "since": kw["since"],
            "until": kw["until"], "huber_delta": repr(kw["huber_delta"]),
        }
        rows = get_json(kw["server"], "/v1/metrics", params, token=kw["token"])["rows"]
        click.echo(render(rows, spec.output_columns(rows), kw["fmt"]))
        return
    store = None
    if engine_asked:
        files = (kw["predictions_path"], kw["labels_path"]) if engine_files else None
        source = _engine_source(kw, columns, kw["config_path"], files=files)
        if source is None:
            _fail(f"{kw['config_path']}: no [engine] url; give --engine URL.")
    elif kw["db"]:
        from msewatch.sources import from_store
        from msewatch.store import Store

        store = Store(kw["db"], read_only=True)
        source = from_store(store)
    elif kw["data"]:
        from msewatch.sources import from_joined

        source = from_joined(kw["data"], columns)
    else:
        from msewatch.sources import from_files

        source = from_files(kw["predictions_path"], kw["labels_path"], columns)
    try:
        result = evaluate(source.engine, source.predictions, source.labels, spec)
        _warn_rejected(source, result)
    finally:
        if store is not None:
            store.close()
    columns_out = spec.output_columns(result.rows)
    if engine_asked:
        from msewatch.engines import quantile_note

        if result.rejected_predictions:
            click.echo(f"msewatch: warning: left out {result.rejected_predictions} prediction rows with a null id, "
                       "time, model or version or a non-finite y_pred.", err=True)
        note = quantile_note(source.engine)
        if note:  # the contract's exact quantiles are not available in this engine
            click.echo(f"msewatch: note: squared-error quantiles are approximate ({note}).", err=True)
            for row in result.rows:
                row["approximate"] = True
            columns_out.append("approximate")
    click.echo(render(result.rows, columns_out, kw["fmt"]))


def _warn_rejected(source: Any, result: Any) -> None:
    """One stderr line per input file that had rows left out, with the first reasons."""
    from msewatch.sources import first_rejects

    counts = [result.rejected_predictions, result.rejected_labels]
    for (name, (_, parse_rejects)), n in zip(source.checked.items(), counts):
        n += len(parse_rejects)
        if not n:
            continue
        first = "; ".join(first_rejects(source, name))
        click.echo(
            f"msewatch: warning: left out {n} invalid row{'s' * (n != 1)} of {name} ({first}); "
            "`msewatch ingest … --rejects FILE` lists them all.",
            err=True,
        )


# -- ingest --------------------------------------------------------------------------------------
@cli.command("ingest")
@click.argument("kind", type=click.Choice(["predictions", "labels", "shadow"]))
@click.argument("file")
@click.option("--db", help="DuckDB store file [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--rejects", help="Write rejected rows with their reasons to this NDJSON file.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--source", help="Provenance recorded with every row [default: the file path].")
@click.option("--model", "default_model", help="Model name for rows without one [default: 'default'].")
@click.option("--version", "default_version", help="Model version for rows without one [default: 'default'].")
@_column_options
def ingest_command(kind: str, file: str, **kw: Any) -> None:
    """Load a Parquet, CSV or NDJSON file of predictions, labels or shadow predictions into the store.

    \b
    Re-ingesting a file changes nothing (its rows count as duplicates). A prediction id stored
    with different content is a conflict and is rejected. A different label for an id is a new
    revision, and history is kept; the label with the latest label_ts counts (without one, the
    last to arrive). Labels may arrive before their predictions.
    `shadow`: predictions of a candidate version scored beside production (the canary judge's
    shadow mode), with the columns of predictions; kept apart, keyed by prediction_id and
    version, they never count in eval, rollups or /metrics. Other columns are ignored.
    The file is committed in one transaction; bad rows are rejected with their reason and the
    good rows beside them still land.
    """
    from msewatch.store import Store, default_db_path, rejects_to_ndjson

    columns = _columns(kw)
    db = kw["db"] or default_db_path()
    from msewatch.io import BatchReader

    BatchReader(Path(file))  # fail on a missing or unknown file before creating a store
    with Store(db) as store, _progress(f"ingest {Path(file).name}") as progress:
        result = store.ingest_file(
            kind,  # type: ignore[arg-type]
            file,
            columns,
            source=kw["source"],
            default_model=kw["default_model"],
            default_version=kw["default_version"],
            progress=progress,
        )
    if kw["rejects"]:
        Path(kw["rejects"]).write_bytes(rejects_to_ndjson(result.rejects))
    if kw["fmt"] == "json":
        import orjson

        summary: dict[str, Any] = dict(result.summary())
        if result.ignored_columns:
            summary["ignored_columns"] = result.ignored_columns
        click.echo(orjson.dumps(summary).decode())
    else:
        click.echo(
            f"{kind}: {result.accepted} accepted, {result.duplicates} duplicates, "
            f"{result.rejected} rejected ({db})"
        )
        for reject in result.rejects[:5]:
            click.echo(f"  rejected row {reject.row}: {reject.error}", err=True)
        if result.rejected > 5:
            hint = "" if kw["rejects"] else "; --rejects FILE writes them all"
            click.echo(f"  … and {result.rejected - 5} more{hint}", err=True)
        if result.ignored_columns:
            what = ", ".join(repr(c) for c in result.ignored_columns)
            click.echo(f"  ignored columns {what}: {kind} rows keep only the contract columns", err=True)


class _progress:
    """A progress bar on stderr for work that takes long enough to watch."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Callable[[int, int], None]:
        return self.update

    def update(self, done: int, total: int) -> None:
        if self._progress is None:
            if total < 20_000_000 and done >= total:
                return  # small input: finished before a bar is worth drawing
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                TaskProgressColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=total)
        self._progress.update(self._task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


# -- serve ---------------------------------------------------------------------------------------
@cli.command("serve")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--config", "config_path", default=None, metavar="FILE", help="msewatch.toml: tokens, limits, Prometheus labels and buckets.")
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1, or [server] host].")
@click.option("--port", type=int, default=None, help="Port [default: 8080, or [server] port].")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback address without tokens.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.option("--sink", default=None, metavar="DIR", help="Also append accepted rows to this Parquet lake (see `msewatch export --help`) [default: [sink] dir].")
def serve_command(db: str | None, config_path: str | None, host: str | None, port: int | None, insecure: bool, log_level: str,
                  sink: str | None) -> None:
    """Serve the HTTP API: ingest predictions and labels, query metrics, Prometheus /metrics.

    \b
    POST /v1/predictions, POST /v1/labels   JSON object, array, or NDJSON; answered once committed
    POST /v1/shadow                         a candidate's shadow predictions (never in metrics)
    GET  /v1/metrics?window=1h&by=version   the JSON of `msewatch eval --format json`
    GET  /metrics                           Prometheus exposition (counts at label arrival)
    GET  /healthz, /readyz, /openapi.json
    The server owns the store file while it runs (DuckDB allows one writing process): query it
    with `msewatch eval --server URL`. With no tokens configured it listens on loopback only.
    Concurrent requests share a commit ([server] commit_delay_ms, max_group_rows). A group of
    valid rows with only new ids is answered once it is in the store's journal on disk
    (<store>.journal-N) and applied to the tables right behind; any other group is committed
    to the tables before it is answered. The rollups behind the dashboard, the monitor and
    /metrics follow the commits in a step that runs every [server] rollup_delay_ms (1000) or
    once rollup_rows (100,000) wait; a scrape, a dashboard load or a canary judgement runs it
    first, so it sees every answered request. /v1/metrics waits for the journal only.
    DuckDB runs on [server] duckdb_threads threads (default: the cores minus two, at least
    one), leaving the rest to parsing and answering.
    SIGTERM or Ctrl-C: stops taking requests, commits what was accepted, exits.
    """
    from msewatch.config import load_config
    from msewatch.server import serve
    from msewatch.store import default_db_path

    config = load_config(config_path)
    serve(
        db or default_db_path(),
        config,
        host=host or config.server.host,
        port=port if port is not None else config.server.port,
        insecure=insecure,
        log_level=log_level,
        sink=sink,
    )


# -- demo ----------------------------------------------------------------------------------------
@cli.command("demo")
@click.option("--db", default="msewatch-demo.duckdb", show_default=True, help="Store file to (re)create for the demo.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed of the scenario.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--serve", is_flag=True, help="Replay the scenario through the SDK into a running `msewatch serve`.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port of the demo server (with --serve).")
@click.option("--replay-seconds", type=float, default=60.0, show_default=True, help="How long the three weeks take to replay (with --serve).")
@click.option("--exit", "exit_after", is_flag=True, help="Stop the server after the replay instead of serving on (with --serve).")
def demo_command(db: str, seed: int, fmt: str, serve: bool, port: int, replay_seconds: float, exit_after: bool) -> None:
    """Run a realistic monitoring scenario end to end and show what on-call would need.

    A pricing model serves four regions for three weeks; labels arrive hours to days late and
    some never; a data drift degrades one region; version v2, rolled out in week three, is
    worse. The scenario is written as files, ingested into DB through `msewatch ingest`'s code
    path, and evaluated by `msewatch eval`'s.

    With --serve, a `msewatch serve` process owns DB and the scenario's events are replayed in
    time order through the Python SDK (msewatch.Client), so /metrics and /v1/metrics move as
    you watch; it keeps serving until Ctrl-C unless --exit is given.
    """
    if serve:
        from msewatch.demo import serve_demo

        if replay_seconds <= 0:
            _fail("--replay-seconds must be positive.")
        say = (lambda text: click.echo(text, err=True)) if fmt == "json" else click.echo
        report = serve_demo(db, port=port, seed=seed, replay_seconds=replay_seconds, keep_serving=not exit_after, echo=say)
        if fmt == "json":
            import orjson

            click.echo(orjson.dumps(report, default=str).decode())
        return
    from msewatch.demo import run_demo

    run_demo(db, seed=seed, fmt=fmt, echo=click.echo)


# -- rules ---------------------------------------------------------------------------------------
@cli.command("rules")
@click.option("--config", "config_path", default=None, metavar="FILE", help="msewatch.toml with the [[slos]] to write rules for.")
@click.option("--out", default=None, metavar="FILE", help="Write the rule file here [default: stdout].")
def rules_command(config_path: str | None, out: str | None) -> None:
    """Write Prometheus recording and alert rules for the SLOs of msewatch.toml.

    \b
    The rule file works over the series of `msewatch serve`'s /metrics:
      recording rules  MSE and RMSE per model and version over 5m and 1h
                       (model_version:msewatch_squared_error:mse_rate5m, …), and per event SLO
                       the error ratio and labeled count over each burn-rate window
                       (model:msewatch_slo_errors:ratio_rate1h{slo="…"}, …)
      alert rules      MsewatchErrorBudgetBurn, one per burn tier of each event SLO: the SRE
                       Workbook's multiwindow, multi-burn-rate alerts (default tiers: page at
                       14.4x over 1h and 5m or 6x over 6h and 30m, ticket at 3x over 1d and 2h
                       or 1x over 3d and 6h), with severity, slo and model labels and a runbook
    Window SLOs (kind = "window") cannot be expressed over Prometheus counters: they are left
    out with a note on stderr (msewatch serve evaluates them). A config without event SLOs is
    an error. Check the output with `promtool check rules FILE`.
    """
    from msewatch.config import load_config
    from msewatch.monitor.promrules import prometheus_rules, render_rules, rules_notes, write_rules

    config = load_config(config_path)
    if out:
        write_rules(config, out)
    else:
        click.echo(render_rules(config), nl=False)
    for warning in config.monitor.warnings:
        click.echo(f"msewatch: warning: {warning}", err=True)
    for note in rules_notes(config):
        click.echo(f"msewatch: note: {note}", err=True)
    if out:
        rules = [r for g in prometheus_rules(config)["groups"] for r in g["rules"]]
        alerts = sum("alert" in r for r in rules)
        click.echo(f"msewatch: wrote {out}: {len(rules) - alerts} recording rules, {alerts} alerts", err=True)


# the other commands live in their own modules and register themselves on `cli` when imported
from msewatch import cli_drift, cli_explain, cli_gate, cli_grafana, cli_lake, cli_monitor, cli_report

COMMAND_MODULES = (cli_drift, cli_explain, cli_gate, cli_grafana, cli_lake, cli_monitor, cli_report)


def main() -> None:
    """Entry point: domain errors become one line on stderr and exit status 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("msewatch: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MsewatchError as exc:
        _fail(str(exc))
    except BrokenPipeError:
        sys.exit(0)
    except SystemExit:
        raise


if __name__ == "__main__":
    main()
