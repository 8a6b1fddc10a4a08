"""Grafana provisioning generated from ``queries.PANELS``: dashboard JSON and the two provisioning files.

The dashboard is built with Grafana's typed builders, ``grafana-foundation-sdk`` (the build for
Grafana 11.6, the version ``docker/`` runs): dashboard, stat, time series, bar chart and table
panels, field defaults and overrides, the datasource reference, the grid. Two things the SDK does
not have, kept here by hand:

* a query type for the PostgreSQL datasource. The SDK ships query types for the datasources
  whose schemas Grafana publishes (Prometheus, Loki, ...), not for the core SQL datasources, and
  documents how to add one ("Defining a custom query type"): ``SqlQuery`` below, a few lines.
* the provisioning files (datasource and dashboard provider YAML): the SDK builds dashboards,
  alert rules and the like, not Grafana's provisioning configuration, so ``datasource_yaml`` and
  ``provider_yaml`` write that YAML themselves.

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
from typing import Any, Self

from grafana_foundation_sdk.builders import barchart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models

from flead_app.dashboard.queries import DEFAULT_RANGE_S, PANELS, Panel
from flead_app.io.db.backend import GRAFANA, Backend

#: the backend the panels' SQL is rendered for: the datasource says ``timescaledb: true`` and
#: Compose runs the TimescaleDB image, so time buckets are ``time_bucket``
BACKEND: Backend = GRAFANA

DATASOURCE_UID = "flead-postgres"
DATASOURCE_TYPE = "grafana-postgresql-datasource"  # Grafana >= 10.2; "postgres" is its older alias
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


def datasource_ref() -> dashboard_models.DataSourceRef:
    return dashboard_models.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


class SqlQuery(cogvariants.Dataquery):
    """A target of Grafana's PostgreSQL datasource: raw SQL in code mode (the SDK has no type for it)."""

    def __init__(
        self,
        raw_sql: str = "",
        format_val: str = "table",
        ref_id: str = "A",
        datasource: dashboard_models.DataSourceRef | None = None,
        hide: bool | None = None,
    ) -> None:
        self.raw_sql = raw_sql
        self.format_val = format_val
        self.ref_id = ref_id
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "editorMode": "code",
            "format": self.format_val,
            "rawQuery": True,
            "rawSql": self.raw_sql,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        args: dict[str, Any] = {}
        for key, arg in (("rawSql", "raw_sql"), ("format", "format_val"), ("refId", "ref_id"), ("hide", "hide")):
            if key in data:
                args[arg] = data[key]
        if "datasource" in data:
            args["datasource"] = dashboard_models.DataSourceRef.from_json(data["datasource"])
        return cls(**args)


class SqlQueryBuilder(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder of ``SqlQuery``, as the SDK's guide to custom query types shows."""

    def __init__(self, raw_sql: str) -> None:
        self._internal = SqlQuery(raw_sql=raw_sql)

    def build(self) -> SqlQuery:
        return self._internal

    def format(self, format_val: str) -> Self:
        self._internal.format_val = format_val
        return self

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def datasource(self, ref: dashboard_models.DataSourceRef) -> Self:
        self._internal.datasource = ref
        return self


def register_sql_query() -> None:
    """Let the SDK's ``from_json`` decode our targets as ``SqlQuery`` (used to check the export)."""
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(identifier=DATASOURCE_TYPE, from_json_hook=SqlQuery.from_json)
    )


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


def _prop(prop_id: str, value: object) -> dashboard_models.DynamicConfigValue:
    return dashboard_models.DynamicConfigValue(id_val=prop_id, value=value)


def _overrides(builder: Any, panel: Panel, extra: dict[str, Any] | None = None) -> None:
    """Per column: its unit when it differs, its label when it has one (``extra`` for other-unit columns)."""
    for column in sorted(set(panel.column_units) | set(panel.column_labels)):
        props: list[dashboard_models.DynamicConfigValue] = []
        if column in panel.column_units:
            props.append(_prop("unit", panel.column_units[column]))
            if extra and panel.column_units[column] != panel.unit:
                props += [_prop(k, v) for k, v in sorted(extra.items())]
        if column in panel.column_labels:
            props.append(_prop("displayName", panel.column_labels[column]))
        builder.override_by_name(column, props)


def _common(builder: Any, panel: Panel, panel_id: int, grid: dict[str, int]) -> Any:
    """What every panel has: id, title, description, datasource, position, the query, field defaults."""
    fmt = "time_series" if panel.type == "timeseries" else "table"
    builder = (
        builder.id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .datasource(datasource_ref())
        .grid_pos(dashboard_models.GridPos(h=grid["h"], w=grid["w"], x=grid["x"], y=grid["y"]))
        .with_target(SqlQueryBuilder(panel.sql_for(BACKEND)).ref_id("A").format(fmt).datasource(datasource_ref()))
        .unit(panel.unit)
        .no_value(panel.empty_text)
        .color_scheme(
            dashboard_builders.FieldColor()
            .mode(
                dashboard_models.FieldColorModeId.FIXED
                if panel.type == "stat"
                else dashboard_models.FieldColorModeId.PALETTE_CLASSIC
            )
            .fixed_color("blue")
        )
        .thresholds(
            dashboard_builders.ThresholdsConfig()
            .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
            .steps([dashboard_models.Threshold(value=None, color="blue")])
        )
    )
    if panel.decimals is not None:
        builder = builder.decimals(panel.decimals)
    return builder


