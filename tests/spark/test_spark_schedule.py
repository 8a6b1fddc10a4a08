from datetime import UTC, datetime, timedelta

from flead_app.spark_support.schedule import ScheduleConfig, Scheduler, Task, backoff_s, next_window

H = timedelta(hours=1)


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_s(n, 30, 200) for n in range(6)] == [0, 30, 60, 120, 200, 200]


def test_next_window_waits_for_the_delay_then_catches_up_in_order():
    now = datetime(2025, 11, 7, 15, 1, tzinfo=UTC)
    # 15:01 with a 2 min delay: 14:00-15:00 is not due yet, 13:00-14:00 is
    assert next_window(None, now, 120, 24).start == datetime(2025, 11, 7, 13, tzinfo=UTC)
    assert next_window(None, now + timedelta(minutes=2), 120, 24).start == datetime(2025, 11, 7, 14, tzinfo=UTC)
    done = datetime(2025, 11, 7, 10, tzinfo=UTC)
    assert next_window(done, now, 0, 24).start == done
    assert next_window(datetime(2025, 11, 7, 15, tzinfo=UTC), now, 0, 24) is None
    # after a long pause only the last max_catchup_hours are redone
    assert next_window(done - 100 * H, now, 0, 3).start == datetime(2025, 11, 7, 12, tzinfo=UTC)


def test_task_backoff_and_recovery():
    t = Task()
    assert t.ready(0)
    assert t.failed(100, 10, 1000) == 10 and not t.ready(105) and t.ready(110)
    assert t.failed(110, 10, 1000) == 20
    t.succeeded()
    assert t.failures == 0 and t.ready(0)


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def test_scheduler_runs_each_hour_once_retries_failures_and_evaluates_when_versions_wait(tmp_path):
    clock = Clock(datetime(2025, 11, 7, 15, 5, tzinfo=UTC).timestamp())
    calls, results = [], []
    pending = [0]

    def runner(args, timeout):
        calls.append(args)
        return results.pop(0) if results else 0

    cfg = ScheduleConfig(poll_s=60, delay_s=120, backoff_base_s=30, backoff_cap_s=300, job_args=["--master", "m"])
    state = tmp_path / "s.json"
    s = Scheduler(cfg, state, lambda: pending[0], runner, clock)
    s.step()
    assert calls == [["analytics", "--start", "2025-11-07T14:00:00+00:00", "--end", "2025-11-07T15:00:00+00:00",
                      "--master", "m"]]  # fmt: skip
    s.step()
    assert len(calls) == 1  # the hour is done, nothing pending
    # next hour's job fails, is retried after the backoff, then succeeds
    clock.t += 3600
    results[:] = [1]
    s.step()
    assert len(calls) == 2 and s.analytics.failures == 1
    clock.t += 10
    s.step()
    assert len(calls) == 2
    clock.t += 30
    s.step()
    assert len(calls) == 3 and s.analytics.failures == 0
    # a restart reads where analytics got to
    assert Scheduler(cfg, state, lambda: 0, runner, clock).last_end == datetime(2025, 11, 7, 16, tzinfo=UTC)
    # evaluation runs when versions wait, on the poll interval
    pending[0] = 2
    clock.t += 60
    s.step()
    assert calls[-1] == ["evaluate", "--master", "m"]
    s.step()
    assert calls[-1] == ["evaluate", "--master", "m"] and len(calls) == 4  # not before poll_s


def test_a_database_error_while_polling_backs_off(tmp_path):
    clock = Clock(datetime(2025, 11, 7, 15, 5, tzinfo=UTC).timestamp())
    calls = []

    def broken():
        raise OSError("connection refused")

    s = Scheduler(ScheduleConfig(), tmp_path / "s.json", broken, lambda a, t: calls.append(a) or 0, clock)
    s.step()
    assert s.evaluation.failures == 1 and [c[0] for c in calls] == ["analytics"]
