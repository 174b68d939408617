"""`msewatch.toml`: the settings of the server, read and validated once at start.

Every key has a default, so `msewatch serve` runs with no file. A wrong key or value is an
`InputError` that names the key and the value. Bearer tokens come from the file (`token`, or
`token_env` naming an environment variable) or from `MSEWATCH_TOKENS`
(`scope[+scope]:token,…`, e.g. `ingest:abc,read+admin:xyz`).

    [server]
    max_body_bytes = 16777216
    max_rows_per_request = 100000
    max_pending_rows = 400000        # ingest queue bound; past it requests get 429
    max_extra_columns = 64            # segment/feature columns HTTP may add to the store
    commit_delay_ms = 5               # a commit waits this long for more requests to share it
    rollup_delay_ms = 1000            # committed rows reach the rollups and /metrics within this…
    rollup_rows = 100000              # …or once this many wait (a read that needs them waits for them)
    duckdb_threads = 0                # DuckDB's threads in the server; 0 = cores minus two, at least one

    [sink]                            # Parquet lake of accepted rows (or `serve --sink DIR`)
    dir = "/data/msewatch-lake"
    flush_seconds = 10                # rows reach the lake within this long of their commit…
    flush_rows = 1000000              # …or once this many wait

    [[tokens]]
    name = "model-servers"
    token_env = "MSEWATCH_INGEST_TOKEN"
    scopes = ["ingest"]

    [metrics]                         # Prometheus exposition at /metrics
    segments = ["region"]             # extra label names, besides model and version
    max_segment_values = 50           # per model and segment; the rest become "__other__"
    squared_error_buckets = [0.01, 0.1, 1, 10, 100]
    label_latency_buckets = [60, 600, 3600, 21600, 86400]

    [models.price]                    # per-model overrides
    squared_error_buckets = [1, 4, 16, 64]
    thresholds = [25.0]               # SLO thresholds: always bucket boundaries
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msewatch.errors import InputError
from msewatch.monitor.config import MonitorConfig, parse_monitor

__all__ = ["SCOPES", "Config", "EngineConfig", "MetricsConfig", "ModelConfig", "ServerConfig", "SinkConfig", "Token", "load_config"]

SCOPES = ("ingest", "read", "admin")
DEFAULT_SQUARED_ERROR_BUCKETS = (
    1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 1e3, 1e4, 1e5,
)
DEFAULT_LATENCY_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0)


@dataclass(frozen=True)
class Token:
    name: str
    secret: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024 * 1024
    max_rows_per_request: int = 100_000
    max_pending_rows: int = 400_000
    max_extra_columns: int = 64
    max_group_rows: int = 200_000
    commit_delay_ms: int = 5
    rollup_delay_ms: int = 1000
    rollup_rows: int = 100_000
    duckdb_threads: int = 0  # 0: cores minus two (at least one), see `engine_threads`

    def engine_threads(self) -> int:
        """DuckDB's threads in the server: the event loop, parsing and answering need about two
        cores of their own (one GIL), so DuckDB gets the rest, and on 2 cores works in the
        threads that call it (see README, "Threads", for what that was measured to do)."""
        return self.duckdb_threads or max(1, (os.cpu_count() or 1) - 2)


@dataclass(frozen=True)
class ModelConfig:
    squared_error_buckets: tuple[float, ...] | None = None
    thresholds: tuple[float, ...] = ()


@dataclass(frozen=True)
class MetricsConfig:
    segments: tuple[str, ...] = ()
    max_segment_values: int = 50
    squared_error_buckets: tuple[float, ...] = DEFAULT_SQUARED_ERROR_BUCKETS
    label_latency_buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS


@dataclass(frozen=True)
class EngineConfig:
    """`[engine]`: where `--engine` commands find the data (see msewatch.engines)."""

    url: str = ""
    predictions_table: str = "predictions"
    labels_table: str = "labels"
    lake: str = ""
    #: contract name → the table's column name (prediction_id, ts, model, version, y_pred, y_true, label_ts)
    columns: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SinkConfig:
    """`[sink]`: the Parquet lake `msewatch serve` appends to (msewatch.lake); `--sink` sets `dir`."""

    dir: str = ""
    flush_seconds: int = 10  # new rows reach the lake at most this long after their commit
    flush_rows: int = 1_000_000  # or sooner, once this many rows wait; also the rows per round


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    metrics: MetricsConfig = MetricsConfig()
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    tokens: tuple[Token, ...] = ()
    path: str | None = None
    monitor: MonitorConfig = MonitorConfig()
    engine: EngineConfig = EngineConfig()
    sink: SinkConfig = SinkConfig()

    def buckets_for(self, model: str) -> tuple[float, ...]:
        """Squared-error bucket bounds of `model`, its SLO thresholds always among them."""
        own = self.models.get(model)
        bounds = set(own.squared_error_buckets or self.metrics.squared_error_buckets) if own else set(
            self.metrics.squared_error_buckets
        )
        if own:
            bounds |= set(own.thresholds)
        bounds |= {s.threshold for s in self.monitor.slos if s.model == model and s.threshold is not None}
        return tuple(sorted(bounds))


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """The configuration in `path` (defaults when None), plus tokens from `MSEWATCH_TOKENS`."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such config file.")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{p}: not valid TOML ({exc}).") from exc
    known = {"server", "metrics", "models", "tokens", "alerting", "slos", "alerts", "notifiers", "silences", "maintenance", "canary", "engine", "sink"}
    _no_unknown(data, known, "", where)
    server = _section(data, "server", ServerConfig, where)
    metrics = _metrics(data.get("metrics", {}), where)
    models = _models(data.get("models", {}), where)
    tokens = _tokens(data.get("tokens", []), env, where) + _env_tokens(env.get("MSEWATCH_TOKENS", ""))
    monitor = parse_monitor(data, where)
    return Config(
        server=server, metrics=metrics, models=models, tokens=tokens, path=str(path) if path else None, monitor=monitor,
        engine=_engine(data.get("engine", {}), where), sink=_section(data, "sink", SinkConfig, where),
    )


