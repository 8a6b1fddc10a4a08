"""``flead stack up|status|down|kill-broker|start-broker|fetch``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flead_app.stack.errors import StackError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stack",
        help="local Kafka cluster (KRaft) and PostgreSQL",
        description="Run a real Apache Kafka cluster (KRaft, local java processes) and "
        "PostgreSQL on this machine. State lives in $FLEAD_HOME (default ./.flead); the first "
        "client port is $FLEAD_KAFKA_PORT (default 29092).",
    )
    sub = p.add_subparsers(dest="stack_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    up = sub.add_parser("up", help="start (or verify) the cluster, the database and the topics")
    up.add_argument("--brokers", type=int, choices=[1, 4], default=None,
                    help="1 (dev) or 4 (3 controllers + 1 broker, RF 3); default: the existing "
                    "cluster's, else 4")  # fmt: skip
    up.add_argument("--sites", type=int, default=None, metavar="N",
                    help="N sites beside the central cluster: a one-broker cluster each (ports from "
                    "$FLEAD_SITE_PORT) and MirrorMaker 2 carrying model updates and anomalies up, global "
                    "models down; 0 stops them; default: as many as the running stack has")  # fmt: skip
    up.add_argument(
        "--replace", action="store_true", help="stop a running cluster of another size in this FLEAD_HOME first"
    )
    up.add_argument("--secure", action=argparse.BooleanOptionalAction, default=None,
                    help="SASL_SSL brokers (SCRAM-SHA-512 over TLS, certificates and passwords made in "
                    "$FLEAD_HOME/secrets) with ACLs; --no-secure: PLAINTEXT; default: as the existing "
                    "cluster is, else PLAINTEXT. A change of either needs --replace while it runs")  # fmt: skip
    up.add_argument("--no-db", action="store_true", help="do not start or check PostgreSQL")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for brokers")
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", help="brokers, controller quorum, topics, database")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--all-topics", action="store_true", help="every topic, not only FLEAD's")
    st.set_defaults(func=cmd_status)

    dn = sub.add_parser("down", help="stop what `up` started")
    dn.add_argument("--wipe", action="store_true", help="also delete the Kafka data")
    dn.set_defaults(func=cmd_down)

    rs = sub.add_parser(
        "reset", help="empty the pipeline's topics, worker tables and database tables (the stack stays up)"
    )
    rs.add_argument("--yes", action="store_true", help="do not ask")
    rs.set_defaults(func=cmd_reset)

    kb = sub.add_parser("kill-broker", help="SIGKILL broker N (fault tests)")
    kb.add_argument("node", type=int)
    kb.set_defaults(func=cmd_kill)

    sb = sub.add_parser("start-broker", help="restart broker N and wait until it is registered")
    sb.add_argument("node", type=int)
    sb.add_argument("--timeout", type=float, default=180.0)
    sb.set_defaults(func=cmd_start)

    mc = sub.add_parser(
        "mirror-config",
        help="print MirrorMaker 2's configuration for sites on other machines (mm2.properties)",
        description="The mm2.properties `flead stack up --sites N` generates, for clusters anywhere: run it "
        "with Kafka's bin/connect-mirror-maker.sh (or org.apache.kafka.connect.mirror.MirrorMaker) next to "
        "the central cluster. Topic names come from the FLEAD_TOPIC_* settings.",
    )
    mc.add_argument("--central", default=None, metavar="HOST:PORT[,...]",
                    help="the central cluster's bootstrap servers (default: the settings')")  # fmt: skip
    mc.add_argument("--central-replication", type=int, default=None, metavar="N",
                    help="replication of topics created centrally (default: the settings')")  # fmt: skip
    mc.add_argument("--site", action="append", required=True, metavar="K=HOST:PORT[,...]",
                    help="site K's bootstrap servers; once per site")  # fmt: skip
    mc.set_defaults(func=cmd_mirror_config)

    fe = sub.add_parser("fetch", help="only download the Kafka jars into the cache")
    fe.set_defaults(func=cmd_fetch)


def cmd_reset(args: argparse.Namespace) -> int:
    from flead_app.settings import load_settings
    from flead_app.stack.reset import reset

    settings = load_settings()
    if not args.yes and sys.stdin.isatty():
        answer = input(f"empty the topics and tables of app {settings.app_id!r} on {settings.kafka_bootstrap}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 1
    try:
        result = reset(settings)
    except Exception as exc:  # Kafka or the database not answering: say so, no traceback
        return _fail(exc)
    print(f"flead stack reset: {result.describe()}")
    return 0


def _fail(exc: Exception) -> int:
    print(f"flead stack: {exc}", file=sys.stderr)
    return 1


def cmd_up(args: argparse.Namespace) -> int:
    from flead_app.settings import redact_url
    from flead_app.stack.local import up

    try:
        res = up(args.brokers, with_db=not args.no_db, timeout=args.timeout, replace=args.replace, sites=args.sites,
                 secure=args.secure)  # fmt: skip
    except StackError as exc:
        return _fail(exc)
    c = res.cluster
    print(f"Kafka {c.version}: {c.brokers} broker(s) up at {c.bootstrap}"
          f" (started now: {res.started_nodes or 'none, already running'})")  # fmt: skip
    if c.secure:
        print(security_lines(read_security(c.home)))
    print(f"  replication {c.plan.replication_factor}, min.insync.replicas {c.plan.min_insync_replicas}; "
          f"topics created now: {', '.join(res.created_topics) or 'none (all existed)'}")  # fmt: skip
    if not args.no_db:
        print(f"Database: {redact_url(res.db_url)}" + (" (server started now)" if res.db_started else ""))
        if res.preload:
            print(f"  {res.preload}")
        print(f"  schema created or checked: {res.db_backend}")
    if res.sites is not None:
        started = (res.sites_result or {}).get("started_sites") or "none, already running"
        for k, site in res.sites.clusters.items():
            print(f"Site {k}: 1 broker at {site.bootstrap}, replication 1 (all FLEAD topics)")
        print(f"  sites started now: {started}; the central cluster has no readings topic")
        mm = res.sites.mirror
        how = "started now" if (res.sites_result or {}).get("mirror_started") else "already running"
        print(f"MirrorMaker 2 ({how}, "
              f"pid {mm.pid()}): {', '.join(mm.plan.up)} site -> central; {', '.join(mm.plan.down)} central -> "
              f"site; config {mm.config_file}")  # fmt: skip
    print(f"jars: {'downloaded' if res.downloaded else 'cached, nothing downloaded'}; "
          f"ready in {res.seconds:.1f} s; state in {c.home / 'stack.json'}")  # fmt: skip
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from flead_app.stack.local import down

    try:
        out = down(args.wipe)
    except StackError as exc:
        return _fail(exc)
    for name, result in out.get("sites", {}).items():
        print(f"{'MirrorMaker 2' if name == 'mirror' else name.replace('site', 'Site ')}: {result}")
    if not out["kafka"]:
        print("Kafka: no cluster in this FLEAD_HOME")
    for node, result in sorted(out["kafka"].items()):
        print(f"Kafka broker {node}: {result}")
    if "wiped" in out:
        print(f"deleted {out['wiped']}")
    print(f"PostgreSQL: {out['postgres']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from flead_app.stack.local import status

    try:
        ok, data = status(args.all_topics)
    except StackError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(format_status(data))
    return 0 if ok else 1


def read_security(home: Any) -> dict[str, Any]:
    from flead_app.stack.local import read_state

    return read_state(home).get("security") or {}


def security_lines(sec: dict[str, Any]) -> str:
    """How a secured cluster is reached, for ``up`` and ``status``: where the secrets are, never them.

    >>> print(security_lines({}))
    security: PLAINTEXT (no TLS, no authentication, no ACLs)
    >>> sec = {"protocol": "SASL_SSL", "mechanism": "SCRAM-SHA-512", "username": "flead",
    ...        "password_file": "/h/secrets/kafka-flead.password", "cafile": "/h/secrets/ca.pem",
    ...        "admin_properties": "/h/secrets/admin.properties"}
    >>> print(security_lines(sec).splitlines()[1])
      clients log in as flead (password in /h/secrets/kafka-flead.password), trusting the CA /h/secrets/ca.pem
    """
    if not sec:
        return "security: PLAINTEXT (no TLS, no authentication, no ACLs)"
    return "\n".join(
        [
            f"security: {sec['protocol']} ({sec['mechanism']} over TLS), ACLs enforced; the controller listener "
            "is PLAINTEXT on 127.0.0.1",
            f"  clients log in as {sec['username']} (password in {sec['password_file']}), trusting the CA "
            f"{sec['cafile']}",
            f"  FLEAD commands with this FLEAD_HOME do so on their own; Kafka's tools: --command-config "
            f"{sec['admin_properties']} (the admin)",
        ]
    )


def format_status(data: dict[str, Any]) -> str:
    if "kafka" not in data:
        return data.get("error", "no stack")
    k = data["kafka"]
    lines = [f"Kafka {data['kafka_version']} cluster {k['cluster_id']}  bootstrap {k['bootstrap']}"]
    lines.append(security_lines(data.get("security") or {}))
    lines.append(f"  {'broker':<7}{'address':<18}{'roles':<19}{'pid':<9}alive")
    for b in k["brokers"]:
        alive = "yes" if b["alive"] else ("NO (not registered)" if b["process"] else "NO (not running)")
        lines.append(f"  {b['node_id']:<7}{b['address']:<18}{b['roles']:<19}{b['pid'] or '-'!s:<9}{alive}")
    c = k["controller"]
    if c.get("leader_id") not in (None, -1):
        lines.append(
            f"controller quorum: leader {c['leader_id']} (epoch {c['leader_epoch']}, high watermark "
            f"{c['high_watermark']}), voters {c['voters']}, observers {c['observers']}"
        )
    else:
        lines.append(f"controller quorum: NO LEADER ({c.get('error') or 'unknown'})")
    lines.append("topics:")
    for t in k["topics"]:
        if not t["exists"]:
            lines.append(f"  {t['name']}: MISSING ({t['error']})")
            continue
        rf = len(t["partitions"][0]["replicas"]) if t["partitions"] else 0
        flags = "" if t["healthy"] else "  NOT HEALTHY (partitions without leader)"
        if t["under_replicated"]:
            flags += f"  {t['under_replicated']} under-replicated"
        lines.append(f"  {t['name']}: {len(t['partitions'])} partitions, replication {rf}{flags}")
        cells = []
        for p in t["partitions"]:
            leader = p["leader"] if p["leader"] >= 0 else "NONE"
            isr = ",".join(str(i) for i in p["isr"])
            cells.append(f"p{p['partition']}: leader {leader} isr [{isr}]")
        for i in range(0, len(cells), 4):
            lines.append("    " + "   ".join(f"{c:<26}" for c in cells[i : i + 4]).rstrip())
    for k, site in (data.get("sites") or {}).items():
        b = site["brokers"][0]
        alive = "yes" if b["alive"] else "NO"
        bad = [t["name"] for t in site["topics"] if not t["healthy"]]
        health = f", NOT HEALTHY: {', '.join(bad)}" if bad else ", healthy"
        lines.append(f"site {k}: broker {b['address']} pid {b['pid'] or '-'} alive {alive}; "
                     f"{len(site['topics'])} topics{health}")  # fmt: skip
    if "mirror" in data:
        m = data["mirror"]
        lines.append(f"MirrorMaker 2: pid {m['pid'] or 'NOT RUNNING'}  (config {m['config']}, log {m['log']})")
        for f in m["flows"]:
            lines.append(f"  {f['source']} -> {f['target']}: {', '.join(f['topics'])}  [{f['state']}]")
    db = data["database"]
    lines.append(
        f"database: {db.get('url') or '-'} {'answers' if db['answers'] else 'DOES NOT ANSWER: ' + db['error']}"
    )
    if "backend" in db:
        lines.append(f"database backend: {db['backend']['text']}")
    lines.append("status: OK" if data["ok"] else "status: NOT OK")
    return "\n".join(lines)


def _cluster():
    from flead_app.settings import load_settings
    from flead_app.stack.kafka import KafkaCluster

    settings = load_settings()
    cluster = KafkaCluster.from_home(settings.home_path)
    if cluster is None:
        raise StackError(f"no cluster in {settings.home_path}: run `flead stack up` first")
    return cluster


def cmd_kill(args: argparse.Namespace) -> int:
    try:
        cluster = _cluster()
        killed = cluster.kill(args.node)
    except (StackError, ValueError) as exc:
        return _fail(exc)
    print(f"broker {args.node}: {'killed (SIGKILL)' if killed else 'was not running'}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    try:
        cluster = _cluster()
        started = cluster.start(args.node, args.timeout)
    except (StackError, ValueError) as exc:
        return _fail(exc)
    print(f"broker {args.node}: {'started and registered' if started else 'already running'}")
    return 0


def cmd_mirror_config(args: argparse.Namespace) -> int:
    from flead_app.settings import load_settings
    from flead_app.stack.config import MirrorPlan, render_mm2_properties, site_alias
    from flead_app.stack.sites import down_topics, up_topics

    settings = load_settings()
    sites = []
    for item in args.site:
        key, sep, bootstrap = item.partition("=")
        if not sep or not key.isdigit() or not bootstrap:
            return _fail(StackError(f"--site takes K=HOST:PORT[,...], got {item!r}"))
        sites.append((site_alias(int(key)), bootstrap))
    plan = MirrorPlan(args.central or settings.kafka_bootstrap, args.central_replication or settings.replication_factor,
                      tuple(sites), up_topics(settings), down_topics(settings))  # fmt: skip
    sys.stdout.write(render_mm2_properties(plan))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from flead_app.settings import load_settings
    from flead_app.stack.fetch import fetch

    try:
        res = fetch(load_settings().kafka_version)
    except StackError as exc:
        return _fail(exc)
    how = "downloaded" if res.downloaded else "already cached, nothing downloaded"
    print(f"Kafka jars: {res.jars} in {res.libs} ({how}, {res.seconds:.1f} s)")
    return 0
