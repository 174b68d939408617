"""HTML of the dashboard: the server's page shells and the self-contained `msewatch report` file.

Both draw with the same script (assets/dashboard.js) and the vendored Vega and Vega-Lite
(assets/README.md): the pages load them from `/assets/…`, the report inlines them, with every
view's data, so it opens offline and has no external reference.
"""

from __future__ import annotations

import datetime as dt
import html
from functools import cache
from importlib import resources
from typing import Any

from msewatch.views import VIEWS, dumps

__all__ = ["ASSETS", "TITLES", "asset", "page_html", "report_html"]

ASSETS = {"vega.min.js": "text/javascript", "vega-lite.min.js": "text/javascript", "dashboard.js": "text/javascript",
          "dashboard.css": "text/css"}
TITLES = {"executive": "Executive", "oncall": "On-call", "debug": "Debug"}


@cache
def asset(name: str) -> bytes:
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files("msewatch").joinpath("assets", name).read_bytes()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("msewatch")
    except Exception:
        return "0"


def page_html(view: str) -> str:
    """The shell of one dashboard view: filters, and a script that fetches and draws the data."""
    v = html.escape(_version())
    nav = "".join(f'<a href="{name}" class="{"current" if name == view else ""}">{TITLES[name]}</a>' for name in VIEWS)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>msewatch · {TITLES[view]}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="../assets/dashboard.css?v={v}">
<script src="../assets/vega.min.js?v={v}"></script>
<script src="../assets/vega-lite.min.js?v={v}"></script>
<script src="../assets/dashboard.js?v={v}"></script>
</head><body>
<header><h1>msewatch</h1><nav>{nav}</nav><span id="data-until" class="note"></span></header>
<form id="filters" method="get">
<label>model<select name="model"></select></label>
<label>version<select name="version"></select></label>
<label>cohort column<select name="cohort"></select></label>
<label>cohort value<input name="cohort_value" placeholder="all"></label>
<label>since (UTC)<input name="since" placeholder="2026-10-01T00:00Z"></label>
<label>until (UTC)<input name="until" placeholder="latest data"></label>
<button type="submit">Apply</button>
<label>read token<input id="token" type="password" autocomplete="off" placeholder="if the server needs one"></label>
</form>
<div id="status"></div>
<main id="view" data-view="{view}"></main>
<script>msewatch.loadPage({dumps(view)}).catch(function (e) {{
  var s = document.getElementById("status"); s.textContent = "Could not draw this view: " + e; s.className = "error";
  document.getElementById("view").dataset.ready = "error"; }});</script>
</body></html>
"""


def report_html(views: dict[str, dict[str, Any]], *, db: str, model: str | None, generated: dt.datetime | None = None) -> str:
    """One HTML file with the scripts, styles and every view's data inlined."""
    generated = generated or dt.datetime.now(dt.timezone.utc)
    first = next(iter(views.values()), {})
    f = first.get("filters", {})
    span = f"{f.get('since') or 'start'} → {f.get('until') or first.get('data_until') or 'latest'}"
    scripts = "".join(f"<script>\n{asset(n).decode()}\n</script>\n" for n in ("vega.min.js", "vega-lite.min.js", "dashboard.js"))
    sections = "".join(f'<section class="view"><h2>{TITLES[name]}</h2><div id="view-{name}"></div></section>' for name in views)
    title = f"msewatch report · {html.escape(model or first.get('model') or '')}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>{asset("dashboard.css").decode()}</style>
{scripts}</head><body>
<header><h1>{title}</h1><span>{html.escape(span)}</span></header>
<p class="meta">Store {html.escape(db)} · generated {generated.strftime("%Y-%m-%d %H:%M:%SZ")} by msewatch {html.escape(_version())}.
Charts drawn with Vega and Vega-Lite (BSD-3-Clause), inlined.</p>
{sections}
<script type="application/json" id="report-data">{dumps({"views": views})}</script>
<script>msewatch.loadReport().catch(function (e) {{ document.body.insertAdjacentHTML("afterbegin",
  '<p class="error">Could not draw the report: ' + String(e).replace(/</g, "&lt;") + "</p>"); }});</script>
</body></html>
"""
