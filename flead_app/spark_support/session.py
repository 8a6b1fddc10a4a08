"""The SparkSession every FLEAD job uses, and the Kafka source options built from the settings.

Small by default because the jobs share two cores with Kafka, PostgreSQL and the worker:
few shuffle partitions, 1 GB of driver memory, no UI. ``--master`` (or ``FLEAD_SPARK_MASTER``)
points at a cluster instead of ``local[*]``; there the executors need ``flead`` installed
(or shipped with ``--py-files``) because the per-reading logic runs in Python workers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flead_app.settings import Settings
from flead_app.spark_support.jars import require_jars

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class SparkOptions:
    master: str | None = "local[*]"
    driver_memory: str | None = "1g"
    shuffle_partitions: int = 4
    app_name: str = "flead"


def under_spark_submit() -> bool:
    """True inside ``spark-submit``, whose command line already set master, jars and memory."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_session(options: SparkOptions) -> SparkSession:
    """A session with the fetched Kafka/JDBC jars (from ``spark-submit --jars`` when run there)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(options.app_name)
    if not under_spark_submit():
        # the Python workers must run the interpreter that has flead (and numpy) installed
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = builder.config("spark.jars", ",".join(str(p) for p in require_jars()))
        if options.driver_memory:
            builder = builder.config("spark.driver.memory", options.driver_memory)
    if options.master:
        builder = builder.master(options.master)
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(options.shuffle_partitions))
        .config("spark.default.parallelism", str(options.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.python.worker.reuse", "true")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def kafka_options(settings: Settings) -> dict[str, str]:
    """Options for Spark's Kafka source: bootstrap servers and, when set, SASL/SSL (never logged)."""
    opts: dict[str, Any] = {"kafka.bootstrap.servers": ",".join(settings.bootstrap_servers)}
    proto = settings.kafka_security_protocol.upper()
    if proto == "PLAINTEXT":
        return opts
    opts["kafka.security.protocol"] = proto
    if proto.startswith("SASL"):
        mech = settings.kafka_sasl_mechanism.upper()
        module = (
            "org.apache.kafka.common.security.plain.PlainLoginModule"
            if mech == "PLAIN"
            else "org.apache.kafka.common.security.scram.ScramLoginModule"
        )
        user = settings.kafka_sasl_username.replace('"', '\\"')
        password = settings.kafka_sasl_password.replace('"', '\\"')
        opts["kafka.sasl.mechanism"] = mech
        opts["kafka.sasl.jaas.config"] = f'{module} required username="{user}" password="{password}";'
    if proto.endswith("SSL") and settings.kafka_ssl_cafile:
        opts["kafka.ssl.truststore.type"] = "PEM"
        opts["kafka.ssl.truststore.location"] = settings.kafka_ssl_cafile
    return opts
