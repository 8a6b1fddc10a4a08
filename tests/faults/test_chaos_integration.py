"""A short ``flead chaos`` run in CI: worker SIGKILLs every 20-40 s and two bounces of a readings
partition's leader broker under a steady load, then every count checked exactly against a replay
of the readings topic (``flead_app.chaos``). A bounce (SIGKILL, restart, every replica back in
sync) takes 40-50 s on the 2-core machine, so the five bounces of the full run do not fit the CI
budget: ``flead chaos --minutes 5`` (five bounces) is the longer version."""

from __future__ import annotations

import sys

import pytest

from flead_app.chaos import format_report, run_chaos

BOUNCES = 2

pytestmark = [pytest.mark.integration, pytest.mark.cluster4]


def test_a_short_chaos_run_loses_nothing_and_duplicates_nothing(stack):
    report = run_chaos(minutes=1.5, devices=60, rate=3000.0, seed=1, out=sys.stdout, bounces=BOUNCES)
    text = format_report(report)
    print(text)
    assert sum(e.what.startswith("broker") for e in report.events) == BOUNCES
    assert any(e.what.startswith("worker") for e in report.events)
    assert report.numbers["readings_in_topic"] > 0 and report.numbers["local_models_replayed"] > 0
    assert report.ok, text
