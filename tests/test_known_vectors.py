"""Vectors computed before an index build (the promotion gate's) are reused by it, and only for unchanged content."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from shopclip.indexer.build import build_and_publish
from shopclip.indexer.catalogue import Catalogue
from shopclip.indexer.export import export_labelled
from shopclip.indexer.ingest import ingest_folder
from shopclip.indexer.known_vectors import KnownVectors, read_kept, seed_catalogue
from shopclip.indexer.published import open_current
from shopclip.training.data import load_products, product_input
from support.index import synthetic_drop
from test_indexer_build import SMALL, CountingEmbedder


def exported_catalogue(tmp_path: Path, productids: range) -> tuple[Catalogue, list]:
    """A catalogue and its labelled products read back from an export (what the drop flow's gate references)."""
    catalogue = Catalogue(str(tmp_path / "db"))
    ingest_folder(synthetic_drop(tmp_path / "drop", productids), catalogue)
    return catalogue, load_products(export_labelled(catalogue, tmp_path / "export").folder)


def test_the_catalogues_vectors_are_found_for_exported_products_of_unchanged_content(tmp_path: Path) -> None:
    catalogue, products = exported_catalogue(tmp_path, range(1, 21))
    champion = CountingEmbedder()
    build_and_publish(catalogue, tmp_path / "index", champion, SMALL)
    index = open_current(tmp_path / "index")
    known = KnownVectors(catalogue, tmp_path / "kept")

    edited = replace(products[4], designation=products[4].designation + " reformulé")
    found = known.lookup(champion.fingerprint, [*products[:4], edited, *products[5:]])
    assert sorted(found) == sorted(p.productid for p in products if p.productid != edited.productid)
    assert all(np.allclose(found[pid], index.vector(pid)) for pid in found)
    assert known.lookup(CountingEmbedder("fake:dim=16,classes=4").fingerprint, products) == {}


def test_kept_vectors_spare_the_next_build_those_products_and_stay_exact(tmp_path: Path) -> None:
    catalogue, products = exported_catalogue(tmp_path, range(1, 31))
    build_and_publish(catalogue, tmp_path / "index", CountingEmbedder(), SMALL)  # the champion's index
    challenger = CountingEmbedder("fake:dim=16,classes=4")
    known = KnownVectors(catalogue, tmp_path / "kept")
    gate_vectors = challenger.embed([product_input(p) for p in products[:20]])
    known.keep(challenger.fingerprint, products[:12], gate_vectors[:12])
    known.keep(challenger.fingerprint, products[12:20], gate_vectors[12:20])  # added to, not replaced
    assert len(read_kept(tmp_path / "kept", challenger.fingerprint)) == 20
    assert sorted(known.lookup(challenger.fingerprint, products)) == [p.productid for p in products[:20]]

    ingest_folder(synthetic_drop(tmp_path / "edit", [3], word="nouveau"), catalogue)  # product 3 changed since
    assert seed_catalogue(catalogue, tmp_path / "kept", challenger.fingerprint) == 19
    challenger.seen.clear()
    build = build_and_publish(catalogue, tmp_path / "index", challenger, SMALL)
    assert build.embedded == 11  # products 21..30 and the edited 3
    assert sorted(p.designation.split()[-1] for p in challenger.seen) == sorted(
        ["3", *(str(pid) for pid in range(21, 31))])
    index = open_current(tmp_path / "index")
    for product, vector in zip(products[:20], gate_vectors):
        if product.productid != 3:
            assert np.allclose(index.vector(product.productid), vector, atol=1e-6)
    assert seed_catalogue(catalogue, tmp_path / "kept", challenger.fingerprint) == 0  # nothing stale is left


def test_training_keeps_the_vectors_its_bundle_computes_for_the_products_it_learnt_from(tmp_path: Path) -> None:
    from shopclip.cli import main
    from shopclip.model.bundle import load_bundle_embedder
    from support.training import TINY_MODEL

    catalogue, products = exported_catalogue(tmp_path, range(1, 61))
    kept = tmp_path / "kept"
    argv = ["train", "--data", str(tmp_path / "export"), "--out", str(tmp_path / "bundle"), *TINY_MODEL,
            "--no-image-pretrained", "--epochs", "1", "--device", "cpu", "--keep-vectors", str(kept)]
    assert main(argv) == 0
    embedder = load_bundle_embedder(str(tmp_path / "bundle"), device="cpu")
    found = KnownVectors(catalogue, kept).lookup(embedder.fingerprint, products)
    assert sorted(found) == [p.productid for p in products]  # every product learnt from (no test share by default)
    live = embedder.embed([product_input(p) for p in products])
    assert any(p.image_path for p in products) and any(not p.image_path for p in products)
    assert np.allclose(np.stack([found[p.productid] for p in products]), live, atol=1e-5)
