"""Fetch Apache Kafka's jars from Maven Central once, into a cache shared by every FLEAD_HOME.

The cache is ``$FLEAD_KAFKA_CACHE`` or ``$XDG_CACHE_HOME/flead/kafka-<version>`` (default
``~/.cache/flead/kafka-<version>``), holding ``libs/*.jar`` and a marker ``libs/.complete``
written only after Maven copied every jar. With the marker present nothing is downloaded and
Maven is not even started, so later runs work offline.

MirrorMaker 2 (``org.apache.kafka:connect-mirror``, the same version as the brokers) is fetched
the same way into its own folder beside it, ``mirror-maker-<version>/libs`` (``fetch_mirror``):
it brings Kafka Connect's runtime (Jetty, Jersey, Jackson), which the brokers' class path has no
use for, and a folder of its own leaves the brokers' cache as every existing machine has it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from flead_app.settings import load_settings
from flead_app.stack.errors import StackError

log = logging.getLogger(__name__)

MARKER = ".complete"
MVN_TIMEOUT_S = 20 * 60
NETWORK_HINTS = (
    "Could not transfer",
    "Could not resolve",
    "UnknownHost",
    "Unknown host",
    "Connection refused",
    "Connect timed out",
    "Network is unreachable",
    "No route to host",
    "Temporary failure in name resolution",
    "Connection reset",
    "PKIX path",
)


def cache_root(version: str) -> Path:
    """The setting ``kafka_cache`` (``FLEAD_KAFKA_CACHE``), else ``$XDG_CACHE_HOME/flead/kafka-<version>``."""
    explicit = load_settings().kafka_cache.strip()
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser().resolve() / "flead" / f"kafka-{version}"


@dataclass(frozen=True)
class FetchResult:
    libs: Path
    downloaded: bool
    seconds: float
    jars: int


@dataclass(frozen=True)
class Artifact:
    """What one fetch brings: its POM (in this package), its cache folder, a jar that must arrive."""

    pom: str
    folder: str  # cache folder name before ``-<version>``
    main_jar: str  # a jar name prefix that proves the fetch worked
    what: str


KAFKA = Artifact("kafka-pom.xml", "kafka", "kafka_2.13-", "Apache Kafka")
MIRROR = Artifact("mirror-pom.xml", "mirror-maker", "connect-mirror-", "Kafka MirrorMaker 2")


def artifact_root(version: str, artifact: Artifact) -> Path:
    """Kafka's own cache root, or its sibling for another artifact (same parent folder)."""
    root = cache_root(version)
    if artifact is KAFKA:
        return root
    return root.parent / f"{artifact.folder}-{version}"


def libs_dir(version: str, artifact: Artifact = KAFKA) -> Path:
    return artifact_root(version, artifact) / "libs"


def is_cached(version: str, artifact: Artifact = KAFKA) -> bool:
    libs = libs_dir(version, artifact)
    marker = libs / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all((libs / name).is_file() for name in info.get("jars", [])) and bool(info.get("jars"))


def require_java() -> str:
    java = shutil.which("java")
    if not java:
        raise StackError(
            "Java is not installed (no `java` on PATH); Kafka needs Java 11 or newer: "
            "apt-get install -y openjdk-17-jre-headless"
        )
    return java


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing): one download of a cache at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch(version: str, artifact: Artifact = KAFKA) -> FetchResult:
    """Make sure the jars of Kafka ``version`` (or of ``artifact``) are in the cache; download them if not."""
    start = time.monotonic()
    libs = libs_dir(version, artifact)
    if is_cached(version, artifact):
        log.debug("%s %s jars cached in %s (nothing downloaded)", artifact.what, version, libs)
        return FetchResult(libs, False, time.monotonic() - start, _count(libs))
    root = artifact_root(version, artifact)
    with locked(root / ".lock"):
        if is_cached(version, artifact):  # another process fetched while we waited
            return FetchResult(libs, False, time.monotonic() - start, _count(libs))
        _download(version, root, artifact)
    return FetchResult(libs, True, time.monotonic() - start, _count(libs))


def fetch_mirror(version: str) -> FetchResult:
    """The jars of MirrorMaker 2 for Kafka ``version`` (``org.apache.kafka:connect-mirror``)."""
    return fetch(version, MIRROR)


def _count(libs: Path) -> int:
    return sum(1 for _ in libs.glob("*.jar"))


def _download(version: str, root: Path, artifact: Artifact = KAFKA) -> None:
    require_java()
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError(
            "Maven is not installed (no `mvn` on PATH); the first `flead stack up` fetches Kafka "
            "with it: apt-get install -y maven"
        )
    log.info("fetching %s %s from Maven Central into %s (first run only)", artifact.what, version, root)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=root) as tmp:
        tmpdir = Path(tmp)
        pom = tmpdir / "pom.xml"
        pom.write_bytes(resources.files("flead_app.stack").joinpath(artifact.pom).read_bytes())
        out = tmpdir / "libs"
        cmd = [
            mvn, "-B", "-q", "-f", str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={out}",
            f"-Dkafka.version={version}",
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, cwd=tmpdir, capture_output=True, text=True, timeout=MVN_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                f"Maven did not finish fetching {artifact.what} {version} within {MVN_TIMEOUT_S // 60} min: "
                "is Maven Central reachable?"
            ) from exc
        output = (proc.stdout or "") + (proc.stderr or "")
        if proc.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            if any(h.lower() in output.lower() for h in NETWORK_HINTS):
                raise StackError(
                    f"cannot reach Maven Central to fetch {artifact.what} {version}; the first "
                    f"`flead stack up` (or `flead stack fetch`) needs it, later runs use the cache "
                    f"{root / 'libs'}.\nMaven said:\n{tail}"
                )
            raise StackError(f"Maven failed to fetch {artifact.what} {version} (exit {proc.returncode}):\n{tail}")
        jars = sorted(p.name for p in out.glob("*.jar"))
        if not any(j.startswith(artifact.main_jar) for j in jars):
            raise StackError(f"Maven finished but no {artifact.main_jar}* jar arrived in {out}")
        (out / MARKER).write_text(json.dumps({"version": version, "jars": jars, "fetched_at": time.time()}, indent=1))
        libs = root / "libs"
        if libs.exists():
            shutil.rmtree(libs)
        out.rename(libs)
    log.info("fetched %d jars into %s", len(jars), root / "libs")
