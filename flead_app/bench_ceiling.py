"""The bench's second ceiling: a Faust app whose one agent reads the readings topic and does nothing.

``faust -A flead_app.bench_ceiling worker`` (``flead bench`` starts it with an app id and web
port of its own) consumes the same topic the pipeline read, from the start, counting events and
nothing else: no parsing, no state, no sends. Its rate is what Faust itself costs per message on
this machine, the bound a Faust pipeline's rate is compared with (``ratio_to_faust_ceiling``).
``/ceiling/`` answers how many events it has seen and over how long.
"""

from __future__ import annotations

import time

import faust

from flead_app.io.kafka import broker_credentials
from flead_app.settings import load_settings

settings = load_settings()
app = faust.App(
    f"{settings.app_id}-ceiling",
    broker=settings.broker_url,
    broker_credentials=broker_credentials(settings),
    store="memory://",
    datadir=str(settings.home_path / "workers" / f"{settings.app_id}-ceiling-{settings.web_port}"),
    topic_replication_factor=settings.replication_factor,
    topic_partitions=settings.partitions,
    key_serializer="raw",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    web_port=settings.web_port,
    web_host="127.0.0.1",
    autodiscover=False,
    stream_buffer_maxsize=16384,
)
readings = app.topic(settings.topic_readings, partitions=settings.partitions)


class Count:
    events = 0
    first_at: float | None = None
    last_at: float | None = None


count = Count()


@app.agent(readings)
async def read_only(stream) -> None:  # noqa: ANN001
    async for _ in stream.events():
        now = time.perf_counter()
        if count.first_at is None:
            count.first_at = now
        count.events += 1
        count.last_at = now


@app.page("/ceiling/")
async def ceiling_view(web, request):  # noqa: ANN001, ANN201
    span = (count.last_at - count.first_at) if count.first_at is not None and count.last_at else 0.0
    return web.json({"events": count.events, "seconds": span})
