"""Dynamic micro-batching: concurrent requests share one forward pass.

Each caller parks on an `asyncio.Future` per item (as in ray serve's `_BatchQueue`). The batches are formed
and run by `concurrency` forward workers, long-running loops on the executor's threads, not by the event
loop: a worker that finishes a forward takes the next batch at once, while the event loop is still busy
answering the previous one (measured: when the event loop started each forward, the forward thread stood
idle ~20% of the time at concurrency 32, waiting behind 16 response callbacks). A worker waits at most
`max_wait_s` for its batch to fill up to `max_batch`, and only under concurrency (so a lone request never
waits); it drops items whose deadline passed or whose caller went away, runs the batch function, checks
that it returned one result per item and hands the results, or the exception, back to the event loop,
which resolves every caller's future. Requests that arrive during a forward form the next batch, so
batches grow with load by themselves.

The queue is bounded: a submission that does not fit raises `Overloaded` at once (RESOURCE_EXHAUSTED)
rather than queueing work that would miss its deadline anyway. An `InvalidInput` raised by a batch of
several items is blamed on no one yet: each item is re-run alone, so one bad image fails only its caller.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shopclip.errors import DeadlineExpired, InvalidInput, NotReady, Overloaded

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(eq=False)  # entries are compared by identity: `batch in self._in_flight` never compares products
class _Entry(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]
    deadline: float | None
    """Absolute `time.monotonic()` after which nobody waits for the result."""


class MicroBatcher(Generic[Item, Result]):
    def __init__(self, fn: Callable[[list[Item]], Sequence[Result]], *, executor: Executor, max_batch: int,
                 max_wait_s: float, queue_size: int, on_batch: Callable[[int], None] | None = None,
                 concurrency: int = 1) -> None:
        """`fn` maps a list of items to one result per item. It runs on `executor`'s threads, which the
        workers occupy from `start` to `stop`: give the batcher an executor of `concurrency` threads of its
        own (the server loads the model on the same one, so torch only ever runs on those threads).
        `on_batch(size)` observes every forward (metrics), from a worker thread."""
        self._fn = fn
        self._executor = executor
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._queue_size = queue_size
        self._on_batch = on_batch
        self._queue: collections.deque[_Entry[Item, Result]] = collections.deque()
        self._in_flight: list[list[_Entry[Item, Result]]] = []
        self._changed = threading.Condition()
        """Guards the queue, `_in_flight` and `_running`; notified when items arrive or the batcher stops."""
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Future[None]] = []

    @property
    def depth(self) -> int:
        """Items waiting for a forward."""
        return len(self._queue)

    def start(self) -> None:
        """Start the forward workers (call from the event loop that will submit)."""
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._workers = [self._loop.run_in_executor(self._executor, self._work) for _ in range(self._concurrency)]
        for worker in self._workers:
            worker.add_done_callback(_log_if_failed)

    async def stop(self) -> None:
        """Stop at once; callers queued or in an interrupted forward get NotReady. A forward already running
        finishes in the background (a thread cannot be interrupted); its results are discarded."""
        with self._changed:
            self._running = False
            waiting = [*(entry for batch in self._in_flight for entry in batch), *self._queue]
            self._in_flight.clear()
            self._queue.clear()
            self._changed.notify_all()
        for entry in waiting:
            _fail(entry, NotReady("server is shutting down"))
        self._workers = []

    async def submit(self, item: Item, timeout_s: float | None = None) -> Result:
        return (await self.submit_many([item], timeout_s))[0]

    async def submit_many(self, items: Sequence[Item], timeout_s: float | None = None,
                          return_exceptions: bool = False) -> list[Any]:
        """Results in the order of `items`; `timeout_s` is what is left of the caller's deadline. As with
        `asyncio.gather`, `return_exceptions` puts each item's exception in its place instead of raising."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        entries = [_Entry(item, loop.create_future(), deadline) for item in items]
        with self._changed:
            if not self._running:
                raise NotReady("the batcher is not running")
            if len(self._queue) + len(items) > self._queue_size:
                raise Overloaded(f"queue full ({len(self._queue)} of {self._queue_size} products waiting): "
                                 "retry later")
            self._queue.extend(entries)
            self._changed.notify()
        try:
            return list(await asyncio.gather(*(entry.future for entry in entries),
                                             return_exceptions=return_exceptions))
        finally:  # a caller that gave up (cancelled, or one item failed) leaves no orphan behind
            for entry in entries:
                entry.future.cancel()

    # --- forward workers (executor threads) ---

    def _work(self) -> None:
        last_batch_size = 0
        while (batch := self._next_batch(last_batch_size)) is not None:
            last_batch_size = len(batch)
            try:
                self._process(batch)
            finally:
                with self._changed:
                    self._in_flight = [running for running in self._in_flight if running is not batch]

    def _next_batch(self, last_batch_size: int) -> list[_Entry[Item, Result]] | None:
        """The next live batch, once there is one (None once stopped): waits up to `max_wait_s` for it to
        fill, but only under concurrency (the last forward or the queue held several items): a lone caller
        would only wait for company that cannot come."""
        with self._changed:
            while True:
                while self._running and not self._queue:
                    self._changed.wait()
                if not self._running:
                    return None
                if last_batch_size > 1 or len(self._queue) > 1:
                    fill_until = time.monotonic() + self._max_wait_s
                    while self._running and len(self._queue) < self._max_batch \
                            and (remaining := fill_until - time.monotonic()) > 0:
                        self._changed.wait(remaining)
                batch = self._take()
                if batch:
                    self._in_flight.append(batch)
                    return batch

    def _take(self) -> list[_Entry[Item, Result]]:
        """Up to `max_batch` live entries; expired ones fail with DeadlineExpired, abandoned ones vanish.
        Reading `future.done()` off the loop is a benign race: an answer for a caller that left meanwhile
        is dropped when it is delivered."""
        now = time.monotonic()
        batch: list[_Entry[Item, Result]] = []
        while self._queue and len(batch) < self._max_batch:
            entry = self._queue.popleft()
            if entry.future.done():
                continue
            if entry.deadline is not None and entry.deadline <= now:
                expired = DeadlineExpired("deadline passed while queued; dropped before the forward")
                self._deliver([(entry, _fail, expired)])
                continue
            batch.append(entry)
        return batch

    def _process(self, batch: list[_Entry[Item, Result]]) -> None:
        try:
            results = self._forward([entry.item for entry in batch])
        except InvalidInput as exc:
            if len(batch) == 1:
                self._deliver([(batch[0], _fail, exc)])
                return
            for entry in batch:  # find the culprit: each item alone
                self._process([entry])
            return
        except Exception as exc:  # noqa: BLE001 - routed to every caller, logged by the error table
            self._deliver([(entry, _fail, exc) for entry in batch])
            return
        self._deliver([(entry, _succeed, result) for entry, result in zip(batch, results)])

    def _forward(self, items: list[Item]) -> Sequence[Result]:
        if self._on_batch is not None:
            self._on_batch(len(items))
        results = self._fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results

    def _deliver(self, outcomes: list[tuple[_Entry[Item, Result], Callable[[_Entry, Any], None], Any]]) -> None:
        """Resolve futures on the event loop (they are not thread-safe), a whole batch in one wake-up."""
        try:
            self._loop.call_soon_threadsafe(_resolve_all, outcomes)
        except RuntimeError:  # the loop closed after stop(): nobody is waiting any more
            pass


def _resolve_all(outcomes: list[tuple[_Entry, Callable[[_Entry, Any], None], Any]]) -> None:
    for entry, resolve, value in outcomes:
        resolve(entry, value)


def _log_if_failed(worker: asyncio.Future[None]) -> None:
    if not worker.cancelled() and worker.exception() is not None:  # a bug: its callers would wait forever
        log.error("a forward worker stopped on an unexpected error", exc_info=worker.exception())


def _succeed(entry: _Entry, result: Any) -> None:
    if not entry.future.done():
        entry.future.set_result(result)


def _fail(entry: _Entry, exc: BaseException) -> None:
    if not entry.future.done():
        entry.future.set_exception(exc)
