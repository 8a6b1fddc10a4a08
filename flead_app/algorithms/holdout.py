"""Which readings and devices no model may train on: the held-out splits every evaluation uses.

A reading is held out when a stable hash of (device_id, timestamp in ms) falls below
``percent`` of 100. The rule needs no coordination: the worker applies it before buffering a
reading for training, and the Spark evaluation applies it to pick test readings, so the global
models, each device's local-only model and the central baseline are all scored on the same
readings, none of which any of them trained on. Held-out readings are still scored for anomalies.
"""

from __future__ import annotations

import zlib

import numpy as np


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


def device_held_out(device_id: str, percent: float = 20.0) -> bool:
    """Whether ``device_id`` is one of the held-out devices (a stable ``percent`` of all): none of
    its readings trains any model, local or central, so the global model can be judged on devices
    it has never seen.

    >>> device_held_out("device_0"), device_held_out("device_1"), device_held_out("device_1", 0.0)
    (False, True, False)
    >>> sum(device_held_out(f"device_{i}") for i in range(10_000)) / 10_000
    0.197
    """
    if percent <= 0:
        return False
    return zlib.crc32(device_id.encode()) % 10_000 < int(round(percent * 100))
