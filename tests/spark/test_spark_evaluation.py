import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest

from flead_app.algorithms.detection import DetectorState, score_batch
from flead_app.algorithms.device import NUM_FEATURES, DeviceConfig, DeviceMessage, DeviceState, step
from flead_app.algorithms.holdout import holdout_mask
from flead_app.algorithms.incident_features import IncidentState
from flead_app.algorithms.incident_features import score as feature_score
from flead_app.algorithms.metrics import classification_scores
from flead_app.algorithms.sgd import LinearModel, predict_proba
from flead_app.spark_support.evaluation import (
    KIND_CENTRAL,
    KIND_GLOBAL,
    KIND_LOCAL,
    SPLIT_DEVICE_MEAN,
    SPLIT_POOLED,
    EvalSet,
    GlobalVersion,
    evaluate_model,
    history_rows,
    pooled_events,
    replay_device,
    run_evaluation,
    sample_indices,
    window_ids,
)

CFG = DeviceConfig(
    min_history=10, train_every=50, learning_rate=0.01, local_epochs=2, holdout_percent=20.0, holdout_device_percent=0.0
)
T0 = 1_700_000_000.0


def device_stream(seed: int, n: int = 400, windows=((150, 170), (300, 320))):
    rng = np.random.default_rng(seed)
    values = rng.normal(20.0, 1.0, n)
    labels = np.zeros(n, dtype=np.int8)
    for s, e in windows:
        values[s:e] += 6.0
        labels[s:e] = 1
    labels[5] = -1  # one unlabelled reading
    ts = T0 + np.arange(n) * 60.0
    return ts, values, labels


def as_messages(ts, values, labels, sizes, gap_s=1.0):
    """Split a device's readings into messages of the given sizes (cycled), at offsets 0, 1, ...
    and Kafka timestamps ``gap_s`` apart."""
    out, i, k = [], 0, 0
    while i < len(values):
        size = sizes[k % len(sizes)]
        sl = slice(i, i + size)
        out.append((0, k, T0 + k * gap_s, False, ts[sl].tolist(), values[sl].tolist(), labels[sl].tolist()))
        i += size
        k += 1
    return out


def test_window_ids_number_runs_of_label_one():
    ids = window_ids(np.array([0, 1, 1, 0, -1, 1, 1, -1, 1, 0]))
    assert ids.tolist() == [-1, 0, 0, -1, -1, 1, 1, -1, 2, -1]


def test_replay_gives_the_features_of_one_pass_over_the_whole_history():
    ts, values, labels = device_stream(1)
    h = replay_device("dev-a", as_messages(ts, values, labels, [1, 7, 1, 20]), CFG)
    det = score_batch(DetectorState(), values, CFG.min_history)
    whole = feature_score(IncidentState(), ts, values, det.features)
    keep = whole.scored & det.scored & (labels >= 0)
    np.testing.assert_allclose(h.features, whole.features[keep], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(h.labels, labels[keep])
    np.testing.assert_array_equal(h.heldout, holdout_mask("dev-a", ts, CFG.holdout_percent)[keep])
    np.testing.assert_array_equal(h.window_ids, window_ids(labels)[keep])
    assert h.readings == 400 and 0 < h.heldout.mean() < 0.4


def test_replay_orders_messages_by_partition_and_offset():
    ts, values, labels = device_stream(2)
    msgs = as_messages(ts, values, labels, [3, 1, 10])
    shuffled = list(reversed(msgs))
    a = replay_device("d", msgs, CFG)
    b = replay_device("d", shuffled, CFG)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.local_model.weights, b.local_model.weights)


