"""Which site a device belongs to: the one rule that splits a fleet among sites.

A site is a place where devices are, with its own Kafka cluster and worker; each device sends
to exactly one site, chosen by a stable hash of its id (CRC-32, the same in every process and
language, unlike Python's salted ``hash``), so the simulator, a CSV replay and any gateway agree
without a lookup table, and a device never moves while the number of sites stays the same.

>>> [site_of(f"device_{i}", 2) for i in range(8)]
[2, 2, 2, 2, 1, 1, 1, 1]
>>> site_of("device_7", 1)
1
>>> sorted({site_of(f"device_{i}", 3) for i in range(100)})  # every site gets devices
[1, 2, 3]
"""

from __future__ import annotations

import zlib


def site_of(device_id: str, sites: int) -> int:
    """The site (1..``sites``) of ``device_id``: CRC-32 of its UTF-8 bytes, modulo ``sites``, plus 1.

    >>> site_of("device_0", 2), site_of("device_0", 4)
    (2, 4)
    """
    if sites < 1:
        raise ValueError(f"sites must be at least 1, got {sites}")
    return zlib.crc32(device_id.encode("utf-8")) % sites + 1
