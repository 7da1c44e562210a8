"""Local copies of what s3:// URIs hold, for the code that reads and writes plain folders.

- `resolve_bundle`: a model bundle URI -> a local folder in a cache keyed by the prefix's content signature, so a
  second start (server, indexer, another process) lists the prefix and finds its copy without downloading;
  a re-uploaded bundle has another signature and is downloaded once more. Local paths and `fake:` pass through.
- `local_copy`: an input folder (training data, a drop) mirrored into the cache; only what changed is fetched.
- `staged_output`: an output folder (a bundle being trained) built locally, uploaded when the block succeeds.

Every copy is complete or absent: a bundle is downloaded under a temporary name and renamed into the cache, so a
process killed mid-download, or two starting together, never leave (or read) half a bundle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shopclip.errors import NotFound
from shopclip.objectstore import S3_SCHEME, ObjectInfo, ObjectStore, current_options, is_s3, signature

log = logging.getLogger(__name__)

BUNDLE_MARKER = "config.json"
"""shopclip.model.bundle.CONFIG_FILE (not imported: that module loads torch). Uploads send it last, so a prefix
that has it holds a whole bundle."""
BUNDLES_DIR, DATA_DIR, STAGE_DIR = "bundles", "data", "stage"
KEEP_BUNDLE_COPIES = 2
"""Cached contents kept per bundle URI: the newest and the one before (a process may still be loading it)."""


def cache_key(uri: str) -> str:
    """A folder name for a URI: readable, and unique through a hash of the whole URI."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", uri.removeprefix(S3_SCHEME)).strip("-.")[:60]
    return f"{readable}-{hashlib.blake2b(uri.encode(), digest_size=4).hexdigest()}"


def cache_folder(kind: str, uri: str, store: ObjectStore | None = None) -> Path:
    """<store cache>/<kind>/<cache key of uri>: where a copy of what `uri` holds is kept."""
    options = store.options if store is not None else current_options()
    return options.store_cache / kind / cache_key(uri)


def resolve_bundle(spec: str, store: ObjectStore | None = None) -> str:
    """The local folder to load a bundle from: `spec` itself unless it is an s3:// URI (then the cached copy of
    the prefix's current content, downloaded if there is none). NotFound when the prefix holds no bundle."""
    if not is_s3(spec):
        return spec
    store = store or ObjectStore()
    objects = store.list(spec)
    if not any(item.key == BUNDLE_MARKER for item in objects):
        raise NotFound(f"{spec}: no model bundle there (no {BUNDLE_MARKER}; is it still being uploaded?)")
    key = cache_folder(BUNDLES_DIR, spec, store)
    entry = key.with_name(f"{key.name}-{signature(objects)[:16]}")
    if entry.is_dir():
        log.info("bundle %s: using the cached copy %s", spec, entry)
        return str(entry)
    _download_whole(store, spec, objects, entry)
    _prune_copies(key, entry)
    return str(entry)


def _download_whole(store: ObjectStore, uri: str, objects: list[ObjectInfo], entry: Path) -> None:
    """Download into a temporary sibling, then rename onto `entry`; another process that got there first wins."""
    temporary = entry.with_name(f".tmp-{entry.name}-{os.getpid()}-{threading.get_ident()}")
    try:
        mirrored = store.download(uri, temporary, objects=objects)
        try:
            os.rename(temporary, entry)
        except OSError:
            if not entry.is_dir():
                raise
            log.info("bundle %s: another process cached it first", uri)
            return
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    log.info("bundle %s: downloaded %d files (%.1f MiB) into %s", uri, mirrored.fetched,
             mirrored.bytes_fetched / 2**20, entry)


def _prune_copies(key: Path, newest: Path) -> None:
    copies = sorted((p for p in key.parent.glob(f"{key.name}-*") if p.is_dir() and p != newest),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in copies[KEEP_BUNDLE_COPIES - 1:]:
        shutil.rmtree(stale, ignore_errors=True)


def local_copy(uri: str | os.PathLike, folder: Path | None = None, store: ObjectStore | None = None) -> Path:
    """A local folder holding what `uri` holds: `uri` itself when local, else an up-to-date mirror of the prefix
    in `folder` (default: the cache's data folder for that URI). The mirror is kept: a catalogue ingested from
    it refers to its image files."""
    if not is_s3(uri):
        return Path(uri)
    store = store or ObjectStore()
    target = folder or cache_folder(DATA_DIR, str(uri), store)
    mirrored = store.download(str(uri), target)
    log.info("%s: %d files mirrored into %s (%d fetched)", uri, mirrored.files, target, mirrored.fetched)
    return target


@contextmanager
def staged_output(uri: str | os.PathLike, skip: Iterable[str] = (), last: Iterable[str] = (), fresh: bool = True,
                  store: ObjectStore | None = None) -> Iterator[Path]:
    """Yield the folder to write an output into: `uri` itself when local; for s3:// a stage folder in the cache
    (the same one for the same URI, so a resumed job finds its checkpoint; emptied first when `fresh`, so no file
    of an earlier output is uploaded with this one), uploaded when the block returns (`skip` and `last` as for
    ObjectStore.upload). If the block raises, nothing is uploaded."""
    if not is_s3(uri):
        yield Path(uri)
        return
    store = store or ObjectStore()
    stage = cache_folder(STAGE_DIR, str(uri), store)
    if fresh:
        shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True, exist_ok=True)
    yield stage
    count = store.upload(stage, str(uri), skip=skip, last=last)
    log.info("%s: uploaded %d files from %s", uri, count, stage)
