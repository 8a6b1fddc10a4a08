"""The two Spark jobs, kept thin: read Kafka, distribute the pure logic, write the results.

``analytics_job`` reads one window of ``edge-iiot-stream`` (Kafka's offset-for-time lookup,
then a filter on the record timestamp) and aggregates it with Spark SQL per device, partition,
broker and fleet. ``evaluate_job`` reads every device's whole history, replays each device on an
executor (``evaluation.replay_device``), fits the central baseline with MLlib on the pooled
training readings, and scores the held-out readings in the driver. The held-out readings
(about ``FLEAD_HOLDOUT_PERCENT`` of the labelled ones, ~100 bytes each) must fit in driver
memory; raise ``--driver-memory`` for long retention at full fleet rate.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flead_app.algorithms.device import DeviceConfig
from flead_app.algorithms.sgd import LinearModel
from flead_app.io.db.store import Database
from flead_app.io.kafka import fetch_partition_leaders as partition_leaders
from flead_app.settings import Settings
from flead_app.spark_support import analytics as an
from flead_app.spark_support import dbio
from flead_app.spark_support.evaluation import (
    FEATURE_FIELDS,
    ROW_FIELDS,
    EvalSet,
    history_rows,
    replay_device,
    run_evaluation,
    thin_versions,
)
from flead_app.spark_support.records import CONTROL, OK, parse_message, reading_tuples
from flead_app.spark_support.session import kafka_options

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def device_config(settings: Settings) -> DeviceConfig:
    """The worker's configuration, built from the same settings the worker reads."""
    return DeviceConfig.from_settings(settings)


def _read_topic(
    spark: SparkSession, settings: Settings, window: an.Window | None = None, slack_s: float = 600.0
) -> DataFrame:
    """The topic's records: all of them, or those whose Kafka timestamp lies in ``window``.

    Kafka's offset-for-time lookup bounds the read (``slack_s`` wider on each side, because
    producer timestamps are not strictly ordered within a partition), and a filter on the
    record timestamp then keeps exactly the window.
    """
    from pyspark.sql import functions as F

    reader = spark.read.format("kafka").options(**kafka_options(settings)).option("subscribe", settings.topic_readings)
    reader = reader.option("failOnDataLoss", "false")
    if window is None:
        reader = reader.option("startingOffsets", "earliest").option("endingOffsets", "latest")
    else:
        slack_ms = int(slack_s * 1000)
        reader = (
            reader.option("startingTimestamp", str(window.start_ms - slack_ms))
            .option("endingTimestamp", str(window.end_ms + slack_ms))
            .option("startingOffsetsByTimestampStrategy", "latest")
        )
    df = reader.load()
    if window is not None:
        df = df.where((F.col("timestamp") >= F.lit(window.start)) & (F.col("timestamp") < F.lit(window.end)))
    return df.select("key", "value", "partition", "offset", (F.col("timestamp").cast("double")).alias("kts"))


# ----------------------------------------------------------------------------- analytics


@dataclass(frozen=True)
class AnalyticsResult:
    window: an.Window
    rows: int
    readings: int
    messages: Counter = field(default_factory=Counter)
    leaders: dict[int, int] = field(default_factory=dict)


def _scope_stats(df: DataFrame) -> list[an.ScopeStats]:
    """Count, mean, std, min, max and anomalies per device, partition, broker and fleet, in one job."""
    from pyspark.sql import functions as F

    aggs = [
        F.count("*").alias("n"),
        F.avg("value").alias("mean"),
        F.stddev_samp("value").alias("std"),
        F.min("value").alias("min"),
        F.max("value").alias("max"),
        F.sum("anomalous").alias("anomalies"),
    ]
    parts = [
        df.groupBy(F.col(col).cast("string").alias("key")).agg(*aggs).withColumn("scope", F.lit(scope))
        for scope, col in (
            (an.SCOPE_DEVICE, "device_id"),
            (an.SCOPE_PARTITION, "partition"),
            (an.SCOPE_BROKER, "broker"),
        )
    ]
    parts.append(df.agg(*aggs).withColumn("key", F.lit(an.FLEET_KEY)).withColumn("scope", F.lit(an.SCOPE_FLEET)))
    cols = ["scope", "key", "n", "mean", "std", "min", "max", "anomalies"]
    union = parts[0].select(*cols)
    for p in parts[1:]:
        union = union.unionByName(p.select(*cols))
    out = []
    for r in union.collect():
        if not r["n"] and r["scope"] != an.SCOPE_FLEET:  # an empty hour still gets its fleet row: 0 readings
            continue
        std = r["std"]
        out.append(
            an.ScopeStats(
                r["scope"], r["key"], int(r["n"]), r["mean"], None if std is None or std != std else float(std),
                r["min"], r["max"], int(r["anomalies"] or 0),
            )
        )  # fmt: skip
    return out


