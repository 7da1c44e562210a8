"""A monitoring report: one window of the prediction log against its reference, and its storage.

`build_report(engine, start, end, reference)` reads the window, compares it with the reference (see
`monitor.statistics`) and lists the statistics over their thresholds as alerts; `store_report` writes it into
`monitor_reports` (statistics and alerts as JSON), so the history of drift is in the same database as the log.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from shopclip.monitor.reference import Reference, load_reference
from shopclip.monitor.statistics import (CATEGORICAL_FEATURES, NUMERIC_FEATURES, Statistic, Thresholds,
                                         categorical_statistics, centroid_statistic, held, live_accuracy,
                                         numeric_statistics, rate_change)
from shopclip.monitor.window import NO_CODE, EmbeddingMode, Window, read_window, utc
from shopclip.predictions import new_id, utc_now
from shopclip.predlog.schema import monitor_reports

log = logging.getLogger(__name__)


@dataclass
class Report:
    report_id: str
    created_at: datetime
    window_start: datetime
    window_end: datetime
    reference: str
    """What the window was compared with (`previous window ...`, `folder PATH`)."""
    statistics: list[Statistic]
    alerts: list[str]
    """Names of the statistics over their threshold (`text_length.psi`, ...)."""
    counts: dict[str, int]
    """predictions, reference_rows, feedback, feedback_compared, embeddings, reference_embeddings."""
    model_fingerprints: dict[str, int]
    """Models that answered in the window, with their row counts: a drift often coincides with a new model."""
    model_releases: dict[str, int]
    """The same by release: a retrain may change the classifier alone, under the same fingerprint."""
    thresholds: Thresholds
    window: Window = field(repr=False, compare=False)
    reference_window: Window = field(repr=False, compare=False)

    def statistic(self, name: str) -> Statistic | None:
        """The statistic called `name` (`text_length.psi`), or None."""
        return next((s for s in self.statistics if s.name == name), None)

    @property
    def empty(self) -> bool:
        return self.counts["predictions"] == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what `store_report` writes, plus the window)."""
        return {"report_id": self.report_id, "created_at": self.created_at.isoformat(),
                "window_start": self.window_start.isoformat(), "window_end": self.window_end.isoformat(),
                "reference": self.reference, "alerts": list(self.alerts), "counts": dict(self.counts),
                "model_fingerprints": dict(self.model_fingerprints), "model_releases": dict(self.model_releases),
                "thresholds": asdict(self.thresholds),
                "statistics": [s.to_dict() for s in self.statistics]}


def build_report(engine: Engine, start: datetime, end: datetime, reference: Reference | str | Path = "previous",
                 thresholds: Thresholds | None = None, embeddings: EmbeddingMode = "centroid") -> Report:
    """The report of [start, end) against `reference` (a Reference, `previous` or a labelled folder's path)."""
    start, end = utc(start), utc(end)
    thresholds = thresholds or Thresholds()
    if not isinstance(reference, Reference):
        reference = load_reference(engine, reference, start, end, embeddings)
    window = read_window(engine, start, end, embeddings)
    statistics = compare(window, reference.window, thresholds)
    alerts = [s.name for s in statistics if s.alert]
    counts = {"predictions": window.rows, "reference_rows": reference.window.rows,
              "feedback": window.feedback_rows, "feedback_compared": int(np.sum(window.feedback_predicted != NO_CODE)),
              "embeddings": window.embedding_count, "reference_embeddings": reference.window.embedding_count}
    if alerts:
        log.warning("monitor %s: alerts %s", window.label, ", ".join(alerts))
    return Report(report_id=new_id(), created_at=utc_now(), window_start=start, window_end=end,
                  reference=reference.label, statistics=statistics, alerts=alerts, counts=counts,
                  model_fingerprints=dict(window.model_fingerprints), model_releases=dict(window.model_releases),
                  thresholds=thresholds, window=window,
                  reference_window=reference.window)


