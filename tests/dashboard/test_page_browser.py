"""The live page in headless Chromium, served by ``flead dashboard serve`` over a real database.

Checks what a person would: every panel drawn with data (or "no data yet" on an empty
database), the headline and stat values right, time axes that span the chosen range with
increasing ticks at the right local times and bars at their own minute, the first seconds of
a demo (no tables, then tables, then rows) without a single error on the page, a database
that goes away and comes back, auto-refresh, and no console error, uncaught exception or
failed load. The browser runs in Asia/Kolkata (UTC+05:30): a tick placed in UTC, or in whole
hours of UTC, would read wrong there. Screenshots go to ./artifacts/ (kept by CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine

from flead_app.dashboard.queries import DEFAULT_RANGE_S, PANELS, PANELS_BY_ID, run_all_queries
from flead_app.io.db.store import Database, sqlalchemy_url
from flead_app.models import Anomaly, GlobalModel, LocalModelUpdate

from .cdp import Browser
from .conftest import _iso, _summary, init_schema

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

PAGE = """JSON.stringify({state: document.body.dataset.pageState || '', now: Number(document.body.dataset.now || 0),
  updates: Number(document.body.dataset.updates || 0), banner: document.getElementById('banner').hidden ? null :
  {kind: document.getElementById('banner').dataset.kind, text: document.getElementById('banner').innerText}})"""

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


async def page(browser: Browser) -> dict:
    return json.loads(await browser.evaluate(PAGE))


async def next_update(browser: Browser, timeout: float = 30) -> dict:
    """Wait for the page's next refresh; its page-level state."""
    seen = (await page(browser))["updates"]
    await browser.wait_for(f"Number(document.body.dataset.updates || 0) > {seen}", timeout)
    return await page(browser)


async def wait_for_state(browser: Browser, state: str, timeout: float = 40) -> dict:
    await browser.wait_for(f"document.body.dataset.pageState === {json.dumps(state)}", timeout)
    return await page(browser)


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
    now_ms = (await page(browser))["now"]
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
                assert f"{expected['latest_accuracy'] * 100:.1f}%" in by_id["round_accuracy"]["text"]
                assert "Round Accuracy (Before Training)" in by_id["round_accuracy"]["text"]
                assert str(expected["global_models"]) in by_id["recent_federated_models"]["text"]

                # the headline: held-out detection of the newest evaluated version, its split named
                head = expected["headline"]
                lines = by_id["detection_headline"]["text"].splitlines()
                for value, label in (
                    (head["version"], "global version"),
                    (head["split"], "held-out split"),
                    (f"{head['event_recall'] * 100:.1f}%", "event recall"),
                    (f"{head['false_alarms_per_1000_normal']:.1f}", "false alarms / 1,000 normal readings"),
                    (f"{head['f1'] * 100:.1f}%", "F1"),
                ):
                    assert lines[lines.index(label) - 1] == value, (label, lines)
                assert panels[0]["id"] == "detection_headline"
                zone = await browser.evaluate("document.getElementById('timezone').innerText")
                assert zone.startswith("times: Asia/") and zone.endswith("UTC+05:30"), zone  # Kolkata or Calcutta
                assert (await page(browser))["banner"] is None

                # time axes: exactly the last 6 hours, round local ticks, every bar and point at its time
                axes = await check_axes(browser, url, DEFAULT_RANGE_S, {p.id for p in TIME_PANELS})
                # on the hour; a tick at local midnight (a run after 18:30 UTC, in Kolkata) shows the date
                hourly = {a["panel"]: [t["label"] for t in a["ticks"] if not t["major"]] for a in axes}
                assert all(all(label.endswith(":00") for label in labels) for labels in hourly.values()), hourly
                dated = [t["label"] for a in axes for t in a["ticks"] if t["major"]]
                assert all(re.fullmatch(r"[A-Z][a-z]{2} \d{1,2}", label) for label in dated), dated
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
                        assert PANELS_BY_ID[p["id"]].empty_text in p["text"], p
                assert "not evaluated yet" in panels[0]["text"]
                banner = (await page(browser))["banner"]
                assert banner == {
                    "kind": "notice",
                    "text": "Waiting for the first rows: the tables exist but hold nothing yet.",
                }
                await browser.screenshot(ARTIFACTS / "dashboard-empty.png")
                assert browser.errors == [], browser.errors
        finally:
            await browser.close()

    asyncio.run(drive())


