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
from typing import TYPE_CHECKING, Any

import numpy as np

from flead_app.algorithms.device import DeviceConfig
from flead_app.algorithms.sgd import LinearModel
from flead_app.io.db.store import Database
from flead_app.io.kafka import fetch_partition_leaders as partition_leaders
from flead_app.settings import Settings
from flead_app.spark_support import analytics as an
from flead_app.spark_support import dbio
from flead_app.spark_support.evaluation import (
    ROW_FIXED,
    RunResult,
    central_model,
    feature_names,
    replay_device,
    run_evaluation,
    series_from_rows,
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
    site = settings.site or None
    rows = an.analytics_rows(window, stats, skipped, datetime.now(UTC), site)
    written = dbio.write_analytics(db, window, rows, site)
    n_readings = next((s.count for s in stats if s.scope == an.SCOPE_FLEET), 0)
    return AnalyticsResult(window, written, n_readings, statuses, leaders)


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvaluateResult:
    versions: list[int]
    skipped_versions: list[int]
    latest: int | None
    readings: int  # scored, labelled readings of every device
    training: int  # of which the central model learned from
    summary_rows: int
    messages: Counter = field(default_factory=Counter)
    reason: str = ""
    run: RunResult | None = None
    devices: int = 0


def fit_central(train_df: DataFrame, features: list[str]) -> LinearModel | None:
    """Logistic regression on the pooled training readings (MLlib L-BFGS, no regularisation), on
    the learner's own training target."""
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    data = VectorAssembler(inputCols=features, outputCol="features").transform(
        train_df.select(*features, F.col("target").cast("double").alias("label"))
    )
    if data.select("label").distinct().count() < 2:
        return None  # one class only: nothing to separate
    model = LogisticRegression(maxIter=100, regParam=0.0, standardization=True).fit(data)
    return LinearModel(np.asarray(model.coefficients.toArray(), dtype=np.float64), float(model.intercept))


def replayed_rows(spark: SparkSession, settings: Settings, cfg: DeviceConfig) -> tuple[Any, Any, Counter]:
    """The readings topic's records parsed, and every device replayed from them as the worker
    processed it (``evaluation.replay_device``: one row per scored, labelled reading), both RDDs
    persisted (the caller unpersists them); and how many records of each parse status there were."""
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
    rows_rdd = per_device.groupByKey(parts).flatMap(lambda kv: replay_device(kv[0], kv[1], cfg)).persist()
    return parsed, rows_rdd, statuses


def evaluate_job(
    spark: SparkSession,
    settings: Settings,
    db: Database,
    all_versions: bool = False,
    only: Collection[int] | None = None,
    every: int = 1,
) -> EvaluateResult:
    """Evaluate the pending global versions (``all_versions``: every one; ``only``: just these;
    ``every``: only the first, the last and every ``every``-th of them) and, beside the newest,
    every baseline, on the three held-out splits."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    versions = dbio.pending_versions(db, all_versions, only)
    if every > 1:
        keep = set(thin_versions([v.version for v in versions], every))
        versions = [v for v in versions if v.version in keep]
    if not versions:
        return EvaluateResult([], [], None, 0, 0, 0, reason="no global version waits for evaluation")
    cfg = device_config(settings)
    parsed, rows_rdd, statuses = replayed_rows(spark, settings, cfg)
    try:
        first = rows_rdd.take(1)
        if not first:
            return EvaluateResult([], [], None, 0, 0, 0, statuses, reason="no labelled reading in the topic yet")
        features = list(feature_names(len(first[0]) - len(ROW_FIXED)))
        fixed = [T.StringType(), T.BooleanType(), T.BooleanType(), T.LongType(), T.DoubleType(), T.IntegerType(),
                 T.IntegerType()] + [T.DoubleType()] * 7  # fmt: skip
        schema = T.StructType(
            [T.StructField(n, t) for n, t in zip((*ROW_FIXED, *features), fixed + [T.DoubleType()] * len(features),
                                                 strict=True)]
        )  # fmt: skip
        df = spark.createDataFrame(rows_rdd, schema)
        train = df.where(~F.col("device_heldout") & ~F.col("heldout") & (F.col("target") >= 0))
        n_train = train.count()
        central_lr = fit_central(train, features) if n_train else None
        rows = rows_rdd.collect()
    finally:
        rows_rdd.unpersist()
        parsed.unpersist()
    series = series_from_rows(rows, cfg)
    central = central_model(central_lr, series, cfg) if central_lr is not None else None
    published = dbio.pending_versions(db, all_versions=True)
    result = run_evaluation(series, versions, published, central, cfg, datetime.now(UTC), settings.eval_sample_rows)
    written = dbio.write_evaluation(db, result)
    return EvaluateResult(
        sorted(result.trend), result.skipped_versions, result.latest, len(rows), n_train, written, statuses,
        run=result, devices=len(series),
    )  # fmt: skip
