"""The monitor's statistics as pure functions: PSI, KS, chi-square, centroid distance, live accuracy, thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shopclip.errors import InvalidConfig
from shopclip.monitor.statistics import (Statistic, Thresholds, categorical_statistics, category_counts,
                                         centroid_statistic, chi_square, cosine_distance, held, ks_test,
                                         live_accuracy, numeric_statistics, psi_categorical, psi_from_shares,
                                         psi_numeric, quantile_edges, rate_change)

RNG = np.random.default_rng(42)
NORMAL = RNG.normal(100, 20, size=2000)
SAME_DISTRIBUTION = RNG.normal(100, 20, size=2000)
SHIFTED = RNG.normal(130, 20, size=2000)


def test_psi_of_identical_samples_is_zero() -> None:
    assert psi_numeric(NORMAL, NORMAL) == pytest.approx(0.0, abs=1e-12)
    assert psi_categorical({"a": 5, "b": 7}, {"a": 5, "b": 7}) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_two_samples_of_one_distribution_is_small() -> None:
    assert psi_numeric(NORMAL, SAME_DISTRIBUTION) < 0.05


def test_psi_of_shifted_samples_is_over_the_usual_threshold() -> None:
    assert psi_numeric(NORMAL, SHIFTED) > 0.2
    assert psi_categorical({"true": 700, "false": 300}, {"true": 0, "false": 400}) > 0.2


def test_psi_is_symmetric_in_the_formula_and_grows_with_the_shift() -> None:
    ref, cur = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    assert psi_from_shares(ref, cur) == pytest.approx(psi_from_shares(cur, ref))
    assert psi_numeric(NORMAL, NORMAL + 10) < psi_numeric(NORMAL, NORMAL + 30)


def test_empty_bins_use_epsilon_instead_of_log_zero() -> None:
    value = psi_categorical({"a": 10}, {"b": 10}, epsilon=1e-4)
    assert math.isfinite(value) and value > 1
    # With a larger epsilon the same disjoint categories score lower: the clip is what bounds it.
    assert psi_categorical({"a": 10}, {"b": 10}, epsilon=1e-2) < value


def test_bins_are_fixed_reference_quantiles_with_ties_merged() -> None:
    reference = np.concatenate([np.zeros(600), np.arange(1, 401)])  # 60% image-only products, text_length 0
    edges = quantile_edges(reference, 10)
    assert edges[0] == 0 and len(edges) == len(np.unique(edges)) < 9
    assert psi_numeric(reference, np.zeros(100)) > 0.2  # every product text-less
    assert psi_numeric(np.full(10, 5.0), np.full(10, 5.0)) == pytest.approx(0.0)
    assert psi_numeric(np.full(10, 5.0), np.full(10, 9.0)) > 0.2


def test_values_outside_the_reference_range_fall_in_the_outer_bins() -> None:
    assert psi_numeric(np.arange(100.0), np.full(50, 1e9)) > 0.2
    assert psi_numeric(np.arange(100.0), np.full(50, -1e9)) > 0.2


def test_nan_values_are_left_out() -> None:
    with_nan = np.concatenate([NORMAL, [np.nan] * 10])
    assert psi_numeric(with_nan, NORMAL) == pytest.approx(0.0, abs=1e-12)
    assert ks_test(with_nan, NORMAL)[1] == pytest.approx(1.0)


def test_ks_p_value_is_high_for_one_distribution_and_tiny_for_a_shift() -> None:
    statistic, p_value = ks_test(NORMAL, SAME_DISTRIBUTION)
    assert 0 <= statistic < 0.1 and p_value > 0.01
    statistic, p_value = ks_test(NORMAL, SHIFTED)
    assert statistic > 0.4 and p_value < 1e-10


def test_chi_square_p_values() -> None:
    _, same = chi_square({"a": 500, "b": 500}, {"a": 490, "b": 510})
    _, moved = chi_square({"a": 500, "b": 500}, {"a": 100, "b": 900})
    assert same > 0.5 and moved < 1e-10
    # A category absent on both sides is dropped (chi2_contingency refuses zero expected counts).
    assert chi_square({"a": 5, "b": 5, "c": 0}, {"a": 5, "b": 5})[1] == pytest.approx(1.0)
    assert chi_square({"x": 10}, {"x": 30}) == (0.0, 1.0)  # one category: no difference to test


def test_empty_inputs_give_none_not_errors() -> None:
    empty = np.empty(0)
    assert psi_numeric(empty, NORMAL) is None and psi_numeric(NORMAL, empty) is None
    assert psi_numeric(np.array([np.nan]), NORMAL) is None
    assert ks_test(empty, NORMAL) is None
    assert psi_categorical({}, {"a": 1}) is None and psi_categorical({"a": 0}, {"a": 1}) is None
    assert chi_square({}, {"a": 1}) is None
    assert category_counts(np.empty(0, dtype=bool)) == {}
    statistics = numeric_statistics("text_length", NORMAL, empty, Thresholds())
    assert [s.value for s in statistics] == [None, None] and not any(s.alert for s in statistics)
    assert all(s.note for s in statistics)


def test_category_counts_name_booleans_and_codes_as_text() -> None:
    assert category_counts(np.array([True, False, True])) == {"false": 1, "true": 2}
    assert category_counts(np.array([2583, 10, 2583])) == {"10": 1, "2583": 2}


def test_numeric_and_categorical_statistics_alert_on_psi_only_by_default() -> None:
    thresholds = Thresholds()
    psi, ks = numeric_statistics("image_bytes", NORMAL, SHIFTED, thresholds)
    assert (psi.name, psi.alert, psi.threshold) == ("image_bytes.psi", True, 0.2)
    assert ks.name == "image_bytes.ks" and ks.p_value < 1e-10 and not ks.alert
    psi, chi2 = categorical_statistics("has_image", np.array([True] * 50 + [False] * 50),
                                       np.array([True] * 100), thresholds)
    assert psi.alert and chi2.p_value < 0.01 and not chi2.alert and chi2.count == 100


def test_a_p_value_threshold_makes_the_tests_alert() -> None:
    _, ks = numeric_statistics("text_length", NORMAL, NORMAL + 3, Thresholds(pvalue_alert=0.01))
    assert ks.alert and ks.threshold == 0.01
    psi, _ = numeric_statistics("text_length", NORMAL, NORMAL + 3, Thresholds(psi_threshold=5.0))
    assert not psi.alert


def test_rate_change_alerts_in_its_direction_only() -> None:
    rise = rate_change("abstain_rate", 0.30, 0.05, 0.10, +1, 100)
    assert rise.alert and rise.value == pytest.approx(0.25)
    assert (rise.window_value, rise.reference_value) == (0.30, 0.05)
    assert not rate_change("abstain_rate", 0.05, 0.30, 0.10, +1, 100).alert
    assert not rate_change("abstain_rate", 0.14, 0.05, 0.10, +1, 100).alert
    assert rate_change("mean_confidence", 0.5, 0.8, 0.10, -1, 100).alert
    empty = rate_change("abstain_rate", None, 0.05, 0.10, +1, 0)
    assert empty.skipped and not empty.alert and "window" in empty.note


def test_cosine_distance_and_centroid_shift() -> None:
    assert cosine_distance(np.array([1.0, 0]), np.array([2.0, 0])) == pytest.approx(0.0)
    assert cosine_distance(np.array([1.0, 0]), np.array([0, 3.0])) == pytest.approx(1.0)
    assert cosine_distance(np.array([1.0, 0]), np.array([1.0, 0, 0])) is None
    assert cosine_distance(np.zeros(2), np.array([1.0, 0])) is None
    shift = centroid_statistic(np.array([1.0, 0.2]), np.array([1.0, 0.0]), Thresholds(), 10)
    assert shift.name == "centroid.cosine_distance" and shift.alert == (shift.value > 0.05)
    assert centroid_statistic(np.array([1.0, 1.0]), np.array([1.0, 0.0]), Thresholds(), 10).alert
    missing = centroid_statistic(None, np.array([1.0]), Thresholds(), 0, "embeddings were not read")
    assert missing.skipped and missing.note == "embeddings were not read"


def test_live_accuracy_counts_only_feedback_on_a_logged_prediction() -> None:
    predicted = np.array([1, 1, 2, -1, -1])
    given = np.array([1, 2, 2, 5, 6])
    statistic = live_accuracy(predicted, given, Thresholds(min_feedback=3))
    assert statistic.value == pytest.approx(2 / 3) and statistic.count == 3 and statistic.alert
    few = live_accuracy(predicted, given, Thresholds(min_feedback=50))
    assert not few.alert and "fewer than 50" in few.note
    none = live_accuracy(np.array([], dtype=int), np.array([], dtype=int), Thresholds())
    assert none.skipped and none.count == 0 and not none.alert


def test_held_withholds_the_alert_and_says_why() -> None:
    statistic = held(Statistic("top_code", "psi", 3.0, threshold=0.2, alert=True), "window has 3 rows")
    assert not statistic.alert and statistic.note == "window has 3 rows"


def test_to_dict_is_json_ready() -> None:
    data = Statistic("top_probability", "psi", float("nan"), p_value=float("inf")).to_dict()
    assert data["value"] is None and data["p_value"] is None and data["name"] == "top_probability.psi"


@pytest.mark.parametrize(("field", "value"), [("psi_threshold", -1.0), ("pvalue_alert", 1.5),
                                              ("live_accuracy_min", 2.0), ("min_rows", -1), ("psi_bins", 1),
                                              ("psi_epsilon", 0.0)])
def test_thresholds_out_of_range_name_their_field(field: str, value: float) -> None:
    with pytest.raises(InvalidConfig) as raised:
        Thresholds(**{field: value})
    assert raised.value.field == field
