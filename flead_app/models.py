"""Record types: the one source of truth for every message FLEAD puts on Kafka.

Readings are the hot path, so they are parsed from raw JSON bytes by ``parse_readings`` (orjson
plus explicit checks) rather than through Faust's ``Record`` machinery; the lower-rate records
(anomalies, local updates, global models, dead letters) are frozen dataclasses with
``to_json``/``from_json``. Anything that fails validation raises ``InvalidRecord`` with a
reason; agents turn that into a dead-letter record and a count, never a crash.

Wire formats on ``edge-iiot-stream`` (key = device_id):

* one reading:  ``{"device_id": "device_7", "timestamp": "2025-11-07T15:22:31.000Z",
  "value": 42.5, "label": 0}`` (``label`` optional: 0, 1 or null)
* a batch from one device (gateways send several at once):
  ``{"device_id": "device_7", "timestamps": [...], "values": [...], "labels": [...]}``
* a control record that asks the worker to train a quiet device now:
  ``{"device_id": "device_7", "control": "train"}``
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from flead_app.algorithms.aggregation import AGGREGATORS

MAX_MESSAGE_BYTES = 1_000_000
MAX_BATCH_READINGS = 10_000
MAX_DEVICE_ID_LENGTH = 128

_READING_KEYS = frozenset({"device_id", "timestamp", "value", "label"})
_BATCH_KEYS = frozenset({"device_id", "timestamps", "values", "labels"})
_CONTROL_KEYS = frozenset({"device_id", "control"})
CONTROL_TRAIN = "train"
#: Unicode categories a device id may not contain: control, surrogate, unassigned (format and
#: private-use characters are allowed: PostgreSQL and Kafka store them as they are)
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Cn"})
#: the aggregators a global model may name
AGGREGATOR_NAMES = frozenset(AGGREGATORS)
#: the key of every record on local-model-updates: they reach one partition, in order, and the FedAvg agent there
FLEET_KEY = b"fleet"


class InvalidRecord(ValueError):
    """A message that cannot be accepted; ``str(err)`` is the dead-letter reason."""


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(text: Any) -> float:
    """ISO 8601 with a UTC offset (``Z`` or ``+00:00``) -> epoch seconds."""
    if not isinstance(text, str):
        raise InvalidRecord(f"timestamp must be an ISO 8601 string, got {type(text).__name__}")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as err:
        raise InvalidRecord(f"timestamp is not ISO 8601: {text[:40]!r}") from err
    if dt.tzinfo is None:
        raise InvalidRecord(f"timestamp has no UTC offset: {text[:40]!r}")
    try:  # 9999-12-31T23:00-13:00 parses, but is in the year 10000 in UTC, which no datetime holds
        dt.astimezone(UTC)
    except OverflowError:
        raise InvalidRecord(f"timestamp out of range in UTC: {text[:40]!r}") from None
    return dt.timestamp()


def format_timestamp(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_device_id(value: Any) -> str:
    """A device id is 1 to 128 characters that PostgreSQL's text and every Kafka client take.

    Refused: control characters (NUL, which PostgreSQL cannot store in text, among them), lone
    surrogates (not encodable as UTF-8) and unassigned code points, and blank ids.

    >>> check_device_id("pump-7/east")
    'pump-7/east'
    >>> try:
    ...     check_device_id("bad" + chr(0) + "dev")
    ... except InvalidRecord as err:
    ...     print(err)
    device_id contains a control or unencodable character (U+0000)
    """
    if not isinstance(value, str) or not value or len(value) > MAX_DEVICE_ID_LENGTH:
        raise InvalidRecord("device_id must be a non-empty string of at most 128 characters")
    if not value.isprintable() or value.strip() == "":
        bad = next((ch for ch in value if unicodedata.category(ch) in _REFUSED_CATEGORIES), None)
        if bad is not None:
            raise InvalidRecord(f"device_id contains a control or unencodable character (U+{ord(bad):04X})")
        if value.strip() == "":
            raise InvalidRecord("device_id is blank")
    return value


def _check_value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord(f"value must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidRecord("value is NaN or infinite")
    return v


INT32_MAX = 2**31 - 1  # PostgreSQL's integer: partitions, brokers, versions and sample counts


def _check_int(name: str, value: Any, low: int, high: int = INT32_MAX) -> int:
    """A whole number in [low, high] (booleans refused), or ``InvalidRecord``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRecord(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    return value


def _check_label(value: Any) -> int:
    """0/1 as given; -1 where the label is unknown (null or absent)."""
    if value is None:
        return -1
    if isinstance(value, bool) or value not in (0, 1):
        raise InvalidRecord(f"label must be 0, 1 or null, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ReadingBatch:
    """Readings of one device, in arrival order (a single reading is a batch of one)."""

    device_id: str
    timestamps: np.ndarray  # epoch seconds, float64
    values: np.ndarray  # float64
    labels: np.ndarray  # int8: 0, 1, or -1 for unknown
    control: str | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True)
class Reading:
    """One sensor reading, as the simulator and the CSV replay produce it."""

    device_id: str
    timestamp: str
    value: float
    label: int | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))


