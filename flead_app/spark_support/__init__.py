"""Spark side of FLEAD: hourly stream analytics and held-out evaluation of the global models.

Pure logic (record expansion, per-device history replay, metrics, scheduling) lives in modules
that import neither Spark, Kafka nor the database, and is tested directly; ``jobs`` holds the
thin Spark jobs, ``session`` builds the SparkSession with the jars ``jars`` fetches with Maven,
and ``cli`` adds ``flead spark fetch|analytics|evaluate|schedule``. See docs/spark.md.
"""