def test_local_model_is_the_workers_local_only_step_in_rounds():
    ts, values, labels = device_stream(3)
    cfg = dataclasses.replace(CFG, train_interval_s=3600.0)  # rounds by count only, however spaced
    h = replay_device("d", as_messages(ts, values, labels, [1]), cfg)  # single readings: rounds of exactly 50
    state = DeviceState()
    for i in range(len(values)):
        msg = DeviceMessage(T0 + i, ts[i : i + 1], values[i : i + 1], labels[i : i + 1])
        state = step(state, [msg], None, "d", cfg).state
    np.testing.assert_allclose(h.local_model.weights, state.weights, rtol=1e-12)
    assert h.local_model.bias == pytest.approx(state.bias)
    assert h.local_rounds == 8


def test_rounds_follow_the_workers_event_time_and_control_records():
    ts, values, labels = device_stream(6, n=120)
    msgs = as_messages(ts, values, labels, [10])  # 12 messages, 1 s apart: rounds at 50 readings only
    assert replay_device("d", msgs, CFG).local_rounds == 3  # after 50, 100, and the 20 left at the end
    slow = as_messages(ts, values, labels, [10], gap_s=61.0)  # every message is 61 s after the last round
    assert replay_device("d", slow, CFG).local_rounds == 11  # the first message has nothing to train on yet
    # the quiet-device timer's control record (sent >= 60 s after the last round) starts a round
    first, later = msgs[:3], [(0, 10 + m[1], *m[2:]) for m in msgs[3:5]]
    assert replay_device("d", first + later, CFG).local_rounds == 1  # 50 readings: one round
    control = [(0, 9, T0 + 70.0, True, [], [], [])]
    with_control = replay_device("d", first + control + later, CFG)
    assert with_control.local_rounds == 2 and with_control.readings == 50  # 30 at the control record, then 20


def test_history_rows_roundtrip_into_an_evalset():
    ts, values, labels = device_stream(4)
    h = replay_device("d", as_messages(ts, values, labels, [5]), CFG)
    rows = history_rows(h)
    assert len(rows) == h.labels.shape[0]
    held = [r for r in rows if r[1]]
    es = EvalSet.from_rows(held)
    assert len(es) == int(h.heldout.sum())
    np.testing.assert_allclose(es.features, h.features[h.heldout])
    np.testing.assert_allclose(es.local_p, predict_proba(h.local_model, h.features[h.heldout]))
    assert len(EvalSet.from_rows([])) == 0


def test_pooled_events_count_windows_per_device():
    devices = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    windows = np.array([0, 0, 1, 0, -1, 1])
    alarms = np.array([False, True, False, False, True, True])
    # a/0 detected, a/1 missed, b/0 missed, b/1 detected; b's alarm outside windows is not an event
    assert pooled_events(devices, windows, alarms) == (4, 2)
    assert pooled_events(devices, np.full(6, -1), alarms) == (0, 0)


def _evalset(seed=5, devices=("a", "b", "c")):
    rows = []
    for i, d in enumerate(devices):
        ts, values, labels = device_stream(seed + i)
        rows += [r for r in history_rows(replay_device(d, as_messages(ts, values, labels, [4]), CFG)) if r[1]]
    return EvalSet.from_rows(rows)


def test_evaluate_model_pools_points_and_events():
    es = _evalset()
    rng = np.random.default_rng(0)
    p = rng.random(len(es))
    ev = evaluate_model(es, p, KIND_GLOBAL, 7)
    assert ev.pooled == classification_scores(es.labels, p, 0.5)
    alarms = p >= 0.5
    assert ev.false_alarms == int((alarms & (es.labels == 0)).sum())
    assert ev.false_alarms_per_1000 == pytest.approx(1000 * ev.false_alarms / len(es))
    assert ev.events == len({(d, w) for d, w in zip(es.device_ids, es.window_ids, strict=True) if w >= 0})
    # every device here has positives: the per-device mean averages three devices
    assert ev.device_mean["devices"] == 3
    per = [classification_scores(es.labels[es.device_ids == d], p[es.device_ids == d]).f1 for d in "abc"]
    assert ev.device_mean["f1"] == pytest.approx(np.mean(per))


