"""All FLEAD settings in one place.

Every setting is an environment variable with the ``FLEAD_`` prefix; the defaults come from
the system description (2,407 devices, z-score 2.5, training every 50 readings or 60 s,
a global version every 20 updates), except where docs/learning.md measured better: the learning
rate (0.03 rather than 0.001), the alarm rule (the model's standardised score at a 1% budget with
a refractory period, the z-rule a setting), the server step (online Newton; the description's
FedAvg a setting) and a held-out share of devices. ``flead stack up`` records where the local
Kafka cluster and database run in ``$FLEAD_HOME/stack.json``; when the matching variables are
not set, the settings read that file, so every ``flead`` command and ``faust -A flead_app.app``
talks to the stack that is running.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "FLEAD_"
DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
PG_CLUSTER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
DB_BACKENDS = ("auto", "timescaledb", "postgresql")
MAX_KAFKA_PORT = 65535 - 10000 - 9  # controllers listen 10000 above the brokers, up to 9 nodes


WORKERS_DIR = "workers"
#: settings whose values are secrets: masked wherever settings are shown
SECRET_SETTINGS = frozenset({"kafka_sasl_password", "web_token", "dp_key"})
#: the client security settings a secured stack (``flead stack up --secure``, ``stack.json``'s
#: ``security``) fills in when they are not set, and where it keeps each
STACK_SECURITY = {
    "kafka_security_protocol": "protocol",
    "kafka_sasl_mechanism": "mechanism",
    "kafka_sasl_username": "username",
    "kafka_ssl_cafile": "cafile",
}
ROLES = ("all", "site", "central", "fedavg")
#: site K's broker listens on FLEAD_KAFKA_PORT + 10 + K - 1 unless FLEAD_SITE_PORT says otherwise
#: (the central cluster takes PORT..PORT+9)
SITE_PORT_OFFSET = 10


def _home() -> Path:
    return Path(os.environ.get("FLEAD_HOME", Path.cwd() / ".flead")).resolve()


def stack_state_file() -> Path:
    """Where ``flead stack up`` records the running stack (brokers, database URL)."""
    return _home() / "stack.json"


def read_stack_state() -> dict[str, Any]:
    path = stack_state_file()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class Setting:
    """Documentation of one setting, used by ``flead settings`` and the README."""

    name: str
    default: str
    help: str


def _env(name: str, default: Any) -> Any:
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None or raw == "":
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise ValueError(f"{ENV_PREFIX}{name.upper()} must be {kind}, got {raw!r}") from None
    return raw


def setting_env(**values: Any) -> dict[str, str]:
    """The ``FLEAD_`` variables that give a child process these settings.

    Commands that start workers or simulators hand their settings over this way (the child reads
    them with ``load_settings``); nothing here changes this process's own environment.

    >>> setting_env(app_id="bench-1", fedavg_timeout_s=3600.0, demo_keep_stack=True)
    {'FLEAD_APP_ID': 'bench-1', 'FLEAD_FEDAVG_TIMEOUT_S': '3600.0', 'FLEAD_DEMO_KEEP_STACK': '1'}
    """
    known = {f.name for f in _settable()}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    out = {}
    for name, value in values.items():
        out[ENV_PREFIX + name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return out


@dataclass(frozen=True)
class Settings:
    # --- where things are -------------------------------------------------------------
    app_id: str = field(default="flead", metadata={"help": "Faust app id: consumer group and changelog topic prefix"})
    home: str = field(default="", metadata={"help": "State folder (logs, pids, data); default ./.flead"})
    kafka_bootstrap: str = field(
        default="", metadata={"help": "Kafka bootstrap servers; default: the running stack's, else localhost:29092"}
    )
    replication_factor: int = field(
        default=0, metadata={"help": "Replication of topics Faust creates; default min(3, brokers in the stack)"}
    )
    partitions: int = field(default=8, metadata={"help": "Partitions per topic (a multiple of 4)"})
    db_url: str = field(
        default="", metadata={"help": "SQLAlchemy URL of PostgreSQL; default: the database `flead stack up` made"}
    )
    db_name: str = field(
        default="flead", metadata={"help": "Database the local stack creates on its PostgreSQL server"}
    )
    pg_cluster: str = field(
        default="main", metadata={"help": "Debian PostgreSQL cluster the local stack uses (created if missing)"}
    )
    kafka_port: int = field(
        default=29092,
        metadata={"help": "First client port of the local Kafka cluster (brokers PORT.., controllers PORT+10000..)"},
    )
    sites: int = field(
        default=0,
        metadata={
            "help": "Sites (their own one-broker Kafka cluster each) beside the central cluster; default: "
            "the running stack's, else 0 (one cluster)"
        },
    )
    site: int = field(
        default=0,
        metadata={
            "help": "This process works at site K (1..sites): the simulator sends that site's share of the "
            "fleet, workers and tools talk to that site's cluster; 0 = the central cluster"
        },
    )
    role: str = field(
        default="all",
        metadata={
            "help": "Which agents a worker runs: all (one cluster), site (detector + global-model follower), "
            "central (FedAvg + sink) or fedavg (FedAvg alone: the bench's FedAvg ceiling)"
        },
    )
    site_port: int = field(
        default=0,
        metadata={
            "help": "Client port of site 1's broker (site K: PORT+K-1, its controller 10000 above); "
            "default FLEAD_KAFKA_PORT+10"
        },
    )
    mirror_heap: str = field(default="320m", metadata={"help": "Java heap of the MirrorMaker 2 process"})
    kafka_cache: str = field(
        default="", metadata={"help": "Folder of the Kafka jars; default ~/.cache/flead/kafka-<version>"}
    )
    spark_jars: str = field(
        default="", metadata={"help": "Folder of Spark's extra jars; default ~/.cache/flead/spark-jars-<version>"}
    )
    # --- topics -----------------------------------------------------------------------
    topic_readings: str = field(default="edge-iiot-stream", metadata={"help": "Raw readings, key = device_id"})
    topic_anomalies: str = field(default="anomalies", metadata={"help": "Detected anomalies"})
    topic_local_updates: str = field(default="local-model-updates", metadata={"help": "Local model updates"})
    topic_global_updates: str = field(default="global-model-updates", metadata={"help": "Global models"})
    topic_dead_letter: str = field(default="flead-dead-letter", metadata={"help": "Bad input, with the reason"})
    topic_site_evaluations: str = field(
        default="site-evaluations",
        metadata={"help": "Sites topology: each site's held-out evaluation summaries (no readings), to the centre"},
    )
    # --- fleet ------------------------------------------------------------------------
    devices: int = field(default=2407, metadata={"help": "Devices the simulator runs"})
    readings_per_minute: int = field(default=31482, metadata={"help": "Simulator rate, readings per minute"})
    batch_size: int = field(default=1, metadata={"help": "Readings per Kafka message from the simulator (1 = single)"})
    # --- detection and local training ---------------------------------------------------
    z_threshold: float = field(default=2.5, metadata={"help": "|z| above this is an anomaly (warning)"})
    z_critical: float = field(default=3.0, metadata={"help": "|z| from this is critical"})
    min_history: int = field(default=10, metadata={"help": "Readings a device needs before it is scored"})
    train_every: int = field(default=50, metadata={"help": "Train after this many readings"})
    train_interval_s: float = field(default=60.0, metadata={"help": "...or after this many seconds"})
    learning_rate: float = field(
        default=0.03,
        metadata={
            "help": "SGD learning rate (the description's 0.001 leaves the global model at F1 0.09 after a "
            "3-minute demo; 0.03 is the smallest that reliably gets it within 0.03 of the central baseline: "
            "docs/learning.md)"
        },
    )
    local_epochs: int = field(default=1, metadata={"help": "Passes over the local batch per round"})
    prior_anomaly_rate: float = field(
        default=0.04,
        metadata={
            "help": "Anomaly base rate the initial model (global version 0) predicts: its bias is the "
            "log-odds of this; the local-only baseline starts there too"
        },
    )
    alarm_rule: str = field(
        default="model",
        metadata={
            "help": "Which rule raises alarms: model (its standardised score above the threshold, see "
            "FLEAD_THRESHOLD_SCOPE) or zrule (the description's |z| above FLEAD_Z_THRESHOLD); docs/learning.md: on "
            "NAB 51.2 vs -38.2, on the simulator F1 0.76 vs 0.15"
        },
    )
    alarm_budget: float = field(
        default=0.01,
        metadata={"help": "Share of normal readings whose score is above the model's threshold (the alarm budget)"},
    )
    refractory: int = field(
        default=100,
        metadata={"help": "Readings after an alarm in which a device raises no other (either rule; 0: none)"},
    )
    positive_skip: float = field(
        default=0.5,
        metadata={
            "help": "Share of each labelled window, from its start, left out of training: 0.5 for windows centred "
            "on the incident (NAB); 0 for labels that start with it"
        },
    )
    threshold_tail_readings: float = field(
        default=1000.0,
        metadata={
            "help": "Normal readings above the threshold in the server's histogram window (window = this / budget)"
        },
    )
    threshold_scope: str = field(
        default="device",
        metadata={
            "help": "device: each device moves the published threshold toward the budget quantile of its own "
            "scores as they accumulate (the fleet's weighs 10 / budget readings); fleet: the published threshold "
            "as it is. docs/learning.md: NAB held-out devices 50.8 vs 45.8 (offline replica, official split)"
        },
    )
    holdout_percent: float = field(
        default=20.0, metadata={"help": "Share of readings (stable hash) no model trains on: the evaluation set"}
    )
    holdout_device_percent: float = field(
        default=20.0,
        metadata={"help": "Share of devices (CRC-32 of the id) that never train: they score and alarm only"},
    )
    holdout_device_salt: str = field(
        default="", metadata={"help": "Salt of the held-out devices' hash ('' = the official NAB split)"}
    )
    # --- federated aggregation ----------------------------------------------------------
    fedavg_buffer: int = field(default=20, metadata={"help": "Local updates per global version"})
    fedavg_timeout_s: float = field(default=120.0, metadata={"help": "Aggregate a partial buffer after this long"})
    fedavg_history: int = field(
        default=50,
        metadata={
            "help": "Global versions whose parameters the FedAvg agent keeps: updates are averaged as changes "
            "from the version they started from (FedBuff); older bases count as absolute weights"
        },
    )
    aggregator: str = field(
        default="newton",
        metadata={
            "help": "newton (online Newton on the rounds' gradients and Hessians: the central model on the data "
            "seen) | fedavg (the description's sample-weighted FedBuff deltas) | median | trimmed_mean"
        },
    )
    newton_ridge: float = field(
        default=1.0, metadata={"help": "newton: prior precision of each weight (scikit-learn's C = 1)"}
    )
    newton_bias_ridge: float = field(default=0.001, metadata={"help": "newton: prior precision of the bias"})
    newton_max_step: float = field(
        default=1.0, metadata={"help": "newton: largest norm of one version's change (trust region; 0: none)"}
    )
    trim_ratio: float = field(default=0.1, metadata={"help": "Share trimmed at each end by trimmed_mean"})
    staleness_exponent: float = field(
        default=0.5, metadata={"help": "Update weight = samples / (1 + staleness) ** exponent; 0 disables"}
    )
    update_norm_bound: float = field(
        default=10.0,
        metadata={
            "help": "L2 bound on each update before aggregation: its change (newton: gradient and Hessian trace) "
            "is clipped to this multiple of the buffer's median (0: no bound; docs/learning.md, Faulty devices)"
        },
    )
    update_samples_slack: float = field(
        default=1.5,
        metadata={
            "help": "An update's claimed normal samples are capped at FLEAD_TRAIN_EVERY x this (a round holds the "
            "readings since the last one; 0: no cap)"
        },
    )
    update_median_samples: float = field(
        default=3.0,
        metadata={
            "help": "...and at this multiple of the median normals of the buffer's updates (a device claiming "
            "more data than it has counts as this many typical rounds; 0: no cap)"
        },
    )
    update_positives_slack: float = field(
        default=20.0,
        metadata={
            "help": "...and its positives at FLEAD_TRAIN_EVERY x this (a labelled window released when it closes; "
            "0: no cap)"
        },
    )
    dp_noise: float = field(
        default=0.0,
        metadata={
            "help": "Differential privacy of local updates: the Gaussian noise multiplier each update is noised "
            "with on the device, after clipping (0: off; algorithms/privacy.py). The report shows the epsilon spent"
        },
    )
    dp_clip: float = field(
        default=0.1,
        metadata={"help": "Differential privacy: the L2 bound on an update's parameter change (with FLEAD_DP_NOISE)"},
    )
    dp_delta: float = field(
        default=1e-5, metadata={"help": "Differential privacy: the delta at which the report states epsilon"}
    )
    dp_key: str = field(
        default="",
        metadata={
            "help": "Differential privacy: the secret the noise is derived from (a replay sends the same noise); "
            "empty: a fresh random key per worker process"
        },
    )
    faulty_share: float = field(
        default=0.0,
        metadata={
            "help": "FAULT INJECTION, for experiments only: this share of devices (stable hash of the id) sends "
            "corrupted local updates"
        },
    )
    fault_kinds: str = field(
        default="nonfinite,scale,flip,samples",
        metadata={"help": "Fault injection: the kinds faulty devices take, one each (algorithms/robust.py)"},
    )
    # --- worker ------------------------------------------------------------------------
    store: str = field(default="rocksdb://", metadata={"help": "Faust table store (rocksdb:// or memory://)"})
    web_port: int = field(default=6066, metadata={"help": "Faust worker web port (live page /dashboard)"})
    web_host: str = field(
        default="127.0.0.1",
        metadata={
            "help": "Address the worker's web server binds (127.0.0.1: this machine only); beyond loopback "
            "(0.0.0.0, a LAN address) FLEAD_WEB_TOKEN must be set"
        },
    )
    web_token: str = field(
        default="",
        repr=False,
        metadata={
            "help": "Bearer token the worker's state-changing endpoints (POST /flead/train-pending/) require "
            "(`Authorization: Bearer <token>`); required when FLEAD_WEB_HOST is beyond loopback (never logged)"
        },
    )
    event_loop: str = field(
        default="uvloop", metadata={"help": "Worker event loop: uvloop (~20% more single-reading messages/s) or aio"}
    )
    sink_batch: int = field(default=500, metadata={"help": "Rows per database insert"})
    detector_batch: int = field(
        default=2000, metadata={"help": "Messages the detector takes at once (grouped by device, one step each)"}
    )
    detector_batch_wait_s: float = field(
        default=0.05, metadata={"help": "...or what arrived within this many seconds, whichever comes first"}
    )
    state_cache_rows: int = field(
        default=50_000,
        metadata={"help": "Device rows a worker keeps in memory between commits (changed rows always stay)"},
    )
    # --- database (TimescaleDB policies; plain PostgreSQL keeps everything) ---------------
    db_backend: str = field(
        default="auto",
        metadata={
            "help": "auto (TimescaleDB when the server can load it, else plain PostgreSQL) | timescaledb (fail "
            "clearly without it) | postgresql (plain tables even where TimescaleDB is there)"
        },
    )
    retention_days: int = field(default=30, metadata={"help": "TimescaleDB drops chunks older than this"})
    compress_after_days: int = field(default=7, metadata={"help": "TimescaleDB compresses chunks older than this"})
    chunk_hours: int = field(default=24, metadata={"help": "TimescaleDB chunk interval, hours"})
    # --- Kafka client security (optional) -------------------------------------------------
    kafka_security_protocol: str = field(
        default="PLAINTEXT", metadata={"help": "PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL"}
    )
    kafka_sasl_mechanism: str = field(default="PLAIN", metadata={"help": "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512"})
    kafka_sasl_username: str = field(
        default="", metadata={"help": "SASL user; default: the secured stack's application user (flead)"}
    )
    kafka_sasl_password: str = field(
        default="",
        repr=False,
        metadata={"help": "SASL password (never logged); default: the secured stack's, from its password file"},
    )
    kafka_ssl_cafile: str = field(default="", metadata={"help": "CA bundle for SSL; default: the secured stack's CA"})
    kafka_ssl_certfile: str = field(default="", metadata={"help": "Client certificate for SSL"})
    kafka_ssl_keyfile: str = field(default="", metadata={"help": "Client key for SSL"})
    # --- versions of the local stack -------------------------------------------------------
    kafka_version: str = field(default="3.9.1", metadata={"help": "Apache Kafka fetched from Maven Central"})
    spark_master: str = field(default="local[*]", metadata={"help": "Spark master URL"})
    eval_sample_rows: int = field(
        default=2000, metadata={"help": "Per-sample model_evaluations rows kept per evaluated model version"}
    )
    demo_keep_stack: bool = field(default=False, metadata={"help": "`flead demo` leaves the stack running"})
    # --- derived (not read from the environment) -------------------------------------------
    db_url_given: bool = field(
        default=False, metadata={"derived": True, "help": "FLEAD_DB_URL was set: a database the stack does not run"}
    )

    # ---------------------------------------------------------------------------------
    @property
    def home_path(self) -> Path:
        return Path(self.home).resolve() if self.home else _home()

    @property
    def site_topics(self) -> list[str]:
        """A site's cluster holds every pipeline topic, and its evaluation summaries start there."""
        return [*self.pipeline_topics, self.topic_site_evaluations]

    @property
    def pipeline_topics(self) -> list[str]:
        """The five topics of the pipeline (not the tables' changelogs), readings first."""
        return [
            self.topic_readings,
            self.topic_anomalies,
            self.topic_local_updates,
            self.topic_global_updates,
            self.topic_dead_letter,
        ]

    @property
    def at_site(self) -> bool:
        """This process works at a site (its cluster is the site's), not at the centre."""
        return self.site > 0

    @property
    def sink_group(self) -> str:
        """The database sink's consumer group (the Faust agents use ``app_id``)."""
        return f"{self.app_id}-sink"

    @property
    def worker_dir(self) -> Path:
        """This worker's local table files (RocksDB), one folder per app id and web port.

        Per app id (and site), because the files cache changelog topics of that app on that
        cluster: a worker of another app (a benchmark, a test) or another site must not find them.
        ``flead stack up --replace`` and ``flead stack down --wipe`` delete all of them with the
        Kafka data they cache.
        """
        site = f"-site{self.site}" if self.site else ""
        return self.home_path / WORKERS_DIR / f"{self.app_id}{site}-{self.web_port}"

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]

    @property
    def broker_url(self) -> str:
        """Faust's broker URL: ``kafka://h1:p1;h2:p2``."""
        return ";".join(f"kafka://{s}" for s in self.bootstrap_servers)

    def redacted(self) -> dict[str, Any]:
        """Settings safe to print or log: secrets and DB credentials masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_SETTINGS and value:
                value = "***"
            if f.name == "db_url":
                value = redact_url(value)
            out[f.name] = value
        return out


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _settable() -> list:
    """The fields read from ``FLEAD_`` variables (derived ones are computed by ``load_settings``)."""
    return [f for f in fields(Settings) if not f.metadata.get("derived")]


def documented_settings() -> list[Setting]:
    return [Setting(ENV_PREFIX + f.name.upper(), str(f.default), f.metadata.get("help", "")) for f in _settable()]


def load_settings() -> Settings:
    """Read the environment (and the running stack's state file) into a ``Settings``."""
    values = {f.name: _env(f.name, f.default) for f in _settable()}
    values["db_url_given"] = bool(values["db_url"])
    state = read_stack_state()
    stack_sites = state.get("sites") or {}
    if not values["sites"]:
        values["sites"] = len(stack_sites)
    if values["role"] not in ROLES:
        raise ValueError(f"FLEAD_ROLE must be one of {', '.join(ROLES)}, got {values['role']!r}")
    if values["site"] < 0 or (values["site"] and values["site"] > values["sites"]):
        raise ValueError(
            f"FLEAD_SITE={values['site']} is not one of the {values['sites']} site(s) (1..{values['sites']})"
        )
    if values["role"] == "site" and not values["site"]:
        raise ValueError("FLEAD_ROLE=site needs FLEAD_SITE=K: which site the worker serves")
    if values["role"] in ("central", "fedavg") and values["site"]:
        raise ValueError(f"FLEAD_ROLE={values['role']} runs on the central cluster: unset FLEAD_SITE")
    if not values["site_port"]:
        values["site_port"] = values["kafka_port"] + SITE_PORT_OFFSET
    site_state = stack_sites.get(str(values["site"]), {}) if values["site"] else {}
    cluster_state = site_state if values["site"] else state  # the cluster this process talks to
    if not values["kafka_bootstrap"]:
        default = f"localhost:{values['site_port'] + values['site'] - 1}" if values["site"] else "localhost:29092"
        values["kafka_bootstrap"] = cluster_state.get("bootstrap", default)
    if not values["replication_factor"]:
        brokers = int(cluster_state.get("brokers", 1) or 1)
        values["replication_factor"] = min(3, brokers)
    if not values["db_url"]:
        values["db_url"] = state.get("db_url", "")
    values.update(stack_security(values, cluster_state.get("security") or {}, _unset))
    problem = web_exposure_problem(values["web_host"], values["web_token"])
    if problem:
        raise ValueError(problem)
    if values["partitions"] % 4:
        raise ValueError(f"FLEAD_PARTITIONS must be a multiple of 4, got {values['partitions']}")
    if values["aggregator"] not in {"newton", "fedavg", "median", "trimmed_mean"}:
        raise ValueError(
            f"FLEAD_AGGREGATOR must be newton, fedavg, median or trimmed_mean, got {values['aggregator']!r}"
        )
    if not 0.0 < values["alarm_budget"] < 1.0:
        raise ValueError(f"FLEAD_ALARM_BUDGET must lie in (0, 1), got {values['alarm_budget']}")
    if not 0.0 <= values["positive_skip"] < 1.0:
        raise ValueError(f"FLEAD_POSITIVE_SKIP must lie in [0, 1), got {values['positive_skip']}")
    if values["refractory"] < 0 or values["threshold_tail_readings"] <= 0:
        raise ValueError("FLEAD_REFRACTORY must be >= 0 and FLEAD_THRESHOLD_TAIL_READINGS > 0")
    if values["threshold_scope"] not in {"device", "fleet"}:
        raise ValueError(f"FLEAD_THRESHOLD_SCOPE must be device or fleet, got {values['threshold_scope']!r}")
    if values["alarm_rule"] not in {"zrule", "model"}:
        raise ValueError(f"FLEAD_ALARM_RULE must be zrule or model, got {values['alarm_rule']!r}")
    if values["event_loop"] not in {"uvloop", "aio"}:
        raise ValueError(f"FLEAD_EVENT_LOOP must be uvloop or aio, got {values['event_loop']!r}")
    if values["db_backend"] not in DB_BACKENDS:
        raise ValueError(
            f"FLEAD_DB_BACKEND must be {', '.join(DB_BACKENDS[:-1])} or {DB_BACKENDS[-1]}, got {values['db_backend']!r}"
        )
    if not DB_NAME_RE.match(values["db_name"]):
        raise ValueError(
            f"FLEAD_DB_NAME={values['db_name']!r} is not a plain database name (lower-case letters, digits, _)"
        )
    if not PG_CLUSTER_RE.match(values["pg_cluster"]):
        raise ValueError(f"FLEAD_PG_CLUSTER={values['pg_cluster']!r} is not a cluster name")
    if not 1024 <= values["kafka_port"] <= MAX_KAFKA_PORT:
        raise ValueError(
            f"FLEAD_KAFKA_PORT={values['kafka_port']} is out of range: the stack needs PORT..PORT+9 and "
            f"PORT+10000.. free, below 65536"
        )
    if not 1024 <= values["site_port"] <= 65535 - 10000 - max(values["sites"], 1):
        raise ValueError(
            f"FLEAD_SITE_PORT={values['site_port']} is out of range: sites need PORT..PORT+sites-1 and "
            f"PORT+10000.. free, below 65536"
        )
    if values["dp_noise"] < 0 or values["dp_clip"] <= 0 or not 0.0 < values["dp_delta"] < 1.0:
        raise ValueError(
            f"FLEAD_DP_NOISE must be >= 0 (0: off), FLEAD_DP_CLIP > 0 and FLEAD_DP_DELTA in (0, 1); got "
            f"{values['dp_noise']}, {values['dp_clip']}, {values['dp_delta']}"
        )
    if not 0.0 <= values["faulty_share"] <= 1.0:
        raise ValueError(f"FLEAD_FAULTY_SHARE must lie in [0, 1], got {values['faulty_share']}")
    bounds = ("update_norm_bound", "update_samples_slack", "update_median_samples", "update_positives_slack")
    if min(values[name] for name in bounds) < 0:
        raise ValueError(
            "FLEAD_UPDATE_NORM_BOUND, FLEAD_UPDATE_SAMPLES_SLACK, FLEAD_UPDATE_MEDIAN_SAMPLES and "
            "FLEAD_UPDATE_POSITIVES_SLACK must be >= 0 (0: off)"
        )
    if not 0.0 < values["prior_anomaly_rate"] < 1.0:
        raise ValueError(f"FLEAD_PRIOR_ANOMALY_RATE must lie in (0, 1), got {values['prior_anomaly_rate']}")
    return Settings(**values)


def _unset(name: str) -> bool:
    return not os.environ.get(ENV_PREFIX + name.upper())


def _read_password(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as err:
        raise ValueError(
            f"the secured stack's password file {path} cannot be read ({err.strerror}): set "
            f"FLEAD_KAFKA_SASL_PASSWORD, or run `flead stack up --secure` as the user who owns it"
        ) from None


def stack_security(values: dict[str, Any], security: dict[str, str], unset: Any = _unset) -> dict[str, str]:
    """The client security settings a secured stack gives, for those ``unset(name)`` says were
    not set: its protocol, mechanism, user and CA, and the password read from its file.

    A setting given in the environment wins, so ``FLEAD_KAFKA_SASL_PASSWORD=wrong`` tries a wrong
    password and ``FLEAD_KAFKA_SECURITY_PROTOCOL=PLAINTEXT`` a client without TLS or SASL.

    >>> sec = {"protocol": "SASL_SSL", "mechanism": "SCRAM-SHA-512", "username": "flead", "cafile": "/s/ca.pem"}
    >>> stack_security({}, sec, unset=lambda name: name != "kafka_sasl_username")
    {'kafka_security_protocol': 'SASL_SSL', 'kafka_sasl_mechanism': 'SCRAM-SHA-512', 'kafka_ssl_cafile': '/s/ca.pem'}
    >>> stack_security({}, {})
    {}
    """
    if not security:
        return {}
    out = {name: security[key] for name, key in STACK_SECURITY.items() if key in security and unset(name)}
    if security.get("password_file") and unset("kafka_sasl_password"):
        out["kafka_sasl_password"] = _read_password(security["password_file"])
    return out


def is_loopback(host: str) -> bool:
    """The address answers only this machine (``localhost``, 127.0.0.0/8, ``::1``).

    >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::", "10.0.0.5", "example.org")]
    [True, True, True, False, False, False, False]
    """
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve beyond this machine


def web_exposure_problem(host: str, token: str) -> str:
    """Why a worker's web server may not start on ``host`` ('' when it may): bound beyond loopback,
    its state-changing endpoints need a token.

    >>> web_exposure_problem("127.0.0.1", ""), web_exposure_problem("0.0.0.0", "t0ken")
    ('', '')
    >>> web_exposure_problem("0.0.0.0", "")[:60]
    'FLEAD_WEB_HOST=0.0.0.0 serves the worker beyond this machine'
    """
    if is_loopback(host) or token:
        return ""
    return (
        f"FLEAD_WEB_HOST={host} serves the worker beyond this machine: set FLEAD_WEB_TOKEN to a secret "
        "that its state-changing endpoints (POST /flead/train-pending/) will require as "
        "`Authorization: Bearer <token>`, or bind 127.0.0.1"
    )


def at_site(settings: Settings, site: int, state: dict[str, Any] | None = None, **changes: Any) -> Settings:
    """``settings`` as a process working at site ``site`` has them: that site's cluster (from
    ``stack.json`` or ``state``, else its default port) and its replication; ``site=0`` is the centre.

    For commands that talk to several clusters (the demo, the report, tests); a process that
    works at one site gets ``FLEAD_SITE`` instead (``setting_env(site=K)``).

    >>> s = at_site(Settings(kafka_bootstrap="localhost:29092", sites=2, site_port=29102), 2, state={})
    >>> s.site, s.kafka_bootstrap, s.replication_factor
    (2, 'localhost:29103', 1)
    """
    from dataclasses import replace

    if not 0 <= site <= settings.sites:
        raise ValueError(f"site {site} is not one of the {settings.sites} site(s) (1..{settings.sites})")
    state = read_stack_state() if state is None else state
    if site == 0:
        bootstrap = state.get("bootstrap", settings.kafka_bootstrap) if settings.site else settings.kafka_bootstrap
        rf = min(3, int(state.get("brokers", 1) or 1))
    else:
        site_state = (state.get("sites") or {}).get(str(site), {})
        bootstrap = site_state.get("bootstrap", f"localhost:{settings.site_port + site - 1}")
        rf = 1
    return replace(settings, site=site, kafka_bootstrap=bootstrap, replication_factor=rf, **changes)
