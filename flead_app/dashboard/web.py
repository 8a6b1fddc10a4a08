"""The live page on the Faust worker's web server: ``/dashboard``, ``/dashboard/data``, its assets.

Every worker serves it (port ``FLEAD_WEB_PORT``, 6066 by default); all read the same database,
so any worker's page shows the whole fleet. The handlers live in ``page.py`` and are shared
with ``flead dashboard serve``.
"""

from __future__ import annotations

from flead_app.app import app
from flead_app.dashboard import page

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
