"""Hourly stream analytics: which readings a window holds, and the rows stream_analytics gets.

Definitions (docs/spark.md repeats them for dashboard readers):

* A window ``[start, end)`` holds the messages whose Kafka record timestamp (producer create
  time, or broker append time when the topic uses LogAppendTime) falls inside it: when the
  reading entered the stream, not the device clock, so a replay of 2013 data lands in the hour
  it was replayed. The default window is the last complete hour (UTC).
* A batch message counts as its readings; control records and invalid messages hold none and
  are counted in rows of scope ``skipped`` (keys ``control``, ``invalid``; ``count`` = messages).
* Per scope (``device``, ``partition``, ``broker`` and ``fleet``/``all``): count, mean, std
  (sample, ddof=1; null below 2 readings), min, max of the raw values, readings per minute
  (count / window length in minutes) and the anomaly rate. Partition, broker and fleet rows pool
  raw values of different devices, so their mean/std mix units; compare counts and rates there.
* Anomaly rate: the share of readings whose |z| exceeds ``FLEAD_Z_THRESHOLD`` against their own
  device's mean and std over the window; devices with fewer than ``FLEAD_MIN_HISTORY`` readings
  in the window (or no spread) contribute readings but no anomalies. It needs no labels, so it
  is defined for unlabelled fleets too; labelled quality is the evaluation's job.
* Broker of a partition: the broker that leads it in Kafka's metadata when the job runs
  (asked with aiokafka in the driver). Devices map to partitions by key hash and partitions to
  brokers by leadership, which moves on failover; the description's "device_id modulo 4" rule
  has no counterpart in Kafka. Unknown leaders are broker -1.

Re-running a window replaces its rows (delete, then insert, in one transaction): with sites, each
site's analytics job (``FLEAD_SITE=k``, on the site's own cluster) replaces only its own rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SCOPE_DEVICE, SCOPE_PARTITION, SCOPE_BROKER, SCOPE_FLEET, SCOPE_SKIPPED = (
    "device",
    "partition",
    "broker",
    "fleet",
    "skipped",
)
FLEET_KEY = "all"
UNKNOWN_BROKER = -1


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    @property
    def minutes(self) -> float:
        return (self.end - self.start).total_seconds() / 60.0

    @property
    def start_ms(self) -> int:
        return int(round(self.start.timestamp() * 1000))

    @property
    def end_ms(self) -> int:
        return int(round(self.end.timestamp() * 1000))

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without an offset is taken as UTC."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def last_complete_hour(now: datetime) -> Window:
    end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return Window(end - timedelta(hours=1), end)


def resolve_window(start: str | None, end: str | None, now: datetime) -> Window:
    """``--start``/``--end`` (both or neither); neither means the last complete hour."""
    if start is None and end is None:
        return last_complete_hour(now)
    if start is None or end is None:
        raise ValueError("give both --start and --end, or neither (the last complete hour)")
    window = Window(parse_time(start), parse_time(end))
    if window.end <= window.start:
        raise ValueError(f"the window must end after it starts: {window}")
    return window


def broker_of(leaders: Mapping[int, int], partition: int) -> int:
    return int(leaders.get(int(partition), UNKNOWN_BROKER))


@dataclass(frozen=True)
class ScopeStats:
    """Aggregates of one scope as Spark computes them."""

    scope: str
    key: str
    count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    anomalies: int


def site_key(scope: str, key: str, site: int | None) -> str:
    """A row's key as stored: a site's partitions, brokers, fleet and skipped counts are its own
    (site 1's partition 3 is not site 2's), so their keys carry the site; device ids are unique.

    >>> site_key("partition", "3", 1), site_key("device", "d7", 1), site_key("broker", "2", None)
    ('site1:3', 'd7', '2')
    """
    return key if site is None or scope == SCOPE_DEVICE else f"site{site}:{key}"


def analytics_rows(
    window: Window, stats: Iterable[ScopeStats], skipped: Mapping[str, int], computed_at: datetime,
    site: int | None = None,
) -> list[dict]:  # fmt: skip
    """Rows of stream_analytics for one window (every scope, plus the skipped-message counts), of
    the central cluster's readings or (``site``) of one site's."""
    minutes = window.minutes
    rows = []
    for s in stats:
        rows.append(
            {
                "window_start": window.start,
                "window_end": window.end,
                "site": site,
                "scope": s.scope,
                "scope_key": site_key(s.scope, s.key, site),
                "count": int(s.count),
                "mean": s.mean,
                "std": s.std,
                "min": s.min,
                "max": s.max,
                "anomaly_rate": s.anomalies / s.count if s.count else None,
                "readings_per_minute": s.count / minutes if minutes > 0 else None,
                "computed_at": computed_at,
            }
        )
    for reason, n in sorted(skipped.items()):
        rows.append(
            {
                "window_start": window.start,
                "window_end": window.end,
                "site": site,
                "scope": SCOPE_SKIPPED,
                "scope_key": site_key(SCOPE_SKIPPED, reason, site),
                "count": int(n),
                "mean": None,
                "std": None,
                "min": None,
                "max": None,
                "anomaly_rate": None,
                "readings_per_minute": None,
                "computed_at": computed_at,
            }
        )
    return rows
