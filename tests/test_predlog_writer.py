"""The prediction log writer: batches written in the background, spilled to disk while the database is down and
replayed when it is back, on SQLite and on a real PostgreSQL that the tests stop and start under load."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")
pytest.importorskip("prometheus_client")

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest  # noqa: E402
from sqlalchemy import select  # noqa: E402

from shopclip.errors import InvalidInput, NotReady  # noqa: E402
from shopclip.predictions import Feedback, PredictionRecord  # noqa: E402
from shopclip.predlog.codec import record_to_json  # noqa: E402
from shopclip.predlog.schema import predictions  # noqa: E402
from shopclip.predlog.store import PredictionStore  # noqa: E402
from shopclip.predlog.writer import PredictionLogWriter, open_prediction_log  # noqa: E402
from shopclip.products import ProductInput  # noqa: E402
from support.postgres import free_port  # noqa: E402

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
FAST = {"flush_interval_s": 0.02, "retry_interval_s": 0.1, "batch_size": 64}
METRICS = ("shopclip_prediction_log_queue_depth", "shopclip_prediction_log_queue_capacity",
           "shopclip_prediction_log_written_total", "shopclip_prediction_log_spilled_total",
           "shopclip_prediction_log_pending", "shopclip_prediction_log_write_errors_total",
           "shopclip_prediction_log_database_up")


def make_records(count: int, start: int = 0, **overrides: object) -> list[PredictionRecord]:
    return [PredictionRecord.of(ProductInput(designation=f"produit {n}"), productid=n,
                                predictions=[(10 + n % 3, 0.9), (2583, 0.1)], abstain=False,
                                model_fingerprint=str(overrides.get("model_fingerprint", "fp")), index_version="v1",
                                latency_ms=1.0, embedding=(0.5, -0.25), created_at=T0 + timedelta(milliseconds=n))
            for n in range(start, start + count)]


def stored_ids(url: str) -> list[str]:
    store = PredictionStore.open(url)
    try:
        with store.engine.connect() as connection:
            return list(connection.execute(select(predictions.c.request_id)).scalars())
    finally:
        store.dispose()


def assert_exactly_once(url: str, records: list[PredictionRecord]) -> None:
    ids = stored_ids(url)
    assert len(ids) == len(records)
    assert set(ids) == {r.request_id for r in records}


def metric_values(writer: PredictionLogWriter) -> dict[str, float]:
    return {sample.name: sample.value for collector in writer.collectors() for family in collector.collect()
            for sample in family.samples}


def closed_port_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"


def spill_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("spill-*.jsonl"))


@pytest.fixture
def open_writer(tmp_path: Path) -> Iterator[Callable[..., PredictionLogWriter]]:
    """Opens writers (spilling under tmp_path/spill unless told) and closes them all at teardown."""
    opened: list[PredictionLogWriter] = []

    def factory(url: str, spill_dir: Path | None = None, **options: object) -> PredictionLogWriter:
        writer = open_prediction_log(url, spill_dir or tmp_path / "spill", **{**FAST, **options})
        opened.append(writer)
        return writer

    yield factory
    for writer in opened:
        writer.close(timeout_s=5)


@pytest.fixture
def restarted(postgres_server):  # noqa: ANN001, ANN201 - support.postgres.PostgresServer
    """The session's PostgreSQL, started again after the test whatever happens in it."""
    yield postgres_server
    if postgres_server.pid is None:
        postgres_server.start()


# -- the database up -----------------------------------------------------------------------------------------------

def test_writes_everything_after_flush(db_url: str, open_writer: Callable[..., PredictionLogWriter]) -> None:
    writer = open_writer(db_url)
    records = make_records(1_000)
    for start in range(0, len(records), 7):
        writer.record(records[start:start + 7])
    assert writer.flush(20) is True
    assert_exactly_once(db_url, records)
    stats = writer.stats()
    assert (stats.queued, stats.written, stats.spilled, stats.pending_spill_rows, stats.database_up) == (
        0, 1_000, 0, 0, True)


