"""Read side of the published index, for the server and evaluation (no grpc here).

`open_current(root)` loads the version CURRENT names; `current_version(root)` is one small file read, cheap
enough to poll every second to notice a newer publish and hot-swap. A loaded version is immutable and
self-contained (vectors, ids, codes and product metadata live in its directory), so it keeps serving even
after the catalogue moves on or the version is pruned (its files stay mapped).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shopclip.errors import InvalidInput, NotFound, NotReady
from shopclip.indexer import ann, publish
from shopclip.indexer.publish import CODES_FILE, INDEX_FILE, NO_CODE, PRODUCTIDS_FILE, PRODUCTS_FILE, VECTORS_FILE
from shopclip.indexer.api import CatalogueProduct, Neighbor
from shopclip.model import knn


class LoadedIndex:
    """One published version, implementing `shopclip.indexer.api.PublishedIndex`."""

    def __init__(self, directory: str | Path) -> None:
        import faiss
        import pyarrow as pa

        directory = Path(directory)
        self.directory = directory
        self.manifest: dict = json.loads((directory / publish.MANIFEST_FILE).read_text(encoding="utf-8"))
        self.version: str = self.manifest["version"]
        self._kind: str = self.manifest["index"]["kind"]
        self._index = faiss.read_index(str(directory / INDEX_FILE))
        ann.set_search_effort(self._index, self._kind, self.manifest["index"]["search_effort"])
        self._vectors = np.load(directory / VECTORS_FILE, mmap_mode="r")
        self._productids = np.load(directory / PRODUCTIDS_FILE)
        self._codes = np.load(directory / CODES_FILE)
        self._products = pa.ipc.open_file(pa.memory_map(str(directory / PRODUCTS_FILE))).read_all()
        # One contiguous array per column: Classify describes every voter, and a scalar read from an array
        # costs a fraction of slicing the table into a python row (measured 20 us -> a few us per product).
        self._columns = {name: self._products.column(name).combine_chunks() for name in self._products.column_names}
        order = np.argsort(self._codes, kind="stable")
        bounds = np.flatnonzero(np.diff(self._codes[order])) + 1
        self._rows_by_code = {int(self._codes[group[0]]): group
                              for group in np.split(order, bounds) if len(group)}

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    def __len__(self) -> int:
        return int(len(self._productids))

    def _row_of(self, productid: int) -> int:
        row = int(np.searchsorted(self._productids, productid))
        if row >= len(self._productids) or self._productids[row] != productid:
            raise NotFound(f"productid {productid} is not in index version {self.version}")
        return row

    def _hits(self, rows: np.ndarray, scores: np.ndarray, excluded: set[int], k: int) -> list[Neighbor]:
        """One query's result rows as Neighbors, best first: FAISS's -1 padding and `excluded` dropped, at most k.
        Ids and codes are read with one array lookup each (the server asks for 40 neighbours a query)."""
        found = rows >= 0
        safe = np.where(found, rows, 0)
        hits = [Neighbor(productid, None if code == NO_CODE else code, score)
                for productid, code, score, ok in zip(self._productids[safe].tolist(), self._codes[safe].tolist(),
                                                       np.asarray(scores, dtype=np.float32).tolist(), found.tolist())
                if ok and productid not in excluded]
        return hits[:k]

    def _check_queries(self, vectors: np.ndarray, k: int) -> np.ndarray:
        queries = np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InvalidInput("vector", f"expected vectors of dimension {self.dim}, got shape {queries.shape}")
        if k < 1:
            raise InvalidInput("k", f"must be at least 1, got {k}")
        return queries

    def search(self, vectors: np.ndarray, k: int, code: int | None = None,
               exclude: Sequence[int] = ()) -> list[list[Neighbor]]:
        """Top-k neighbours per query (best first), optionally of one code only, never those in `exclude`."""
        queries = self._check_queries(vectors, k)
        excluded = {int(pid) for pid in exclude}
        if code is not None:
            return [self._search_code(query, k, code, excluded) for query in queries]
        fetch = min(len(self), k + len(excluded))
        if self._kind == "flat":  # exact either way; BLAS is ~2.5x faster than the FAISS wheel here
            scores, rows = knn.exact_search(queries, self._vectors, fetch)
        else:
            scores, rows = self._index.search(queries, fetch)
        return [self._hits(query_rows, query_scores, excluded, k) for query_rows, query_scores in zip(rows, scores)]

    def _search_code(self, query: np.ndarray, k: int, code: int, excluded: set[int]) -> list[Neighbor]:
        """Exact search among one code's products (a code is a small share of the catalogue)."""
        rows = self._rows_by_code.get(int(code))
        if rows is None or code == NO_CODE:
            return []
        scores, best = knn.exact_search(query[None, :], self._vectors[rows], k + len(excluded))
        return self._hits(rows[best[0]], scores[0], excluded, k)

    def product(self, productid: int) -> CatalogueProduct:
        row = self._row_of(productid)
        value = {name: column[row].as_py() for name, column in self._columns.items()}
        return CatalogueProduct(productid=value["productid"], designation=value["designation"] or "",
                                description=value["description"] or "", imageid=value["imageid"],
                                prdtypecode=value["prdtypecode"], image_uri=value["image_uri"])

    def titles(self, productids: Sequence[int]) -> list[tuple[str, int | None]]:
        wanted = np.asarray(productids, dtype=self._productids.dtype)
        rows = np.clip(np.searchsorted(self._productids, wanted), 0, max(0, len(self._productids) - 1))
        known = (self._productids[rows] == wanted) if len(self._productids) else np.zeros(len(wanted), bool)
        designations = self._columns["designation"].take(rows).to_pylist()  # one take per column, not per row
        imageids = self._columns["imageid"].take(rows).to_pylist()
        return [(designation or "", imageid) if ok else ("", None)
                for designation, imageid, ok in zip(designations, imageids, known.tolist())]

    def vector(self, productid: int) -> np.ndarray:
        return np.array(self._vectors[self._row_of(productid)], dtype=np.float32)

    def codes(self) -> list[int]:
        """The prdtypecodes present among labelled products."""
        return sorted(code for code in self._rows_by_code if code != NO_CODE)


def current_version(index_root: str | Path) -> str | None:
    """The live version's name (None before the first publish): poll this to notice a new publish."""
    return publish.read_current(index_root)


def open_version(index_root: str | Path, version: str) -> LoadedIndex:
    directory = publish.versions_dir(Path(index_root)) / version
    if not (directory / publish.MANIFEST_FILE).exists():
        raise NotFound(f"index version {version} does not exist under {index_root}")
    return LoadedIndex(directory)


def open_current(index_root: str | Path) -> LoadedIndex:
    """Load the live version; raises NotReady when nothing has been published yet."""
    for _ in range(3):  # CURRENT may flip (and the old version be pruned) between reading and opening
        version = current_version(index_root)
        if version is None:
            raise NotReady(f"no index published under {index_root} yet (run `shopclip index build`)")
        try:
            return open_version(index_root, version)
        except (NotFound, FileNotFoundError):
            continue
    raise NotReady(f"index under {index_root} keeps changing; retry")
