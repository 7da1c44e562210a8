"""What the indexer offers its readers (server, evaluation, CLI): the read side of a published index.

This module is the contract; `indexer/published.py` implements it. Nothing here imports grpc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Neighbor:
    productid: int
    prdtypecode: int | None
    """None for unlabelled catalogue products (searchable, but they do not vote)."""
    score: float
    """Inner product of L2-normalised vectors (cosine similarity)."""


@dataclass(frozen=True)
class CatalogueProduct:
    productid: int
    designation: str
    description: str
    imageid: int | None
    prdtypecode: int | None
    image_uri: str | None


class PublishedIndex(Protocol):
    version: str
    manifest: dict
    """The version's manifest: model fingerprint, catalogue version, counts, index type, recall, time."""

    def __len__(self) -> int: ...

    def search(self, vectors: np.ndarray, k: int, code: int | None = None,
               exclude: Sequence[int] = ()) -> list[list[Neighbor]]:
        """Top-k neighbours per query row (best first), optionally only of one prdtypecode,
        never returning a productid in `exclude` (used to search 'similar to this product')."""
        ...

    def product(self, productid: int) -> CatalogueProduct:
        """Metadata of one catalogue product; raises shopclip.errors.NotFound."""
        ...

    def titles(self, productids: Sequence[int]) -> list[tuple[str, int | None]]:
        """(designation, imageid) of each product, in order, ("", None) for one without metadata: what a
        search hit shows, for a whole result list at once (Classify describes every voter)."""
        ...

    def vector(self, productid: int) -> np.ndarray:
        """The stored embedding of one product; raises shopclip.errors.NotFound."""
        ...
