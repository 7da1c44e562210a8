"""The prediction log's tables, one definition for SQLite and PostgreSQL (SQLAlchemy Core), and their versioned
migrations.

`MIGRATIONS` is the only way the schema changes: each entry has a version, a one-line description and a function
applied inside one transaction; `schema_migrations` records which versions a database has. A database newer than
this code (a version we do not know) is refused rather than written to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, Float, Index, Integer, LargeBinary, MetaData,
                        String, Table, Text, inspect, text)
from sqlalchemy.engine import Connection

metadata = MetaData()

predictions = Table(
    "predictions", metadata,
    Column("request_id", String(32), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("productid", BigInteger, nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("text_length", Integer, nullable=False),
    Column("has_description", Boolean, nullable=False),
    Column("has_image", Boolean, nullable=False),
    Column("image_bytes", Integer, nullable=False),
    Column("top_code", Integer, nullable=True),
    Column("top_probability", Float, nullable=True),
    Column("ranked", JSON, nullable=False),  # [[code, probability], ...] best first
    Column("abstain", Boolean, nullable=False),
    Column("model_fingerprint", String(128), nullable=False),
    Column("index_version", String(128), nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("embedding", LargeBinary, nullable=True),  # float16 little-endian, see predlog.codec
    Column("designation", Text, nullable=True),  # v2: the title, so the review queue can show the product
    Column("model_release", String(128), nullable=True),  # v4: the classifier too (Embedder.release)
    Index("predictions_created_at", "created_at"),
    Index("predictions_productid", "productid"),
)

feedback = Table(
    "feedback", metadata,
    Column("feedback_id", String(32), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("request_id", String(32), nullable=True),
    Column("productid", BigInteger, nullable=True),
    Column("prdtypecode", Integer, nullable=False),
    Column("predicted_code", Integer, nullable=True),  # the referenced prediction's top code, for live accuracy
    Column("actor", Text, nullable=False),
    Column("designation", Text, nullable=True),  # the listing's content, when sent, so it can join the catalogue
    Column("description", Text, nullable=True),
    Column("image", LargeBinary, nullable=True),
    Column("applied_at", DateTime(timezone=True), nullable=True),  # when it was written into the catalogue
    Index("feedback_created_at", "created_at"),
    Index("feedback_productid", "productid"),
    Index("feedback_request_id", "request_id"),  # v3: the review queue leaves out answers already reviewed
)

monitor_reports = Table(
    "monitor_reports", metadata,
    Column("report_id", String(32), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("reference", Text, nullable=False),  # what the window was compared with
    Column("statistics", JSON, nullable=False),
    Column("alerts", JSON, nullable=False),  # names of statistics over their threshold
    Column("html_path", Text, nullable=True),
    Index("monitor_reports_created_at", "created_at"),
)

schema_migrations = Table(
    "schema_migrations", metadata,
    Column("version", Integer, primary_key=True),
    Column("description", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _create_v1(connection: Connection) -> None:
    for table in (predictions, feedback, monitor_reports):
        table.create(connection, checkfirst=True)


def _add_designation_v2(connection: Connection) -> None:
    # v1 creates the tables from the current definitions: a database created at v2 or later has the column already.
    if "designation" not in {c["name"] for c in inspect(connection).get_columns("predictions")}:
        connection.execute(text("ALTER TABLE predictions ADD COLUMN designation TEXT"))


def _index_feedback_request_id_v3(connection: Connection) -> None:
    next(i for i in feedback.indexes if i.name == "feedback_request_id").create(connection, checkfirst=True)


def _add_model_release_v4(connection: Connection) -> None:
    if "model_release" not in {c["name"] for c in inspect(connection).get_columns("predictions")}:
        connection.execute(text("ALTER TABLE predictions ADD COLUMN model_release VARCHAR(128)"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "predictions, feedback and monitor_reports", _create_v1),
    Migration(2, "predictions.designation (the review queue shows the product's title)", _add_designation_v2),
    Migration(3, "index feedback.request_id (the review queue's NOT EXISTS)", _index_feedback_request_id_v3),
    Migration(4, "predictions.model_release (a retrain may change the classifier alone)", _add_model_release_v4),
)
"""In version order; never edit an entry once released, append a new one."""

SCHEMA_VERSION = MIGRATIONS[-1].version
