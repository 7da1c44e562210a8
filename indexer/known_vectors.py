"""Vectors a model computed outside an index build, so that no product is embedded twice by one model.

The promotion gate (shopclip.registry.gate) embeds every reference product with both models. The champion's
vectors for catalogue products are already in the catalogue, and the challenger's are exactly what the index
build after its promotion would compute. `KnownVectors` gives the gate the vectors that exist (the catalogue's,
then those kept earlier) and keeps the ones it computes, one file per model fingerprint under a work folder;
`seed_catalogue` writes kept vectors into the catalogue for the products still waiting for that model, so the
build embeds only the rest. Training can leave the vectors of the products it learnt from there too
(`shopclip train --keep-vectors`): its last step computes them anyway, from its cached tower outputs.

A vector is reused only for the same productid *and* the same content hash (text and image bytes, as ingest
computes it): a product edited in between is embedded again.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shopclip.atomic import write_bytes_atomically
from shopclip.catalogue_files import SourceRow
from shopclip.indexer.catalogue import Catalogue
from shopclip.indexer.ingest import content_hash

log = logging.getLogger(__name__)


class KnownVectors:
    """The gate's source of reference vectors (registry.gate.KnownVectors) over a catalogue and a folder."""

    def __init__(self, catalogue: Catalogue, folder: str | Path) -> None:
        self.catalogue = catalogue
        self.folder = Path(folder)

    def lookup(self, fingerprint: str, products: Sequence[SourceRow]) -> dict[int, np.ndarray]:
        """Vectors of model `fingerprint` for those of `products` whose content they were computed from."""
        wanted = {p.productid: content_hash(p) for p in products}
        found: dict[int, np.ndarray] = {}
        for source in (self.catalogue.current_vectors(fingerprint), read_kept(self.folder, fingerprint)):
            for productid, digest, vector in source:
                if productid not in found and wanted.get(productid) == digest:
                    found[productid] = vector
        return found

    def keep(self, fingerprint: str, products: Sequence[SourceRow], vectors: np.ndarray) -> None:
        keep_vectors(self.folder, fingerprint, products, vectors)


def keep_vectors(folder: str | Path, fingerprint: str, products: Sequence[SourceRow], vectors: np.ndarray) -> None:
    """Remember these vectors of model `fingerprint` (added to what is kept for it; the newest wins). The gate
    keeps what it embeds; `shopclip train --keep-vectors` keeps the vectors of the products it learnt from."""
    folder = Path(folder)
    entries = {pid: (digest, vector) for pid, digest, vector in read_kept(folder, fingerprint)}
    for product, vector in zip(products, vectors, strict=True):
        entries[product.productid] = (content_hash(product), vector)
    write_kept(folder, fingerprint, entries)


def seed_catalogue(catalogue: Catalogue, folder: str | Path, fingerprint: str) -> int:
    """Store the kept vectors of model `fingerprint` for the products that lack one from it and whose content
    is unchanged; returns how many. Call it under the builder lock, before the build embeds what is stale."""
    kept = {pid: (digest, vector) for pid, digest, vector in read_kept(Path(folder), fingerprint)}
    if not kept:
        return 0
    stale = catalogue.stale_rows(fingerprint).select(["productid", "content_hash"]).to_pydict()
    matches = [(pid, digest) for pid, digest in zip(stale["productid"], stale["content_hash"])
               if pid in kept and kept[pid][0] == digest]
    catalogue.store_embeddings([pid for pid, _ in matches], [kept[pid][1] for pid, _ in matches],
                               [digest for _, digest in matches], [None] * len(matches), fingerprint)
    log.info("reused %d vectors of model %s computed before the build", len(matches), fingerprint)
    return len(matches)


def discard_kept(folder: str | Path) -> int:
    """Remove every kept file (once an index of the serving model is published, its vectors are in the
    catalogue and the others' are of no use); returns how many. Nothing else runs then (one builder, one flow
    run at a time)."""
    files = list(Path(folder).glob("*.npz"))
    for path in files:
        path.unlink(missing_ok=True)
    return len(files)


# -- the kept files ------------------------------------------------------------------------------------------

def kept_file(folder: Path, fingerprint: str) -> Path:
    return folder / f"{fingerprint}.npz"


def read_kept(folder: Path, fingerprint: str) -> list[tuple[int, str, np.ndarray]]:
    """(productid, content hash, vector) kept for this model; none when there is no file."""
    path = kept_file(folder, fingerprint)
    if not path.is_file():
        return []
    with np.load(path, allow_pickle=False) as arrays:
        return list(zip(arrays["productids"].tolist(), arrays["content_hashes"].tolist(), arrays["vectors"]))


def write_kept(folder: Path, fingerprint: str, entries: dict[int, tuple[str, np.ndarray]]) -> None:
    """Replace the model's file atomically: a reader sees the old set or the new one."""
    if not entries:
        return
    productids = sorted(entries)
    buffer = io.BytesIO()
    np.savez(buffer, productids=np.asarray(productids, dtype=np.int64),
             content_hashes=np.asarray([entries[pid][0] for pid in productids], dtype=np.str_),
             vectors=np.stack([np.asarray(entries[pid][1], dtype=np.float32) for pid in productids]))
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(kept_file(folder, fingerprint), buffer.getvalue())


__all__ = ["KnownVectors", "discard_kept", "keep_vectors", "seed_catalogue", "read_kept"]
