"""Row types of the worker's tables: a pure state plus the Kafka bookkeeping that protects it.

A row remembers the Kafka position of the last message it applied, so a message redelivered
after a crash is skipped instead of applied twice, and the outputs of its recent messages that
Kafka had not acknowledged when the row was written (``flead_app.agents.outbox``), so a skipped
replay can send them again. The learning state inside (``DeviceState``, ``FedBuffState``)
knows nothing of Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from flead_app.algorithms.device import DeviceState
from flead_app.algorithms.fedbuff import FedBuffState

#: one output of one source message: (source offset, topic name, key, value), key and value latin-1
OutboxEntry = tuple[int, str, str, str]


@dataclass(frozen=True)
class Position:
    """Where the last applied message was, and the outputs Kafka had not yet acknowledged."""

    partition: int = -1
    offset: int = -1
    outbox: tuple[OutboxEntry, ...] = ()

    def applied(self, partition: int, offset: int) -> bool:
        """Whether the message at ``partition``/``offset`` is already in the state.

        >>> Position(3, 10).applied(3, 10), Position(3, 10).applied(3, 11), Position(3, 10).applied(2, 5)
        (True, False, False)
        """
        return self.partition == partition and offset <= self.offset

    def to_dict(self) -> dict:
        return {"partition": self.partition, "offset": self.offset, "outbox": [list(e) for e in self.outbox]}

    @classmethod
    def from_dict(cls, d: dict) -> Position:
        return cls(int(d["partition"]), int(d["offset"]), tuple(tuple(e) for e in d["outbox"]))  # type: ignore[misc]


@dataclass(frozen=True)
class DeviceRow:
    """A row of ``device_state``: one device's learning state and its position."""

    state: DeviceState = field(default_factory=DeviceState)
    position: Position = Position()

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"state": self.state.to_dict(), "position": self.position.to_dict()}, option=orjson.OPT_SERIALIZE_NUMPY
        )

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> DeviceRow:
        """The row stored as ``raw``; a new device's empty row for None.

        >>> row = DeviceRow(DeviceState(readings=5), Position(1, 42))
        >>> DeviceRow.from_bytes(row.to_bytes()).position, DeviceRow.from_bytes(None).state.readings
        (Position(partition=1, offset=42, outbox=()), 0)
        """
        if not raw:
            return cls()
        d = orjson.loads(raw)
        return cls(DeviceState.from_dict(d["state"]), Position.from_dict(d["position"]))


@dataclass(frozen=True)
class FedAvgRow:
    """The row of ``fedavg_state`` (key ``fleet``): the FedBuff buffer and version history, and its position."""

    state: FedBuffState
    position: Position = Position()

    def to_bytes(self) -> bytes:
        return orjson.dumps({"state": self.state.to_dict(), "position": self.position.to_dict()})

    @classmethod
    def from_bytes(cls, raw: bytes | None, start: FedBuffState) -> FedAvgRow:
        """The row stored as ``raw``, or a fresh one holding ``start`` for None."""
        if not raw:
            return cls(start)
        d = orjson.loads(raw)
        return cls(FedBuffState.from_dict(d["state"]), Position.from_dict(d["position"]))
