"""`shopclip monitor`: drift and live accuracy of what the server classified, from its prediction log.

One run reports on the window [until - window, until) against a reference (`previous`: the window before it, or
a labelled catalogue folder), prints a short table, records the report in `monitor_reports`, and optionally
writes an HTML page (`--html`) and a Prometheus textfile (`--textfile`). `--fail-on-alert` makes a cron job fail
(exit status 20) when a statistic is over its threshold. `--every 1h --metrics-port 9101` runs for ever,
reporting on the window that ends at each run and serving the gauges.

Options are `MonitorOptions` fields (shopclip/settings.py): `--prediction-log` is also `SHOPCLIP_PREDICTION_LOG`,
the variable the server reads, and the thresholds are also `SHOPCLIP_PSI_THRESHOLD`, ... Heavy imports (scipy,
matplotlib, SQLAlchemy) happen in the handler.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from shopclip import settings
from shopclip.errors import InvalidInput, NotReady
from shopclip.monitor.statistics import Thresholds
from shopclip.settings import option

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from shopclip.monitor.metrics import MonitorMetrics
    from shopclip.monitor.reference import Reference
    from shopclip.monitor.report import Report

log = logging.getLogger(__name__)

ALERT_EXIT_CODE = 20
"""Exit status of a single run with --fail-on-alert when an alert fires (outside the error table's 1-10)."""
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str, field: str) -> timedelta:
    """`90s`, `30m`, `1h`, `24h`, `7d`, `2w` -> timedelta; InvalidInput naming `field` otherwise."""
    match = _DURATION.match(text or "")
    if not match or float(match.group(1)) <= 0:
        raise InvalidInput(field, f"{text!r} is not a positive duration (a number and a unit of s, m, h, d, w: "
                                  f"1h, 24h, 7d, 30d)")
    return timedelta(**{UNITS[match.group(2)]: float(match.group(1))})


def parse_time(text: str, field: str) -> datetime:
    """ISO 8601 (`2024-06-15`, `2024-06-15T08:00:00+02:00`, `...Z`) or `now`; a time without offset is UTC."""
    if text.strip().lower() == "now":
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(field, f"{text!r} is not an ISO 8601 time (e.g. 2024-06-15T00:00:00Z)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class MonitorOptions:
    prediction_log: str = option("", "prediction log database: postgresql://user@host/db or sqlite:///path",
                                 secret=True)
    window: str = option("7d", "length of the window reported on: 1h, 24h, 7d, 30d", env=False)
    until: str | None = option(None, "end of the window, ISO 8601 (UTC without an offset); default now", env=False)
    reference: str = option("previous", "'previous' (the window before, same length) or a labelled catalogue "
                                        "folder (the training data)", env=False)
    html: Path | None = option(None, "write the report as a self-contained HTML page here (replaced at each run)",
                               env=False)
    textfile: Path | None = option(None, "write the gauges as a Prometheus node-exporter textfile here", env=False)
    metrics_port: int | None = option(None, "serve the gauges on this port (with --every)", env=False)
    metrics_addr: str = option("0.0.0.0", "address the gauges are served on", env=False)
    every: str | None = option(None, "run for ever, one report per period (1h, 24h): the window ends at each run",
                               env=False)
    fail_on_alert: bool = option(False, f"exit with status {ALERT_EXIT_CODE} when an alert fires (single run, "
                                        f"for cron)", env=False)
    store: bool = option(True, "record each report in the log's monitor_reports table", env=False)
    centroid: bool = option(True, "read the embeddings for the centroid shift (the costly part of a window)",
                            env=False)
    thresholds: Thresholds = option(default_factory=Thresholds)

    def __post_init__(self) -> None:
        if not self.prediction_log:
            raise InvalidInput("--prediction-log", f"required: pass --prediction-log or set "
                                                   f"{settings.env_name('prediction_log')}")
        parse_duration(self.window, "--window")
        if self.until is not None:
            parse_time(self.until, "--until")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise InvalidInput("--metrics-port", f"not a port number: {self.metrics_port}")
        self._check_every()

    def _check_every(self) -> None:
        if self.every is None:
            if self.metrics_port is not None:
                raise InvalidInput("--metrics-port", "needs --every (a single run exits at once: use --textfile)")
            return
        parse_duration(self.every, "--every")
        if self.until is not None:
            raise InvalidInput("--until", "cannot be combined with --every (each run's window ends when it runs)")
        if self.fail_on_alert:
            raise InvalidInput("--fail-on-alert", "only for a single run; with --every, alerts are the gauges'")

    @property
    def window_length(self) -> timedelta:
        return parse_duration(self.window, "--window")

    @property
    def period(self) -> timedelta | None:
        return None if self.every is None else parse_duration(self.every, "--every")

    def window_end(self) -> datetime:
        return parse_time(self.until or "now", "--until")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "monitor", help="drift and live accuracy from the prediction log (report, HTML, Prometheus gauges)",
        description=__doc__.split("\n\n")[1])
    settings.add_arguments(parser, MonitorOptions, skip=tuple(f.name for f in _threshold_fields()))
    settings.add_arguments(parser.add_argument_group("thresholds"), Thresholds)
    parser.set_defaults(handler=run_monitor_command)


