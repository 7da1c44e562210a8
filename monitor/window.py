"""One time window of the prediction log, read into columns: what the drift statistics compare.

A window is [start, end): the predictions whose `created_at` falls in it, and the feedback received in it. Rows
are streamed in chunks (`CHUNK_ROWS`) through SQLAlchemy Core on the schema's tables, so a month of millions of
predictions holds only its small per-row columns in memory (about 40 bytes a row). Embeddings are the exception:
they are 1-2 KB a row, so by default only their running sum is kept (the centroid), never the matrix.

A labelled catalogue folder is read into the same `Window` type (see `monitor.reference`); what a folder cannot
tell (confidence, abstentions, embeddings) is then None, and `unavailable` says why.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from shopclip.predlog.codec import EMBEDDING_DTYPE
from shopclip.predlog.schema import feedback, predictions

log = logging.getLogger(__name__)

CHUNK_ROWS = 20_000
"""Rows fetched per round trip: bounded memory per chunk, few round trips per million rows."""
PROGRESS_EVERY = 500_000
"""Log a progress line every this many predictions read."""
NO_CODE = -1
"""top_code / predicted_code of a row that has none (an empty ranking, feedback with no logged prediction)."""

EmbeddingMode = Literal["none", "centroid", "matrix"]


@dataclass
class Window:
    """Columns of the predictions (one entry per row) and of the feedback of one window, or of a reference."""

    label: str
    """What this is, for reports: `2024-05-01T00:00+00:00 .. 2024-05-08T00:00+00:00`, `folder data/train`."""
    text_length: np.ndarray
    has_description: np.ndarray
    has_image: np.ndarray
    image_bytes: np.ndarray
    top_code: np.ndarray | None
    """Predicted top code per row (NO_CODE for none); for a folder, the label. None: not known."""
    top_probability: np.ndarray | None
    """NaN for a row without a ranking. None: not known (a folder has no predictions)."""
    abstain: np.ndarray | None
    centroid: np.ndarray | None = None
    """Mean of the L2-normalised embeddings (float64), None when no row kept one or they were not read."""
    embedding_count: int = 0
    """Rows that contributed to `centroid`."""
    embeddings: np.ndarray | None = None
    """The matrix itself (float32, normalised), only when read with embeddings="matrix"."""
    model_fingerprints: dict[str, int] = field(default_factory=dict)
    model_releases: dict[str, int] = field(default_factory=dict)
    """Rows per model release (weights and classifier); rows logged before releases are not counted."""
    feedback_predicted: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """The top code each feedback row's prediction answered (NO_CODE: no logged prediction to compare with)."""
    feedback_code: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """The code the feedback gives."""
    start: datetime | None = None
    end: datetime | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    """Feature name -> why this window cannot tell it (e.g. 'top_probability': 'a labelled folder has none')."""

    @property
    def rows(self) -> int:
        return int(len(self.text_length))

    @property
    def feedback_rows(self) -> int:
        return int(len(self.feedback_code))


def read_window(engine: Engine, start: datetime, end: datetime, embeddings: EmbeddingMode = "centroid",
                chunk_rows: int = CHUNK_ROWS) -> Window:
    """The predictions created in [start, end) and the feedback received in it, from the log behind `engine`.

    `embeddings`: "none" does not read the column, "centroid" (default) keeps only the running mean,
    "matrix" also keeps every vector (for small windows only)."""
    start, end = utc(start), utc(end)
    with engine.connect() as connection:
        window = _read_predictions(connection, start, end, embeddings, chunk_rows)
        window.feedback_predicted, window.feedback_code = _read_feedback(connection, start, end, chunk_rows)
    log.info("window %s: %d predictions, %d feedback rows", window.label, window.rows, window.feedback_rows)
    return window


def window_label(start: datetime, end: datetime) -> str:
    return f"{utc(start).isoformat(timespec='minutes')} .. {utc(end).isoformat(timespec='minutes')}"


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive time is taken as UTC already (the log stores UTC, SQLite without an offset)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


# ---------------------------------------------------------------- predictions

PREDICTION_COLUMNS = (predictions.c.text_length, predictions.c.has_description, predictions.c.has_image,
                      predictions.c.image_bytes, predictions.c.top_code, predictions.c.top_probability,
                      predictions.c.abstain, predictions.c.model_fingerprint, predictions.c.model_release)


