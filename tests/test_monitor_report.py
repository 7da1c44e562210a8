"""`shopclip monitor` end to end on real prediction logs (SQLite, and PostgreSQL where it is installed): windows
read from the log, a shifted week of image-only products against the week before and against a labelled folder,
reports stored in monitor_reports, the HTML page, the Prometheus gauges and the command's handler."""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from support.monitoring import (FEEDBACK_ROWS, RELEASE, ROWS, UNTIL, WINDOW, MonitoringLog, shifted_gauges,
                                write_monitoring_log, write_reference_folder)

from shopclip.errors import InvalidInput
from shopclip.monitor import cli as monitor_cli
from shopclip.monitor.html import render_html, write_html
from shopclip.monitor.metrics import MonitorMetrics
from shopclip.monitor.reference import folder_reference, load_reference
from shopclip.monitor.report import Report, build_report, store_report
from shopclip.monitor.statistics import Thresholds
from shopclip.monitor.window import read_window
from shopclip.predlog.db import open_database
from shopclip.predlog.schema import monitor_reports

INPUT_ALERTS = {"text_length.psi", "has_description.psi", "top_code.psi"}
METRIC_NAMES = {"shopclip_drift_psi", "shopclip_drift_pvalue", "shopclip_drift_alert", "shopclip_monitor_predictions",
                "shopclip_monitor_abstain_rate", "shopclip_monitor_reference_abstain_rate",
                "shopclip_monitor_mean_confidence", "shopclip_live_accuracy", "shopclip_monitor_feedback",
                "shopclip_centroid_shift", "shopclip_monitor_last_report_timestamp_seconds"}


@pytest.fixture(scope="module")
def shifted_log(tmp_path_factory: pytest.TempPathFactory) -> MonitoringLog:
    return write_monitoring_log(f"sqlite:///{tmp_path_factory.mktemp('shifted') / 'log.db'}", shifted=True)


@pytest.fixture(scope="module")
def shifted_report(shifted_log: MonitoringLog) -> Report:
    engine = open_database(shifted_log.url)
    try:
        return build_report(engine, shifted_log.start, shifted_log.end, "previous")
    finally:
        engine.dispose()


@pytest.fixture
def engine(tmp_path: Path):  # noqa: ANN201 - a fresh copy of the shifted log, for tests that write reports
    log = write_monitoring_log(f"sqlite:///{tmp_path / 'log.db'}", shifted=True)
    opened = open_database(log.url)
    yield opened
    opened.dispose()


# ---------------------------------------------------------------- windows


def test_a_window_holds_its_rows_and_feedback_only(shifted_log: MonitoringLog) -> None:
    engine = open_database(shifted_log.url)
    try:
        window = read_window(engine, shifted_log.start, shifted_log.end)
        before = read_window(engine, shifted_log.start - WINDOW, shifted_log.start)
    finally:
        engine.dispose()
    assert window.rows == before.rows == ROWS
    assert (window.text_length == 0).all() and not window.has_description.any() and window.has_image.all()
    assert set(window.top_code.tolist()) == {1280, 2583}
    assert window.feedback_rows == FEEDBACK_ROWS and before.feedback_rows == 0
    assert window.model_fingerprints == before.model_fingerprints == {"model-a": ROWS}
    assert (window.model_releases, before.model_releases) == ({RELEASE: ROWS}, {})  # logged before releases: none
    assert window.embedding_count == ROWS and window.centroid.shape == (16,) and window.embeddings is None


def test_streaming_in_small_chunks_reads_the_same_window(shifted_log: MonitoringLog) -> None:
    engine = open_database(shifted_log.url)
    try:
        whole = read_window(engine, shifted_log.start - WINDOW, shifted_log.start, embeddings="matrix")
        chunked = read_window(engine, shifted_log.start - WINDOW, shifted_log.start, chunk_rows=7)
        bare = read_window(engine, shifted_log.start - WINDOW, shifted_log.start, embeddings="none")
    finally:
        engine.dispose()
    np.testing.assert_array_equal(np.sort(whole.text_length), np.sort(chunked.text_length))
    np.testing.assert_allclose(whole.centroid, chunked.centroid, rtol=1e-9)
    assert whole.embeddings.shape == (ROWS, 16)
    np.testing.assert_allclose(whole.embeddings.mean(axis=0), whole.centroid, atol=1e-6)
    assert bare.centroid is None and "centroid" in bare.unavailable