def encode_batch(device_id: str, timestamps: list[str], values: list[float], labels: list[int | None]) -> bytes:
    return orjson.dumps({"device_id": device_id, "timestamps": timestamps, "values": values, "labels": labels})


def parse_readings(raw: bytes | None, key: bytes | None = None) -> ReadingBatch:
    """Validate one message from ``edge-iiot-stream``; raise ``InvalidRecord`` with the reason."""
    if raw is None:
        raise InvalidRecord("empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidRecord(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise InvalidRecord(f"malformed JSON: {err}") from err
    if not isinstance(doc, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(doc).__name__}")
    device_id = check_device_id(doc.get("device_id"))
    if key is not None and key.decode("utf-8", "replace") != device_id:
        raise InvalidRecord("message key differs from device_id")
    keys = doc.keys()
    if "control" in doc:
        if keys - _CONTROL_KEYS:
            raise InvalidRecord(f"unknown keys: {sorted(keys - _CONTROL_KEYS)}")
        if doc["control"] != CONTROL_TRAIN:
            raise InvalidRecord(f"unknown control {doc['control']!r}")
        empty = np.empty(0)
        return ReadingBatch(device_id, empty, empty, np.empty(0, np.int8), CONTROL_TRAIN)
    if "values" in doc:
        if keys - _BATCH_KEYS:
            raise InvalidRecord(f"unknown keys: {sorted(keys - _BATCH_KEYS)}")
        stamps, values = doc.get("timestamps"), doc.get("values")
        labels = doc.get("labels")
        if not isinstance(stamps, list) or not isinstance(values, list):
            raise InvalidRecord("timestamps and values must be lists")
        if labels is None:
            labels = [None] * len(values)
        if not isinstance(labels, list):
            raise InvalidRecord("labels must be a list")
        n = len(values)
        if n == 0 or n > MAX_BATCH_READINGS:
            raise InvalidRecord(f"a batch holds 1 to {MAX_BATCH_READINGS} readings, got {n}")
        if len(stamps) != n or len(labels) != n:
            raise InvalidRecord("timestamps, values and labels differ in length")
        ts = np.fromiter((parse_timestamp(t) for t in stamps), np.float64, n)
        vals = np.fromiter((_check_value(v) for v in values), np.float64, n)
        labs = np.fromiter((_check_label(v) for v in labels), np.int8, n)
        return ReadingBatch(device_id, ts, vals, labs)
    if keys - _READING_KEYS:
        raise InvalidRecord(f"unknown keys: {sorted(keys - _READING_KEYS)}")
    if "value" not in doc or "timestamp" not in doc:
        raise InvalidRecord("a reading needs device_id, timestamp and value")
    ts = parse_timestamp(doc["timestamp"])
    value = _check_value(doc["value"])
    label = _check_label(doc.get("label"))
    return ReadingBatch(
        device_id,
        np.array([ts], np.float64),
        np.array([value], np.float64),
        np.array([label], np.int8),
    )


# --------------------------------------------------------------------------------------
# Lower-rate records
# --------------------------------------------------------------------------------------


def _finite_list(name: str, values: Any) -> list[float]:
    """Finite numbers, or ``InvalidRecord`` naming the first bad one. JSON has no NaN or infinity:
    orjson writes them as null, so a diverged (or faulty) device's NaN weights arrive as null.

    >>> try:
    ...     LocalModelUpdate.from_json(orjson.dumps({"device_id": "d1", "model_version": 1, "global_version": 0,
    ...         "weights": [0.1, float("nan")], "bias": 0.0, "accuracy": 0.9, "loss": 0.1, "samples": 5,
    ...         "timestamp": "2025-01-01T00:00:00.000Z"}))
    ... except InvalidRecord as err:
    ...     print(err)
    weights[1] is not a finite number (NaN and infinity arrive as null)
    """
    if not isinstance(values, list) or not values:
        raise InvalidRecord(f"{name} must be a non-empty list of numbers")
    out = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            raise InvalidRecord(f"{name}[{i}] is not a finite number (NaN and infinity arrive as null)")
        out.append(_check_value(v))
    return out


class _JsonRecord:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes):  # noqa: ANN206 - returns cls
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise InvalidRecord(f"malformed JSON: {err}") from err
        if not isinstance(doc, dict):
            raise InvalidRecord("expected a JSON object")
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]):  # noqa: ANN206
        names = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        unknown = doc.keys() - names
        if unknown:
            raise InvalidRecord(f"unknown keys: {sorted(unknown)}")
        try:
            record = cls(**doc)
        except TypeError as err:
            raise InvalidRecord(str(err)) from err
        record.validate()  # type: ignore[attr-defined]
        return record


