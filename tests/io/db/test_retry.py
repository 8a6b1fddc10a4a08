"""Backoff and the write-until-committed loop, with real failures (no database needed)."""

from __future__ import annotations

import asyncio
import logging
import random
import threading

import pytest
from sqlalchemy import exc as sa_exc

from flead_app.io.db.retry import (
    WriteAborted,
    backoff_delays,
    describe_error,
    is_transient,
    write_with_retry,
)


def operational(msg: str = "connection refused") -> sa_exc.OperationalError:
    return sa_exc.OperationalError("INSERT ...", {"secret_param": 1}, Exception(msg))


def test_backoff_doubles_from_half_a_second_to_thirty_with_jitter():
    delays = backoff_delays(rng=random.Random(1))
    got = [next(delays) for _ in range(12)]
    nominal = [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30]
    for d, n in zip(got, nominal, strict=True):
        assert 0.8 * n <= d <= min(30.0, 1.2 * n)
    assert len(set(got)) == len(got)  # jittered, not in lock step


def test_transient_classification():
    assert is_transient(operational())
    assert is_transient(sa_exc.InterfaceError("x", {}, Exception("connection already closed")))
    assert not is_transient(sa_exc.IntegrityError("x", {}, Exception("null value")))
    assert not is_transient(ValueError("bad row"))


def test_describe_error_hides_sql_parameters_and_passwords():
    text = describe_error(operational('could not connect to "postgresql://u:hunter2@db:5432/x" password=hunter2'))
    assert "hunter2" not in text
    assert "INSERT" not in text and "secret_param" not in text
    assert "u:***@db" in text


def test_retries_until_written_and_returns_the_result(caplog):
    calls = []

    def flaky(rows):
        calls.append(rows)
        if len(calls) < 3:
            raise operational()
        return len(rows)

    with caplog.at_level(logging.WARNING, logger="flead_app.io.db.retry"):
        assert write_with_retry(flaky, [1, 2, 3], base_delay=0.01, max_delay=0.02) == 3
    assert len(calls) == 3
    assert sum("retrying in" in r.getMessage() for r in caplog.records) == 2  # once per failed attempt


def test_non_transient_errors_are_raised_at_once():
    calls = []

    def broken(rows):
        calls.append(1)
        raise sa_exc.IntegrityError("x", {}, Exception("violates not-null"))

    with pytest.raises(sa_exc.IntegrityError):
        write_with_retry(broken, [1], base_delay=0.01)
    assert calls == [1]


def test_stop_event_aborts_a_write_that_never_succeeds():
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()

    def down(rows):
        raise operational()

    with pytest.raises(WriteAborted):
        write_with_retry(down, [1], stop, base_delay=0.05, max_delay=0.1)


def test_from_an_event_loop_the_retry_runs_in_the_executor_and_the_loop_keeps_going():
    """The sink's use: the write retries in a thread while the event loop goes on serving."""

    async def scenario():
        calls, ticks = [], []

        def flaky(rows):
            calls.append(1)
            if len(calls) < 3:
                raise operational()
            return 7

        async def tick():
            while len(calls) < 3:
                ticks.append(1)
                await asyncio.sleep(0.005)

        loop = asyncio.get_running_loop()
        ticker = asyncio.create_task(tick())
        result = await loop.run_in_executor(None, lambda: write_with_retry(flaky, [], base_delay=0.02))
        await ticker
        return result, len(ticks)

    result, ticks = asyncio.run(scenario())
    assert result == 7 and ticks > 1