def _legend(calcs: list[str] | None = None) -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(calcs or [])
    )


def _tooltip() -> common_builders.VizTooltipOptions:
    return common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.NONE)


def panel_builder(panel: Panel, panel_id: int, grid: dict[str, int]) -> cogbuilder.Builder:
    """The SDK builder of one Grafana panel for ``panel``."""
    if panel.type == "stat":
        b = _common(stat.Panel(), panel, panel_id, grid)
        several = len(panel.columns) > 1  # the headline: every column, strings too, each under its label
        b = (
            b.reduce_options(
                common_builders.ReduceDataOptions()
                .calcs(["lastNotNull"])
                .fields("/.*/" if several else "")
                .values(False)
            )
            .orientation(common.VizOrientation.AUTO)
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME if several else common.BigValueTextMode.VALUE)
            .color_mode(common.BigValueColorMode.VALUE)
            .graph_mode(common.BigValueGraphMode.NONE)
            .justify_mode(common.BigValueJustifyMode.CENTER)
        )
        _overrides(b, panel)
        return b
    if panel.type == "timeseries":
        b = _common(timeseries.Panel(), panel, panel_id, grid)
        b = (
            b.draw_style(common.GraphDrawStyle.BARS if panel.bars else common.GraphDrawStyle.LINE)
            .line_width(1 if panel.bars else 2)
            .fill_opacity(70 if panel.bars else 10)
            .show_points(common.VisibilityMode.NEVER if panel.bars else common.VisibilityMode.AUTO)
            .span_nulls(not panel.bars)
            .stacking(
                common_builders.StackingConfig()
                .group("A")
                .mode(common.StackingMode.NORMAL if panel.stacked else common.StackingMode.NONE)
            )
            .legend(_legend(["mean", "lastNotNull"]))
            .tooltip(_tooltip())
        )
        if panel.bars:  # a bar's time is the start of its bucket: draw it over the bucket, as the live page does
            b = b.bar_alignment(common.BarAlignment.AFTER)
        _overrides(b, panel)
        return b
    if panel.type == "barchart":
        b = _common(barchart.Panel(), panel, panel_id, grid)
        b = (
            b.fill_opacity(80)
            .line_width(1)
            .axis_placement(common.AxisPlacement.AUTO)
            .x_field(panel.columns[0])
            .orientation(common.VizOrientation.AUTO)
            .show_value(common.VisibilityMode.NEVER)
            .stacking(common.StackingMode.NONE)
            .group_width(0.7)
            .bar_width(0.9)
            .legend(_legend())
            .tooltip(_tooltip())
        )
        _overrides(b, panel, {"custom.axisPlacement": "right"})
        return b
    b = _common(table.Panel(), panel, panel_id, grid)
    b = (
        b.align(common.FieldTextAlignment.AUTO)
        .cell_options(common.TableAutoCellOptions())
        .show_header(True)
        .cell_height(common.TableCellHeight.SM)
        .footer(common_builders.TableFooterOptions().show(False))
    )
    _overrides(b, panel)
    return b


def dashboard_builder(panels: tuple[Panel, ...] = PANELS) -> dashboard_builders.Dashboard:
    """The whole dashboard: every panel, refreshed every 30 s, default range as our runner's."""
    grids = layout(panels)
    b = (
        dashboard_builders.Dashboard(DASHBOARD_TITLE)
        .uid(DASHBOARD_UID)
        .description("Generated by `flead dashboard export` from flead_app/dashboard/queries.py; do not edit.")
        .tags(["flead", "federated-learning", "anomaly-detection"])
        .readonly()
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .refresh(REFRESH)
        .version(1)
        .time(_range_text(DEFAULT_RANGE_S), "now")
        .timepicker(dashboard_builders.TimePicker().refresh_intervals(["10s", "30s", "1m", "5m", "15m"]))
        .timezone("browser")
    )
    for i, panel in enumerate(panels):
        b = b.with_panel(panel_builder(panel, i + 1, grids[i]))
    return b


def _plain(obj: object) -> Any:
    """The SDK's objects as plain JSON values (its encoder calls each object's ``to_json``)."""
    return json.loads(json.dumps(obj, cls=JSONEncoder))


def dashboard_json(panels: tuple[Panel, ...] = PANELS) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    return _plain(dashboard_builder(panels).build())


def parse_dashboard(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` read back through the SDK's typed models and written out again.

    Keys the models do not know are dropped and values are put in their types' shape, so a
    dashboard that survives this unchanged is one Grafana's schema (as the SDK generates it)
    describes completely.
    """
    from grafana_foundation_sdk.cog.plugins import register_default_plugins

    register_default_plugins()
    register_sql_query()
    return _plain(dashboard_models.Dashboard.from_json(data))


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
