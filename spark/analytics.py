"""Hourly stream analytics as a spark-submit job (the same code as ``flead spark analytics``).

    spark-submit --master local[*] --jars "$(flead spark jars)" spark/analytics.py [--start ISO --end ISO]

The Python that runs it (PYSPARK_PYTHON) must have flead installed; see docs/spark.md.
"""

import sys

from flead_app.spark_support.cli import submit_main

if __name__ == "__main__":
    sys.exit(submit_main("analytics", sys.argv[1:]))
