"""NAB's score: worked examples, NAB's own test cases, and properties.

Notation in the comments: S(y) = 2 / (1 + exp(5 y)) - 1 is NAB's scaled sigmoid (-1 beyond
y = 3), M = S(-1) = 0.98661. A window of w readings with last reading e scores its first
detection at reading i as tp * S(-(e - i + 1) / w) / M; a false alarm at i after a window scores
fp * S((i - e) / (w - 1)), and -fp when no window precedes it; a missed window costs -fn.
"""

import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flead_app.algorithms.metrics import (
    NAB_PROFILES,
    NabProfile,
    NabSeriesSummary,
    label_windows,
    nab_probation_length,
    nab_scaled_sigmoid,
    nab_score,
    nab_score_from_summaries,
    nab_score_series,
    nab_summarize,
)

STANDARD = NAB_PROFILES["standard"]
M = 0.9866142981514305  # S(-1), as printed in NAB's tests/unit/scorer_test.py


def series(n: int, windows: list[tuple[int, int]], alarms_at: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Labels with 1 on each inclusive (first, last) window, alarms on the given readings."""
    labels = np.zeros(n, dtype=np.int8)
    for first, last in windows:
        labels[first : last + 1] = 1
    alarms = np.zeros(n, dtype=bool)
    alarms[alarms_at] = True
    return labels, alarms


def raw(n, windows, alarms_at, profile=STANDARD, probation_percent=0.0) -> float:
    labels, alarms = series(n, windows, alarms_at)
    return nab_score_series(labels, alarms, profile, probation_percent).raw_score


# --- the profiles and the sigmoid ---------------------------------------------------------------


def test_profiles_carry_nab_weights_from_config_profiles_json():
    assert NAB_PROFILES["standard"] == NabProfile("standard", 1.0, 0.11, 1.0)
    assert NAB_PROFILES["low_fp"] == NabProfile("reward_low_FP_rate", 1.0, 0.22, 1.0)
    assert NAB_PROFILES["low_fn"] == NabProfile("reward_low_FN_rate", 1.0, 0.11, 2.0)
    with pytest.raises(ValueError):
        NabProfile("bad", 0.0, 0.11, 1.0)
    with pytest.raises(ValueError):
        nab_score([series(5, [(1, 2)], [])], "no_such_profile")


def test_scaled_sigmoid_values_documented_by_nab():
    # nab/sweeper.py's docstring: -1 -> 0.98661, -0.5 -> 0.84828, 0 -> 0, 1 -> -0.98661
    assert nab_scaled_sigmoid(-1.0) == pytest.approx(M, abs=1e-15)
    assert nab_scaled_sigmoid(-0.5) == pytest.approx(0.8482836399575131, abs=1e-15)
    assert nab_scaled_sigmoid(0.0) == 0.0
    assert nab_scaled_sigmoid(1.0) == pytest.approx(-M, abs=1e-15)
    # beyond 3 it is exactly -1; at 3 itself the sigmoid still applies (NAB tests "> 3.0")
    assert nab_scaled_sigmoid(3.0001) == -1.0
    assert nab_scaled_sigmoid(3.0) == pytest.approx(2 / (1 + math.exp(15)) - 1, abs=1e-15)  # -0.99999939


# --- worked examples: one window [5, 9] (w = 5) in 40 readings, standard profile, no probation ---


def test_detection_at_the_window_start_is_worth_exactly_the_tp_weight():
    # y = -(9 - 5 + 1) / 5 = -1 -> S(-1) / M = 1
    assert raw(40, [(5, 9)], [5]) == 1.0


def test_detection_in_the_middle_of_the_window():
    # i = 7: y = -(9 - 7 + 1) / 5 = -0.6 -> S(-0.6) = 2 / (1 + e^-3) - 1 = 0.905148; / M = 0.917429
    assert raw(40, [(5, 9)], [7]) == pytest.approx(0.9174286804284079, abs=1e-12)


def test_detection_on_the_last_reading_of_the_window_still_scores():
    # i = 9: y = -(9 - 9 + 1) / 5 = -0.2 (never 0 inside a window) -> S(-0.2) = 0.462117; / M = 0.468387
    assert raw(40, [(5, 9)], [9]) == pytest.approx(0.46838684390227814, abs=1e-12)


def test_missed_window_costs_the_fn_weight():
    assert raw(40, [(5, 9)], []) == -1.0
    assert raw(40, [(5, 9)], [], NAB_PROFILES["low_fn"]) == -2.0


def test_false_alarm_before_the_first_window_costs_the_whole_fp_weight():
    # FP at 2: no preceding window -> -0.11; the window is missed -> -1
    assert raw(40, [(5, 9)], [2]) == pytest.approx(-1.11, abs=1e-12)
    assert raw(40, [(5, 9)], [2], NAB_PROFILES["low_fp"]) == pytest.approx(-1.22, abs=1e-12)


def test_false_alarm_right_after_a_window():
    # FP at 10: y = (10 - 9) / (5 - 1) = 0.25 -> S(0.25) = 2 / (1 + e^1.25) - 1 = -0.554600; * 0.11
    assert raw(40, [(5, 9)], [10]) == pytest.approx(-1.0 + 0.11 * -0.5545997223493824, abs=1e-12)


def test_false_alarm_far_after_a_window_costs_the_whole_fp_weight():
    # FP at 30: y = 21 / 4 = 5.25 > 3 -> -1 exactly; FP at 19: y = 2.5 -> -0.9999925
    assert raw(40, [(5, 9)], [30]) == pytest.approx(-1.11, abs=1e-12)
    assert raw(40, [(5, 9)], [19]) == pytest.approx(-1.0 + 0.11 * -0.9999925467214317, abs=1e-12)


def test_two_windows_each_false_alarm_is_placed_after_the_closest_preceding_window():
    # windows [5, 9] (w = 5) and [20, 22] (w = 3); alarms at 12, 21 and 24.
    # [5, 9] missed: -1.  21 in [20, 22]: y = -(22 - 21 + 1) / 3 = -2/3 -> S / M = 0.943742
    # FP 12 after [5, 9]: y = 3 / 4 = 0.75 -> S = -0.954045
    # FP 24 after [20, 22] (not [5, 9]): y = 2 / 2 = 1 -> S = -0.986614
    expected = -1.0 + 0.9437422611978669 + 0.11 * (-0.9540452601799487 - 0.9866142981514303)
    labels, alarms = series(40, [(5, 9), (20, 22)], [12, 21, 24])
    scored = nab_score_series(labels, alarms, STANDARD, 0.0)
    assert scored.raw_score == pytest.approx(expected, abs=1e-12)
    assert (scored.tp, scored.fp, scored.fn, scored.first_detections) == (1, 2, 1, (None, 1))


def test_only_the_first_detection_in_a_window_counts():
    assert raw(40, [(5, 9)], [7, 8, 9]) == raw(40, [(5, 9)], [7])


def test_false_alarm_after_a_one_reading_window_uses_position_two():
    # NAB's current sweeper divides by w - 1 = 0 here; its earlier scorer used y = 2 -> S(2) = -0.999909
    expected = 1.0 + 0.11 * nab_scaled_sigmoid(2.0)
    assert raw(40, [(5, 5)], [5, 6]) == pytest.approx(expected, abs=1e-12)
    assert raw(40, [(5, 5)], [5, 30]) == pytest.approx(expected, abs=1e-12)


# --- probation ------------------------------------------------------------------------------


def test_probationary_length_formula_and_cap():
    # nab/util.py getProbationPeriod and nab/sweeper.py _getProbationaryLength: min(floor(p n), p 5000)
    # the parametrised cases of tests/integration/sweeper_test.py testGetProbationaryLength:
    for rows, percent, expected in [(100, 0.0, 0), (100, 1.0, 100), (100, 0.1, 10), (100, 0.15, 15)]:
        assert nab_probation_length(rows, percent) == expected
    assert nab_probation_length(5000, 0.1) == 500
    assert nab_probation_length(6000, 0.1) == 500  # capped
    assert nab_probation_length(10_000) == 750  # 0.15 * 5000, not 1500
    assert nab_probation_length(19) == 2  # floor(2.85)


def test_alarms_in_the_probationary_period_are_ignored():
    # 20 readings, probation floor(0.15 * 20) = 3: FP at 2 ignored, FP at 3 counts (-0.11, no window)
    assert raw(20, [], [2], probation_percent=0.15) == 0.0
    assert raw(20, [], [2, 3], probation_percent=0.15) == pytest.approx(-0.11, abs=1e-12)


def test_window_overlapping_the_probationary_period_scores_only_later_detections():
    # window [1, 4] (w = 4), probation 3: the alarm at 2 is ignored, the one at 3 scores
    # y = -(4 - 3 + 1) / 4 = -0.5 -> S(-0.5) / M = 0.859793; alone, the alarm at 2 leaves a miss
    assert raw(20, [(1, 4)], [2, 3], probation_percent=0.15) == pytest.approx(0.8597925669097837, abs=1e-12)
    assert raw(20, [(1, 4)], [2], probation_percent=0.15) == -1.0


def test_window_wholly_in_probation_is_not_scored_but_counts_in_the_perfect_score():
    # 100 readings, probation 15, window [5, 9]: neither TP nor FN, raw 0 whatever the alarms
    labels, alarms = series(100, [(5, 9), (50, 54)], [5, 50])
    scored = nab_score_series(labels, alarms, STANDARD)
    assert (scored.raw_score, scored.tp, scored.fn, scored.first_detections) == (1.0, 1, 0, (None, 0))
    assert (scored.null_score, scored.perfect_score) == (-1.0, 2.0)
    # normalised: 100 * (1 - -1) / (2 - -1) = 66.67, not 100 (as NAB's Runner.normalize)
    assert nab_score([(labels, alarms)], "standard") == pytest.approx(200.0 / 3.0, abs=1e-12)


# --- normalisation over a corpus ------------------------------------------------------------------


def test_corpus_sums_raw_null_and_perfect_before_normalising():
    # A: window [5, 9] detected at its start: raw 1, null -1, perfect 1
    # B: windows [20, 24] and [40, 44] missed, FP at 2 (-0.11): raw -2.11, null -2, perfect 2
    # corpus: 100 * (-1.11 - -3) / (3 - -3) = 31.5  (mean of per-file scores would be 48.625)
    a = series(60, [(5, 9)], [5])
    b = series(60, [(20, 24), (40, 44)], [2])
    assert nab_score([a, b], "standard", probation_percent=0.0) == pytest.approx(31.5, abs=1e-12)


def test_corpus_without_windows_has_no_score():
    with pytest.raises(ValueError):
        nab_score([series(10, [], [3])], "standard")


def test_summary_round_trips_through_a_plain_dict():
    labels, alarms = series(60, [(20, 24), (40, 44)], [2, 21, 30])
    summary = nab_summarize(labels, alarms)
    assert NabSeriesSummary.from_dict(summary.to_dict()) == summary
    assert summary.false_positives == 1  # the alarm at 2 is in probation (9 readings)


# --- NAB's own test cases -------------------------------------------------------------------------
# Ported scenarios and expected values from numenta/NAB tests/unit/scorer_test.py, whose cost matrix
# is tpWeight 1.1, fpWeight 0.11, fnWeight 1.2, and whose probationaryPeriod is a row count (here the
# percentage giving that count).

UNIT = NabProfile("nab-unit-test", tp_weight=1.1, fp_weight=0.11, fn_weight=1.2)


def unit_raw(predictions, labels, probation_percent=0.0) -> float:
    return nab_score_series(np.array(labels), np.array(predictions, dtype=bool), UNIT, probation_percent).raw_score


def test_nab_unit_null_false_positives_and_false_negatives():
    assert unit_raw([0] * 5, [0] * 5) == pytest.approx(0.0)  # testNull
    assert unit_raw([0, 1, 0, 1, 0], [0] * 5) == pytest.approx(-2.0 * 0.11)  # testFalsePositives
    assert unit_raw([0] * 7, [0, 1, 1, 0, 1, 1, 0]) == pytest.approx(-2.0 * 1.2)  # testFalseNegatives


def test_nab_unit_false_positives_and_probation():
    # testFalsePositivesInProbationary: probationaryPeriod 4 of 5 rows
    assert unit_raw([0, 1, 0, 1, 0], [0] * 5, probation_percent=0.8) == pytest.approx(0.0)
    # testFalsePositivesBeforeAndAfterProbationary: probationaryPeriod 3 of 5 rows
    assert unit_raw([0, 1, 0, 1, 0], [0] * 5, probation_percent=0.6) == pytest.approx(-1.0 * 0.11)


def test_nab_unit_true_positives():
    first_window = 0.8482836399575131 * 1.1 / 0.9866142981514305
    second_window = 0.9866142981514305 * 1.1 / 0.9866142981514305
    # testTruePositives1, testTruePositives1WithFN, testTruePositives2, 3, testTruePositivesMultiple
    assert unit_raw([0, 0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0]) == pytest.approx(first_window)
    assert unit_raw([0, 0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 1, 1, 0]) == pytest.approx(first_window - 1.2)
    assert unit_raw([0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0]) == pytest.approx(second_window)
    assert unit_raw([0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1, 0]) == pytest.approx(second_window)
    assert unit_raw([0, 0, 1, 0, 1, 0, 0], [0, 1, 1, 0, 1, 1, 0]) == pytest.approx(first_window + second_window)


# Scenarios from numenta/NAB tests/integration/{false_negative,false_positive,true_positive,scorer}_test.py
# (Sweeper, probationPercent 0, cost matrix all 1.0 unless stated). Their windows come from
# nab/test_helpers.py generateWindows: windows of `size` readings, the gap before each
# round((length - count * size) / (count + 1)) readings.

ONES = NabProfile("nab-integration-test", tp_weight=1.0, fp_weight=1.0, fn_weight=1.0)


def nab_test_windows(length: int, count: int, size: int) -> list[tuple[int, int]]:
    gap = math.floor((length - count * size) / (count + 1) + 0.5)  # Python 2's round, as NAB's tests ran
    return [(gap * (k + 1) + size * k, gap * (k + 1) + size * k + size - 1) for k in range(count)]


def test_nab_test_window_generator_matches_the_windows_its_tests_use():
    assert nab_test_windows(100, 2, 5) == [(30, 34), (65, 69)]
    assert nab_test_windows(10, 1, 3) == [(4, 6)]


def test_nab_false_negatives():
    # testFalseNegativeCausesNegativeScore, testFourFalseNegatives
    assert raw(1000, nab_test_windows(1000, 1, 10), [], ONES) == -1.0
    assert raw(2000, nab_test_windows(2000, 4, 10), [], ONES) == -4.0


def test_nab_false_positives():
    windows = nab_test_windows(1000, 1, 10)
    one = nab_score_series(*series(1000, windows, [0]), ONES, 0.0)
    two = nab_score_series(*series(1000, windows, [0, 1]), ONES, 0.0)
    assert one.raw_score < 0 and one.fp == 1  # testFalsePositiveMeansNegativeScore
    assert two.raw_score < one.raw_score and two.fp == 2  # testTwoFalsePositivesIsWorseThanOne
    assert raw(1000, [], [0], ONES) == -1.0  # testOneFalsePositiveNoWindow: exactly -fpWeight
    # testEarlierFalsePositiveAfterWindowIsBetter: 10 readings, window of 2 ([4, 5]); FP at 6 vs 7
    (w,) = nab_test_windows(10, 1, 2)
    assert raw(10, [w], [w[1] + 1], ONES) > raw(10, [w], [w[1] + 2], ONES)


def test_nab_true_positives():
    (w,) = nab_test_windows(10, 1, 2)
    assert raw(10, [w], [w[0]], ONES) == 1.0  # testFirstTruePositiveWithinWindow: == tpWeight
    assert raw(10, [w], [w[0]], ONES) > raw(10, [w], [w[1]], ONES)  # testEarlierTruePositiveIsBetter
    assert raw(10, [w], [w[0], w[1]], ONES) == raw(10, [w], [w[0]], ONES)  # testOnlyScoreFirstTruePositive...
    (w3,) = nab_test_windows(10, 1, 3)  # testTruePositivesWithDifferentWindowSizes
    assert raw(10, [w3], [w3[0]], ONES) == raw(10, [w], [w[0]], ONES)
    # testTruePositiveAtRightEdgeOfWindow: 1000 readings, one window of 100; TP on its last reading,
    # then an FP on the next: TP + FP + 1 (the FN of the second run) ~ 0 to 3 decimals
    (big,) = nab_test_windows(1000, 1, 100)
    at_edge = raw(1000, [big], [big[1]], ONES)
    just_after = raw(1000, [big], [big[1] + 1], ONES)
    assert at_edge + just_after + 1 == pytest.approx(0.0, abs=5e-4)


def test_nab_scorer_profiles_and_all_metrics():
    assert raw(10, [], [], ONES) == 0.0  # testNullCase
    # testRewardLowFalseNegatives: no detections, fnWeight 1 vs 2 (fpWeight 0.055)
    (w,) = nab_test_windows(100, 1, 10)
    low_fn = NabProfile("fn2", tp_weight=1.0, fp_weight=0.055, fn_weight=2.0)
    assert raw(100, [w], [], ONES) == 0.5 * raw(100, [w], [], low_fn)
    # testRewardLowFalsePositives: no window, one FP, fpWeight 1 vs 2 (fnWeight 0.5)
    low_fp = NabProfile("fp2", tp_weight=1.0, fp_weight=2.0, fn_weight=0.5)
    assert raw(100, [], [0], ONES) == 0.5 * raw(100, [], [0], low_fp)
    # testScoringAllMetrics: windows [30, 34] and [65, 69]; TP at 30, another at 31, FP at 37 -> -0.9540
    windows = nab_test_windows(100, 2, 5)
    scored = nab_score_series(*series(100, windows, [30, 31, 37]), ONES, 0.0)
    assert scored.raw_score == pytest.approx(-0.9540, abs=5e-5)
    assert (scored.tp, scored.fp, scored.fn) == (1, 1, 1)  # NAB counts readings there: tp 2, fp 1, fn 8


def test_nab_false_positive_scaling_balances_random_detections():
    # testFalsePositiveScaling: 10 random detections in 100 readings, window of 10, fpWeight 0.11;
    # the mean over 20 draws lies in [-1.5, 0.5]
    (w,) = nab_test_windows(100, 1, 10)
    profile = NabProfile("scaling", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
    rng = random.Random(7)
    scores = [raw(100, [w], rng.sample(range(100), 10), profile) for _ in range(20)]
    assert -1.5 <= sum(scores) / len(scores) <= 0.5


def test_nab_sweeper_window_score_interaction():
    # testCalcSweepScoreWindowScoreInteraction: alarms everywhere, windows (30, 39) and (75, 95),
    # probation 10%: 10 readings ignored, both windows detected on their first reading, and every
    # other scored reading is a false alarm with a negative sigmoid
    labels, alarms = series(100, [(30, 39), (75, 95)], list(range(100)))
    summary = nab_summarize(labels, alarms, probation_percent=0.1)
    assert summary.probation_length == 10
    assert [w.first_detection for w in summary.windows] == [0, 0]
    assert summary.false_positives == 100 - 10 - 10 - 21
    assert -summary.false_positives <= summary.false_positive_sigmoid_sum < 0


# --- properties ---------------------------------------------------------------------------------


def reference_raw_score(labels: np.ndarray, alarms: np.ndarray, profile: NabProfile, probation: int) -> float:
    """NAB's raw score reading by reading, the way nab/sweeper.py walks a file (written independently)."""
    n = len(labels)
    windows = []  # (first, last) inclusive
    i = 0
    while i < n:
        if labels[i]:
            j = i
            while j + 1 < n and labels[j + 1]:
                j += 1
            windows.append((i, j))
            i = j + 1
        else:
            i += 1
    window_part = {}  # window -> best sweep score so far, starting from the miss
    fp_part = 0.0
    current = previous = None
    starts = {first: (first, last) for first, last in windows}
    for i in range(n):
        if current is None and i in starts:
            current = starts[i]
        if current is not None:
            first, last = current
            width = last - first + 1
            sweep = nab_scaled_sigmoid(-(last - i + 1) / width) * profile.tp_weight / M
        elif previous is None:
            sweep = -profile.fp_weight
        else:
            first, last = previous
            width = last - first + 1
            position = abs(last - i) / (width - 1) if width > 1 else 2.0
            sweep = nab_scaled_sigmoid(position) * profile.fp_weight
        if i >= probation:
            if current is not None:
                window_part.setdefault(current, -profile.fn_weight)
                if alarms[i]:
                    window_part[current] = max(window_part[current], sweep)
            elif alarms[i]:
                fp_part += sweep
        if current is not None and i == current[1]:
            previous, current = current, None
    return fp_part + sum(window_part.values())


bits = st.lists(st.booleans(), min_size=1, max_size=60)
one_series = bits.flatmap(
    lambda labels: st.tuples(st.just(labels), st.lists(st.booleans(), min_size=len(labels), max_size=len(labels)))
)
corpora = st.lists(one_series, min_size=1, max_size=4)
profiles = st.sampled_from([*NAB_PROFILES.values(), UNIT])
probations = st.sampled_from([0.0, 0.15, 0.5])


def as_arrays(corpus):
    return [(np.array(labels, dtype=np.int8), np.array(alarms, dtype=bool)) for labels, alarms in corpus]


def has_window(corpus) -> bool:
    return any(any(labels) for labels, _ in corpus)


@settings(max_examples=300, deadline=None)
@given(corpus=corpora, profile=profiles, probation=probations)
def test_raw_score_agrees_with_a_reading_by_reading_walk(corpus, profile, probation):
    for labels, alarms in as_arrays(corpus):
        expected = reference_raw_score(labels, alarms, profile, nab_probation_length(len(labels), probation))
        assert nab_score_series(labels, alarms, profile, probation).raw_score == pytest.approx(expected, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(corpus=corpora, profile=profiles, probation=probations)
def test_null_detector_scores_zero(corpus, profile, probation):
    assume(has_window(corpus))
    null = [(labels, np.zeros_like(alarms)) for labels, alarms in as_arrays(corpus)]
    assert nab_score(null, profile, probation) == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(corpus=corpora, profile=profiles)
def test_perfect_detector_scores_one_hundred(corpus, profile):
    assume(has_window(corpus))
    perfect = []
    for labels, _ in as_arrays(corpus):
        alarms = np.zeros(len(labels), dtype=bool)
        alarms[[first for first, _ in label_windows(labels)]] = True
        perfect.append((labels, alarms))
    assert nab_score(perfect, profile, probation_percent=0.0) == pytest.approx(100.0, abs=1e-9)
    # with probation too, as long as no window starts inside it
    assume(all(not labels[: nab_probation_length(len(labels))].any() for labels, _ in perfect))
    assert nab_score(perfect, profile) == pytest.approx(100.0, abs=1e-9)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(corpus=corpora, profile=profiles, probation=probations, data=st.data())
def test_an_added_detection_inside_a_window_never_lowers_the_score(corpus, profile, probation, data):
    assume(has_window(corpus))
    arrays = as_arrays(corpus)
    k = data.draw(st.sampled_from([k for k, (labels, _) in enumerate(arrays) if labels.any()]))
    labels, alarms = arrays[k]
    i = data.draw(st.sampled_from(np.flatnonzero(labels).tolist()))
    more = alarms.copy()
    more[i] = True
    added = arrays[:k] + [(labels, more)] + arrays[k + 1 :]
    assert nab_score(added, profile, probation) >= nab_score(arrays, profile, probation) - 1e-9


@settings(max_examples=200, deadline=None)
@given(corpus=corpora, profile=profiles, probation=probations, data=st.data())
def test_a_second_detection_in_the_same_window_changes_nothing(corpus, profile, probation, data):
    arrays = as_arrays(corpus)
    for labels, alarms in arrays:
        for summary_window in nab_summarize(labels, alarms, probation).windows:
            if summary_window.first_detection is None:
                continue
            first = summary_window.start + summary_window.first_detection
            later = list(range(first + 1, summary_window.start + summary_window.length))
            if not later:
                continue
            more = alarms.copy()
            more[data.draw(st.sampled_from(later))] = True
            before = nab_score_series(labels, alarms, profile, probation).raw_score
            assert nab_score_series(labels, more, profile, probation).raw_score == before


@settings(max_examples=200, deadline=None)
@given(corpus=corpora, profile=profiles, probation=probations)
def test_summaries_then_combine_equals_scoring_the_raw_series(corpus, profile, probation):
    assume(has_window(corpus))
    arrays = as_arrays(corpus)
    # what a site would send: a plain dict per series, no readings
    sent = [nab_summarize(labels, alarms, probation).to_dict() for labels, alarms in arrays]
    combined = nab_score_from_summaries([NabSeriesSummary.from_dict(d) for d in sent], profile)
    assert combined == nab_score(arrays, profile, probation)
    # and both equal the normalisation of the reading-by-reading walk
    raw_total = sum(
        reference_raw_score(labels, alarms, profile, nab_probation_length(len(labels), probation))
        for labels, alarms in arrays
    )
    null_total = sum(
        reference_raw_score(labels, np.zeros_like(alarms), profile, nab_probation_length(len(labels), probation))
        for labels, alarms in arrays
    )
    perfect_total = profile.tp_weight * sum(len(nab_summarize(labels, alarms).windows) for labels, alarms in arrays)
    expected = 100.0 * (raw_total - null_total) / (perfect_total - null_total)
    assert combined == pytest.approx(expected, abs=1e-9)
