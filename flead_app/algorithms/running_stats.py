"""Count, mean and sum of squared deviations of a device's readings (Welford's algorithm).

``detection.score_batch`` updates these reading by reading (it has to: the robust baseline
decides per reading what it lets in), so this module only holds the value type and its
derived spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RunningStats:
    """Count, mean and sum of squared deviations (M2) of everything seen so far.

    >>> s = RunningStats(count=3, mean=2.0, m2=2.0)  # the readings 1, 2, 3
    >>> s.variance, s.std
    (1.0, 1.0)
    >>> RunningStats(count=1, mean=5.0).variance  # one reading has no spread yet
    0.0
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); 0 for fewer than two readings."""
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)
