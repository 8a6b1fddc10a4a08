"""Worker web views: ``/flead/stats`` (counters for the demo's live summary and tests)."""

from __future__ import annotations

from flead_app.agents import dead_letter, detector, fedavg, global_model, sink
from flead_app.app import app


def worker_stats() -> dict:
    return {
        "detector": dict(detector.counters),
        "fedavg": dict(fedavg.counters),
        "sink": dict(sink.counters),
        "dead_letters": dict(dead_letter.counts),
        "global_version": global_model.latest.version,
        "global_accuracy": global_model.latest.accuracy,
        "partition_leaders": {str(k): v for k, v in sorted(global_model.partition_leaders.items())},
    }


@app.page("/flead/stats")
async def stats_view(web, request):  # noqa: ANN001, ANN201
    return web.json(worker_stats())
