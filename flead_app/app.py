"""The Faust application: ``faust -A flead_app.app worker`` runs every FLEAD agent.

Topics carry raw bytes (``value_serializer="raw"``): readings are validated by
``flead_app.models.parse_readings`` on the hot path, which is several times cheaper than
Faust's Record codec, and bad bytes become dead-letter records instead of codec crashes.
Tables live in ``flead_app.tables`` and agents in ``flead_app.agents``; importing this module
registers all of them.
"""

from __future__ import annotations

import faust

from flead_app import faust_patches
from flead_app.settings import kafka_client_options, load_settings

settings = load_settings()


def _broker_credentials(options: dict) -> object | None:
    """Faust takes security settings as a credentials object; None for PLAINTEXT."""
    if not options:
        return None
    proto = settings.kafka_security_protocol.upper()
    if proto.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    return faust.SSLCredentials(options["ssl_context"])


faust_patches.apply()  # idempotent producing; commits that never pass an offset in flight

settings.worker_dir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
app = faust.App(
    settings.app_id,
    broker=settings.broker_url,
    broker_credentials=_broker_credentials(kafka_client_options(settings)),
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
    web_host="127.0.0.1",
    autodiscover=False,
    table_cleanup_interval=30.0,
    broker_commit_every=5000,
    broker_commit_interval=1.0,
    stream_buffer_maxsize=16384,
)

readings_topic = app.topic(settings.topic_readings, partitions=settings.partitions)
anomalies_topic = app.topic(settings.topic_anomalies, partitions=settings.partitions)
local_updates_topic = app.topic(settings.topic_local_updates, partitions=settings.partitions)
global_updates_topic = app.topic(settings.topic_global_updates, partitions=settings.partitions)
dead_letter_topic = app.topic(settings.topic_dead_letter, partitions=settings.partitions)

# Registering tables, agents and web views needs ``app``; imported last on purpose.
import flead_app.tables  # noqa: E402,F401,I001
import flead_app.agents.dead_letter  # noqa: E402,F401
import flead_app.agents.global_model  # noqa: E402,F401
import flead_app.agents.detector  # noqa: E402,F401
import flead_app.agents.fedavg  # noqa: E402,F401
import flead_app.agents.sink  # noqa: E402,F401
import flead_app.web  # noqa: E402,F401
