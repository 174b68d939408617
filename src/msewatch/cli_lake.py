"""`msewatch export`: the store's rows into a Parquet lake, the same writer as `serve --sink`."""

from __future__ import annotations

from pathlib import Path

import click

from msewatch.cli import _fail, _progress, cli


@cli.command("export")
@click.option("--db", default=None, metavar="FILE", help="The store [default: $MSEWATCH_DB or msewatch.duckdb].")
@click.option("--out", required=True, metavar="DIR", help="The lake directory (created if missing).")
@click.option("--since", default=None, metavar="TIME", help="Only predictions at or after this ts (ISO 8601 or epoch seconds).")
@click.option("--until", default=None, metavar="TIME", help="Only predictions before this ts.")
@click.option("--model", default=None, help="Only this model's predictions.")
@click.option("--full", is_flag=True, help="Remove what this store wrote to DIR before and export everything again.")
def export_command(db: str | None, out: str, since: str | None, until: str | None, model: str | None, full: bool) -> None:
    """Write the store's predictions, label revisions and shadow predictions to DIR as Parquet.

    \b
    DIR/predictions/model=<model>/day=<YYYY-MM-DD>/part-*.parquet          day of ts (UTC)
    DIR/shadow_predictions/model=<model>/day=<YYYY-MM-DD>/part-*.parquet
    DIR/labels/day=<YYYY-MM-DD>/part-*.parquet                             day of ingested_at
    DIR/_msewatch_lake.json                                                the export's watermark

    Hive partitioning (model values %-encoded as Hive does), so Spark, ClickHouse, BigQuery or
    DuckDB prune by model and day; every file also holds all its columns, `model` included.
    Labels are every revision: the current one of an id has the latest label_ts (none counts
    as oldest), then the highest revision. Files appear atomically (readers never see a partial
    one; temporary files start with `_`).

    Incremental: a re-run exports only rows committed since the last one (a no-op when there are
    none), as `msewatch serve --sink DIR` does continuously. --since/--until/--model select
    predictions and shadow predictions (labels are all exported: they carry no model and may come
    first) and are fixed when DIR is created; a re-run without them keeps DIR's. Read it back with DuckDB:

    \b
      SELECT * FROM read_parquet('DIR/predictions/**/*.parquet', union_by_name = true)
    """
    from msewatch.lake import LakeFilters, LakeWriter, store_id
    from msewatch.store import Store
    from msewatch.store._duckdb import default_db_path
    from msewatch.units import parse_instant

    path = db or default_db_path()
    if not Path(path).is_file():
        _fail(f"{path}: no such store; give --db FILE (create one with `msewatch ingest`).")
    if Path(out).exists() and not Path(out).is_dir():
        _fail(f"--out {out}: the lake must be a directory; this is a file.")
    filters = None if since is None and until is None and model is None else LakeFilters(  # None: DIR's own
        model=model,
        since=parse_instant(since, option="--since").isoformat() if since else None,
        until=parse_instant(until, option="--until").isoformat() if until else None,
    )
    with Store(path) as store:  # the write lock: one exporter per store (and per lake) at a time
        sid = store_id(store.con)
        writer = LakeWriter(store.con, out, sid, filters=filters, full=full)
        with _progress(f"export to {out}") as progress:
            written = writer.export(progress=progress)
        held = ", ".join(f"{state['rows']} {table}" for table, state in writer.state["tables"].items())
    counts = ", ".join(f"{n} {table}" for table, n in written.items())
    click.echo(f"exported {counts} to {out} (the lake holds {held})", err=True)
