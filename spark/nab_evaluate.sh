#!/usr/bin/env bash
# Replay NAB's labelled series through the pipeline and evaluate them: a thin wrapper of
# `flead replay-eval` (which starts and empties the stack, runs a worker, replays, waits, evaluates
# with Spark on the three held-out splits and prints the table).
#
#   spark/nab_evaluate.sh [CSV] [flead replay-eval options, e.g. --json out.json]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
csv="${1:-$here/../../shared/data/nab/nab_real_all.csv.gz}"
shift || true
exec "$here/../.venv/bin/flead" replay-eval "$csv" "$@"