@dataclass(frozen=True)
class Anomaly(_JsonRecord):
    """A reading whose |z| crossed the threshold, with where it travelled."""

    device_id: str
    partition: int
    broker_id: int
    value: float
    z_score: float
    severity: str  # "warning" | "critical"
    timestamp: str
    detected_at: str = ""
    label: int | None = None
    probability: float | None = None  # the model's probability of an anomaly for this reading
    rule: str = "zrule"  # the rule that raised the alarm: "zrule" or "model"

    def validate(self) -> None:
        check_device_id(self.device_id)
        _check_int("partition", self.partition, -1)
        _check_int("broker_id", self.broker_id, -1)
        _check_value(self.value)
        _check_value(self.z_score)
        if self.severity not in ("warning", "critical"):
            raise InvalidRecord(f"severity must be warning or critical, got {self.severity!r}")
        if self.rule not in ("zrule", "model"):
            raise InvalidRecord(f"rule must be zrule or model, got {self.rule!r}")
        if self.probability is not None and not 0.0 <= _check_value(self.probability) <= 1.0:
            raise InvalidRecord("probability must lie in [0, 1]")
        _check_label(self.label)
        parse_timestamp(self.timestamp)
        if self.detected_at:
            parse_timestamp(self.detected_at)


#: bins of the standardised-score histograms (``algorithms.decision.NUM_SCORE_BINS``)
SCORE_BINS = 480


def _packed_size(params: int) -> int:
    return params * (params + 1) // 2


def _check_length(name: str, values: list[float], expected: int) -> None:
    if len(values) != expected:
        raise InvalidRecord(f"{name} must hold {expected} numbers for these weights, got {len(values)}")


