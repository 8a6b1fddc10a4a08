"""``flead dashboard export|query|serve``: Grafana provisioning, every panel query run once, the page alone."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="Grafana provisioning and the live dashboard page")
    dsub = p.add_subparsers(dest="dashboard_command", metavar="ACTION")

    e = dsub.add_parser("export", help="write grafana/dashboards/flead.json and the provisioning files")
    e.add_argument("--out", type=Path, default=None, help="the grafana/ folder (default: the repository's)")
    e.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files are out of date")
    e.set_defaults(func=run_export)

    q = dsub.add_parser("query", help="run every panel query against the database and print row counts")
    q.add_argument("--range", default="6h", help="what $__timeFilter covers: 6h, 90m, 3600 (default 6h)")
    q.add_argument("--json", action="store_true", help="print every panel's rows as JSON")
    q.set_defaults(func=run_query)

    s = dsub.add_parser("serve", help="serve the live page without a Faust worker (the worker serves it too)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=6067)
    s.set_defaults(func=run_serve)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_export(args: argparse.Namespace) -> int:
    from flead_app.dashboard import grafana

    root = args.out or grafana.default_root()
    if args.check:
        stale = grafana.stale(root)
        for rel in stale:
            print(f"out of date: {root / rel} (run `flead dashboard export`)", file=sys.stderr)
        return 1 if stale else 0
    written = grafana.export(root)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{root}: up to date")
    return 0


def run_query(args: argparse.Namespace) -> int:
    from sqlalchemy import create_engine

    from flead_app.dashboard.page import jsonable, parse_range
    from flead_app.dashboard.queries import PANELS, run_all_queries
    from flead_app.io.db.store import sqlalchemy_url
    from flead_app.settings import load_settings

    url = load_settings().db_url
    if not url:
        print("no database: set FLEAD_DB_URL or run `flead stack up`", file=sys.stderr)
        return 2
    engine = create_engine(sqlalchemy_url(url))
    try:
        results = run_all_queries(engine, parse_range({"range": args.range}))
    finally:
        engine.dispose()
    if args.json:
        out = {pid: [{k: jsonable(v) for k, v in row.items()} for row in rows] for pid, rows in results.items()}
        print(json.dumps(out, indent=2))
        return 0
    width = max(len(p.title) for p in PANELS)
    for panel in PANELS:
        rows = results[panel.id]
        first = ", ".join(f"{k}={jsonable(v)}" for k, v in rows[0].items()) if rows else "no data yet"
        print(f"{panel.title:<{width}}  {len(rows):>4} rows  {first[:90]}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from flead_app.dashboard.page import serve

    serve(args.host, args.port)
    return 0
