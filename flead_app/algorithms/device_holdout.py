"""Held-out *devices*: a stable share of the fleet whose readings never train any model.

Holding out readings (``holdout.py``) leaves every device's model trained on its neighbours in
time, so a held-out reading inside a labelled window is scored by models that trained on the
same window: on long incidents (NAB) that measures memory, not detection. A held-out device is
unseen by every model, local or central, which is what a new device joining the fleet is.

A device is held out when a stable hash (CRC-32) of ``salt|device_id`` (just ``device_id`` for
the official split, salt "") falls below ``percent`` of 10,000 buckets. ``FLEAD_HOLDOUT_DEVICE_PERCENT``
(default 20) is the setting; other salts give other splits for robustness checks.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

DEFAULT_PERCENT = 20.0


def device_held_out(device_id: str, percent: float = DEFAULT_PERCENT, salt: str = "") -> bool:
    """Whether ``device_id`` is held out.

    >>> device_held_out("nab_tweets_Twitter_volume_IBM"), device_held_out("nab_tweets_Twitter_volume_AAPL")
    (True, False)
    >>> device_held_out("anything", 0.0), device_held_out("anything", 100.0)
    (False, True)
    """
    if percent <= 0:
        return False
    key = (f"{salt}|{device_id}" if salt else device_id).encode()
    return zlib.crc32(key) % 10_000 < int(round(percent * 100))


def held_out_devices(device_ids: Sequence[str], percent: float = DEFAULT_PERCENT, salt: str = "") -> np.ndarray:
    """``device_held_out`` for each id, as a bool array in the same order."""
    return np.array([device_held_out(d, percent, salt) for d in device_ids], dtype=bool)
