#!/usr/bin/env bash
# Replay the NAB realKnownCause series (real, labelled) into edge-iiot-stream, wait until the
# worker has turned them into global models, then evaluate every new global version and the
# local/central baselines on the held-out readings and print the summary.
#
#   flead stack up && flead worker &      # the pipeline must be running
#   spark/nab_evaluate.sh [CSV] [--master URL]
#
# QUIET_S (default 30): the worker counts as done when no global version appeared for this long;
# MAX_WAIT_S (default 900) bounds the wait.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
csv="${1:-$here/../../shared/data/nab/nab_realknowncause.csv.gz}"
shift || true
command -v flead >/dev/null || { echo "flead is not on PATH (activate the venv)" >&2; exit 1; }
[ -r "$csv" ] || { echo "no CSV at $csv" >&2; exit 1; }

flead simulate --csv "$csv" --rate 0 --batch 10

"$(dirname "$(command -v flead)")/python" - <<PY
import time
from sqlalchemy import text
from flead_app.io.db.store import Database
from flead_app.settings import load_settings

quiet, deadline = float("${QUIET_S:-30}"), time.monotonic() + float("${MAX_WAIT_S:-900}")
db = Database(load_settings().db_url)
last, since = None, time.monotonic()
while time.monotonic() < deadline:
    with db.engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM federated_models")).scalar_one()
    if n != last:
        last, since = n, time.monotonic()
        print(f"{n} global model rows so far", flush=True)
    elif n and time.monotonic() - since >= quiet:
        break
    time.sleep(2)
db.close()
PY

flead spark evaluate "$@"
flead spark summary
