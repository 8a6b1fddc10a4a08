"""The worker's web views: ``/flead/stats/`` (counters) and the live page ``/dashboard``
(``flead_app.dashboard.page``); workers that detect also serve ``/flead/device/{device_id}/``
(``flead_app.agents.device_view``).

This module imports no agent, so a worker of any role (``FLEAD_ROLE``) can serve it without
registering agents it should not run. Every worker serves the live page; all read the same
database, so any worker's page shows the whole fleet (``flead dashboard serve`` serves the same page without a worker).
"""

from __future__ import annotations

from typing import Any

from flead_app import faust_patches
from flead_app.app import app, runtime, settings
from flead_app.dashboard import page


def worker_stats() -> dict[str, Any]:
    stats = runtime.stats.snapshot()
    # outputs Kafka refused for good; their rows keep them, so a replay would send them again
    never_acked = sum(group.get("outputs_never_acknowledged", 0) for group in stats.values() if isinstance(group, dict))
    return {
        **stats,
        "role": settings.role,
        "site": settings.site,
        "outputs_never_acknowledged": never_acked,
        # changelog partitions whose local state recovery found ahead of the log, wiped and read again
        "state_partitions_rebuilt": faust_patches.state_partitions_rebuilt(app),
        "global_version": runtime.global_model.version,
        "global_accuracy": runtime.global_model.accuracy,
        "partition_leaders": {str(k): v for k, v in sorted(runtime.leaders.items())},
    }


@app.page("/flead/stats/")
async def stats_view(web, request):  # noqa: ANN001, ANN201
    return web.json(worker_stats())


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
