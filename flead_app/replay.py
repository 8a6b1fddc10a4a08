"""Real data for ``flead simulate --csv``: labelled readings in the long CSV format.

The format is ``device_id,timestamp,value,label`` with a header row, in one file (``.csv`` or
``.csv.gz``) or in a folder of such files (the description's "2,400 preprocessed CSV", one per
device). A per-device file may leave out the ``device_id`` column: its file name (without
``.csv``/``.csv.gz``) is then the device id. ``label`` is optional (0, 1, or empty for
unknown); extra columns are ignored.

Timestamps are ISO 8601; naive ones (``2013-07-04 00:00:00``) are taken as UTC, which is how
the NAB files and most exports mean them; plain numbers are epoch seconds (milliseconds when
larger than 1e11). Each device's rows keep their file order: real files sometimes repeat or
step back in time, and re-sorting would hide exactly what the detector should cope with.

Pure Python/numpy, no Kafka: the replay is loaded here and scheduled into messages, and the
simulator only encodes and sends.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from flead_app.fleet import Readings
from flead_app.models import check_device_id

_NULL_LABELS = frozenset({"", "null", "none", "nan", "na"})
_LABELS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
_MS_THRESHOLD = 1e11  # a number above this is epoch milliseconds, not seconds


class BadRow(ValueError):
    """A CSV row that cannot be read; the message names the file and line."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


def parse_time(text: str) -> float:
    """ISO 8601 (naive = UTC) or epoch seconds/milliseconds -> epoch seconds."""
    s = text.strip()
    if not s:
        raise ValueError("empty timestamp")
    if "-" in s[1:] or ":" in s or "T" in s:
        try:
            dt = datetime.fromisoformat(s)
        except ValueError as err:
            raise ValueError(f"timestamp is not ISO 8601: {s[:40]!r}") from err
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    try:
        number = float(s)
    except ValueError as err:
        raise ValueError(f"timestamp is neither ISO 8601 nor epoch seconds: {s[:40]!r}") from err
    if not math.isfinite(number):
        raise ValueError(f"timestamp is not finite: {s!r}")
    return number / 1000.0 if abs(number) > _MS_THRESHOLD else number


def parse_value(text: str) -> float:
    try:
        v = float(text)
    except ValueError as err:
        raise ValueError(f"value is not a number: {text.strip()[:40]!r}") from err
    if not math.isfinite(v):
        raise ValueError(f"value is NaN or infinite: {text.strip()!r}")
    return v


def parse_label(text: str) -> int:
    s = text.strip().lower()
    if s in _NULL_LABELS:
        return -1
    if s not in _LABELS:
        raise ValueError(f"label must be 0, 1 or empty, got {text.strip()[:20]!r}")
    return _LABELS[s]


def csv_files(path: Path) -> list[Path]:
    """The file itself, or a folder's ``*.csv`` and ``*.csv.gz`` files sorted by name."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith((".csv", ".csv.gz")))
        if not files:
            raise FileNotFoundError(f"no .csv or .csv.gz files in {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    return [path]


def _device_from_name(path: Path) -> str:
    name = path.name
    for suffix in (".csv.gz", ".csv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed by the caller


@dataclass
class ReplayData:
    """Every row of the replay, in file order, with device indices in order of first appearance."""

    device_ids: list[str]
    device: np.ndarray  # int32
    timestamp: np.ndarray  # float64 epoch seconds
    value: np.ndarray  # float64
    label: np.ndarray  # int8: 0, 1, -1 unknown
    files: list[Path] = field(default_factory=list)
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.value.shape[0])

    @property
    def labelled_anomalies(self) -> int:
        return int((self.label == 1).sum())

    def schedule(self, batch: int) -> tuple[Readings, np.ndarray]:
        """Readings in send order and where each message starts.

        Devices take turns (in order of first appearance), each sending its next ``batch``
        rows per turn, so every device's rows stay in file order and all devices progress
        together, as a live fleet would.
        """
        n = len(self)
        if n == 0:
            return Readings(self.device, self.timestamp, self.value, self.label, self.label.copy()), np.empty(0, int)
        counts = np.bincount(self.device, minlength=len(self.device_ids))
        by_device = np.argsort(self.device, kind="stable")
        first = np.cumsum(counts) - counts
        within = np.empty(n, np.int64)
        within[by_device] = np.arange(n) - np.repeat(first, counts)
        order = np.lexsort((within, self.device, within // batch))
        dev = self.device[order]
        readings = Readings(
            device=dev,
            timestamp=self.timestamp[order],
            value=self.value[order],
            label=self.label[order],
            kind=np.zeros(n, np.int8),
        )
        block = within[order] // batch
        starts = np.flatnonzero(np.concatenate(([True], (dev[1:] != dev[:-1]) | (block[1:] != block[:-1]))))
        return readings, starts


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        for row in reader:
            yield reader.line_num, row


def load_csv(path: str | Path, skip_bad: bool = False) -> ReplayData:
    """Read a long-format CSV file or folder; raise ``BadRow`` at the first bad row unless ``skip_bad``."""
    files = csv_files(Path(path))
    index: dict[str, int] = {}
    devs: list[int] = []
    stamps: list[float] = []
    values: list[float] = []
    labels: list[int] = []
    skipped = 0
    examples: list[str] = []
    for file in files:
        rows = _rows(file)
        try:
            _, header = next(rows)
        except StopIteration:
            continue  # an empty file holds no readings
        columns = [h.strip().lower().lstrip("\ufeff") for h in header]
        if "timestamp" not in columns or "value" not in columns:
            raise BadRow(file, 1, f"header must name device_id,timestamp,value[,label]; got {header[:6]}")
        c_ts, c_val = columns.index("timestamp"), columns.index("value")
        c_dev = columns.index("device_id") if "device_id" in columns else None
        c_lab = columns.index("label") if "label" in columns else None
        width = max(c for c in (c_ts, c_val, c_dev, c_lab) if c is not None) + 1
        default_device = _device_from_name(file)
        for line, row in rows:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                if len(row) < width:
                    raise ValueError(f"expected at least {width} columns, got {len(row)}")
                device = row[c_dev].strip() if c_dev is not None else default_device
                check_device_id(device)
                ts = parse_time(row[c_ts])
                value = parse_value(row[c_val])
                label = parse_label(row[c_lab]) if c_lab is not None else -1
            except ValueError as err:
                if not skip_bad:
                    raise BadRow(file, line, str(err)) from None
                skipped += 1
                if len(examples) < 5:
                    examples.append(f"{file}:{line}: {err}")
                continue
            d = index.get(device)
            if d is None:
                d = index[device] = len(index)
            devs.append(d)
            stamps.append(ts)
            values.append(value)
            labels.append(label)
    return ReplayData(
        device_ids=list(index),
        device=np.array(devs, np.int32),
        timestamp=np.array(stamps, np.float64),
        value=np.array(values, np.float64),
        label=np.array(labels, np.int8),
        files=files,
        skipped=skipped,
        skipped_examples=examples,
    )
