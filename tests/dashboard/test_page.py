"""The live page's handlers without a browser: query parameters, HTML, assets, JSON values."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import re

import pytest

from flead_app.dashboard import page
from flead_app.dashboard.queries import DEFAULT_RANGE_S, PANELS


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(None, 30), ("", 30), ("10", 10), ("0", 0), ("-3", 0), ("1", 5), ("abc", 30), ("999999", 86400)],
)
def test_refresh_parameter(raw, seconds):
    assert page.parse_refresh({} if raw is None else {"refresh": raw}) == seconds


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (None, DEFAULT_RANGE_S),
        ("6h", 21600),
        ("90m", 5400),
        ("3600", 3600),
        ("2d", 172800),
        ("10s", 60),
        ("1y", DEFAULT_RANGE_S),
        ("400d", 90 * 86400),
    ],
)
def test_range_parameter(raw, seconds):
    assert page.parse_range({} if raw is None else {"range": raw}) == seconds


def test_page_html_carries_every_panel_and_no_sql():
    html = page.page_html(15, 3600)
    m = re.search(r'<script id="flead-config" type="application/json">(.*?)</script>', html, re.S)
    config = json.loads(m.group(1))
    assert [p["id"] for p in config["panels"]] == [p.id for p in PANELS]
    assert config["refresh_s"] == 15 and config["data_url"] == "/dashboard/data?range=3600"
    assert "SELECT" not in m.group(1)
    assert "refresh: every 15 s" in html and "range: last 1h" in html
    assert "refresh: off" in page.page_html(0)


def test_config_cannot_close_its_script_tag(monkeypatch):
    specs = page.panel_specs()
    specs[0]["title"] = "</script><script>alert(1)</script>"
    monkeypatch.setattr(page, "panel_specs", lambda: specs)
    html = page.page_html()
    assert "</script><script>alert(1)" not in html
    assert html.count("</script>") == 4  # config, chart.js, its date adapter, dashboard.js


def test_static_files_are_a_fixed_list():
    body, ctype = page.static_file("chart.umd.min.js")
    assert body.startswith(b"/*!\n * Chart.js v4.6.1") and ctype == "application/javascript"
    body, ctype = page.static_file("chartjs-adapter-date-fns.bundle.min.js")
    assert body.startswith(b"/*!\n * chartjs-adapter-date-fns v3.0.0") and ctype == "application/javascript"
    assert page.static_file("dashboard.js")[1] == "application/javascript"
    assert page.static_file("dashboard.css")[1] == "text/css"
    for name in ("../page.py", "LICENSE.chart.js.md", "VENDORED.md", "", "/etc/passwd"):
        assert page.static_file(name) is None
    assert (page.STATIC_DIR / "LICENSE.chart.js.md").read_text().startswith("The MIT License")
    assert (page.STATIC_DIR / "LICENSE.chartjs-adapter-date-fns.md").read_text().startswith("The MIT License")
    assert "Sasha Koss" in (page.STATIC_DIR / "LICENSE.date-fns.md").read_text()


def test_vendored_files_match_the_checksums_in_vendored_md():
    import hashlib

    notes = (page.STATIC_DIR / "VENDORED.md").read_text()
    vendored = [name for name in page.STATIC_TYPES if name not in ("dashboard.js", "dashboard.css")]
    assert vendored == ["chart.umd.min.js", "chartjs-adapter-date-fns.bundle.min.js"]
    for name in vendored:
        digest = hashlib.sha256((page.STATIC_DIR / name).read_bytes()).hexdigest()
        assert f"`{name}`" in notes and digest in notes, name


def test_the_adapter_loads_after_chart_js_and_before_the_page():
    html = page.page_html()
    order = [html.index(f"/dashboard/static/{name}") for name in page.STATIC_TYPES if name.endswith(".js")]
    assert order == sorted(order)


def test_json_values():
    t = dt.datetime(2025, 11, 7, 15, 22, 31, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert page.jsonable(t) == "2025-11-07T14:22:31Z"
    assert page.jsonable(decimal.Decimal("1.5")) == 1.5
    assert page.jsonable(float("nan")) is None
    assert page.jsonable("x") == "x" and page.jsonable(3) == 3


def test_without_a_database_the_data_endpoint_says_so():
    source = page.DataSource(db_url="")
    payload = asyncio.run(source.payload(3600))
    assert payload["error"].startswith("no database configured") and payload["panels"] == {}
    assert payload["range_s"] == 3600 and payload["state"] == page.NO_DATABASE


def test_a_database_that_does_not_answer_is_waited_for_calmly():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = page.DataSource(db_url=f"postgresql://flead:hunter2@127.0.0.1:{port}/flead")
    try:
        payload = source.query(3600)
    finally:
        source.close()
    assert payload["state"] == page.WAITING_FOR_DATABASE and payload["error"] is None
    assert payload["notice"].startswith("Waiting for the database (") and "hunter2" not in payload["notice"]
    assert "\n" not in payload["notice"] and payload["panels"] == {}


def _result(rows=(), error=None, missing=None):
    return {"rows": list(rows), "error": error, "missing_table": missing}


def test_page_state_of_a_database_without_tables_then_empty_then_with_rows():
    ids = [p.id for p in PANELS]
    no_tables = {pid: _result(missing="local_models") for pid in ids}
    state, notice, missing = page.page_state(no_tables)
    assert state == page.WAITING_FOR_TABLES and missing == ["local_models"]
    assert notice == (
        "Waiting for the first rows: the database has no FLEAD tables yet (a worker creates them when it starts)."
    )
    some = {**{pid: _result() for pid in ids}, "broker_analytics": _result(missing="stream_analytics")}
    assert page.page_state(some)[:2] == (
        page.WAITING_FOR_TABLES,
        "Waiting for the first rows: not created yet: stream_analytics.",
    )
    empty = {pid: _result([{"n": 0}] if pid == "total_local_models" else []) for pid in ids}
    assert page.page_state(empty) == (
        page.WAITING_FOR_ROWS,
        "Waiting for the first rows: the tables exist but hold nothing yet.",
        [],
    )
    first = {**empty, "total_local_models": _result([{"local_models": 1}])}
    assert page.page_state(first) == (page.READY, None, [])
    broken = {**empty, "top_devices": _result(error="UndefinedColumn: column x does not exist")}
    assert page.page_state(broken) == (page.READY, None, [])  # the panel shows its error; no notice hides it


def test_standalone_app_routes():
    from aiohttp.test_utils import TestClient, TestServer

    async def run() -> None:
        async with TestClient(TestServer(page.make_app(page.DataSource(db_url="")))) as client:
            for path in ("/dashboard", "/dashboard/"):
                r = await client.get(path)
                assert r.status == 200 and "FLEAD live dashboard" in await r.text()
            r = await client.get("/", allow_redirects=False)
            assert r.status == 302 and r.headers["Location"] == "/dashboard"
            r = await client.get("/dashboard/data?range=1h")
            data = await r.json()
            assert r.status == 200 and data["range_s"] == 3600 and data["error"]
            assert (await client.get("/dashboard/static/dashboard.css")).status == 200
            assert (await client.get("/dashboard/static/VENDORED.md")).status == 404

    asyncio.run(run())
