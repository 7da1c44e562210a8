"""The prediction log's reads and writes on one database (SQLite or PostgreSQL), SQLAlchemy Core.

Every write is idempotent on its key: a prediction replayed from a spill file, or feedback sent again after a
timeout, is ignored rather than duplicated (INSERT ... ON CONFLICT DO NOTHING, the same statement on both
dialects). A database that cannot be reached is `NotReady`; the writer (predlog.writer) turns that into spilling,
the feedback call into an UNAVAILABLE answer.

Time-window queries for monitoring live in `shopclip.monitor`, not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shopclip.errors import InvalidInput, NotFound, NotReady
from shopclip.predictions import Feedback, FeedbackReceipt, PredictionRecord, utc_now
from shopclip.predlog.codec import record_row, row_record
from shopclip.predlog.db import open_database
from shopclip.predlog.schema import feedback as feedback_table
from shopclip.predlog.schema import predictions

INSERT_CHUNK = 500
"""Rows per INSERT statement: bounded statement size and bound-parameter count (SQLite allows 32766)."""


@dataclass(frozen=True)
class FeedbackRow:
    """One row of the `feedback` table."""

    feedback_id: str
    created_at: datetime
    request_id: str | None
    productid: int | None
    prdtypecode: int
    predicted_code: int | None
    actor: str
    designation: str | None
    description: str | None
    image: bytes | None = field(repr=False)
    applied_at: datetime | None


class PredictionStore:
    """Predictions and feedback in the database behind `engine` (whose schema is already migrated)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, field: str = "prediction_log") -> PredictionStore:
        """A store on `url`, its schema migrated; NotReady when the database cannot be reached."""
        return cls(open_database(url, field))

    def dispose(self) -> None:
        """Closes the engine's pooled connections."""
        self.engine.dispose()

    def insert_predictions(self, records: Sequence[PredictionRecord]) -> int:
        """Writes `records` in one transaction, ignoring request_ids already stored; returns how many were new."""
        rows = list({record.request_id: record_row(record) for record in records}.values())
        if not rows:
            return 0
        inserted = 0
        with self._transaction() as connection:
            for start in range(0, len(rows), INSERT_CHUNK):
                statement = self._insert(predictions).on_conflict_do_nothing(index_elements=["request_id"])
                # RETURNING names only the rows actually inserted: the count excludes ignored duplicates.
                result = connection.execute(statement.returning(predictions.c.request_id),
                                            rows[start:start + INSERT_CHUNK])
                inserted += len(result.all())
        return inserted

    def add_feedback(self, feedback: Feedback) -> FeedbackReceipt:
        """Stores `feedback` with the top code of the prediction it refers to (by request_id, else the latest
        of its productid). NotFound for a request_id with no logged prediction; InvalidInput when neither
        productid nor request_id is given; NotReady when the database cannot be reached. Sending the same
        feedback_id again stores nothing new and answers the same receipt."""
        if feedback.request_id is None and feedback.productid is None:
            raise InvalidInput("productid", "feedback needs a productid or a request_id")
        with self._transaction() as connection:
            productid, predicted_code = self._referenced_prediction(connection, feedback)
            product = feedback.product
            row = {"feedback_id": feedback.feedback_id, "created_at": _utc(feedback.created_at),
                   "request_id": feedback.request_id, "productid": productid,
                   "prdtypecode": int(feedback.prdtypecode), "predicted_code": predicted_code,
                   "actor": feedback.actor, "designation": product.designation if product else None,
                   "description": product.description if product else None,
                   "image": product.image if product else None, "applied_at": None}
            connection.execute(self._insert(feedback_table).on_conflict_do_nothing(
                index_elements=["feedback_id"]), [row])
        return FeedbackReceipt(feedback_id=feedback.feedback_id, prdtypecode=int(feedback.prdtypecode),
                               productid=productid, predicted_code=predicted_code)

    def _referenced_prediction(self, connection: Connection, feedback: Feedback) -> tuple[int | None, int | None]:
        """(productid, predicted top code) for `feedback`."""
        if feedback.request_id is not None:
            found = connection.execute(
                select(predictions.c.productid, predictions.c.top_code)
                .where(predictions.c.request_id == feedback.request_id)).first()
            if found is None:
                raise NotFound(f"request_id: no logged prediction has request_id {feedback.request_id!r}")
            if feedback.productid is not None and found.productid not in (None, feedback.productid):
                raise InvalidInput("productid", f"{feedback.productid} differs from productid {found.productid} "
                                                f"of the prediction {feedback.request_id!r}")
            return (feedback.productid if feedback.productid is not None else found.productid), found.top_code
        latest = connection.execute(
            select(predictions.c.top_code).where(predictions.c.productid == feedback.productid)
            .order_by(predictions.c.created_at.desc()).limit(1)).first()
        return feedback.productid, None if latest is None else latest.top_code

    def pending_corrections(self, limit: int | None = None) -> list[FeedbackRow]:
        """Feedback not yet applied to the catalogue, oldest first (at most `limit` rows)."""
        if limit is not None and limit < 0:
            raise InvalidInput("limit", f"must be >= 0, got {limit}")
        query = (select(feedback_table).where(feedback_table.c.applied_at.is_(None))
                 .order_by(feedback_table.c.created_at, feedback_table.c.feedback_id))
        if limit is not None:
            query = query.limit(limit)
        with self._transaction() as connection:
            return [_feedback_row(row._mapping) for row in connection.execute(query)]

    def mark_applied(self, feedback_ids: Iterable[str], at: datetime | None = None) -> int:
        """Records that these feedback rows were written into the catalogue (at `at`, default now); rows already
        marked keep their first time. Returns how many rows were marked."""
        ids = sorted(set(feedback_ids))
        if not ids:
            return 0
        moment = _utc(at or utc_now())
        marked = 0
        with self._transaction() as connection:
            for start in range(0, len(ids), INSERT_CHUNK):
                result = connection.execute(
                    update(feedback_table)
                    .where(feedback_table.c.feedback_id.in_(ids[start:start + INSERT_CHUNK]))
                    .where(feedback_table.c.applied_at.is_(None))
                    .values(applied_at=moment))
                marked += result.rowcount
        return marked

    def count_predictions(self) -> int:
        with self._transaction() as connection:
            return int(connection.execute(select(func.count()).select_from(predictions)).scalar_one())

    def get_prediction(self, request_id: str) -> PredictionRecord | None:
        """The logged prediction `request_id` names, or None (its embedding as stored: float16 precision)."""
        with self._transaction() as connection:
            row = connection.execute(select(predictions).where(predictions.c.request_id == request_id)).first()
        return None if row is None else row_record(row._mapping)

    def _insert(self, table: Any) -> Any:
        """The dialect's INSERT, which has on_conflict_do_nothing (the generic one does not)."""
        name = self.engine.dialect.name
        if name == "postgresql":
            return postgresql.insert(table)
        if name == "sqlite":
            return sqlite.insert(table)
        raise InvalidInput("prediction_log", f"unsupported database dialect {name!r}")

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction; an unreachable database (refused, dropped, timed out) is NotReady."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            raise NotReady(f"prediction log database unreachable: {_one_line(exc)}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise NotReady(f"prediction log database connection lost: {_one_line(exc)}") from exc
            raise


def _feedback_row(row: Any) -> FeedbackRow:
    image = row["image"]
    return FeedbackRow(feedback_id=row["feedback_id"], created_at=_aware(row["created_at"]),
                       request_id=row["request_id"], productid=row["productid"], prdtypecode=row["prdtypecode"],
                       predicted_code=row["predicted_code"], actor=row["actor"], designation=row["designation"],
                       description=row["description"], image=None if image is None else bytes(image),
                       applied_at=None if row["applied_at"] is None else _aware(row["applied_at"]))


def _aware(moment: datetime) -> datetime:
    # SQLite hands datetimes back without an offset; this package writes UTC only.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _utc(moment: datetime) -> datetime:
    return _aware(moment).astimezone(timezone.utc)


def _one_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return " ".join(str(original).split())[:300]