@dataclass(frozen=True)
class LocalModelUpdate(_JsonRecord):
    """A device's model after one local round: what the FedAvg agent aggregates and the sink stores.

    Beyond the description's fields (weights, bias, accuracy, loss, samples), what the server
    step needs, for F weights (F = 10): ``base_params`` (the start model, F + 1), ``curvature``
    (gradient then the Hessian's upper triangle of the round's log-loss there: (F + 1) +
    (F + 1)(F + 2) / 2 = 77), ``normal_histogram`` ({bin: count} of the start model's standardised
    scores on the round's normal samples, bins 0-479; ~10-30 entries for a round of 50),
    ``normal_moments`` (count, sums, upper triangle of the sums of outer products of those samples'
    features: 1 + F + F(F + 1) / 2 = 66) and ``positives``. About 165 numbers plus the sparse
    histogram: ~3.5 KB of JSON against ~0.4 KB for the description's fields alone. Updates without
    them (an older device) still count for the averaging aggregators; the Newton step skips them.

    >>> u = LocalModelUpdate("d1", 1, 0, [0.1, 0.2], -3.0, 0.9, 0.1, 10, "2025-01-01T00:00:00.000Z",
    ...                      curvature=[0.0] * 3)
    >>> try:
    ...     u.validate()
    ... except InvalidRecord as err:
    ...     print(err)
    curvature must hold 9 numbers for these weights, got 3
    """

    device_id: str
    model_version: int
    global_version: int  # the global version this round started from
    weights: list[float]
    bias: float
    accuracy: float  # on the round's readings, measured before training on them
    loss: float
    samples: int
    timestamp: str
    partition: int = -1
    positives: int = 0
    base_params: list[float] | None = None
    curvature: list[float] | None = None
    normal_histogram: dict[str, int] = field(default_factory=dict)
    normal_moments: list[float] | None = None

    def validate(self) -> None:
        check_device_id(self.device_id)
        _finite_list("weights", self.weights)
        for name in ("bias", "accuracy", "loss"):
            if getattr(self, name) is None:
                raise InvalidRecord(f"{name} is not a finite number (NaN and infinity arrive as null)")
            _check_value(getattr(self, name))
        if not 0.0 <= self.accuracy <= 1.0:
            raise InvalidRecord("accuracy must lie in [0, 1]")
        _check_int("samples", self.samples, 1)
        _check_int("positives", self.positives, 0, self.samples)
        _check_int("model_version", self.model_version, 1)
        _check_int("global_version", self.global_version, 0)
        _check_int("partition", self.partition, -1)
        parse_timestamp(self.timestamp)
        k = len(self.weights) + 1
        if self.base_params is not None:
            _check_length("base_params", _finite_list("base_params", self.base_params), k)
        if self.curvature is not None:
            _check_length("curvature", _finite_list("curvature", self.curvature), k + _packed_size(k))
        if self.normal_moments is not None:
            f = len(self.weights)
            moments = _finite_list("normal_moments", self.normal_moments)
            _check_length("normal_moments", moments, 1 + f + _packed_size(f))
            if moments[0] < 0:
                raise InvalidRecord("normal_moments must start with a count >= 0")
        if not isinstance(self.normal_histogram, dict):
            raise InvalidRecord("normal_histogram must be an object of {bin: count}")
        for key, count in self.normal_histogram.items():
            if not (isinstance(key, str) and key.isdigit() and int(key) < SCORE_BINS):
                raise InvalidRecord(f"normal_histogram bins are 0 to {SCORE_BINS - 1}, got {key!r}")
            _check_int("a normal_histogram count", count, 0, self.samples)


def _optional_value(name: str, value: Any) -> None:
    if value is not None:
        try:
            _check_value(value)
        except InvalidRecord as err:
            raise InvalidRecord(f"{name}: {err}") from None