def test_the_window_end_is_excluded(shifted_log: MonitoringLog) -> None:
    engine = open_database(shifted_log.url)
    try:
        first_hour = read_window(engine, shifted_log.start, shifted_log.start + timedelta(hours=1))
        empty = read_window(engine, UNTIL, UNTIL + WINDOW)
    finally:
        engine.dispose()
    assert 0 < first_hour.rows < ROWS
    assert empty.rows == 0 and empty.feedback_rows == 0 and empty.centroid is None


# ---------------------------------------------------------------- reports


def test_image_only_week_alerts_on_the_inputs_that_moved(shifted_report: Report) -> None:
    assert INPUT_ALERTS <= set(shifted_report.alerts)
    assert {"has_image.psi", "abstain_rate.change", "centroid.cosine_distance"} <= set(shifted_report.alerts)
    assert shifted_report.counts == {"predictions": ROWS, "reference_rows": ROWS, "feedback": FEEDBACK_ROWS,
                                     "feedback_compared": FEEDBACK_ROWS, "embeddings": ROWS,
                                     "reference_embeddings": ROWS}
    accuracy = shifted_report.statistic("live_accuracy.share")
    assert accuracy.value == pytest.approx(0.6) and accuracy.count == FEEDBACK_ROWS and accuracy.alert
    assert shifted_report.statistic("text_length.ks").p_value < 1e-10
    assert shifted_report.reference.startswith("previous window 2024-06-01")


def test_an_unshifted_week_raises_no_alert(tmp_path: Path) -> None:
    log = write_monitoring_log(f"sqlite:///{tmp_path / 'log.db'}", shifted=False)
    engine = open_database(log.url)
    try:
        report = build_report(engine, log.start, log.end)
    finally:
        engine.dispose()
    assert report.alerts == []
    assert all(s.value < 0.2 for s in report.statistics if s.kind == "psi")
    assert report.statistic("live_accuracy.share").value == pytest.approx(0.9)


def test_an_empty_window_is_reported_plainly(engine) -> None:  # noqa: ANN001
    report = build_report(engine, UNTIL + WINDOW, UNTIL + 2 * WINDOW)
    assert report.empty and report.alerts == [] and report.counts["predictions"] == 0
    assert all(s.skipped and s.note for s in report.statistics)
    assert "No prediction in this window" in render_html(report)
    assert "no prediction in the window" in monitor_cli.format_report(report)
    metrics = MonitorMetrics()
    metrics.update(report)
    values = metrics.values()
    assert values["shopclip_monitor_predictions"] == 0 and np.isnan(values["shopclip_monitor_abstain_rate"])
    assert not any(name.startswith("shopclip_drift_psi{") for name in values)
    store_report(engine, report)  # NaN-free JSON


def test_too_few_rows_withhold_the_alerts(engine) -> None:  # noqa: ANN001
    start = UNTIL - WINDOW
    report = build_report(engine, start, start + timedelta(hours=2), "previous", Thresholds(min_rows=50))
    assert 0 < report.counts["predictions"] < 50
    assert report.alerts == []
    assert report.statistic("text_length.psi").value > 0.2
    assert "not alerting" in report.statistic("text_length.psi").note


def test_store_report_writes_statistics_and_alerts(engine, tmp_path: Path) -> None:  # noqa: ANN001
    report = build_report(engine, UNTIL - WINDOW, UNTIL)
    html = write_html(report, tmp_path / "out" / "report.html")
    assert store_report(engine, report, html) == report.report_id
    with engine.connect() as connection:
        (row,) = connection.execute(select(monitor_reports)).all()
    assert row.alerts == report.alerts and INPUT_ALERTS <= set(row.alerts)
    names = {s["name"]: s for s in row.statistics["statistics"]}
    assert names["text_length.psi"]["alert"] is True and names["text_length.psi"]["threshold"] == 0.2
    assert row.statistics["counts"]["predictions"] == ROWS
    assert row.statistics["model_releases"] == {RELEASE: ROWS}
    assert row.html_path == str(html.resolve()) and row.reference == report.reference
    json.dumps(row.statistics)


def test_the_html_page_is_self_contained_with_figures_and_alerts(shifted_report: Report, tmp_path: Path) -> None:
    page = write_html(shifted_report, tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 6  # 3 histograms, 2 presence bars, codes
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page), "no external resource"
    for name in INPUT_ALERTS:
        assert name in page
    assert page.count("<tr class='alert'>") == len(shifted_report.alerts)
    assert "Live accuracy: <strong>60.0%</strong> on 60 feedback rows" in page
    assert f"Models: model-a ({ROWS}); releases: {RELEASE} ({ROWS})" in page


