"""Drift and quality statistics of a window against its reference, each with its threshold and alert.

* numeric features (text_length, image_bytes, top_probability): PSI on fixed quantile bins of the reference,
  and the two-sample Kolmogorov-Smirnov test;
* categorical features (has_description, has_image, top_code): PSI on the categories, and the chi-square test
  of the 2 x k contingency table;
* abstain rate and mean confidence: the window's value, the reference's, and their difference;
* centroid shift: the cosine distance between the mean (normalised) embeddings;
* live accuracy: the share of the window's feedback whose prediction was right, with its count.

PSI alerts by default (above 0.2, the usual rule: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant shift):
it measures how much the distribution moved, whatever the sample size. KS and chi-square p-values are reported,
but alert only when `pvalue_alert` is set: on windows of many thousand rows any tiny, harmless difference is
significant, so a p-value alone would fire every hour.

scipy is imported inside the tests that need it: this module also declares the CLI's threshold flags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from shopclip.errors import InvalidConfig
from shopclip.settings import option

NUMERIC_FEATURES = ("text_length", "image_bytes", "top_probability")
CATEGORICAL_FEATURES = ("has_description", "has_image", "top_code")
CENTROID_SHIFT_DEFAULT = 0.05


@dataclass(frozen=True)
class Thresholds:
    """When a statistic alerts; each field is a `shopclip monitor` flag."""

    psi_threshold: float = option(0.2, "PSI above which a feature has drifted (0.1-0.2 moderate, > 0.2 significant)")
    abstain_rise: float = option(0.10, "alert when the abstain rate rises by more than this (absolute share)")
    confidence_drop: float = option(0.10, "alert when the mean top probability falls by more than this")
    centroid_shift: float = option(
        CENTROID_SHIFT_DEFAULT,
        "alert when the cosine distance between the window's and the reference's mean embedding exceeds this "
        "(two samples of one product mix sit far below it; a change of mix moves the mean by more; calibrate on "
        "past reports' values)")
    pvalue_alert: float | None = option(None, "also alert when a KS or chi-square p-value is below this "
                                              "(off by default: large windows make any difference significant)")
    live_accuracy_min: float = option(0.7, "alert when live accuracy on enough feedback is below this")
    min_feedback: int = option(50, "feedback rows needed before live accuracy alerts")
    min_rows: int = option(50, "rows needed in the window and the reference before distribution statistics alert")
    psi_bins: int = option(10, "quantile bins of the reference for numeric PSI")
    psi_epsilon: float = option(1e-4, "share given to a bin that is empty on one side (avoids log(0))")

    def __post_init__(self) -> None:
        for name in ("psi_threshold", "abstain_rise", "confidence_drop", "centroid_shift"):
            if not getattr(self, name) >= 0:
                raise InvalidConfig(name, f"must be >= 0, got {getattr(self, name)}")
        if self.pvalue_alert is not None and not 0 < self.pvalue_alert < 1:
            raise InvalidConfig("pvalue_alert", f"must be in (0, 1), got {self.pvalue_alert}")
        if not 0 <= self.live_accuracy_min <= 1:
            raise InvalidConfig("live_accuracy_min", f"must be in [0, 1], got {self.live_accuracy_min}")
        for name in ("min_feedback", "min_rows"):
            if getattr(self, name) < 0:
                raise InvalidConfig(name, f"must be >= 0, got {getattr(self, name)}")
        if self.psi_bins < 2:
            raise InvalidConfig("psi_bins", f"must be >= 2, got {self.psi_bins}")
        if not 0 < self.psi_epsilon < 0.1:
            raise InvalidConfig("psi_epsilon", f"must be in (0, 0.1), got {self.psi_epsilon}")


@dataclass(frozen=True)
class Statistic:
    """One number of a report. `value` None: not computed, `note` says why."""

    feature: str
    kind: str
    """psi, ks, chi2, change (window minus reference), cosine_distance, share."""
    value: float | None
    p_value: float | None = None
    threshold: float | None = None
    alert: bool = False
    window_value: float | None = None
    """For `change`: the window's rate or mean (value is its difference from the reference's)."""
    reference_value: float | None = None
    count: int | None = None
    """Rows the statistic was computed on (the window's)."""
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.feature}.{self.kind}"

    @property
    def skipped(self) -> bool:
        return self.value is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and infinities become None: PostgreSQL's JSON refuses them)."""
        data = {key: _finite(value) for key, value in asdict(self).items()}
        data["name"] = self.name
        return data


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ---------------------------------------------------------------- the measures


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges at the reference's quantiles (duplicates merged: a feature with many equal values,
    text_length 0 of image-only products, gets fewer bins rather than empty ones)."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


