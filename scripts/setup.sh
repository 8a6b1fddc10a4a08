#!/usr/bin/env bash
# Idempotent setup of a FLEAD development/CI machine:
#   - .venv with the package and its dev extras (reinstalled only when setup.cfg/pyproject.toml change)
#   - Debian packages when missing: PostgreSQL server, Java, Maven, Chromium, docker-compose
#   - the Apache Kafka jars, fetched once from Maven Central into ~/.cache/flead (`flead stack fetch`)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup] $*"; }

# --- Debian packages ------------------------------------------------------------------------
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
have_pkg chromium || need+=(chromium)
have_pkg docker-compose || need+=(docker-compose)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing packages: ${need[*]} (install them as root: apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# --- Python environment ---------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.flead-setup-stamp
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import flead_app, pytest" 2>/dev/null; then
  log "pip install -e .[dev]"
  piplog=$(mktemp)
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[dev]"; } >"$piplog" 2>&1; then
    tail -40 "$piplog" >&2
    rm -f "$piplog"
    exit 1
  fi
  rm -f "$piplog"
  echo "$want" >"$stamp"
else
  log ".venv up to date"
fi

# --- Kafka jars (cached per machine; a no-op when already there) -----------------------------
.venv/bin/flead stack fetch
.venv/bin/flead spark fetch
