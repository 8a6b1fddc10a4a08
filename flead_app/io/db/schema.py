"""Every database table FLEAD writes, defined once (SQLAlchemy Core).

The description's four tables (``local_models``, ``federated_models``, ``model_evaluations``,
``anomalies``) keep its column names, plus what the system needs (weights, loss, where a
record travelled). Each table has a natural unique key so that replays and rebalances, which
Faust can produce, insert nothing twice (``INSERT ... ON CONFLICT DO NOTHING``). With
TimescaleDB a unique key must contain the time column, so the time column is part of each key.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION

metadata = MetaData()

local_models = Table(
    "local_models",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("device_id", Text, nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("global_version", Integer, nullable=False),
    Column("accuracy", Float, nullable=False),
    Column("loss", Float, nullable=False),
    Column("samples_processed", Integer, nullable=False),
    Column("weights", ARRAY(DOUBLE_PRECISION), nullable=False),
    Column("bias", Float, nullable=False),
    Column("partition", Integer, nullable=False, server_default="-1"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("device_id", "model_version", "created_at", name="local_models_natural_key"),
    Index("local_models_created_at_idx", "created_at"),
    Index("local_models_device_idx", "device_id", "model_version"),
)

federated_models = Table(
    "federated_models",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("global_version", Integer, nullable=False),
    Column("aggregation_round", Integer, nullable=False),
    Column("num_devices", Integer, nullable=False),
    Column("num_updates", Integer, nullable=False),
    Column("samples", BigInteger, nullable=False),
    Column("accuracy", Float, nullable=False),
    Column("weights", ARRAY(DOUBLE_PRECISION), nullable=False),
    Column("bias", Float, nullable=False),
    Column("aggregator", Text, nullable=False),
    Column("mean_staleness", Float, nullable=False, server_default="0"),
    # the decision rule devices apply: threshold on (logit - score_loc) / score_scale (NULL: none yet)
    Column("threshold", Float, nullable=True),
    Column("score_loc", Float, nullable=True),
    Column("score_scale", Float, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("global_version", "created_at", name="federated_models_natural_key"),
    Index("federated_models_created_at_idx", "created_at"),
    Index("federated_models_version_idx", "global_version"),
)

anomalies = Table(
    "anomalies",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("device_id", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("broker_id", Integer, nullable=False),
    Column("value", Float, nullable=False),
    Column("z_score", Float, nullable=False),
    Column("severity", Text, nullable=False),
    Column("label", Integer, nullable=True),
    Column("probability", Float, nullable=True),  # the model's, for the same reading
    Column("rule", Text, nullable=True),  # which rule raised it: zrule | model
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("device_id", "timestamp", "value", name="anomalies_natural_key"),
    Index("anomalies_timestamp_idx", "timestamp"),
    Index("anomalies_detected_at_idx", "detected_at"),
)

model_evaluations = Table(
    "model_evaluations",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("model_kind", Text, nullable=False),  # global | local | central
    Column("model_version", Integer, nullable=False),
    Column("device_id", Text, nullable=False),
    Column("reading_time", DateTime(timezone=True), nullable=False),
    Column("prediction", Float, nullable=False),
    Column("actual_result", Integer, nullable=False),
    Column("is_correct", Boolean, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint(
        "model_kind", "model_version", "device_id", "reading_time", "created_at", name="model_evaluations_natural_key"
    ),
    Index("model_evaluations_version_idx", "model_kind", "model_version"),
    Index("model_evaluations_created_at_idx", "created_at"),
)

evaluation_summaries = Table(
    "evaluation_summaries",
    metadata,
    Column("model_kind", Text, nullable=False),  # global | central | local | zrule | random
    Column("model_version", Integer, nullable=False),  # the global version (baselines: the one they sat beside)
    Column("split", Text, nullable=False),  # readings | devices | prequential
    Column("samples", Integer, nullable=False),
    Column("accuracy", Float, nullable=False),
    Column("precision", Float, nullable=False),
    Column("recall", Float, nullable=False),
    Column("f1", Float, nullable=False),
    Column("roc_auc", Float, nullable=True),
    Column("pr_auc", Float, nullable=True),
    Column("tp", Integer, nullable=False),
    Column("fp", Integer, nullable=False),
    Column("tn", Integer, nullable=False),
    Column("fn", Integer, nullable=False),
    Column("event_recall", Float, nullable=True),
    Column("false_alarms_per_1000", Float, nullable=True),  # per 1,000 normal (label 0) readings
    Column("delay_median", Float, nullable=True),  # readings from a window's start to its first alarm
    Column("nab_standard", Float, nullable=True),
    Column("nab_low_fp", Float, nullable=True),
    Column("nab_low_fn", Float, nullable=True),
    Column("evaluated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_kind", "model_version", "split", name="evaluation_summaries_natural_key"),
)

stream_analytics = Table(
    "stream_analytics",
    metadata,
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("scope", Text, nullable=False),  # device | partition | broker
    Column("scope_key", Text, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("mean", Float, nullable=True),
    Column("std", Float, nullable=True),
    Column("min", Float, nullable=True),
    Column("max", Float, nullable=True),
    Column("anomaly_rate", Float, nullable=True),
    Column("readings_per_minute", Float, nullable=True),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    # the site whose readings the row counts (sites topology); NULL: the central cluster's. A site's
    # partition, broker, fleet and skipped keys carry its name ("site1:3"), device ids are its own.
    Column("site", Integer, nullable=True),
    UniqueConstraint("window_start", "window_end", "scope", "scope_key", name="stream_analytics_natural_key"),
    Index("stream_analytics_window_idx", "window_start"),
)

kafka_traffic = Table(
    "kafka_traffic",
    metadata,
    Column("measured_at", DateTime(timezone=True), nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("broker_id", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("messages", BigInteger, nullable=True),
    UniqueConstraint("measured_at", "topic", "partition", name="kafka_traffic_natural_key"),
)

# time column of each table, for hypertables and retention
TIME_COLUMNS = {
    "local_models": "created_at",
    "federated_models": "created_at",
    "anomalies": "timestamp",
    "model_evaluations": "created_at",
    "stream_analytics": "window_start",
    "kafka_traffic": "measured_at",
}
