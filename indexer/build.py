"""Build: embed what changed, build the FAISS index, check its recall, publish atomically.

Embedding is incremental and resumable: only rows whose content hash or model fingerprint changed are
embedded, in batches, and vectors are committed to the catalogue every `commit_every` rows, so a killed
build redoes at most one uncommitted chunk. The index itself is rebuilt from all stored vectors (cheap next
to embedding), written to a new version directory and published with `publish.commit_version`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from shopclip import __version__
from shopclip.errors import InvalidInput, NotFound, PublishRefused
from shopclip.indexer import ann, publish
from shopclip.indexer.catalogue import Catalogue, embedding_matrix
from shopclip.indexer.faults import crash_point
from shopclip.indexer.options import BuildOptions
from shopclip.indexer.publish import CODES_FILE, INDEX_FILE, NO_CODE, PRODUCTIDS_FILE, PRODUCTS_FILE, VECTORS_FILE
from shopclip.model.embedder import Embedder
from shopclip.products import ProductInput

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class BuildResult:
    version: str
    embedded: int
    manifest: dict

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- embedding


def _product_input(designation: str, description: str, image_uri: str | None) -> tuple[ProductInput, str | None]:
    """The model input of a row, and why its image was left out (None when used or absent)."""
    image, note = None, None
    if image_uri:
        try:
            image = Path(image_uri).read_bytes()
        except OSError as exc:
            note = f"image unreadable at build: {exc.strerror or exc}"
    return ProductInput(designation or "", description or "", image), note


def _embed_one_by_one(embedder: Embedder, inputs: list[ProductInput], notes: list[str | None]
                      ) -> list[np.ndarray | None]:
    """Fallback when a batch fails: isolate the bad product; a bad image falls back to its text alone."""
    vectors: list[np.ndarray | None] = []
    for i, product in enumerate(inputs):
        try:
            vectors.append(embedder.embed([product])[0])
            continue
        except InvalidInput as exc:
            notes[i] = f"{exc.field}: {exc.message}"
        text_only = ProductInput(product.designation, product.description, None)
        vectors.append(embedder.embed([text_only])[0] if product.has_image and text_only.has_text else None)
    return vectors


def _embed_batch(embedder: Embedder, rows: dict[str, list]) -> tuple[list[np.ndarray | None], list[str | None]]:
    pairs = [_product_input(*values) for values in zip(rows["designation"], rows["description"], rows["image_uri"])]
    inputs = [product for product, _ in pairs]
    notes = [note for _, note in pairs]
    try:
        return list(embedder.embed(inputs)), notes
    except InvalidInput:
        return _embed_one_by_one(embedder, inputs, notes), notes


def embed_stale(catalogue: Catalogue, embedder: Embedder, options: BuildOptions) -> int:
    """Embed every row the current model has no up-to-date vector for; returns how many were embedded."""
    stale = catalogue.stale_rows(embedder.fingerprint)
    total = stale.num_rows
    if total == 0:
        return 0
    if options.embed_threads is not None:
        import torch

        torch.set_num_threads(options.embed_threads)
    with tqdm(total=total, desc="embedding", unit="row", disable=None, mininterval=1.0) as progress:
        for start in range(0, total, options.commit_every):
            chunk = stale.slice(start, options.commit_every).to_pydict()
            vectors: list[np.ndarray | None] = []
            notes: list[str | None] = []
            for offset in range(0, len(chunk["productid"]), options.embed_batch):
                batch = {name: values[offset:offset + options.embed_batch] for name, values in chunk.items()}
                batch_vectors, batch_notes = _embed_batch(embedder, batch)
                vectors += batch_vectors
                notes += batch_notes
                progress.update(len(batch_vectors))
            catalogue.store_embeddings(chunk["productid"], vectors, chunk["content_hash"], notes,
                                       embedder.fingerprint)
            crash_point("build-after-embed-chunk")
    return total


# ---------------------------------------------------------------- index files


def _write_index_files(staging: Path, products: pa.Table, vectors: np.ndarray, index) -> None:
    """Every file goes through Python's writes, so a full disk or a file size limit fails as OSError with its
    errno and the file's name (faiss's and numpy's own writers report a short write without the reason)."""
    import faiss
    import pyarrow.feather as feather

    with _writing(staging / INDEX_FILE) as out:
        out.write(faiss.serialize_index(index))
    _save_array(staging / VECTORS_FILE, vectors)
    _save_array(staging / PRODUCTIDS_FILE, products.column("productid").to_numpy().astype(np.int64))
    codes = products.column("prdtypecode").fill_null(NO_CODE).to_numpy().astype(np.int64)
    _save_array(staging / CODES_FILE, codes)
    metadata = products.drop_columns(["embedding"])
    with _writing(staging / PRODUCTS_FILE) as out:
        feather.write_feather(metadata, out, compression="uncompressed")


@contextmanager
def _writing(path: Path) -> Iterator[BinaryIO]:
    """`path` open for writing; a failed write raises OSError naming `path` (Python's write errors name none)."""
    try:
        with path.open("wb") as out:
            yield out
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def _save_array(path: Path, array: np.ndarray) -> None:
    """`np.save`'s format, written by `_writing`."""
    array = np.ascontiguousarray(array)
    with _writing(path) as out:
        np.lib.format.write_array_header_1_0(out, np.lib.format.header_data_from_array_1_0(array))
        out.write(memoryview(array).cast("B"))


