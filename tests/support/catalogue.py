"""The one fake bundle spec and the tiny catalogue the server tests serve.

Titles of one code share two words, so the fake embedder (words hashed into dimensions) puts them close
together: neighbours, votes and searches then have answers a test can predict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FAKE_BUNDLE = "fake:dim=32,classes=27"
"""The deterministic fake embedder, loaded through the same factory as real bundles."""
CODES_IN_INDEX = (3, 7, 11, 19)
PRODUCTS_PER_CODE = 5


@dataclass(frozen=True)
class CatalogueRow:
    """One catalogue product; `prdtypecode` None is an unlabelled product (searchable, never voting)."""

    productid: int
    prdtypecode: int | None
    designation: str

    @property
    def imageid(self) -> int:
        """Every row names an image id (there is no image file: the product is text-only)."""
        return self.productid + 1


def catalogue_title(code: int, j: int) -> str:
    return f"famille{code} sorte{code} modele{j}"


def productid_of(code: int, j: int) -> int:
    return 1000 * code + j


def catalogue_rows(codes: Sequence[int] = CODES_IN_INDEX) -> list[CatalogueRow]:
    """`PRODUCTS_PER_CODE` labelled products for each of `codes` (a real bundle indexes codes it knows)."""
    return [CatalogueRow(productid=productid_of(code, j), prdtypecode=code, designation=catalogue_title(code, j))
            for code in codes for j in range(PRODUCTS_PER_CODE)]


def unlabelled_rows(count: int = 3) -> list[CatalogueRow]:
    """Products of no code whose titles sit near code 3's."""
    return [CatalogueRow(productid=90 + j, prdtypecode=None, designation=f"famille3 inconnu{j}") for j in range(count)]
