"""The panel definitions and the macro rule, without a database."""

from __future__ import annotations

import re

import pytest

from flead_app.dashboard.queries import (
    DEFAULT_RANGE_S,
    HEADLINE_SPLITS,
    PANEL_TYPES,
    PANELS,
    PANELS_BY_ID,
    Panel,
    UnsupportedMacro,
    expand_macros,
)

# the description's GRAFANA section, in its order ("latest global accuracy" and its trend are the
# round accuracy, measured before training, and say so)
DESCRIPTION_PANELS = [
    ("total_local_models", "stat"),
    ("global_models", "stat"),
    ("active_devices", "stat"),
    ("round_accuracy", "stat"),
    ("models_per_minute", "timeseries"),
    ("round_accuracy_trend", "timeseries"),
    ("top_devices", "barchart"),
    ("recent_federated_models", "table"),
]


def test_the_headline_comes_first_then_the_descriptions_eight_panels_in_its_order():
    assert PANELS[0].id == "detection_headline"
    assert [(p.id, p.type) for p in PANELS[1:9]] == DESCRIPTION_PANELS


def test_the_headline_is_held_out_detection_with_its_split_named():
    head = PANELS_BY_ID["detection_headline"]
    assert head.columns == ("version", "split", "event_recall", "false_alarms_per_1000_normal", "f1")
    assert head.empty_text == "not evaluated yet"
    assert "evaluation_summaries" in head.sql and "model_kind = 'global'" in head.sql
    assert HEADLINE_SPLITS == ("devices", "readings", "prequential")
    assert "split IN ('devices', 'readings', 'prequential')" in head.sql
    assert "CASE split WHEN 'devices' THEN 1 WHEN 'readings' THEN 2 WHEN 'prequential' THEN 3 END" in head.sql
    # per normal reading, whatever the stored false_alarms_per_1000 divides by (today: all readings)
    assert "CAST(1000 * fp AS double precision) / nullif(fp + tn, 0)" in head.sql
    for column in head.columns:
        assert head.label_of(column) != column or column == "split"


def test_round_accuracy_is_named_for_what_it_is():
    for pid in ("round_accuracy", "round_accuracy_trend"):
        panel = PANELS_BY_ID[pid]
        assert "Round Accuracy" in panel.title and "Before Training" in panel.title
        assert "before training" in panel.description
    assert not any(p.title.startswith("Latest Global Accuracy") for p in PANELS)


def test_the_extra_panels_exist():
    for pid in ("anomalies_by_severity", "anomalies_by_broker", "heldout_f1", "broker_analytics"):
        assert pid in PANELS_BY_ID
    assert "anomalies.broker_id" not in PANELS_BY_ID["anomalies_by_broker"].sql  # unqualified, one table
    assert "broker_id" in PANELS_BY_ID["anomalies_by_broker"].sql
    assert "scope = 'broker'" in PANELS_BY_ID["broker_analytics"].sql
    f1 = PANELS_BY_ID["heldout_f1"]
    assert f1.columns == ("version", "global_f1", "local_f1", "central_f1")
    for kind in ("'global'", "'local'", "'central'"):
        assert kind in f1.sql


@pytest.mark.parametrize("panel", PANELS, ids=lambda p: p.id)
def test_panel_is_well_formed(panel: Panel):
    assert panel.type in PANEL_TYPES
    assert panel.title and panel.description and panel.unit
    assert len(set(panel.columns)) == len(panel.columns)
    assert 1 <= panel.width <= 24
    # neither SQLAlchemy's text() nor psycopg2 may read anything in the SQL as a parameter
    assert not re.search(r"(?<!:):[A-Za-z_]", panel.sql), "':name' would be a bind parameter"
    assert "%" not in panel.sql
    # only the one macro both runners understand
    for macro in re.findall(r"\$__\w+", panel.sql):
        assert macro == "$__timeFilter"
    expand_macros(panel.sql)  # does not raise
    if panel.type == "timeseries":
        assert "$__timeFilter(" in panel.sql, "a time series follows the dashboard's range"
    if panel.bars and panel.type == "timeseries":
        assert panel.bucket_s == 60 and "$bucket('1 minute'" in panel.sql


