"""Which readings and which devices no model may train on: the held-out splits every evaluation uses.

Held-out readings (``holdout_mask``, ``FLEAD_HOLDOUT_PERCENT``): a reading is held out when a
stable hash of (device_id, timestamp in ms) falls below ``percent`` of 100. The rule needs no
coordination: the worker applies it before buffering a reading for training, and the Spark
evaluation applies it to pick test readings, so the global models, each device's local-only model
and the central baseline are all scored on the same readings, none of which any of them trained
on. Held-out readings are still scored for anomalies.

Held-out devices (``device_held_out``, ``FLEAD_HOLDOUT_DEVICE_PERCENT``, default 20): holding out
readings leaves every device's model trained on its neighbours in time, so a held-out reading
inside a labelled window is scored by models that trained on the same window: on long incidents
(NAB) that measures memory, not detection. A held-out device is unseen by every model, local or
central, which is what a new device joining the fleet is: it scores and alarms, but never
trains. A device is held out when CRC-32 of ``salt|device_id`` (just ``device_id`` with the
default salt "", the official NAB split of docs/learning.md) falls below ``percent`` of 10,000
buckets; other salts (``FLEAD_HOLDOUT_DEVICE_SALT``) give other splits for robustness checks.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

DEFAULT_DEVICE_PERCENT = 20.0


def holdout_mask(device_id: str, timestamps_s: np.ndarray, percent: float = 20.0) -> np.ndarray:
    """True for the readings of ``device_id`` at ``timestamps_s`` (epoch seconds) that are held out.

    >>> holdout_mask("device_7", 1_700_000_000 + np.arange(10.0)).tolist()
    [False, False, False, True, False, False, False, True, False, False]
    >>> round(float(holdout_mask("device_7", 1_700_000_000 + np.arange(10_000.0)).mean()), 2)
    0.2
    """
    if percent <= 0:
        return np.zeros(len(timestamps_s), dtype=bool)
    prefix = device_id.encode() + b"|"
    millis = np.rint(np.asarray(timestamps_s, dtype=np.float64) * 1000.0).astype(np.int64)
    buckets = np.fromiter((zlib.crc32(prefix + str(ms).encode()) % 10_000 for ms in millis.tolist()), np.int64)
    return buckets < int(round(percent * 100))


def device_held_out(device_id: str, percent: float = DEFAULT_DEVICE_PERCENT, salt: str = "") -> bool:
    """Whether ``device_id`` is held out: it never trains any model.

    >>> device_held_out("nab_tweets_Twitter_volume_IBM"), device_held_out("nab_tweets_Twitter_volume_AAPL")
    (True, False)
    >>> device_held_out("anything", 0.0), device_held_out("anything", 100.0)
    (False, True)
    """
    if percent <= 0:
        return False
    key = (f"{salt}|{device_id}" if salt else device_id).encode()
    return zlib.crc32(key) % 10_000 < int(round(percent * 100))


def held_out_devices(device_ids: Sequence[str], percent: float = DEFAULT_DEVICE_PERCENT, salt: str = "") -> np.ndarray:
    """``device_held_out`` for each id, as a bool array in the same order.

    >>> held_out_devices(["nab_tweets_Twitter_volume_IBM", "nab_tweets_Twitter_volume_AAPL"]).tolist()
    [True, False]
    """
    return np.array([device_held_out(d, percent, salt) for d in device_ids], dtype=bool)
