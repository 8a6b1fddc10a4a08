"""Poison rows at the database sink, on a real PostgreSQL (a fresh schema per test).

* One row the database itself refuses among a thousand good ones: the refused row is isolated
  (``PostgresSink.write`` halves the batch), comes back with the database's reason, the thousand
  are stored, and the sink goes on storing afterwards. Validation bounds every field a record
  parser accepts, so the refused row is made below it: a ``Route`` whose row mapping puts a value
  into a column that cannot hold it.
* A fuzz of the record parsers (``flead_app.models``) against what PostgreSQL accepts: whatever a
  parser accepts (ids, strings, whole numbers, timestamps with any offset) must insert into the
  real tables, and whatever it refuses must come back as a rejected record, never as an
  exception out of ``write`` (which would stop the sink on that batch for good).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from flead_app.io.db.rows import local_model_row
from flead_app.io.db.schema import local_models
from flead_app.io.db.sink import PostgresSink, Route, SinkRecord, flead_routes
from flead_app.models import Anomaly, InvalidRecord, LocalModelUpdate
from flead_app.settings import load_settings

pytestmark = pytest.mark.integration

GOOD = 1000


def _update(i: int, **kw) -> LocalModelUpdate:
    base = dict(
        device_id=f"poison-dev{i % 50}",
        model_version=i // 50 + 1,
        global_version=0,
        weights=[0.1, -0.2, 0.3, 0.0],
        bias=-3.0,
        accuracy=0.9,
        loss=0.3,
        samples=40,
        timestamp=f"2025-11-07T15:{i // 60 % 60:02d}:{i % 60:02d}Z",
        partition=i % 8,
    )
    return LocalModelUpdate(**{**base, **kw})


def _records(topic: str, updates: list[LocalModelUpdate], first_offset: int = 0) -> list[SinkRecord]:
    return [SinkRecord(topic, 0, first_offset + i, b"fleet", u.to_json()) for i, u in enumerate(updates)]


def _count(db, table) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_one_row_the_database_refuses_among_a_thousand(db):
    poison = GOOD // 3  # somewhere inside the batch, not at an edge

    def to_row(update: LocalModelUpdate) -> dict:
        row = local_model_row(update)
        if update.samples == 999_999:  # the poison: above what an integer column holds
            row["samples_processed"] = 2**31
        return row

    route = Route("local_models", LocalModelUpdate.from_json, to_row)
    sink = PostgresSink(db, {"updates": route})
    updates = [_update(i) for i in range(GOOD + 1)]
    updates[poison] = _update(poison, samples=999_999)
    records = _records("updates", updates)

    result = sink.write(records)

    assert result.inserted["local_models"] == GOOD
    assert len(result.rejected) == 1
    (refused,) = result.rejected
    assert refused.record == records[poison]
    # the database's own reason, as the dead letter carries it
    assert "out of range" in refused.reason and refused.reason.startswith("local_models: ")
    assert _count(db, local_models) == GOOD
    # the sink goes on: the next batch (and a redelivery of the first) are written as usual
    later = [_update(i) for i in range(GOOD + 1, GOOD + 101)]
    again = sink.write(_records("updates", later, first_offset=GOOD + 1) + records)
    assert again.inserted["local_models"] == 100
    assert again.duplicates["local_models"] == GOOD
    assert len(again.rejected) == 1
    assert _count(db, local_models) == GOOD + 100


# --- the parsers against the real tables ---------------------------------------------------------

#: any code point, surrogates included, and ids up to a little past the limit
ids = st.text(st.characters(codec=None, exclude_categories=()), min_size=0, max_size=140)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
stamps = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz).isoformat(),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    offsets,
)
whole = st.one_of(st.integers(-(2**63), 2**63), st.integers(-5, 5), st.sampled_from([2**31 - 1, 2**31, -(2**31) - 1]))
labels = st.one_of(st.none(), whole, st.booleans(), st.floats(allow_nan=False))


@pytest.fixture
def fuzz_sink(db):
    routes = flead_routes(load_settings())
    return PostgresSink(db, routes), {route.table: topic for topic, route in routes.items()}


def _write_one(fuzz_sink, table: str, doc: dict, parse) -> None:
    """Whatever ``parse`` accepts is stored (or already there); whatever it refuses is rejected."""
    sink, topic_of = fuzz_sink
    # as a producer that is not orjson could send it: a lone surrogate becomes bytes that are not
    # UTF-8 (orjson.dumps refuses to write them, and hypothesis found '\ud800' as an id)
    raw = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    try:
        parse(raw)
        accepted = True
    except InvalidRecord:
        accepted = False
    result = sink.write([SinkRecord(topic_of[table], 0, 0, b"k", raw)])  # must not raise
    if accepted:
        assert not result.rejected, f"parsed, but the database refused it: {result.rejected[0].reason}"
        assert result.inserted[table] + result.duplicates[table] == 1
    else:
        assert len(result.rejected) == 1 and not result.inserted[table]


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(device_id=ids, timestamp=stamps, detected=st.one_of(st.just(""), stamps), label=labels, partition=whole)
def test_fuzz_anomalies_the_parser_accepts_insert(fuzz_sink, device_id, timestamp, detected, label, partition):
    doc = dict(
        device_id=device_id,
        partition=partition,
        broker_id=1,
        value=1.5,
        z_score=3.2,
        severity="critical",
        timestamp=timestamp,
        detected_at=detected,
        label=label,
    )
    _write_one(fuzz_sink, "anomalies", doc, Anomaly.from_json)


@FUZZ
@given(device_id=ids, timestamp=stamps, version=whole, samples=whole, base=whole)
def test_fuzz_local_updates_the_parser_accepts_insert(fuzz_sink, device_id, timestamp, version, samples, base):
    doc = dataclasses.asdict(_update(0))
    doc.update(device_id=device_id, timestamp=timestamp, model_version=version, samples=samples, global_version=base)
    _write_one(fuzz_sink, "local_models", doc, LocalModelUpdate.from_json)


def test_a_timestamp_past_the_years_a_datetime_holds_is_rejected_not_raised(fuzz_sink):
    """Found by the fuzz above: 9999-12-31T23:00-13:00 parses, but its UTC time is in the year 10000,
    so mapping it to a row raised OverflowError out of ``write``, and the sink retried that batch
    for ever, storing nothing else."""
    edge = "9999-12-31T23:00:00-13:00"
    doc = dict(device_id="a", partition=0, broker_id=1, value=1.0, z_score=3.0, severity="critical", timestamp=edge)
    with pytest.raises(InvalidRecord, match="out of range"):
        Anomaly.from_json(orjson.dumps(doc))
    _write_one(fuzz_sink, "anomalies", doc, Anomaly.from_json)
