"""The evaluation's pure half: device replay rows, series, and the run over versions and baselines."""

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest

from flead_app.algorithms.device import DeviceConfig, DeviceMessage, DeviceState, initial_model, step
from flead_app.algorithms.holdout import device_held_out, holdout_mask
from flead_app.algorithms.incident_features import NUM_FEATURES
from flead_app.algorithms.metrics import MetricsSummary
from flead_app.algorithms.protocol import Decision, evaluate
from flead_app.algorithms.sgd import LinearModel
from flead_app.algorithms.sites import site_of
from flead_app.spark_support.evaluation import (
    KIND_CENTRAL,
    KIND_GLOBAL,
    KIND_LOCAL,
    ROW_FIXED,
    GlobalVersion,
    central_model,
    merge_site_evaluations,
    replay_device,
    run_evaluation,
    series_from_rows,
    site_evaluation,
    stability,
    thin_versions,
    training_rows,
)

CFG = DeviceConfig(min_history=10, train_every=50, learning_rate=0.01, local_epochs=2, holdout_percent=20.0)
T0 = 1_700_000_000.0
NOW = datetime(2025, 11, 7, tzinfo=UTC)


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


TRAINING_DEVICE = next(f"dev-{i}" for i in range(100) if not device_held_out(f"dev-{i}", CFG.holdout_device_percent))
HELD_DEVICE = next(f"dev-{i}" for i in range(100) if device_held_out(f"dev-{i}", CFG.holdout_device_percent))


def _one_pass(device: str, ts, values, labels, cfg=CFG):
    """How ``step`` scores the device's whole history given as one message."""
    msg = DeviceMessage(T0, np.asarray(ts), np.asarray(values), np.asarray(labels, dtype=np.int8))
    return step(DeviceState(), [msg], None, device, cfg).scores[0]


def test_replay_rows_are_the_features_of_one_pass_over_the_whole_history():
    ts, values, labels = device_stream(1)
    rows = replay_device(TRAINING_DEVICE, as_messages(ts, values, labels, [1, 7, 1, 20]), CFG)
    whole = _one_pass(TRAINING_DEVICE, ts, values, labels)
    keep = whole.scored & (labels >= 0)
    (s,) = series_from_rows(reversed(rows), CFG)  # any order: rows carry their position
    np.testing.assert_allclose(s.features, whole.features[keep], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(s.labels, labels[keep])
    np.testing.assert_array_equal(s.heldout, holdout_mask(TRAINING_DEVICE, ts, CFG.holdout_percent)[keep])
    np.testing.assert_allclose(s.timestamps, ts[keep])
    assert not s.device_heldout and 0 < s.heldout.mean() < 0.4
    assert len(rows[0]) == len(ROW_FIXED) + NUM_FEATURES


def test_replay_orders_messages_by_partition_and_offset():
    ts, values, labels = device_stream(2)
    msgs = as_messages(ts, values, labels, [3, 1, 10])
    a = series_from_rows(replay_device("d", msgs, CFG), CFG)[0]
    b = series_from_rows(replay_device("d", list(reversed(msgs)), CFG), CFG)[0]
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.local_final, b.local_final)


def _local_final_by_time(device: str, ts, values, labels, cfg) -> dict[float, float]:
    (s,) = series_from_rows(replay_device(device, as_messages(ts, values, labels, [1]), cfg), cfg)
    return dict(zip(s.timestamps.tolist(), s.local_final.tolist(), strict=True))


def test_the_final_local_model_learns_from_training_readings_only():
    """Forgetting a held-out normal reading's label changes nothing the local model learnt;
    forgetting a training reading's label does."""
    ts, values, labels = device_stream(3)
    cfg = dataclasses.replace(CFG, train_interval_s=3600.0, positive_skip=0.0)  # rounds by count only
    base = _local_final_by_time(TRAINING_DEVICE, ts, values, labels, cfg)
    held = holdout_mask(TRAINING_DEVICE, ts, cfg.holdout_percent)
    normal_held = np.flatnonzero(held & (labels == 0))[10:20]
    normal_trained = np.flatnonzero(~held & (labels == 0))[10:20]
    for picked, same in ((normal_held, True), (normal_trained, False)):
        changed = labels.copy()
        changed[picked] = -1
        other = _local_final_by_time(TRAINING_DEVICE, ts, values, changed, cfg)
        common = sorted(set(other) & set(base))
        a, b = np.array([base[t] for t in common]), np.array([other[t] for t in common])
        assert np.allclose(a, b, rtol=1e-12, atol=1e-12) == same
    start = initial_model(cfg)
    assert not np.allclose(np.array(list(base.values())), start.bias)  # it did train


