"""Per-device state table (RocksDB-backed, changelogged to Kafka).

One row per device, keyed by the device_id bytes of the readings topic, so the table is
co-partitioned with ``edge-iiot-stream``: a device's row lives on the worker that reads its
partition. The value is a ``flead_app.tables.rows.DeviceRow``: running statistics, detector
memory, model weights and version, the readings buffered for the next local round, and the
Kafka position of the last message applied with its unacknowledged outputs.
"""

from flead_app.app import app, settings

device_state = app.Table(
    "device_state",
    default=None,
    key_type=bytes,  # Faust picks the "raw" codec for bytes, for the store and the changelog
    value_type=bytes,
    partitions=settings.partitions,
    help="Per device: running mean/std, z-score memory, local model (weights, bias, version, "
    "base global version), readings buffered for the next round, last applied offset.",
)
