"""The dashboard of `msewatch serve`: HTML views at /dashboard/{view}, their data at
/api/views/{view}, and the vendored scripts at /assets/{name}.

The pages and scripts hold no data and are served to anyone; the data (`/api/views/…`) needs a
token with the `read` scope when tokens are configured. The page asks for the token once and
keeps it in the tab's sessionStorage, sending it as `Authorization: Bearer …` (never in a URL,
so it stays out of logs and history).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from msewatch.errors import InputError

__all__ = ["PAGE_ROUTES", "dashboard_routes"]

PAGE_ROUTES = ("/", "/dashboard/executive", "/dashboard/oncall", "/dashboard/debug",
               "/api/views/executive", "/api/views/oncall", "/api/views/debug")
_QUERY = {"model", "version", "cohort", "cohort_value", "since", "until"}


def dashboard_routes(state: Any, authorize: Callable[[Request, str], Response | None]) -> list[Route]:
    import orjson

    from msewatch.report import ASSETS, asset, page_html
    from msewatch.views import VIEWS, Filters, compute_view, store_alerts, store_slos

    def _json(doc: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(doc), status_code=status, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    async def root(request: Request) -> Response:
        return RedirectResponse("/dashboard/executive", status_code=307)

    async def page(request: Request) -> Response:
        view = request.path_params["view"]
        if view not in VIEWS:
            return _json({"error": f"no view {view!r}"}, 404)
        return HTMLResponse(page_html(view), headers={"Cache-Control": "no-cache"})

    async def assets(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return _json({"error": "no such asset"}, 404)
        return Response(asset(name), media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})

    def live_alerts() -> list[dict[str, Any]]:
        """The monitor's active alerts, as /v1/alerts lists them."""
        watch = state.watch
        if watch is None:
            return store_alerts(state.reads.con)
        with watch.lock:
            return [a.to_dict() for a in watch.monitor.book.alerts.values() if a.state in ("pending", "firing")]

    def compute(view: str, filters: Filters) -> dict[str, Any]:
        state.settle()  # the views read the rollups: show every answered request
        reader = state.reads.reader()
        try:
            slos = store_slos(reader.con, state.config) if view != "debug" else []
            alerts = live_alerts() if view == "oncall" else []
            canary = state.config.monitor.canary if view == "oncall" else None
            return compute_view(reader.con, view, filters, slos=slos, alerts=alerts, canary=canary)
        finally:
            reader.close()

    async def data(request: Request) -> Response:
        denied = authorize(request, "read")
        if denied:
            return denied
        view = request.path_params["view"]
        if view not in VIEWS:
            return _json({"error": f"no view {view!r}"}, 404)
        if state.reads is None:
            return _json({"error": "not ready"}, 503)
        unknown = set(request.query_params) - _QUERY
        if unknown:
            return _json({"error": f"unknown query parameter {min(unknown)!r}"}, 400)
        try:
            filters = Filters.from_query(request.query_params)
            return _json(await run_in_threadpool(compute, view, filters))
        except InputError as exc:
            return _json({"error": str(exc)}, 400)

    return [
        Route("/", root, methods=["GET"]),
        Route("/dashboard/{view}", page, methods=["GET"]),
        Route("/api/views/{view}", data, methods=["GET"]),
        Route("/assets/{name}", assets, methods=["GET"]),
    ]
