"""A short ``flead chaos`` run in CI: worker SIGKILLs every 20-40 s and five bounces of a readings
partition's leader broker under a steady load, then every count checked exactly against a replay
of the readings topic (``flead_app.chaos``). ``flead chaos --minutes 10`` is the longer version."""

from __future__ import annotations

import sys

import pytest

from flead_app.chaos import BOUNCES, format_report, run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.cluster4]


def test_a_short_chaos_run_loses_nothing_and_duplicates_nothing(stack):
    report = run_chaos(minutes=1.5, devices=60, rate=3000.0, seed=1, out=sys.stdout)
    text = format_report(report)
    print(text)
    assert sum(e.what.startswith("broker") for e in report.events) == BOUNCES
    assert any(e.what.startswith("worker") for e in report.events)
    assert report.numbers["readings_in_topic"] > 0 and report.numbers["local_models_replayed"] > 0
    assert report.ok, text
