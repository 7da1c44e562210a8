"""The server's prediction log: records queued in memory, written in batches by one background thread, and spilled
to local JSONL files whenever the database cannot take them, so that serving never waits on the database and no
record is lost while it is down.

Flow: `record()` appends to a bounded deque (when it is full the records are spilled at once, never dropped); the
writer thread takes batches of up to `batch_size` (or whatever arrived within `flush_interval_s`) and inserts them
with `PredictionStore.insert_predictions`. A failed write marks the database down and spills the batch; every
`retry_interval_s` the thread tries to reconnect (and migrate), and once back it replays the spill files oldest
first, deleting each only after its rows are committed. Inserts ignore request_ids already stored, so a crash in
the middle of a replay (rows committed, file not yet deleted) or a batch both written and spilled cannot
duplicate rows. Spill files left by a previous run are replayed the same way.

A record the database refuses for itself (not for being down: a value too long for its column, say) would block
its batch forever; such records are written one by one and the refused ones set aside in `rejected-*.jsonl`
beside the spill files, with an error logged, rather than replayed again and again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shopclip.errors import InvalidInput, NotFound, NotReady
from shopclip.predictions import Feedback, FeedbackReceipt, PredictionRecord
from shopclip.predlog.codec import record_from_json, record_to_json
from shopclip.predlog.db import engine_for, migrate
from shopclip.predlog.store import PredictionStore

log = logging.getLogger(__name__)

SPILL_PREFIX, REJECTED_PREFIX, SUFFIX = "spill-", "rejected-", ".jsonl"
FEEDBACK_FLUSH_S = 5.0
"""How long feedback on an answer not yet written waits for the queue to reach the database."""
SPILL_FILE_ROWS = 2_000
"""A spill file is closed after this many rows: replay reads one file at a time, so this bounds its memory."""
DOWN_BATCH = 8_192
"""Records taken from the queue at once while the database is down (spilled in one fsync'd write)."""


@dataclass(frozen=True)
class WriterStats:
    """A snapshot of the writer's counters."""

    queued: int
    """Records in the in-memory queue now."""
    written: int
    """Records committed to the database by this writer (replayed ones included)."""
    spilled: int
    """Records written to spill files since start (a record may be spilled and later written)."""
    pending_spill_rows: int
    """Rows in spill files not yet written to the database."""
    write_errors: int
    """Failed writes: batches or replays the database did not take, records it refused."""
    database_up: bool
    rejected: int = 0
    """Records the database refused for themselves, set aside in rejected-*.jsonl."""


class SpillDir:
    """The folder of JSONL spill files: appended and fsync'd under a lock, named by time so that sorting their
    names orders them, each held with an exclusive flock while open so that another process's writer replaying
    the same folder leaves it alone."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._current: tuple[Path, int] | None = None  # (path, fd) of the file being appended to
        self._current_rows = 0
        self._rows: dict[Path, int] = {}
        self._sequence = 0
        self._check_writable()
        for path in self._files(SPILL_PREFIX):
            rows = self._count_lines(path)
            if rows is not None:
                self._rows[path] = rows

    def _check_writable(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".probe-{os.getpid()}-{threading.get_ident()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InvalidInput("prediction_log_spill", f"cannot write spill files in {self.folder}: "
                                                       f"{exc.strerror or exc}") from None

    @property
    def pending_rows(self) -> int:
        with self._lock:
            return sum(self._rows.values())

    def append(self, records: Sequence[PredictionRecord], prefix: str = SPILL_PREFIX) -> None:
        """Appends `records` durably (written and fsync'd before returning). Raises OSError when the disk does."""
        if not records:
            return
        data = "".join(json.dumps(record_to_json(r), separators=(",", ":")) + "\n" for r in records).encode()
        with self._lock:
            if prefix != SPILL_PREFIX:
                path, fd = self._new_file(prefix)
                try:
                    _write_all(fd, data)
                finally:
                    os.close(fd)
                return
            if self._current is None or self._current_rows >= SPILL_FILE_ROWS:
                self._close_current()
                self._current, self._current_rows = self._new_file(SPILL_PREFIX), 0
            path, fd = self._current
            _write_all(fd, data)
            self._current_rows += len(records)
            self._rows[path] = self._rows.get(path, 0) + len(records)

    def closed_files(self) -> list[Path]:
        """Every spill file, oldest first, after closing the one being appended to (later appends start a new
        file, so none of these changes while it is replayed)."""
        with self._lock:
            self._close_current()
            return sorted(self._rows)

    def read(self, path: Path) -> list[PredictionRecord] | None:
        """The records of a closed spill file (lines that do not parse, such as a line cut short by a crash,
        are logged and skipped); None when another process holds the file."""
        try:
            lines = _unlocked_lines(path)
        except FileNotFoundError:
            self._forget(path)
            return []
        if lines is None:
            return None
        records: list[PredictionRecord] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(record_from_json(json.loads(line)))
            except (ValueError, InvalidInput) as exc:
                log.error("prediction log: skipping unreadable line %d of %s: %s", number, path, exc)
        return records

    def remove(self, path: Path) -> None:
        """Deletes a replayed file (its rows are committed)."""
        path.unlink(missing_ok=True)
        self._forget(path)

    def close(self) -> None:
        with self._lock:
            self._close_current()

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._rows.pop(path, None)

    def _files(self, prefix: str) -> list[Path]:
        return sorted(self.folder.glob(f"{prefix}*{SUFFIX}"))

    def _new_file(self, prefix: str) -> tuple[Path, int]:
        # Zero-padded nanoseconds, then a sequence number: name order is creation order within a process.
        self._sequence += 1
        path = self.folder / f"{prefix}{time.time_ns():020d}-{os.getpid()}-{self._sequence:06d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _fsync_folder(self.folder)  # the new file's name survives a crash too
        return path, fd

    def _close_current(self) -> None:
        if self._current is not None:
            os.close(self._current[1])  # releases its flock
            self._current = None

    @staticmethod
    def _count_lines(path: Path) -> int | None:
        """Lines of a file left by a previous run; None when another process holds it (it is that one's)."""
        try:
            lines = _unlocked_lines(path)
        except OSError:
            return None
        return None if lines is None else sum(1 for line in lines if line.strip())


def _unlocked_lines(path: Path) -> list[bytes] | None:
    """The lines of a spill file, or None while another process holds its lock (an open file is that writer's)."""
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return handle.read().splitlines()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PredictionLogWriter:
    """The `shopclip.predictions.PredictionLog` the server writes through; see the module docstring."""

    def __init__(self, store: PredictionStore, spill: SpillDir, *, batch_size: int = 256,
                 flush_interval_s: float = 0.5, queue_size: int = 100_000, retry_interval_s: float = 2.0) -> None:
        for name, value in (("batch_size", batch_size), ("queue_size", queue_size)):
            if value < 1:
                raise InvalidInput(name, f"must be >= 1, got {value}")
        for name, interval in (("flush_interval_s", flush_interval_s), ("retry_interval_s", retry_interval_s)):
            if interval <= 0:
                raise InvalidInput(name, f"must be > 0, got {interval}")
        self.store, self.spill = store, spill
        self.batch_size, self.queue_size = batch_size, queue_size
        self.flush_interval_s, self.retry_interval_s = flush_interval_s, retry_interval_s
        self._queue: deque[PredictionRecord] = deque()
        self._cond = threading.Condition()
        self._accepted = 0  # records ever put on the queue
        self._handled = 0  # of those, written or spilled
        self._inflight: list[PredictionRecord] = []
        self._written = self._spilled = self._write_errors = self._rejected = self._dropped = 0
        self._failures = 0  # failed connects and writes: a flush waiting on replay stops at the next one
        self._database_up: bool | None = None  # None: not tried yet
        self._last_attempt = float("-inf")
        self._retry_now = False
        self._stopping = self._closed = False
        self._schema_lock = threading.Lock()
        self._migrated = False
        self._collector = _WriterCollector(self)
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    # -- the PredictionLog protocol --------------------------------------------------------------------------------

    def record(self, records: Sequence[PredictionRecord]) -> None:
        """Queues `records`; what the queue has no room for is spilled to disk at once. Never raises."""
        try:
            items = list(records)
            with self._cond:
                closed = self._closed
                room = 0 if closed else max(self.queue_size - len(self._queue), 0)
                self._queue.extend(items[:room])
                self._accepted += min(room, len(items))
                if len(self._queue) >= self.batch_size:
                    self._cond.notify_all()
            if len(items) > room:
                self._spill_records(items[room:])
                if closed:
                    self.spill.close()  # no writer left to replay it: release the file for the next one
        except Exception:  # noqa: BLE001 - the protocol promises the server this never raises
            log.exception("prediction log: could not queue %d records", len(records))

    def add_feedback(self, feedback: Feedback) -> FeedbackReceipt:
        """Stores feedback in the database (blocking); NotReady while it cannot be reached.

        Feedback may name an answer given a moment ago, whose record still waits in the queue: on NotFound the
        queue is written out first and the lookup tried once more."""
        self._ensure_schema()
        try:
            return self.store.add_feedback(feedback)
        except NotFound:
            if feedback.request_id is None or not self.flush(FEEDBACK_FLUSH_S):
                raise
            return self.store.add_feedback(feedback)

    def collectors(self) -> Sequence[Collector]:
        return [self._collector]

    def close(self, timeout_s: float = 10.0) -> None:
        """Writes what it can within `timeout_s`, spills the rest, and stops the thread."""
        deadline = time.monotonic() + timeout_s
        self.flush(max(timeout_s / 2, 0.0))
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        with self._cond:
            self._closed = True
            leftover = list(self._queue) + (self._inflight if self._thread.is_alive() else [])
            self._queue.clear()
        # The thread is stuck on the database: spill its batch too (a duplicate is ignored on replay).
        if leftover:
            log.warning("prediction log: closing with %d records unwritten, spilled to %s", len(leftover),
                        self.spill.folder)
            self._spill_records(leftover)
        self.spill.close()
        if not self._thread.is_alive():
            self.store.dispose()

    # -- beyond the protocol ---------------------------------------------------------------------------------------

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Blocks until every record queued so far is written or spilled and, while the database is reachable,
        the spill files are replayed. True when all of it is in the database; False when some is only on disk
        (the database is down) or `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target, failures = self._accepted, self._failures
            self._retry_now = True
            self._cond.notify_all()
            while True:
                handled = self._handled >= target
                if handled and self.spill.pending_rows == 0:
                    return True
                if (handled and self._failures > failures) or not self._thread.is_alive():
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))

    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(queued=len(self._queue), written=self._written, spilled=self._spilled,
                               pending_spill_rows=self.spill.pending_rows, write_errors=self._write_errors,
                               database_up=bool(self._database_up), rejected=self._rejected)

    # -- the writer thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch, forced = self._take_batch()
            try:
                self._write_step(batch, forced)
            except Exception:  # noqa: BLE001 - the thread must outlive any bug in one step; nothing is lost
                log.exception("prediction log: unexpected error, spilling %d records", len(batch))
                self._spill_records(batch)
            with self._cond:
                self._handled += len(batch)
                self._inflight = []
                self._cond.notify_all()
                if self._stopping and not self._queue:
                    return

    def _take_batch(self) -> tuple[list[PredictionRecord], bool]:
        """Waits up to flush_interval_s for a full batch (less when flushing or stopping), then takes it; also
        says whether a flush asked for a reconnect attempt now."""
        with self._cond:
            deadline = time.monotonic() + self.flush_interval_s
            while (len(self._queue) < self.batch_size and not (self._stopping or self._retry_now)
                   and (remaining := deadline - time.monotonic()) > 0):
                self._cond.wait(remaining)
            size = self.batch_size if self._database_up else max(self.batch_size, DOWN_BATCH)
            batch = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
            self._inflight = batch
            forced, self._retry_now = self._retry_now or self._stopping, False
            return batch, forced

    def _write_step(self, batch: list[PredictionRecord], forced: bool) -> None:
        """Reconnects when due (or `forced`), replays spill files once up, then writes `batch` (spilling it while
        down)."""
        if not self._database_up:
            self._maybe_reconnect(forced)
        if self._database_up:
            try:
                self._replay()
                self._write(batch)
                return
            except NotReady as exc:
                self._went_down(exc)
        self._spill_records(batch)

    def _maybe_reconnect(self, forced: bool) -> None:
        if not forced and time.monotonic() - self._last_attempt < self.retry_interval_s:
            return
        self._last_attempt = time.monotonic()
        try:
            self._ensure_schema(force=True)
        except (NotReady, InvalidInput) as exc:
            self._went_down(exc)
            return
        with self._cond:
            was_down = self._database_up is False
            self._database_up = True
        if was_down:
            log.info("prediction log: database reachable again; replaying %d spilled rows", self.spill.pending_rows)

    def _ensure_schema(self, force: bool = False) -> None:
        """Migrates once (the database may have been down at start); `force` checks it is reachable again."""
        with self._schema_lock:
            if force or not self._migrated:
                migrate(self.store.engine)
                self._migrated = True

    def _went_down(self, exc: Exception) -> None:
        with self._cond:
            was_up = self._database_up is not False
            self._database_up = False
            self._failures += 1
            self._write_errors += 1
            self._last_attempt = time.monotonic()
            self._cond.notify_all()
        if was_up:  # once per outage, not on every retry
            log.warning("prediction log: database unavailable, spilling records to %s until it is back (%s)",
                        self.spill.folder, exc)

    def _replay(self) -> None:
        """Writes every spill file, oldest first, deleting each once its rows are committed."""
        for path in self.spill.closed_files():
            records = self.spill.read(path)
            if records is None:
                continue  # another process's writer holds it
            self._write(records)
            self.spill.remove(path)
            with self._cond:
                self._cond.notify_all()

    def _write(self, records: list[PredictionRecord]) -> None:
        """Inserts `records`; NotReady when the database is down. When it refuses the batch for another reason,
        the records are written one by one and those it refuses set aside."""
        if not records:
            return
        try:
            self.store.insert_predictions(records)
        except NotReady:
            raise
        except Exception as exc:  # noqa: BLE001 - a refused row, whatever the driver calls it
            log.error("prediction log: the database refused a batch of %d records (%s); retrying one by one",
                      len(records), exc)
            self._write_one_by_one(records)
            return
        with self._cond:
            self._written += len(records)

    def _write_one_by_one(self, records: list[PredictionRecord]) -> None:
        refused: list[PredictionRecord] = []
        for record in records:
            try:
                self.store.insert_predictions([record])
            except NotReady:
                raise
            except Exception as exc:  # noqa: BLE001
                log.error("prediction log: record %s refused, set aside in %s: %s", record.request_id,
                          self.spill.folder, exc)
                refused.append(record)
                continue
            with self._cond:
                self._written += 1
        if refused:
            self.spill.append(refused, prefix=REJECTED_PREFIX)
            with self._cond:
                self._rejected += len(refused)
                self._write_errors += len(refused)

    def _spill_records(self, records: Sequence[PredictionRecord]) -> None:
        if not records:
            return
        try:
            self.spill.append(records)
        except OSError as exc:
            # The one way records are lost: neither the database nor the disk takes them.
            with self._cond:
                self._dropped += len(records)
                self._write_errors += 1
            log.error("prediction log: could not spill %d records to %s: %s", len(records), self.spill.folder, exc)
            return
        with self._cond:
            self._spilled += len(records)


class _WriterCollector(Collector):
    """The writer's live counters as Prometheus metrics (read at each scrape, registered where the caller wants)."""

    def __init__(self, writer: PredictionLogWriter) -> None:
        self._writer = writer

    def describe(self) -> Iterator[Metric]:
        return self._families(WriterStats(0, 0, 0, 0, 0, False))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._writer.stats())

    def _families(self, stats: WriterStats) -> Iterator[Metric]:
        yield GaugeMetricFamily("shopclip_prediction_log_queue_depth", "Records queued in memory, not yet written",
                                value=stats.queued)
        yield GaugeMetricFamily("shopclip_prediction_log_queue_capacity", "Records the in-memory queue holds",
                                value=self._writer.queue_size)
        yield CounterMetricFamily("shopclip_prediction_log_written_total", "Records written to the database",
                                  value=stats.written)
        yield CounterMetricFamily("shopclip_prediction_log_spilled_total", "Records spilled to local files",
                                  value=stats.spilled)
        yield GaugeMetricFamily("shopclip_prediction_log_pending", "Spilled rows not yet written to the database",
                                value=stats.pending_spill_rows)
        yield CounterMetricFamily("shopclip_prediction_log_write_errors_total", "Failed database writes",
                                  value=stats.write_errors)
        yield GaugeMetricFamily("shopclip_prediction_log_database_up", "1 while the database takes writes",
                                value=1.0 if stats.database_up else 0.0)


def open_prediction_log(url: str, spill_dir: str | Path, *, batch_size: int = 256, flush_interval_s: float = 0.5,
                        queue_size: int = 100_000, retry_interval_s: float = 2.0) -> PredictionLogWriter:
    """A started writer on the database `url`, spilling to `spill_dir`. Does not wait for the database (one that
    is down is retried in the background); InvalidInput for a bad URL ("prediction_log") or a spill folder it
    cannot write ("prediction_log_spill")."""
    try:
        engine = engine_for(url, "prediction_log")
    except OSError as exc:  # a SQLite file whose folder cannot be made
        raise InvalidInput("prediction_log", f"cannot create the database file of {url!r}: {exc}") from None
    try:
        spill = SpillDir(Path(spill_dir).expanduser())
    except InvalidInput:
        engine.dispose()
        raise
    return PredictionLogWriter(PredictionStore(engine), spill, batch_size=batch_size,
                               flush_interval_s=flush_interval_s, queue_size=queue_size,
                               retry_interval_s=retry_interval_s)
