"""``flead spark fetch|jars|analytics|evaluate|evaluate-site|merge-evaluations|schedule|summary``.

``analytics`` and ``evaluate`` start Spark in this process (local mode by default, the
``--master`` of a cluster otherwise); ``spark/analytics.py`` and ``spark/evaluate.py`` run the
same code under ``spark-submit``. ``schedule`` runs them as child processes, forever.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

EXIT_NO_DATA = 3  # global versions wait but the topic holds no labelled held-out reading yet


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "spark",
        help="PySpark: hourly stream analytics and held-out evaluation of global models",
        description="Batch jobs over edge-iiot-stream with PySpark (see docs/spark.md).",
    )
    sub = p.add_subparsers(dest="spark_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    fe = sub.add_parser("fetch", help="download the Kafka connector and JDBC jars with Maven (once)")
    fe.set_defaults(func=cmd_fetch)

    jr = sub.add_parser("jars", help="print the cached jars, comma-separated, for spark-submit --jars")
    jr.set_defaults(func=cmd_jars)

    an = sub.add_parser("analytics", help="stats per device, partition and broker for one window")
    add_analytics_args(an)
    add_spark_args(an)
    an.set_defaults(func=cmd_analytics)

    ev = sub.add_parser("evaluate", help="evaluate new global versions and the baselines on held-out readings")
    add_evaluate_args(ev)
    add_spark_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    es = sub.add_parser(
        "evaluate-site",
        help="at site k (FLEAD_SITE=k): evaluate global versions on the site's own held-out readings and send "
        "only the summaries to the centre (docs/spark.md)",
    )
    add_evaluate_args(es)
    add_spark_args(es)
    es.set_defaults(func=cmd_evaluate_site)

    me = sub.add_parser("merge-evaluations", help="at the centre: merge the sites' evaluation summaries into the "
                        "evaluation tables")  # fmt: skip
    me.add_argument("--sites", type=int, default=None, help="how many sites to wait for (default: the stack's)")
    me.add_argument("--json", action="store_true", help="machine-readable result")
    me.set_defaults(func=cmd_merge_evaluations)

    sc = sub.add_parser("schedule", help="run analytics hourly and evaluation when new versions exist")
    sc.add_argument("--poll-s", type=float, default=60.0, help="seconds between checks for new global versions")
    sc.add_argument("--delay-s", type=float, default=120.0, help="wait this long after an hour ends (late records)")
    sc.add_argument("--backoff-s", type=float, default=30.0, help="first retry delay after a failed job")
    sc.add_argument("--max-backoff-s", type=float, default=900.0, help="longest retry delay")
    sc.add_argument("--job-timeout-s", type=float, default=3600.0, help="kill a job running longer")
    sc.add_argument("--max-catchup-hours", type=int, default=24, help="hours caught up after a pause")
    add_spark_args(sc)
    sc.set_defaults(func=cmd_schedule)

    sm = sub.add_parser("summary", help="print the held-out evaluation summary (JSON)")
    sm.set_defaults(func=cmd_summary)


def add_spark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master", default=None, help="Spark master (default FLEAD_SPARK_MASTER, local[*])")
    p.add_argument("--driver-memory", default="1g", help="driver memory (default 1g)")
    p.add_argument("--shuffle-partitions", type=int, default=4, help="spark.sql.shuffle.partitions (default 4)")


def add_analytics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", help="window start, ISO 8601 (UTC if no offset)")
    p.add_argument("--end", help="window end (exclusive), ISO 8601")
    p.add_argument("--last-hour", action="store_true", help="the last complete hour (the default)")
    p.add_argument(
        "--slack-s",
        type=float,
        default=600.0,
        help="read this much beyond the window, for out-of-order producer timestamps (default 600)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable result")


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="re-evaluate every global version, not only new ones")
    p.add_argument(
        "--every", type=int, default=1, metavar="N",
        help="evaluate only the first, the last and every N-th of the waiting versions (a trend, faster)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable result")


def _spark_options(args: argparse.Namespace, settings: Any, app: str) -> Any:
    from flead_app.spark_support.session import SparkOptions, under_spark_submit

    submitted = under_spark_submit()
    return SparkOptions(
        master=args.master or (None if submitted else settings.spark_master),
        driver_memory=None if submitted else args.driver_memory,
        shuffle_partitions=args.shuffle_partitions,
        app_name=app,
    )


def _print(result: dict, as_json: bool, text: str) -> None:
    print(json.dumps(result, default=str, indent=1) if as_json else text)


def cmd_fetch(args: argparse.Namespace) -> int:
    from flead_app.spark_support.jars import SparkSetupError, fetch

    try:
        res = fetch()
    except SparkSetupError as err:
        print(f"flead spark fetch: {err}", file=sys.stderr)
        return 1
    what = f"downloaded in {res.seconds:.0f} s" if res.downloaded else "cached, nothing downloaded"
    print(f"{len(res.jars)} jars in {res.folder} ({what}):")
    for j in res.jars:
        print(f"  {j.name}")
    return 0


def cmd_jars(args: argparse.Namespace) -> int:
    from flead_app.spark_support.jars import SparkSetupError, require_jars

    try:
        print(",".join(str(p) for p in require_jars()))
    except SparkSetupError as err:
        print(f"flead spark jars: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_analytics(args: argparse.Namespace) -> int:
    from flead_app.io.db.store import Database
    from flead_app.settings import load_settings
    from flead_app.spark_support.analytics import resolve_window
    from flead_app.spark_support.jars import SparkSetupError
    from flead_app.spark_support.jobs import analytics_job
    from flead_app.spark_support.session import build_session

    settings = load_settings()
    try:
        window = resolve_window(args.start, args.end, datetime.now(UTC))
    except ValueError as err:
        print(f"flead spark analytics: {err}", file=sys.stderr)
        return 2
    db = Database.from_settings(settings)
    db.init_schema()
    try:
        spark = build_session(_spark_options(args, settings, "flead-analytics"))
    except SparkSetupError as err:
        print(f"flead spark analytics: {err}", file=sys.stderr)
        return 1
    try:
        res = analytics_job(spark, settings, window, db, args.slack_s)
    finally:
        spark.stop()
        db.close()
    out = {
        "window_start": window.start.isoformat(),
        "window_end": window.end.isoformat(),
        "readings": res.readings,
        "messages": dict(res.messages),
        "rows_written": res.rows,
        "partition_leaders": res.leaders,
    }
    _print(out, args.json, f"analytics {window}: {res.readings} readings from {dict(res.messages)} messages; "
           f"{res.rows} rows written to stream_analytics")  # fmt: skip
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flead_app.io.db.store import Database
    from flead_app.settings import load_settings
    from flead_app.spark_support.dbio import count_pending
    from flead_app.spark_support.jars import SparkSetupError
    from flead_app.spark_support.jobs import evaluate_job
    from flead_app.spark_support.session import build_session

    settings = load_settings()
    db = Database.from_settings(settings)
    db.init_schema()
    try:
        if not args.all and count_pending(db) == 0:
            _print({"versions": [], "reason": "nothing to evaluate"}, args.json,
                   "no global version waits for evaluation")  # fmt: skip
            return 0
        try:
            spark = build_session(_spark_options(args, settings, "flead-evaluate"))
        except SparkSetupError as err:
            print(f"flead spark evaluate: {err}", file=sys.stderr)
            return 1
        try:
            res = evaluate_job(spark, settings, db, all_versions=args.all, every=args.every)
        finally:
            spark.stop()
    finally:
        db.close()
    out = {k: v for k, v in asdict(res).items() if k != "run"}
    out["messages"] = dict(res.messages)
    out["results"] = results_json(res.run) if res.run else {}
    if not res.versions:
        _print(out, args.json, f"nothing evaluated: {res.reason}")
        return EXIT_NO_DATA if res.reason.startswith("no labelled") else 0
    text = (
        f"evaluated global versions {res.versions} "
        f"(skipped, weights of another model: {res.skipped_versions or 'none'}); "
        f"v{res.latest} and the baselines on the readings, devices and prequential splits of {res.readings:,} "
        f"labelled readings of {res.devices} devices ({res.training:,} trained the central model); "
        f"{res.summary_rows} summary rows written\n" + render_results(res.run)
    )
    _print(out, args.json, text)
    return 0


def cmd_evaluate_site(args: argparse.Namespace) -> int:
    from flead_app.settings import load_settings
    from flead_app.spark_support.federated import site_evaluate_job
    from flead_app.spark_support.jars import SparkSetupError
    from flead_app.spark_support.session import build_session

    settings = load_settings()
    if settings.site < 1:
        print("flead spark evaluate-site: runs at a site; set FLEAD_SITE=k (1..sites)", file=sys.stderr)
        return 2
    try:
        spark = build_session(_spark_options(args, settings, f"flead-evaluate-site{settings.site}"))
    except SparkSetupError as err:
        print(f"flead spark evaluate-site: {err}", file=sys.stderr)
        return 1
    try:
        res = site_evaluate_job(spark, settings, all_versions=args.all, every=args.every)
    finally:
        spark.stop()
    out = asdict(res)
    out["messages"] = dict(res.messages)
    if not res.versions:
        _print(out, args.json, f"site {res.site}: nothing evaluated: {res.reason}")
        return 0
    _print(out, args.json, f"site {res.site}: evaluated global versions {res.versions} on {res.readings:,} labelled "
           f"readings of its {res.devices} devices; sent {res.records_sent} summaries ({res.bytes_sent:,} bytes of "
           f"JSON before compression, no reading) to {settings.topic_site_evaluations}")  # fmt: skip
    return 0


def cmd_merge_evaluations(args: argparse.Namespace) -> int:
    from flead_app.io.db.store import Database
    from flead_app.settings import load_settings
    from flead_app.spark_support.federated import merge_evaluations_job

    settings = load_settings()
    sites = args.sites if args.sites is not None else settings.sites
    if sites < 1:
        print("flead spark merge-evaluations: no sites (start them with flead stack up --sites N, or pass --sites N)",
              file=sys.stderr)  # fmt: skip
        return 2
    db = Database.from_settings(settings)
    db.init_schema()
    try:
        res = merge_evaluations_job(settings, db, list(range(1, sites + 1)))
    finally:
        db.close()
    out = {k: v for k, v in asdict(res).items() if k != "rows"}
    versions = sorted({r["model_version"] for r in res.rows})
    text = (f"merged the summaries of sites {res.sites} (entries reported: {res.reported}; refused: {res.refused}): "
            f"{res.written} rows of evaluation_summaries for versions {versions or 'none'}")  # fmt: skip
    if res.waiting:
        text += f"; {len(res.waiting)} entries wait for sites, e.g. {next(iter(res.waiting.items()))}"
    _print(out, args.json, text)
    return 0


def results_json(run) -> dict:  # noqa: ANN001 - evaluation.RunResult
    """{split: {model: {metric: value}}} of the latest version's evaluation (None where a model cannot score)."""
    return {
        split: {kind: (m.to_dict() if m is not None else None) for kind, m in by_model.items()}
        for split, by_model in run.results.items()
    }


