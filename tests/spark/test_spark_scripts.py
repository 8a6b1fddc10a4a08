import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("job", ["analytics", "evaluate", "evaluate_site"])
def test_spark_submit_scripts_parse_their_arguments(job):
    """spark/*.py import flead and share the CLI's options (a full spark-submit run costs a JVM;
    docs/spark.md shows the command)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "spark" / f"{job}.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "--master" in proc.stdout and "--json" in proc.stdout


def test_flead_spark_commands_are_registered():
    proc = subprocess.run(
        [sys.executable, "-m", "flead_app.cli", "spark", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for action in (
        "fetch",
        "jars",
        "analytics",
        "evaluate",
        "evaluate-site",
        "merge-evaluations",
        "schedule",
        "summary",
    ):
        assert action in proc.stdout
