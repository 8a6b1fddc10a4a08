"""Faust tables: per-device state and the federated-averaging buffer.

``faust -A flead_app.app tables`` lists them with their help text.
"""

from flead_app.tables.device_state import device_state
from flead_app.tables.fedavg_state import fedavg_state

__all__ = ["device_state", "fedavg_state"]
