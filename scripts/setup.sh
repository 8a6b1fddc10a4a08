#!/usr/bin/env bash
# Idempotent setup of a FLEAD development/CI machine:
#   - .venv with the package and its dev extras (reinstalled only when setup.cfg/pyproject.toml change)
#   - Debian packages when missing: PostgreSQL server, Java, Maven, Chromium, docker-compose
#   - TimescaleDB, built from ../shared/vendor/timescaledb-2.28.3.tar.gz and installed into Debian's
#     PostgreSQL when the server lacks that version (`flead stack up` then preloads it)
#   - the Apache Kafka jars, fetched once from Maven Central into ~/.cache/flead (`flead stack fetch`)
set -euo pipefail
# vendored sources live beside the repository: <repo>/../shared (read ../shared/vendor/README.md)
# ($(dirname "$0")/../../shared, made absolute before the cd below)
SHARED_DIR=$(realpath -m "$(dirname "$0")/../../shared")
TIMESCALEDB_ARCHIVE="$SHARED_DIR/vendor/timescaledb-2.28.3.tar.gz"
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

# --- TimescaleDB for Debian's PostgreSQL -----------------------------------------------------
# No registry serves TimescaleDB for Debian's PostgreSQL 15, so it is built from the vendored
# source (Apache-2.0 parts and the Timescale License parts in tsl/: compression and retention
# policies live there). Cached: when the server's extension folder already holds the archive's
# version, nothing is built. Installing postgresql-server-dev-N may upgrade (and restart) the server.
pg_major=$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sed 's#/usr/lib/postgresql/\([^/]*\)/.*#\1#' | sort -n | tail -1)
if [ ! -f "$TIMESCALEDB_ARCHIVE" ]; then
  log "the TimescaleDB source is missing: $TIMESCALEDB_ARCHIVE" >&2
  log "(the shared folder of vendored sources must sit beside the repository as ../shared; see ../shared/vendor/README.md)" >&2
  exit 1
fi
ts_version=$(tar -xzOf "$TIMESCALEDB_ARCHIVE" --wildcards '*/version.config' | sed -n 's/^version = *//p')
if [ -z "$ts_version" ]; then
  log "cannot read the version from $TIMESCALEDB_ARCHIVE (no version.config)" >&2
  exit 1
fi
ts_ext=/usr/share/postgresql/$pg_major/extension
ts_lib=/usr/lib/postgresql/$pg_major/lib
ts_installed() {
  [ -f "$ts_ext/timescaledb--$ts_version.sql" ] && [ -f "$ts_lib/timescaledb-$ts_version.so" ] &&
    [ -f "$ts_lib/timescaledb-tsl-$ts_version.so" ] &&
    grep -q "^default_version = '$ts_version'" "$ts_ext/timescaledb.control" 2>/dev/null
}
if ts_installed; then
  log "TimescaleDB $ts_version installed for PostgreSQL $pg_major (nothing to build)"
else
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "TimescaleDB $ts_version is not installed for PostgreSQL $pg_major and this user cannot build it: run scripts/setup.sh as root" >&2
    exit 1
  fi
  need=()
  for pkg in "postgresql-server-dev-$pg_major" cmake gcc make libkrb5-dev; do
    have_pkg "$pkg" || need+=("$pkg")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    log "installing Debian packages to build TimescaleDB: ${need[*]} (this may upgrade and restart PostgreSQL $pg_major)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
  log "building TimescaleDB $ts_version for PostgreSQL $pg_major from $TIMESCALEDB_ARCHIVE"
  ts_started=$(date +%s)
  ts_build=$(mktemp -d)
  ts_log="$ts_build/build.log"
  if ! (
    set -e
    tar -xzf "$TIMESCALEDB_ARCHIVE" -C "$ts_build"
    cd "$ts_build"/timescaledb-*
    ./bootstrap -DREGRESS_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DTAP_CHECKS=OFF -DSEND_TELEMETRY_DEFAULT=NO \
      -DPG_CONFIG="/usr/lib/postgresql/$pg_major/bin/pg_config"
    make -C build -j"$(nproc)"
    make -C build install
  ) >"$ts_log" 2>&1; then
    tail -40 "$ts_log" >&2
    log "building TimescaleDB failed (the whole log: $ts_log)" >&2
    exit 1
  fi
  rm -rf "$ts_build"
  if ! ts_installed; then
    log "TimescaleDB $ts_version was built but its files are not in $ts_ext and $ts_lib" >&2
    exit 1
  fi
  log "TimescaleDB $ts_version built and installed in $(($(date +%s) - ts_started)) s; \`flead stack up\` preloads it"
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