def render_results(run) -> str:  # noqa: ANN001 - evaluation.RunResult
    """The split x model table of the latest version's evaluation, as text."""
    from flead_app.report import render_splits

    return render_splits(results_json(run), run.latest, run.stability)


def cmd_schedule(args: argparse.Namespace) -> int:
    from flead_app.io.db.store import Database
    from flead_app.settings import load_settings
    from flead_app.spark_support.dbio import count_pending
    from flead_app.spark_support.schedule import ScheduleConfig, Scheduler

    settings = load_settings()
    db = Database.from_settings(settings)
    job_args = ["--driver-memory", args.driver_memory, "--shuffle-partitions", str(args.shuffle_partitions)]
    if args.master:
        job_args += ["--master", args.master]
    cfg = ScheduleConfig(
        poll_s=args.poll_s,
        delay_s=args.delay_s,
        backoff_base_s=args.backoff_s,
        backoff_cap_s=args.max_backoff_s,
        job_timeout_s=args.job_timeout_s,
        max_catchup_hours=args.max_catchup_hours,
        job_args=job_args,
    )

    schema_ready: list[bool] = []

    def pending() -> int:
        if not schema_ready:  # once, when the database first answers
            db.init_schema()
            schema_ready.append(True)
        return count_pending(db)

    Scheduler(cfg, settings.home_path / "spark-schedule.json", pending).run_forever()
    db.close()
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from flead_app.io.db.store import Database
    from flead_app.report import evaluation_section, jsonable
    from flead_app.settings import load_settings

    db = Database.from_settings(load_settings())
    try:
        with db.engine.connect() as conn:
            print(json.dumps(jsonable(evaluation_section(conn)), indent=1))
    finally:
        db.close()
    return 0


def submit_main(command: str, argv: list[str] | None = None) -> int:
    """Entry of ``spark/analytics.py``, ``spark/evaluate.py`` and ``spark/evaluate_site.py`` (under
    spark-submit or python)."""
    parser = argparse.ArgumentParser(prog=f"spark/{command}.py")
    if command == "analytics":
        add_analytics_args(parser)
        handler = cmd_analytics
    else:
        add_evaluate_args(parser)
        handler = cmd_evaluate_site if command == "evaluate_site" else cmd_evaluate
    add_spark_args(parser)
    args = parser.parse_args(argv)
    # spark-submit merges the script's stderr into its stdout: with --json only warnings are
    # logged, so that stdout stays one JSON document
    logging.basicConfig(
        level=logging.WARNING if args.json else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    return handler(args)
