"""The periodic reindexing job: pick up new drop folders, ingest, build, publish; one JSON line per run.

A drop folder is any direct subfolder of the drops directory that holds a catalogue (either layout); it is
ingested again only when its csv files or image count change. The drops directory may be an s3:// prefix: each
"folder" under it is a drop, found by listing; a drop whose signature (keys, sizes, ETags) moved is mirrored into
<index root>/staged-drops/<drop> (kept: the catalogue refers to its images), ingested from there, and its rejects
file written beside it in the store (<drop>/rejects.csv). A drop is marked done only once its ingest has committed
and its rejects file is stored. A build follows when the catalogue or the model
moved past the published version. The whole run holds the builder lock, so two schedulers cannot interleave.

Exit statuses (for cron and Airflow): 0 published or already up to date, 1 unexpected failure, 2 invalid
input (bad arguments, or a drop folder that could not be read: the other drops are still ingested and
built), 3 the drops prefix's bucket does not exist, 4 the object store cannot be reached, 6 another builder is
running, 7 publish refused (recall below the floor), 8 the object store refused the credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from shopclip.errors import Busy, InvalidInput, NotFound, PublishRefused, ShopclipError, exit_code
from shopclip.indexer import publish
from shopclip.indexer.build import BuildOptions, build_under_lock, needs_build
from shopclip.indexer.catalogue import DEFAULT_TABLE, Catalogue
from shopclip.indexer.ingest import ingest_drop, is_drop_object
from shopclip.indexer.known_vectors import discard_kept, seed_catalogue
from shopclip.catalogue_files import SourceOptions, detect_layout, layout_of_names
from shopclip.objectstore import ObjectInfo, ObjectStore, is_s3, name_of, signature

log = logging.getLogger(__name__)

DROPS_STATE_FILE = "drops.json"
REJECTS_DIR = "rejects"
STAGED_DROPS_DIR = "staged-drops"
EXIT_OK, EXIT_FAILED = 0, 1
"""Every other status comes from shopclip.errors.EXIT_CODES, as for every command."""
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
SECONDS_PER_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class JobConfig:
    drops: Path | str
    """A directory, or an s3:// prefix, whose folders are drops."""
    catalogue_uri: str
    index_root: Path
    bundle: str
    table: str = DEFAULT_TABLE
    build: BuildOptions = field(default_factory=BuildOptions)
    sources: SourceOptions = field(default_factory=SourceOptions)
    known_vectors: Path | None = None
    """Folder of vectors computed before the build (indexer/known_vectors.py): the model's kept vectors are
    stored for the products they fit and not embedded again. None: embed everything stale."""


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h', '1d' or plain seconds."""
    match = DURATION.match(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise InvalidInput("every", f"expected a positive duration like 30m or 1h, got {text!r}")
    return float(match.group(1)) * SECONDS_PER_UNIT[match.group(2)]


def drop_signature(folder: Path) -> str:
    """Changes when a drop's csv files or its set of images change (cheap: stat only)."""
    hasher = hashlib.blake2b(digest_size=16)
    for csv_file in sorted(folder.glob("*.csv")):
        stat = csv_file.stat()
        hasher.update(f"{csv_file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    images = sorted(p.name for p in folder.rglob("image_*_product_*"))
    hasher.update(("\n".join(images)).encode())
    return hasher.hexdigest()


def load_state(index_root: Path) -> dict[str, str]:
    """Drop name -> signature of what was ingested (drops.json under the index root)."""
    path = index_root / DROPS_STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


@dataclass(frozen=True)
class PendingDrop:
    name: str
    """The drop's folder name: its key in drops.json and its catalogue source batch."""
    source: str
    """The folder, or the s3:// prefix (ending in '/')."""
    signature: str
    objects: list[ObjectInfo] | None = None
    """The store listing `signature` was made from (s3:// drops), so staging fetches exactly what was seen."""


def pending_drops(drops: Path | str, state: dict[str, str]) -> list[PendingDrop]:
    """Drops not yet ingested in their current form, oldest name first."""
    if is_s3(drops):
        return _pending_store_drops(str(drops), state)
    drops = Path(drops)
    if not drops.is_dir():
        raise InvalidInput("drops", f"{drops} is not a directory")
    found = []
    for folder in sorted(p for p in drops.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if detect_layout(folder) is None:
            continue
        drop = PendingDrop(folder.name, str(folder), drop_signature(folder))
        if state.get(drop.name) != drop.signature:
            found.append(drop)
    return found


def _pending_store_drops(drops: str, state: dict[str, str]) -> list[PendingDrop]:
    """The same for an s3:// prefix, from listings only (nothing is downloaded to tell a drop or a change)."""
    store = ObjectStore()
    found = []
    for prefix in store.folders(drops):
        name = name_of(prefix)
        objects = [item for item in store.list(prefix) if is_drop_object(item.key)]
        if name.startswith(".") or layout_of_names(item.key for item in objects if "/" not in item.key) is None:
            continue
        drop = PendingDrop(name, prefix, signature(objects), objects)
        if state.get(drop.name) != drop.signature:
            found.append(drop)
    return found


def ingest_pending(config: JobConfig, catalogue: Catalogue) -> list[dict]:
    """Ingest each new or changed drop; a drop that cannot be read (or vanished from the store since it was
    listed) is reported, and retried next run, without holding back the others. The caller holds the builder
    lock (run_once, and the drop flow's ingest step)."""
    state = load_state(config.index_root)
    summaries = []
    for drop in pending_drops(config.drops, state):
        try:
            summary = ingest_drop(drop.source, catalogue, config.index_root / REJECTS_DIR / f"{drop.name}.csv",
                                  config.index_root / STAGED_DROPS_DIR / drop.name, config.sources,
                                  source_batch=drop.name, objects=drop.objects)
        except (InvalidInput, NotFound) as exc:
            summaries.append({"source": drop.source, "error": str(exc)})
            continue
        summaries.append(summary)
        state[drop.name] = drop.signature
        publish.write_json_atomic(config.index_root / DROPS_STATE_FILE, state)  # after each drop: resumable
    return summaries


def run_once(config: JobConfig) -> tuple[int, dict]:
    """One pass: (exit status, JSON-able summary). Never raises for expected failures."""
    started = time.monotonic()
    summary: dict = {"run_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "drops": [],
                     "build": None}
    try:
        with publish.builder_lock(config.index_root):
            catalogue = Catalogue(config.catalogue_uri, config.table)
            summary["drops"] = ingest_pending(config, catalogue)
            from shopclip.model import load_embedder  # heavy: only once there is work to check

            embedder = load_embedder(config.bundle)
            if config.known_vectors is not None:
                summary["reused_vectors"] = seed_catalogue(catalogue, config.known_vectors, embedder.fingerprint)
            if needs_build(config.index_root, catalogue, embedder):
                result = build_under_lock(catalogue, config.index_root, embedder, config.build)
                summary["build"] = {"version": result.version, "embedded": result.embedded,
                                    "vectors": result.manifest["counts"]["vectors"],
                                    "index": result.manifest["index"]["kind"],
                                    "recall_at_k": result.manifest["index"]["recall_at_k"]}
            if config.known_vectors is not None:
                discard_kept(config.known_vectors)  # used, or of a model that is not serving: the catalogue has them
        status, code = ("published" if summary["build"] else "up-to-date"), EXIT_OK
        if any("error" in drop for drop in summary["drops"]):
            status, code = status + "-with-invalid-drops", exit_code(InvalidInput)
    except ShopclipError as exc:
        status, code, summary["error"] = _status(exc), exit_code(exc), str(exc)
    except Exception as exc:  # a scheduler needs the line and the status, not a dead loop
        log.error("index run failed:\n%s", traceback.format_exc())
        status, code, summary["error"] = "failed", EXIT_FAILED, f"{type(exc).__name__}: {exc}"
    summary.update(status=status, exit_code=code, seconds=round(time.monotonic() - started, 3),
                   current_version=publish.read_current(config.index_root))
    return code, summary


def _status(error: ShopclipError) -> str:
    """The summary's word for a failed run (the exit status says the same in shopclip.errors' table)."""
    for kind, word in ((Busy, "busy"), (PublishRefused, "refused"), (InvalidInput, "invalid-input")):
        if isinstance(error, kind):
            return word
    return "failed"


def print_line(line: str) -> None:
    print(line, flush=True)


def run_every(config: JobConfig, interval_s: float, max_runs: int | None = None,
              emit: Callable[[str], None] = print_line, stop: threading.Event | None = None) -> int:
    """Run, emit the JSON line, sleep until the next tick; stop cleanly on SIGTERM/SIGINT.

    Returns the last run's status so a supervisor sees a failing job even in loop mode."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    runs, code = 0, EXIT_OK
    while not stop.is_set():
        tick = time.monotonic()
        code, summary = run_once(config)
        emit(json.dumps(summary, sort_keys=True))
        runs += 1
        if max_runs is not None and runs >= max_runs:
            break
        stop.wait(max(0.0, interval_s - (time.monotonic() - tick)))
    return code
