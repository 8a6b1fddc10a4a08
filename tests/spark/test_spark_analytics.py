from datetime import UTC, datetime, timedelta

import pytest

from flead_app.spark_support.analytics import (
    SCOPE_DEVICE,
    SCOPE_SKIPPED,
    ScopeStats,
    Window,
    analytics_rows,
    broker_of,
    last_complete_hour,
    parse_time,
    resolve_window,
)


def test_last_complete_hour_ends_at_the_current_hour():
    w = last_complete_hour(datetime(2025, 11, 7, 15, 22, 31, tzinfo=UTC))
    assert w.start == datetime(2025, 11, 7, 14, tzinfo=UTC) and w.end == datetime(2025, 11, 7, 15, tzinfo=UTC)
    on_the_hour = last_complete_hour(datetime(2025, 11, 7, 15, tzinfo=UTC))
    assert on_the_hour.end == datetime(2025, 11, 7, 15, tzinfo=UTC)
    assert w.minutes == 60.0 and w.end_ms - w.start_ms == 3_600_000


def test_resolve_window_needs_both_ends_in_order():
    now = datetime(2025, 11, 7, 15, 5, tzinfo=UTC)
    assert resolve_window(None, None, now) == last_complete_hour(now)
    w = resolve_window("2025-11-07T10:00:00Z", "2025-11-07T10:30:00+00:00", now)
    assert w.minutes == 30.0
    assert resolve_window("2025-11-07T10:00:00", "2025-11-07T11:00:00", now).start.tzinfo is not None
    with pytest.raises(ValueError):
        resolve_window("2025-11-07T10:00:00Z", None, now)
    with pytest.raises(ValueError):
        resolve_window("2025-11-07T11:00:00Z", "2025-11-07T10:00:00Z", now)


def test_parse_time_converts_offsets_to_utc():
    assert parse_time("2025-11-07T17:00:00+02:00") == datetime(2025, 11, 7, 15, tzinfo=UTC)


def test_broker_is_the_partition_leader_or_unknown():
    assert broker_of({0: 2, 1: 3}, 1) == 3
    assert broker_of({0: 2}, 7) == -1


def test_rows_carry_rates_per_minute_and_skipped_counts():
    start = datetime(2025, 11, 7, 14, tzinfo=UTC)
    w = Window(start, start + timedelta(minutes=30))
    now = datetime(2025, 11, 7, 15, tzinfo=UTC)
    rows = analytics_rows(
        w,
        [
            ScopeStats(SCOPE_DEVICE, "d1", 60, 1.0, 0.5, 0.0, 2.0, 3),
            ScopeStats(SCOPE_DEVICE, "d2", 1, 5.0, None, 5, 5, 0),
        ],
        {"control": 2, "invalid": 1},
        now,
    )
    assert len(rows) == 4
    d1 = rows[0]
    assert d1["readings_per_minute"] == 2.0 and d1["anomaly_rate"] == 0.05 and d1["scope_key"] == "d1"
    assert rows[1]["std"] is None
    skipped = {r["scope_key"]: r["count"] for r in rows if r["scope"] == SCOPE_SKIPPED}
    assert skipped == {"control": 2, "invalid": 1}
    assert all(r["window_start"] == start and r["computed_at"] == now for r in rows)


def test_an_empty_fleet_row_has_no_rate_of_anomalies():
    start = datetime(2025, 11, 7, 14, tzinfo=UTC)
    (row,) = analytics_rows(
        Window(start, start + timedelta(hours=1)), [ScopeStats("fleet", "all", 0, None, None, None, None, 0)], {}, start
    )
    assert row["count"] == 0 and row["anomaly_rate"] is None and row["readings_per_minute"] == 0.0


def test_a_sites_rows_keep_to_their_site():
    start = datetime(2025, 11, 7, 14, tzinfo=UTC)
    stats = [ScopeStats(SCOPE_DEVICE, "d1", 6, 1.0, 0.5, 0.0, 2.0, 0), ScopeStats("partition", "3", 6, 1, 0.5, 0, 2, 0),
             ScopeStats("fleet", "all", 6, 1.0, 0.5, 0, 2, 0)]  # fmt: skip
    one, two = (analytics_rows(Window(start, start + timedelta(hours=1)), stats, {"invalid": 1}, start, site=k)
                for k in (1, 2))  # fmt: skip
    assert [r["scope_key"] for r in one] == ["d1", "site1:3", "site1:all", "site1:invalid"]
    assert {r["site"] for r in two} == {2}
    # what the natural key (window, scope, key) holds apart: every row of the two sites but their devices'
    keys = lambda rows: {(r["scope"], r["scope_key"]) for r in rows if r["scope"] != SCOPE_DEVICE}  # noqa: E731
    assert not keys(one) & keys(two)