class _Columns:
    """Chunks of each column, concatenated once at the end (appending to numpy arrays would copy each time)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in (
            "text_length", "has_description", "has_image", "image_bytes", "top_code", "top_probability", "abstain")}
        self.fingerprints: Counter[str] = Counter()
        self.releases: Counter[str] = Counter()

    def add(self, rows: Sequence[Sequence]) -> None:
        text_length, has_description, has_image, image_bytes, top_code, top_probability, abstain, models, \
            releases = zip(*rows)
        self.parts["text_length"].append(np.asarray(text_length, dtype=np.int64))
        self.parts["has_description"].append(np.asarray(has_description, dtype=bool))
        self.parts["has_image"].append(np.asarray(has_image, dtype=bool))
        self.parts["image_bytes"].append(np.asarray(image_bytes, dtype=np.int64))
        self.parts["top_code"].append(np.asarray([NO_CODE if c is None else c for c in top_code], dtype=np.int64))
        self.parts["top_probability"].append(
            np.asarray([np.nan if p is None else p for p in top_probability], dtype=np.float64))
        self.parts["abstain"].append(np.asarray(abstain, dtype=bool))
        self.fingerprints.update(models)
        self.releases.update(release for release in releases if release)  # none in rows logged before releases

    def column(self, name: str, dtype: type) -> np.ndarray:
        parts = self.parts[name]
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


class _Centroid:
    """Running sum of normalised embeddings per dimension: a window that spans a model change holds vectors of
    two sizes, and only the most common size gives the centroid (the others cannot be averaged with it)."""

    def __init__(self, keep_matrix: bool) -> None:
        self.sums: dict[int, np.ndarray] = {}
        self.counts: Counter[int] = Counter()
        self.matrices: dict[int, list[np.ndarray]] = {} if keep_matrix else None  # type: ignore[assignment]

    def add(self, blobs: Sequence[bytes | None]) -> None:
        by_size: dict[int, list[bytes]] = {}
        for blob in blobs:
            if blob:
                by_size.setdefault(len(blob), []).append(bytes(blob))
        for size, same in by_size.items():
            dim = size // EMBEDDING_DTYPE.itemsize
            matrix = np.frombuffer(b"".join(same), dtype=EMBEDDING_DTYPE).reshape(len(same), dim).astype(np.float32)
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix = matrix / np.where(norms > 0, norms, 1.0)  # scale must not weigh in the mean
            self.sums[dim] = self.sums.get(dim, 0.0) + matrix.sum(axis=0, dtype=np.float64)
            self.counts[dim] += len(same)
            if self.matrices is not None:
                self.matrices.setdefault(dim, []).append(matrix)

    def result(self) -> tuple[np.ndarray | None, int, np.ndarray | None]:
        """(centroid, rows in it, matrix or None) of the most common dimension."""
        if not self.counts:
            return None, 0, None
        dim, count = self.counts.most_common(1)[0]
        if len(self.counts) > 1:
            log.warning("embeddings of %d sizes in one window %s: the centroid uses the %d rows of dimension %d",
                        len(self.counts), dict(self.counts), count, dim)
        matrix = np.concatenate(self.matrices[dim]) if self.matrices is not None else None
        return self.sums[dim] / count, count, matrix


def _read_predictions(connection: Connection, start: datetime, end: datetime, embeddings: EmbeddingMode,
                      chunk_rows: int) -> Window:
    columns = list(PREDICTION_COLUMNS)
    if embeddings != "none":
        columns.append(predictions.c.embedding)
    query = (select(*columns).where(predictions.c.created_at >= start, predictions.c.created_at < end))
    collected, centroid = _Columns(), _Centroid(keep_matrix=embeddings == "matrix")
    read = 0
    # yield_per streams (a server-side cursor on PostgreSQL): memory holds one chunk of rows at a time.
    result = connection.execution_options(yield_per=chunk_rows).execute(query)
    for chunk in result.partitions():
        collected.add([row[:len(PREDICTION_COLUMNS)] for row in chunk])
        if embeddings != "none":
            centroid.add([row[-1] for row in chunk])
        before, read = read, read + len(chunk)
        if read // PROGRESS_EVERY > before // PROGRESS_EVERY:
            log.info("window %s: %d predictions read", window_label(start, end), read)
    mean, count, matrix = centroid.result()
    unavailable = {"centroid": "embeddings were not read"} if embeddings == "none" else {}
    if embeddings != "none" and mean is None:
        unavailable["centroid"] = "no prediction in the window kept its embedding"
    return Window(label=window_label(start, end), text_length=collected.column("text_length", np.int64),
                  has_description=collected.column("has_description", bool),
                  has_image=collected.column("has_image", bool),
                  image_bytes=collected.column("image_bytes", np.int64),
                  top_code=collected.column("top_code", np.int64),
                  top_probability=collected.column("top_probability", np.float64),
                  abstain=collected.column("abstain", bool), centroid=mean, embedding_count=count,
                  embeddings=matrix, model_fingerprints=dict(collected.fingerprints),
                  model_releases=dict(collected.releases), start=start, end=end,
                  unavailable=unavailable)


# ---------------------------------------------------------------- feedback


def _read_feedback(connection: Connection, start: datetime, end: datetime,
                   chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted_code, prdtypecode) of the feedback received in [start, end)."""
    query = (select(feedback.c.predicted_code, feedback.c.prdtypecode)
             .where(feedback.c.created_at >= start, feedback.c.created_at < end))
    predicted: list[int] = []
    given: list[int] = []
    for chunk in connection.execution_options(yield_per=chunk_rows).execute(query).partitions():
        for predicted_code, code in chunk:
            predicted.append(NO_CODE if predicted_code is None else int(predicted_code))
            given.append(int(code))
    return np.asarray(predicted, dtype=np.int64), np.asarray(given, dtype=np.int64)
