"""The console's operations pages (issue 13) under Streamlit's AppTest, on real back ends built in tmp_path: a
published index and its LanceDB catalogue (the real indexer, fake embedder), drops with their rejects, an MLflow
registry (SQLite) holding fake bundles (a config.json and an empty weights file: the console reads json and png
files only, it never loads a model), and a SQLite prediction log written through the real store, reported on by
the real `shopclip.monitor`. Each page without its back end says what to configure and raises nothing.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402
from streamlit.testing.v1.errors import AppTestError  # noqa: E402

from shopclip.indexer import publish  # noqa: E402
from shopclip.registry.options import RegistryOptions  # noqa: E402
from shopclip.registry.store import Registry, open_registry  # noqa: E402
from support.catalogue import FAKE_BUNDLE, CatalogueRow, catalogue_rows  # noqa: E402

PAGES = Path(__file__).resolve().parent.parent / "ui" / "pages"
TIMEOUT_S = 30
FIRST_MODEL, SECOND_MODEL = "fake-32-27", "fake-32-5"
"""Fingerprints of the fake embedders `fake:dim=32,classes=27` and `...classes=5`: the two registered bundles say
they are these models, so an index built with either embedder is that version's index."""
OTHER_BUNDLE = "fake:dim=32,classes=5"


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / name), default_timeout=TIMEOUT_S)


@pytest.fixture(autouse=True)
def console_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SHOPCLIP_* variable of the machine leaks into a page; the default registry is a file that is not there."""
    import os

    for name in [name for name in os.environ if name.startswith("SHOPCLIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SHOPCLIP_REGISTRY_URI", f"sqlite:///{tmp_path / 'no-registry.db'}")


def texts(elements) -> str:  # noqa: ANN001 - an AppTest element sequence
    return "\n".join(str(element.value) for element in elements)


# -- registry ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated MLflow database holding nothing, made once (MLflow's migrations take seconds); tests copy it."""
    database = tmp_path_factory.mktemp("template") / "registry.db"
    open_registry(RegistryOptions(registry_uri=f"sqlite:///{database}"), create=True).versions()
    return database