def test_a_held_out_device_trains_nothing_and_is_all_held_out():
    ts, values, labels = device_stream(4)
    (s,) = series_from_rows(replay_device(HELD_DEVICE, as_messages(ts, values, labels, [5]), CFG), CFG)
    assert s.device_heldout and s.heldout.all()
    start = initial_model(CFG)
    np.testing.assert_allclose(s.local_final, s.features @ start.weights + start.bias)  # never trained
    assert not list(training_rows(replay_device(HELD_DEVICE, as_messages(ts, values, labels, [5]), CFG)))


def _fleet():
    rows = []
    for k, device in enumerate([f"dev-{i}" for i in range(12)]):
        ts, values, labels = device_stream(10 + k)
        rows += replay_device(device, as_messages(ts, values, labels, [5]), CFG)
    return rows, series_from_rows(rows, CFG)


def _weights(*first: float) -> np.ndarray:
    return np.r_[first, np.zeros(NUM_FEATURES - len(first))]


def test_the_run_scores_versions_on_two_splits_and_the_newest_with_every_baseline():
    rows, series = _fleet()
    assert any(s.device_heldout for s in series) and any(not s.device_heldout for s in series)
    good = GlobalVersion(7, _weights(1.5, 0.5, 0.0, 0.5), -4.0, created_at=T0, threshold=2.0, score_loc=-4.0,
                         score_scale=1.0)  # fmt: skip
    later = GlobalVersion(9, _weights(1.0, 0.5, 0.0, 0.5), -3.5, created_at=T0 + 5, threshold=2.0, score_loc=-3.5,
                          score_scale=1.0)  # fmt: skip
    wrong = GlobalVersion(8, np.array([1.0, 2.0]), 0.0)  # another model's weights: skipped
    central = central_model(LinearModel(_weights(1.2, 0.4, 0.0, 0.4), -3.8), series, CFG)
    run = run_evaluation(series, [good, wrong, later], [good, later], central, CFG, NOW, sample_cap=50)
    assert run.latest == 9 and run.skipped_versions == [8] and sorted(run.trend) == [7, 9]
    keys = {(r["model_kind"], r["model_version"], r["split"]) for r in run.summaries}
    assert {(KIND_GLOBAL, 7, "readings"), (KIND_GLOBAL, 7, "devices")} <= keys
    assert (KIND_GLOBAL, 7, "prequential") not in keys and (KIND_CENTRAL, 7, "readings") not in keys
    for split in ("readings", "devices", "prequential"):
        assert (KIND_GLOBAL, 9, split) in keys and ("zrule", 9, split) in keys and ("random", 9, split) in keys
    assert (KIND_LOCAL, 9, "devices") not in keys and (KIND_CENTRAL, 9, "prequential") not in keys
    assert (KIND_LOCAL, 9, "readings") in keys and (KIND_CENTRAL, 9, "devices") in keys
    # the stored figures are the protocol's on the same series
    direct = evaluate(series, {"devices"}, later.model(CFG), [later.model(CFG)], central, Decision(CFG.z_threshold))
    (row,) = [
        r for r in run.summaries if (r["model_kind"], r["model_version"], r["split"]) == (KIND_GLOBAL, 9, "devices")
    ]
    assert row["f1"] == pytest.approx(direct["devices"]["global"].f1)
    assert row["nab_standard"] == pytest.approx(direct["devices"]["global"].nab_standard)
    assert row["tp"] + row["fp"] + row["tn"] + row["fn"] == row["samples"] > 0
    assert len(run.samples) == 100 and {r["model_kind"] for r in run.samples} == {KIND_GLOBAL, KIND_CENTRAL}


