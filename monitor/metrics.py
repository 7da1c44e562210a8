"""The monitor's Prometheus gauges, in their own registry (never the process-global one, so two monitors or a
test never see each other's values), exported as a node-exporter textfile and/or served on a port.

Each report replaces every value: a feature that is no longer measured loses its series rather than keeping a
stale one, and a statistic that could not be computed (an empty window) is NaN, on which no alert compares true.
"""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, start_http_server, write_to_textfile

from shopclip.monitor.report import Report
from shopclip.monitor.statistics import Statistic

NAN = float("nan")


class MonitorMetrics:
    """Gauges of the latest report; `update(report)` sets them all."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        gauge = self._gauge
        self.psi = gauge("shopclip_drift_psi", "PSI of a feature in the monitor's window against its reference",
                         ["feature"])
        self.pvalue = gauge("shopclip_drift_pvalue", "KS (numeric) or chi-square (categorical) p-value of a feature",
                            ["feature"])
        self.alert = gauge("shopclip_drift_alert", "1 when a statistic of the feature is over its threshold",
                           ["feature"])
        self.predictions = gauge("shopclip_monitor_predictions", "predictions in the monitor's window")
        self.abstain_rate = gauge("shopclip_monitor_abstain_rate", "share of abstentions in the window")
        self.reference_abstain_rate = gauge("shopclip_monitor_reference_abstain_rate",
                                            "share of abstentions in the reference (NaN for a folder reference)")
        self.mean_confidence = gauge("shopclip_monitor_mean_confidence", "mean top probability in the window")
        self.live_accuracy = gauge("shopclip_live_accuracy",
                                   "share of the window's feedback whose prediction's top code was right")
        self.feedback = gauge("shopclip_monitor_feedback",
                              "feedback rows in the window that refer to a logged prediction (live accuracy's "
                              "sample)")
        self.centroid_shift = gauge("shopclip_centroid_shift",
                                    "cosine distance between the window's and the reference's mean embedding")
        self.last_report = gauge("shopclip_monitor_last_report_timestamp_seconds",
                                 "Unix time of the latest monitor report")

    def _gauge(self, name: str, documentation: str, labels: list[str] | None = None) -> Gauge:
        return Gauge(name, documentation, labels or [], registry=self.registry)

    def update(self, report: Report) -> None:
        """Every gauge from `report`."""
        for family in (self.psi, self.pvalue, self.alert):
            family.clear()
        alerts: dict[str, bool] = {}
        for statistic in report.statistics:
            self._set_feature(statistic)
            if not statistic.skipped and statistic.feature != "live_accuracy":
                # Any of the feature's statistics: its PSI may be fine while its own test alerts.
                alerts[statistic.feature] = alerts.get(statistic.feature, False) or statistic.alert
        for feature, alert in alerts.items():
            self.alert.labels(feature).set(float(alert))
        self.predictions.set(report.counts["predictions"])
        abstain = report.statistic("abstain_rate.change")
        self.abstain_rate.set(_number(abstain.window_value if abstain else None))
        self.reference_abstain_rate.set(_number(abstain.reference_value if abstain else None))
        confidence = report.statistic("mean_confidence.change")
        self.mean_confidence.set(_number(confidence.window_value if confidence else None))
        accuracy = report.statistic("live_accuracy.share")
        self.live_accuracy.set(_number(accuracy.value if accuracy else None))
        self.feedback.set(accuracy.count or 0 if accuracy else 0)
        centroid = report.statistic("centroid.cosine_distance")
        self.centroid_shift.set(_number(centroid.value if centroid else None))
        self.last_report.set(report.created_at.timestamp())

    def _set_feature(self, statistic: Statistic) -> None:
        if statistic.feature == "live_accuracy":
            return  # its own gauges: it is quality, not drift of the inputs
        if statistic.kind == "psi" and statistic.value is not None:
            self.psi.labels(statistic.feature).set(statistic.value)
        if statistic.kind in ("ks", "chi2") and statistic.p_value is not None:
            self.pvalue.labels(statistic.feature).set(statistic.p_value)

    def write_textfile(self, path: str | Path) -> None:
        """The node-exporter textfile collector's format, written atomically (prometheus_client renames)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), self.registry)

    def serve(self, port: int, addr: str = "0.0.0.0") -> object:
        """Serve the gauges on http://addr:port/metrics from a daemon thread; returns the server."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server

    def values(self) -> dict[str, float]:
        """`name{label="value"}` -> value of every sample (for tests, and for printing)."""
        return gauge_values(self.registry)


def gauge_values(registry: CollectorRegistry) -> dict[str, float]:
    values = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def _number(value: float | None) -> float:
    return NAN if value is None or not math.isfinite(value) else float(value)
