"""The built-in live page: handlers shared by the Faust worker's web server and a standalone server.

The page is static HTML plus ``static/dashboard.js``, a vendored Chart.js and its date adapter
(no build step at run time); it asks ``/dashboard/data`` for every panel's rows and redraws every
30 s (``?refresh=SECONDS``, 0 stops it; ``?range=6h`` sets what ``$__timeFilter`` covers and
what the time axes span). The data endpoint runs the queries of ``queries.PANELS`` in a thread,
since SQLAlchemy is synchronous and the worker's event loop must not wait on the database.

Its payload says what the page as a whole is waiting for (``state`` and one calm ``notice``):
a database that does not answer, tables not created yet, tables without rows. Those are the
first seconds of every demo, not errors; only real query errors reach a panel, in one line.

``flead_app.web`` registers these on the worker (the real path); ``make_app`` builds a small
aiohttp application with the same handlers for ``flead dashboard serve`` and the tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import html
import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from flead_app.dashboard.queries import DEFAULT_RANGE_S, PANELS, PANELS_BY_ID, DatabaseUnavailable, collect, one_line
from flead_app.io.db.store import sqlalchemy_url
from flead_app.settings import load_settings, redact_url

log = logging.getLogger(__name__)

BASE_PATH = "/dashboard"
STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {
    "chart.umd.min.js": "application/javascript",
    "chartjs-adapter-date-fns.bundle.min.js": "application/javascript",
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
}
DEFAULT_REFRESH_S = 30
MIN_REFRESH_S = 5
MAX_RANGE_S = 90 * 86400
CACHE_S = 2.0
CONNECT_TIMEOUT_S = 5

# what /dashboard/data says about the page as a whole
READY = "ready"
WAITING_FOR_ROWS = "waiting_for_rows"
WAITING_FOR_TABLES = "waiting_for_tables"
WAITING_FOR_DATABASE = "waiting_for_database"
NO_DATABASE = "no_database"
ERROR = "error"

_RANGE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_RANGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_refresh(query: Mapping[str, str]) -> int:
    """``?refresh=N`` seconds; 0 turns auto-refresh off; at least 5 s so a tab cannot hammer the database."""
    raw = query.get("refresh")
    if raw is None or raw == "":
        return DEFAULT_REFRESH_S
    try:
        value = int(raw)
    except ValueError:
        return DEFAULT_REFRESH_S
    if value <= 0:
        return 0
    return min(max(value, MIN_REFRESH_S), 86400)


def parse_range(query: Mapping[str, str]) -> int:
    """``?range=6h`` / ``90m`` / ``3600`` -> seconds, between one minute and 90 days."""
    raw = query.get("range")
    m = _RANGE.match(raw) if raw else None
    if not m:
        return DEFAULT_RANGE_S
    seconds = int(m.group(1)) * _RANGE_UNITS[m.group(2)]
    return min(max(seconds, 60), MAX_RANGE_S)


def panel_specs() -> list[dict[str, Any]]:
    """What the browser needs to draw each panel (never the SQL)."""
    return [
        {
            "id": p.id,
            "title": p.title,
            "type": p.type,
            "description": p.description,
            "columns": list(p.columns),
            "units": {c: p.unit_of(c) for c in p.columns},
            "labels": {c: p.label_of(c) for c in p.columns},
            "empty_text": p.empty_text,
            "unit": p.unit,
            "decimals": p.decimals,
            "series_column": p.series_column,
            "stacked": p.stacked,
            "bars": p.bars,
            "bucket_s": p.bucket_s,
            "width": p.width,
            "height": p.height,
        }
        for p in PANELS
    ]


def page_html(refresh_s: int = DEFAULT_REFRESH_S, range_s: int = DEFAULT_RANGE_S) -> str:
    """The page; its configuration travels as JSON in a script tag (``</`` escaped)."""
    config = {
        "panels": panel_specs(),
        "refresh_s": refresh_s,
        "range_s": range_s,
        "data_url": f"{BASE_PATH}/data?range={range_s}",
    }
    config_json = json.dumps(config, sort_keys=True).replace("</", "<\\/")
    refresh_text = f"every {refresh_s} s" if refresh_s else "off"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FLEAD live dashboard</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{BASE_PATH}/static/dashboard.css">
</head>
<body>
<header>
  <h1>FLEAD <span>federated anomaly detection</span></h1>
  <div class="meta">
    <span>range: last {html.escape(_range_label(range_s))}</span>
    <span>refresh: {html.escape(refresh_text)}</span>
    <span id="timezone"></span>
    <span id="updated">loading&hellip;</span>
  </div>
</header>
<div id="banner" hidden></div>
<main id="grid"></main>
<script id="flead-config" type="application/json">{config_json}</script>
<script src="{BASE_PATH}/static/chart.umd.min.js"></script>
<script src="{BASE_PATH}/static/chartjs-adapter-date-fns.bundle.min.js"></script>
<script src="{BASE_PATH}/static/dashboard.js"></script>
</body>
</html>
"""


