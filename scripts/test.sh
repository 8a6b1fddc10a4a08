#!/usr/bin/env bash
# Run the test suite against a real stack: setup, `flead stack up --brokers 4 --sites 0` (Kafka on
# 29092-29095 unless FLEAD_KAFKA_PORT says otherwise, PostgreSQL), pytest, then stop the stack.
# Arguments are passed to pytest; pytest's exit code is the script's.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export FLEAD_HOME="${FLEAD_HOME:-$PWD/.flead}"

stop_stack() {
  echo "[test] stopping the stack"
  .venv/bin/flead stack down || echo "[test] flead stack down failed" >&2
}
trap stop_stack EXIT

echo "[test] starting the stack (FLEAD_HOME=$FLEAD_HOME)"
.venv/bin/flead stack up --brokers 4 --sites 0 --replace

set +e
.venv/bin/pytest -q "$@"
rc=$?
set -e
echo "[test] pytest exit code $rc"
exit "$rc"
