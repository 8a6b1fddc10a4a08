"""``flead spark schedule``: hourly analytics and evaluation of new global versions, forever.

The scheduler is its own process and runs each job as a child process (``flead spark analytics``
/ ``flead spark evaluate``), so a job that fails, hangs or crashes its JVM never touches the
stream workers nor the scheduler: it is logged, killed after ``job_timeout_s``, and retried
after an exponential backoff. Analytics covers every complete hour in order (a window becomes
due ``delay_s`` after it ends, giving late records time to arrive), catching up at most
``max_catchup_hours`` after a pause. Whether evaluation is due is a cheap SQL query every
``poll_s`` seconds; Spark starts only when a global version waits. The last analytics window
done is kept in ``$FLEAD_HOME/spark-schedule.json`` so that a restart does not redo hours
(redoing one would only replace its rows).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flead_app.spark_support.analytics import Window, last_complete_hour

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)


def backoff_s(failures: int, base_s: float, cap_s: float) -> float:
    """0 before the first failure, then base, 2 x base, 4 x base ... up to ``cap_s``."""
    if failures <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2 ** (failures - 1)))


def next_window(last_end: datetime | None, now: datetime, delay_s: float, max_catchup_hours: int) -> Window | None:
    """The next hour to analyse: after ``last_end``, complete for ``delay_s``, not too far back."""
    newest = last_complete_hour(now - timedelta(seconds=delay_s))
    if last_end is None:
        return newest
    oldest_start = newest.start - (max(1, max_catchup_hours) - 1) * HOUR
    start = max(last_end, oldest_start)
    if start > newest.start:
        return None
    start = start.replace(minute=0, second=0, microsecond=0)
    return Window(start, start + HOUR)


@dataclass
class Task:
    """Failure count and earliest next attempt of one kind of job."""

    failures: int = 0
    retry_at: float = 0.0

    def succeeded(self) -> None:
        self.failures, self.retry_at = 0, 0.0

    def failed(self, now: float, base_s: float, cap_s: float) -> float:
        self.failures += 1
        wait = backoff_s(self.failures, base_s, cap_s)
        self.retry_at = now + wait
        return wait

    def ready(self, now: float) -> bool:
        return now >= self.retry_at


@dataclass
class ScheduleConfig:
    poll_s: float = 60.0
    delay_s: float = 120.0
    backoff_base_s: float = 30.0
    backoff_cap_s: float = 900.0
    job_timeout_s: float = 3600.0
    max_catchup_hours: int = 24
    tick_s: float = 5.0
    job_args: list[str] = field(default_factory=list)  # extra args for each job, e.g. --master


def run_job(args: list[str], timeout_s: float) -> int:
    """Run ``flead spark <args>`` as a child; its exit code (124 on timeout, after killing it)."""
    cmd = [sys.executable, "-m", "flead_app.cli", "spark", *args]
    log.info("running: flead spark %s", " ".join(args))
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.error("flead spark %s ran over %.0f s: killing it", args[0], timeout_s)
        proc.kill()
        proc.wait()
        return 124


class Scheduler:
    def __init__(
        self,
        cfg: ScheduleConfig,
        state_file: Path,
        pending: Callable[[], int],
        runner: Callable[[list[str], float], int] = run_job,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.state_file = state_file
        self.pending = pending
        self.runner = runner
        self.clock = clock
        self.analytics = Task()
        self.evaluation = Task()
        self.next_poll = 0.0
        self.last_end = self._load()
        self.stopping = False

    def _load(self) -> datetime | None:
        try:
            raw = json.loads(self.state_file.read_text()).get("analytics_done_until")
            return datetime.fromisoformat(raw) if raw else None
        except (OSError, ValueError):
            return None

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"analytics_done_until": self.last_end.isoformat() if self.last_end else None}))
        tmp.replace(self.state_file)

    def step(self) -> None:
        """Do whatever is due now (at most one analytics window and one evaluation)."""
        now = self.clock()
        cfg = self.cfg
        window = next_window(self.last_end, datetime.fromtimestamp(now, UTC), cfg.delay_s, cfg.max_catchup_hours)
        if window is not None and self.analytics.ready(now):
            args = ["analytics", "--start", window.start.isoformat(), "--end", window.end.isoformat(), *cfg.job_args]
            rc = self.runner(args, cfg.job_timeout_s)
            if rc == 0:
                self.analytics.succeeded()
                self.last_end = window.end
                self._save()
            else:
                wait = self.analytics.failed(self.clock(), cfg.backoff_base_s, cfg.backoff_cap_s)
                log.error("analytics for %s failed (exit %d, failure %d): retry in %.0f s",
                          window, rc, self.analytics.failures, wait)  # fmt: skip
        now = self.clock()
        if now >= self.next_poll and self.evaluation.ready(now):
            self.next_poll = now + cfg.poll_s
            try:
                waiting = self.pending()
            except Exception as err:  # the database may be restarting: try again later
                wait = self.evaluation.failed(now, cfg.backoff_base_s, cfg.backoff_cap_s)
                log.error("cannot count pending global versions (%s): retry in %.0f s", err, wait)
                return
            if waiting:
                log.info("%d global version(s) wait for evaluation", waiting)
                rc = self.runner(["evaluate", *cfg.job_args], cfg.job_timeout_s)
                if rc == 0:
                    self.evaluation.succeeded()
                else:
                    wait = self.evaluation.failed(self.clock(), cfg.backoff_base_s, cfg.backoff_cap_s)
                    log.error("evaluation failed (exit %d, failure %d): retry in %.0f s",
                              rc, self.evaluation.failures, wait)  # fmt: skip

    def run_forever(self) -> None:
        def stop(signum: int, _frame: object) -> None:
            log.info("signal %d: stopping after the current job", signum)
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("scheduler started: analytics hourly (+%.0f s), evaluation polled every %.0f s",
                 self.cfg.delay_s, self.cfg.poll_s)  # fmt: skip
        while not self.stopping:
            self.step()  # cheap when nothing is due: a date computation, a query every poll_s
            for _ in range(int(self.cfg.tick_s)):
                if self.stopping:
                    break
                time.sleep(1.0)
