"""``flead settings``: every FLEAD_ setting, its default and its value now (secrets masked)."""

from __future__ import annotations

import argparse
import json

from flead_app.settings import documented_settings, load_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("settings", help="show every FLEAD_ setting with its default and current value")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    current = load_settings().redacted()
    if args.json:
        print(json.dumps(current, indent=2))
        return 0
    for s in documented_settings():
        key = s.name.removeprefix("FLEAD_").lower()
        print(f"{s.name:32} = {current[key]!s:28} default {s.default or '(derived)'}: {s.help}")
    return 0
