"""The ASGI application of `msewatch serve` (Starlette), over one store.

Ingest handlers parse and check the body, queue its records for the commit thread, and answer
once those are on disk. Reads (`/v1/metrics`) run in worker threads on their own DuckDB
connection, so they never wait for a commit. The routes and their answers are described in
`openapi.py`, served at `/openapi.json`.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pyarrow as pa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from msewatch.config import Config
from msewatch.errors import InputError, MsewatchError
from msewatch.schema import Kind
from msewatch.server.bodies import BodyError, ParsedBody, parse_body
from msewatch.server.committer import Committer, Overloaded, Prepared, ShuttingDown
from msewatch.server.exposition import QualityCollector
from msewatch.server.openapi import openapi_document
from msewatch.server.pages import PAGE_ROUTES, dashboard_routes
from msewatch.server.sink import LakeSink
from msewatch.server.watch import MonitorLoop
from msewatch.store import Store

__all__ = ["create_app"]

log = logging.getLogger("msewatch.server")

RETRY_AFTER_SECONDS = 1
_PARSE_IN_THREAD_BYTES = 32 << 10  # smaller bodies parse faster than a hand-off to a thread
_SCRAPE_SETTLE = 5.0  # a scrape waits at most this long for the last commits to reach the counters
_ROUTES = ("/v1/predictions", "/v1/labels", "/v1/shadow", "/v1/metrics", "/v1/alerts", "/v1/slo", "/v1/silences", "/v1/canary",
           "/v1/flagger", "/metrics",
           "/healthz", "/readyz", "/openapi.json", *PAGE_ROUTES)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": message}, status, headers)


class _State:
    def __init__(self, db: str, config: Config) -> None:
        self.db = db
        self.config = config
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = QualityCollector(config)
        self.registry.register(self.collector)
        ProcessCollector(namespace="msewatch", registry=self.registry)
        self.request_seconds = Histogram(
            "msewatch_http_request_duration_seconds",
            "Time to answer an HTTP request, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        queue = Gauge("msewatch_ingest_queue_rows", "Rows waiting for their answer (queued or being committed).", registry=self.registry)
        queue.set_function(lambda: float(self.committer.pending_rows) if self.committer else 0.0)
        behind = Gauge("msewatch_journal_unapplied_rows",
                       "Rows answered from the journal that the store's tables do not hold yet.", registry=self.registry)
        behind.set_function(lambda: float(self.committer.unapplied_rows) if self.committer else 0.0)
        self.store: Store | None = None
        self.reads: Store | None = None  # a connection kept for handing out read cursors
        self.committer: Committer | None = None
        # bodies parse here, first come first served: as many threads as cores, so concurrent
        # requests queue in order instead of each getting a slice of the cores and the GIL
        # (8 connections: ~15% more requests/s and a lower p99 than a thread per request)
        self.parsers = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="msewatch-parse")
        self.watch: MonitorLoop | None = None

    def open(self) -> None:
        self.store = Store(self.db, threads=self.config.server.engine_threads())
        self.reads = self.store.reader()
        sink = LakeSink(self.store, self.config.sink, self.registry) if self.config.sink.dir else None
        # before the committer starts: the monitor registers its SLO thresholds in the store
        self.watch = MonitorLoop(self.store, self.config)
        self.registry.register(self.watch)
        self.committer = Committer(self.store, self.config, self.collector, sink)
        self.watch.settle = self.committer.settle
        self.watch.start()
        # what start-up made (modules, the engines' caches) lives as long as the server: out of
        # the collector's reach, a full collection no longer walks it while holding the GIL
        # (87-128 ms each, measured at start-up and under the benchmark's warm-up load)
        gc.collect()
        gc.freeze()

    def settle(self, timeout: float = 30.0) -> None:
        """Before reading rollups or counters: wait until every answered request is folded in."""
        if self.committer is not None and not self.committer.settle(timeout):
            log.warning("reading before the rollups caught up with the commits (%.0f s)", timeout)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        if self.reads is not None:
            self.reads.close()
        if self.committer is not None:
            self.committer.close()
        self.parsers.shutdown(wait=False)


def create_app(db: str, config: Config) -> Starlette:
    """The server's ASGI app over the store at `db` (opened at startup, closed at shutdown)."""
    state = _State(db, config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(state.open)
        log.info("msewatch serving %s", db)
        try:
            yield
        finally:
            log.info("draining the ingest queue")
            await run_in_threadpool(state.close)

    def authorize(request: Request, scope: str, fallback: str | None = None) -> Response | None:
        """None when the request may go on; else the 401/403 answer. `fallback` is a token
        given another way (Flagger's webhook metadata, which cannot carry headers)."""
        tokens = config.tokens
        if not tokens:
            return None
        header = request.headers.get("authorization", "")
        kind, _, given = header.partition(" ")
        if (kind.lower() != "bearer" or not given) and fallback:
            kind, given = "bearer", fallback
        if kind.lower() != "bearer" or not given:
            return _error(401, "missing bearer token (Authorization: Bearer TOKEN)", {"WWW-Authenticate": "Bearer"})
        match = None
        for token in tokens:  # every token is compared, so timing tells nothing of which matched
            if hmac.compare_digest(token.secret.encode(), given.strip().encode()):
                match = token
        if match is None:
            return _error(401, "invalid token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if not match.allows(scope):
            return _error(403, f"this token lacks the {scope!r} scope")
        return None

    async def read_body(request: Request) -> bytes | Response:
        limit = config.server.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return _error(400, "Content-Length is not a number")
            if int(length) > limit:
                return _error(413, f"body of {int(length)} bytes is larger than the limit of {limit} bytes; split it")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return _error(413, f"body is larger than the limit of {limit} bytes; split it")
            chunks.append(chunk)
        return b"".join(chunks)

    def ingest(kind: Kind) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            denied = authorize(request, "ingest")
            if denied:
                return denied
            committer = state.committer
            if committer is None or not committer.alive:
                return _error(503, "not ready", {"Retry-After": str(RETRY_AFTER_SECONDS)})
            try:
                body = await read_body(request)
            except ClientDisconnect:
                return _error(400, "client disconnected before the body was read")
            if isinstance(body, Response):
                return body
            content_type = request.headers.get("content-type", "application/json")

            def read() -> tuple[ParsedBody, pa.RecordBatch | None, list[str], Prepared | None]:
                """Parse; drop what may not be stored; prove the rows new and valid when they are."""
                parsed = parse_body(body, content_type, kind, config.server.max_rows_per_request)
                batch, drop, prepared = parsed.batch, [], None
                if batch is not None:
                    drop = committer.fields_to_drop(kind, [n for n in batch.schema.names if n != "_row"])
                    if drop:
                        batch = batch.drop_columns(drop)
                    prepared = committer.prepare(kind, batch)
                return parsed, batch, drop, prepared

            try:
                if len(body) >= _PARSE_IN_THREAD_BYTES:  # Arrow parses without the GIL: the loop serves on
                    parsed, batch, drop, prepared = await asyncio.get_running_loop().run_in_executor(state.parsers, read)
                else:
                    parsed, batch, drop, prepared = read()
            except BodyError as exc:
                return _error(exc.status, str(exc))
            rejected = [{"index": i, "error": e} for i, e in parsed.rejects]
            ignored = set(parsed.ignored_fields) | set(drop)
            accepted = duplicates = 0
            if batch is not None:
                try:
                    future = committer.submit(kind, batch, parsed.count, prepared)
                except Overloaded:
                    return _error(429, "ingest queue is full; retry later", {"Retry-After": str(RETRY_AFTER_SECONDS)})
                except ShuttingDown:
                    return _error(503, "shutting down", {"Retry-After": str(RETRY_AFTER_SECONDS)})
                try:
                    result = await asyncio.wrap_future(future)
                except MsewatchError as exc:
                    return _error(400, str(exc))
                except Exception as exc:
                    log.error("commit failed: %s", exc)
                    return _error(503, "the store could not commit this request; nothing of it was stored", {"Retry-After": str(RETRY_AFTER_SECONDS)})
                accepted, duplicates = result.accepted, result.duplicates
                rejected += [{"index": r.row, "error": r.error} for r in result.rejects]
                rejected.sort(key=lambda r: r["index"])
            if parsed.rejects:  # counted once answered: a body refused with 429/503 comes again
                state.collector.observe_ingest(kind, 0, 0, [e for _, e in parsed.rejects])
            answer: dict[str, Any] = {"accepted": accepted, "duplicates": duplicates, "rejected": rejected}
            if ignored:
                answer["ignored_fields"] = sorted(ignored)
            return _json(answer)

        return handler

    async def metrics_v1(request: Request) -> Response:
        denied = authorize(request, "read")
        if denied:
            return denied
        if state.reads is None:
            return _error(503, "not ready")
        q = request.query_params
        unknown = set(q) - {"model", "version", "window", "rolling", "step", "by", "since", "until", "huber_delta"}
        if unknown:
            return _error(400, f"unknown query parameter {sorted(unknown)[0]!r}")
        try:
            return await run_in_threadpool(_evaluate_applied, state, q)
        except InputError as exc:
            return _error(400, _as_parameters(str(exc)))

    async def alerts_v1(request: Request) -> Response:
        denied = authorize(request, "read")
        if denied:
            return denied
        if state.watch is None:
            return _error(503, "not ready")
        wanted = request.query_params.get("state", "active")
        keep = {"active": ("pending", "firing"), "all": ("pending", "firing", "resolved")}.get(wanted, (wanted,))
        if wanted not in ("active", "all", "pending", "firing", "resolved"):
            return _error(400, "state must be one of active, all, pending, firing, resolved")
        return _json({"alerts": await run_in_threadpool(_alerts, state.watch, keep)})

    async def slo_v1(request: Request) -> Response:
        denied = authorize(request, "read")
        if denied:
            return denied
        if state.watch is None:
            return _error(503, "not ready")
        return _json({"slos": await run_in_threadpool(_slos, state.watch)})

    async def silences_v1(request: Request) -> Response:
        if request.method == "GET":
            denied = authorize(request, "read")
            if denied:
                return denied
        else:
            denied = authorize(request, "admin")
            if denied:
                return denied
        if state.watch is None:
            return _error(503, "not ready")
        if request.method == "GET":
            return _json({"silences": await run_in_threadpool(_silences, state.watch)})
        body = await read_body(request)
        if isinstance(body, Response):
            return body
        try:
            created = await run_in_threadpool(_add_silence, state.watch, body)
        except InputError as exc:
            return _error(400, str(exc))
        return _json(created, 201)

    async def silence_v1(request: Request) -> Response:
        denied = authorize(request, "admin")
        if denied:
            return denied
        if state.watch is None:
            return _error(503, "not ready")
        try:
            silence_id = int(request.path_params["silence_id"])
        except ValueError:
            return _error(404, "no such silence")
        if not await run_in_threadpool(_expire_silence, state.watch, silence_id):
            return _error(404, f"no silence with id {silence_id}")
        return _json({"id": silence_id, "expired": True})

    async def canary_v1(request: Request) -> Response:
        denied = authorize(request, "read")
        if denied:
            return denied
        if state.reads is None:
            return _error(503, "not ready")
        q = request.query_params
        unknown = set(q) - {"model", "canary", "control", "mode", "since", "until"}
        if unknown:
            return _error(400, f"unknown query parameter {sorted(unknown)[0]!r}")
        missing = [k for k in ("model", "canary", "control") if not q.get(k)]
        if missing:
            return _error(400, f"missing query parameter {missing[0]!r} (model, canary and control are required)")
        try:
            answer = await run_in_threadpool(_canary, state, dict(q))
        except InputError as exc:
            return _error(400, str(exc))
        return _json(answer)

    async def flagger_v1(request: Request) -> Response:
        # Flagger's webhooks carry no headers: the token may come in metadata.token instead,
        # so the (size-limited) body is read before the token is checked
        body = await read_body(request)
        if isinstance(body, Response):
            return body
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        given = meta.get("token") if isinstance(meta, dict) and isinstance(meta.get("token"), str) else None
        denied = authorize(request, "read", given)
        if denied:
            return denied
        if state.reads is None:
            return _error(503, "not ready")
        if doc is None:
            return _error(400, "the body must be Flagger's webhook JSON")
        if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) and meta.get(k) for k in ("model", "canary", "control")):
            return _error(400, "metadata must give model, canary and control (strings)")
        params = {k: meta[k] for k in ("model", "canary", "control", "mode", "since", "until") if isinstance(meta.get(k), str)}
        try:
            answer = await run_in_threadpool(_canary, state, params)
        except InputError as exc:
            return _error(400, str(exc))
        # Flagger counts a non-2xx answer as a failed check (and rolls back after `threshold`);
        # metadata require = "pass" makes anything but pass fail (a confirm-promotion gate)
        needed = meta.get("require") == "pass"
        ok_verdict = answer["verdict"] == "pass" if needed else answer["verdict"] != "fail"
        return _json(answer, 200 if ok_verdict else 412)

    async def prometheus(request: Request) -> Response:
        denied = authorize(request, "read")
        if denied:
            return denied
        await run_in_threadpool(state.settle, _SCRAPE_SETTLE)  # the counters move at the rollup step
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.committer is not None and state.committer.alive:
            return _json({"status": "ready"})
        return _error(503, "not ready")

    async def openapi(request: Request) -> Response:
        return _json(openapi_document())

    routes = [
        Route("/v1/predictions", ingest("predictions"), methods=["POST"]),
        Route("/v1/labels", ingest("labels"), methods=["POST"]),
        Route("/v1/shadow", ingest("shadow"), methods=["POST"]),  # never counted in the metrics
        Route("/v1/metrics", metrics_v1, methods=["GET"]),
        Route("/v1/alerts", alerts_v1, methods=["GET"]),
        Route("/v1/slo", slo_v1, methods=["GET"]),
        Route("/v1/canary", canary_v1, methods=["GET"]),
        Route("/v1/flagger", flagger_v1, methods=["POST"]),
        Route("/v1/silences", silences_v1, methods=["GET", "POST"]),
        Route("/v1/silences/{silence_id}", silence_v1, methods=["DELETE"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    routes += dashboard_routes(state, authorize)  # the dashboard: /, /dashboard/…, /api/views/…, /assets/…
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
        return _error(500, "internal error; the server log has the details")

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: internal_error})
    app.state.msewatch = state
    return _Timed(app, state)


class _Timed:
    """ASGI wrapper: request latency by route into the Prometheus registry."""

    def __init__(self, app: Starlette, state: _State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            route = path if path in _ROUTES else "other"
            self.state.request_seconds.labels(route, scope.get("method", ""), str(status["code"])).observe(
                time.perf_counter() - started
            )


def _as_parameters(message: str) -> str:
    """An evaluation error in HTTP terms: `--huber-delta` becomes the parameter `huber_delta`."""
    return re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), message)


