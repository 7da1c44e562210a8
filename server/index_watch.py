"""Hot swap: notice a newly published index, load it off the event loop, swap it in atomically.

The poll only asks the indexer for the current version string (cheap); a new version is opened in a
worker thread while requests keep being served from the old one, then `Engine.swap_index` replaces
one reference, so no request fails or mixes versions. The served version lives in memory, so it keeps
serving whatever happens on disk; the watcher says when the published index stops backing it:

- a newly published version that fails to load (damaged files, another model that cannot be loaded),
  retried at every poll;
- the index root or CURRENT removed, or the served version's files changed since they were read (a source
  that can check, `CheckedSource`; the published index root can).

A version built with another model than the one served (other weights, or the same weights with another
classifier: `Embedder.release`) is served with that model when the watcher may follow models (`load_model`, the
server's `--follow-model`): the manifest names the bundle, the watcher loads it
off the event loop, checks it is the model the index names, and `Engine.swap_model` replaces model and index
in one assignment. That is how a promoted champion (or a rollback) reaches a running server: publish an index
built with it. Without `load_model` such a version is refused and the served pair stays.

That is `problem` (None while all is well): logged once when it appears or changes, once when it clears,
and handed to `on_problem` (the server's health reports it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from shopclip.errors import NotReady, ShopclipError
from shopclip.indexer.api import PublishedIndex
from shopclip.indexer.publish import release_in
from shopclip.model.embedder import Embedder
from shopclip.server.engine import Engine, check_index_matches

ModelLoader = Callable[[str], Awaitable[Embedder]]
"""Loads the model at a bundle location (as an index manifest records it), off the event loop."""

log = logging.getLogger(__name__)


class IndexSource(Protocol):
    def current_version(self) -> str | None:
        """Version that `open` would load now, None while nothing is published."""
        ...

    def open(self) -> PublishedIndex: ...


@runtime_checkable
class CheckedSource(IndexSource, Protocol):
    def problem(self, served: PublishedIndex) -> str | None:
        """Why `served` could not be loaded again from this source (removed, changed on disk); None while it
        could, or once another version is current (which the watcher then loads)."""
        ...


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

    def problem(self, served: PublishedIndex) -> str | None:
        from shopclip.indexer.published import backing_problem

        return backing_problem(self.root, served)


class IndexWatcher:
    def __init__(self, source: IndexSource, engine: Engine, interval_s: float,
                 on_swap: Callable[[PublishedIndex], Awaitable[None]],
                 on_problem: Callable[[str | None], Awaitable[None]] | None = None,
                 load_model: ModelLoader | None = None) -> None:
        """`load_model`: follow the model a newly published index was built with (None: refuse such an index)."""
        self._source = source
        self._load_model = load_model
        self._engine = engine
        self._interval_s = interval_s
        self._on_swap = on_swap
        self._on_problem = on_problem
        self._task: asyncio.Task[None] | None = None
        self.problem: str | None = None
        """Why the published index no longer backs what is served, None while it does."""

    async def load_if_newer(self) -> bool:
        """Swap in the current published version if it is not the one being served (True when swapped), else
        check that the served one is still backed by the source. A version that fails to load becomes
        `problem` rather than an exception: the old index stays in service and the next poll retries."""
        version = await asyncio.to_thread(self._source.current_version)
        if version is not None and version != self._served_version():
            return await self._swap_to(version)
        await self._set_problem(await asyncio.to_thread(self._check_served, version))
        return False

    async def _swap_to(self, version: str) -> bool:
        try:
            index = await asyncio.to_thread(self._source.open)
            if index.version == self._served_version():
                return False
            if self._load_model is not None and self._built_by_another_model(index):
                self._engine.swap_model(await self._model_of(index), index)
                embedder = self._engine.embedder
                log.info("now serving model %s, release %s (%s)", embedder.fingerprint, embedder.release,
                         _bundle_of(index))
            else:  # the served model's (swap_index refuses another model's vectors and says why)
                self._engine.swap_index(index)
        except Exception as exc:  # noqa: BLE001 - any failure to load leaves the old index in service
            await self._set_problem(f"cannot load published index version {version}: {exc}; "
                                    f"{self._still_serving()}", exc)
            return False
        log.info("now serving index %s (%d vectors)", index.version, len(index))
        await self._set_problem(None)
        await self._on_swap(index)
        return True

    def _built_by_another_model(self, index: PublishedIndex) -> bool:
        """True when `index` names a model other than the served one: other weights, or the same weights with
        another classifier (a retrain that changed only the views and their weights keeps every vector)."""
        served, release = self._engine.embedder, release_in(index.manifest)
        if release is not None:
            return release != served.release
        built_by = _built_by(index)  # a manifest from before releases: the weights alone say
        return built_by is not None and built_by != served.fingerprint

    async def _model_of(self, index: PublishedIndex) -> Embedder:
        """The model `index` was built with, loaded from where its manifest says; NotReady if it is another."""
        bundle = _bundle_of(index)
        if not bundle:
            raise NotReady(f"index {index.version} was built with model {_built_by(index)}, and its manifest "
                           f"does not say where that model is (model.bundle): rebuild the index")
        embedder = await self._load_model(bundle)
        check_index_matches(index, embedder)
        return embedder

    def _check_served(self, version: str | None) -> str | None:
        """Runs off the event loop (a few stat calls on the published index)."""
        served = self._engine.index
        if served is None:
            return None  # nothing loaded yet: health already says NOT_SERVING
        if isinstance(self._source, CheckedSource):
            problem = self._source.problem(served)
        else:
            problem = "the index source publishes no version any more" if version is None else None
        return f"{problem}; {self._still_serving()}" if problem else None

    def _still_serving(self) -> str:
        served = self._served_version()
        return f"still serving version {served} from memory" if served else "no index is served until one loads"

    async def _set_problem(self, problem: str | None, error: Exception | None = None) -> None:
        """Log and report a change of `problem`; the same problem seen again at the next poll stays quiet."""
        if problem == self.problem:
            return
        previous, self.problem = self.problem, problem
        if problem is None:
            log.info("published index problem resolved (was: %s)", previous)
        else:  # a traceback only for what is not a known failure (a bug deserves one)
            unexpected = error is not None and not isinstance(error, ShopclipError)
            log.warning("published index: %s", problem, exc_info=error if unexpected else None)
        if self._on_problem is not None:
            await self._on_problem(problem)

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
            except Exception as exc:  # noqa: BLE001 - e.g. CURRENT unreadable: keep serving, say so, retry
                await self._set_problem(f"cannot read the published index: {exc}; {self._still_serving()}", exc)


def _built_by(index: PublishedIndex) -> str | None:
    return (index.manifest.get("model") or {}).get("fingerprint")


def _bundle_of(index: PublishedIndex) -> str:
    return str((index.manifest.get("model") or {}).get("bundle") or "")