def test_collectors_report_live_values_under_these_names(tmp_path: Path,
                                                         open_writer: Callable[..., PredictionLogWriter]) -> None:
    writer = open_writer(f"sqlite:///{tmp_path / 'log.db'}", queue_size=5_000)
    writer.record(make_records(100))
    assert writer.flush(10)
    registry = CollectorRegistry()
    for collector in writer.collectors():
        registry.register(collector)
    text = generate_latest(registry).decode()
    samples = {line.split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert samples == set(METRICS)
    values = metric_values(writer)
    assert set(values) == set(METRICS)
    assert values["shopclip_prediction_log_written_total"] == 100
    assert values["shopclip_prediction_log_queue_capacity"] == 5_000
    assert values["shopclip_prediction_log_database_up"] == 1
    writer.record(make_records(50, start=100))
    assert writer.flush(10)
    assert metric_values(writer)["shopclip_prediction_log_written_total"] == 150  # read live, at each scrape
    assert not any(name.startswith("shopclip_prediction_log") for name in REGISTRY._names_to_collectors)


def test_queue_full_spills_rather_than_drops(db_url: str, open_writer: Callable[..., PredictionLogWriter]) -> None:
    writer = open_writer(db_url, queue_size=10)
    records = make_records(1_000)
    writer.record(records)
    assert writer.stats().spilled >= 990
    assert writer.flush(20) is True
    assert_exactly_once(db_url, records)
    assert writer.stats().pending_spill_rows == 0


def test_close_never_loses_records(db_url: str, tmp_path: Path,
                                   open_writer: Callable[..., PredictionLogWriter]) -> None:
    writer = open_writer(db_url)
    records = make_records(2_000)
    writer.record(records)
    writer.close(timeout_s=20)
    assert_exactly_once(db_url, records)
    late = make_records(10, start=2_000)
    writer.record(late)  # after close (a server still draining): spilled, for the next writer
    assert sum(1 for path in spill_files(tmp_path / "spill") for _ in path.open()) == 10
    assert open_writer(db_url).flush(10) is True
    assert_exactly_once(db_url, records + late)


# -- the database down ---------------------------------------------------------------------------------------------

def test_database_hanging_at_start_does_not_block_record(tmp_path: Path,
                                                         open_writer: Callable[..., PredictionLogWriter]) -> None:
    # A listener that never accepts: the writer's connection attempt hangs until this socket closes.
    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(64)
        url = f"postgresql://postgres@127.0.0.1:{hanging.getsockname()[1]}/nothing"
        writer = open_writer(url)  # the database down at start does not fail opening
        records = make_records(10_000)
        started = time.monotonic()
        for record in records:
            writer.record([record])
        assert time.monotonic() - started < 1.0  # queued while the writer thread waits on the database
        assert writer.stats().database_up is False
    assert writer.flush(15) is False  # nothing reachable: everything is on disk instead
    stats = writer.stats()
    assert (stats.queued, stats.spilled, stats.pending_spill_rows, stats.written) == (0, 10_000, 10_000, 0)
    lines = [line for path in spill_files(tmp_path / "spill") for line in path.read_text().splitlines()]
    assert len(lines) == 10_000 and json.loads(lines[0]) == record_to_json(records[0])


def test_down_at_start_then_replayed(postgres_url: str, restarted, open_writer,  # noqa: ANN001
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shopclip.predlog.writer")
    restarted.stop()
    writer = open_writer(postgres_url)
    records = make_records(500)
    writer.record(records)
    assert writer.flush(10) is False
    assert writer.stats().pending_spill_rows == 500
    with pytest.raises(NotReady):
        writer.add_feedback(Feedback(prdtypecode=10, request_id=records[0].request_id))
    restarted.start()
    assert writer.flush(20) is True
    assert_exactly_once(postgres_url, records)
    stats = writer.stats()
    assert (stats.pending_spill_rows, stats.written, stats.database_up) == (0, 500, True)
    assert spill_files(Path(writer.spill.folder)) == []
    receipt = writer.add_feedback(Feedback(prdtypecode=10, request_id=records[0].request_id))
    assert (receipt.productid, receipt.predicted_code, receipt.was_correct) == (0, 10, True)
    messages = [r.getMessage() for r in caplog.records if r.name == "shopclip.predlog.writer"]
    assert sum("unavailable" in m for m in messages) == 1 and sum("reachable again" in m for m in messages) == 1


def test_postgres_stopped_mid_stream(postgres_url: str, restarted, open_writer,  # noqa: ANN001
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shopclip.predlog.writer")
    writer = open_writer(postgres_url)
    records = make_records(3_000)
    chunks = [records[start:start + 30] for start in range(0, len(records), 30)]
    for number, chunk in enumerate(chunks):
        writer.record(chunk)
        time.sleep(0.01)
        if number == 20:
            assert writer.flush(10) is True  # some rows are in before the database goes away
            restarted.stop()
        if number == 40:
            with pytest.raises(NotReady):
                writer.add_feedback(Feedback(prdtypecode=10, request_id=records[0].request_id))
        if number == 60:
            assert writer.stats().database_up is False
            restarted.start()
    assert writer.flush(30) is True
    assert_exactly_once(postgres_url, records)
    values = metric_values(writer)
    assert values["shopclip_prediction_log_spilled_total"] > 0
    assert values["shopclip_prediction_log_pending"] == 0
    assert values["shopclip_prediction_log_database_up"] == 1
    assert values["shopclip_prediction_log_write_errors_total"] >= 1
    assert values["shopclip_prediction_log_written_total"] == len(records)
    messages = [r.getMessage() for r in caplog.records if r.name == "shopclip.predlog.writer"]
    assert sum("unavailable" in m for m in messages) == 1  # once per outage, not per retry
    assert sum("reachable again" in m for m in messages) == 1


def test_spill_files_of_a_previous_writer_are_replayed(db_url: str, tmp_path: Path,
                                                       open_writer: Callable[..., PredictionLogWriter]) -> None:
    first = open_writer(closed_port_url())
    records = make_records(300)
    first.record(records)
    first.close(timeout_s=5)
    assert first.stats().pending_spill_rows == 300 and spill_files(tmp_path / "spill")
    second = open_writer(db_url)
    assert second.flush(20) is True
    assert_exactly_once(db_url, records)
    assert spill_files(tmp_path / "spill") == [] and second.stats().written == 300


def test_torn_spill_line_is_skipped_not_the_file(db_url: str, tmp_path: Path,
                                                 open_writer: Callable[..., PredictionLogWriter]) -> None:
    # A crash while spilling can leave a last line cut short; the lines before it still count.
    folder = tmp_path / "spill"
    folder.mkdir()
    records = make_records(20)
    lines = [json.dumps(record_to_json(r)) for r in records]
    (folder / "spill-00000000000000000001-1-000001.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:40])
    writer = open_writer(db_url)
    assert writer.flush(10) is True
    assert_exactly_once(db_url, records)


def test_refused_records_are_set_aside(postgres_url: str, tmp_path: Path,
                                       open_writer: Callable[..., PredictionLogWriter]) -> None:
    # PostgreSQL enforces column lengths (SQLite does not): such a record must not block the ones around it.
    writer = open_writer(postgres_url)
    good = make_records(50)
    bad = make_records(2, start=50, model_fingerprint="x" * 500)
    writer.record(good[:25] + bad + good[25:])
    assert writer.flush(10) is True
    assert_exactly_once(postgres_url, good)
    rejected = list((tmp_path / "spill").glob("rejected-*.jsonl"))
    assert sum(len(path.read_text().splitlines()) for path in rejected) == 2
    assert writer.stats().rejected == 2


def test_open_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as error:
        open_prediction_log("mysql://somewhere/log", tmp_path / "spill")
    assert error.value.field == "prediction_log"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(InvalidInput) as error:
        open_prediction_log(f"sqlite:///{tmp_path / 'log.db'}", blocker / "spill")
    assert error.value.field == "prediction_log_spill"
    with pytest.raises(InvalidInput) as error:
        open_prediction_log(f"sqlite:///{blocker / 'log.db'}", tmp_path / "spill")
    assert error.value.field == "prediction_log"
