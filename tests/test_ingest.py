"""Ingest into the LanceDB catalogue: summary counts, idempotence, rejects file, updates, kill safety."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from shopclip.indexer.catalogue import Catalogue
from shopclip.indexer.ingest import ingest_folder
from support.index import synthetic_drop, write_csv


def test_first_ingest_adds_everything_and_a_second_changes_nothing(tmp_path: Path) -> None:
    drop = synthetic_drop(tmp_path / "drop", range(1, 21))
    catalogue = Catalogue(str(tmp_path / "db"))
    first = ingest_folder(drop, catalogue, rejects_path=tmp_path / "rejects.csv")
    assert (first.added, first.updated, first.unchanged, first.rejected) == (20, 0, 0, 0)
    assert len(catalogue) == 20
    again = ingest_folder(drop, catalogue)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 20)
    assert again.catalogue_version == first.catalogue_version  # nothing was written at all


def test_excluded_products_stay_out_of_the_catalogue(tmp_path: Path) -> None:
    drop = synthetic_drop(tmp_path / "drop", range(1, 11))
    catalogue = Catalogue(str(tmp_path / "db"))
    summary = ingest_folder(drop, catalogue, exclude_productids=[2, 5, 99])
    assert (summary.added, summary.unchanged) == (8, 0)
    assert sorted(catalogue.products(range(1, 11)).column("productid").to_pylist()) == [1, 3, 4, 6, 7, 8, 9, 10]


def test_changed_rows_are_updated_and_keep_their_creation_time(tmp_path: Path) -> None:
    drop = synthetic_drop(tmp_path / "drop", range(1, 11))
    catalogue = Catalogue(str(tmp_path / "db"))
    ingest_folder(drop, catalogue)
    before = catalogue.products([3]).to_pylist()[0]
    x_file = drop / "New_X_train.csv"
    x_file.write_text(x_file.read_text(encoding="utf-8").replace("modèle 3,", "modèle 3 neuf,"), encoding="utf-8")
    summary = ingest_folder(drop, catalogue)
    assert (summary.added, summary.updated, summary.unchanged) == (0, 1, 9)
    after = catalogue.products([3]).to_pylist()[0]
    assert "neuf" in after["designation"]
    assert after["created_at"] == before["created_at"] and after["updated_at"] > before["updated_at"]
    assert after["content_hash"] != before["content_hash"]


def test_a_label_change_updates_the_row_but_not_its_content_hash(tmp_path: Path) -> None:
    drop = synthetic_drop(tmp_path / "drop", range(1, 5))
    catalogue = Catalogue(str(tmp_path / "db"))
    ingest_folder(drop, catalogue)
    before = catalogue.products([2]).to_pylist()[0]
    write_csv(drop / "New_y_train.csv", ["", "prdtypecode"], [[0, 10], [1, 9999], [2, 10], [3, 10]])
    summary = ingest_folder(drop, catalogue)
    after = catalogue.products([2]).to_pylist()[0]
    assert after["prdtypecode"] == 9999 and summary.updated >= 1
    assert after["content_hash"] == before["content_hash"]  # the label does not force re-embedding


def test_bad_rows_go_to_the_rejects_file_and_good_rows_are_kept(tmp_path: Path) -> None:
    drop = synthetic_drop(tmp_path / "drop", range(1, 6))
    x_file = drop / "New_X_train.csv"
    x_file.write_text(x_file.read_text(encoding="utf-8") + '5,"sans id","",,77\n6,"dup","",2,78\n',
                      encoding="utf-8")
    write_csv(drop / "New_y_train.csv", ["", "prdtypecode"], [[i, 10] for i in range(7)])
    catalogue = Catalogue(str(tmp_path / "db"))
    summary = ingest_folder(drop, catalogue, rejects_path=tmp_path / "out" / "rejects.csv")
    assert (summary.added, summary.rejected) == (5, 2)
    with (tmp_path / "out" / "rejects.csv").open(encoding="utf-8") as handle:
        rejects = list(csv.DictReader(handle))
    assert [(r["row_number"], r["field"]) for r in rejects] == [("6", "productid"), ("7", "productid")]
    assert "missing" in rejects[0]["reason"] and "duplicate" in rejects[1]["reason"]


def test_missing_image_keeps_the_product_with_a_note(tmp_path: Path) -> None:
    drop = synthetic_drop(tmp_path / "drop", range(1, 4), image_every=1)
    (drop / "images" / "image_5002_product_2.jpg").unlink()
    catalogue = Catalogue(str(tmp_path / "db"))
    ingest_folder(drop, catalogue)
    row = catalogue.products([2]).to_pylist()[0]
    assert row["image_uri"] is None and "missing" in row["image_note"] and row["designation"]


def test_killed_ingest_leaves_the_previous_table(tmp_path: Path) -> None:
    catalogue_uri = str(tmp_path / "db")
    catalogue = Catalogue(catalogue_uri)
    ingest_folder(synthetic_drop(tmp_path / "first", range(1, 6)), catalogue)
    version = catalogue.version
    second = synthetic_drop(tmp_path / "second", range(100, 130))
    env = dict(os.environ, SHOPCLIP_KILL_AT="ingest-before-commit")
    done = subprocess.run([sys.executable, "-m", "shopclip.cli", "index", "ingest", str(second), "--catalogue",
                           catalogue_uri, "--rejects", str(tmp_path / "r.csv")], env=env, capture_output=True)
    assert done.returncode == -9
    reopened = Catalogue(catalogue_uri)
    assert reopened.version == version and len(reopened) == 5
    done = subprocess.run([sys.executable, "-m", "shopclip.cli", "index", "ingest", str(second), "--catalogue",
                           catalogue_uri, "--rejects", str(tmp_path / "r.csv")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '"added": 30' in done.stdout and len(Catalogue(catalogue_uri)) == 35


def test_a_relative_folder_in_the_working_directory_is_ingested_with_the_default_locations(
        tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    from shopclip.cli import main

    synthetic_drop(tmp_path / "drop", range(1, 7))
    monkeypatch.chdir(tmp_path)
    assert main(["index", "ingest", "./drop"]) == 0  # default catalogue ./catalogue, rejects ./rejects-drop.csv
    first = json.loads(capsys.readouterr().out)
    assert (first["added"], first["source_batch"]) == (6, "drop") and Path("rejects-drop.csv").exists()
    image_uris = [uri for uri in Catalogue("catalogue").products(range(1, 7)).column("image_uri").to_pylist() if uri]
    assert image_uris and all(Path(uri).is_absolute() and Path(uri).exists() for uri in image_uris)
    monkeypatch.chdir(tmp_path / "drop")  # the same folder spelled '.': the same rows, nothing to update
    assert main(["index", "ingest", ".", "--catalogue", "../catalogue", "--rejects", "../rejects-drop.csv"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["added"], again["updated"], again["unchanged"], again["source_batch"]) == (0, 0, 6, "drop")
