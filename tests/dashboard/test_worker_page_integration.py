"""The real path: a Faust worker on the real stack serves /dashboard, its data and its assets."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flead_app.dashboard.queries import PANELS
from flead_app.settings import load_settings
from flead_app.worker import WorkerProcess

from .cdp import Browser

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - loopback worker
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


@pytest.mark.browser
def test_worker_serves_the_live_page(pipeline_env, sample_db, monkeypatch):
    url, expected = sample_db
    env = {**pipeline_env, "FLEAD_DB_URL": url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    worker = WorkerProcess(load_settings(), env=env, name="dashboard-worker").start()
    try:
        base = worker.url
        for path in ("/dashboard", "/dashboard/"):
            status, ctype, body = get(base + path)
            assert status == 200 and ctype.startswith("text/html")
            assert b'id="flead-config"' in body and b"/dashboard/static/chart.umd.min.js" in body
        status, _, body = get(base + "/dashboard?refresh=0&range=1h")
        assert b"refresh: off" in body and b"range: last 1h" in body

        status, ctype, body = get(base + "/dashboard/data")
        assert status == 200 and ctype.startswith("application/json")
        data = json.loads(body)
        assert data["error"] is None
        assert list(data["panels"]) == [p.id for p in PANELS]
        for pid, result in data["panels"].items():
            assert result["error"] is None and result["rows"], pid
        assert data["panels"]["total_local_models"]["rows"] == [{"local_models": expected["local_models"]}]

        status, ctype, body = get(base + "/dashboard/static/chart.umd.min.js")
        assert status == 200 and "javascript" in ctype and body.startswith(b"/*!\n * Chart.js v4")
        assert get(base + "/dashboard/static/../settings.py")[0] == 404
        assert get(base + "/dashboard/static/nothing.js")[0] == 404

        async def drive() -> None:
            browser = await Browser().start()
            try:
                await browser.navigate(base + "/dashboard")
                await browser.wait_for("Number(document.body && document.body.dataset.updates || 0) >= 1", 60)
                states = json.loads(
                    await browser.evaluate(
                        "JSON.stringify(Array.from(document.querySelectorAll('.panel')).map(p => p.dataset.state))"
                    )
                )
                assert states == ["data"] * len(PANELS)
                await browser.screenshot(ARTIFACTS / "dashboard-worker.png")
                assert browser.errors == [], browser.errors
            finally:
                await browser.close()

        asyncio.run(drive())
    finally:
        worker.stop()
