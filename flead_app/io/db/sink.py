"""The database sink's writing half: Kafka records in, table rows out, nothing lost, nothing twice.

``PostgresSink.write(records)`` parses each record with its topic's record type, maps it to a
row of its table, and inserts every table's rows idempotently (``ON CONFLICT DO NOTHING`` on the
natural keys), so a batch redelivered after a crash or rebalance stores nothing twice. It
returns only after the rows are committed, or raises when the database cannot be reached, and
the caller retries the whole batch (``retry.write_with_retry``).

What the database itself refuses (a value no column can hold, a constraint) is not a reason to
stop storing everything else: such a batch is split in halves, each written on its own, until
the refused rows stand alone; those come back as ``Rejected`` with the database's reason, for
the caller to dead-letter, and the rest is stored. A record that does not parse is rejected
the same way. Shaped like quixstreams' ``BatchingSink.write(batch)``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flead_app.io.db.retry import describe_error, is_transient
from flead_app.io.db.rows import anomaly_row, global_model_row, local_model_row
from flead_app.io.db.store import Database
from flead_app.models import Anomaly, GlobalModel, InvalidRecord, LocalModelUpdate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkRecord:
    """One Kafka record as the sink sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Route:
    """How the records of one topic become rows of one table."""

    table: str
    parse: Callable[[bytes], Any]
    to_row: Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Rejected:
    record: SinkRecord
    reason: str


@dataclass
class SinkResult:
    inserted: Counter[str] = field(default_factory=Counter)  # table -> rows inserted now
    duplicates: Counter[str] = field(default_factory=Counter)  # table -> rows already there
    rejected: list[Rejected] = field(default_factory=list)


def flead_routes(settings: Any) -> dict[str, Route]:
    """The three output topics of the pipeline and their tables."""
    return {
        settings.topic_anomalies: Route("anomalies", Anomaly.from_json, lambda a: anomaly_row(a, datetime.now(UTC))),
        settings.topic_local_updates: Route("local_models", LocalModelUpdate.from_json, local_model_row),
        settings.topic_global_updates: Route("federated_models", GlobalModel.from_json, global_model_row),
    }


def is_control(value: bytes | None) -> bool:
    """Control records (a FedAvg flush request) share the local-updates topic; they are not rows."""
    return value is None or value.startswith(b'{"control"')


class PostgresSink:
    def __init__(self, db: Database, routes: Mapping[str, Route]) -> None:
        self.db = db
        self.routes = dict(routes)

    def write(self, records: Sequence[SinkRecord]) -> SinkResult:
        """Store ``records``; return what was inserted, what was already there, what was refused."""
        result = SinkResult()
        by_table: dict[str, list[tuple[SinkRecord, dict[str, Any]]]] = {}
        for record in records:
            route = self.routes.get(record.topic)
            if route is None:
                result.rejected.append(Rejected(record, f"no table for topic {record.topic!r}"))
                continue
            if is_control(record.value):
                continue
            try:
                row = route.to_row(route.parse(record.value))
            except (InvalidRecord, ValueError, TypeError) as err:
                result.rejected.append(Rejected(record, str(err)))
                continue
            except Exception as err:  # a record no parser foresaw must not stop the sink on this batch
                result.rejected.append(Rejected(record, f"{type(err).__name__}: {err}"))
                continue
            by_table.setdefault(route.table, []).append((record, row))
        for table, pairs in by_table.items():
            self._insert_isolating(table, pairs, result)
        return result

    def _insert_isolating(self, table: str, pairs: list[tuple[SinkRecord, dict[str, Any]]], result: SinkResult) -> None:
        """Insert the rows in one transaction; if the database refuses it, halve until the refused
        rows stand alone. Errors that mean "unreachable" propagate: the whole write is retried."""
        try:
            inserted = self.db.insert_rows(table, [row for _, row in pairs])
        except Exception as err:
            if is_transient(err):
                raise
            if len(pairs) == 1:
                reason = f"{table}: {describe_error(err)}"
                log.warning("database refused a row of %s (offset %d): %s", table, pairs[0][0].offset, reason)
                result.rejected.append(Rejected(pairs[0][0], reason))
                return
            middle = len(pairs) // 2
            self._insert_isolating(table, pairs[:middle], result)
            self._insert_isolating(table, pairs[middle:], result)
            return
        result.inserted[table] += inserted
        result.duplicates[table] += len(pairs) - inserted
