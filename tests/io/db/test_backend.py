"""The backend decision from the server's facts, and the bucketing each backend renders (no database)."""

from __future__ import annotations

import doctest

import pytest

from flead_app.io.db import backend as backend_mod
from flead_app.io.db.backend import (
    CREATE,
    PLAIN,
    Backend,
    BackendUnavailable,
    ServerFacts,
    decide,
)

NOT_INSTALLED = ServerFacts(None, None, None, False, preloaded=False, preload_libraries="")
NOT_PRELOADED = ServerFacts("2.28.3", None, None, False, preloaded=False, preload_libraries="pg_stat_statements")
NOT_PRELOADED_HIDDEN = ServerFacts("2.28.3", None, None, False, preloaded=False, preload_libraries=None)
READY = ServerFacts("2.28.3", None, None, False, preloaded=True, preload_libraries="timescaledb")
CREATED = ServerFacts("2.28.3", "2.28.3", "public", True, preloaded=True, preload_libraries=None)
CREATED_OFF_PATH = ServerFacts("2.28.3", "2.28.3", "public", False, preloaded=True, preload_libraries=None)
CREATED_NOT_PRELOADED = ServerFacts("2.28.3", "2.28.3", "public", True, preloaded=False, preload_libraries="")


def test_doctests():
    result = doctest.testmod(backend_mod)
    assert result.attempted > 0 and result.failed == 0


def test_auto_uses_timescaledb_when_the_server_can_load_it():
    assert decide(READY) == CREATE  # created first, then decided again
    chosen = decide(CREATED)
    assert chosen == Backend("timescaledb", "2.28.3") and chosen.schema == ""
    assert decide(CREATED_OFF_PATH).schema == "public"  # the functions get their schema


def test_auto_falls_back_with_what_to_change():
    chosen = decide(NOT_PRELOADED)
    assert chosen.name == "postgresql" and chosen.unusable
    assert "shared_preload_libraries (now 'pg_stat_statements')" in chosen.reason
    assert "restart" in chosen.reason and "flead stack up" in chosen.reason
    hidden = decide(NOT_PRELOADED_HIDDEN)
    assert "unreadable for this role; TimescaleDB's loader is not running" in hidden.reason and hidden.unusable
    missing = decide(NOT_INSTALLED)
    assert missing.name == "postgresql" and not missing.unusable and "not installed" in missing.reason
    failed = decide(READY, created_failed="CREATE EXTENSION timescaledb failed (permission denied)")
    assert failed.name == "postgresql" and "permission denied" in failed.reason


@pytest.mark.parametrize("facts", [NOT_INSTALLED, NOT_PRELOADED, NOT_PRELOADED_HIDDEN])
def test_timescaledb_wanted_but_missing_fails_clearly(facts):
    with pytest.raises(BackendUnavailable, match="FLEAD_DB_BACKEND=timescaledb, but"):
        decide(facts, "timescaledb")
    assert decide(CREATED, "timescaledb").is_timescaledb


@pytest.mark.parametrize("facts", [NOT_INSTALLED, NOT_PRELOADED, READY, CREATED])
def test_postgresql_wanted_is_plain_whatever_the_server_has(facts):
    assert decide(facts, "postgresql") == Backend("postgresql", reason="FLEAD_DB_BACKEND=postgresql")


@pytest.mark.parametrize("wanted", ["auto", "timescaledb", "postgresql"])
def test_created_but_not_preloaded_allows_no_ddl_at_all(wanted):
    with pytest.raises(BackendUnavailable, match="no DDL can run here.*shared_preload_libraries"):
        decide(CREATED_NOT_PRELOADED, wanted)


def test_unknown_wish_is_refused():
    with pytest.raises(ValueError, match="unknown database backend"):
        decide(READY, "mysql")


def test_buckets_are_the_same_on_both_backends_by_construction():
    ts = Backend("timescaledb", "2.28.3", schema="public")
    assert ts.time_bucket("5 minutes", "detected_at") == ("\"public\".time_bucket(INTERVAL '5 minutes', detected_at)")
    assert PLAIN.time_bucket("5 minutes", "detected_at") == (
        "date_bin(INTERVAL '5 minutes', detected_at, TIMESTAMPTZ '2000-01-03 UTC')"
    )
    for bad in [("1 month", "t"), ("1 minute", "t); DROP TABLE x; --")]:
        with pytest.raises(ValueError):
            PLAIN.time_bucket(*bad)


def test_describe():
    assert Backend("timescaledb", "2.28.3").describe() == "TimescaleDB 2.28.3"
    assert decide(NOT_INSTALLED).describe().startswith("plain PostgreSQL (the timescaledb extension is not installed")