def _range_label(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def static_file(name: str) -> tuple[bytes, str] | None:
    """A vendored or own asset by name; only the listed files, so no path can escape the folder."""
    ctype = STATIC_TYPES.get(name)
    if ctype is None:
        return None
    return (STATIC_DIR / name).read_bytes(), ctype


def _has_data(panel_id: str, rows: list[dict[str, Any]]) -> bool:
    """Rows that say something: a count of 0 is a row, but not yet a first row."""
    if not rows:
        return False
    if PANELS_BY_ID[panel_id].type == "stat":
        return any(v not in (0, None) for row in rows for v in row.values())
    return True


def page_state(panels: Mapping[str, Mapping[str, Any]]) -> tuple[str, str | None, list[str]]:
    """(state, calm notice or None, missing tables) of a reachable database, from every panel's result.

    Tables not there yet (a database the worker has not initialised) and tables without rows are
    the normal first seconds of a demo: the page says so once instead of per panel.
    """
    missing = sorted({r["missing_table"] for r in panels.values() if r.get("missing_table")})
    if missing:
        if all(r.get("missing_table") for r in panels.values()):
            notice = (
                "Waiting for the first rows: the database has no FLEAD tables yet "
                "(a worker creates them when it starts)."
            )
        else:
            notice = f"Waiting for the first rows: not created yet: {', '.join(missing)}."
        return WAITING_FOR_TABLES, notice, missing
    if not any(_has_data(pid, r["rows"]) for pid, r in panels.items() if not r.get("error")):
        if any(r.get("error") for r in panels.values()):
            return READY, None, []
        return WAITING_FOR_ROWS, "Waiting for the first rows: the tables exist but hold nothing yet.", []
    return READY, None, []


def jsonable(value: Any) -> Any:
    """Row values as JSON: times as ISO 8601 UTC, decimals as floats."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


class DataSource:
    """Runs every panel's query for the page; one engine per process, created on first use.

    Results are kept for two seconds, so several open tabs cost one set of queries.
    """

    def __init__(self, db_url: str | None = None, engine: Engine | None = None):
        self._db_url = db_url
        self._engine = engine
        self._cache: dict[int, tuple[float, dict[str, Any]]] = {}
        self._lock = asyncio.Lock()

    def engine(self) -> Engine | None:
        if self._engine is None:
            url = self._db_url if self._db_url is not None else load_settings().db_url
            if not url:
                return None
            log.info("dashboard reads %s", redact_url(url))
            self._engine = create_engine(
                sqlalchemy_url(url),
                pool_size=2,
                max_overflow=2,
                pool_pre_ping=True,
                # a database host that does not answer would otherwise hold every page request
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
            )
        return self._engine

    def query(self, range_s: int) -> dict[str, Any]:
        """Synchronous: the payload of ``/dashboard/data`` (see ``page_state`` for ``state`` and ``notice``)."""
        engine = self.engine()
        base = {"generated_at": jsonable(dt.datetime.now(dt.UTC)), "range_s": range_s, "missing_tables": []}
        if engine is None:
            return {
                **base,
                "state": NO_DATABASE,
                "notice": None,
                "error": "no database configured (FLEAD_DB_URL or `flead stack up`)",
                "panels": {},
            }
        try:
            results = collect(engine, range_s)
        except DatabaseUnavailable as err:  # down, restarting, not created yet: the page waits and retries
            return {
                **base,
                "state": WAITING_FOR_DATABASE,
                "notice": f"Waiting for the database ({err}). The page keeps retrying.",
                "error": None,
                "panels": {},
            }
        except Exception as err:  # noqa: BLE001 - a login refused, say: one line for the page, no traceback
            return {**base, "state": ERROR, "notice": None, "error": f"database: {one_line(err)}", "panels": {}}
        panels = {
            pid: {
                "rows": [{k: jsonable(v) for k, v in row.items()} for row in r["rows"]],
                "error": r["error"],
                "missing_table": r["missing_table"],
            }
            for pid, r in results.items()
        }
        state, notice, missing = page_state(panels)
        return {**base, "state": state, "notice": notice, "error": None, "missing_tables": missing, "panels": panels}

    async def payload(self, range_s: int) -> dict[str, Any]:
        """The same, off the event loop, shared by requests arriving within ``CACHE_S``."""
        async with self._lock:
            hit = self._cache.get(range_s)
            if hit and time.monotonic() - hit[0] < CACHE_S:
                return hit[1]
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(None, self.query, range_s)
            self._cache = {range_s: (time.monotonic(), result)}
            return result

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def make_app(source: DataSource):  # noqa: ANN201 - aiohttp imported lazily
    """A standalone aiohttp app serving the page with the same handlers as the worker."""
    from aiohttp import web

    async def page_view(request: web.Request) -> web.Response:
        q = request.query
        return web.Response(text=page_html(parse_refresh(q), parse_range(q)), content_type="text/html")

    async def data_view(request: web.Request) -> web.Response:
        body = json.dumps(await source.payload(parse_range(request.query)))
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-store"})

    async def static_view(request: web.Request) -> web.Response:
        found = static_file(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(body=found[0], content_type=found[1])

    async def root_view(request: web.Request) -> web.Response:
        raise web.HTTPFound(BASE_PATH)

    app = web.Application()
    app.router.add_get("/", root_view)
    app.router.add_get(BASE_PATH, page_view)
    app.router.add_get(BASE_PATH + "/", page_view)
    app.router.add_get(BASE_PATH + "/data", data_view)
    app.router.add_get(BASE_PATH + "/static/{name}", static_view)
    return app


def serve(host: str, port: int, db_url: str | None = None) -> None:
    """Run the standalone page until interrupted (``flead dashboard serve``)."""
    from aiohttp import web

    source = DataSource(db_url)
    print(f"FLEAD live dashboard: http://{host}:{port}{BASE_PATH}", flush=True)
    try:
        web.run_app(make_app(source), host=host, port=port, print=None)
    finally:
        source.close()
