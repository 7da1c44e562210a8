"""Dynamic micro-batching: concurrent requests share one forward pass.

Each caller parks on an `asyncio.Future` per item (as in ray serve's `_BatchQueue`); one background
task takes what is queued, waits at most `max_wait_s` for the batch to fill up to `max_batch` (only
under concurrency, so a lone request never waits), drops
items whose deadline passed or whose caller went away, runs the batch function once in a thread
executor (the event loop never blocks), checks that it returned one result per item and routes results,
or the exception, back to every caller. At most `concurrency` forwards run at once (one by default): requests
that arrive meanwhile form the next batch, so batches grow with load by themselves.

The queue is bounded: a submission that does not fit raises `Overloaded` at once (RESOURCE_EXHAUSTED)
rather than queueing work that would miss its deadline anyway. An `InvalidInput` raised by a batch of
several items is blamed on no one yet: each item is re-run alone, so one bad image fails only its caller.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shopclip.errors import InvalidInput, NotReady, Overloaded, ShopclipError

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class DeadlineExpired(ShopclipError):
    """The caller's deadline passed while its request waited: it was dropped before the forward."""


@dataclass
class _Entry(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]
    deadline: float | None
    """Absolute `loop.time()` after which nobody waits for the result."""


class MicroBatcher(Generic[Item, Result]):
    def __init__(self, fn: Callable[[list[Item]], Sequence[Result]], *, executor: Executor, max_batch: int,
                 max_wait_s: float, queue_size: int, on_batch: Callable[[int], None] | None = None,
                 concurrency: int = 1) -> None:
        """`fn` maps a list of items to one result per item and runs in `executor` (which needs `concurrency`
        workers); `on_batch(size)` observes every forward (metrics)."""
        self._fn = fn
        self._executor = executor
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._queue_size = queue_size
        self._on_batch = on_batch
        self._queue: collections.deque[_Entry[Item, Result]] = collections.deque()
        self._in_flight: list[list[_Entry[Item, Result]]] = []
        self._last_batch_size = 0
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        self._forwards: set[asyncio.Task[None]] = set()

    @property
    def depth(self) -> int:
        """Items waiting for a forward."""
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop at once; callers queued or in the interrupted forward get NotReady."""
        waiting = [*(entry for batch in self._in_flight for entry in batch), *self._queue]  # before cancelling:
        tasks = [task for task in (self._task, *self._forwards) if task is not None]  # forwards forget theirs
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        for entry in waiting:
            _fail(entry, NotReady("server is shutting down"))
        self._in_flight.clear()
        self._queue.clear()

    async def submit(self, item: Item, timeout_s: float | None = None) -> Result:
        return (await self.submit_many([item], timeout_s))[0]

    async def submit_many(self, items: Sequence[Item], timeout_s: float | None = None,
                          return_exceptions: bool = False) -> list[Any]:
        """Results in the order of `items`; `timeout_s` is what is left of the caller's deadline. As with
        `asyncio.gather`, `return_exceptions` puts each item's exception in its place instead of raising."""
        if self._task is None:
            raise NotReady("the batcher is not running")
        if len(self._queue) + len(items) > self._queue_size:
            raise Overloaded(f"queue full ({len(self._queue)} of {self._queue_size} products waiting): retry later")
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        entries = [_Entry(item, loop.create_future(), deadline) for item in items]
        self._queue.extend(entries)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(entry.future for entry in entries),
                                             return_exceptions=return_exceptions))
        finally:  # a caller that gave up (cancelled, or one item failed) leaves no orphan behind
            for entry in entries:
                entry.future.cancel()

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            await self._slots.acquire()  # a free forward: the batch forms only once it can start
            try:
                await self._fill()
                batch = self._take()
            except BaseException:
                self._slots.release()
                raise
            if not self._queue:
                self._arrived.clear()
            if not batch:
                self._slots.release()
                continue
            self._last_batch_size = len(batch)
            self._in_flight.append(batch)
            task = asyncio.get_running_loop().create_task(self._forward_batch(batch))
            self._forwards.add(task)
            task.add_done_callback(self._forwards.discard)

    async def _forward_batch(self, batch: list[_Entry[Item, Result]]) -> None:
        try:
            await self._process(batch)
        finally:
            self._in_flight.remove(batch)
            self._slots.release()

    async def _fill(self) -> None:
        """Wait up to `max_wait_s` for the batch to fill, but only under concurrency (the last forward or the
        queue holds several items): a lone caller would only wait for company that cannot come."""
        if self._last_batch_size <= 1 and len(self._queue) <= 1:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while len(self._queue) < self._max_batch and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # the builtin only from Python 3.11
                break
        self._arrived.set()

    def _take(self) -> list[_Entry[Item, Result]]:
        """Up to `max_batch` live entries; expired ones fail with DeadlineExpired, abandoned ones vanish."""
        now = asyncio.get_running_loop().time()
        batch: list[_Entry[Item, Result]] = []
        while self._queue and len(batch) < self._max_batch:
            entry = self._queue.popleft()
            if entry.future.done():
                continue
            if entry.deadline is not None and entry.deadline <= now:
                _fail(entry, DeadlineExpired("deadline passed while queued; dropped before the forward"))
                continue
            batch.append(entry)
        return batch

    async def _process(self, batch: list[_Entry[Item, Result]]) -> None:
        try:
            results = await self._forward([entry.item for entry in batch])
        except InvalidInput as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            for entry in batch:  # find the culprit: each item alone
                await self._process([entry])
            return
        except Exception as exc:  # noqa: BLE001 - routed to every caller, logged by the error table
            for entry in batch:
                _fail(entry, exc)
            return
        for entry, result in zip(batch, results):
            if not entry.future.done():
                entry.future.set_result(result)

    async def _forward(self, items: list[Item]) -> Sequence[Result]:
        if self._on_batch is not None:
            self._on_batch(len(items))
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self._fn, items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results


def _fail(entry: _Entry, exc: BaseException) -> None:
    if not entry.future.done():
        entry.future.set_exception(exc)
