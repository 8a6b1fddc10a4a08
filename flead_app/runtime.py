"""What one worker process knows besides its tables: counters, the newest global model, leaders.

A worker runs several agents and tasks in one event loop. They share exactly this: each agent
counts what it did in its own group of ``stats`` (read by ``/flead/stats`` and the demo), the
FedAvg agent and the global-model follower offer new global versions to ``global_model`` (read
by the detector when a round starts), and the follower keeps ``leaders`` (read when an anomaly
records the broker of its partition). One ``WorkerRuntime`` is made with the app
(``flead_app.app.runtime``) and handed to whoever needs it; nothing else is shared.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flead_app.algorithms.device import GlobalParams
from flead_app.models import GlobalModel


class Stats:
    """Named groups of counters, and gauges computed when read.

    >>> stats = Stats()
    >>> stats.counter("detector")["readings"] += 3
    >>> stats.gauge("answer", lambda: 42)
    >>> stats.snapshot()
    {'detector': {'readings': 3}, 'answer': 42}
    """

    def __init__(self) -> None:
        self._counters: dict[str, Counter[str]] = {}
        self._gauges: dict[str, Callable[[], Any]] = {}

    def counter(self, group: str) -> Counter[str]:
        return self._counters.setdefault(group, Counter())

    def gauge(self, name: str, read: Callable[[], Any]) -> None:
        self._gauges[name] = read

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: dict(c) for name, c in self._counters.items()}
        out.update({name: read() for name, read in self._gauges.items()})
        return out


class GlobalModelCache:
    """The newest global model this worker has seen (from FedAvg here or the follower).

    >>> cache = GlobalModelCache()
    >>> m = GlobalModel(2, 2, [0.1, 0.2, 0.3, 0.4], -3.0, 0.9, 5, 100, "2025-01-01T00:00:00.000Z")
    >>> cache.offer(m), cache.offer(m), cache.version
    (True, False, 2)
    """

    def __init__(self) -> None:
        self.params: GlobalParams | None = None
        self.accuracy: float | None = None

    @property
    def version(self) -> int:
        return self.params.version if self.params else 0

    def offer(self, model: GlobalModel) -> bool:
        """Keep ``model`` if it is newer than what is known; whether it was."""
        if model.global_version <= self.version:
            return False
        self.params = GlobalParams.from_record(model)
        self.accuracy = model.accuracy
        return True


@dataclass
class WorkerRuntime:
    stats: Stats = field(default_factory=Stats)
    global_model: GlobalModelCache = field(default_factory=GlobalModelCache)
    #: partition of the readings topic -> id of the broker leading it (refreshed by the follower)
    leaders: dict[int, int] = field(default_factory=dict)

    def broker_of(self, partition: int) -> int:
        """The broker leading ``partition`` of the readings topic; -1 while unknown."""
        return self.leaders.get(partition, -1)
