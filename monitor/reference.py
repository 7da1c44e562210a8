"""What a window is compared with: the previous window of the same length, or a labelled catalogue folder.

* `previous`: the log's own window just before [start, end), so the report answers "did this week change from
  last week". Every statistic applies.
* a folder (challenge layout X/Y csv + images, or the shared layout): the training data, so the report answers
  "does what the server sees still look like what the model learnt from". Text length, description and image
  presence, image file size and the code distribution (from the labels) compare; a folder has no confidence,
  abstentions or embeddings, so those statistics are skipped and the report says why.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine

from shopclip.errors import InvalidInput
from shopclip.monitor.window import EmbeddingMode, Window, read_window, utc

log = logging.getLogger(__name__)

PREVIOUS = "previous"
FOLDER_HAS_NO = "a labelled folder has no predictions"


@dataclass(frozen=True)
class Reference:
    kind: str
    """`previous` or `folder`."""
    label: str
    """Shown in reports and stored in monitor_reports.reference: `previous window ...` or `folder PATH`."""
    window: Window


def previous_reference(engine: Engine, start: datetime, end: datetime,
                       embeddings: EmbeddingMode = "centroid") -> Reference:
    """The window of the same length just before [start, end)."""
    start, end = utc(start), utc(end)
    window = read_window(engine, start - (end - start), start, embeddings)
    return Reference(PREVIOUS, f"previous window {window.label}", window)


def folder_reference(path: str | Path, field: str = "reference") -> Reference:
    """The products of a labelled catalogue folder (either layout `shopclip.catalogue_files` reads).

    Images are checked for presence, size and header only (not decoded): the reference needs their file size,
    and decoding a training set of images would take minutes. InvalidInput naming `field` when the folder is
    missing or holds no catalogue."""
    from shopclip.catalogue_files import SourceOptions, read_labelled_folder

    folder = Path(path)
    if not folder.is_dir():
        raise InvalidInput(field, f"{folder} is not a directory (use 'previous' or a labelled catalogue folder)")
    try:
        rows, rejects = read_labelled_folder(folder, SourceOptions(check_images=False))
    except InvalidInput as exc:
        raise InvalidInput(field, f"{folder}: {exc}") from None
    if rejects:
        log.warning("reference folder %s: %d rows rejected (first: %s %s: %s)", folder, len(rejects),
                    rejects[0].source_file, rejects[0].field, rejects[0].reason)
    return Reference("folder", f"folder {folder}", _folder_window(rows, str(folder)))


def _folder_window(rows: list, label: str) -> Window:  # rows: list[shopclip.catalogue_files.SourceRow]
    codes = [row.prdtypecode for row in rows]
    labelled = bool(rows) and all(code is not None for code in codes)
    unavailable = {name: FOLDER_HAS_NO for name in ("top_probability", "abstain_rate", "mean_confidence",
                                                    "centroid")}
    if not labelled:
        unavailable["top_code"] = "the reference folder has unlabelled products (no Y file)"
    return Window(
        label=label,
        text_length=np.asarray([len(row.designation) + len(row.description) for row in rows], dtype=np.int64),
        has_description=np.asarray([bool(row.description.strip()) for row in rows], dtype=bool),
        has_image=np.asarray([row.image_path is not None for row in rows], dtype=bool),
        image_bytes=np.asarray([_file_size(row.image_path) for row in rows], dtype=np.int64),
        top_code=np.asarray(codes, dtype=np.int64) if labelled else None,
        top_probability=None, abstain=None, unavailable=unavailable)


def _file_size(path: str | None) -> int:
    # As the server counts it: the encoded size of the image sent, 0 without one.
    return os.path.getsize(path) if path is not None else 0


def load_reference(engine: Engine, spec: str | Path, start: datetime, end: datetime,
                   embeddings: EmbeddingMode = "centroid", field: str = "reference") -> Reference:
    """`previous` or a folder path, as `--reference` takes it."""
    if str(spec) == PREVIOUS:
        return previous_reference(engine, start, end, embeddings)
    if not str(spec).strip():
        raise InvalidInput(field, "empty: use 'previous' or a labelled catalogue folder")
    return folder_reference(spec, field)
