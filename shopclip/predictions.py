"""What the server tells the prediction log, and the interface it tells it through.

The server builds a `PredictionRecord` for every classified product and hands a `Feedback` over for every
confirmation or correction it receives; it never imports the log's implementation (`shopclip.predlog`), only
this protocol, so serving works without a database and the log's dependencies (SQLAlchemy, psycopg) stay out of
the server's import graph. Plain dataclasses, no heavy imports: the client side and the monitor read them too.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from shopclip.errors import NotConfigured
from shopclip.products import ProductInput


def new_id() -> str:
    """A request or feedback id: 32 lowercase hex digits (a random UUID), unique without coordination."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def content_hash(product: ProductInput) -> str:
    """Identifies a product by what was sent (text and image bytes), for products without a productid: equal
    content gives an equal hash, so repeated listings can be grouped without storing their text."""
    digest = hashlib.sha256()
    for part in (product.designation.encode(), product.description.encode(), product.image or b""):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class PredictionRecord:
    """One classified product: one row of the `predictions` table."""

    request_id: str
    """Returned to the caller in ClassifyResponse.request_id; the key feedback may refer to."""
    created_at: datetime
    """UTC, when the answer was computed."""
    productid: int | None
    """The caller's id of the listing, when it sent one."""
    content_hash: str
    text_length: int
    """Characters of designation + description as received."""
    has_description: bool
    has_image: bool
    image_bytes: int
    """Encoded size of the image (0 without one)."""
    predictions: tuple[tuple[int, float], ...]
    """(prdtypecode, probability), best first, as answered."""
    abstain: bool
    model_fingerprint: str
    index_version: str
    latency_ms: float
    """From the request's arrival to its answer, as the server measured it."""
    embedding: tuple[float, ...] | None = None
    """The product's vector (for centroid drift); None when the server does not keep it."""
    designation: str = ""
    """The title as received, so that a reviewer sees what was classified (descriptions and images are not kept)."""
    model_release: str = ""
    """`Embedder.release` of the model that answered: the weights and the classifier ("" in rows logged before
    releases were recorded)."""

    @property
    def top_code(self) -> int | None:
        return self.predictions[0][0] if self.predictions else None

    @property
    def top_probability(self) -> float | None:
        return self.predictions[0][1] if self.predictions else None

    @classmethod
    def of(cls, product: ProductInput, productid: int | None, predictions: Sequence[tuple[int, float]],
           abstain: bool, model_fingerprint: str, index_version: str, latency_ms: float,
           embedding: Iterable[float] | None = None, request_id: str | None = None,
           created_at: datetime | None = None, model_release: str = "") -> "PredictionRecord":
        return cls(request_id=request_id or new_id(), created_at=created_at or utc_now(), productid=productid,
                   content_hash=content_hash(product),
                   text_length=len(product.designation) + len(product.description),
                   has_description=bool(product.description.strip()), has_image=product.image is not None,
                   image_bytes=len(product.image or b""),
                   predictions=tuple((int(c), float(p)) for c, p in predictions), abstain=bool(abstain),
                   model_fingerprint=model_fingerprint, index_version=index_version, latency_ms=float(latency_ms),
                   embedding=None if embedding is None else _floats(embedding),
                   designation=product.designation, model_release=model_release)


def _floats(values: Iterable[float]) -> tuple[float, ...]:
    """A tuple of Python floats; `ndarray.tolist()` already is one (and this runs once per classified product)."""
    values = tuple(values)
    return values if all(type(x) is float for x in values[:1]) else tuple(map(float, values))


@dataclass(frozen=True)
class Feedback:
    """A confirmation or correction of a product's code: one row of the `feedback` table.

    At least one of `productid` and `request_id` is set. `product` carries the listing's content when the
    catalogue may not hold it yet, so that the correction can become a labelled catalogue row."""

    prdtypecode: int
    productid: int | None = None
    request_id: str | None = None
    product: ProductInput | None = None
    actor: str = ""
    """Who said so: `shop-backend`, `admin:alice`, ... (free text, for the audit trail)."""
    feedback_id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utc_now)


@dataclass(frozen=True)
class FeedbackReceipt:
    """What the log answers once feedback is stored."""

    feedback_id: str
    prdtypecode: int
    """The code the feedback gives."""
    productid: int | None
    """The productid given, or the one of the prediction `request_id` names."""
    predicted_code: int | None
    """The top code the referenced prediction answered (None when no prediction was found)."""

    @property
    def was_correct(self) -> bool | None:
        """Whether the prediction answered the code the feedback gives (None: no prediction to compare)."""
        return None if self.predicted_code is None else self.predicted_code == self.prdtypecode


class PredictionLog(Protocol):
    """The prediction log as the server sees it (implemented by `shopclip.predlog.PredictionLogWriter`)."""

    def record(self, records: Sequence[PredictionRecord]) -> None:
        """Queue records to be written; never blocks on the database and never raises."""

    def add_feedback(self, feedback: Feedback) -> FeedbackReceipt:
        """Store feedback durably before returning (blocking: the server calls it on a worker thread).
        Raises `shopclip.errors.NotReady` while the database cannot be reached, `NotFound` for a request_id
        that names no logged prediction."""

    def collectors(self) -> Sequence[object]:
        """prometheus_client collectors (queue depth, rows written, spilled, pending) for the server's registry."""

    def close(self, timeout_s: float = 10.0) -> None:
        """Write or spill everything queued, then stop."""


def open_prediction_log(url: str, spill_dir: str) -> PredictionLog:
    """The prediction log at `url` (postgresql://... or sqlite:///path), spilling to `spill_dir` while its
    database is down. The implementation is looked up here, at run time, so that the server depends on this
    contract only and runs without the log's packages installed when it is not asked to log."""
    try:
        from shopclip.predlog.writer import open_prediction_log as open_writer
    except ImportError as exc:
        raise NotConfigured(f"--prediction-log needs the predlog extra (pip install 'shopclip[predlog]'): {exc}") \
            from None
    return open_writer(url, spill_dir)
