"""Hot swap: notice a newly published index, load it off the event loop, swap it in atomically.

The poll only asks the indexer for the current version string (cheap); a new version is opened in a
worker thread while requests keep being served from the old one, then `Engine.swap_index` replaces
one reference, so no request fails or mixes versions. A version that fails to load is logged and
retried at the next poll; the old index stays in service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from shopclip.indexer.api import PublishedIndex
from shopclip.server.engine import Engine

log = logging.getLogger(__name__)


class IndexSource(Protocol):
    def current_version(self) -> str | None:
        """Version that `open` would load now, None while nothing is published."""
        ...

    def open(self) -> PublishedIndex: ...


class PublishedIndexSource:
    """The indexer's published versions under an index root."""

    def __init__(self, root: str) -> None:
        self.root = root

    def current_version(self) -> str | None:
        from shopclip.indexer.published import current_version  # faiss and lancedb load only when serving one

        return current_version(self.root)

    def open(self) -> PublishedIndex:
        from shopclip.indexer.published import open_current

        return open_current(self.root)


class IndexWatcher:
    def __init__(self, source: IndexSource, engine: Engine, interval_s: float,
                 on_swap: Callable[[PublishedIndex], Awaitable[None]]) -> None:
        self._source = source
        self._engine = engine
        self._interval_s = interval_s
        self._on_swap = on_swap
        self._task: asyncio.Task[None] | None = None

    async def load_if_newer(self) -> bool:
        """Load and swap in the current published version if it is not the one being served."""
        version = await asyncio.to_thread(self._source.current_version)
        if version is None or version == self._served_version():
            return False
        index = await asyncio.to_thread(self._source.open)
        if index.version == self._served_version():
            return False
        self._engine.swap_index(index)
        log.info("now serving index %s (%d vectors)", index.version, len(index))
        await self._on_swap(index)
        return True

    def _served_version(self) -> str | None:
        index = self._engine.index
        return index.version if index is not None else None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="index-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.load_if_newer()
            except Exception:  # noqa: BLE001 - keep serving the old index; retried at the next poll
                log.exception("could not load the newly published index; still serving %s", self._served_version())