def psi_from_shares(reference: np.ndarray, current: np.ndarray, epsilon: float = 1e-4) -> float:
    """Sum over bins of (cur - ref) * ln(cur / ref), shares clipped below at `epsilon`."""
    ref = np.clip(np.asarray(reference, dtype=np.float64), epsilon, None)
    cur = np.clip(np.asarray(current, dtype=np.float64), epsilon, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = 10, epsilon: float = 1e-4) -> float | None:
    """PSI of `current` against `reference` on the reference's quantile bins; None if either is empty."""
    reference, current = _finite_values(reference), _finite_values(current)
    if not len(reference) or not len(current):
        return None
    edges = quantile_edges(reference, bins)
    # Bin i holds edges[i-1] < x <= edges[i]; values beyond the reference's range fall in the outer bins.
    ref_counts = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=len(edges) + 1)
    cur_counts = np.bincount(np.searchsorted(edges, current, side="left"), minlength=len(edges) + 1)
    return psi_from_shares(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum(), epsilon)


def category_counts(values: np.ndarray) -> dict[str, int]:
    """Category (as text, so codes and booleans share JSON keys) -> count."""
    keys, counts = np.unique(np.asarray(values), return_counts=True)
    return {_category(key): int(count) for key, count in zip(keys.tolist(), counts.tolist())}


def _category(key: Any) -> str:
    return str(key).lower() if isinstance(key, bool) else str(key)


def psi_categorical(reference: Mapping[str, int], current: Mapping[str, int], epsilon: float = 1e-4) -> float | None:
    """PSI over the union of both sides' categories; None if either side has no count."""
    ref_total, cur_total = sum(reference.values()), sum(current.values())
    if not ref_total or not cur_total:
        return None
    keys = sorted(set(reference) | set(current))
    return psi_from_shares(np.array([reference.get(k, 0) / ref_total for k in keys]),
                           np.array([current.get(k, 0) / cur_total for k in keys]), epsilon)


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float] | None:
    """(KS statistic, p-value) of the two samples; None if either is empty."""
    from scipy.stats import ks_2samp

    reference, current = _finite_values(reference), _finite_values(current)
    if not len(reference) or not len(current):
        return None
    result = ks_2samp(reference, current)
    return float(result.statistic), float(result.pvalue)


