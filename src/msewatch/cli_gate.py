"""`msewatch gate`: the CI check on a candidate model's MSE. Parses, calls monitor.gate, prints."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Any

import click

from msewatch.cli import _column_options, _columns, _engine_columns, _fail, cli

PASS, FAIL = 0, 1


@cli.command("gate")
@click.option("--candidate", metavar="FILE", help="The candidate's predictions: prediction_id, y_pred (and y_true unless --labels).")
@click.option("--baseline", metavar="FILE", help="The baseline's predictions for the same holdout ids.")
@click.option("--baseline-model", metavar="MODEL[@VERSION]", help="Compare with a baseline stored by `msewatch baseline set` (with --db).")
@click.option("--db", metavar="FILE", help="The store holding --baseline-model.")
@click.option("--labels", "labels_path", metavar="FILE", help="Labels: prediction_id, y_true [, label_ts]; the latest label_ts per id counts.")
@click.option("--engine", "engine_url", metavar="URL",
              help="Compute in this engine: duckdb://FILE, pyspark://, chdb://, clickhouse://…, bigquery://…; it reads "
                   "the FILEs itself (Parquet, CSV, globs) [default: [engine] url of --config].")
@click.option("--candidate-table", metavar="NAME", help="The candidate's predictions as a table of --engine (schema.table allowed).")
@click.option("--baseline-table", metavar="NAME", help="The baseline's predictions as a table of --engine.")
@click.option("--labels-table", metavar="NAME", help="Labels as a table of --engine.")
@click.option("--config", "config_path", metavar="FILE", help="msewatch.toml: the [engine] url and [engine.columns] (for --engine).")
@click.option("--max-increase", metavar="PCT", help="Largest ΔMSE allowed, as 5% or 5 (both five percent). Required.")
@click.option("--max-mse", type=float, metavar="X", help="Also fail when the candidate's MSE is above X.")
@click.option("--max-rmse", type=float, metavar="X", help="Also fail when the candidate's RMSE is above X.")
@click.option("--by", metavar="COL,…", default="", help="Also test each value of these columns (each column separately).")
@click.option("--fdr", type=float, default=0.05, show_default=True, help="False-discovery rate across cohorts (Benjamini–Hochberg).")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="One-sided confidence of the upper bound.")
@click.option("--bootstrap", type=int, default=2000, show_default=True, metavar="N", help="Paired-bootstrap replicates; 0: the delta method decides.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap (a rerun gives the same verdict).")
@click.option("--hac-lag", type=int, default=0, show_default=True, metavar="K", help="Time-ordered rows: Newey–West lag K and bootstrap blocks of ≥ K+1 rows.")
@click.option("--min-n", type=int, default=30, show_default=True, help="Fewest rows to compare (and per cohort to test).")
@click.option("--max-unpaired", default="0", show_default=True, metavar="PCT", help="Largest share of candidate and baseline rows left out (no partner, no label, invalid).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--summary-md", metavar="FILE", help="Append a markdown summary here (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--junit", metavar="FILE", help="Write JUnit XML here: one testcase per check.")
@_column_options
def gate_command(**kw: Any) -> None:
    """Fail a CI step when a candidate model's MSE is worse than a baseline's by more than a margin.

    \b
      msewatch gate --candidate cand.parquet --baseline base.parquet --max-increase 5%
      msewatch gate --candidate cand.csv --baseline base.csv --labels y.csv --max-increase 2 --by region
      msewatch gate --candidate cand.parquet --baseline-model pricing@v3 --db store.duckdb --max-increase 5%
      msewatch gate --engine pyspark:// --candidate-table ml.cand --baseline-table ml.base --max-increase 5%
      msewatch gate --engine chdb:// --candidate 'cand/*.parquet' --baseline 'base/*.parquet' --max-increase 5%

    \b
    Paired: rows of the two files are matched by prediction_id; each id once per file. y_true
    comes from --labels, else from the candidate, else the baseline (both: they must agree).
    ΔMSE% = 100·mean(r_cand² − r_base²)/mean(r_base²). One-sided: the gate passes when the
    upper confidence bound of ΔMSE% is ≤ --max-increase; an improvement never fails it.
    The verdict uses the paired bootstrap's percentile bound (pairs resampled; above 10,000
    rows, sums over 10,000 random blocks are resampled), or with --bootstrap 0 the delta method
    on the ratio of means with the paired covariance (Diebold–Mariano style; Newey–West with
    --hac-lag). Both are reported; `ci` is [lower, upper] one-sided bounds at --confidence.
    --max-mse / --max-rmse compare the candidate's point value. --by: each cohort gets a
    one-sided z-test of ΔMSE% > --max-increase; Benjamini–Hochberg at --fdr; a discovery fails.
    --baseline-model: unpaired, the candidate's MSE vs the stored MSE and its standard error.

    \b
    --engine URL (or [engine] url of --config): the engine reads the FILEs itself, or the
    --candidate-table, --baseline-table, --labels-table tables, and computes everything up to
    the paired squared errors; only those rows come back. Invalid rows: a null or blank id, a
    null or non-finite y_pred or y_true, a ts that is not a time (reported by id). A table has
    no row order: rows are ordered by ts, then prediction_id (by prediction_id without ts),
    which --hac-lag and the bootstrap follow. --baseline-model still reads --db.

    \b
    Rows left out (invalid values, ids in one file only, pairs without a label) are reported
    and are an error above --max-unpaired (default 0: every row must pair).
    Exit status: 0 pass, 1 fail, 2 usage error (files, columns, ids, too few rows, options).
    """
    from msewatch.monitor import gate

    columns = _columns(kw)
    engine_url, settings = _engine_settings(kw)
    tables = {role: kw[f"{role}_table"] for role in ("candidate", "baseline", "labels")}
    named = [f"--{role}-table" for role, name in tables.items() if name]
    if named and not engine_url:
        _fail(f"{named[0]} names a table of an engine: give --engine URL too, or a file with --{named[0][2:-6]}.")
    for role, path in (("candidate", kw["candidate"]), ("baseline", kw["baseline"]), ("labels", kw["labels_path"])):
        if path and tables[role]:
            _fail(f"give --{role} FILE or --{role}-table NAME, not both.")
    candidate = kw["candidate"] or tables["candidate"]
    baseline, model_ref, db = kw["baseline"] or tables["baseline"], kw["baseline_model"], kw["db"]
    labels = kw["labels_path"] or tables["labels"]
    if not candidate:
        _fail("give --candidate FILE" + (" or --candidate-table NAME" if engine_url else "")
              + ", the candidate's predictions on the holdout.")
    if bool(baseline) == bool(model_ref):
        _fail("give --baseline FILE" + (", --baseline-table NAME" if engine_url else "")
              + " or --baseline-model MODEL@VERSION (with --db FILE), one of them.")
    if model_ref and not db:
        _fail("--baseline-model needs --db FILE, the store it was recorded in.")
    if db and not model_ref:
        _fail("--db goes with --baseline-model.")
    if kw["max_increase"] is None:
        _fail("give --max-increase PCT, the largest ΔMSE allowed (e.g. 5%).")
    by = tuple(c.strip() for c in kw["by"].split(",") if c.strip())
    options = gate.GateOptions(
        max_increase=gate.parse_percent(kw["max_increase"], "--max-increase"),
        confidence=kw["confidence"], bootstrap=kw["bootstrap"], seed=kw["seed"], hac_lag=kw["hac_lag"],
        max_mse=kw["max_mse"], max_rmse=kw["max_rmse"], fdr=kw["fdr"], min_n=kw["min_n"],
        max_unpaired=gate.parse_percent(kw["max_unpaired"], "--max-unpaired", high=100.0),
    )
    options.validate()
    import duckdb
    import pyarrow as pa

    from msewatch.errors import MsewatchError

    stored = None
    described: dict[str, Any] = {"kind": "file", "path": baseline}
    engine = None
    kinds = {"candidate": "file", "baseline": "file", "labels": "file"}
    try:
        inputs: dict[str, Any] = {"candidate": candidate, "baseline": baseline, "labels": labels}
        if engine_url:
            from msewatch.engines import connect

            columns = _engine_columns(settings, columns)
            engine = connect(engine_url)
            for role, name in tables.items():
                if name:
                    inputs[role] = gate.EngineTable.of(engine, table=name, role=role)
                    kinds[role] = "table"
                elif inputs[role]:
                    inputs[role] = gate.EngineTable.of(engine, path=inputs[role], role=role)
            if tables["baseline"]:
                described = {"kind": "table", "table": baseline}
        if model_ref:
            stored = _stored_baseline(db, *gate.parse_baseline_ref(model_ref))
            data = gate.load_candidate(inputs["candidate"], inputs["labels"], columns, by=by, engine=engine)
            described = {}
        else:
            data = gate.load_pairs(inputs["candidate"], inputs["baseline"], inputs["labels"], columns, by=by,
                                   engine=engine)
    except MsewatchError:
        raise
    except Exception as exc:  # a column of a type no value can be read from; with --engine, its own errors
        if not engine_url and not isinstance(exc, duckdb.Error | pa.ArrowException):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _fail(f"cannot compare the inputs ({first}).")
    _warn_rejected(data, kinds)
    report = gate.run_gate(data, options, stored=stored, baseline=described)
    report.baseline.setdefault("candidate", candidate)
    if engine is not None:
        report.baseline["engine"] = engine.name
    for warning in report.warnings:
        click.echo(f"msewatch: warning: {warning}", err=True)
    if kw["summary_md"]:
        _write(kw["summary_md"], gate.summary_markdown(report), append=True)
    if kw["junit"]:
        _write(kw["junit"], gate.junit_xml(report))
    if kw["fmt"] == "json":
        import orjson

        click.echo(orjson.dumps(report.to_dict()).decode())
    else:
        click.echo(_render(report))
    sys.exit(PASS if report.passed else FAIL)


def _engine_settings(kw: dict[str, Any]) -> tuple[str | None, Any]:
    """--engine, else the [engine] url of --config (as `msewatch eval` takes them), and [engine]."""
    url, config_path = kw["engine_url"], kw["config_path"]
    if not config_path:
        return url, None
    from msewatch.config import load_config

    settings = load_config(config_path).engine
    url = url or settings.url or None
    if not url:
        _fail(f"{config_path}: no [engine] url; give --engine URL.")
    return url, settings


def _stored_baseline(db: str, model: str, version: str | None) -> Any:
    from msewatch.monitor.baselines import find_baseline, list_baselines
    from msewatch.store import Store

    store = Store(db, read_only=True)
    try:
        has_table = store.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'baselines'").fetchone()[0]
        if not has_table:
            found = []
        elif version is None:  # the model's most recent (an any-version one first)
            found = [b for b in [find_baseline(store.con, model)] if b is not None]
        else:  # exactly this version: a gate must not fall back to another one
            found = [b for b in list_baselines(store.con, model) if b.version == version]
    finally:
        store.close()
    if not found:
        what = f"{model}@{version}" if version else model
        _fail(f"no baseline recorded for {what} in {db}; record one with "
              f"`msewatch baseline set --db {db} --model {model}"
              + (f" --version {version}" if version else "") + " --data HOLDOUT`.")
    return found[0]


def _warn_rejected(data: Any, kinds: dict[str, str]) -> None:
    for role, reasons in data.reject_reasons.items():
        n = data.invalid[role]
        click.echo(f"msewatch: warning: {n} invalid row{'s' * (n != 1)} in the {role} {kinds[role]} "
                   f"{data.paths[role]} ({'; '.join(reasons)}).", err=True)


def _write(path: str, text: str, *, append: bool = False) -> None:
    try:
        with open(Path(path), "a" if append else "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        _fail(f"{path}: cannot write ({exc.strerror or exc}).")


def _num(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.6g}"


def _pct(v: float | None) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "+∞%" if v > 0 else "−∞%"
    return f"{v:+.2f}%"


def _render(report: Any) -> str:
    from rich.console import Console
    from rich.table import Table

    o = report.options
    d = report.to_dict()
    console = Console(width=140, record=True, file=io.StringIO(), force_terminal=False)
    verdict = "PASS" if report.passed else "FAIL"
    console.print(f"msewatch gate: {verdict}  ΔMSE {_pct(report.delta_mse_pct)}, {o.confidence:.0%} upper bound "
                  f"{_pct(report.ci[1])} (limit +{o.max_increase:g}%), {report.n} rows compared")
    metrics = Table(header_style="bold")
    for name in ("", "candidate", "baseline"):
        metrics.add_column(name, justify="right" if name else "left")
    metrics.add_row("MSE", _num(d["mse_candidate"]), _num(d["mse_baseline"]))
    metrics.add_row("RMSE", _num(d["rmse_candidate"]), _num(d["rmse_baseline"]))
    console.print(metrics)
    estimates = Table(title="ΔMSE% estimates", header_style="bold")
    for name in ("method", "ΔMSE%", "se", "lower", "upper", "verdict"):
        estimates.add_column(name, justify="left" if name in ("method", "verdict") else "right")
    dm = d["delta_method"]
    lag = f", Newey–West lag {o.hac_lag}" if o.hac_lag else ""
    estimates.add_row(f"delta method{lag}", _pct(report.delta_mse_pct), _num(dm["se_pct"]), _pct(dm["ci"][0]),
                      _pct(dm["ci"][1]), "uses" if report.method == "delta" else "")
    if d["bootstrap"]:
        bt = d["bootstrap"]
        unit = "pairs" if bt["rows_per_unit"] == 1 else f"{bt['units']} {bt['scheme']} of {bt['rows_per_unit']} rows"
        estimates.add_row(f"bootstrap, {bt['replicates']} × {unit}", _pct(report.delta_mse_pct), _num(bt["se_pct"]),
                          _pct(bt["ci"][0]), _pct(bt["ci"][1]), "uses" if report.method == "bootstrap" else "")
    console.print(estimates)
    checks = Table(title="checks", header_style="bold")
    for name in ("check", "value", "limit", "result"):
        checks.add_column(name, justify="right" if name in ("value", "limit") else "left")
    for c in report.checks:
        pct = c.name == "delta_mse" or c.name.startswith("cohort ")
        checks.add_row(c.name, _pct(c.value) if pct else _num(c.value),
                       f"≤ {c.limit:+g}%" if pct else f"≤ {_num(c.limit)}", c.status)
    console.print(checks)
    if report.cohorts:  # the value of a cohort check is its ΔMSE%, tested against the limit
        cohorts = Table(title=f"cohorts (Benjamini–Hochberg at FDR {o.fdr:g})", header_style="bold")
        for name in ("cohort", "n", "mse cand", "mse base", "ΔMSE%", "upper", "p", "result"):
            cohorts.add_column(name, justify="left" if name in ("cohort", "result") else "right")
        for c in report.cohorts:
            cohorts.add_row(c.cohort, str(c.n), _num(c.mse_candidate), _num(c.mse_baseline),
                            _pct(c.delta_mse_pct), _pct(c.ci[1]) if c.ci else "—",
                            "—" if c.p_value is None else f"{c.p_value:.3g}", c.status)
        console.print(cohorts)
    unpaired = d["unpaired"]
    if unpaired["left_out"]:
        console.print(f"left out {unpaired['left_out']} rows ({unpaired['left_out_pct']:.3g}%)")
    for reason in report.reasons:
        console.print(f"{'✗' if not report.passed else '✓'} {reason}")
    return console.export_text().rstrip("\n")
