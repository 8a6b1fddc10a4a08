"""Held-out evaluation of new global versions as a spark-submit job (= ``flead spark evaluate``).

    spark-submit --master local[*] --jars "$(flead spark jars)" spark/evaluate.py [--all]

The Python that runs it (PYSPARK_PYTHON) must have flead installed; see docs/spark.md.
"""

import sys

from flead_app.spark_support.cli import submit_main

if __name__ == "__main__":
    sys.exit(submit_main("evaluate", sys.argv[1:]))
