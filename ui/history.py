"""What the Monitoring page reads from the prediction log: the drift reports `shopclip monitor` stored, live
accuracy from feedback and the abstain rate per hour or day. SQLAlchemy Core on predlog.schema's tables, the same
statements on SQLite and PostgreSQL.

The time series are counted in the database (one row per hour or day), never by fetching the rows: a month of
logged answers is millions of rows, its series a few hundred. Buckets are UTC hours and days on both dialects.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import case, func, literal_column, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.sql.elements import ColumnElement

from shopclip.errors import InvalidInput, NotReady
from shopclip.predlog.schema import feedback, monitor_reports, predictions

Unit = Literal["hour", "day"]
UNITS: tuple[Unit, ...] = ("hour", "day")
SQLITE_FORMATS = {"hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}
MAX_REPORTS = 500


@dataclass(frozen=True)
class StoredReport:
    """One row of monitor_reports, its JSON unpacked."""

    report_id: str
    created_at: datetime
    window_start: datetime
    window_end: datetime
    reference: str
    statistics: list[dict[str, Any]]
    """Each statistic as `Statistic.to_dict()` wrote it: name, feature, kind, value, p_value, threshold, alert..."""
    alerts: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    model_fingerprints: dict[str, int] = field(default_factory=dict)
    model_releases: dict[str, int] = field(default_factory=dict)
    """Empty in reports stored before releases were counted."""
    html_path: str | None = None
    """The report's HTML page as the monitor wrote it (a path on the monitor's machine)."""


@dataclass(frozen=True)
class Point:
    """One bucket of a series: `hits` of `total` (correct feedback of all feedback, abstentions of all answers)."""

    start: datetime
    """UTC start of the hour or day."""
    total: int
    hits: int

    @property
    def share(self) -> float | None:
        return self.hits / self.total if self.total else None


def latest_reports(engine: Engine, limit: int = 20) -> list[StoredReport]:
    """The newest stored reports, newest first."""
    if not 0 < limit <= MAX_REPORTS:
        raise InvalidInput("limit", f"must be in 1..{MAX_REPORTS}, got {limit}")
    query = select(monitor_reports).order_by(monitor_reports.c.created_at.desc()).limit(limit)
    with _connection(engine) as connection:
        return [_report(row._mapping) for row in connection.execute(query)]


def latest_report(engine: Engine) -> StoredReport | None:
    reports = latest_reports(engine, limit=1)
    return reports[0] if reports else None


def newest_activity(engine: Engine) -> datetime | None:
    """When the log last recorded an answer or feedback (UTC), None when it is empty: the series end there, so a
    log that went quiet still shows its last days rather than an empty chart."""
    with _connection(engine) as connection:
        moments = [connection.execute(select(func.max(table.c.created_at))).scalar_one()
                   for table in (predictions, feedback)]
    found = [_utc(moment) for moment in moments if moment is not None]
    return max(found) if found else None


def live_accuracy_series(engine: Engine, since: datetime, until: datetime | None = None,
                         unit: Unit = "day") -> list[Point]:
    """Per bucket of feedback time: feedback on a logged prediction (`predicted_code` known) and how many of them
    confirm it (`predicted_code == prdtypecode`), as `shopclip monitor`'s live accuracy counts it."""
    correct = case((feedback.c.predicted_code == feedback.c.prdtypecode, 1), else_=0)
    return _series(engine, feedback.c.created_at, correct, since, until, unit,
                   feedback.c.predicted_code.is_not(None))


def abstain_series(engine: Engine, since: datetime, until: datetime | None = None,
                   unit: Unit = "hour") -> list[Point]:
    """Per bucket of answer time: answers logged and how many of them abstained."""
    abstained = case((predictions.c.abstain, 1), else_=0)
    return _series(engine, predictions.c.created_at, abstained, since, until, unit)


def _series(engine: Engine, moment: ColumnElement[Any], hit: ColumnElement[int], since: datetime,
            until: datetime | None, unit: Unit, *where: ColumnElement[bool]) -> list[Point]:
    if unit not in UNITS:
        raise InvalidInput("unit", f"expected one of {', '.join(UNITS)}, got {unit!r}")
    conditions = [moment >= _utc(since), *where] + ([moment < _utc(until)] if until is not None else [])
    bucket = _bucket(moment, engine.dialect.name, unit).label("bucket")
    query = (select(bucket, func.count().label("total"), func.sum(hit).label("hits"))
             .where(*conditions).group_by(bucket).order_by(bucket))
    with _connection(engine) as connection:
        rows = connection.execute(query).all()
    return [Point(_bucket_start(row.bucket), int(row.total), int(row.hits or 0)) for row in rows]


def _bucket(moment: ColumnElement[Any], dialect: str, unit: Unit) -> ColumnElement[Any]:
    """The UTC hour or day of `moment`. Literal SQL text rather than bound parameters: PostgreSQL only accepts
    the grouped expression in the select list when both are the very same text. `unit` is one of UNITS here."""
    if dialect == "sqlite":  # SQLAlchemy stores UTC datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' text
        return func.strftime(literal_column(f"'{SQLITE_FORMATS[unit]}'"), moment)
    if dialect == "postgresql":
        return func.date_trunc(literal_column(f"'{unit}'"), func.timezone(literal_column("'UTC'"), moment))
    raise InvalidInput("prediction_log", f"unsupported database dialect {dialect!r}")


def _bucket_start(value: str | datetime) -> datetime:
    return _utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


def _report(row: Mapping[str, Any]) -> StoredReport:
    stored = row["statistics"] or {}
    return StoredReport(report_id=row["report_id"], created_at=_utc(row["created_at"]),
                        window_start=_utc(row["window_start"]), window_end=_utc(row["window_end"]),
                        reference=row["reference"], statistics=list(stored.get("statistics", [])),
                        alerts=list(row["alerts"] or []), counts=dict(stored.get("counts", {})),
                        model_fingerprints=dict(stored.get("model_fingerprints", {})),
                        model_releases=dict(stored.get("model_releases", {})), html_path=row["html_path"])


@contextmanager
def _connection(engine: Engine) -> Iterator[Connection]:
    """A read connection; an unreachable database is NotReady (the page says so where the part would be)."""
    try:
        with engine.connect() as connection:
            yield connection
    except (OperationalError, InterfaceError) as exc:
        raise NotReady(f"prediction log database unreachable: {' '.join(str(exc.orig or exc).split())[:300]}") \
            from exc


def _utc(moment: datetime) -> datetime:
    # SQLite hands datetimes back without an offset; the prediction log writes UTC only.
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
