"""``flead demo`` as a newcomer runs it: it reaches the report soon after the simulator stops,
never waits on a lag that cannot fall, and starts from an empty stack.

The demo runs on the suite's stack with topics, an app id and a database schema of its own
(so resetting "the stack" here empties only this test's pipeline), for one minute, without the
Spark evaluation (whose own tests are in tests/spark).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, func, select

from flead_app.io.db.schema import anomalies, local_models

pytestmark = pytest.mark.integration


def test_a_one_minute_demo_reaches_the_report_within_30_s_of_the_simulator(pipeline_env, db_url):
    # the description's z-rule, as in the other pipeline tests: this test is about the demo's
    # plumbing and timing, and the model rule raised nothing in a loaded run's minute (0 anomalies
    # stored: its first published thresholds came late); the model rule's alarms are tested in
    # tests/agents and shown by `flead demo` itself
    env = {**os.environ, **pipeline_env, "FLEAD_DB_URL": db_url, "FLEAD_FEDAVG_TIMEOUT_S": "120",
           "FLEAD_ALARM_RULE": "zrule"}  # fmt: skip
    # single readings: 300 devices at 6,000/min send 20 messages each in the minute, so in-band
    # rounds and global versions happen within it (in the demo's default messages of 10 a device
    # sends 2, and a minute ends before its first round)
    cmd = [sys.executable, "-m", "flead_app.cli", "demo", "--minutes", "1", "--no-evaluate", "--keep-running",
           "--devices", "300", "--rate", "6000", "--batch", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.monotonic(), line.rstrip()))
    assert proc.wait(timeout=600) == 0, "\n".join(text for _, text in lines)
    text = "\n".join(t for _, t in lines)
    assert "waiting for the worker to catch up" not in text and "had not finished" not in text, text
    assert "starting from an empty stack" in text
    assert "the worker has processed and stored everything produced" in text, text
    sim_end = next(t for t, line in lines if line.startswith("flead simulate:"))
    report = next(t for t, line in lines if line.startswith("flead demo: report"))
    assert report - sim_end <= 30.0, f"{report - sim_end:.1f} s from the simulator's end to the report"
    assert not re.search(r"Updating subscribed topics|INFO aiokafka", text), "library chatter on the terminal"
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(local_models)).scalar_one() > 0
        assert conn.execute(select(func.count()).select_from(anomalies)).scalar_one() > 0
    engine.dispose()
