"""Conversions of prediction records: to table rows, and to and from the JSON lines of the writer's spill files.

Embeddings are stored as float16 little-endian bytes: half the size of float32, and centroid drift (what they are
kept for) does not need more precision. Spill files hold JSON with ISO datetimes that keep their timezone, so a
replayed record is equal to the one that was spilled (except the embedding, rounded to float16 once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np

from shopclip.errors import InvalidInput
from shopclip.predictions import PredictionRecord

EMBEDDING_DTYPE = np.dtype("<f2")


def encode_embedding(vector: Iterable[float] | np.ndarray) -> bytes:
    """`vector` as float16 little-endian bytes (2 bytes per component)."""
    array = np.asarray(vector if isinstance(vector, np.ndarray) else list(vector), dtype=np.float32)
    if array.ndim != 1:
        raise InvalidInput("embedding", f"expected a 1-d vector, got shape {array.shape}")
    return array.astype(EMBEDDING_DTYPE).tobytes()


def decode_embedding(data: bytes) -> np.ndarray:
    """The float32 vector that `encode_embedding` wrote."""
    if len(data) % EMBEDDING_DTYPE.itemsize:
        raise InvalidInput("embedding", f"{len(data)} bytes is not a whole number of float16 components")
    return np.frombuffer(data, dtype=EMBEDDING_DTYPE).astype(np.float32)


def _scalars(record: PredictionRecord) -> dict[str, Any]:
    """The fields a row and a spill line hold alike."""
    return {name: getattr(record, name) for name in (
        "request_id", "productid", "content_hash", "text_length", "has_description", "has_image", "image_bytes",
        "abstain", "model_fingerprint", "index_version", "latency_ms", "designation", "model_release")}


def record_row(record: PredictionRecord) -> dict[str, Any]:
    """A row of the `predictions` table for `record`."""
    return {
        **_scalars(record),
        "created_at": _utc(record.created_at),
        "top_code": record.top_code,
        "top_probability": record.top_probability,
        "ranked": [[int(code), float(p)] for code, p in record.predictions],
        "embedding": None if record.embedding is None else encode_embedding(record.embedding),
    }


def row_record(row: Mapping[str, Any]) -> PredictionRecord:
    """The record a `predictions` row holds (inverse of `record_row`, the embedding rounded to float16)."""
    embedding = row["embedding"]
    return PredictionRecord(
        request_id=row["request_id"], created_at=_aware(row["created_at"]), productid=row["productid"],
        content_hash=row["content_hash"], text_length=row["text_length"],
        has_description=bool(row["has_description"]), has_image=bool(row["has_image"]),
        image_bytes=row["image_bytes"], predictions=tuple((int(c), float(p)) for c, p in row["ranked"]),
        abstain=bool(row["abstain"]), model_fingerprint=row["model_fingerprint"],
        index_version=row["index_version"], latency_ms=float(row["latency_ms"]),
        embedding=None if embedding is None else tuple(float(x) for x in decode_embedding(bytes(embedding))),
        designation=row.get("designation") or "", model_release=row.get("model_release") or "")


def record_to_json(record: PredictionRecord) -> dict[str, Any]:
    """`record` as a JSON-serialisable dict (one line of a spill file)."""
    return {
        **_scalars(record),
        "created_at": _aware(record.created_at).isoformat(),
        "predictions": [[int(code), float(p)] for code, p in record.predictions],
        "embedding": None if record.embedding is None else list(record.embedding),
    }


def record_from_json(data: Mapping[str, Any]) -> PredictionRecord:
    """The record `record_to_json` wrote; InvalidInput naming the field when one is missing or malformed."""
    try:
        created_at = datetime.fromisoformat(data["created_at"])
        embedding = data.get("embedding")
        return PredictionRecord(
            request_id=str(data["request_id"]), created_at=_aware(created_at), productid=data["productid"],
            content_hash=str(data["content_hash"]), text_length=int(data["text_length"]),
            has_description=bool(data["has_description"]), has_image=bool(data["has_image"]),
            image_bytes=int(data["image_bytes"]),
            predictions=tuple((int(c), float(p)) for c, p in data["predictions"]),
            abstain=bool(data["abstain"]), model_fingerprint=str(data["model_fingerprint"]),
            index_version=str(data["index_version"]), latency_ms=float(data["latency_ms"]),
            embedding=None if embedding is None else tuple(float(x) for x in embedding),
            # spill files of a v1 writer have no designation, those written before releases no model_release
            designation=str(data.get("designation") or ""), model_release=str(data.get("model_release") or ""))
    except KeyError as exc:
        raise InvalidInput(str(exc.args[0]), "missing from the spilled prediction record") from None
    except (TypeError, ValueError) as exc:
        raise InvalidInput("prediction_record", f"malformed spilled record: {exc}") from None


def _utc(moment: datetime) -> datetime:
    # SQLite keeps no offset, so rows carry UTC: a time with another offset would otherwise shift when read back.
    return _aware(moment).astimezone(timezone.utc)


def _aware(moment: datetime) -> datetime:
    # SQLite hands datetimes back naive (it stores no offset); everything this package writes is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
