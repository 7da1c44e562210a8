"""Write the catalogue's labelled products as a challenge-layout folder: what `shopclip train --data` reads.

The catalogue is where every drop ends up (and, later, the administrators' corrections), so retraining on it
learns from every labelled product there is, not only from the folder the first model saw. The folder is
the drop format itself: `X_train.csv` (`,designation,description,productid,imageid`), `Y_train.csv`
(`,prdtypecode`, same index) and `images/image_<imageid>_product_<productid>.jpg`, so reading it back goes
through the one catalogue-file reader and the one input policy, like any drop.

Images are hard-linked where the catalogue's image files are on the same filesystem (an export of a large
catalogue costs no image bytes), copied otherwise. The folder is written under a temporary name and renamed
into place, so a reader never sees half an export; an existing folder is replaced only as a whole.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shopclip.atomic import fsync_directory
from shopclip.errors import InvalidInput, NotFound
from shopclip.indexer.catalogue import Catalogue

X_FILE, Y_FILE, IMAGES_DIR = "X_train.csv", "Y_train.csv", "images"
DROP_X_FILE, DROP_Y_FILE = "New_X_train.csv", "New_y_train.csv"
"""A monthly drop's names for the same pair."""


@dataclass(frozen=True)
class ExportSummary:
    folder: str
    products: int
    """Labelled products written (unlabelled ones cannot teach a model)."""
    images: int
    missing_images: int
    """Products whose image file the catalogue names but that is gone: exported with their text only."""
    catalogue_version: int

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def image_name(imageid: int, productid: int) -> str:
    return f"image_{imageid}_product_{productid}.jpg"


def export_labelled(catalogue: Catalogue, out: str | Path) -> ExportSummary:
    """Write every labelled product of `catalogue` into the folder `out` (replaced whole if it exists).

    NotFound when the catalogue holds no labelled product; InvalidInput when `out` exists and is not a folder
    this function wrote (it is never deleted then)."""
    out = Path(out).resolve()
    if out.exists() and not (out / X_FILE).is_file():
        raise InvalidInput("out", f"{out} exists and is not an export (no {X_FILE}): refusing to replace it")
    version = catalogue.version
    rows = catalogue.labelled_products().to_pylist()
    if not rows:
        raise NotFound(f"catalogue {catalogue.uri}: no labelled product to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        images, missing = write_challenge_folder(staging, rows)
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportSummary(str(out), len(rows), images, missing, version)


def write_challenge_folder(folder: Path, rows: list[dict], x_name: str = X_FILE, y_name: str = Y_FILE
                           ) -> tuple[int, int]:
    """The challenge layout of `rows` (dicts with productid, designation, description, imageid, prdtypecode
    and image_uri, a file or None) under `folder`: the X/Y csv pair named `x_name`/`y_name` (a drop's are
    DROP_X_FILE/DROP_Y_FILE) and the images. Returns (images written, images missing)."""
    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    images = missing = 0
    with (folder / x_name).open("w", newline="", encoding="utf-8") as x_out, \
            (folder / y_name).open("w", newline="", encoding="utf-8") as y_out:
        x_writer, y_writer = csv.writer(x_out), csv.writer(y_out)
        x_writer.writerow(["", "designation", "description", "productid", "imageid"])
        y_writer.writerow(["", "prdtypecode"])
        for index, row in enumerate(rows):
            imageid = row["imageid"]
            x_writer.writerow([index, row["designation"] or "", row["description"] or "", row["productid"],
                               "" if imageid is None else imageid])
            y_writer.writerow([index, row["prdtypecode"]])
            if row["image_uri"] and imageid is not None:
                if _place_image(Path(row["image_uri"]), folder / IMAGES_DIR / image_name(imageid, row["productid"])):
                    images += 1
                else:
                    missing += 1
        for handle in (x_out, y_out):
            handle.flush()
            os.fsync(handle.fileno())
    return images, missing


def _place_image(source: Path, target: Path) -> bool:
    """Hard link, else copy; False when the source is gone."""
    try:
        os.link(source, target)
    except FileNotFoundError:
        return False
    except OSError:  # another filesystem, or links not allowed there
        try:
            shutil.copyfile(source, target)
        except FileNotFoundError:
            return False
    return True


def _replace_folder(staging: Path, out: Path) -> None:
    """Rename the finished export into place; an older export is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".old-{out.name}-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    fsync_directory(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