def _fail(where: str, key: str, value: Any, why: str) -> InputError:
    return InputError(f"{where}: {key} = {value!r}: {why}.")


def _no_unknown(table: Mapping[str, Any], known: set[str], prefix: str, where: str) -> None:
    for key in table:
        if key not in known:
            raise InputError(f"{where}: unknown key {prefix + key!r}; known keys: {', '.join(sorted(known))}.")


def _section(data: Mapping[str, Any], name: str, cls: type, where: str) -> Any:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise _fail(where, name, table, "expected a table")
    defaults = cls()
    _no_unknown(table, set(defaults.__dataclass_fields__), f"{name}.", where)
    values = {}
    for key, value in table.items():
        expected = type(getattr(defaults, key))
        if expected is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise _fail(where, f"{name}.{key}", value, "expected a whole number ≥ 0")
        if key == "port" and value > 65535:
            raise _fail(where, f"{name}.{key}", value, "expected a port number, 0 to 65535")
        if expected is str and not isinstance(value, str):
            raise _fail(where, f"{name}.{key}", value, "expected a string")
        values[key] = value
    return cls(**values)


def _bounds(value: Any, key: str, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(where, key, value, "expected a non-empty list of numbers")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise _fail(where, key, value, "every bound must be a finite number > 0")
        out.append(float(v))
    if sorted(set(out)) != out:
        raise _fail(where, key, value, "bounds must be strictly increasing")
    return tuple(out)


def _metrics(table: Any, where: str) -> MetricsConfig:
    if not isinstance(table, dict):
        raise _fail(where, "metrics", table, "expected a table")
    _no_unknown(table, set(MetricsConfig.__dataclass_fields__), "metrics.", where)
    kw: dict[str, Any] = {}
    if "segments" in table:
        segs = table["segments"]
        if not isinstance(segs, list) or not all(isinstance(s, str) and s.isidentifier() for s in segs):
            raise _fail(where, "metrics.segments", segs, "expected a list of column names (letters, digits, _)")
        reserved = {"model", "version", "le", "quantile", "job", "instance"} & set(segs)
        if reserved:
            raise _fail(where, "metrics.segments", segs, f"{sorted(reserved)[0]!r} is a reserved label name")
        kw["segments"] = tuple(segs)
    if "max_segment_values" in table:
        v = table["max_segment_values"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _fail(where, "metrics.max_segment_values", v, "expected a whole number ≥ 1")
        kw["max_segment_values"] = v
    for key in ("squared_error_buckets", "label_latency_buckets"):
        if key in table:
            kw[key] = _bounds(table[key], f"metrics.{key}", where)
    return MetricsConfig(**kw)


def _engine(table: Any, where: str) -> EngineConfig:
    from msewatch.schema import ColumnMap

    if not isinstance(table, dict):
        raise _fail(where, "engine", table, "expected a table")
    scalars = {k: v for k, v in table.items() if k != "columns"}
    base = _section({"engine": scalars}, "engine", EngineConfig, where)
    columns = table.get("columns", {})
    known = set(ColumnMap().source_names())
    if not isinstance(columns, dict) or not all(isinstance(v, str) and v for v in columns.values()):
        raise _fail(where, "engine.columns", columns, "expected a table of contract name = column name")
    _no_unknown(columns, known, "engine.columns.", where)
    return EngineConfig(**{**base.__dict__, "columns": dict(columns)})


def _models(table: Any, where: str) -> dict[str, ModelConfig]:
    if not isinstance(table, dict):
        raise _fail(where, "models", table, "expected a table of models")
    out = {}
    for name, spec in table.items():
        key = f"models.{name}"
        if not isinstance(spec, dict):
            raise _fail(where, key, spec, "expected a table")
        _no_unknown(spec, set(ModelConfig.__dataclass_fields__), f"{key}.", where)
        buckets = spec.get("squared_error_buckets")
        thresholds = spec.get("thresholds", [])
        if isinstance(thresholds, list) and all(isinstance(t, int | float) for t in thresholds):
            thresholds = sorted(thresholds)  # any order; anything else is reported by _bounds
        out[name] = ModelConfig(
            squared_error_buckets=_bounds(buckets, f"{key}.squared_error_buckets", where) if buckets is not None else None,
            thresholds=_bounds(thresholds, f"{key}.thresholds", where) if thresholds != [] else (),
        )
    return out


def _scopes(value: Any, key: str, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(v in SCOPES for v in value):
        raise _fail(where, key, value, f"expected a non-empty list of {', '.join(SCOPES)}")
    return frozenset(value)


def _tokens(items: Any, env: Mapping[str, str], where: str) -> tuple[Token, ...]:
    if not isinstance(items, list):
        raise _fail(where, "tokens", items, "expected an array of tables ([[tokens]])")
    out = []
    for i, item in enumerate(items):
        key = f"tokens[{i}]"
        if not isinstance(item, dict):
            raise _fail(where, key, item, "expected a table")
        _no_unknown(item, {"name", "token", "token_env", "scopes"}, f"{key}.", where)
        name = str(item.get("name", f"token{i}"))
        if "token" in item and "token_env" in item:
            raise InputError(f"{where}: {key}: give token or token_env, not both.")
        if "token_env" in item:
            secret = env.get(str(item["token_env"]), "")
            if not secret:
                raise _fail(where, f"{key}.token_env", item["token_env"], "that environment variable is empty or unset")
        else:
            secret = item.get("token", "")
        _check_secret(secret, f"{key}.token", where)
        out.append(Token(name, secret, _scopes(item.get("scopes"), f"{key}.scopes", where)))
    return tuple(out)


def _env_tokens(text: str) -> tuple[Token, ...]:
    out = []
    for i, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        scopes, sep, secret = part.partition(":")
        if not sep:
            raise InputError("MSEWATCH_TOKENS: expected scope[+scope]:token entries separated by commas.")
        _check_secret(secret, f"token {i + 1}", "MSEWATCH_TOKENS")
        out.append(Token(f"env{i + 1}", secret, _scopes(scopes.split("+"), f"token {i + 1} scopes", "MSEWATCH_TOKENS")))
    return tuple(out)


def _check_secret(secret: Any, key: str, where: str) -> None:
    if not isinstance(secret, str) or len(secret) < 16 or not secret.isprintable() or " " in secret:
        raise InputError(f"{where}: {key}: a token must be at least 16 printable characters, no spaces.")
