"""Worker web views: ``/flead/stats`` (counters), ``/flead/device/{device_id}/`` (table row) and
``/flead/train-pending/`` (POST: a round now for every device with readings waiting).

The device view is a Faust table route: asked on any worker, it is forwarded to the worker
that owns the device's partition, so ``flead device`` reads the live table wherever it lives.
"""

from __future__ import annotations

from faust.web import View

from flead_app.agents import dead_letter, detector, fedavg, global_model, sink
from flead_app.algorithms.device import DeviceState
from flead_app.app import app
from flead_app.dashboard import web as dashboard_web  # noqa: F401
from flead_app.tables.device_state import device_state


def worker_stats() -> dict:
    return {
        "detector": dict(detector.counters),
        "fedavg": dict(fedavg.counters),
        "sink": dict(sink.counters),
        "dead_letters": dict(dead_letter.counts),
        # outputs Kafka refused for good; their rows keep them, so a replay would send them again
        "outputs_never_acknowledged": detector.outbox.failed + fedavg.outbox.failed,
        "global_version": global_model.latest.version,
        "global_accuracy": global_model.latest.accuracy,
        "partition_leaders": {str(k): v for k, v in sorted(global_model.partition_leaders.items())},
    }


@app.page("/flead/stats/")
async def stats_view(web, request):  # noqa: ANN001, ANN201
    return web.json(worker_stats())


@app.page("/flead/train-pending/")
class TrainPendingView(View):
    """POST: a round now for every device of this worker with readings waiting (``flead demo``
    asks for it when its simulator stops, so that the last readings reach a global model)."""

    async def post(self, request):  # noqa: ANN001, ANN201
        requested = await detector.request_rounds(0.0, reason="flush")
        return self.json({"requested": requested})


@app.page("/flead/device/{device_id}/")
@app.table_route(table=device_state, match_info="device_id")
async def device_view(web, request, device_id: str):  # noqa: ANN001, ANN201
    raw = device_state.get(device_id.encode())
    if raw is None:
        return web.json({"device_id": device_id, "found": False}, status=404)
    return web.json({"device_id": device_id, "found": True, **DeviceState.from_bytes(raw).summary()})
