"""Exporting the catalogue's labelled products as a training folder: read back through the one catalogue-file
reader, it holds exactly the labelled products (text, codes, image bytes), image-only ones included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shopclip.catalogue_files import read_labelled_folder
from shopclip.errors import InvalidInput, NotFound
from shopclip.indexer.catalogue import Catalogue
from shopclip.indexer.export import X_FILE, export_labelled
from shopclip.indexer.ingest import ingest_folder
from support.images import jpeg_bytes
from support.index import X_HEADER, synthetic_drop, write_csv

IMAGE_ONLY_PRODUCT = 9001


def image_only_drop(root: Path) -> Path:
    """One labelled product with an image and no text at all."""
    (root / "images").mkdir(parents=True)
    (root / "images" / f"image_77_product_{IMAGE_ONLY_PRODUCT}.jpg").write_bytes(jpeg_bytes((20, 20)))
    write_csv(root / "New_X_train.csv", X_HEADER, [[0, "", "", IMAGE_ONLY_PRODUCT, 77]])
    write_csv(root / "New_y_train.csv", ["", "prdtypecode"], [[0, 2583]])
    return root


@pytest.fixture
def catalogue(tmp_path: Path) -> Catalogue:
    catalogue = Catalogue(str(tmp_path / "catalogue"))
    ingest_folder(synthetic_drop(tmp_path / "labelled", range(1, 13)), catalogue)
    ingest_folder(synthetic_drop(tmp_path / "unlabelled", range(100, 104), labelled=False), catalogue)
    ingest_folder(image_only_drop(tmp_path / "image-only"), catalogue)
    return catalogue


def test_the_export_reads_back_as_the_labelled_products_with_their_images(catalogue: Catalogue,
                                                                          tmp_path: Path) -> None:
    summary = export_labelled(catalogue, tmp_path / "export")
    rows, rejects = read_labelled_folder(tmp_path / "export")
    assert rejects == []
    expected = {r["productid"]: r for r in catalogue.labelled_products().to_pylist()}
    assert {row.productid for row in rows} == set(expected) and len(rows) == summary.products == 13
    for row in rows:
        source = expected[row.productid]
        assert (row.designation, row.description, row.prdtypecode) == (
            source["designation"], source["description"], source["prdtypecode"])
        assert (row.image_path is None) == (source["image_uri"] is None)
        if row.image_path:
            assert Path(row.image_path).read_bytes() == Path(source["image_uri"]).read_bytes()
    image_only = next(row for row in rows if row.productid == IMAGE_ONLY_PRODUCT)
    assert image_only.designation == "" and image_only.image_path is not None
    assert summary.images == sum(1 for r in expected.values() if r["image_uri"]) and summary.missing_images == 0


def test_a_second_export_replaces_the_first_whole(catalogue: Catalogue, tmp_path: Path) -> None:
    export_labelled(catalogue, tmp_path / "export")
    catalogue.remove([1, 2])
    summary = export_labelled(catalogue, tmp_path / "export")
    rows, _ = read_labelled_folder(tmp_path / "export")
    assert {1, 2}.isdisjoint(row.productid for row in rows) and len(rows) == summary.products == 11
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_an_image_gone_from_disk_leaves_the_product_with_its_text(catalogue: Catalogue, tmp_path: Path) -> None:
    with_image = next(r for r in catalogue.labelled_products().to_pylist()
                      if r["image_uri"] and r["productid"] != IMAGE_ONLY_PRODUCT)
    Path(with_image["image_uri"]).unlink()
    summary = export_labelled(catalogue, tmp_path / "export")
    rows, _ = read_labelled_folder(tmp_path / "export")
    row = next(row for row in rows if row.productid == with_image["productid"])
    assert row.image_path is None and row.designation == with_image["designation"]
    assert summary.missing_images == 1


def test_a_folder_that_is_not_an_export_is_never_replaced(catalogue: Catalogue, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInput, match="out"):
        export_labelled(catalogue, precious)
    assert (precious / "notes.txt").read_text() == "keep me" and not (precious / X_FILE).exists()


def test_an_empty_catalogue_has_nothing_to_export(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        export_labelled(Catalogue(str(tmp_path / "empty")), tmp_path / "export")


def test_index_export_command(catalogue: Catalogue, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "shopclip.cli", "index", "export", "--catalogue", catalogue.uri]
    done = subprocess.run([*command, "--out", str(tmp_path / "export")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["products"] == 13
    refused = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
