"""Monitoring: the latest drift report `shopclip monitor` stored in the prediction log (its statistics, alerts
highlighted, and its HTML page of plots), live accuracy from feedback per day and the abstain rate per hour or
day, read from the prediction log by `shopclip.ui.history`.

The series end at the log's newest row rather than now: a log that went quiet still shows its last days, and the
caption says when that was.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st
from sqlalchemy.engine import Engine

from shopclip.ui import session
from shopclip.ui.backends import Backends
from shopclip.ui.history import (StoredReport, Unit, abstain_series, latest_reports, live_accuracy_series,
                                 newest_activity)
from shopclip.ui.layout import section

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler

PERIODS = {"7 days": 7, "30 days": 30, "90 days": 90}
EARLIER_REPORTS = 20
PAGE_HEIGHT = 900
PAGE_SUFFIXES = (".html", ".htm")
# Module-level strings would show on the page (Streamlit magic): constants are documented by comments.
ALERT_STYLE = "background-color: #f8d7da; font-weight: bold"  # as the monitor's own page marks alert rows


def render(backends: Backends) -> None:
    st.title("Monitoring")
    engine: Engine | None = None
    reports: list[StoredReport] = []
    with section("Latest drift report"):
        engine = backends.prediction_log().engine
        reports = latest_reports(engine, EARLIER_REPORTS)
        _report(reports)
    with section("Drift plots"):
        _plots(reports[0] if reports else None, backends.config.monitor_reports)
    if engine is None:
        return  # the first section said why
    with section():
        _series(engine)


# -- the stored report -------------------------------------------------------------------------------------------

def statistic_rows(report: StoredReport) -> list[dict[str, Any]]:
    """The report's statistics as table rows, alerts first (in the report's order within each group)."""
    rows = [{"statistic": s.get("name", f"{s.get('feature')}.{s.get('kind')}"), "value": s.get("value"),
             "p-value": s.get("p_value"), "threshold": s.get("threshold"), "window": s.get("window_value"),
             "reference": s.get("reference_value"), "rows": s.get("count"), "alert": bool(s.get("alert")),
             "note": s.get("note", "")} for s in report.statistics]
    return sorted(rows, key=lambda row: not row["alert"])


def _report(reports: list[StoredReport]) -> None:
    if not reports:
        st.info("No drift report is stored yet: `shopclip monitor --prediction-log URL` stores one per run "
                "(docker-compose runs it hourly).")
        return
    report = reports[0]
    st.caption(f"Window {report.window_start:%Y-%m-%d %H:%M} .. {report.window_end:%Y-%m-%d %H:%M} UTC against "
               f"{report.reference} · reported {report.created_at:%Y-%m-%d %H:%M} UTC")
    counts = report.counts
    for column, (label, value) in zip(st.columns(3), (("answers in the window", counts.get("predictions")),
                                                     ("feedback compared", counts.get("feedback_compared")),
                                                     ("alerts", len(report.alerts)))):
        column.metric(label, "-" if value is None else f"{value:,}")
    if report.alerts:
        st.error("Alerts: " + ", ".join(report.alerts), icon=":material/warning:")
    else:
        st.success("No alert: every statistic is within its threshold.", icon=":material/check_circle:")
    if report.model_fingerprints:
        releases = ("; releases: " + ", ".join(f"{release} ({rows:,})" for release, rows
                                               in report.model_releases.items())) if report.model_releases else ""
        st.caption("Models that answered: " + ", ".join(f"{fingerprint} ({rows:,})" for fingerprint, rows
                                                        in report.model_fingerprints.items()) + releases)
    rows = statistic_rows(report)
    if rows:
        st.dataframe(_highlighted(rows), hide_index=True, width="stretch")
    if len(reports) > 1:
        with st.expander(f"The {len(reports)} newest reports"):
            st.dataframe([{"reported (UTC)": f"{r.created_at:%Y-%m-%d %H:%M}",
                           "window start (UTC)": f"{r.window_start:%Y-%m-%d %H:%M}",
                           "window end (UTC)": f"{r.window_end:%Y-%m-%d %H:%M}", "answers": r.counts.get("predictions"),
                           "alerts": len(r.alerts), "which": ", ".join(r.alerts)} for r in reports],
                         hide_index=True, width="stretch")


def _highlighted(rows: list[dict[str, Any]]) -> "Styler":
    import pandas as pd  # loads with Streamlit anyway

    frame = pd.DataFrame(rows)
    return frame.style.apply(lambda row: [ALERT_STYLE if row["alert"] else ""] * len(row), axis=1)


# -- the report's page -------------------------------------------------------------------------------------------

def report_page(report: StoredReport | None, folder: str | None) -> Path | None:
    """The HTML page to show: the one the latest report names when this machine can read it, else the file of
    that name in `folder` (--monitor-reports: where the monitor's pages are mounted here), else the folder's
    newest page."""
    named = Path(report.html_path) if report is not None and report.html_path else None
    candidates = [named] if named is not None else []
    if folder:
        if named is not None:
            candidates.append(Path(folder) / named.name)
        pages = sorted(Path(folder).glob("*.html"), key=lambda path: path.stat().st_mtime, reverse=True)
        candidates += pages[:1]
    # Only HTML pages: a stored path names a file that is shown to every console user.
    return next((path for path in candidates if path.suffix.lower() in PAGE_SUFFIXES and path.is_file()), None)


def _plots(report: StoredReport | None, folder: str | None) -> None:
    path = report_page(report, folder)
    if path is None:
        where = f"The latest report's page {report.html_path} is not readable here" if report and report.html_path \
            else "No report page to show"
        st.info(f"{where}: `shopclip monitor --html PATH` writes one, and --monitor-reports FOLDER (where those "
                f"pages are) shows it here.")
        return
    html = path.read_text(encoding="utf-8", errors="replace")
    st.caption(f"{path} (the monitor replaces it at each run)")
    # An iframe keeps the page's own styles out of the console. Its HTML is the monitor's (no script, no external
    # resource: shopclip.monitor.html), never something a user typed.
    st.iframe(html, height=PAGE_HEIGHT)
    st.download_button("Download the report page", html, file_name=path.name, mime="text/html",
                       key="monitor_report_page")


# -- time series -------------------------------------------------------------------------------------------------

def _series(engine: Engine) -> None:
    end = newest_activity(engine)
    if end is None:
        st.info("The prediction log holds no answer and no feedback yet: the server records there with "
                "--prediction-log.")
        return
    period = st.radio("Period", list(PERIODS), horizontal=True, key="monitor_period")
    since = end - timedelta(days=PERIODS[period])
    st.caption(f"Up to the log's newest row, {end:%Y-%m-%d %H:%M} UTC")
    with section("Live accuracy from feedback"):
        _accuracy(engine, since)
    with section("Abstain rate"):
        unit: Unit = st.radio("Per", ["hour", "day"], horizontal=True, key="monitor_abstain_unit")
        _abstain(engine, since, unit)


def _accuracy(engine: Engine, since: datetime) -> None:
    points = live_accuracy_series(engine, since, unit="day")
    total, hits = sum(p.total for p in points), sum(p.hits for p in points)
    if not total:
        st.info("No feedback on a logged prediction in this period: the shop backend's confirmations and "
                "corrections give live accuracy.")
        return
    st.metric("live accuracy", f"{hits / total:.1%}", delta=f"on {total:,} feedback", delta_color="off",
              delta_arrow="off", help=f"{hits:,} of {total:,} feedback rows confirm the logged prediction's top code")
    st.bar_chart({"day": [p.start for p in points], "accuracy": [p.share for p in points]}, x="day",
                  y="accuracy")
    st.dataframe([{"day (UTC)": f"{p.start:%Y-%m-%d}", "feedback": p.total, "confirmed": p.hits,
                   "accuracy": p.share} for p in points], hide_index=True, width="stretch",
                 column_config={"accuracy": st.column_config.NumberColumn(format="percent")})


def _abstain(engine: Engine, since: datetime, unit: Unit) -> None:
    points = abstain_series(engine, since, unit=unit)
    total, hits = sum(p.total for p in points), sum(p.hits for p in points)
    if not total:
        st.info("No answer logged in this period.")
        return
    st.metric("abstain rate", f"{hits / total:.1%}", help=f"{hits:,} of {total:,} answers abstained")
    st.bar_chart({unit: [p.start for p in points], "abstain rate": [p.share for p in points]}, x=unit,
                  y="abstain rate")


render(session.backends())
