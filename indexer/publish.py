"""Atomic, versioned publishing of index builds under one index root.

Layout::

    <root>/CURRENT              name of the live version (one line), replaced by atomic rename
    <root>/versions/<version>/  manifest.json + index files, complete before it gets this name
    <root>/versions/.tmp-<version>/   a build in progress (removed by the next builder if it died)
    <root>/build.lock           flock held by the one running builder

A version directory is written under a temporary name, every file fsync'd, then renamed into place and the
parent fsync'd; only then is CURRENT flipped (temp file, fsync, rename, fsync). A builder killed at any point
leaves CURRENT naming a complete older version. Readers only ever follow CURRENT. A build that fails (a full
disk, a file size limit, a bug) removes what it wrote, so it neither keeps a full disk full nor
leaves a complete-looking version that was never published.

Each manifest names the model that built its version (`model.fingerprint`, `model.bundle`), so a server
following models serves a version with its own model. `activate_version` makes a kept version live again
(CURRENT flip only): that is a rollback, within one poll of the servers. Pruning therefore keeps, beyond the
newest versions, the newest version of each of the last models, so the previous model's index is still
there to roll back to however many builds the new one has had.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from shopclip.atomic import fsync_directory, write_json_atomically, write_text_atomically
from shopclip.errors import Busy, NotFound, ShopclipError
from shopclip.indexer.faults import crash_point

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
LOCK_FILE = "build.lock"
MANIFEST_FILE = "manifest.json"
TMP_PREFIX = ".tmp-"
# What a version holds beside its manifest: written by indexer/build.py, read by indexer/published.py (which,
# on the server's side, must not import the builder).
INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
PRODUCTIDS_FILE = "productids.npy"
CODES_FILE = "codes.npy"
PRODUCTS_FILE = "products.arrow"
NO_CODE = -1
"""codes.npy value of unlabelled products."""
KEEP_MODELS = 2
"""Models whose newest version pruning keeps: the serving one and the one a rollback would return to."""


def versions_dir(root: Path) -> Path:
    return Path(root) / VERSIONS_DIR


def new_version_name(fingerprint: str) -> str:
    """Sortable by time, unique per build: `20261125T221500123456Z-<fingerprint prefix>`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    safe = "".join(ch if ch.isalnum() else "-" for ch in fingerprint)[:24].strip("-")
    return f"{stamp}-{safe}" if safe else stamp