def analytics_job(
    spark: SparkSession, settings: Settings, window: an.Window, db: Database, slack_s: float = 600.0
) -> AnalyticsResult:
    from pyspark.sql import Window as W
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    leaders = partition_leaders(settings, settings.topic_readings)
    raw = _read_topic(spark, settings, window, slack_s)
    parsed = raw.rdd.map(lambda r: (parse_message(r.key, r.value, r.partition, r.offset), r.kts)).persist()
    statuses = Counter(parsed.map(lambda mt: mt[0].status).countByValue())
    schema = T.StructType(
        [
            T.StructField("device_id", T.StringType()),
            T.StructField("partition", T.IntegerType()),
            T.StructField("offset", T.LongType()),
            T.StructField("idx", T.IntegerType()),
            T.StructField("ts", T.DoubleType()),
            T.StructField("kts", T.DoubleType()),
            T.StructField("value", T.DoubleType()),
            T.StructField("label", T.IntegerType()),
        ]
    )
    readings = parsed.flatMap(lambda mt: reading_tuples(mt[0], mt[1]) if mt[0].status == OK else [])
    df = spark.createDataFrame(readings, schema)
    per_device = W.partitionBy("device_id")
    dn, dm, ds = F.count("*").over(per_device), F.avg("value").over(per_device), F.stddev_samp("value").over(per_device)
    anomalous = (dn >= settings.min_history) & (ds > 0) & (F.abs(F.col("value") - dm) / ds > settings.z_threshold)
    broker_map = F.create_map(*[F.lit(x) for p, b in sorted(leaders.items()) for x in (p, b)]) if leaders else None
    broker = F.coalesce(broker_map[F.col("partition")], F.lit(an.UNKNOWN_BROKER)) if leaders else F.lit(-1)
    df = df.withColumn("anomalous", F.coalesce(anomalous.cast("int"), F.lit(0))).withColumn("broker", broker)
    df = df.persist()
    try:
        stats = _scope_stats(df)
    finally:
        df.unpersist()
        parsed.unpersist()
    skipped = {s: statuses.get(s, 0) for s in ("control", "invalid")}
    rows = an.analytics_rows(window, stats, skipped, datetime.now(UTC))
    written = dbio.write_analytics(db, window, rows)
    n_readings = next((s.count for s in stats if s.scope == an.SCOPE_FLEET), 0)
    return AnalyticsResult(window, written, n_readings, statuses, leaders)


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvaluateResult:
    versions: list[int]
    skipped_versions: list[int]
    baseline_version: int | None
    heldout: int
    training: int
    sample_rows: int
    summary_rows: int
    messages: Counter = field(default_factory=Counter)
    reason: str = ""


def fit_central(train_df: DataFrame) -> LinearModel | None:
    """Logistic regression on the pooled training readings (MLlib L-BFGS, no regularisation)."""
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    data = VectorAssembler(inputCols=list(FEATURE_FIELDS), outputCol="features").transform(
        train_df.select(*FEATURE_FIELDS, F.col("label").cast("double").alias("label"))
    )
    model = LogisticRegression(maxIter=100, regParam=0.0, standardization=True).fit(data)
    import numpy as np

    return LinearModel(np.asarray(model.coefficients.toArray(), dtype=np.float64), float(model.intercept))


def evaluate_job(
    spark: SparkSession,
    settings: Settings,
    db: Database,
    all_versions: bool = False,
    only: Collection[int] | None = None,
    every: int = 1,
) -> EvaluateResult:
    """Evaluate the pending global versions (``all_versions``: every one; ``only``: just these;
    ``every``: only the first, the last and every ``every``-th of them)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    versions = dbio.pending_versions(db, all_versions, only)
    if every > 1:
        keep = set(thin_versions([v.version for v in versions], every))
        versions = [v for v in versions if v.version in keep]
    if not versions:
        return EvaluateResult([], [], None, 0, 0, 0, 0, reason="no global version waits for evaluation")
    cfg = device_config(settings)
    raw = _read_topic(spark, settings)
    parsed = raw.rdd.map(lambda r: (parse_message(r.key, r.value, r.partition, r.offset), r.kts)).persist()
    statuses = Counter(parsed.map(lambda mt: mt[0].status).countByValue())
    per_device = parsed.filter(lambda mt: mt[0].status in (OK, CONTROL)).map(
        lambda mt: (
            mt[0].device_id,
            (mt[0].partition, mt[0].offset, mt[1], mt[0].status == CONTROL, mt[0].timestamps, mt[0].values,
             mt[0].labels),
        )
    )  # fmt: skip
    parts = int(spark.conf.get("spark.sql.shuffle.partitions"))
    rows = per_device.groupByKey(parts).flatMap(lambda kv: history_rows(replay_device(kv[0], kv[1], cfg)))
    types = [T.StringType(), T.BooleanType(), T.LongType(), T.DoubleType(), T.IntegerType()] + [T.DoubleType()] * (
        len(FEATURE_FIELDS) + 1
    )
    schema = T.StructType([T.StructField(n, t) for n, t in zip(ROW_FIELDS, types, strict=True)])
    df = spark.createDataFrame(rows, schema).persist()
    try:
        train = df.where(~F.col("heldout"))
        n_train = train.count()
        central = fit_central(train) if n_train else None
        heldout_rows = df.where(F.col("heldout")).collect()
    finally:
        df.unpersist()
        parsed.unpersist()
    evalset = EvalSet.from_rows(heldout_rows)
    if len(evalset) == 0:
        return EvaluateResult(
            [], [], None, 0, n_train, 0, 0, statuses, reason="no labelled held-out reading in the topic yet"
        )
    result = run_evaluation(evalset, versions, central, settings.eval_sample_rows, datetime.now(UTC))
    samples, summaries = dbio.write_evaluation(db, result)
    evaluated = sorted({ev.version for ev in result.evaluations if ev.kind == "global"})
    return EvaluateResult(
        evaluated, result.skipped_versions, result.baseline_version, len(evalset), n_train, samples, summaries,
        statuses,
    )  # fmt: skip