def test_gauges_of_a_shifted_report(tmp_path: Path) -> None:
    values = shifted_gauges(tmp_path)
    assert {re.sub(r"\{.*", "", name) for name in values} == METRIC_NAMES
    for feature in ("text_length", "has_description", "top_code"):
        assert values[f'shopclip_drift_psi{{feature="{feature}"}}'] > 0.2
        assert values[f'shopclip_drift_alert{{feature="{feature}"}}'] == 1
        assert values[f'shopclip_drift_pvalue{{feature="{feature}"}}'] < 0.01
    assert values["shopclip_monitor_predictions"] == ROWS
    assert values["shopclip_monitor_abstain_rate"] > values["shopclip_monitor_reference_abstain_rate"] + 0.1
    assert values["shopclip_live_accuracy"] == pytest.approx(0.6)
    assert values["shopclip_monitor_feedback"] == FEEDBACK_ROWS
    assert values["shopclip_centroid_shift"] > 0.05
    assert values["shopclip_monitor_last_report_timestamp_seconds"] > UNTIL.timestamp()


def test_gauges_live_in_their_own_registry_and_reach_a_textfile(shifted_report: Report, tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    first, second = MonitorMetrics(), MonitorMetrics()  # no duplicate-registration error: not the global one
    first.update(shifted_report)
    assert "shopclip_drift_psi" not in {m.name for m in REGISTRY.collect()}
    assert second.values()["shopclip_monitor_predictions"] == 0
    first.write_textfile(tmp_path / "textfile" / "shopclip_monitor.prom")
    text = (tmp_path / "textfile" / "shopclip_monitor.prom").read_text()
    assert 'shopclip_drift_psi{feature="text_length"}' in text and "# TYPE shopclip_live_accuracy gauge" in text


# ---------------------------------------------------------------- reference from a folder


def test_a_labelled_folder_is_a_reference(tmp_path: Path) -> None:
    folder = write_reference_folder(tmp_path / "train")
    reference = folder_reference(folder)
    window = reference.window
    assert reference.kind == "folder" and window.rows == 120
    image_files = {p.name: p.stat().st_size for p in (folder / "images").iterdir()}
    assert window.has_image.sum() == len(image_files)
    assert sorted(window.image_bytes[window.has_image].tolist()) == sorted(image_files.values())
    assert (window.image_bytes[~window.has_image] == 0).all()
    assert window.top_code is not None and window.top_probability is None


def test_the_shifted_week_against_the_training_folder(engine, tmp_path: Path) -> None:  # noqa: ANN001
    reference = load_reference(engine, str(write_reference_folder(tmp_path / "train")), UNTIL - WINDOW, UNTIL)
    report = build_report(engine, UNTIL - WINDOW, UNTIL, reference)
    assert INPUT_ALERTS <= set(report.alerts)
    for name in ("top_probability.psi", "top_probability.ks", "abstain_rate.change", "mean_confidence.change",
                 "centroid.cosine_distance"):
        statistic = report.statistic(name)
        assert statistic.skipped and not statistic.alert and statistic.note == "a labelled folder has no predictions"
    assert report.reference == f"folder {tmp_path / 'train'}"
    page = render_html(report)
    assert "a labelled folder has no predictions" in page
    assert report.statistic("live_accuracy.share").value == pytest.approx(0.6)  # from the window's feedback


def test_a_missing_reference_folder_names_the_flag(engine, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInput) as raised:
        load_reference(engine, str(tmp_path / "nope"), UNTIL - WINDOW, UNTIL, field="--reference")
    assert raised.value.field == "--reference"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="holds no catalogue"):
        folder_reference(tmp_path / "empty")


# ---------------------------------------------------------------- the command


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="shopclip")
    monitor_cli.register(root.add_subparsers(dest="command"))
    return root


def run(argv: list[str]) -> int:
    args = parser().parse_args(["monitor", *argv])
    return args.handler(args)


