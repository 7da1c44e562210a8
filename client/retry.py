"""Bounded retry with exponential backoff, inside one overall deadline.

The arithmetic lives here once; the sync and asyncio clients only differ in how they sleep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, applied only to `retry_codes`.

    Repeating a call after UNAVAILABLE (server starting, draining or restarting; connection refused) is safe:
    Classify, search, embed and info change nothing the caller depends on, and feedback carries an id the client
    chose once, so a retried one is stored once. Other codes are answers, not transient failures.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    retry_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s or self.multiplier < 1:
            raise ValueError("backoff must satisfy 0 <= initial_backoff_s <= max_backoff_s and multiplier >= 1")

    def backoffs(self) -> Iterator[float]:
        """Sleep before each retry (max_attempts - 1 values). Jitter in [50%, 100%] spreads clients
        that were cut off together so they do not all come back at the same instant."""
        ceiling = self.initial_backoff_s
        for _ in range(self.max_attempts - 1):
            yield ceiling * random.uniform(0.5, 1.0)
            ceiling = min(self.max_backoff_s, ceiling * self.multiplier)


NO_RETRY = RetryPolicy(max_attempts=1)


class RetrySchedule:
    """The attempts of one call: per-attempt timeouts that never pass the call's deadline, and the
    backoff before the next attempt (None when the call must give up)."""

    def __init__(self, policy: RetryPolicy, timeout_s: float | None) -> None:
        self._policy = policy
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._backoffs = policy.backoffs()
        self.attempts = 0

    def attempt_timeout(self) -> float | None:
        """Counts an attempt and returns the time it may take (what is left of the deadline)."""
        self.attempts += 1
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def backoff_after(self, code: grpc.StatusCode) -> float | None:
        if code not in self._policy.retry_codes:
            return None
        delay = next(self._backoffs, None)
        if delay is None:
            return None
        if self._deadline is not None and time.monotonic() + delay >= self._deadline:
            return None  # sleeping would use up the deadline: report the real failure instead
        return delay
