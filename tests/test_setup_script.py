"""scripts/setup.sh and the TimescaleDB it builds from ../shared/vendor."""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from flead_app.stack import postgres

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "vendor" / "timescaledb-2.28.3.tar.gz"


def test_setup_stops_clearly_without_the_timescaledb_archive(tmp_path):
    """A checkout without ../shared beside it: setup names the missing file and does nothing more."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    res = subprocess.run(["bash", "repo/scripts/setup.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"the TimescaleDB source is missing: {tmp_path}/shared/vendor/timescaledb-2.28.3.tar.gz" in res.stderr
    assert "../shared/vendor/README.md" in res.stderr
    assert not (repo / ".venv").exists()


def test_the_installed_extension_is_the_archives_version():
    """What setup's cache check compares: the archive's version.config and the server's control file."""
    if not ARCHIVE.exists():
        pytest.fail(f"{ARCHIVE} is missing (scripts/setup.sh needs it)")
    with tarfile.open(ARCHIVE) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/version.config"))
        config = tar.extractfile(member).read().decode()
    version = re.search(r"^version = (\S+)", config, re.M).group(1)
    major = postgres.installed_versions()[-1]
    control = Path(f"/usr/share/postgresql/{major}/extension/timescaledb.control")
    assert control.exists(), "TimescaleDB is not installed: run scripts/setup.sh as root"
    assert f"default_version = '{version}'" in control.read_text()
    lib = Path(f"/usr/lib/postgresql/{major}/lib")
    assert (lib / f"timescaledb-{version}.so").exists() and (lib / f"timescaledb-tsl-{version}.so").exists()
