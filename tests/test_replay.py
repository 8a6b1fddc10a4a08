"""CSV replay: the long format from a file, a .csv.gz or a folder; timestamps; bad rows; send order."""

from __future__ import annotations

import gzip
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from flead_app.replay import BadRow, load_csv, parse_label, parse_time

# the shared data set lies beside the repository (../shared), on developer machines and in CI
NAB = Path(
    os.environ.get(
        "FLEAD_NAB_CSV", Path(__file__).resolve().parents[2] / "shared" / "data" / "nab" / "nab_realknowncause.csv.gz"
    )
)

ROWS = """device_id,timestamp,value,label
pump_1,2013-07-04 00:00:00,1.5,0
pump_2,2013-07-04 00:00:00,10,1
pump_1,2013-07-04 01:00:00,1.75,
pump_1,2013-07-04 00:30:00,2.0,1
pump_2,2013-07-04T02:00:00Z,11.5,0
"""


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_timestamps_naive_are_utc_and_offsets_apply():
    assert parse_time("2013-07-04 00:00:00") == epoch("2013-07-04T00:00:00")
    assert parse_time("2013-07-04T00:00:00Z") == epoch("2013-07-04T00:00:00")
    assert parse_time("2013-07-04T02:00:00+02:00") == epoch("2013-07-04T00:00:00")
    assert parse_time("2013-07-04 00:00:00.250") == epoch("2013-07-04T00:00:00") + 0.25
    assert parse_time("1372896000") == epoch("2013-07-04T00:00:00")
    assert parse_time("1372896000500") == epoch("2013-07-04T00:00:00") + 0.5  # milliseconds
    for bad in ("", "yesterday", "2013-13-45 00:00:00"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_labels():
    assert [parse_label(x) for x in ("0", "1", " 1 ", "", "null", "1.0", "true")] == [0, 1, 1, -1, -1, 1, 1]
    with pytest.raises(ValueError):
        parse_label("2")


def test_one_file_keeps_each_devices_row_order(tmp_path):
    path = tmp_path / "fleet.csv"
    path.write_text(ROWS)
    data = load_csv(path)
    assert data.device_ids == ["pump_1", "pump_2"]
    assert len(data) == 5
    p1 = data.device == 0
    # 01:00 then 00:30: stepping back in time is kept, not re-sorted
    assert data.timestamp[p1].tolist() == [parse_time(t) for t in ("2013-07-04 00:00", "2013-07-04 01:00",
                                                                  "2013-07-04 00:30")]  # fmt: skip
    assert data.value[p1].tolist() == [1.5, 1.75, 2.0]
    assert data.label[p1].tolist() == [0, -1, 1]
    assert data.labelled_anomalies == 2


def test_gzip_file(tmp_path):
    path = tmp_path / "fleet.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(ROWS)
    data = load_csv(path)
    assert len(data) == 5 and data.device_ids == ["pump_1", "pump_2"]


def test_folder_of_per_device_files(tmp_path):
    (tmp_path / "device_0.csv").write_text("timestamp,value,label\n2025-01-01 00:00:00,1,0\n2025-01-01 00:01:00,2,1\n")
    with gzip.open(tmp_path / "device_1.csv.gz", "wt") as fh:
        fh.write("timestamp,value\n2025-01-01 00:00:00,5\n")
    (tmp_path / "other.csv").write_text("device_id,timestamp,value,label,extra\nx,2025-01-01 00:00:00,3,0,zzz\n")
    (tmp_path / "notes.txt").write_text("not data")
    data = load_csv(tmp_path)
    assert [p.name for p in data.files] == ["device_0.csv", "device_1.csv.gz", "other.csv"]
    assert data.device_ids == ["device_0", "device_1", "x"]
    assert data.value.tolist() == [1, 2, 5, 3]
    assert data.label.tolist() == [0, 1, -1, 0]


def test_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(ROWS + "pump_1,2013-07-04 03:00:00,hot,0\npump_1,2013-07-04 04:00:00,nan,0\npump_1,oops,1,0\n")
    with pytest.raises(BadRow) as err:
        load_csv(path)
    assert err.value.line == 7 and "value is not a number" in str(err.value) and "bad.csv:7" in str(err.value)
    data = load_csv(path, skip_bad=True)
    assert len(data) == 5 and data.skipped == 3
    assert data.skipped_examples[0].endswith("value is not a number: 'hot'")


def test_header_is_required(tmp_path):
    path = tmp_path / "noheader.csv"
    path.write_text("pump_1,2013-07-04 00:00:00,1.5,0\n")
    with pytest.raises(BadRow, match="header"):
        load_csv(path)
    with pytest.raises(FileNotFoundError):
        load_csv(tmp_path / "missing.csv")


def test_schedule_interleaves_devices_in_batches(tmp_path):
    lines = ["device_id,timestamp,value,label"]
    lines += [f"a,2025-01-01 00:00:{i:02d},{i},0" for i in range(5)]
    lines += [f"b,2025-01-01 00:00:{i:02d},{100 + i},0" for i in range(2)]
    path = tmp_path / "two.csv"
    path.write_text("\n".join(lines) + "\n")
    readings, starts = load_csv(path).schedule(batch=2)
    assert readings.value.tolist() == [0, 1, 100, 101, 2, 3, 4]
    assert starts.tolist() == [0, 2, 4, 6]
    readings, starts = load_csv(path).schedule(batch=1)
    assert readings.value.tolist() == [0, 100, 1, 101, 2, 3, 4]
    assert starts.tolist() == list(range(7))


def test_nab_realknowncause():
    assert NAB.exists(), f"NAB data not at {NAB}: ../shared must lie beside the repository (or set FLEAD_NAB_CSV)"
    data = load_csv(NAB)
    assert len(data) == 69_561 and len(data.device_ids) == 7
    assert set(np.unique(data.label)) == {0, 1}
    readings, starts = data.schedule(batch=10)
    for d in range(7):  # every device's rows in file order
        np.testing.assert_array_equal(readings.timestamp[readings.device == d], data.timestamp[data.device == d])
    assert np.diff(np.append(starts, len(readings))).max() == 10
