"""The live page in headless Chromium, served by ``flead dashboard serve`` over a real database.

Checks what a person would: every panel drawn with data (or "no data yet" on an empty
database), the stat values right, time axes that span the chosen range with increasing ticks
at the right local times and bars at their own minute, auto-refresh redrawing, and no console
error, uncaught exception or failed load. The browser runs in Asia/Kolkata (UTC+05:30): a tick
placed in UTC, or in whole hours of UTC, would read wrong there. Screenshots go to ./artifacts/
(kept by CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine

from flead_app.dashboard.queries import DEFAULT_RANGE_S, PANELS, PANELS_BY_ID, run_all_queries
from flead_app.io.db.store import sqlalchemy_url

from .cdp import Browser

pytestmark = [pytest.mark.integration, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
COUNT_STATS = {"total_local_models", "global_models", "active_devices"}
TZ = "Asia/Kolkata"
TIME_PANELS = [p for p in PANELS if p.type == "timeseries"]

PANEL_STATES = """JSON.stringify(Array.from(document.querySelectorAll('.panel')).map(p => ({
  id: p.dataset.panel, state: p.dataset.state, rows: Number(p.dataset.rows),
  text: p.innerText, canvas: !!p.querySelector('canvas'),
})))"""

# each time axis as Chart.js holds it, and every bar or point with the pixel it was drawn at
AXES = """JSON.stringify(Array.from(document.querySelectorAll('.panel-timeseries canvas')).map(c => {
  const ch = Chart.getChart(c), x = ch.scales.x;
  return {
    panel: c.closest('.panel').dataset.panel, type: x.type, min: x.min, max: x.max, left: x.left, right: x.right,
    offsets: [x.options.offset, x.options.grid.offset],
    ticks: x.ticks.map((t, i) => ({value: t.value, label: t.label, major: !!t.major, px: x.getPixelForTick(i)})),
    marks: ch.data.datasets.flatMap((ds, i) => ch.getDatasetMeta(i).data.map((el, j) =>
      ({t: ds.data[j].x, y: ds.data[j].y, px: el.x, width: el.width || 0}))),
  };
}))"""

PANEL_STATES = """JSON.stringify(Array.from(document.querySelectorAll('.panel')).map(p => ({
  id: p.dataset.panel, state: p.dataset.state, rows: Number(p.dataset.rows),
  text: p.innerText, canvas: !!p.querySelector('canvas'),
})))"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard_server(db_url: str):
    """``flead dashboard serve`` in a child process; yields its base URL once it answers."""
    port = free_port()
    env = {**os.environ, "FLEAD_DB_URL": db_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flead_app.cli", "dashboard", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/dashboard/data", timeout=5) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise RuntimeError(f"dashboard server did not start:\n{out}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def start_browser() -> Browser:
    browser = await Browser().start()
    await browser.set_timezone(TZ)
    return browser


async def load(browser: Browser, url: str, min_updates: int = 1) -> list[dict]:
    await browser.navigate(url)
    await browser.wait_for(f"Number(document.body && document.body.dataset.updates || 0) >= {min_updates}", 60)
    return json.loads(await browser.evaluate(PANEL_STATES))


def local(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(TZ))


def check_time_axis(axis: dict, now_ms: float, range_s: int) -> None:
    """The x axis spans exactly now - range .. now; its ticks increase, lie inside and read the local time."""
    name = axis["panel"]
    assert axis["type"] == "time", name
    assert axis["offsets"] == [False, False], name  # ticks, grid lines and data on the same time scale
    assert axis["max"] == now_ms and axis["min"] == now_ms - range_s * 1000, name
    ticks = axis["ticks"]
    assert len(ticks) >= 3, (name, ticks)
    values = [t["value"] for t in ticks]
    assert values == sorted(set(values)), (name, values)
    assert all(axis["min"] <= v <= axis["max"] for v in values), (name, values)
    pixels = [t["px"] for t in ticks]
    assert pixels == sorted(pixels) and axis["left"] - 0.5 <= pixels[0] and pixels[-1] <= axis["right"] + 0.5
    read = []
    for t in ticks:
        at = local(t["value"])
        assert at.second == 0 and at.microsecond == 0, (name, t)  # round local minutes
        if t["major"]:  # local midnight: the date
            assert (at.hour, at.minute) == (0, 0) and t["label"] == f"{at:%b} {at.day}", (name, t)
            read.append(at.replace(hour=0, minute=0))
        else:  # the local time of day, as a person reads it there
            assert t["label"] == f"{at:%H:%M}", (name, t, at)
            hour, minute = map(int, t["label"].split(":"))
            read.append(at.replace(hour=hour, minute=minute))
    assert read == sorted(set(read)), (name, [t["label"] for t in ticks])  # the labels themselves increase


def check_marks_at_their_time(axis: dict, rows: list[dict], bucket_s: int | None) -> None:
    """Every bar or point is drawn where its own time is; a bar covers its bucket (the rows' minute)."""
    name = axis["panel"]
    scale = (axis["right"] - axis["left"]) / (axis["max"] - axis["min"])
    assert axis["marks"], name
    for m in axis["marks"]:
        assert axis["min"] <= m["t"] <= axis["max"], (name, m)
        assert abs(m["px"] - (axis["left"] + (m["t"] - axis["min"]) * scale)) < 1.0, (name, m)
    times = {row["time"].timestamp() * 1000 for row in rows}
    if bucket_s:
        starts = {m["t"] - bucket_s * 500 for m in axis["marks"]}
        assert starts == times, name  # each bar at the middle of its own bucket, one bar per bucket and series
        for m in axis["marks"]:
            assert bucket_s * 1000 * scale - 1.5 <= m["width"] <= bucket_s * 1000 * scale + 0.5, (name, m)
    else:
        assert {m["t"] for m in axis["marks"]} == times, name


async def check_axes(browser: Browser, db_url: str, range_s: int, expect_marks: set[str]) -> list[dict]:
    axes = json.loads(await browser.evaluate(AXES))
    now_ms = await browser.evaluate("Number(document.body.dataset.now)")
    engine = create_engine(sqlalchemy_url(db_url))
    try:
        rows = run_all_queries(engine, range_s)
    finally:
        engine.dispose()
    assert {a["panel"] for a in axes} == {p.id for p in TIME_PANELS if rows[p.id]}
    for axis in axes:
        check_time_axis(axis, now_ms, range_s)
        if axis["panel"] in expect_marks:
            check_marks_at_their_time(axis, rows[axis["panel"]], PANELS_BY_ID[axis["panel"]].bucket_s)
    return axes


def test_page_with_data(sample_db):
    url, expected = sample_db

    async def drive() -> None:
        browser = await start_browser()
        try:
            with dashboard_server(url) as base:
                panels = await load(browser, base + "/dashboard")
                by_id = {p["id"]: p for p in panels}
                assert list(by_id) == [p.id for p in PANELS]
                for spec in PANELS:
                    got = by_id[spec.id]
                    assert got["state"] == "data", f"{spec.id}: {got}"
                    assert got["rows"] > 0
                    if spec.type in ("timeseries", "barchart"):
                        assert got["canvas"], f"{spec.id} drew no chart"
                    assert "no data yet" not in got["text"], spec.id
                assert f"{expected['local_models']:,}" in by_id["total_local_models"]["text"]
                assert str(expected["global_models"]) in by_id["global_models"]["text"]
                assert str(expected["active_devices"]) in by_id["active_devices"]["text"]
                assert f"{expected['latest_accuracy'] * 100:.1f}%" in by_id["latest_global_accuracy"]["text"]
                assert str(expected["global_models"]) in by_id["recent_federated_models"]["text"]
                assert await browser.evaluate("document.getElementById('banner').hidden") is True

                # time axes: exactly the last 6 hours, round local ticks, every bar and point at its time
                axes = await check_axes(browser, url, DEFAULT_RANGE_S, {p.id for p in TIME_PANELS})
                hourly = {a["panel"]: [t["label"] for t in a["ticks"]] for a in axes}
                assert all(all(label.endswith(":00") for label in labels) for labels in hourly.values()), hourly
                await browser.screenshot(ARTIFACTS / "dashboard.png")

                # an hour, and two days (ticks cross local midnight: the date, then the hours again)
                await load(browser, base + "/dashboard?range=1h")
                await check_axes(browser, url, 3600, {p.id for p in TIME_PANELS})
                await browser.screenshot(ARTIFACTS / "dashboard-1h.png")
                await load(browser, base + "/dashboard?range=2d")
                axes = await check_axes(browser, url, 2 * 86400, set())
                assert all(sum(t["major"] for t in a["ticks"]) in (1, 2) for a in axes), axes

                # auto-refresh: a short period from the query string, redrawn without errors
                await load(browser, base + "/dashboard?refresh=5", min_updates=2)
                assert "refresh: every 5 s" in await browser.evaluate("document.body.innerText")
                assert browser.errors == [], browser.errors
        finally:
            await browser.close()

    asyncio.run(drive())


def test_page_on_an_empty_database_says_no_data_yet(empty_db):
    async def drive() -> None:
        browser = await start_browser()
        try:
            with dashboard_server(empty_db) as base:
                panels = await load(browser, base + "/dashboard/")
                for p in panels:
                    if p["id"] in COUNT_STATS:
                        assert p["state"] == "data" and p["text"].strip().endswith("0"), p
                    else:
                        assert p["state"] == "empty", p
                        assert "no data yet" in p["text"], p
                await browser.screenshot(ARTIFACTS / "dashboard-empty.png")
                assert browser.errors == [], browser.errors
        finally:
            await browser.close()

    asyncio.run(drive())


def test_page_without_a_database_shows_a_banner_not_an_error():
    """The database down (nothing listens on the port): the page says so and keeps retrying."""
    dead = f"postgresql://nobody:nothing@127.0.0.1:{free_port()}/none"

    async def drive() -> None:
        browser = await start_browser()
        try:
            with dashboard_server(dead) as base:
                await load(browser, base + "/dashboard")
                banner = await browser.evaluate("document.getElementById('banner').innerText")
                assert "database unavailable" in banner
                states = {p["state"] for p in await load(browser, base + "/dashboard")}
                assert states == {"empty"}
                assert browser.errors == [], browser.errors
        finally:
            await browser.close()

    asyncio.run(drive())