def read_current(root: str | Path) -> str | None:
    """The live version's name, or None before the first publish (one small file read)."""
    try:
        name = (Path(root) / CURRENT_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name or None


def fsync_tree(path: Path) -> None:
    """Flush every file below `path`, then the directories, so a rename publishes durable contents."""
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        with file.open("rb") as handle:
            os.fsync(handle.fileno())
    for directory in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        fsync_directory(directory)
    fsync_directory(path)


def write_json_atomic(path: Path, data: dict) -> None:
    """Manifests and job state: sorted keys, so equal content gives equal files."""
    write_json_atomically(path, data, sort_keys=True)


@contextmanager
def builder_lock(root: str | Path) -> Iterator[None]:
    """Exclusive right to build under `root`; a second builder gets Busy naming the holder.

    flock is released by the kernel when the holder dies, so a killed builder never leaves a stale lock."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    handle = (root / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            raise Busy(f"another index builder holds {root / LOCK_FILE} ({holder}); "
                       "wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def start_version(root: str | Path, version: str) -> Path:
    """A fresh temporary directory for `version`, after removing what dead builders left behind."""
    parent = versions_dir(Path(root))
    parent.mkdir(parents=True, exist_ok=True)
    for leftover in parent.glob(TMP_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = parent / (TMP_PREFIX + version)
    staging.mkdir()
    return staging


@contextmanager
def staged_version(root: str | Path, version: str) -> Iterator[Path]:
    """`start_version`'s directory, for the block to fill and hand to `commit_version`. When the block fails
    before CURRENT names the version, the staging directory (or the version it was renamed to) is removed, and
    a write failure (OSError: disk full, quota, file size limit) becomes one ShopclipError that says nothing
    was published and which version stays current."""
    root = Path(root)
    previous = read_current(root)
    staging = start_version(root, version)
    try:
        yield staging
    except BaseException as exc:
        if read_current(root) == version:  # it failed after the flip: the version is live, keep it
            raise
        for leftover in (staging, versions_dir(root) / version):
            shutil.rmtree(leftover, ignore_errors=True)
        if isinstance(exc, OSError):
            reason = f"{exc.strerror}{f': {exc.filename}' if exc.filename else ''}" if exc.strerror else str(exc)
            raise ShopclipError(f"index root {root}: could not write version {version} ({reason}); nothing was "
                                f"published, {previous or 'no version'} stays current") from exc
        raise


def commit_version(root: str | Path, staging: Path, manifest: dict, keep: int) -> Path:
    """Make the staged build the live version: manifest, fsync, rename, flip CURRENT, prune old versions."""
    root = Path(root)
    version = manifest["version"]
    write_json_atomic(staging / MANIFEST_FILE, manifest)
    fsync_tree(staging)
    crash_point("publish-before-rename")
    final = versions_dir(root) / version
    os.replace(staging, final)
    fsync_directory(final.parent)
    crash_point("publish-before-flip")
    write_text_atomically(root / CURRENT_FILE, version + "\n")
    crash_point("publish-after-flip")
    prune_versions(root, keep)
    return final


def list_versions(root: str | Path) -> list[str]:
    """Complete versions, oldest first."""
    parent = versions_dir(Path(root))
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir()
                  if p.is_dir() and not p.name.startswith(TMP_PREFIX) and (p / MANIFEST_FILE).exists())


def prune_versions(root: str | Path, keep: int, keep_models: int = KEEP_MODELS) -> list[str]:
    """Delete all but the newest `keep` versions, the current one and the newest version of each of the last
    `keep_models` models (the rollback targets); returns what was removed."""
    current = read_current(root)
    names = list_versions(root)
    kept = {current, *names[-keep:], *newest_version_per_model(root, names)[-keep_models:]} if keep > 0 else set()
    doomed = [name for name in names if name not in kept] if keep > 0 else []
    for name in doomed:
        shutil.rmtree(versions_dir(Path(root)) / name, ignore_errors=True)
    return doomed


def model_of(root: str | Path, version: str) -> str | None:
    """Fingerprint of the model that built `version` (None for a manifest that does not say)."""
    return (read_manifest(root, version).get("model") or {}).get("fingerprint")


def release_in(manifest: dict) -> str | None:
    """The release of the model that built a version (`Embedder.release`); None for a manifest written before
    releases were recorded."""
    return (manifest.get("model") or {}).get("release")


def release_of(root: str | Path, version: str) -> str | None:
    """`release_in` the manifest of `version`."""
    return release_in(read_manifest(root, version))


def _model_key(root: str | Path, version: str) -> tuple[str | None, str | None]:
    """What tells models apart: the release, or for a manifest from before releases its fingerprint alone."""
    release = release_of(root, version)
    return (None, release) if release else (model_of(root, version), None)


def newest_version_per_model(root: str | Path, names: list[str] | None = None) -> list[str]:
    """For each model (release: weights and classifier) with a complete version, its newest one; ordered by that
    version, oldest first."""
    newest: dict[tuple[str | None, str | None], str] = {}
    for name in names if names is not None else list_versions(root):  # oldest first: later ones win
        newest[_model_key(root, name)] = name
    return sorted(newest.values())


def newest_version_built_by(root: str | Path, fingerprint: str, release: str = "") -> str | None:
    """The newest complete version built by the model with `release` (what a rollback to it serves), or without
    a `release` (a registry version from before them) by any model with `fingerprint`. A manifest that records
    no release counts for the fingerprint it names."""
    def built_by(name: str) -> bool:
        recorded = release_of(root, name)
        if release and recorded:
            return recorded == release
        return model_of(root, name) == fingerprint

    built = [name for name in list_versions(root) if built_by(name)]
    return built[-1] if built else None


def activate_version(root: str | Path, version: str) -> None:
    """Make a kept, complete version live (a rollback): flip CURRENT to it under the builder lock, so no build
    publishes over the flip. NotFound if `version` is not a complete version of `root`."""
    with builder_lock(root):
        kept = list_versions(root)
        if version not in kept:
            raise NotFound(f"index root {root}: no complete version {version!r} (kept: {', '.join(kept) or 'none'})")
        write_text_atomically(Path(root) / CURRENT_FILE, version + "\n")


def read_manifest(root: str | Path, version: str) -> dict:
    return json.loads((versions_dir(Path(root)) / version / MANIFEST_FILE).read_text(encoding="utf-8"))
