"""``/flead/device/{device_id}/``: a device's live statistics and model, from the detector's table.

A Faust table route: asked on any worker, it is forwarded to the worker that owns the device's
partition, so ``flead device`` reads the live table wherever it lives. It sits beside the
detector (not in ``flead_app.web``) because importing it imports the detector agent: only
workers that detect (roles ``all`` and ``site``) load it.
"""

from __future__ import annotations

from flead_app.agents import detector
from flead_app.app import app
from flead_app.tables.device_state import device_state
from flead_app.tables.rows import DeviceRow


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
