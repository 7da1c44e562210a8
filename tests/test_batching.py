"""MicroBatcher: shared forwards, bounds, deadlines, error routing, and a loop that never blocks."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shopclip.errors import InvalidInput, NotReady, Overloaded
from shopclip.errors import DeadlineExpired
from shopclip.server.batching import MicroBatcher


class Recorder:
    """Batch function doubling numbers; records batches; can hold the forward until released."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        self.release.wait(5)
        if any(item < 0 for item in items):
            raise InvalidInput("value", "negative")
        return [2 * item for item in items]


def make_batcher(fn: Any, **overrides: Any) -> MicroBatcher:
    options = {"max_batch": 8, "max_wait_s": 0.05, "queue_size": 64, **overrides}
    batcher = MicroBatcher(fn, executor=ThreadPoolExecutor(options.get("concurrency", 1)), **options)
    batcher.start()
    return batcher


async def entered(recorder: Recorder) -> None:
    await asyncio.to_thread(recorder.entered.wait, 5)


def test_concurrent_requests_share_one_forward() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = make_batcher(recorder, max_batch=16)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.stop()
        assert results == [2 * i for i in range(10)]
        assert len(recorder.batches) < 10
        assert sorted(sum(recorder.batches, [])) == list(range(10))

    asyncio.run(scenario())


def test_batches_never_exceed_max_batch_and_keep_order() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = make_batcher(recorder, max_batch=4)
        results = await batcher.submit_many(list(range(11)))
        await batcher.stop()
        assert results == [2 * i for i in range(11)]
        assert max(len(batch) for batch in recorder.batches) <= 4

    asyncio.run(scenario())


def test_full_queue_raises_overloaded_at_once() -> None:
    async def scenario() -> None:
        recorder = Recorder(hold=True)
        batcher = make_batcher(recorder, max_batch=1, max_wait_s=0, queue_size=2)
        first = asyncio.ensure_future(batcher.submit(1))
        await entered(recorder)  # item 1 is in the forward, the queue is empty again
        queued = asyncio.ensure_future(batcher.submit_many([2, 3]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.submit(4)
        recorder.release.set()
        assert await first == 2
        assert await queued == [4, 6]
        await batcher.stop()

    asyncio.run(scenario())


def test_expired_request_is_dropped_before_the_forward() -> None:
    async def scenario() -> None:
        recorder = Recorder(hold=True)
        batcher = make_batcher(recorder, max_batch=1, max_wait_s=0)
        first = asyncio.ensure_future(batcher.submit(1))
        await entered(recorder)
        late = asyncio.ensure_future(batcher.submit(2, timeout_s=0.02))
        await asyncio.sleep(0.1)  # its deadline passes while the first forward holds
        recorder.release.set()
        assert await first == 2
        with pytest.raises(DeadlineExpired):
            await late
        await batcher.stop()
        assert [2] not in recorder.batches

    asyncio.run(scenario())


def test_abandoned_request_is_dropped_before_the_forward() -> None:
    async def scenario() -> None:
        recorder = Recorder(hold=True)
        batcher = make_batcher(recorder, max_batch=1, max_wait_s=0)
        first = asyncio.ensure_future(batcher.submit(1))
        await entered(recorder)
        gone = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        kept = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0)
        recorder.release.set()
        assert (await first, await kept) == (2, 6)
        await batcher.stop()
        assert recorder.batches == [[1], [3]]

    asyncio.run(scenario())


def test_an_exception_reaches_every_caller_of_the_batch() -> None:
    def broken(items: list[int]) -> list[int]:
        raise RuntimeError("model exploded")

    async def scenario() -> None:
        batcher = make_batcher(broken)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(5)), return_exceptions=True)
        await batcher.stop()
        assert all(isinstance(o, RuntimeError) and "exploded" in str(o) for o in outcomes)

    asyncio.run(scenario())


def test_one_invalid_item_fails_only_its_caller() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = make_batcher(recorder, max_batch=16)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in (1, -1, 2)), return_exceptions=True)
        await batcher.stop()
        assert outcomes[0] == 2 and outcomes[2] == 4
        assert isinstance(outcomes[1], InvalidInput)

    asyncio.run(scenario())


