"""Fetch the jars Spark needs beside pyspark's own, once, with Maven, into a cache folder.

Spark's ``--packages`` resolves through Ivy, which may try hosts that are not reachable here,
so we let ``mvn`` copy the Kafka connector (same version as pyspark, Scala 2.13) with its
runtime dependencies and the PostgreSQL JDBC driver into ``$FLEAD_SPARK_JARS`` or
``$XDG_CACHE_HOME/flead/spark-jars-<version>`` (default ``~/.cache/flead/...``), and pass them
as ``spark.jars``. Jars pyspark already ships (scala-library, lz4, snappy, slf4j, hadoop
client...) are dropped: an older copy on the classpath next to Spark's own breaks logging or
compression. A marker file is written last, so a later run with the marker finds everything
and starts no Maven at all (works offline).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from flead_app.settings import load_settings
from flead_app.stack.fetch import locked

log = logging.getLogger(__name__)

MARKER = ".complete"
POM = "spark-pom.xml"
CONNECTOR = "org.apache.spark:spark-sql-kafka-0-10_2.13"
POSTGRESQL_JDBC_VERSION = "42.7.8"
MVN_TIMEOUT_S = 20 * 60
_JAR_NAME = re.compile(r"^(?P<artifact>.+?)-(?P<version>\d+\.\d+[^/]*)\.jar$")


class SparkSetupError(RuntimeError):
    """The Spark jars or runtime are not usable; the message says what to do."""


def pyspark_version() -> str:
    import pyspark

    return pyspark.__version__


def pyspark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "jars"


def cache_dir(version: str | None = None) -> Path:
    """The setting ``spark_jars`` (``FLEAD_SPARK_JARS``), else ``$XDG_CACHE_HOME/flead/spark-jars-<version>``."""
    explicit = load_settings().spark_jars.strip()
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser().resolve() / "flead" / f"spark-jars-{version or pyspark_version()}"


def artifact_of(jar_name: str) -> str:
    """``kafka-clients-3.9.2.jar`` -> ``kafka-clients``; ``spark-tags_2.13-4.2.0.jar`` -> ``spark-tags_2.13``."""
    m = _JAR_NAME.match(jar_name)
    return m.group("artifact") if m else jar_name.removesuffix(".jar")


def redundant_jars(fetched: list[str], shipped: list[str]) -> list[str]:
    """The fetched jars whose artifact pyspark already ships (in any version)."""
    have = {artifact_of(n) for n in shipped}
    return sorted(n for n in fetched if artifact_of(n) in have)


def cached_jars(version: str | None = None) -> list[Path] | None:
    """The cached jars when the marker lists them all, else None."""
    folder = cache_dir(version)
    marker = folder / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    names = info.get("jars") or []
    paths = [folder / n for n in names]
    if not names or not all(p.is_file() for p in paths):
        return None
    return paths


@dataclass(frozen=True)
class FetchResult:
    folder: Path
    jars: list[Path]
    downloaded: bool
    seconds: float


def fetch(version: str | None = None) -> FetchResult:
    """Make sure the connector and JDBC jars for pyspark ``version`` are cached; download if not."""
    version = version or pyspark_version()
    start = time.monotonic()
    jars = cached_jars(version)
    if jars is not None:
        return FetchResult(cache_dir(version), jars, False, time.monotonic() - start)
    folder = cache_dir(version)
    with locked(folder.parent / f".{folder.name}.lock"):
        jars = cached_jars(version)
        if jars is None:
            _download(version, folder)
            jars = cached_jars(version)
            if jars is None:
                raise SparkSetupError(f"Maven finished but the jar cache {folder} is incomplete")
            return FetchResult(folder, jars, True, time.monotonic() - start)
    return FetchResult(folder, jars, False, time.monotonic() - start)


def require_jars() -> list[Path]:
    """The cached jars, or an error telling the user to run ``flead spark fetch``."""
    jars = cached_jars()
    if jars is None:
        raise SparkSetupError(
            f"Spark's Kafka connector and JDBC jars are not in {cache_dir()}: run `flead spark fetch` "
            "once (needs Maven Central)"
        )
    return jars


def _mvn(args: list[str], cwd: Path, what: str) -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise SparkSetupError("Maven is not installed (no `mvn` on PATH): apt-get install -y maven")
    try:
        proc = subprocess.run(
            [mvn, "-B", "-q", *args], cwd=cwd, capture_output=True, text=True, timeout=MVN_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise SparkSetupError(f"Maven did not finish {what} within {MVN_TIMEOUT_S // 60} min") from exc
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise SparkSetupError(f"Maven failed {what} (exit {proc.returncode}); is Maven Central reachable?\n{tail}")
    return output


def _download(version: str, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spark-jars-", dir=folder.parent) as tmp:
        tmpdir = Path(tmp)
        # the connector must match pyspark exactly; say so plainly if Maven Central lacks it
        _mvn(
            ["dependency:get", f"-Dartifact={CONNECTOR}:{version}", "-Dtransitive=false"],
            tmpdir,
            f"to find {CONNECTOR}:{version} (pyspark {version} needs the connector of the same version)",
        )
        pom = tmpdir / "pom.xml"
        pom.write_bytes(resources.files("flead_app.spark_support").joinpath(POM).read_bytes())
        out = tmpdir / "jars"
        log.info("fetching Spark's Kafka connector %s and the PostgreSQL JDBC driver into %s", version, folder)
        _mvn(
            [
                "-f", str(pom), "dependency:copy-dependencies", "-DincludeScope=runtime",
                f"-DoutputDirectory={out}", f"-Dspark.version={version}",
                f"-Dpostgresql.version={POSTGRESQL_JDBC_VERSION}",
            ],
            tmpdir,
            "to copy the Spark jars",
        )  # fmt: skip
        fetched = sorted(p.name for p in out.glob("*.jar"))
        shipped = [p.name for p in pyspark_jars_dir().glob("*.jar")]
        for name in redundant_jars(fetched, shipped):
            (out / name).unlink()
        jars = sorted(p.name for p in out.glob("*.jar"))
        if not any(n.startswith(f"spark-sql-kafka-0-10_2.13-{version}") for n in jars):
            raise SparkSetupError(f"Maven finished but no spark-sql-kafka-0-10_2.13-{version} jar arrived")
        if not any(n.startswith("postgresql-") for n in jars):
            raise SparkSetupError("Maven finished but no PostgreSQL JDBC jar arrived")
        (out / MARKER).write_text(json.dumps({"version": version, "jars": jars, "fetched_at": time.time()}, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        out.rename(folder)
    log.info("fetched %d jars into %s", len(jars), folder)