def test_time_filter_expands_to_a_concrete_interval():
    sql = "SELECT 1 FROM t WHERE $__timeFilter(created_at) AND x"
    assert expand_macros(sql, 3600) == (
        "SELECT 1 FROM t WHERE created_at BETWEEN now() - interval '3600 seconds' AND now() AND x"
    )
    assert f"'{DEFAULT_RANGE_S} seconds'" in expand_macros(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT $__timeGroupAlias(created_at, '1m')",
        "SELECT $__timeFrom()",
        "SELECT 1 WHERE $__timeFilter(created_at + 1)",
        "SELECT 1 WHERE $__timeFilter",
        "SELECT 1 WHERE $__timeFilter()",
    ],
)
def test_other_macros_are_refused(sql):
    with pytest.raises(UnsupportedMacro):
        expand_macros(sql)


def test_range_must_be_positive():
    with pytest.raises(ValueError):
        expand_macros("SELECT 1", 0)


def test_panel_validation():
    with pytest.raises(ValueError, match="time"):
        Panel(id="x", title="x", type="timeseries", sql="SELECT 1", columns=("t", "v"))
    with pytest.raises(ValueError, match="unknown type"):
        Panel(id="x", title="x", type="pie", sql="SELECT 1", columns=("v",))
    with pytest.raises(ValueError, match="units"):
        Panel(id="x", title="x", type="table", sql="SELECT 1", columns=("v",), column_units={"w": "short"})
    with pytest.raises(ValueError, match="labels"):
        Panel(id="x", title="x", type="table", sql="SELECT 1", columns=("v",), column_labels={"w": "W"})
    with pytest.raises(ValueError, match="bucket"):
        Panel(id="x", title="x", type="timeseries", sql="SELECT 1", columns=("time", "v"), bars=True)


def test_errors_are_one_line_without_sql_or_password():
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from flead_app.dashboard.queries import one_line

    class Driver(Exception):
        pgcode = "42703"

    err = ProgrammingError(
        "SELECT secret_column FROM local_models",
        {},
        Driver('ERROR:  column "secret_column" does not exist\nLINE 1: SELECT secret_column FROM local_models\n'),
    )
    assert one_line(err) == 'Driver: column "secret_column" does not exist'
    dsn = OperationalError("", {}, Exception("could not connect to postgresql://flead:hunter2@db:5432/flead"))
    assert "hunter2" not in one_line(dsn) and "flead:***@db" in one_line(dsn)
    assert "hunter2" not in one_line(Exception("password=hunter2 host=db"))


def test_errors_are_classified_for_the_page():
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from flead_app.dashboard.queries import (
        LOGIN_REFUSED,
        MISSING_TABLE,
        QUERY_ERROR,
        UNAVAILABLE,
        classify,
        missing_relation,
    )

    def driver(code, message):
        return type("Driver", (Exception,), {"pgcode": code})(message)

    missing = ProgrammingError("q", {}, driver("42P01", 'relation "local_models" does not exist'))
    assert classify(missing) == MISSING_TABLE and missing_relation(missing) == "local_models"
    assert classify(ProgrammingError("q", {}, driver("42703", "column x does not exist"))) == QUERY_ERROR
    assert classify(OperationalError("q", {}, driver("57014", "canceling statement due to statement timeout"))) == (
        QUERY_ERROR
    )
    assert classify(OperationalError("q", {}, driver("57P01", "terminating connection"))) == UNAVAILABLE
    assert classify(OperationalError("q", {}, driver(None, "connection refused"))) == UNAVAILABLE
    refused = OperationalError("q", {}, driver(None, 'FATAL:  password authentication failed for user "flead"'))
    assert classify(refused) == LOGIN_REFUSED
    assert classify(ValueError("not the database")) == QUERY_ERROR


def test_time_buckets_are_rendered_for_the_backend():
    from flead_app.dashboard.queries import render_buckets
    from flead_app.io.db.backend import PLAIN, Backend

    sql = "SELECT $bucket('1 minute', created_at) AS time, $bucket( '5 minutes' , t.detected_at ) FROM t"
    assert render_buckets(sql, Backend("timescaledb", "2.28.3")) == (
        "SELECT time_bucket(INTERVAL '1 minute', created_at) AS time, "
        "time_bucket(INTERVAL '5 minutes', t.detected_at) FROM t"
    )
    assert render_buckets(sql, PLAIN) == (
        "SELECT date_bin(INTERVAL '1 minute', created_at, TIMESTAMPTZ '2000-01-03 UTC') AS time, "
        "date_bin(INTERVAL '5 minutes', t.detected_at, TIMESTAMPTZ '2000-01-03 UTC') FROM t"
    )
    for panel in PANELS:  # one definition per query; each rendering is a finished query
        for backend in (Backend("timescaledb", "2.28.3"), PLAIN):
            assert "$bucket" not in panel.sql_for(backend)
            assert not re.search(r"(?<!:):[A-Za-z_]", panel.sql_for(backend))
