"""Feedback becomes labelled catalogue rows (predlog/corrections.py, `shopclip corrections`): on a real LanceDB
catalogue built by the indexer and the real prediction store (SQLite here; the store's own tests run PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shopclip.cli import main
from shopclip.predictions import Feedback, PredictionRecord
from shopclip.predlog.corrections import apply_corrections
from shopclip.predlog.store import PredictionStore
from shopclip.products import ProductInput
from support.catalogue import catalogue_rows, productid_of
from support.images import jpeg_bytes
from support.index import PublishedCatalogue, build_catalogue_index


@pytest.fixture
def published(tmp_path: Path) -> PublishedCatalogue:
    return build_catalogue_index(tmp_path / "index-root", catalogue_rows())


@pytest.fixture
def store(tmp_path: Path) -> PredictionStore:
    store = PredictionStore.open(f"sqlite:///{tmp_path / 'log.db'}")
    yield store
    store.dispose()


def codes_of(published: PublishedCatalogue, productids: list[int]) -> dict[int, int | None]:
    rows = published.catalogue.products(productids).to_pylist()
    return {row["productid"]: row["prdtypecode"] for row in rows}


def test_a_correction_relabels_the_catalogue_product_and_the_next_index_votes_with_it(
        published: PublishedCatalogue, store: PredictionStore, tmp_path: Path) -> None:
    wrong = productid_of(3, 0)
    store.add_feedback(Feedback(prdtypecode=7, productid=wrong, actor="admin:alice"))
    before = published.open_current()
    content_before = published.catalogue.products([wrong]).to_pylist()[0]["content_hash"]

    summary = apply_corrections(store, published.catalogue, tmp_path / "corrections" / "b1")

    assert (summary.products, summary.relabelled, summary.added, summary.applied) == (1, 1, 0, 1)
    assert codes_of(published, [wrong]) == {wrong: 7}
    row = published.catalogue.products([wrong]).to_pylist()[0]
    assert row["content_hash"] == content_before  # a label change does not re-embed
    assert store.pending_corrections() == []
    assert before.product(wrong).prdtypecode == 3
    published.publish()
    assert published.open_current().product(wrong).prdtypecode == 7


def test_a_new_product_sent_with_feedback_joins_the_catalogue_with_its_image(
        published: PublishedCatalogue, store: PredictionStore, tmp_path: Path) -> None:
    image = jpeg_bytes((24, 24), (200, 10, 10))
    store.add_feedback(Feedback(prdtypecode=11, productid=555, product=ProductInput(
        "famille11 sorte11 nouveau", "neuf", image), actor="shop-backend"))
    summary = apply_corrections(store, published.catalogue, tmp_path / "c")
    assert (summary.added, summary.relabelled, summary.rejected) == (1, 0, 0)
    row = published.catalogue.products([555]).to_pylist()[0]
    assert (row["prdtypecode"], row["designation"], row["description"]) == (11, "famille11 sorte11 nouveau", "neuf")
    assert Path(row["image_uri"]).read_bytes() == image
    assert Path(row["image_uri"]).is_relative_to(tmp_path / "c")


def test_the_latest_feedback_of_a_product_wins_and_supersedes_the_earlier(
        published: PublishedCatalogue, store: PredictionStore, tmp_path: Path) -> None:
    pid = productid_of(7, 1)
    for code in (3, 11, 19):
        store.add_feedback(Feedback(prdtypecode=code, productid=pid))
    summary = apply_corrections(store, published.catalogue, tmp_path / "c")
    assert (summary.products, summary.applied) == (1, 3)
    assert codes_of(published, [pid]) == {pid: 19}


def test_what_cannot_be_applied_yet_stays_pending_with_its_reason(
        published: PublishedCatalogue, store: PredictionStore, tmp_path: Path) -> None:
    record = PredictionRecord.of(ProductInput("anonyme"), None, [(3, 0.9)], False, "fp", "v1", 3.0)
    store.insert_predictions([record])
    store.add_feedback(Feedback(prdtypecode=7, request_id=record.request_id))  # no productid anywhere
    store.add_feedback(Feedback(prdtypecode=7, productid=424242))  # not catalogued, no content
    confirm = productid_of(19, 2)
    store.add_feedback(Feedback(prdtypecode=19, productid=confirm))  # what the catalogue already says
    summary = apply_corrections(store, published.catalogue, tmp_path / "c")
    assert summary.left_pending == {"no productid": 1, "unknown product, no content": 1}
    assert (summary.unchanged, summary.applied) == (1, 1)
    assert len(store.pending_corrections()) == 2
    # Nothing left that can be applied: no folder is written, nothing changes.
    again = apply_corrections(store, published.catalogue, tmp_path / "c2")
    assert again.products == 0 and not (tmp_path / "c2").exists()


def test_a_rejected_row_stays_pending(published: PublishedCatalogue, store: PredictionStore, tmp_path: Path) -> None:
    # The server accepts only the served model's codes; a row that still fails ingest's checks is not lost.
    store.add_feedback(Feedback(prdtypecode=0, productid=777, product=ProductInput("famille11 produit")))
    summary = apply_corrections(store, published.catalogue, tmp_path / "c")
    assert summary.rejected >= 1 and summary.applied == 0  # rejects name the Y row and its X row
    assert summary.left_pending == {"rejected by ingest": 1}
    assert "777" in (tmp_path / "c" / "rejects.csv").read_text()
    assert [r.productid for r in store.pending_corrections()] == [777]


def test_the_cli_lists_and_applies_pending_corrections(published: PublishedCatalogue, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = PredictionStore.open(url)
    pid = productid_of(11, 3)
    store.add_feedback(Feedback(prdtypecode=3, productid=pid, actor="admin:carol"))
    store.dispose()
    assert main(["corrections", "list", "--prediction-log", url]) == 0
    listed = capsys.readouterr().out
    assert str(pid) in listed and "admin:carol" in listed
    assert main(["corrections", "apply", "--prediction-log", url, "--catalogue", published.catalogue.uri,
                 "--folder-root", str(tmp_path / "batches")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["relabelled"], summary["applied"]) == (1, 1)
    assert codes_of(published, [pid]) == {pid: 3}
    assert main(["corrections", "list", "--prediction-log", url]) == 0
    assert "no pending feedback" in capsys.readouterr().out
    assert main(["corrections", "list"]) == 2
    assert "prediction_log" in capsys.readouterr().err
