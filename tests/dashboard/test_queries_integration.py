"""Every panel query against a real PostgreSQL holding realistic rows (and against empty tables)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from flead_app.dashboard import grafana
from flead_app.dashboard.queries import (
    PANELS,
    PANELS_BY_ID,
    DatabaseUnavailable,
    collect,
    expand_macros,
    run_all_queries,
)
from flead_app.io.db.store import Database

from .conftest import _summary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results(sample_db, make_schema, render_backend):
    from sqlalchemy import create_engine

    from flead_app.io.db.store import sqlalchemy_url

    url, expected = sample_db
    engine = create_engine(sqlalchemy_url(url))
    try:
        yield run_all_queries(engine, backend=render_backend), expected
    finally:
        engine.dispose()


@pytest.mark.parametrize("panel", PANELS, ids=lambda p: p.id)
def test_every_panel_returns_its_columns_and_rows(results, panel):
    out, _ = results
    rows = out[panel.id]
    assert rows, f"{panel.id} returned no rows"
    for row in rows:
        assert tuple(row) == panel.columns
    # every declared column carries a value somewhere (no column silently always NULL)
    for col in panel.columns:
        assert any(row[col] is not None for row in rows), f"{panel.id}.{col} is always NULL"


def test_stat_panels(results):
    out, expected = results
    assert out["total_local_models"] == [{"local_models": expected["local_models"]}]
    assert out["global_models"] == [{"global_models": expected["global_models"]}]
    assert out["active_devices"] == [{"active_devices": expected["active_devices"]}]
    assert out["round_accuracy"][0]["round_accuracy"] == pytest.approx(expected["latest_accuracy"])


def test_time_series_cover_every_row(results):
    out, expected = results
    assert sum(r["models"] for r in out["models_per_minute"]) == expected["local_models"]
    times = [r["time"] for r in out["models_per_minute"]]
    assert times == sorted(times) and len(set(times)) == len(times)
    trend = out["round_accuracy_trend"]
    assert len(trend) == expected["global_models"]
    assert [r["round_accuracy"] for r in trend] == sorted(r["round_accuracy"] for r in trend)  # the sample rises
    sev = out["anomalies_by_severity"]
    assert sum(r["warning"] for r in sev) == expected["warnings"]
    assert sum(r["critical"] for r in sev) == expected["criticals"]
    brokers = out["anomalies_by_broker"]
    assert {r["metric"] for r in brokers} == {"broker 1", "broker 2", "broker 3", "broker 4"}
    assert sum(r["anomalies"] for r in brokers) == expected["anomalies"]


def test_tables_and_bars(results):
    out, expected = results
    top = out["top_devices"]
    assert [(r["device_id"], r["models_trained"]) for r in top] == expected["top_devices"]
    assert all(0 < r["avg_round_accuracy"] < 1 for r in top)
    recent = out["recent_federated_models"]
    assert [r["version"] for r in recent] == list(range(expected["global_models"], expected["global_models"] - 10, -1))
    brokers = out["broker_analytics"]
    assert [r["broker"] for r in brokers] == ["1", "2", "3", "4"]  # scope='broker' only, newest window each
    assert len({r["window_end"] for r in brokers}) == 1
    assert brokers[0]["readings"] == 111_001


def test_heldout_f1_pairs_each_global_version_with_the_nearest_baseline(results):
    out, expected = results
    rows = {r["version"]: r for r in out["heldout_f1"]}
    assert list(rows) == [f"v{g}" for g in range(1, expected["global_models"] + 1)]
    assert rows["v5"]["global_f1"] == pytest.approx(0.55)  # split 'readings', not 'prequential'
    assert rows["v8"]["local_f1"] == pytest.approx(0.43)  # evaluated at v8
    assert rows["v9"]["central_f1"] == pytest.approx(0.68)  # nearest earlier: v8
    assert rows["v2"]["central_f1"] == pytest.approx(0.64)  # none earlier: nearest later, v4


def test_time_filter_follows_the_range(sample_db, engine_for, render_backend):
    url, expected = sample_db
    engine = engine_for(url)
    wide = run_all_queries(engine, 6 * 3600, backend=render_backend)
    narrow = run_all_queries(engine, 10 * 60, backend=render_backend)
    assert sum(r["models"] for r in narrow["models_per_minute"]) < expected["local_models"]
    assert len(narrow["round_accuracy_trend"]) < len(wide["round_accuracy_trend"])
    assert narrow["total_local_models"] == wide["total_local_models"]  # totals ignore the range


def test_empty_tables_give_zero_counts_and_no_rows(empty_db, engine_for, render_backend):
    out = run_all_queries(engine_for(empty_db), backend=render_backend)
    assert out["total_local_models"] == [{"local_models": 0}]
    assert out["global_models"] == [{"global_models": 0}]
    assert out["active_devices"] == [{"active_devices": 0}]
    for pid in set(PANELS_BY_ID) - {"total_local_models", "global_models", "active_devices"}:
        assert out[pid] == [], pid  # the headline's "not evaluated yet"


def test_a_table_not_created_yet_is_no_error_for_its_panel(make_schema, engine_for, render_backend):
    url = make_schema()
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE stream_analytics"))
    out = collect(engine, backend=render_backend)
    assert out["broker_analytics"] == {"rows": [], "error": None, "missing_table": "stream_analytics"}
    assert out["total_local_models"] == {"rows": [{"local_models": 0}], "error": None, "missing_table": None}
    assert all(out[p.id]["error"] is None and out[p.id]["missing_table"] is None for p in PANELS[:-1])


def test_a_database_without_flead_tables_has_every_panel_waiting(make_schema, engine_for):
    engine = engine_for(make_schema(tables=False))
    out = collect(engine)
    tables = {p.id: r["missing_table"] for p, r in zip(PANELS, out.values(), strict=True)}
    assert all(r["rows"] == [] and r["error"] is None for r in out.values())
    assert tables["total_local_models"] == "local_models" and tables["detection_headline"] == "evaluation_summaries"
    assert (
        tables["active_devices"] in ("local_models", "anomalies") and tables["broker_analytics"] == "stream_analytics"
    )
    with pytest.raises(ProgrammingError):  # the strict runner (tests, `flead dashboard query`) still fails
        run_all_queries(engine)


def test_a_real_query_error_is_one_line_on_its_panel(sample_db, engine_for):
    from flead_app.dashboard.queries import Panel

    bad = Panel(
        id="bad", title="bad", type="table", sql="SELECT secret_column\nFROM local_models", columns=("secret_column",)
    )
    out = collect(engine_for(sample_db[0]), panels=(bad, PANELS[1]))
    assert out["bad"]["error"] == 'UndefinedColumn: column "secret_column" does not exist'
    assert out["bad"]["missing_table"] is None and out["bad"]["rows"] == []
    assert out[PANELS[1].id]["error"] is None and out[PANELS[1].id]["rows"]  # the next panel still runs


def test_an_unreachable_database_is_one_exception_not_one_error_per_panel(engine_for):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = engine_for(f"postgresql://flead:hunter2@127.0.0.1:{port}/flead")
    with pytest.raises(DatabaseUnavailable) as err:
        collect(engine)
    assert "Connection refused" in str(err.value) and "hunter2" not in str(err.value)


def test_the_headline_is_the_newest_evaluated_global_version(results):
    out, expected = results
    (row,) = out["detection_headline"]
    head = expected["headline"]
    assert row["version"] == head["version"] and row["split"] == head["split"]
    for key in ("event_recall", "false_alarms_per_1000_normal", "f1"):
        assert row[key] == pytest.approx(head[key]), key


def test_the_headline_prefers_held_out_devices_then_readings_then_prequential(make_schema, engine_for):
    url = make_schema()
    db = Database(url)
    now = datetime.now(UTC)

    def summary(kind: str, version: int, split: str, f1: float, fp: int = 10, tn: int = 3900) -> dict:
        return {**_summary(kind, version, f1, now, split=split), "fp": fp, "tn": tn}

    def headline() -> dict | None:
        rows = collect(engine_for(url), panels=(PANELS_BY_ID["detection_headline"],))["detection_headline"]["rows"]
        return rows[0] if rows else None

    try:
        assert headline() is None  # "not evaluated yet" on the page
        db.insert_rows("evaluation_summaries", [summary("global", 3, "holdout_device_mean", 0.9)])
        db.insert_rows("evaluation_summaries", [summary("global", 3, "holdout", 0.9)])  # an older protocol's
        db.insert_rows("evaluation_summaries", [summary("central", 5, "devices", 0.9)])
        assert headline() is None  # neither is a split of global versions the protocol writes
        db.insert_rows("evaluation_summaries", [summary("global", 3, "prequential", 0.31, fp=3, tn=997)])
        assert headline()["split"] == "prequential"
        assert headline()["false_alarms_per_1000_normal"] == pytest.approx(3.0)
        db.insert_rows("evaluation_summaries", [summary("global", 3, "readings", 0.32)])
        assert (headline()["version"], headline()["split"]) == ("v3", "readings")
        db.insert_rows("evaluation_summaries", [summary("global", 3, "devices", 0.33, fp=0, tn=0)])
        got = headline()
        assert (got["version"], got["split"], got["f1"]) == ("v3", "devices", pytest.approx(0.33))
        assert got["false_alarms_per_1000_normal"] is None  # no normal reading: unknown, not 0 or an error
        db.insert_rows("evaluation_summaries", [summary("global", 4, "prequential", 0.5)])
        assert (headline()["version"], headline()["split"]) == ("v4", "prequential")  # the newest version first
    finally:
        db.close()


def test_every_exported_grafana_query_runs_against_the_database(sample_db, engine_for):
    """The committed dashboard JSON's own SQL (not queries.py's), as Grafana would run it."""
    dash = json.loads((REPO / "grafana" / grafana.DASHBOARD_FILE).read_text())
    by_title = {p.title: p for p in PANELS}
    with engine_for(sample_db[0]).connect() as conn, conn.begin():
        conn.execute(text("SET TRANSACTION READ ONLY"))
        # the JSON is rendered for TimescaleDB, whose functions live in public: Grafana's connection
        # has it on its search path, this test's schema-only path gets it added
        conn.execute(text("SELECT set_config('search_path', current_setting('search_path') || ', public', true)"))
        for panel in dash["panels"]:
            spec = by_title[panel["title"]]
            (target,) = panel["targets"]
            assert target["datasource"]["uid"] == grafana.DATASOURCE_UID
            result = conn.execute(text(expand_macros(target["rawSql"])))
            assert tuple(result.keys()) == spec.columns, spec.id
            assert result.all(), f"{spec.id}: no rows"
    assert len(dash["panels"]) == len(PANELS)


def test_queries_run_read_only(sample_db, engine_for):
    """The runner opens read-only transactions: a panel cannot change data even by mistake."""
    from flead_app.dashboard.queries import Panel

    bad = Panel(id="bad", title="bad", type="table", sql="DELETE FROM anomalies RETURNING id", columns=("id",))
    with pytest.raises(Exception, match="read-only"):
        run_all_queries(engine_for(sample_db[0]), panels=(bad,))


def test_cli_query_prints_every_panel(sample_db, monkeypatch, capsys):
    from flead_app.cli import main

    monkeypatch.setenv("FLEAD_DB_URL", sample_db[0])
    assert main(["dashboard", "query"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == [p.title for p in PANELS]
    assert main(["dashboard", "query", "--json", "--range", "1h"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert list(out) == [p.id for p in PANELS] and out["global_models"] == [{"global_models": 12}]


def test_the_backend_decides_the_time_buckets(sample_db, engine_for, schema_backend, render_backend):
    """On TimescaleDB the runner finds the extension and buckets with time_bucket; date_bin with its
    origin gives the very same rows, so the plain-PostgreSQL rendering shows the same panels."""
    from flead_app.io.db.backend import PLAIN, for_queries

    engine = engine_for(sample_db[0])
    with engine.connect() as conn:
        found = for_queries(conn)
    if schema_backend == "timescaledb":
        assert found.is_timescaledb and found.schema == "public"  # the extension is off the test's search path
        assert '"public".time_bucket(' in PANELS_BY_ID["models_per_minute"].sql_for(found)
    assert "date_bin(" in PANELS_BY_ID["models_per_minute"].sql_for(PLAIN)
    bucketed = [p for p in PANELS if "$bucket(" in p.sql]
    assert {p.id for p in bucketed} == {"models_per_minute", "anomalies_by_severity", "anomalies_by_broker"}
    assert run_all_queries(engine, panels=tuple(bucketed)) == run_all_queries(
        engine, panels=tuple(bucketed), backend=PLAIN
    )
