"""Read side of the published index, for the server and evaluation (no grpc here).

`open_current(root)` loads the version CURRENT names; `current_version(root)` is one small file read, cheap
enough to poll every second to notice a newer publish and hot-swap. A loaded version is immutable and
self-contained (vectors, ids, codes and product metadata live in its directory) and read into memory, so it
keeps serving after the catalogue moves on and after its files are pruned, removed or damaged on disk;
`backing_problem` says when the version being served could no longer be loaded again from the index root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from shopclip.errors import InvalidInput, NotFound, NotReady
from shopclip.indexer import ann, publish
from shopclip.indexer.publish import CODES_FILE, INDEX_FILE, NO_CODE, PRODUCTIDS_FILE, PRODUCTS_FILE, VECTORS_FILE
from shopclip.indexer.api import CatalogueProduct, Neighbor, PublishedIndex
from shopclip.model import knn

T = TypeVar("T")
VERSION_FILES = (publish.MANIFEST_FILE, INDEX_FILE, VECTORS_FILE, PRODUCTIDS_FILE, CODES_FILE, PRODUCTS_FILE)
"""Every file a version is loaded from."""

class LoadedIndex:
    """One published version, implementing `shopclip.indexer.api.PublishedIndex`.

    Every file is read into this process's memory, none is memory-mapped: a mapped file truncated in place
    (`> vectors.npy`, a restore gone wrong) turns the next read of a lost page into SIGBUS, which killed the
    server. A version whose files do not describe the same products is refused (NotReady naming the files),
    so a version assembled from two builds or cut short is never served."""

    def __init__(self, directory: str | Path) -> None:
        import faiss

        directory = Path(directory)
        self.directory = directory
        # Taken before reading, so a change during the load shows at the first `changes_on_disk`.
        self._signatures = {name: _signature(directory / name) for name in VERSION_FILES}
        self.manifest: dict = _read(directory, publish.MANIFEST_FILE, _read_manifest)
        self.version: str = self.manifest["version"]
        self._kind: str = self.manifest["index"]["kind"]
        self._index = _read(directory, INDEX_FILE, lambda path: faiss.read_index(str(path)))
        ann.set_search_effort(self._index, self._kind, self.manifest["index"]["search_effort"])
        self._vectors = _read(directory, VECTORS_FILE, np.load)
        self._productids = _read(directory, PRODUCTIDS_FILE, np.load)
        self._codes = _read(directory, CODES_FILE, np.load)
        self._products = _read(directory, PRODUCTS_FILE, _read_table)
        self._check_consistent()
        # One contiguous array per column: Classify describes every voter, and a scalar read from an array
        # costs a fraction of slicing the table into a python row (measured 20 us -> a few us per product).
        self._columns = {name: self._products.column(name).combine_chunks() for name in self._products.column_names}
        order = np.argsort(self._codes, kind="stable")
        bounds = np.flatnonzero(np.diff(self._codes[order])) + 1
        self._rows_by_code = {int(self._codes[group[0]]): group
                              for group in np.split(order, bounds) if len(group)}

    def _check_consistent(self) -> None:
        """Each file holds one row per product, in the order of productids.npy (sorted, as lookups assume)."""
        rows = {INDEX_FILE: int(self._index.ntotal), VECTORS_FILE: len(self._vectors),
                PRODUCTIDS_FILE: len(self._productids), CODES_FILE: len(self._codes),
                PRODUCTS_FILE: self._products.num_rows}
        counted = (self.manifest.get("counts") or {}).get("vectors")
        if counted is not None:
            rows[publish.MANIFEST_FILE] = int(counted)
        problems = []
        if len(set(rows.values())) > 1:
            problems.append("row counts differ (" + ", ".join(f"{name} {count}" for name, count in rows.items()) + ")")
        dim = (self.manifest.get("model") or {}).get("dim")
        if self._vectors.ndim != 2 or (dim is not None and self._vectors.shape[1] != dim):
            problems.append(f"{VECTORS_FILE} has shape {self._vectors.shape}, the manifest's model has dim {dim}")
        if len(self._productids) > 1 and not bool(np.all(np.diff(self._productids) > 0)):
            problems.append(f"{PRODUCTIDS_FILE} is not strictly increasing")
        if problems:
            raise NotReady(f"index version {self.version} at {self.directory} is inconsistent: "
                           f"{'; '.join(problems)}: rebuild it")

    def changes_on_disk(self) -> str | None:
        """What became of the files this version was loaded from, None while they are as they were read.
        The loaded copy is unaffected; this says whether a restart could load the same version again."""
        if not self.directory.is_dir():
            return f"version directory {self.directory} was removed"
        changes = []
        for name, loaded in self._signatures.items():
            try:
                now = _signature(self.directory / name)
            except FileNotFoundError:
                changes.append(f"{name} removed")
                continue
            except OSError as exc:
                changes.append(f"{name} unreadable ({exc.strerror or exc})")
                continue
            if now != loaded:
                changes.append(f"{name} changed ({loaded[1]} -> {now[1]} bytes)")
        if not changes:
            return None
        return f"files of version {self.version} in {self.directory} changed since it was loaded: {'; '.join(changes)}"

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
    """Load the live version; raises NotReady when nothing has been published yet, or when the live version's
    files are missing or damaged (naming them)."""
    for _ in range(3):  # CURRENT may flip (and the old version be pruned) between reading and opening
        version = current_version(index_root)
        if version is None:
            raise NotReady(f"no index published under {index_root} yet (run `shopclip index build`)")
        try:
            return open_version(index_root, version)
        except (NotFound, FileNotFoundError) as exc:
            if current_version(index_root) == version:  # not pruned under our feet: the live version is broken
                raise NotReady(f"index version {version} under {index_root} is incomplete: {exc}") from exc
    raise NotReady(f"index under {index_root} keeps changing; retry")


def backing_problem(index_root: str | Path, served: PublishedIndex) -> str | None:
    """Why `served`, loaded from `index_root`, could not be loaded from there again (the root or CURRENT removed,
    its files changed since they were read), None while it could or once another version is current."""
    root = Path(index_root)
    if not root.is_dir():
        return f"index root {root} no longer exists"
    current = current_version(root)
    if current is None:
        return f"{root / publish.CURRENT_FILE} is missing: no version is published any more"
    if isinstance(served, LoadedIndex) and current == served.version:
        return served.changes_on_disk()
    return None


def _signature(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime): any rewrite, truncation or replacement of a file changes it."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _read_manifest(path: Path) -> dict:
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("version"), str) \
            or not isinstance(manifest.get("index"), dict) or "kind" not in manifest["index"]:
        raise ValueError("not a shopclip index manifest (needs version and index.kind)")
    return manifest


def _read_table(path: Path):  # noqa: ANN202 - a pyarrow.Table (pyarrow loads lazily)
    """The whole Arrow file, read into memory (an OSFile, not a memory map)."""
    import pyarrow as pa

    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def _read(directory: Path, name: str, reader: Callable[[Path], T]) -> T:
    """`reader(directory / name)`; a file that is there but cannot be read raises NotReady naming it. A missing
    one stays FileNotFoundError, so `open_current` can tell a version pruned meanwhile from a broken one."""
    path = directory / name
    try:
        return reader(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - json, faiss, numpy and arrow each raise their own types
        raise NotReady(f"index file {path} is unreadable ({type(exc).__name__}: {exc})") from exc