def _evaluate_applied(state: _State, q: Any) -> Response:
    """`_evaluate` once the tables hold every answered request (journal records apply in ms)."""
    if state.committer is not None and not state.committer.applied(_SCRAPE_SETTLE):
        log.warning("reading before the journal was applied (%.0f s)", _SCRAPE_SETTLE)
    assert state.reads is not None
    return _evaluate(state.reads, q)


def _evaluate(store: Store, q: Any) -> Response:
    from msewatch.evaluate import EvalSpec, evaluate
    from msewatch.output import render
    from msewatch.sources import from_store

    try:
        delta = float(q.get("huber_delta", "1.0"))
    except ValueError:
        raise InputError(f"huber_delta must be a number; got {q.get('huber_delta')!r}.") from None
    spec = EvalSpec.from_options(
        window=q.get("window"), rolling=q.get("rolling"), step=q.get("step"), by=q.get("by"),
        since=q.get("since"), until=q.get("until"), model=q.get("model"), version=q.get("version"),
        huber_delta=delta, prefix="",
    )
    reader = store.reader()
    try:
        source = from_store(reader)
        result = evaluate(source.engine, source.predictions, source.labels, spec)
    finally:
        reader.close()
    text = render(result.rows, spec.output_columns(result.rows), "json")
    return Response(text, media_type="application/json")