def _manifest(version: str, catalogue: Catalogue, embedder: Embedder, products: pa.Table, kind: str,
              recall: ann.RecallReport, options: BuildOptions, embedded: int, seconds: float) -> dict:
    codes = products.column("prdtypecode")
    labelled = products.num_rows - codes.null_count
    return {
        "format": 1,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shopclip_version": __version__,
        "model": {"fingerprint": embedder.fingerprint, "release": embedder.release, "dim": embedder.dim,
                  "bundle": embedder.source, "describe": embedder.describe()},
        "catalogue": {"uri": catalogue.uri, "table": catalogue.table_name, "version": catalogue.version},
        "counts": {"vectors": products.num_rows, "labelled": labelled, "unlabelled": products.num_rows - labelled,
                   "codes": len(set(codes.drop_null().to_pylist())), "embedded_this_build": embedded},
        "index": {"kind": kind, "metric": "inner_product", "search_effort": recall.effort,
                  "rerank_factor": options.ann.rerank_factor if kind != "flat" else None,
                  "recall_at_k": recall.recall, "recall_k": recall.k, "recall_queries": recall.queries,
                  "min_recall": options.min_recall, "gpu_build": options.ann.use_gpu and ann.gpu_count() > 0},
        "build_seconds": round(seconds, 3),
    }


def _index_and_check(vectors: np.ndarray, options: BuildOptions) -> tuple[object, str, ann.RecallReport]:
    kind = ann.resolve_kind(len(vectors), options.ann)
    index = ann.build_index(vectors, kind, options.ann)
    k = min(options.recall_k, len(vectors))
    queries = ann.sample_queries(vectors, options.recall_queries)
    truth = ann.exact_neighbours(vectors, queries, k, options.ann.use_gpu)
    start = options.ann.nprobe if kind == "ivf" else options.ann.ef_search
    recall = ann.tune_recall(index, kind, queries, truth, options.min_recall, start)
    if recall.recall < options.min_recall:
        raise PublishRefused(f"index: {kind} recall@{k} {recall.recall:.4f} is below the floor "
                             f"{options.min_recall} even at search effort {recall.effort}; not published")
    return index, kind, recall


def build_and_publish(catalogue: Catalogue, index_root: str | Path, embedder: Embedder,
                      options: BuildOptions | None = None) -> BuildResult:
    """Embed changed rows, build and check the index, publish it as the new current version.

    Raises Busy when another builder runs, PublishRefused when recall misses the floor, and NotFound when the
    catalogue has nothing embeddable."""
    with publish.builder_lock(index_root):
        return build_under_lock(catalogue, index_root, embedder, options)


def build_under_lock(catalogue: Catalogue, index_root: str | Path, embedder: Embedder,
                     options: BuildOptions | None = None) -> BuildResult:
    """`build_and_publish` for a caller that already holds `publish.builder_lock(index_root)`."""
    options = options or BuildOptions()
    started = time.monotonic()
    check_catalogue_not_behind(catalogue, index_root)
    embedded = embed_stale(catalogue, embedder, options)
    products = catalogue.embedded_products(embedder.fingerprint).sort_by("productid")
    if products.num_rows == 0:
        raise NotFound(f"catalogue {catalogue.uri}: no product has a vector from {embedder.fingerprint}")
    vectors = embedding_matrix(products, embedder.dim)
    index, kind, recall = _index_and_check(vectors, options)
    version = publish.new_version_name(embedder.fingerprint)
    with publish.staged_version(index_root, version) as staging:
        _write_index_files(staging, products, vectors, index)
        crash_point("build-after-index-files")
        manifest = _manifest(version, catalogue, embedder, products, kind, recall, options, embedded,
                             time.monotonic() - started)
        publish.commit_version(index_root, staging, manifest, options.keep_versions)
    log.info("published %s: %d vectors, %s, recall@%d %.4f", version, products.num_rows, kind, recall.k,
             recall.recall)
    return BuildResult(version=version, embedded=embedded, manifest=manifest)


def check_catalogue_not_behind(catalogue: Catalogue, index_root: str | Path) -> None:
    """Refuse a catalogue at an older Lance version than the one the live index was built from: the table lost
    commits (its newest version files removed, or the whole table removed and re-created empty by the next
    open), and an index built from it would silently drop products. Compares the same table at the same URI
    only; a live version whose manifest cannot be read says nothing about the catalogue."""
    current = publish.read_current(index_root)
    if current is None:
        return
    try:
        source = publish.read_manifest(index_root, current).get("catalogue") or {}
    except (OSError, ValueError, AttributeError):
        return
    built_from = source.get("version")
    if (source.get("uri"), source.get("table")) != (catalogue.uri, catalogue.table_name) \
            or not isinstance(built_from, int):
        return
    if catalogue.version < built_from:
        raise InvalidInput("catalogue", f"table {catalogue.table_name!r} at {catalogue.uri} is at version "
                                        f"{catalogue.version}, older than version {built_from} that the live index "
                                        f"{current} was built from: the table lost commits (files removed, or the "
                                        "table re-created), so an index built from it would drop products; not "
                                        "published. Restore the table, or publish a rebuilt catalogue to a new "
                                        "index root")


def needs_build(index_root: str | Path, catalogue: Catalogue, embedder: Embedder) -> bool:
    """True when nothing is published, or the live version lags the catalogue or the model. A model whose
    classifier alone changed (same fingerprint, other release) needs a build too, though its vectors are all
    known: the new version's manifest is what tells a following server to load that model. So does a live
    version whose manifest records no release (written before they were). The release covers the weights, so
    it alone tells the model apart."""
    current = publish.read_current(index_root)
    if current is None:
        return True
    manifest = publish.read_manifest(index_root, current)
    return (publish.release_in(manifest) != embedder.release
            or manifest["catalogue"]["version"] != catalogue.version)
