"""The Faust application: ``faust -A flead_app.app worker`` runs the FLEAD agents of its role.

This module is a leaf of the worker: it makes the app, its topics and the worker's runtime
(``flead_app.runtime``), and imports no agent. Faust finds the agents, tables and web views by
scanning the modules named in ``autodiscover`` when a worker (or ``faust ... tables``) starts,
as its guide to project layout recommends; tests import the agent modules they exercise.

Topics carry raw bytes (``value_serializer="raw"``): readings are validated by
``flead_app.models.parse_readings`` on the hot path, which is several times cheaper than
Faust's Record codec, and bad bytes become dead-letter records instead of codec crashes.
"""

from __future__ import annotations

import faust

from flead_app import faust_patches
from flead_app.io.kafka import broker_credentials
from flead_app.runtime import WorkerRuntime
from flead_app.settings import Settings, load_settings

#: the modules Faust scans for agents, tables, timers and web views, by worker role
#: (``FLEAD_ROLE``). Importing a module registers what it declares, so a role lists exactly the
#: modules it runs: a site detects and trains on its own devices and follows the global model
#: (its readings never leave its cluster); the centre averages the updates that MirrorMaker
#: brings from every site and stores the results; ``all`` is the one-cluster topology.
ROLE_MODULES = {
    "all": ["flead_app.tables", "flead_app.agents", "flead_app.web"],
    "site": ["flead_app.tables.device_state", "flead_app.agents.detector", "flead_app.agents.device_view",
             "flead_app.agents.global_model", "flead_app.web"],
    "central": ["flead_app.tables.fedavg_state", "flead_app.agents.fedavg", "flead_app.agents.sink",
                "flead_app.web"],
    "fedavg": ["flead_app.tables.fedavg_state", "flead_app.agents.fedavg", "flead_app.web"],
}  # fmt: skip


def create_app(settings: Settings) -> faust.App:
    """The Faust app for ``settings`` (its role's modules), with FLEAD's corrections to Faust installed."""
    faust_patches.apply()  # idempotent producing; commits that never pass an offset in flight
    settings.worker_dir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    return faust.App(
        settings.app_id,
        # no ``origin``: Faust adds the origin package to the autodiscover list and would import
        # every flead_app module, registering the agents of every role
        autodiscover=ROLE_MODULES[settings.role],
        broker=settings.broker_url,
        broker_credentials=broker_credentials(settings),
        store=settings.store,
        datadir=str(settings.worker_dir),
        topic_replication_factor=settings.replication_factor,
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_linger_ms=5,
        consumer_auto_offset_reset="earliest",
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host="127.0.0.1",
        table_cleanup_interval=30.0,
        broker_commit_every=5000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=16384,
    )


settings = load_settings()
DISCOVER = ROLE_MODULES[settings.role]
app = create_app(settings)
runtime = WorkerRuntime()

readings_topic = app.topic(settings.topic_readings, partitions=settings.partitions)
anomalies_topic = app.topic(settings.topic_anomalies, partitions=settings.partitions)
local_updates_topic = app.topic(settings.topic_local_updates, partitions=settings.partitions)
global_updates_topic = app.topic(settings.topic_global_updates, partitions=settings.partitions)
dead_letter_topic = app.topic(settings.topic_dead_letter, partitions=settings.partitions)