def _alerts(watch: MonitorLoop, keep: tuple[str, ...]) -> list[dict[str, Any]]:
    import datetime as dt

    with watch.lock:
        now = dt.datetime.now(dt.timezone.utc)
        silences = watch.monitor.silences(now)
        return [
            a.to_dict() | {"muted_by": watch.monitor.muted_by(a, now, silences)}
            for a in watch.monitor.book.alerts.values() if a.state in keep
        ]


def _slos(watch: MonitorLoop) -> list[dict[str, Any]]:
    import datetime as dt

    with watch.lock:
        return [s.to_dict() for s in watch.monitor.slo_statuses(dt.datetime.now(dt.timezone.utc))]


def _silences(watch: MonitorLoop) -> list[dict[str, Any]]:
    from msewatch.monitor.engine import list_silences

    with watch.lock:
        return list_silences(watch.cursor.con)


def _add_silence(watch: MonitorLoop, body: bytes) -> dict[str, Any]:
    import datetime as dt

    from msewatch.monitor.engine import add_silence
    from msewatch.units import parse_duration, parse_instant

    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InputError("the body must be a JSON object") from None
    if not isinstance(doc, dict):
        raise InputError("the body must be a JSON object")
    unknown = set(doc) - {"matchers", "starts", "ends", "duration", "comment"}
    if unknown:
        raise InputError(f"unknown field {sorted(unknown)[0]!r}")
    matchers = doc.get("matchers")
    if (not isinstance(matchers, dict) or not matchers
            or not all(isinstance(k, str) and k.isidentifier() and isinstance(v, str) for k, v in matchers.items())):
        raise InputError("matchers must be a non-empty object of label names to string values")
    comment = doc.get("comment", "")
    if not isinstance(comment, str) or len(comment) > 1024:
        raise InputError("comment must be a string of at most 1024 characters")
    starts = parse_instant(str(doc["starts"]), option="starts") if "starts" in doc else dt.datetime.now(dt.timezone.utc)
    if ("ends" in doc) == ("duration" in doc):
        raise InputError("give ends or duration (one of them)")
    if "ends" in doc:
        ends = parse_instant(str(doc["ends"]), option="ends")
    else:
        ends = starts + dt.timedelta(seconds=parse_duration(str(doc["duration"]), option="duration"))
    if ends <= starts:
        raise InputError("the silence must end after it starts")
    with watch.lock:
        silence_id = add_silence(watch.cursor.con, matchers, starts, ends, comment=comment, created_by="api")
    return {"id": silence_id, "matchers": matchers, "starts": starts.isoformat(), "ends": ends.isoformat(),
            "comment": comment}


def _expire_silence(watch: MonitorLoop, silence_id: int) -> bool:
    from msewatch.monitor.engine import expire_silence

    with watch.lock:
        return expire_silence(watch.cursor.con, silence_id)


def _canary(state: _State, q: dict[str, str]) -> dict[str, Any]:
    from msewatch.monitor.canary import judge_canary, run_rollback
    from msewatch.units import parse_instant

    config = state.config.monitor.canary
    assert state.reads is not None
    state.settle()
    reader = state.reads.reader()
    try:
        report = judge_canary(
            reader.con, q["model"], q["canary"], q["control"], mode=q.get("mode") or "split",
            since=parse_instant(q["since"], option="since") if q.get("since") else None,
            until=parse_instant(q["until"], option="until") if q.get("until") else None, config=config,
        )
        if report.verdict == "fail" and state.watch is not None:
            with state.watch.lock:
                report.rollback = run_rollback(state.watch.cursor.con, report, config)
    finally:
        reader.close()
    return report.to_dict()