@dataclass(frozen=True)
class GlobalModel(_JsonRecord):
    """A global model produced by one aggregation round.

    Beyond the description's fields, the decision rule every device applies to it: ``threshold``
    on the standardised score (logit - ``score_loc``) / ``score_scale``, set so that the alarm
    budget of normal readings lies above it (None while the server has no normal scores yet:
    then the model raises no alarm). Three numbers more: ~0.5 KB of JSON with ten weights and
    the contributors of 20 updates; the server's own state stays in the FedAvg row.

    >>> m = GlobalModel(1, 1, [0.5], -3.0, 0.9, 2, 40, "2025-01-01T00:00:00.000Z", score_scale=0.0)
    >>> try:
    ...     m.validate()
    ... except InvalidRecord as err:
    ...     print(err)
    score_scale must be positive
    """

    global_version: int
    aggregation_round: int
    weights: list[float]
    bias: float
    accuracy: float  # sample-weighted mean of the contributing local accuracies
    num_devices: int
    samples: int
    timestamp: str
    aggregator: str = "fedavg"
    num_updates: int = 0
    mean_staleness: float = 0.0
    contributors: list[str] = field(default_factory=list)
    threshold: float | None = None
    score_loc: float | None = None
    score_scale: float | None = None

    def validate(self) -> None:
        _finite_list("weights", self.weights)
        _check_value(self.bias)
        _check_value(self.accuracy)
        _check_value(self.mean_staleness)
        if self.aggregator not in AGGREGATOR_NAMES:
            names = sorted(AGGREGATOR_NAMES)
            raise InvalidRecord(f"aggregator must be one of {names}, got {str(self.aggregator)[:40]!r}")
        _check_int("global_version", self.global_version, 1)
        _check_int("aggregation_round", self.aggregation_round, 0)
        _check_int("num_devices", self.num_devices, 0)
        _check_int("num_updates", self.num_updates, 0)
        _check_int("samples", self.samples, 0, 2**63 - 1)
        parse_timestamp(self.timestamp)
        for name in ("threshold", "score_loc", "score_scale"):
            _optional_value(name, getattr(self, name))
        if self.score_scale is not None and self.score_scale <= 0:
            raise InvalidRecord("score_scale must be positive")
        if self.threshold is not None and (self.score_loc is None or self.score_scale is None):
            raise InvalidRecord("a threshold needs score_loc and score_scale")


@dataclass(frozen=True)
class DeadLetter(_JsonRecord):
    """Why a message was refused, with the original bytes (truncated) for inspection."""

    source_topic: str
    partition: int
    offset: int
    reason: str
    key: str | None
    payload: str  # the first 2,000 characters of the original message
    payload_bytes: int
    timestamp: str

    def validate(self) -> None:
        return None

    @classmethod
    def build(
        cls, topic: str, partition: int, offset: int, reason: str, key: bytes | None, raw: bytes | None
    ) -> DeadLetter:
        raw = raw or b""
        return cls(
            source_topic=topic,
            partition=partition,
            offset=offset,
            reason=reason[:500],
            key=key.decode("utf-8", "replace") if key is not None else None,
            payload=raw[:2000].decode("utf-8", "replace"),
            payload_bytes=len(raw),
            timestamp=utc_now_iso(),
        )


@dataclass(frozen=True)
class SiteEvaluation(_JsonRecord):
    """One site's held-out evaluation of one model on one split, without the readings.

    ``summary`` is an ``algorithms.metrics.MetricsSummary`` as a dict (confusion counts, windows
    and detection delays, NAB's per-series summaries, score histograms), or None when the model
    cannot score the split at this site (then the fleet's metrics for it do not exist either).
    ``run`` names the site's evaluation run; the centre keeps the newest run of each site.

    >>> r = SiteEvaluation(1, "r1", "global", 3, "devices", None, "2026-01-01T00:00:00.000Z")
    >>> SiteEvaluation.from_json(r.to_json()) == r
    True
    """

    site: int
    run: str
    model_kind: str
    model_version: int
    split: str
    summary: dict[str, Any] | None
    evaluated_at: str

    def validate(self) -> None:
        _check_int("site", self.site, 1)
        _check_int("model_version", self.model_version, -1)
        if not isinstance(self.model_kind, str) or not isinstance(self.split, str) or not isinstance(self.run, str):
            raise InvalidRecord("model_kind, split and run must be strings")
        if self.summary is not None and not isinstance(self.summary, dict):
            raise InvalidRecord("summary must be an object or null")
        parse_timestamp(self.evaluated_at)