def chi_square(reference: Mapping[str, int], current: Mapping[str, int]) -> tuple[float, float] | None:
    """(chi-square statistic, p-value) of the 2 x k table of category counts; None if either side is empty.
    One category in all (every product has an image on both sides) is no difference: statistic 0, p-value 1."""
    from scipy.stats import chi2_contingency

    if not sum(reference.values()) or not sum(current.values()):
        return None
    keys = sorted(k for k in set(reference) | set(current) if reference.get(k, 0) + current.get(k, 0) > 0)
    if len(keys) < 2:
        return 0.0, 1.0
    table = np.array([[reference.get(k, 0) for k in keys], [current.get(k, 0) for k in keys]])
    statistic, p_value, _, _ = chi2_contingency(table)
    return float(statistic), float(p_value)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """1 - cos(a, b); None when a vector is zero or their sizes differ (a model change between the two)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if a.shape != b.shape or norm == 0:
        return None
    return float(1.0 - np.dot(a, b) / norm)


def _finite_values(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


# ---------------------------------------------------------------- statistics with their alerts


def numeric_statistics(feature: str, reference: np.ndarray, current: np.ndarray,
                       thresholds: Thresholds) -> list[Statistic]:
    """PSI and KS of one numeric feature."""
    count = int(len(_finite_values(current)))
    psi = psi_numeric(reference, current, thresholds.psi_bins, thresholds.psi_epsilon)
    ks = ks_test(reference, current)
    return [_psi_statistic(feature, psi, thresholds, count),
            _test_statistic(feature, "ks", ks, thresholds, count)]


def categorical_statistics(feature: str, reference: np.ndarray, current: np.ndarray,
                           thresholds: Thresholds) -> list[Statistic]:
    """PSI and chi-square of one categorical feature."""
    ref_counts, cur_counts = category_counts(reference), category_counts(current)
    psi = psi_categorical(ref_counts, cur_counts, thresholds.psi_epsilon)
    return [_psi_statistic(feature, psi, thresholds, int(len(current))),
            _test_statistic(feature, "chi2", chi_square(ref_counts, cur_counts), thresholds, int(len(current)))]


def _psi_statistic(feature: str, psi: float | None, thresholds: Thresholds, count: int) -> Statistic:
    if psi is None:
        return Statistic(feature, "psi", None, threshold=thresholds.psi_threshold, count=count, note=_EMPTY)
    return Statistic(feature, "psi", psi, threshold=thresholds.psi_threshold, alert=psi > thresholds.psi_threshold,
                     count=count)


def _test_statistic(feature: str, kind: str, result: tuple[float, float] | None, thresholds: Thresholds,
                    count: int) -> Statistic:
    if result is None:
        return Statistic(feature, kind, None, threshold=thresholds.pvalue_alert, count=count, note=_EMPTY)
    statistic, p_value = result
    alert = thresholds.pvalue_alert is not None and p_value < thresholds.pvalue_alert
    return Statistic(feature, kind, statistic, p_value=p_value, threshold=thresholds.pvalue_alert, alert=alert,
                     count=count)


_EMPTY = "no rows on one side"


def rate_change(feature: str, current: float | None, reference: float | None, threshold: float,
                direction: int, count: int) -> Statistic:
    """Window value minus reference value; alerts when it moves by more than `threshold` in `direction`
    (+1: a rise alerts, -1: a fall alerts)."""
    if current is None or reference is None:
        note = "no rows in the window" if current is None else "no rows in the reference"
        return Statistic(feature, "change", None, threshold=threshold, window_value=current,
                         reference_value=reference, count=count, note=note)
    change = current - reference
    return Statistic(feature, "change", change, threshold=threshold, alert=direction * change > threshold,
                     window_value=current, reference_value=reference, count=count)


def centroid_statistic(current: np.ndarray | None, reference: np.ndarray | None, thresholds: Thresholds,
                       count: int, why_not: str = "") -> Statistic:
    distance = None if current is None or reference is None else cosine_distance(current, reference)
    if distance is None:
        note = why_not or "the two mean embeddings differ in size (a model change?)"
        return Statistic("centroid", "cosine_distance", None, threshold=thresholds.centroid_shift, count=count,
                         note=note)
    return Statistic("centroid", "cosine_distance", distance, threshold=thresholds.centroid_shift,
                     alert=distance > thresholds.centroid_shift, count=count)


def live_accuracy(predicted: np.ndarray, given: np.ndarray, thresholds: Thresholds,
                  no_code: int = -1) -> Statistic:
    """Share of feedback whose prediction's top code is the code given. Feedback with no logged prediction to
    compare (`no_code`) is left out of both the share and its count."""
    compared = np.asarray(predicted) != no_code
    count = int(compared.sum())
    if not count:
        return Statistic("live_accuracy", "share", None, threshold=thresholds.live_accuracy_min, count=0,
                         note="no feedback on a logged prediction in the window")
    share = float(np.mean(np.asarray(predicted)[compared] == np.asarray(given)[compared]))
    enough = count >= thresholds.min_feedback
    return Statistic("live_accuracy", "share", share, threshold=thresholds.live_accuracy_min,
                     alert=enough and share < thresholds.live_accuracy_min, count=count,
                     note="" if enough else f"fewer than {thresholds.min_feedback} feedback rows: not alerting")


def held(statistic: Statistic, reason: str) -> Statistic:
    """`statistic` with its alert withheld, and why."""
    note = f"{statistic.note}; {reason}" if statistic.note else reason
    return replace(statistic, alert=False, note=note)
