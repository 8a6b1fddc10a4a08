"""The ``flead`` command: one entry point, one sub-command per module.

Each module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
sub-command(s) and sets ``func`` to a callable taking the parsed arguments and returning an
exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = [
    "flead_app.stack.cli",
    "flead_app.settings_cli",
    "flead_app.report",
    "flead_app.worker",
    "flead_app.device_cli",
    "flead_app.simulate",
    "flead_app.dashboard.cli",
    "flead_app.spark_support.cli",
    "flead_app.demo_sites",  # flead demo, with --sites (flead_app.demo without them)
    "flead_app.replay_eval",
    "flead_app.bench",
    "flead_app.chaos",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flead", description="FLEAD: federated anomaly detection on Faust")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OwnOrWarnings(logging.Filter):
    """The terminal shows FLEAD's own messages and every library's warnings, not their chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("flead_app") or record.levelno >= logging.WARNING


def configure_logging(verbose: bool) -> None:
    """FLEAD's messages (and libraries' warnings) to the terminal; everything at INFO (DEBUG with
    ``-v``) also to ``$FLEAD_HOME/logs/flead.log``, where library chatter belongs."""
    from flead_app.settings import load_settings

    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    root.setLevel(level)
    terminal = logging.StreamHandler()
    terminal.setFormatter(logging.Formatter(LOG_FORMAT))
    if not verbose:
        terminal.addFilter(_OwnOrWarnings())
    root.addHandler(terminal)
    try:
        path = load_settings().home_path / "logs" / "flead.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(path)
    except (OSError, ValueError):  # an unwritable folder or a bad setting: the terminal still works
        return
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(to_file)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ValueError as err:
        if "FLEAD_" not in str(err):  # not a setting: a bug, with its traceback
            raise
        print(f"flead: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
