"""Labelled products for training and evaluation: reading a folder, the split, the fingerprint.

Rows come from `shopclip.catalogue_files.read_labelled_folder` (both catalogue layouts, validated the
same way ingest validates them): one row per productid, text + image, text only or image only, all used.
Unlabelled rows are dropped here: training and evaluation need a prdtypecode.

The split is by productid (a product never straddles train and test), stratified by prdtypecode,
with a fixed seed, and is saved in the bundle so evaluation scores exactly the held-out products.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from shopclip.errors import InvalidInput
from shopclip.catalogue_files import SourceRow, read_labelled_folder
from shopclip.products import ProductInput

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def has_text(row: SourceRow) -> bool:
    return bool(row.designation.strip() or row.description.strip())


def has_image(row: SourceRow) -> bool:
    return row.image_path is not None


def product_input(row: SourceRow, with_image: bool = True) -> ProductInput:
    """The request a client would send for this catalogue product (image file bytes as they are)."""
    image = Path(row.image_path).read_bytes() if with_image and row.image_path else None
    return ProductInput(row.designation, row.description, image)


def load_products(folder: str | Path) -> list[SourceRow]:
    """The labelled, valid products of a catalogue folder, sorted by productid.

    Raises InvalidInput(field="data") when nothing labelled is left after validation.
    """
    rows, rejects = read_labelled_folder(folder)
    if rejects:
        log.warning("%s: %d row(s) rejected, first: %s", folder, len(rejects), rejects[0])
    labelled = sorted((row for row in rows if row.prdtypecode is not None), key=lambda row: row.productid)
    if not labelled:
        raise InvalidInput("data", f"{folder} holds no labelled product")
    return labelled


def split_products(products: Sequence[SourceRow], seed: int = 0,
                   fractions: tuple[float, float] = (0.15, 0.15)) -> dict[str, list[int]]:
    """Stratified split by productid -> {"train": [...], "val": [...], "test": [...]} (sorted productids).

    Per class, products are shuffled with `seed`; `fractions` (val, test) of them go to val and test,
    rounded, but a class keeps at least one training product, and a class of 3+ products gets at least one
    validation and one test product, so rare classes are scored too. Works for any number of classes.
    """
    by_code: dict[int, list[int]] = defaultdict(list)
    for product in products:
        by_code[product.prdtypecode].append(product.productid)
    rng = np.random.default_rng(seed)
    split: dict[str, list[int]] = {name: [] for name in SPLITS}
    for code in sorted(by_code):
        ids = sorted(by_code[code])
        rng.shuffle(ids)
        n_val, n_test = (_share(len(ids), fraction) for fraction in fractions)
        split["val"] += ids[:n_val]
        split["test"] += ids[n_val:n_val + n_test]
        split["train"] += ids[n_val + n_test:]
    return {name: sorted(ids) for name, ids in split.items()}


def _share(n: int, fraction: float) -> int:
    if n < 3 or fraction <= 0:
        return 0
    return max(1, int(round(n * fraction)))


def select(products: Sequence[SourceRow], productids: Iterable[int]) -> list[SourceRow]:
    wanted = set(productids)
    return [p for p in products if p.productid in wanted]


def fingerprint(products: Sequence[SourceRow]) -> str:
    """sha256 over every product's id, label, text and image bytes' size+name: changes when the data does."""
    digest = hashlib.sha256()
    for p in sorted(products, key=lambda p: p.productid):
        image = f"{Path(p.image_path).name}:{Path(p.image_path).stat().st_size}" if p.image_path else ""
        digest.update(f"{p.productid}\t{p.prdtypecode}\t{p.designation}\t{p.description}\t{image}\n".encode())
    return digest.hexdigest()
