"""The report as one self-contained HTML page: figures are inline base64 PNGs, styles inline, no script and no
external resource, so the file can be mailed, archived or opened from a cron job's output folder as it is.

Figures are drawn on matplotlib `Figure` objects with the Agg canvas, never through pyplot: no global figure
state, no display needed, safe in a long-running `--every` loop.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

import numpy as np

from shopclip.atomic import write_text_atomically
from shopclip.monitor.report import Report
from shopclip.monitor.statistics import NUMERIC_FEATURES, Statistic, category_counts
from shopclip.monitor.window import NO_CODE, Window

MAX_CODES_SHOWN = 30
"""Codes in the distribution chart (the most frequent on either side): the real catalogue has over 1000 types."""
WINDOW_COLOUR, REFERENCE_COLOUR = "#d9534f", "#5b7db1"
STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; } td.name, td.note { text-align: left; }
tr.alert td { background: #f8d7da; font-weight: bold; }
tr.skipped td { color: #888; }
.alerts { color: #b02a37; font-weight: bold; } .ok { color: #2f7a3a; font-weight: bold; }
figure { display: inline-block; margin: 0.5em; } img { max-width: 560px; }
"""


def write_html(report: Report, path: str | Path) -> Path:
    """Writes the page of `report` to `path` (atomically: a reader never sees half a page); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(target, render_html(report))
    return target


def render_html(report: Report) -> str:
    """The whole page."""
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
             f"<title>shopclip monitor {escape(report.window.label)}</title><style>{STYLE}</style></head><body>",
             _summary(report), _statistics_table(report.statistics), _figures(report), "</body></html>"]
    return "\n".join(parts)


# ---------------------------------------------------------------- text


def _summary(report: Report) -> str:
    counts = report.counts
    alerts = (f"<p class='alerts'>Alerts: {escape(', '.join(report.alerts))}</p>" if report.alerts
              else "<p class='ok'>No alert.</p>")
    empty = ("<p><strong>No prediction in this window</strong>: nothing to compare; the statistics below are "
             "skipped.</p>" if report.empty else "")
    accuracy = report.statistic("live_accuracy.share")
    live = ("<p>Live accuracy: no feedback on a logged prediction in this window.</p>"
            if accuracy is None or accuracy.value is None else
            f"<p>Live accuracy: <strong>{accuracy.value:.1%}</strong> on {accuracy.count} feedback rows"
            f"{' (' + escape(accuracy.note) + ')' if accuracy.note else ''}.</p>")
    models = _counted(report.model_fingerprints)
    releases = f"; releases: {_counted(report.model_releases)}" if report.model_releases else ""
    return (f"<h1>shopclip monitor</h1>"
            f"<p>Window <strong>{escape(report.window.label)}</strong> against {escape(report.reference)}.<br>"
            f"{counts['predictions']} predictions (reference {counts['reference_rows']}), "
            f"{counts['feedback']} feedback rows, {counts['embeddings']} embeddings. "
            f"Report {escape(report.report_id)} at {report.created_at.isoformat(timespec='seconds')}.<br>"
            f"Models: {models or 'none'}{releases}</p>{empty}{alerts}{live}")


def _counted(rows_by_name: dict[str, int]) -> str:
    return ", ".join(f"{escape(name)} ({count})" for name, count in sorted(rows_by_name.items()))


def _statistics_table(statistics: list[Statistic]) -> str:
    rows = []
    for s in statistics:
        css = "alert" if s.alert else ("skipped" if s.skipped else "")
        rows.append(f"<tr class='{css}'><td class='name'>{escape(s.name)}</td><td>{_number(s.value)}</td>"
                    f"<td>{_number(s.p_value)}</td><td>{_number(s.threshold)}</td>"
                    f"<td>{_number(s.window_value)}</td><td>{_number(s.reference_value)}</td>"
                    f"<td>{'' if s.count is None else s.count}</td><td>{'ALERT' if s.alert else ''}</td>"
                    f"<td class='note'>{escape(s.note)}</td></tr>")
    return ("<h2>Statistics</h2><table><tr><th>statistic</th><th>value</th><th>p-value</th><th>threshold</th>"
            "<th>window</th><th>reference</th><th>rows</th><th>alert</th><th>note</th></tr>"
            + "".join(rows) + "</table>")


def _number(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return ""
    return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------- figures


def _figures(report: Report) -> str:
    window, reference = report.window, report.reference_window
    figures = [_histogram(feature, window, reference) for feature in NUMERIC_FEATURES]
    figures += [_bars(feature, window, reference) for feature in ("has_description", "has_image")]
    figures.append(_code_bars(window, reference))
    shown = "".join(f"<figure>{figure}</figure>" for figure in figures if figure)
    return f"<h2>Window (red) against reference (blue)</h2>{shown}"


def _histogram(feature: str, window: Window, reference: Window) -> str:
    current, ref = _finite(getattr(window, feature)), _finite(getattr(reference, feature))
    if not len(current) and not len(ref):
        return ""
    both = np.concatenate([current, ref])
    # Up to the 99.5th percentile: one huge description must not squeeze every other bar into one.
    top = float(np.quantile(both, 0.995))
    low = float(both.min())
    bins = np.linspace(low, top if top > low else low + 1, 31)
    figure, axes = _figure()
    for values, colour, name in ((ref, REFERENCE_COLOUR, "reference"), (current, WINDOW_COLOUR, "window")):
        if len(values):
            axes.hist(np.clip(values, low, bins[-1]), bins=bins, density=True, alpha=0.5, color=colour,
                      label=f"{name} ({len(values)})")
    axes.set_title(feature)
    axes.set_ylabel("density")
    axes.legend()
    return _png(figure, feature)


def _bars(feature: str, window: Window, reference: Window, categories: list[str] | None = None) -> str:
    current, ref = getattr(window, feature), getattr(reference, feature)
    return _share_bars(feature, category_counts(current) if current is not None else {},
                       category_counts(ref) if ref is not None else {}, categories)


def _code_bars(window: Window, reference: Window) -> str:
    current = window.top_code[window.top_code != NO_CODE] if window.top_code is not None else np.empty(0)
    ref = reference.top_code[reference.top_code != NO_CODE] if reference.top_code is not None else np.empty(0)
    cur_counts, ref_counts = category_counts(current), category_counts(ref)
    share = {code: max(cur_counts.get(code, 0) / max(len(current), 1), ref_counts.get(code, 0) / max(len(ref), 1))
             for code in set(cur_counts) | set(ref_counts)}
    shown = sorted(share, key=lambda code: (-share[code], code))[:MAX_CODES_SHOWN]
    title = "top_code" if len(share) <= MAX_CODES_SHOWN else f"top_code ({MAX_CODES_SHOWN} of {len(share)} codes)"
    return _share_bars(title, cur_counts, ref_counts, sorted(shown, key=int))


def _share_bars(title: str, current: dict[str, int], reference: dict[str, int],
                categories: list[str] | None = None) -> str:
    categories = categories if categories is not None else sorted(set(current) | set(reference))
    if not categories:
        return ""
    positions = np.arange(len(categories))
    figure, axes = _figure(width=max(5.6, 0.32 * len(categories)))
    for offset, counts, colour, name in ((-0.2, reference, REFERENCE_COLOUR, "reference"),
                                         (0.2, current, WINDOW_COLOUR, "window")):
        total = sum(counts.values())
        if total:
            axes.bar(positions + offset, [counts.get(c, 0) / total for c in categories], width=0.4, color=colour,
                     label=f"{name} ({total})")
    axes.set_xticks(positions, categories, rotation=90 if len(categories) > 6 else 0)
    axes.set_ylabel("share")
    axes.set_title(title)
    axes.legend()
    return _png(figure, title)


def _figure(width: float = 5.6):  # noqa: ANN202 - (Figure, Axes); matplotlib loads here only
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _png(figure, alt: str) -> str:  # noqa: ANN001 - matplotlib Figure
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img alt='{escape(alt)}' src='data:image/png;base64,{data}'>"


def _finite(values: np.ndarray | None) -> np.ndarray:
    if values is None:
        return np.empty(0)
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]
