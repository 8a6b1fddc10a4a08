"""The live page in headless Chromium, served by ``flead dashboard serve`` over a real database.

Checks what a person would: every panel drawn with data (or "no data yet" on an empty
database), the stat values right, auto-refresh redrawing, and no console error, uncaught
exception or failed load. Screenshots go to ./artifacts/ (kept by CI).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from flead_app.dashboard.queries import PANELS

from .cdp import Browser

pytestmark = [pytest.mark.integration, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
COUNT_STATS = {"total_local_models", "global_models", "active_devices"}

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


async def load(browser: Browser, url: str, min_updates: int = 1) -> list[dict]:
    import json

    await browser.navigate(url)
    await browser.wait_for(f"Number(document.body && document.body.dataset.updates || 0) >= {min_updates}", 60)
    return json.loads(await browser.evaluate(PANEL_STATES))


def test_page_with_data(sample_db):
    url, expected = sample_db

    async def drive() -> None:
        browser = await Browser().start()
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
                await browser.screenshot(ARTIFACTS / "dashboard.png")

                # auto-refresh: a short period from the query string, redrawn without errors
                await load(browser, base + "/dashboard?refresh=5", min_updates=2)
                assert "refresh: every 5 s" in await browser.evaluate("document.body.innerText")
                assert browser.errors == [], browser.errors
        finally:
            await browser.close()

    asyncio.run(drive())


def test_page_on_an_empty_database_says_no_data_yet(empty_db):
    async def drive() -> None:
        browser = await Browser().start()
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
        browser = await Browser().start()
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
