"""Grafana provisioning generated from ``queries.PANELS``: dashboard JSON and the two provisioning files.

The output is deterministic (fixed panel order, sorted keys, no timestamps or ids that change
between runs), so the committed ``grafana/`` folder can be compared with the generator's
output in a test: edit ``queries.py``, run ``flead dashboard export``, commit both.

The datasource is PostgreSQL/TimescaleDB with a fixed uid that every panel references; its
connection comes from environment variables that Grafana interpolates when it reads the
provisioning file (``${FLEAD_DB_HOST}`` and so on), so no host or password is in the repository.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flead_app.dashboard.queries import DEFAULT_RANGE_S, PANELS, Panel
from flead_app.io.db.backend import GRAFANA, Backend

#: the backend the panels' SQL is rendered for: the datasource says ``timescaledb: true`` and
#: Compose runs the TimescaleDB image, so time buckets are ``time_bucket``
BACKEND: Backend = GRAFANA

DATASOURCE_UID = "flead-postgres"
DATASOURCE_TYPE = "grafana-postgresql-datasource"  # Grafana >= 10.2; "postgres" is its older alias
DATASOURCE = {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
DASHBOARD_UID = "flead"
DASHBOARD_TITLE = "FLEAD: Federated Anomaly Detection"
REFRESH = "30s"
DASHBOARDS_PATH_IN_CONTAINER = "/var/lib/grafana/dashboards"
GRID_WIDTH = 24

# the environment variables the datasource reads (set by docker/docker-compose.yml)
DB_ENV = {
    "host": "FLEAD_DB_HOST",
    "port": "FLEAD_DB_PORT",
    "database": "FLEAD_DB_NAME",
    "user": "FLEAD_DB_USER",
    "password": "FLEAD_DB_PASSWORD",
    "sslmode": "FLEAD_DB_SSLMODE",
}

DASHBOARD_FILE = "dashboards/flead.json"
DATASOURCE_FILE = "provisioning/datasources/flead.yaml"
PROVIDER_FILE = "provisioning/dashboards/flead.yaml"


def _range_text(seconds: int) -> str:
    return f"now-{seconds // 3600}h" if seconds % 3600 == 0 else f"now-{seconds // 60}m"


def layout(panels: tuple[Panel, ...]) -> list[dict[str, int]]:
    """Grid positions: panels flow left to right, a new row when the next one does not fit."""
    out: list[dict[str, int]] = []
    x = y = row_height = 0
    for p in panels:
        if x + p.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        out.append({"h": p.height, "w": p.width, "x": x, "y": y})
        x += p.width
        row_height = max(row_height, p.height)
    return out


def _overrides(panel: Panel, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = []
    for column, unit in sorted(panel.column_units.items()):
        props: list[dict[str, Any]] = [{"id": "unit", "value": unit}]
        if extra and unit != panel.unit:
            props += [{"id": k, "value": v} for k, v in sorted(extra.items())]
        out.append({"matcher": {"id": "byName", "options": column}, "properties": props})
    return out


def _field_defaults(panel: Panel, custom: dict[str, Any] | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "color": {"mode": "palette-classic" if panel.type != "stat" else "fixed", "fixedColor": "blue"},
        "thresholds": {"mode": "absolute", "steps": [{"color": "blue", "value": None}]},
        "noValue": "no data yet",
    }
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if custom is not None:
        defaults["custom"] = custom
    return defaults


def panel_json(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    """One Grafana panel for ``panel``."""
    legend = {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}
    fmt = "time_series" if panel.type == "timeseries" else "table"
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.type,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "targets": [
            {
                "refId": "A",
                "datasource": DATASOURCE,
                "editorMode": "code",
                "format": fmt,
                "rawQuery": True,
                "rawSql": panel.sql_for(BACKEND),
            }
        ],
    }
    if panel.type == "stat":
        out["fieldConfig"] = {"defaults": _field_defaults(panel), "overrides": []}
        out["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "auto",
            "textMode": "value",
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "center",
        }
    elif panel.type == "timeseries":
        custom = {
            "drawStyle": "bars" if panel.bars else "line",
            "lineWidth": 1 if panel.bars else 2,
            "fillOpacity": 70 if panel.bars else 10,
            "showPoints": "never" if panel.bars else "auto",
            "spanNulls": not panel.bars,
            "stacking": {"group": "A", "mode": "normal" if panel.stacked else "none"},
        }
        out["fieldConfig"] = {"defaults": _field_defaults(panel, custom), "overrides": _overrides(panel)}
        out["options"] = {
            "legend": {**legend, "calcs": ["mean", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "none"},
        }
    elif panel.type == "barchart":
        custom = {"fillOpacity": 80, "lineWidth": 1, "axisPlacement": "auto"}
        out["fieldConfig"] = {
            "defaults": _field_defaults(panel, custom),
            "overrides": _overrides(panel, {"custom.axisPlacement": "right"}),
        }
        out["options"] = {
            "xField": panel.columns[0],
            "orientation": "auto",
            "showValue": "never",
            "stacking": "none",
            "groupWidth": 0.7,
            "barWidth": 0.9,
            "legend": legend,
            "tooltip": {"mode": "multi", "sort": "none"},
        }
    else:  # table
        out["fieldConfig"] = {
            "defaults": _field_defaults(panel, {"align": "auto", "cellOptions": {"type": "auto"}}),
            "overrides": _overrides(panel),
        }
        out["options"] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    return out


def dashboard_json(panels: tuple[Panel, ...] = PANELS) -> dict[str, Any]:
    """The whole dashboard: every panel, refreshed every 30 s, default range as our runner's."""
    grids = layout(panels)
    return {
        "uid": DASHBOARD_UID,
        "title": DASHBOARD_TITLE,
        "description": "Generated by `flead dashboard export` from flead_app/dashboard/queries.py; do not edit.",
        "tags": ["flead", "federated-learning", "anomaly-detection"],
        "editable": False,
        "graphTooltip": 1,
        "refresh": REFRESH,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": _range_text(DEFAULT_RANGE_S), "to": "now"},
        "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m"]},
        "timezone": "browser",
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [],
        "panels": [panel_json(p, i + 1, grids[i]) for i, p in enumerate(panels)],
    }


