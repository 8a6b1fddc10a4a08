"""The worker's web views: ``/flead/stats/`` (counters), ``/flead/device/{device_id}/`` (a
device's table row) and the live page ``/dashboard`` (``flead_app.dashboard.page``).

The device view is a Faust table route: asked on any worker, it is forwarded to the worker
that owns the device's partition, so ``flead device`` reads the live table wherever it lives.
Every worker serves the live page; all read the same database, so any worker's page shows the
whole fleet (``flead dashboard serve`` serves the same page without a worker).
"""

from __future__ import annotations

from typing import Any

from flead_app.agents import detector
from flead_app.app import app, runtime
from flead_app.dashboard import page
from flead_app.tables.device_state import device_state
from flead_app.tables.rows import DeviceRow


def worker_stats() -> dict[str, Any]:
    stats = runtime.stats.snapshot()
    # outputs Kafka refused for good; their rows keep them, so a replay would send them again
    never_acked = sum(group.get("outputs_never_acknowledged", 0) for group in stats.values() if isinstance(group, dict))
    return {
        **stats,
        "outputs_never_acknowledged": never_acked,
        "global_version": runtime.global_model.version,
        "global_accuracy": runtime.global_model.accuracy,
        "partition_leaders": {str(k): v for k, v in sorted(runtime.leaders.items())},
    }


@app.page("/flead/stats/")
async def stats_view(web, request):  # noqa: ANN001, ANN201
    return web.json(worker_stats())


@app.page("/flead/device/{device_id}/")
@app.table_route(table=device_state, match_info="device_id")
async def device_view(web, request, device_id: str):  # noqa: ANN001, ANN201
    key = device_id.encode()
    row = detector.rows.cached(key)  # changed since the last commit: newer than the table
    if row is None:
        raw = device_state.get(key)
        if raw is None:
            return web.json({"device_id": device_id, "found": False}, status=404)
        row = DeviceRow.from_bytes(raw)
    return web.json({"device_id": device_id, "found": True, **row.state.summary()})


source = page.DataSource()


async def _page(web, request):  # noqa: ANN001, ANN202
    q = request.query
    return web.html(page.page_html(page.parse_refresh(q), page.parse_range(q)))


@app.page(page.BASE_PATH, name="flead_dashboard")
async def dashboard_view(web, request):  # noqa: ANN001, ANN201
    return await _page(web, request)


@app.page(page.BASE_PATH + "/", name="flead_dashboard_slash")
async def dashboard_slash_view(web, request):  # noqa: ANN001, ANN201
    return await _page(web, request)


@app.page(page.BASE_PATH + "/data", name="flead_dashboard_data")
async def dashboard_data_view(web, request):  # noqa: ANN001, ANN201
    payload = await source.payload(page.parse_range(request.query))
    return web.json(payload, headers={"Cache-Control": "no-store"})


@app.page(page.BASE_PATH + "/static/{name}", name="flead_dashboard_static")
async def dashboard_static_view(web, request, name: str):  # noqa: ANN001, ANN201
    found = page.static_file(name)
    if found is None:
        return web.text("not found", status=404)
    body, ctype = found
    return web.bytes(body, content_type=ctype, headers={"Cache-Control": "max-age=300"})
