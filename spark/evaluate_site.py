"""A site's federated evaluation as a spark-submit job (= ``flead spark evaluate-site``), at site k:

    FLEAD_SITE=k spark-submit --master local[*] --jars "$(flead spark jars)" spark/evaluate_site.py [--every N]

The Python that runs it (PYSPARK_PYTHON) must have flead installed; see docs/spark.md.
"""

import sys

from flead_app.spark_support.cli import submit_main

if __name__ == "__main__":
    sys.exit(submit_main("evaluate_site", sys.argv[1:]))