def test_sites_evaluating_their_own_devices_merge_to_the_pooled_evaluation():
    """Federated evaluation: each site summarises its own devices; the merged rows are the pooled
    run's, exactly for every count-based figure and within 0.01 for the two areas (histograms)."""
    _, series = _fleet()
    versions = [
        # an early version: no decision published yet, tiny weights (its logits all near its bias)
        GlobalVersion(3, _weights(3e-4, 1e-4, 0.0, 2e-4), -4.6, created_at=T0 - 5),
        GlobalVersion(7, _weights(1.5, 0.5, 0.0, 0.5), -4.0, created_at=T0, threshold=2.0, score_loc=-4.0,
                      score_scale=1.0),
        GlobalVersion(9, _weights(1.0, 0.5, 0.0, 0.5), -3.5, created_at=T0 + 5, threshold=2.0, score_loc=-3.5,
                      score_scale=1.0),
    ]  # fmt: skip
    pooled = run_evaluation(series, versions, versions, None, CFG, NOW)
    by_site = {k: site_evaluation([s for s in series if site_of(s.device_id, 3) == k], versions, versions, CFG)
               for k in (1, 2, 3)}  # fmt: skip
    assert all(by_site.values()), "every site has devices"
    # a site without held-out devices still reports the devices split (empty), so the merge completes
    assert not merge_site_evaluations(by_site, [1, 2, 3, 4], NOW).summaries
    merged = merge_site_evaluations(by_site, [1, 2, 3], NOW)
    assert merged.waiting == {}
    key = lambda r: (r["model_kind"], r["model_version"], r["split"])  # noqa: E731
    want = {key(r): r for r in pooled.summaries if r["model_kind"] != "random"}
    got = {key(r): r for r in merged.summaries if r["model_kind"] != "random"}
    assert set(got) == set(want) and len(want) >= 10
    exact = ("samples", "tp", "fp", "fn", "tn", "f1", "precision", "recall", "event_recall", "false_alarms_per_1000",
             "delay_median", "nab_standard", "nab_low_fp", "nab_low_fn")  # fmt: skip
    for k, row in want.items():
        for name in exact:
            assert got[k][name] == pytest.approx(row[name], abs=1e-9), (k, name)
        for name in ("roc_auc", "pr_auc"):
            assert (got[k][name] is None) == (row[name] is None), (k, name)
            if row[name] is not None:
                assert got[k][name] == pytest.approx(row[name], abs=0.01), (k, name)
    randoms = {key(r) for r in merged.summaries if r["model_kind"] == "random"}
    assert randoms == {("random", 9, split) for split in ("readings", "devices", "prequential")}


def test_a_site_that_cannot_score_a_model_leaves_it_out_for_the_fleet():
    one = {("local", 9, "readings"): None, ("global", 9, "readings"): MetricsSummary(tp=1, tn=3)}
    two = {("local", 9, "readings"): MetricsSummary(tp=2, tn=5), ("global", 9, "readings"): MetricsSummary(fn=1)}
    merged = merge_site_evaluations({1: one, 2: two}, [1, 2], NOW)
    assert [(r["model_kind"], r["samples"]) for r in merged.summaries] == [("global", 5)]


def test_nothing_to_score_writes_nothing():
    run = run_evaluation([], [GlobalVersion(1, np.zeros(4), 0.0)], [], None, CFG, NOW)
    assert run.summaries == [] and run.latest is None


def test_thin_versions_keeps_the_ends_and_every_nth():
    assert thin_versions([1, 2, 3, 4, 5, 6, 7], 3) == [1, 3, 6, 7]
    assert thin_versions([5], 10) == [5] and thin_versions([], 4) == []


def test_stability_is_the_worst_second_half_f1_over_the_best():
    from flead_app.algorithms.metrics import ModelMetrics

    def m(f1):
        return {"devices": ModelMetrics(f1, 0, 0, None, None, 0, 0, None, None, None, None)}

    assert stability({1: m(0.1), 2: m(0.5), 3: m(0.4)}) == pytest.approx(0.8)
    assert stability({1: m(0.5)}) is None