def compare(window: Window, reference: Window, thresholds: Thresholds) -> list[Statistic]:
    """Every statistic of `window` against `reference`, in report order."""
    statistics = _distribution_statistics(window, reference, thresholds)
    statistics += _output_statistics(window, reference, thresholds)
    too_few = _too_few_rows(window, reference, thresholds.min_rows)
    if too_few:
        statistics = [held(s, too_few) if s.alert else s for s in statistics]
    statistics.append(live_accuracy(window.feedback_predicted, window.feedback_code, thresholds, NO_CODE))
    return statistics


def _too_few_rows(window: Window, reference: Window, min_rows: int) -> str:
    if window.rows < min_rows:
        return f"window has {window.rows} rows (< {min_rows}): not alerting"
    if reference.rows < min_rows:
        return f"reference has {reference.rows} rows (< {min_rows}): not alerting"
    return ""


def _distribution_statistics(window: Window, reference: Window, thresholds: Thresholds) -> list[Statistic]:
    statistics: list[Statistic] = []
    for features, measure, tests in ((NUMERIC_FEATURES, numeric_statistics, ("psi", "ks")),
                                     (CATEGORICAL_FEATURES, categorical_statistics, ("psi", "chi2"))):
        for feature in features:
            current, ref = _values(window, feature), _values(reference, feature)
            if current is None or ref is None:
                why = (reference if ref is None else window).unavailable.get(feature, "not recorded")
                statistics += [Statistic(feature, kind, None, note=why) for kind in tests]
            else:
                statistics += measure(feature, ref, current, thresholds)
    return statistics


def _values(window: Window, feature: str) -> np.ndarray | None:
    values = getattr(window, feature)
    if values is not None and feature == "top_code":
        values = values[values != NO_CODE]  # rows answered with no ranking have no code to count
    return values


def _output_statistics(window: Window, reference: Window, thresholds: Thresholds) -> list[Statistic]:
    """Abstain rate, mean confidence and centroid shift: what the model answered, not what it was sent."""
    count = window.rows
    abstain = _unavailable("abstain_rate", "change", reference, thresholds.abstain_rise, count) \
        or rate_change("abstain_rate", _mean(window.abstain), _mean(reference.abstain), thresholds.abstain_rise,
                       +1, count)
    confidence = _unavailable("mean_confidence", "change", reference, thresholds.confidence_drop, count) \
        or rate_change("mean_confidence", _mean(window.top_probability), _mean(reference.top_probability),
                       thresholds.confidence_drop, -1, count)
    why_not = reference.unavailable.get("centroid") or window.unavailable.get("centroid", "")
    if not why_not and reference.centroid is None:
        why_not = "no reference row kept its embedding"
    centroid = centroid_statistic(window.centroid, reference.centroid, thresholds, window.embedding_count, why_not)
    return [abstain, confidence, centroid]


def _unavailable(feature: str, kind: str, reference: Window, threshold: float, count: int) -> Statistic | None:
    why = reference.unavailable.get(feature)
    return Statistic(feature, kind, None, threshold=threshold, count=count, note=why) if why else None


def _mean(values: np.ndarray | None) -> float | None:
    """Mean of the finite values (rate of a boolean column); None when there are none."""
    if values is None:
        return None
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def store_report(engine: Engine, report: Report, html_path: str | Path | None = None) -> str:
    """Writes `report` into monitor_reports; returns its report_id."""
    summary = report.to_dict()
    statistics = {key: summary[key] for key in ("statistics", "counts", "model_fingerprints", "model_releases",
                                                "thresholds")}
    with engine.begin() as connection:
        connection.execute(monitor_reports.insert().values(
            report_id=report.report_id, created_at=report.created_at, window_start=report.window_start,
            window_end=report.window_end, reference=report.reference, statistics=statistics,
            alerts=list(report.alerts), html_path=None if html_path is None else str(Path(html_path).resolve())))
    return report.report_id
