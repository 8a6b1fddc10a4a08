"""The committed Grafana provisioning is exactly what ``flead dashboard export`` generates, and Grafana's
schema (as grafana-foundation-sdk's typed models carry it) describes every key of the dashboard."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from flead_app.cli import main
from flead_app.dashboard import grafana
from flead_app.dashboard.queries import PANELS, PANELS_BY_ID

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "grafana"


def test_committed_files_equal_the_generators_output():
    stale = grafana.stale(ROOT)
    assert not stale, f"out of date: {stale}; run `flead dashboard export` and commit grafana/"


def test_export_is_deterministic(tmp_path):
    assert grafana.render() == grafana.render()
    assert len(grafana.export(tmp_path)) == 3
    assert grafana.export(tmp_path) == []  # nothing to rewrite
    for rel, content in grafana.render().items():
        assert (tmp_path / rel).read_text() == content == (ROOT / rel).read_text()


def test_cli_export_and_check(tmp_path, capsys):
    assert main(["dashboard", "export", "--out", str(tmp_path), "--check"]) == 1
    assert main(["dashboard", "export", "--out", str(tmp_path)]) == 0
    assert main(["dashboard", "export", "--out", str(tmp_path), "--check"]) == 0
    (tmp_path / grafana.DASHBOARD_FILE).write_text("{}")
    assert main(["dashboard", "export", "--out", str(tmp_path), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err


def test_dashboard_json_matches_the_queries():
    dash = json.loads((ROOT / grafana.DASHBOARD_FILE).read_text())
    assert dash["refresh"] == "30s"
    assert dash["uid"] == "flead" and dash["editable"] is False and dash["timezone"] == "browser"
    assert dash["time"] == {"from": "now-6h", "to": "now"}
    assert not re.search(r"20\d\d-\d\d-\d\dT", json.dumps(dash)), "no timestamps in generated JSON"
    panels = dash["panels"]
    assert [p["title"] for p in panels] == [p.title for p in PANELS]
    assert [p["id"] for p in panels] == list(range(1, len(PANELS) + 1))
    for spec, panel in zip(PANELS, panels, strict=True):
        assert panel["type"] == spec.type
        assert panel["datasource"] == {"type": grafana.DATASOURCE_TYPE, "uid": grafana.DATASOURCE_UID}
        (target,) = panel["targets"]
        assert target["rawSql"] == spec.sql_for(grafana.BACKEND)  # time buckets rendered for TimescaleDB
        assert "$bucket(" not in target["rawSql"]
        assert target["datasource"]["uid"] == grafana.DATASOURCE_UID
        assert target["format"] == ("time_series" if spec.type == "timeseries" else "table")
        assert target["rawQuery"] is True and target["editorMode"] == "code" and target["refId"] == "A"
        assert panel["fieldConfig"]["defaults"]["unit"] == spec.unit
        assert panel["fieldConfig"]["defaults"]["noValue"] == spec.empty_text
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        overridden = {o["matcher"]["options"]: o["properties"] for o in panel["fieldConfig"]["overrides"]}
        for column, unit in spec.column_units.items():
            assert {"id": "unit", "value": unit} in overridden[column], (spec.id, column)
        for column, label in spec.column_labels.items():
            assert {"id": "displayName", "value": label} in overridden[column], (spec.id, column)
        if spec.type == "timeseries":
            custom = panel["fieldConfig"]["defaults"]["custom"]
            assert custom["drawStyle"] == ("bars" if spec.bars else "line")
            if spec.bars:  # a bucket's time is its start: the bar covers the bucket, as on the live page
                assert custom["barAlignment"] == 1
            assert custom["stacking"]["mode"] == ("normal" if spec.stacked else "none")


def test_every_key_is_in_grafanas_schema_as_the_sdk_types_it():
    """Read back through the SDK's typed models, the committed dashboard comes out unchanged.

    The models keep only keys Grafana's schema defines (for the dashboard, each panel type's
    options and field config, and our PostgreSQL query type); the mutations show they notice.
    """
    dash = json.loads((ROOT / grafana.DASHBOARD_FILE).read_text())
    assert grafana.parse_dashboard(copy.deepcopy(dash)) == dash
    for mutate in (
        lambda d: d.update(refreshh="30s"),
        lambda d: d["panels"][0].update(bogus=1),
        lambda d: d["panels"][0]["options"].update(textModes="value"),
        lambda d: d["panels"][5]["fieldConfig"]["defaults"]["custom"].update(drawStlye="bars"),
        lambda d: d["panels"][5]["fieldConfig"]["defaults"].update(nulValue="x"),
        lambda d: d["panels"][5]["targets"][0].update(rawSQL="SELECT 1"),
    ):
        changed = copy.deepcopy(dash)
        mutate(changed)
        assert grafana.parse_dashboard(copy.deepcopy(changed)) != changed


def test_the_sdk_is_the_build_for_the_grafana_the_compose_file_runs():
    from importlib.metadata import version

    sdk = version("grafana-foundation-sdk")  # "<build epoch>!<grafana version>"
    compose = (REPO / "docker" / "docker-compose.yml").read_text()
    grafana_version = re.search(r"grafana/grafana:\$\{FLEAD_GRAFANA_VERSION:-([\d.]+)\}", compose).group(1)
    assert sdk.split("!")[1].split(".")[:2] == grafana_version.split(".")[:2], (sdk, grafana_version)
    assert json.loads((ROOT / grafana.DASHBOARD_FILE).read_text())["schemaVersion"] == 41  # Grafana 11.6's


def test_the_headline_shows_every_column_under_its_label():
    dash = json.loads((ROOT / grafana.DASHBOARD_FILE).read_text())
    head = dash["panels"][0]
    assert head["title"] == PANELS_BY_ID["detection_headline"].title and head["gridPos"]["w"] == 24
    assert head["options"]["reduceOptions"]["fields"] == "/.*/"  # the split's name is a string field
    assert head["options"]["textMode"] == "value_and_name"
    assert head["fieldConfig"]["defaults"]["noValue"] == "not evaluated yet"


def test_panels_do_not_overlap():
    cells = set()
    for g in grafana.layout(PANELS):
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells
                cells.add((x, y))


def test_datasource_provisioning_reads_the_environment():
    text = (ROOT / grafana.DATASOURCE_FILE).read_text()
    assert f"uid: {grafana.DATASOURCE_UID}" in text
    assert f"type: {grafana.DATASOURCE_TYPE}" in text
    for var in grafana.DB_ENV.values():
        assert "${" + var + "}" in text
    assert "timescaledb: true" in text
    # no literal host or password
    assert not re.search(r"password: [^$]", text)
    assert "localhost" not in text and "127.0.0.1" not in text


def test_dashboard_provider_points_at_the_mounted_folder():
    text = (ROOT / grafana.PROVIDER_FILE).read_text()
    assert f"path: {grafana.DASHBOARDS_PATH_IN_CONTAINER}" in text
    compose = (REPO / "docker" / "docker-compose.yml").read_text()
    assert f"../grafana/dashboards:{grafana.DASHBOARDS_PATH_IN_CONTAINER}:ro" in compose
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in compose
