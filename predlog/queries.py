"""Read queries of the admin console over the prediction log: the review queue (predictions a person should look
at) and the feedback given lately. SQLAlchemy Core, the same statements on SQLite and PostgreSQL.

A prediction needs review when the server abstained or its top probability is low. It leaves the queue once a
person confirmed or corrected it: a feedback row that names its request_id, or feedback on the same productid given
after it was answered (a later correction of the product settles every earlier answer for it). Both are NOT EXISTS
subqueries, which PostgreSQL plans as anti-joins (on SQLite the request_id one is a NOT IN, see
`_reviewed_by_request`), and the queue is read newest first down the `predictions_created_at` index, stopping at
`limit`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import and_, exists, or_, select, true
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from shopclip.errors import InvalidInput
from shopclip.predlog.schema import feedback, predictions

Order = Literal["recent", "least_confident"]
ORDERS: tuple[Order, ...] = ("recent", "least_confident")
DEFAULT_MAX_PROBABILITY = 0.5
MAX_LIMIT = 10_000
"""A page of the console shows at most this many rows; more is a query gone wrong, refused rather than run."""


@dataclass(frozen=True)
class ReviewItem:
    """One logged answer awaiting a person's confirmation or correction."""

    request_id: str
    created_at: datetime
    """UTC."""
    productid: int | None
    designation: str
    """The title as classified ("" when the product had none, e.g. image only)."""
    top_code: int | None
    top_probability: float | None
    ranked: tuple[tuple[int, float], ...]
    """(prdtypecode, probability) as answered, best first."""
    abstain: bool
    model_fingerprint: str
    model_release: str = ""
    """"" for an answer logged before releases were recorded."""


@dataclass(frozen=True)
class ReviewedItem:
    """One feedback row, with the title of the product it is about when known."""

    feedback_id: str
    created_at: datetime
    """UTC."""
    request_id: str | None
    productid: int | None
    prdtypecode: int
    """The code the person gave."""
    predicted_code: int | None
    """What the server had answered (None without a logged prediction)."""
    actor: str
    designation: str
    """From the feedback itself, else from the prediction it refers to; "" when neither has one."""
    applied_at: datetime | None
    """When it was written into the catalogue (None: not yet)."""

    @property
    def was_correct(self) -> bool | None:
        return None if self.predicted_code is None else self.predicted_code == self.prdtypecode


def review_queue(engine: Engine, *, limit: int = 50, order: Order = "recent",
                 max_probability: float = DEFAULT_MAX_PROBABILITY, since: datetime | None = None,
                 include_reviewed: bool = False) -> list[ReviewItem]:
    """Predictions that abstained or whose top probability is below `max_probability`, answered at or after
    `since`, newest first (`order="recent"`) or lowest probability first (`"least_confident"`, ties newest first).
    Already reviewed ones are left out unless `include_reviewed`. InvalidInput names a bad argument."""
    _check_limit(limit)
    if order not in ORDERS:
        raise InvalidInput("order", f"must be one of {', '.join(ORDERS)}, got {order!r}")
    if not 0.0 <= max_probability <= 1.0:
        raise InvalidInput("max_probability", f"must be in [0, 1], got {max_probability}")
    query = select(*_REVIEW_COLUMNS).where(_needs_review(max_probability))
    if since is not None:
        query = query.where(predictions.c.created_at >= _utc(since, "since"))
    if not include_reviewed:
        query = query.where(~_reviewed_by_request(engine.dialect.name), ~_reviewed_by_product())
    newest = (predictions.c.created_at.desc(), predictions.c.request_id.desc())
    if order == "least_confident":
        query = query.order_by(predictions.c.top_probability.asc().nulls_first(), *newest)
    else:
        query = query.order_by(*newest)
    with engine.connect() as connection:
        return [_review_item(row._mapping) for row in connection.execute(query.limit(limit))]


def recent_feedback(engine: Engine, limit: int = 50) -> list[ReviewedItem]:
    """The latest `limit` feedback rows, newest first, each with its product's title when known."""
    _check_limit(limit)
    title = select(predictions.c.designation).where(predictions.c.request_id == feedback.c.request_id) \
        .scalar_subquery()
    query = (select(feedback.c.feedback_id, feedback.c.created_at, feedback.c.request_id, feedback.c.productid,
                    feedback.c.prdtypecode, feedback.c.predicted_code, feedback.c.actor, feedback.c.applied_at,
                    feedback.c.designation.label("given_title"), title.label("predicted_title"))
             .order_by(feedback.c.created_at.desc(), feedback.c.feedback_id.desc()).limit(limit))
    with engine.connect() as connection:
        return [_reviewed_item(row._mapping) for row in connection.execute(query)]


_REVIEW_COLUMNS = (predictions.c.request_id, predictions.c.created_at, predictions.c.productid,
                   predictions.c.designation, predictions.c.top_code, predictions.c.top_probability,
                   predictions.c.ranked, predictions.c.abstain, predictions.c.model_fingerprint,
                   predictions.c.model_release)


def _needs_review(max_probability: float) -> ColumnElement[bool]:
    # An answer without any prediction (top_probability NULL) is as uncertain as it gets.
    return or_(predictions.c.abstain == true(), predictions.c.top_probability.is_(None),
               predictions.c.top_probability < max_probability)


def _reviewed_by_request(dialect: str) -> ColumnElement[bool]:
    if dialect == "sqlite":
        # feedback.request_id has no index: SQLite would scan feedback once per queued row for a correlated EXISTS,
        # while an uncorrelated IN is read once into a temporary index. PostgreSQL plans EXISTS as a hash anti-join.
        return predictions.c.request_id.in_(select(feedback.c.request_id).where(feedback.c.request_id.is_not(None)))
    return exists().where(feedback.c.request_id == predictions.c.request_id)


def _reviewed_by_product() -> ColumnElement[bool]:
    # Feedback given before the answer does not settle it: the product was classified again since.
    same_product = and_(predictions.c.productid.is_not(None), feedback.c.productid == predictions.c.productid,
                        feedback.c.created_at >= predictions.c.created_at)
    return exists().where(same_product)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput("limit", f"must be in 1..{MAX_LIMIT}, got {limit}")


def _review_item(row: Mapping[str, Any]) -> ReviewItem:
    return ReviewItem(request_id=row["request_id"], created_at=_aware(row["created_at"]),
                      productid=row["productid"], designation=row["designation"] or "", top_code=row["top_code"],
                      top_probability=row["top_probability"],
                      ranked=tuple((int(code), float(p)) for code, p in row["ranked"] or ()),
                      abstain=bool(row["abstain"]), model_fingerprint=row["model_fingerprint"],
                      model_release=row["model_release"] or "")


def _reviewed_item(row: Mapping[str, Any]) -> ReviewedItem:
    return ReviewedItem(feedback_id=row["feedback_id"], created_at=_aware(row["created_at"]),
                        request_id=row["request_id"], productid=row["productid"], prdtypecode=row["prdtypecode"],
                        predicted_code=row["predicted_code"], actor=row["actor"],
                        designation=row["given_title"] or row["predicted_title"] or "",
                        applied_at=None if row["applied_at"] is None else _aware(row["applied_at"]))


def _utc(moment: datetime, field: str) -> datetime:
    if moment.tzinfo is None:
        raise InvalidInput(field, f"needs a timezone (the log stores UTC), got naive {moment.isoformat()}")
    return moment.astimezone(timezone.utc)


def _aware(moment: datetime) -> datetime:
    # SQLite hands datetimes back without an offset; the log is written in UTC only.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
