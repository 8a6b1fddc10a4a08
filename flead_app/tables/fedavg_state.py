"""Federated-averaging state: the buffer of local updates, the version counter and history.

A single row (key ``fleet``) on the partition that carries the fleet's local updates. The
design card asks for a windowed table; faust-streaming's windowed tables have open bugs (close
callbacks only fire after a later event, issue 250; windows that never expire after recovery
with RocksDB, issue 385), so this is a plain changelogged table holding the buffer plus a timer
that asks for a partial flush after ``FLEAD_FEDAVG_TIMEOUT_S``. The version counter lives in
the same row, so it survives restarts with the buffer, atomically. The value is a
``flead_app.tables.rows.FedAvgRow``.
"""

from flead_app.app import app, settings
from flead_app.models import FLEET_KEY

__all__ = ["FLEET_KEY", "fedavg_state"]

fedavg_state = app.Table(
    "fedavg_state",
    default=None,
    key_type=bytes,  # Faust picks the "raw" codec for bytes, for the store and the changelog
    value_type=bytes,
    partitions=settings.partitions,
    help="Key 'fleet': buffered local updates (up to FLEAD_FEDAVG_BUFFER), the global version "
    "and aggregation round counters, the time the oldest buffered update arrived, last offset.",
)