class ErrorWatch:
    """Polls the page every 100 ms while a test changes the database: any panel error, any red banner."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.seen: list[str] = []
        self.samples = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            with suppress(RuntimeError):
                panels = json.loads(await self.browser.evaluate(PANEL_STATES))
                state = await page(self.browser)
                self.samples += 1
                for p in panels:
                    if p["state"] == "error" or "failed" in p["text"] or "Error" in p["text"]:
                        self.seen.append(f"{p['id']}: {p['text']!r}")
                if state["banner"] and state["banner"]["kind"] != "notice":
                    self.seen.append(f"banner: {state['banner']}")
            await asyncio.sleep(0.1)

    def __enter__(self) -> ErrorWatch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def first_rows(url: str, at: datetime) -> None:
    """What the first seconds of a demo write: one local model, one global version, one anomaly."""
    db = Database(url)
    try:
        update = LocalModelUpdate(
            device_id="device_7",
            model_version=1,
            global_version=0,
            weights=[0.1, -0.05, 0.2, 0.01],
            bias=-2.0,
            accuracy=1.0,
            loss=0.3,
            samples=7,
            timestamp=_iso(at),
            partition=3,
        )
        glob = GlobalModel(
            global_version=1,
            aggregation_round=1,
            weights=[0.1, -0.05, 0.2, 0.01],
            bias=-2.0,
            accuracy=1.0,
            num_devices=1,
            samples=7,
            num_updates=1,
            mean_staleness=0.0,
            timestamp=_iso(at + timedelta(seconds=5)),
            contributors=["device_7"],
        )
        anomaly = Anomaly(
            device_id="device_7",
            partition=3,
            broker_id=1,
            value=44.0,
            z_score=3.2,
            severity="critical",
            timestamp=_iso(at),
            detected_at=_iso(at + timedelta(seconds=1)),
            label=1,
        )
        assert db.insert_local_models([update]) == 1
        assert db.insert_global_models([glob]) == 1
        assert db.insert_anomalies([anomaly]) == 1
    finally:
        db.close()


def test_the_first_seconds_of_a_demo(make_schema):
    """No FLEAD tables, then the schema, then the first rows, then the first evaluation: never an error."""
    url = make_schema(tables=False)

    async def drive() -> None:
        browser = await start_browser()
        try:
            with dashboard_server(url) as base:
                panels = await load(browser, base + "/dashboard?refresh=5")
                with ErrorWatch(browser) as watch:
                    # 1. the database answers but holds no FLEAD table: one calm notice, every panel quiet
                    state = await page(browser)
                    assert state["state"] == "waiting_for_tables", state
                    assert state["banner"] == {
                        "kind": "notice",
                        "text": "Waiting for the first rows: the database has no FLEAD tables yet "
                        "(a worker creates them when it starts).",
                    }
                    for p in panels:
                        assert p["state"] == "empty" and PANELS_BY_ID[p["id"]].empty_text in p["text"], p
                    await browser.screenshot(ARTIFACTS / "dashboard-no-tables.png")

                    # 2. a worker starts and creates the schema: counts of 0, the rest "no data yet"
                    init_schema(url)
                    state = await wait_for_state(browser, "waiting_for_rows")
                    assert state["banner"]["kind"] == "notice" and "hold nothing yet" in state["banner"]["text"]
                    panels = json.loads(await browser.evaluate(PANEL_STATES))
                    for p in panels:
                        expected = "data" if p["id"] in COUNT_STATS else "empty"
                        assert p["state"] == expected, p

                    # 3. the first rows: drawn, the only bar at its own minute, no notice any more
                    at = (datetime.now(UTC) - timedelta(minutes=3)).replace(second=20, microsecond=0)
                    first_rows(url, at)
                    state = await wait_for_state(browser, "ready")
                    assert state["banner"] is None
                    panels = {p["id"]: p for p in json.loads(await browser.evaluate(PANEL_STATES))}
                    assert panels["total_local_models"]["text"].strip().endswith("1")
                    for pid in ("models_per_minute", "round_accuracy_trend", "anomalies_by_severity", "top_devices"):
                        assert panels[pid]["state"] == "data" and panels[pid]["canvas"], panels[pid]
                    assert panels["detection_headline"]["state"] == "empty"
                    assert "not evaluated yet" in panels["detection_headline"]["text"]
                    axes = await check_axes(browser, url, DEFAULT_RANGE_S, {p.id for p in TIME_PANELS})
                    bars = {a["panel"]: a for a in axes}["models_per_minute"]
                    (bar,) = bars["marks"]
                    minute = at.replace(second=0).timestamp() * 1000
                    assert bar["t"] == minute + 30_000
                    before = [t for t in bars["ticks"] if t["value"] <= minute]
                    after = [t for t in bars["ticks"] if t["value"] > minute]
                    assert before[-1]["px"] < bar["px"] and (not after or bar["px"] < after[0]["px"])
                    # the tick left of it starts the local hour the bar falls in
                    assert local(before[-1]["value"]) == local(minute).replace(minute=0), (before[-1], minute)

                    # 4. the first evaluation: the headline, the split named; the most telling split wins
                    db = Database(url)
                    try:
                        now = datetime.now(UTC)
                        db.insert_rows("evaluation_summaries", [_summary("global", 1, 0.5, now)])
                        await wait_for_state(browser, "ready")
                        await browser.wait_for(
                            "document.getElementById('panel-detection_headline').dataset.state === 'data'", 30
                        )
                        text = await browser.evaluate("document.getElementById('panel-detection_headline').innerText")
                        assert "readings\nheld-out split" in text and "50.0%\nF1" in text, text
                        db.insert_rows("evaluation_summaries", [_summary("global", 1, 0.42, now, split="devices")])
                        await browser.wait_for(
                            "document.getElementById('panel-detection_headline').innerText.includes('devices')", 30
                        )
                        text = await browser.evaluate("document.getElementById('panel-detection_headline').innerText")
                        assert "devices\nheld-out split" in text and "42.0%\nF1" in text, text
                    finally:
                        db.close()
                    await browser.screenshot(ARTIFACTS / "dashboard-first-rows.png")
                assert watch.samples > 20 and watch.seen == [], watch.seen
                assert browser.errors == [], browser.errors
        finally:
            await browser.close()

    asyncio.run(drive())


def test_page_without_a_database_waits_calmly():
    """The database down (nothing listens on the port): one calm notice, the page keeps retrying."""
    dead = f"postgresql://nobody:nothing@127.0.0.1:{free_port()}/none"

    async def drive() -> None:
        browser = await start_browser()
        try:
            with dashboard_server(dead) as base:
                panels = await load(browser, base + "/dashboard")
                state = await page(browser)
                assert state["state"] == "waiting_for_database"
                assert state["banner"]["kind"] == "notice"
                assert state["banner"]["text"].startswith("Waiting for the database (")
                assert "nothing" not in state["banner"]["text"]  # the password
                assert {p["state"] for p in panels} == {"empty"}
                assert not any("failed" in p["text"] for p in panels)
                assert browser.errors == [], browser.errors
        finally:
            await browser.close()

    asyncio.run(drive())


class Proxy:
    """A TCP proxy in front of PostgreSQL that can be cut and restored, as a database restart looks.

    It runs its own event loop in a thread: the test's loop blocks while the server starts.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pg-proxy", daemon=True)
        self.thread.start()

    def _call(self, coro) -> None:  # noqa: ANN001 - a coroutine
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> Proxy:
        async def listen() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        self._call(listen())
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Stop listening and drop every connection (the server's pooled ones too)."""

        async def close() -> None:
            if self.server is not None:
                self.server.close()
                self.server = None
            for w in self.writers:
                w.close()
            self.writers.clear()

        self._call(close())

    def stop(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_database_restart_keeps_the_panels_and_says_so(sample_db):
    url, expected = sample_db
    parts = urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    proxied = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{proxy.port}"))

    async def drive() -> None:
        browser = await start_browser()
        try:
            with dashboard_server(proxied) as base:
                panels = await load(browser, base + "/dashboard?refresh=5")
                assert {p["state"] for p in panels} == {"data"}
                with ErrorWatch(browser) as watch:
                    proxy.cut()
                    state = await wait_for_state(browser, "waiting_for_database")
                    assert state["banner"]["kind"] == "notice", state
                    assert state["banner"]["text"].startswith("Waiting for the database ("), state
                    assert "Showing the data of" in state["banner"]["text"], state
                    kept = json.loads(await browser.evaluate(PANEL_STATES))
                    assert [p["state"] for p in kept] == ["data"] * len(PANELS)
                    assert f"{expected['local_models']:,}" in kept[1]["text"]
                    await browser.screenshot(ARTIFACTS / "dashboard-database-away.png")
                    proxy.start()
                    state = await wait_for_state(browser, "ready")
                    assert state["banner"] is None
                assert watch.seen == [], watch.seen
                assert browser.errors == [], browser.errors
        finally:
            await browser.close()

    try:
        asyncio.run(drive())
    finally:
        proxy.stop()