def _threshold_fields() -> list:
    import dataclasses

    return list(dataclasses.fields(Thresholds))


def run_monitor_command(args: argparse.Namespace) -> int:
    options = settings.from_sources(MonitorOptions, vars(args), os.environ)
    return run_monitor(options)


def run_monitor(options: MonitorOptions, iterations: int | None = None,
                sleep: Callable[[float], None] = time.sleep) -> int:
    """A single run (no --every), or `iterations` runs one period apart (None: for ever)."""
    from shopclip.monitor.metrics import MonitorMetrics
    from shopclip.predlog.db import open_database

    engine = open_database(options.prediction_log, "--prediction-log")
    try:
        metrics = MonitorMetrics()
        if options.period is None:
            report = _report_once(engine, options, metrics, options.window_end(), None)
            return ALERT_EXIT_CODE if options.fail_on_alert and report.alerts else 0
        return _run_every(engine, options, metrics, iterations, sleep)
    finally:
        engine.dispose()


def _run_every(engine: Engine, options: MonitorOptions, metrics: MonitorMetrics, iterations: int | None,
               sleep: Callable[[float], None]) -> int:
    server = metrics.serve(options.metrics_port, options.metrics_addr) if options.metrics_port is not None else None
    if server is not None:
        log.info("monitor gauges on http://%s:%d/metrics", options.metrics_addr, options.metrics_port)
    folder = _folder_reference(options)  # a folder does not change between runs: read it once
    period = options.period.total_seconds()
    done = 0
    try:
        while iterations is None or done < iterations:
            started = time.monotonic()
            try:
                _report_once(engine, options, metrics, datetime.now(timezone.utc), folder)
            except NotReady as exc:
                # The database may come back before the next run; the last gauges stay served meanwhile.
                log.error("monitor run failed, next in %s: %s", options.every, exc)
            done += 1
            if iterations is None or done < iterations:
                sleep(max(0.0, period - (time.monotonic() - started)))
    finally:
        if server is not None:
            server.shutdown()
    return 0


def _folder_reference(options: MonitorOptions) -> Reference | None:
    from shopclip.monitor.reference import PREVIOUS, folder_reference

    return None if options.reference == PREVIOUS else folder_reference(options.reference, "--reference")


def _report_once(engine: Engine, options: MonitorOptions, metrics: MonitorMetrics, until: datetime,
                 folder: Reference | None) -> Report:
    from shopclip.monitor.reference import load_reference
    from shopclip.monitor.report import build_report, store_report

    start = until - options.window_length
    embeddings = "centroid" if options.centroid else "none"
    reference = folder or load_reference(engine, options.reference, start, until, embeddings, "--reference")
    report = build_report(engine, start, until, reference, options.thresholds, embeddings)
    html = None
    if options.html is not None:
        from shopclip.monitor.html import write_html

        html = write_html(report, options.html)
    if options.store:
        store_report(engine, report, html)
    metrics.update(report)
    if options.textfile is not None:
        metrics.write_textfile(options.textfile)
    print(format_report(report), flush=True)
    return report


def format_report(report: Report) -> str:
    """The short table printed after each run."""
    counts = report.counts
    head = (f"window {report.window.label} against {report.reference}: {counts['predictions']} predictions "
            f"(reference {counts['reference_rows']}), {counts['feedback']} feedback")
    if report.empty:
        head += "\nno prediction in the window: nothing to compare"
    computed = [s for s in report.statistics if not s.skipped]
    rows = [["statistic", "value", "p-value", "threshold", "alert"]]
    rows += [[s.name, _cell(s.value), _cell(s.p_value), _cell(s.threshold), "ALERT" if s.alert else ""]
             for s in computed]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
    skipped = sorted({f"{s.name} ({s.note})" for s in report.statistics if s.skipped})
    lines = [head] + ([table] if computed else [])
    if skipped and not report.empty:  # an empty window skips everything, for the one reason said above
        lines.append("skipped: " + "; ".join(skipped))
    lines.append("alerts: " + (", ".join(report.alerts) if report.alerts else "none"))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"