def fake_bundle(folder: Path, fingerprint: str, weighted_f1: float, evaluated: bool = True) -> str:
    """What `shopclip train` + `shopclip evaluate` leave in a bundle folder, minus real weights."""
    from shopclip.model.bundle import BUNDLE_FORMAT, CONFIG_FILE, MODEL_FILE

    folder.mkdir(parents=True)
    config = {"format": BUNDLE_FORMAT, "fingerprint": fingerprint, "label_map": {"index_to_code": [3, 7, 11, 19]},
              "training": {"data_fingerprint": f"data-{fingerprint}", "trained_on": {"products": 20}},
              "metrics": {"val_weighted_f1_classify": weighted_f1 - 0.01,
                          "test_weighted_f1": {"classify": weighted_f1, "tfidf_svc": 0.5}}}
    (folder / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    (folder / MODEL_FILE).write_bytes(b"")
    if evaluated:
        (folder / "eval").mkdir()
        methods = {"tfidf_svc": {"weighted_f1": 0.5, "macro_f1": 0.45, "accuracy": 0.55, "top3_accuracy": 0.8, "n": 40},
                   "classify": {"weighted_f1": weighted_f1, "macro_f1": 0.6, "accuracy": 0.7, "top3_accuracy": 0.9,
                                "n": 40}}
        (folder / "eval" / "eval.json").write_text(json.dumps({"n_test": 40, "test_source": "split",
                                                                "methods": methods}), encoding="utf-8")
        from support.images import png_bytes

        (folder / "eval" / "confusion_matrix.png").write_bytes(png_bytes((32, 32)))
    return str(folder)


@pytest.fixture
def registry(empty_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """Version 1 (model FIRST_MODEL) promoted by force, version 2 (SECOND_MODEL) refused by the gate then forced
    champion, version 3 registered (the challenger, not evaluated)."""
    from shopclip.registry.gate import promote

    database = tmp_path / "registry.db"
    shutil.copy(empty_registry, database)
    uri = f"sqlite:///{database}"
    monkeypatch.setenv("SHOPCLIP_REGISTRY_URI", uri)
    opened = open_registry(RegistryOptions(registry_uri=uri))
    opened.register(fake_bundle(tmp_path / "bundle-1", FIRST_MODEL, 0.71), description="first")
    promote(opened, "challenger", None, force=True, reason="first model")  # type: ignore[arg-type]
    opened.register(fake_bundle(tmp_path / "bundle-2", SECOND_MODEL, 0.74))
    opened.record_gate("2", {"decision": "refused", "at": "2025-01-02T00:00:00+00:00", "challenger": {"version": "2"},
                             "champion": {"version": "1"}, "reason": "class 7 lost recall"})
    promote(opened, "2", None, force=True, reason="the new catalogue needs it")  # type: ignore[arg-type]
    opened.register(fake_bundle(tmp_path / "bundle-3", "fake-32-9", 0.69, evaluated=False))
    return opened


def test_models_page_shows_both_models_versions_history(registry: Registry) -> None:
    at = page("models.py").run()
    assert not at.exception
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics == {"champion weighted F1 (test)": "0.7400", "challenger weighted F1 (test)": "0.6900"}
    headings = texts(at.markdown)
    assert "Champion: version 2" in headings and "Challenger: version 3" in headings
    frames = [frame.value for frame in at.dataframe]
    versions = next(frame for frame in frames if "aliases" in frame.columns)
    assert versions["version"].tolist() == [3, 2, 1]
    assert versions["aliases"].tolist() == ["challenger", "champion", ""]
    assert versions["release"].tolist() == [registry.get(v).bundle_release[:12] for v in ("3", "2", "1")]
    assert all(versions["release"]) and versions["release"].nunique() == 3
    evaluation = next(frame for frame in frames if "method" in frame.columns)
    assert evaluation["method"].tolist() == ["tfidf_svc", "classify"]
    assert evaluation["weighted_f1"].tolist() == [0.5, 0.74]  # the champion's: the challenger has no eval
    recorded = next(frame for frame in frames if "metric" in frame.columns)
    assert dict(zip(recorded["metric"], recorded["value"]))["test_weighted_f1.classify"] == pytest.approx(0.74)
    moves = next(frame for frame in frames if "event" in frame.columns)
    assert {(row.version, row.event, row.reason) for row in moves.itertuples()} >= {
        ("2", "forced", "the new catalogue needs it"), ("1", "replaced", "the new catalogue needs it")}
    gate = next(frame for frame in frames if "decision" in frame.columns)
    assert ("2", "refused", "class 7 lost recall") in {(r.version, r.decision, r.reason) for r in gate.itertuples()}
    assert "No evaluation to show" in texts(at.caption)  # the challenger's bundle was never evaluated
    assert len(at.get("image")) == 1  # the champion's confusion matrix


def test_rollback_needs_a_reason_and_the_confirmation_then_moves_the_champion(registry: Registry) -> None:
    at = page("models.py").run()
    button = next(b for b in at.button if b.label == "Roll back")
    assert button.disabled
    with pytest.raises(AppTestError, match="disabled"):  # what a browser cannot click either
        button.click()
    assert registry.alias("champion").version == "2"
    at.text_input[0].input("answers got worse on 7").run()
    assert next(b for b in at.button if b.label == "Roll back").disabled  # a reason is not enough
    at.checkbox[0].check().run()
    button = next(b for b in at.button if b.label == "Roll back")
    assert not button.disabled
    button.click().run()
    assert not at.exception
    assert registry.alias("champion").version == "1"
    assert "from version 2 to version 1" in texts(at.success)
    assert registry.get("2").alias_events[-1]["reason"] == "answers got worse on 7"
    assert "replaced no earlier champion" in texts(at.info)  # version 1 was the first champion


@pytest.fixture
def two_indexes(tmp_path: Path, registry: Registry) -> tuple[str, str, str]:
    """An index root published with the first model's embedder, then with the second's (live): (root, first
    version, second version). The embedders answer as the releases the registry recorded for the two bundles."""
    from support.index import build_catalogue_index

    published = build_catalogue_index(tmp_path / "published", release=registry.get("1").bundle_release)
    first = published.version
    second = published.publish(OTHER_BUNDLE, release=registry.get("2").bundle_release)
    assert publish.model_of(published.index_root, first) == FIRST_MODEL
    assert publish.model_of(published.index_root, second) == SECOND_MODEL
    return published.index_root, first, second


def test_rollback_with_an_index_root_makes_the_restored_models_index_live(
        registry: Registry, two_indexes: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, first, _ = two_indexes
    monkeypatch.setenv("SHOPCLIP_INDEX_ROOT", root)
    at = page("models.py").run()
    assert "under " + root in texts(at.caption)
    at.text_input[0].input("bad answers").run()
    at.checkbox[0].check().run()
    next(b for b in at.button if b.label == "Roll back").click().run()
    assert not at.exception and not at.error
    assert registry.alias("champion").version == "1"
    assert publish.read_current(root) == first
    assert f"index {first}" in texts(at.success)


def test_a_rollback_without_the_restored_models_index_moves_nothing(
        registry: Registry, two_indexes: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, second = two_indexes
    publish.prune_versions(root, keep=1, keep_models=1)  # the first model's index is gone
    monkeypatch.setenv("SHOPCLIP_INDEX_ROOT", root)
    at = page("models.py").run()
    at.text_input[0].input("bad answers").run()
    at.checkbox[0].check().run()
    next(b for b in at.button if b.label == "Roll back").click().run()
    assert not at.exception
    assert "no kept version was built with version 1" in texts(at.error)
    assert registry.alias("champion").version == "2"
    assert publish.read_current(root) == second


def test_models_page_without_a_registry_says_how_to_configure_one() -> None:
    at = page("models.py").run()
    assert not at.exception and not at.error
    assert "No model registry" in texts(at.info) and "--registry-uri" in texts(at.info)


def test_models_page_of_an_empty_registry(empty_registry: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(empty_registry, tmp_path / "empty.db")
    monkeypatch.setenv("SHOPCLIP_REGISTRY_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    at = page("models.py").run()
    assert not at.exception and not at.error
    assert "No model registered" in texts(at.info)


# -- catalogue and drops -----------------------------------------------------------------------------------------

@dataclass
class Operations:
    """An index root the index job ingested two drops into and published, a third drop waiting in the drops
    folder; the second drop had two bad rows."""

    root: Path
    catalogue_uri: str
    index_root: Path
    drops: Path
    version: str


def bad_drop(folder: Path, rows: list[CatalogueRow]) -> Path:
    """A drop whose last two X records have a productid that is not a number."""
    from support.index import write_drop

    write_drop(folder, rows)
    with (folder / "New_X_train.csv").open("a", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([[len(rows), "titre sans id", "", "abc", 1], [len(rows) + 1, "autre", "", "x2", 2]])
    with (folder / "New_y_train.csv").open("a", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([[len(rows), 3], [len(rows) + 1, 7]])
    return folder


@pytest.fixture
def operations(tmp_path: Path) -> Operations:
    from shopclip.indexer.build import BuildOptions, build_and_publish
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.indexer.job import JobConfig, ingest_pending
    from shopclip.model import load_embedder
    from support.index import write_drop

    rows = catalogue_rows()  # 5 products of each of the codes 3, 7, 11, 19
    drops, index_root = tmp_path / "drops", tmp_path / "index"
    write_drop(drops / "2025-01", rows[:15])
    bad_drop(drops / "2025-02", rows[15:])
    catalogue = Catalogue(str(tmp_path / "catalogue"))
    summaries = ingest_pending(JobConfig(drops, str(tmp_path / "catalogue"), index_root, bundle=FAKE_BUNDLE),
                               catalogue)
    assert [summary.get("rejected") for summary in summaries] == [0, 2]
    version = build_and_publish(catalogue, index_root, load_embedder(FAKE_BUNDLE), BuildOptions()).version
    write_drop(drops / "2025-03", [CatalogueRow(99_001, 3, "nouveau produit")])
    return Operations(tmp_path, str(tmp_path / "catalogue"), index_root, drops, version)


def test_catalogue_page_shows_versions_codes_and_drops_with_their_rejects(
        operations: Operations, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("INDEX_ROOT", operations.index_root), ("CATALOGUE", operations.catalogue_uri),
                        ("DROPS", operations.drops)):
        monkeypatch.setenv(f"SHOPCLIP_{name}", str(value))
    at = page("catalogue.py").run()
    assert not at.exception and not at.error
    frames = [frame.value for frame in at.dataframe]
    versions = next(frame for frame in frames if "recall@k" in frame.columns)
    assert versions["version"].tolist() == [operations.version] and versions["live"].tolist() == [True]
    assert versions["model"].tolist() == [FIRST_MODEL] and versions["vectors"].tolist() == [20]
    assert {metric.label: metric.value for metric in at.metric} == {"products": "20", "labelled": "20",
                                                                    "unlabelled": "0", "codes": "4"}
    codes = next(frame for frame in frames if "share" in frame.columns)
    assert codes["prdtypecode"].tolist() == [3, 7, 11, 19] and codes["products"].tolist() == [5, 5, 5, 5]
    assert codes["code"].iloc[0].startswith("3 (")  # with the code's characteristic words
    assert len(at.get("vega_lite_chart")) == 1
    drops = next(frame for frame in frames if "drop" in frame.columns)
    assert drops["drop"].tolist() == ["2025-03", "2025-02", "2025-01"]
    assert drops["state"].tolist() == ["new: not ingested yet", "ingested", "ingested"]
    assert drops["rejected rows"].tolist()[1:] == [2, 0] and drops["catalogue rows"].tolist() == [0, 5, 15]
    rejects = next(frame for frame in frames if "reason" in frame.columns)
    assert rejects["productid"].tolist() == ["abc", "x2"] and set(rejects["field"]) == {"productid"}
    (download,) = at.get("download_button")
    assert download.proto.label == "Download rejects.csv"


def test_catalogue_page_parts_without_their_back_ends(operations: Operations,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    at = page("catalogue.py").run()
    assert not at.exception and not at.error
    info = texts(at.info)
    assert "--index-root DIR" in info and "--catalogue URI" in info and len(at.info) == 3
    monkeypatch.setenv("SHOPCLIP_INDEX_ROOT", str(operations.index_root))  # versions and drops, no catalogue
    at = page("catalogue.py").run()
    assert not at.exception and not at.error and len(at.info) == 1 and "--catalogue URI" in texts(at.info)
    drops = next(frame.value for frame in at.dataframe if "drop" in frame.value.columns)
    assert drops["drop"].tolist() == ["2025-02", "2025-01"]  # no --drops: the waiting one is not seen
    assert drops["catalogue rows"].isna().all()


# -- monitoring --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A SQLite log of a reference week then a shifted week (image-only products of two codes, live accuracy 0.6
    on 60 feedback), and the monitor's report on that week: stored, its HTML page written. Read-only."""
    from shopclip.monitor.html import write_html
    from shopclip.monitor.report import build_report, store_report
    from shopclip.predlog.db import open_database
    from support.monitoring import write_monitoring_log

    folder = tmp_path_factory.mktemp("monitored")
    log = write_monitoring_log(f"sqlite:///{folder / 'log.db'}", shifted=True)
    engine = open_database(log.url)
    try:
        report = build_report(engine, log.start, log.end, "previous")
        store_report(engine, report, write_html(report, folder / "pages" / "drift.html"))
    finally:
        engine.dispose()
    return log.url, folder / "pages"


def test_monitoring_page_shows_the_report_its_plots_and_the_series(monitored: tuple[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = monitored
    monkeypatch.setenv("SHOPCLIP_PREDICTION_LOG", url)
    at = page("monitoring.py").run()
    assert not at.exception
    (alerts,) = at.error
    assert alerts.value.startswith("Alerts: ") and "text_length.psi" in alerts.value
    statistics = next(frame.value for frame in at.dataframe if "statistic" in frame.value.columns)
    flagged = set(statistics.loc[statistics["alert"], "statistic"])
    assert {"text_length.psi", "has_description.psi", "top_code.psi", "live_accuracy.share"} <= flagged
    assert statistics["alert"].tolist() == sorted(statistics["alert"], reverse=True)  # alerts first
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["answers in the window"] == "400" and metrics["feedback compared"] == "60"
    assert metrics["live accuracy"] == "60.0%"
    assert len(at.get("iframe")) == 1 and "drift.html" in texts(at.caption)
    assert "Models that answered: model-a (400); releases: release-b (400)" in texts(at.caption)
    (download,) = at.get("download_button")
    assert download.proto.label == "Download the report page"
    accuracy = next(frame.value for frame in at.dataframe if "confirmed" in frame.value.columns)
    assert accuracy["feedback"].sum() == 60 and accuracy["confirmed"].sum() == 36
    assert len(at.get("vega_lite_chart")) == 2
    hourly = float(metrics["abstain rate"].rstrip("%"))
    at.radio(key="monitor_abstain_unit").set_value("day").run()
    assert float({m.label: m.value for m in at.metric}["abstain rate"].rstrip("%")) == hourly  # same answers


def test_monitoring_page_finds_the_page_in_the_reports_folder(monitored: tuple[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The console on another machine than the monitor: the stored path is not there, the mounted folder is."""
    _, pages = monitored
    mounted = tmp_path / "mounted"
    shutil.copytree(pages, mounted)
    monkeypatch.setenv("SHOPCLIP_MONITOR_REPORTS", str(mounted))
    at = page("monitoring.py").run()  # and no prediction log: the plots still show
    assert not at.exception and not at.error
    assert "No prediction log is configured" in texts(at.info) and len(at.info) == 1
    assert len(at.get("iframe")) == 1 and str(mounted / "drift.html") in texts(at.caption)


def test_monitoring_page_without_a_prediction_log_says_how_to_configure_it() -> None:
    at = page("monitoring.py").run()
    assert not at.exception and not at.error
    info = texts(at.info)
    assert "--prediction-log URL" in info and "--monitor-reports FOLDER" in info


def test_monitoring_page_of_an_empty_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPCLIP_PREDICTION_LOG", f"sqlite:///{tmp_path / 'empty.db'}")
    at = page("monitoring.py").run()
    assert not at.exception and not at.error
    info = texts(at.info)
    assert "No drift report is stored yet" in info and "holds no answer" in info


# -- ui.history on both dialects ---------------------------------------------------------------------------------

def test_series_count_per_utc_hour_and_day(db_url: str) -> None:
    from shopclip.predictions import Feedback, PredictionRecord
    from shopclip.predlog.store import PredictionStore
    from shopclip.products import ProductInput
    from shopclip.ui.history import abstain_series, live_accuracy_series, newest_activity

    t0 = datetime(2025, 3, 1, 22, 30, tzinfo=timezone.utc)
    paris = timezone(timedelta(hours=1))
    moments = [t0, t0 + timedelta(minutes=20), t0 + timedelta(hours=1), t0 + timedelta(hours=26)]
    records = [PredictionRecord.of(ProductInput(designation=f"produit {n}"), productid=n,
                                   predictions=[(10, 0.9), (40, 0.1)], abstain=n % 2 == 1, model_fingerprint="m",
                                   index_version="v", latency_ms=1.0, request_id=f"req{n}",
                                   created_at=moment.astimezone(paris)) for n, moment in enumerate(moments)]
    store = PredictionStore.open(db_url)
    try:
        store.insert_predictions(records)
        for n, code in ((0, 10), (1, 40), (2, 10)):
            store.add_feedback(Feedback(prdtypecode=code, request_id=f"req{n}", actor="test",
                                        created_at=moments[n] + timedelta(minutes=5)))
        store.add_feedback(Feedback(prdtypecode=10, productid=777, actor="test", created_at=t0))  # nothing to compare
        engine = store.engine
        hours = abstain_series(engine, t0 - timedelta(days=1))
        assert [(p.start.hour, p.total, p.hits) for p in hours] == [(22, 2, 1), (23, 1, 0), (0, 1, 1)]
        assert hours[0].start == datetime(2025, 3, 1, 22, tzinfo=timezone.utc) and hours[0].share == 0.5
        days = abstain_series(engine, t0 - timedelta(days=1), unit="day")
        assert [(p.start.day, p.total, p.hits) for p in days] == [(1, 3, 1), (3, 1, 1)]
        assert abstain_series(engine, t0 + timedelta(hours=1), t0 + timedelta(hours=2))[0].total == 1
        accuracy = live_accuracy_series(engine, t0 - timedelta(days=1))
        assert [(p.start.day, p.total, p.hits) for p in accuracy] == [(1, 3, 2)]
        assert newest_activity(engine) == moments[-1]
    finally:
        store.dispose()


# -- the pages as scripts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["catalogue.py", "models.py", "monitoring.py"])
def test_no_module_level_string_but_the_docstring(name: str) -> None:
    """Streamlit's magic writes every bare module-level expression onto the page: a constant's docstring would."""
    import ast

    body = ast.parse((PAGES / name).read_text(encoding="utf-8")).body
    bare = [node.lineno for node in body[1:] if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)]
    assert not bare, f"{name}: bare strings at lines {bare}"
