"""The server tests' index: rows written as a catalogue drop, then the indexer's real path (ingest into a LanceDB
catalogue, embed with the fake bundle, build the flat FAISS index, publish atomically under an index root).

So what a test serves is a production `LoadedIndex` with a production manifest, never a double; a test that
flips the served version publishes another version with the same publisher. `synthetic_drop` is the indexer
tests' drop: any number of products, some with an image file."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from support.catalogue import FAKE_BUNDLE, CatalogueRow, catalogue_rows
from support.images import jpeg_bytes

X_HEADER = ["", "designation", "description", "productid", "imageid"]


def write_drop(folder: Path, rows: Sequence[CatalogueRow]) -> Path:
    """A challenge-layout drop of text-only rows: labelled rows in New_X/New_y, unlabelled ones in an X file
    with no Y file (how the catalogue receives products of no known type)."""
    folder.mkdir(parents=True, exist_ok=True)
    labelled = [row for row in rows if row.prdtypecode is not None]
    unlabelled = [row for row in rows if row.prdtypecode is None]
    write_csv(folder / "New_X_train.csv", X_HEADER, _x_records(labelled))
    write_csv(folder / "New_y_train.csv", ["", "prdtypecode"],
              [[i, row.prdtypecode] for i, row in enumerate(labelled)])
    if unlabelled:
        write_csv(folder / "Unlabelled_X_catalogue.csv", X_HEADER, _x_records(unlabelled))
    return folder


VOCABULARY = {10: "livre roman auteur", 40: "jeu console manette", 1280: "jouet enfant peluche",
              2583: "piscine pompe filtre"}


def synthetic_drop(root: Path, productids: range | list[int], image_every: int = 3, labelled: bool = True,
                   word: str = "") -> Path:
    """A challenge-layout drop whose products share code-specific words (so fake embeddings cluster by code);
    every `image_every`-th product has a real JPEG. Shared by the ingest, build, publish, job and server tests."""
    root.mkdir(parents=True, exist_ok=True)
    codes = sorted(VOCABULARY)
    x_rows, y_rows = [], []
    for index, productid in enumerate(productids):
        code = codes[productid % len(codes)]
        x_rows.append([index, f"{VOCABULARY[code]} {word} modèle {productid}", f"description {productid % 7}",
                       productid, 5000 + productid])
        y_rows.append([index, code])
        if index % image_every == 0:
            (root / "images").mkdir(exist_ok=True)
            (root / "images" / f"image_{5000 + productid}_product_{productid}.jpg").write_bytes(
                jpeg_bytes((16, 16), (productid % 255, 40, 90)))
    write_csv(root / "New_X_train.csv", X_HEADER, x_rows)
    if labelled:
        write_csv(root / "New_y_train.csv", ["", "prdtypecode"], y_rows)
    return root


def _x_records(rows: Sequence[CatalogueRow]) -> list[list[object]]:
    return [[i, row.designation, "", row.productid, row.imageid] for i, row in enumerate(rows)]


def write_csv(path: Path, header: list[str], records: Iterable[list[object]]) -> None:
    """A csv file as the catalogue receives them (header row, then records)."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(records)


@dataclass
class PublishedCatalogue:
    """A catalogue and the index root its versions are published under."""

    root: Path
    catalogue: object  # shopclip.indexer.catalogue.Catalogue (lancedb loads lazily)
    version: str
    """The version published last (what CURRENT names)."""

    @property
    def index_root(self) -> str:
        return str(self.root / "index")

    def publish(self, bundle: str = FAKE_BUNDLE, release: str = "") -> str:
        """Build and publish the catalogue as it is now, embedded by `bundle`; returns the new version. `release`:
        the fake embedder answers as that release (a registered fake bundle's, as the bundle would load)."""
        from shopclip.indexer.build import BuildOptions, build_and_publish
        from shopclip.model import load_embedder

        embedder = load_embedder(bundle)
        if release:
            embedder.release = release
        options = BuildOptions(embed_batch=16, commit_every=64)
        self.version = build_and_publish(self.catalogue, self.index_root, embedder, options).version
        return self.version

    def publish_without(self, productids: Sequence[int]) -> str:
        """Remove products from the catalogue, then publish the smaller catalogue as a new version."""
        self.catalogue.remove(list(productids))
        return self.publish()

    def open_current(self):  # noqa: ANN201 - shopclip.indexer.published.LoadedIndex
        """A fresh load of the live version, as the server's index watcher loads it."""
        from shopclip.indexer.published import open_current

        return open_current(self.index_root)


def build_catalogue_index(root: Path, rows: Sequence[CatalogueRow] | None = None,
                          bundle: str = FAKE_BUNDLE, release: str = "") -> PublishedCatalogue:
    """Ingest `rows` (default `catalogue_rows()`) under `root` and publish their first index version (`bundle`,
    `release`: see `PublishedCatalogue.publish`)."""
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.indexer.ingest import ingest_folder

    catalogue = Catalogue(str(root / "catalogue"))
    summary = ingest_folder(write_drop(root / "drop", catalogue_rows() if rows is None else rows), catalogue)
    if summary.rejected:
        raise AssertionError(f"the test catalogue lost {summary.rejected} rows at ingest")
    published = PublishedCatalogue(root=root, catalogue=catalogue, version="")
    published.publish(bundle, release)
    return published