def test_the_command_reports_stores_and_fails_on_alert(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = write_monitoring_log(f"sqlite:///{tmp_path / 'log.db'}", shifted=True)
    html, textfile = tmp_path / "report.html", tmp_path / "metrics.prom"
    code = run(["--prediction-log", log.url, "--window", "7d", "--until", "2024-06-15T00:00:00Z", "--html", str(html),
                "--textfile", str(textfile), "--fail-on-alert"])
    out = capsys.readouterr().out
    assert code == monitor_cli.ALERT_EXIT_CODE
    assert "text_length.psi" in out and "ALERT" in out and "alerts: " in out
    assert "data:image/png;base64" in html.read_text()
    assert 'shopclip_drift_alert{feature="top_code"} 1.0' in textfile.read_text()
    assert run(["--prediction-log", log.url, "--until", "2024-06-15"]) == 0  # alerts without --fail-on-alert
    assert run(["--prediction-log", log.url, "--until", "2024-07-15", "--fail-on-alert", "--no-store"]) == 0
    assert "no prediction in the window" in capsys.readouterr().out
    engine = open_database(log.url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(monitor_reports.c.html_path, monitor_reports.c.alerts)).all()
    finally:
        engine.dispose()
    assert len(rows) == 2 and {row.html_path for row in rows} == {str(html.resolve()), None}


def test_the_command_reads_the_log_url_from_the_servers_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    log = write_monitoring_log(f"sqlite:///{tmp_path / 'log.db'}", shifted=False)
    monkeypatch.setenv("SHOPCLIP_PREDICTION_LOG", log.url)
    assert run(["--until", "2024-06-15", "--fail-on-alert", "--psi-threshold", "0.5"]) == 0
    assert "alerts: none" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "field"), [
    (["--window", "7x"], "--window"), (["--window", "0d"], "--window"), (["--until", "yesterday"], "--until"),
    (["--metrics-port", "9101"], "--metrics-port"), (["--every", "1h", "--until", "2024-06-15"], "--until"),
    (["--every", "1h", "--fail-on-alert"], "--fail-on-alert"), (["--every", "soon"], "--every"),
])
def test_bad_flags_are_invalid_input_naming_the_flag(argv: list[str], field: str, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("SHOPCLIP_PREDICTION_LOG", f"sqlite:///{tmp_path / 'log.db'}")
    with pytest.raises(InvalidInput) as raised:
        run(argv)
    assert raised.value.field == field


def test_the_log_url_is_required(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SHOPCLIP_PREDICTION_LOG", raising=False)
    with pytest.raises(InvalidInput) as raised:
        run([])
    assert raised.value.field == "--prediction-log" and "SHOPCLIP_PREDICTION_LOG" in raised.value.message
    with pytest.raises(InvalidInput) as raised:
        run(["--prediction-log", f"sqlite:///{tmp_path / 'log.db'}", "--reference", str(tmp_path / "missing")])
    assert raised.value.field == "--reference"


def test_every_runs_repeatedly_and_serves_the_gauges(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import urllib.request

    log = write_monitoring_log(f"sqlite:///{tmp_path / 'log.db'}", shifted=True, until=datetime.now(timezone.utc))
    args = parser().parse_args(["monitor", "--prediction-log", log.url, "--every", "1h", "--window", "7d",
                                "--metrics-port", "0", "--metrics-addr", "127.0.0.1"])
    options = monitor_cli.settings.from_sources(monitor_cli.MonitorOptions, vars(args), {})
    pauses: list[float] = []
    served: list[str] = []
    original_serve = MonitorMetrics.serve

    def serve_and_remember(self: MonitorMetrics, port: int, addr: str = "0.0.0.0") -> object:
        server = original_serve(self, port, addr)
        served.append(f"http://{addr}:{server.server_port}/metrics")
        return server

    def pause(seconds: float) -> None:  # between runs: the gauges of the first report are served
        pauses.append(seconds)
        body = urllib.request.urlopen(served[0], timeout=5).read().decode()
        assert "shopclip_monitor_last_report_timestamp_seconds" in body

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MonitorMetrics, "serve", serve_and_remember)
        assert monitor_cli.run_monitor(options, iterations=2, sleep=pause) == 0
    assert len(pauses) == 1 and 3500 < pauses[0] <= 3600
    out = capsys.readouterr().out
    assert out.count(f"{ROWS} predictions (reference {ROWS})") == 2 and out.count("\nalerts: text_length.psi") == 2
    engine = open_database(log.url)
    try:
        with engine.connect() as connection:
            assert len(connection.execute(select(monitor_reports.c.report_id)).all()) == 2
    finally:
        engine.dispose()


# ---------------------------------------------------------------- PostgreSQL


def test_build_report_on_postgresql(postgres_url: str) -> None:
    log = write_monitoring_log(postgres_url, shifted=True)
    engine = open_database(log.url)
    try:
        report = build_report(engine, log.start, log.end, "previous", embeddings="centroid")
        store_report(engine, report)
        with engine.connect() as connection:
            (row,) = connection.execute(select(monitor_reports)).all()
    finally:
        engine.dispose()
    assert INPUT_ALERTS <= set(report.alerts) and report.counts["predictions"] == ROWS
    assert report.statistic("live_accuracy.share").value == pytest.approx(0.6)
    assert row.alerts == report.alerts
