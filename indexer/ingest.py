"""Ingest a catalogue folder into the LanceDB catalogue: validate, write rejects, upsert what changed.

Idempotent: a row whose content and metadata are unchanged is not written, so ingesting the same folder
twice leaves the table at the same version. All added and updated rows go in one commit: a killed ingest
leaves the previous table version, never half a drop.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from shopclip.indexer.catalogue import METADATA_SCHEMA, Catalogue, utc_now
from shopclip.indexer.faults import crash_point
from shopclip.catalogue_files import Reject, SourceOptions, SourceRow, read_labelled_folder
from shopclip.objectstore import ObjectInfo, ObjectStore, is_s3, join, name_of


@dataclass(frozen=True)
class IngestSummary:
    source: str
    source_batch: str
    added: int
    updated: int
    unchanged: int
    rejected: int
    rejects_file: str | None
    catalogue_version: int

    @property
    def changed(self) -> int:
        return self.added + self.updated

    def to_dict(self) -> dict:
        return asdict(self)


def _digest(*parts: bytes | str | None) -> str:
    """Unambiguous hash of a sequence of fields (each length-prefixed; None differs from empty)."""
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        if part is None:
            data = b"\x00none"
        elif isinstance(part, str):
            data = part.encode("utf-8", "surrogatepass")
        else:
            data = part
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()


def content_hash(row: SourceRow) -> str:
    """Hash of what the model sees (text and image bytes): a change here means re-embedding."""
    image_bytes = Path(row.image_path).read_bytes() if row.image_path else None
    return _digest(row.designation, row.description, image_bytes)


def row_hash(row: SourceRow, content: str) -> str:
    """Hash of everything stored about a product except bookkeeping: a change here means an update."""
    return _digest(content, str(row.prdtypecode), str(row.imageid), row.image_path, row.image_note)


def write_rejects(rejects: list[Reject], path: Path) -> None:
    """Rejects as csv (source_file,row_number,productid,field,reason), replaced atomically."""
    from shopclip.atomic import replace_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    with replace_atomically(path) as temporary:
        with temporary.open("w", newline="", encoding="utf-8", errors="replace") as out:
            writer = csv.writer(out)
            writer.writerow(["source_file", "row_number", "productid", "field", "reason"])
            for reject in rejects:
                writer.writerow([reject.source_file, reject.row_number, reject.productid, reject.field,
                                 reject.reason])


def _changed_rows(rows: list[SourceRow], catalogue: Catalogue, source_batch: str
                  ) -> tuple[pa.Table, int, int]:
    """(rows to write, added count, updated count): products new to the catalogue or whose row hash moved."""
    states = catalogue.row_states().to_pydict()
    known = {pid: (rhash, created) for pid, rhash, created
             in zip(states["productid"], states["row_hash"], states["created_at"])}
    now = utc_now()
    columns: dict[str, list] = {name: [] for name in METADATA_SCHEMA.names}
    added = updated = 0
    for row in tqdm(rows, desc="hashing", unit="row", disable=None, mininterval=1.0):
        content = content_hash(row)
        rhash = row_hash(row, content)
        previous = known.get(row.productid)
        if previous is not None and previous[0] == rhash:
            continue
        added += previous is None
        updated += previous is not None
        values = {"productid": row.productid, "designation": row.designation, "description": row.description,
                  "imageid": row.imageid, "image_uri": row.image_path, "image_note": row.image_note,
                  "prdtypecode": row.prdtypecode, "content_hash": content, "row_hash": rhash,
                  "source_batch": source_batch, "created_at": previous[1] if previous else now, "updated_at": now}
        for name, value in values.items():
            columns[name].append(value)
    return pa.table(columns, schema=METADATA_SCHEMA), added, updated


def ingest_folder(folder: str | Path, catalogue: Catalogue, rejects_path: str | Path | None = None,
                  source_batch: str | None = None, options: SourceOptions | None = None,
                  exclude_productids: Collection[int] = ()) -> IngestSummary:
    """Validate a catalogue folder and upsert its good rows; rejects go to `rejects_path` (csv) if given.

    `exclude_productids` are left out of the catalogue altogether (and of the counts): an evaluation keeps
    its held-out products out of the index so that k-NN cannot find the very product it is asked about.
    """
    folder = Path(folder)
    source_batch = source_batch or folder.resolve().name
    rows, rejects = read_labelled_folder(folder, options)
    if exclude_productids:
        excluded = set(exclude_productids)
        rows = [row for row in rows if row.productid not in excluded]
    changes, added, updated = _changed_rows(rows, catalogue, source_batch)
    if rejects_path is not None:
        write_rejects(rejects, Path(rejects_path))
    crash_point("ingest-before-commit")
    catalogue.upsert_metadata(changes)
    return IngestSummary(source=str(folder), source_batch=source_batch, added=added, updated=updated,
                         unchanged=len(rows) - added - updated, rejected=len(rejects),
                         rejects_file=str(rejects_path) if rejects_path is not None else None,
                         catalogue_version=catalogue.version)


REJECTS_FILE = "rejects.csv"
"""Name of the rejects file written beside an s3:// drop, in the drop's prefix, where its administrator looks.
(Its name is no catalogue file of either layout, and drop listings leave it out of the drop's signature.)"""


def is_drop_object(key: str) -> bool:
    """What a drop in the store is made of: everything but the rejects file written back into it."""
    return key != REJECTS_FILE


def stage_drop(source: str, staging: Path, objects: list[ObjectInfo] | None = None) -> Path:
    """The local folder to ingest `source` from: itself when local; an s3:// drop is mirrored into `staging`
    (only what changed is fetched). The mirror is kept: catalogue rows refer to its image files."""
    if not is_s3(source):
        return Path(source)
    return ObjectStore().download(source, staging, keep=is_drop_object, objects=objects).folder


def ingest_drop(source: str, catalogue: Catalogue, rejects_path: Path, staging: Path,
                options: SourceOptions | None = None, source_batch: str | None = None,
                objects: list[ObjectInfo] | None = None) -> dict:
    """`ingest_folder` for a drop folder or an s3:// drop prefix (`objects`: its listing, if already made). An
    s3:// drop is staged first, and its rejects file is written to `rejects_path` and then beside the drop
    (`<drop>/rejects.csv`) once the ingest has committed. The summary names the drop as given."""
    folder = stage_drop(source, staging, objects)
    summary = ingest_folder(folder, catalogue, rejects_path=rejects_path, options=options,
                            source_batch=source_batch or name_of(source)).to_dict()
    if is_s3(source):
        rejects_uri = join(source, REJECTS_FILE)
        ObjectStore().put_file(rejects_path, rejects_uri)
        summary.update(source=source, staged=str(folder), rejects_file=rejects_uri)
    return summary


def summary_line(summary: IngestSummary) -> str:
    return json.dumps(summary.to_dict(), sort_keys=True)