def test_wrong_number_of_results_is_an_error_for_everyone() -> None:
    async def scenario() -> None:
        batcher = make_batcher(lambda items: items[:-1])
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        await batcher.stop()
        assert all(isinstance(o, RuntimeError) and "results" in str(o) for o in outcomes)

    asyncio.run(scenario())


def test_the_event_loop_keeps_running_during_a_forward() -> None:
    def slow(items: list[int]) -> list[int]:
        time.sleep(0.3)
        return items

    async def scenario() -> None:
        batcher = make_batcher(slow)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        await batcher.submit(1)
        task.cancel()
        await batcher.stop()
        assert ticks >= 10

    asyncio.run(scenario())


def test_waits_at_most_max_wait_for_a_partial_batch_under_concurrency() -> None:
    async def scenario() -> None:
        batcher = make_batcher(Recorder(), max_batch=64, max_wait_s=0.05)
        started = time.perf_counter()
        assert await batcher.submit_many([5, 6]) == [10, 12]
        elapsed = time.perf_counter() - started
        await batcher.stop()
        assert 0.04 <= elapsed < 1.0

    asyncio.run(scenario())


def test_a_lone_request_does_not_wait_for_company() -> None:
    async def scenario() -> None:
        batcher = make_batcher(Recorder(), max_batch=64, max_wait_s=0.5)
        started = time.perf_counter()
        assert await batcher.submit(5) == 10
        elapsed = time.perf_counter() - started
        await batcher.stop()
        assert elapsed < 0.25

    asyncio.run(scenario())


def test_stop_fails_queued_callers_with_not_ready() -> None:
    async def scenario() -> None:
        recorder = Recorder(hold=True)
        batcher = make_batcher(recorder, max_batch=1, max_wait_s=0)
        first = asyncio.ensure_future(batcher.submit(1))
        await entered(recorder)
        queued = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        await batcher.stop()
        recorder.release.set()
        for caller in (first, queued):  # interrupted forward and queue alike: nobody hangs
            with pytest.raises(NotReady):
                await caller
        with pytest.raises(NotReady):
            await batcher.submit(3)

    asyncio.run(scenario())


def test_forwards_run_one_at_a_time_unless_concurrency_allows_more() -> None:
    async def running_together(concurrency: int) -> int:
        recorder = Recorder(hold=True)
        batcher = make_batcher(recorder, max_batch=1, max_wait_s=0, concurrency=concurrency)
        callers = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await entered(recorder)
        await asyncio.sleep(0.1)  # time for any other free forward to start
        started = len(recorder.batches)
        recorder.release.set()
        assert sorted(await asyncio.gather(*callers)) == [0, 2, 4]
        await batcher.stop()
        return started

    assert asyncio.run(running_together(1)) == 1
    assert asyncio.run(running_together(2)) == 2


def test_stop_fails_the_callers_of_every_running_forward() -> None:
    async def scenario() -> None:
        recorder = Recorder(hold=True)
        batcher = make_batcher(recorder, max_batch=1, max_wait_s=0, concurrency=2)
        callers = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await entered(recorder)
        await asyncio.sleep(0.1)
        await batcher.stop()
        recorder.release.set()
        for caller in callers:  # two interrupted forwards and one queued caller: nobody hangs
            with pytest.raises(NotReady):
                await caller

    asyncio.run(scenario())


def test_the_next_forward_starts_while_the_event_loop_is_busy() -> None:
    """Forwards are started by the worker threads, not by the event loop: a loop busy answering the last
    batch (here: blocked outright) does not leave the model idle."""
    async def scenario() -> None:
        recorder = Recorder(hold=True)
        batcher = make_batcher(recorder, max_batch=1, max_wait_s=0)
        first = asyncio.ensure_future(batcher.submit(1))
        await entered(recorder)
        second = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)  # queued behind the running forward
        recorder.release.set()
        deadline = time.monotonic() + 5
        while len(recorder.batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # blocks the event loop: only a worker thread can start the next forward
        assert recorder.batches == [[1], [2]]
        assert (await first, await second) == (2, 4)
        await batcher.stop()

    asyncio.run(scenario())