def datasource_yaml() -> str:
    """Grafana datasource provisioning: PostgreSQL/TimescaleDB, connection from the environment."""
    e = DB_ENV
    return f"""\
# Generated by `flead dashboard export`; do not edit.
# Grafana replaces ${{VAR}} with the environment variable when it reads this file.
apiVersion: 1
datasources:
  - name: FLEAD PostgreSQL
    type: {DATASOURCE_TYPE}
    uid: {DATASOURCE_UID}
    access: proxy
    isDefault: true
    editable: false
    url: ${{{e["host"]}}}:${{{e["port"]}}}
    user: ${{{e["user"]}}}
    jsonData:
      database: ${{{e["database"]}}}
      sslmode: ${{{e["sslmode"]}}}
      postgresVersion: 1500
      timescaledb: true
      maxOpenConns: 4
      maxIdleConns: 2
      connMaxLifetime: 14400
    secureJsonData:
      password: ${{{e["password"]}}}
"""


def provider_yaml() -> str:
    """Grafana dashboard provisioning: load the generated JSON from the mounted folder."""
    return f"""\
# Generated by `flead dashboard export`; do not edit.
apiVersion: 1
providers:
  - name: flead
    orgId: 1
    folder: FLEAD
    type: file
    disableDeletion: true
    allowUiUpdates: false
    updateIntervalSeconds: 30
    options:
      path: {DASHBOARDS_PATH_IN_CONTAINER}
      foldersFromFilesStructure: false
"""


def render() -> dict[str, str]:
    """Every generated file, by path relative to the ``grafana/`` folder."""
    return {
        DASHBOARD_FILE: json.dumps(dashboard_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n",
        DATASOURCE_FILE: datasource_yaml(),
        PROVIDER_FILE: provider_yaml(),
    }


def export(root: Path) -> list[Path]:
    """Write the files under ``root`` (the repository's ``grafana/``); returns the paths written."""
    written = []
    for rel, content in render().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            written.append(path)
    return written


def stale(root: Path) -> list[str]:
    """Generated files under ``root`` that differ from the generator's output."""
    out = []
    for rel, content in render().items():
        path = root / rel
        if not path.exists() or path.read_text() != content:
            out.append(rel)
    return out


def default_root() -> Path:
    """The repository's ``grafana/`` when running from a checkout, else ``./grafana``."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "grafana").is_dir() and (repo / "flead_app").is_dir():
        return repo / "grafana"
    return Path.cwd() / "grafana"
