"""``flead device DEVICE_ID``: a device's live state from the worker's table, and its latest anomalies."""

from __future__ import annotations

import argparse
import json
import urllib.error

from flead_app.settings import load_settings, redact_url
from flead_app.worker import fetch_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("device", help="a device's statistics, model version, weights and latest anomalies")
    p.add_argument("device_id")
    p.add_argument("--anomalies", type=int, default=5, help="how many recent anomalies to show")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def latest_anomalies(db_url: str, device_id: str, limit: int) -> list[dict]:
    from sqlalchemy import create_engine, select

    from flead_app.io.db.schema import anomalies

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(anomalies.c.timestamp, anomalies.c.value, anomalies.c.z_score, anomalies.c.severity)
                .where(anomalies.c.device_id == device_id)
                .order_by(anomalies.c.timestamp.desc())
                .limit(limit)
            )
            return [{**row._mapping, "timestamp": row.timestamp.isoformat()} for row in rows]
    finally:
        engine.dispose()


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    url = f"http://127.0.0.1:{settings.web_port}/flead/device/{args.device_id}/"
    try:
        state = fetch_json(url, timeout=10)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            print(f"device {args.device_id!r} has no state yet (no readings seen by the workers)")
            return 1
        raise
    except OSError as err:
        print(f"no worker answers at {url} ({err}); start one with `flead worker` or `flead demo`")
        return 2
    recent: list[dict] | str
    try:
        recent = latest_anomalies(settings.db_url, args.device_id, args.anomalies) if settings.db_url else []
    except Exception as err:  # the table view is still useful without the database
        recent = f"database unavailable at {redact_url(settings.db_url)}: {type(err).__name__}"
    if args.json:
        print(json.dumps({**state, "latest_anomalies": recent}, indent=2, default=str))
        return 0
    print(f"device {args.device_id}")
    print(f"  readings          {state['readings']}")
    print(f"  mean / std        {state['mean']:.4f} / {state['std']:.4f}")
    print(f"  anomalies         {state['anomalies']}")
    print(f"  model version     v{state['model_version']} (from global v{state['base_global_version']})")
    print(f"  weights, bias     {[round(w, 5) for w in state['weights']]}, {state['bias']:.5f}")
    print(f"  waiting readings  {state['pending_readings']}")
    print("  latest anomalies:")
    if isinstance(recent, str):
        print(f"    {recent}")
    for a in recent:
        print(f"    {a['timestamp']}  value {a['value']:.4f}  z {a['z_score']:+.2f}  {a['severity']}")
    return 0
