"""The committed Grafana provisioning is exactly what ``flead dashboard export`` generates."""

from __future__ import annotations

import json
import re
from pathlib import Path

from flead_app.cli import main
from flead_app.dashboard import grafana
from flead_app.dashboard.queries import PANELS

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
    assert dash["uid"] == "flead"
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
        assert panel["fieldConfig"]["defaults"]["unit"] == spec.unit
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


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
