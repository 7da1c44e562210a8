"""Opening the prediction log's database from a URL, and bringing its schema up to date.

`postgresql://user:pass@host:port/db` in production (driven by psycopg 3), `sqlite:///path/to/log.db` as the
embedded default. Every part that reads or writes the log (the server's writer, feedback, `shopclip monitor`)
opens it here, so URL rules and migrations live in one place.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from shopclip.errors import InvalidInput, NotReady
from shopclip.predictions import utc_now
from shopclip.predlog.schema import MIGRATIONS, SCHEMA_VERSION, schema_migrations

log = logging.getLogger(__name__)

SCHEMES = ("postgresql", "sqlite")
CONNECT_TIMEOUT_S = 5
"""A database that does not answer within this is down: the writer spills instead of waiting."""


def engine_for(url: str, field: str = "prediction_log") -> Engine:
    """A SQLAlchemy engine for `url`; `field` names the option in errors. Does not connect yet."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInput(field, f"not a database URL: {url!r} (use postgresql://... or sqlite:///path)") from None
    backend = parsed.get_backend_name()
    if backend not in SCHEMES:
        raise InvalidInput(field, f"unsupported database {backend!r} in {url!r}: use postgresql:// or sqlite:///")
    if backend == "postgresql":
        engine = create_engine(parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True,
                               connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    else:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": CONNECT_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API connection
    # WAL lets `shopclip monitor` read while the server writes; NORMAL sync is durable across process crashes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def migrate(engine: Engine) -> int:
    """Apply every migration the database lacks, each in its own transaction; returns the schema version.

    Raises NotReady when the database cannot be reached, InvalidInput when it is newer than this code."""
    try:
        with engine.begin() as connection:
            schema_migrations.create(connection, checkfirst=True)
            applied = set(connection.execute(select(schema_migrations.c.version)).scalars())
        unknown = sorted(v for v in applied if v > SCHEMA_VERSION)
        if unknown:
            raise InvalidInput("prediction_log", f"the database has schema version {unknown[-1]}, newer than this "
                                                 f"shopclip's {SCHEMA_VERSION}: upgrade shopclip")
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            with engine.begin() as connection:
                migration.apply(connection)
                connection.execute(schema_migrations.insert().values(
                    version=migration.version, description=migration.description, applied_at=utc_now()))
            log.info("prediction log schema: applied migration %d (%s)", migration.version, migration.description)
    except SQLAlchemyError as exc:
        raise NotReady(f"prediction log database unreachable: {_one_line(exc)}") from exc
    return SCHEMA_VERSION


def open_database(url: str, field: str = "prediction_log") -> Engine:
    """`engine_for(url)` with its schema migrated."""
    engine = engine_for(url, field)
    migrate(engine)
    return engine


def _one_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return " ".join(str(original).split())[:300]