def test_perfect_scores_detect_every_event_without_false_alarms():
    es = _evalset()
    ev = evaluate_model(es, es.labels.astype(float), KIND_GLOBAL, 1)
    assert ev.pooled.f1 == 1.0 and ev.event_recall == 1.0 and ev.false_alarms == 0 and ev.pooled.roc_auc == 1.0


def test_sample_indices_are_capped_unique_and_repeatable():
    es = _evalset()
    idx = sample_indices(es, 25)
    assert len(idx) == 25 and len(set(idx.tolist())) == 25
    np.testing.assert_array_equal(idx, sample_indices(es, 25))
    keys = {(es.device_ids[i], es.timestamps[i]) for i in idx}
    assert len(keys) == 25
    assert len(sample_indices(es, 10**6)) == len({(d, t) for d, t in zip(es.device_ids, es.timestamps, strict=True)})
    assert len(sample_indices(es, 0)) == 0


def test_run_evaluation_scores_versions_and_baselines_at_the_newest():
    es = _evalset()
    now = datetime(2025, 11, 7, tzinfo=UTC)
    versions = [
        GlobalVersion(3, np.eye(NUM_FEATURES)[0] + 0.5 * np.eye(NUM_FEATURES)[6], -3.0),
        GlobalVersion(4, np.zeros(NUM_FEATURES), -5.0),
        GlobalVersion(5, np.zeros(4), 0.0),  # wrong feature count: skipped
    ]
    central = LinearModel(2.0 * np.eye(NUM_FEATURES)[0], -4.0)
    res = run_evaluation(es, versions, central, sample_cap=30, now=now)
    assert res.skipped_versions == [5] and res.baseline_version == 4
    kinds = [(ev.kind, ev.version) for ev in res.evaluations]
    assert kinds == [(KIND_GLOBAL, 3), (KIND_GLOBAL, 4), (KIND_LOCAL, 4), (KIND_CENTRAL, 4)]
    assert {(r["model_kind"], r["model_version"], r["split"]) for r in res.summaries} == {
        (k, v, s) for k, v in kinds for s in (SPLIT_POOLED, SPLIT_DEVICE_MEAN)
    }
    for k, v in kinds:
        mine = [r for r in res.samples if (r["model_kind"], r["model_version"]) == (k, v)]
        assert len(mine) == 30
    v4 = next(r for r in res.summaries if r["model_version"] == 4 and r["model_kind"] == KIND_GLOBAL)
    assert v4["recall"] == 0.0 and v4["tn"] == int((es.labels == 0).sum())
    v3 = next(ev for ev in res.evaluations if ev.version == 3)
    assert v3.pooled.recall > 0.5  # the level |z| separates the +6 level shifts
    row = next(r for r in res.samples if r["model_kind"] == KIND_GLOBAL and r["model_version"] == 3)
    assert row["confidence"] == pytest.approx(max(row["prediction"], 1 - row["prediction"]))
    assert row["is_correct"] == ((row["prediction"] >= 0.5) == (row["actual_result"] == 1))
    assert row["reading_time"].tzinfo is not None and row["created_at"] == now


def test_nothing_to_score_writes_nothing():
    empty = EvalSet.from_rows([])
    res = run_evaluation(empty, [GlobalVersion(1, np.zeros(NUM_FEATURES), 0.0)], None, 10, datetime.now(UTC))
    assert res.evaluations == [] and res.summaries == []


def test_thin_versions_keeps_the_ends_and_every_nth():
    from flead_app.spark_support.evaluation import thin_versions

    assert thin_versions(list(range(1, 241)), 20) == [1, *range(20, 241, 20)]
    assert thin_versions([7, 3, 45, 41], 20) == [3, 45]
    assert thin_versions([5], 20) == [5]
    assert thin_versions([3, 1, 2], 1) == [1, 2, 3]
    assert thin_versions([], 10) == []
