"""`flead bench` end to end on the running stack, short: every figure of the table is measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_measures_every_figure(stack, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "flead_app.cli", "bench", "--devices", "300", "--duration", "8",
           "--no-single", "--batch", "20", "--latency-seconds", "4", "--fedavg-updates", "2000",
           "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "pipeline/s" in done.stdout  # the table is printed

    doc = json.loads(out.read_text())
    assert doc["machine"]["cpus"] >= 1 and doc["duration_s"] == 8
    result, two_workers = doc["results"]
    assert result["devices"] == 300 and result["batch"] == 20 and not result["notes"]
    assert result["readings"] > 0 and result["messages"] * 20 == result["readings"]
    # the full pipeline cannot outrun a bare consumer that only decodes the same messages
    assert 0 < result["pipeline_readings_per_s"] < result["ceiling_readings_per_s"]
    assert result["ratio_to_ceiling"] == pytest.approx(
        result["pipeline_readings_per_s"] / result["ceiling_readings_per_s"], abs=1e-3
    )
    # 20 readings per message and a round once 50 are pending: a round every 3 messages (60
    # readings) per device that trains (held-out devices never do), less each unfinished last round
    from flead_app.algorithms.holdout import device_held_out
    from flead_app.settings import Settings

    training = sum(not device_held_out(f"device_{i}", Settings().holdout_device_percent) for i in range(300))
    assert result["local_models"] >= result["readings"] * training // 300 // 60 - training
    assert result["global_models"] >= 1 and result["fedavg_ms_per_aggregation"] > 0
    assert result["anomalies"] > 0 and result["latency_samples"] > 0
    assert 0 < result["anomaly_latency_ms_p50"] <= result["anomaly_latency_ms_p99"]
    assert result["worker_peak_rss_mb"] > 50

    # the second ceiling: a bare Faust agent over the same messages outruns the pipeline
    assert result["faust_ceiling_readings_per_s"] > result["pipeline_readings_per_s"]
    assert result["ratio_to_faust_ceiling"] == pytest.approx(
        result["pipeline_readings_per_s"] / result["faust_ceiling_readings_per_s"], abs=1e-3
    )
    # two workers of one app share the topic's partitions and both process readings
    assert two_workers["workers"] == 2 and two_workers["pipeline_readings_per_s"] > 0
    assert len(two_workers["readings_per_worker"]) == 2 and min(two_workers["readings_per_worker"]) > 0
    assert sum(two_workers["readings_per_worker"]) >= two_workers["readings"]
    # FedAvg's ceiling on copies of the run's local updates, against the rate readings make
    fedavg = doc["fedavg"]
    assert fedavg["updates"] >= 2000 and fedavg["updates_per_s"] > 0 and fedavg["updates_per_s_full_worker"] > 0
    assert fedavg["local_updates_per_reading"] == pytest.approx(result["local_models"] / result["readings"])
    assert fedavg["headroom_at_target"] == pytest.approx(
        fedavg["updates_per_s"] / fedavg["local_updates_per_s_at_target"], rel=0.01
    )
