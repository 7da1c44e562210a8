"""Atomic file replacement: readers see the old file or the new one, never a half-written one.

A same-directory temporary file (so the rename never crosses filesystems), fsync'd before the rename and
the directory fsync'd after it, so a crash or power cut at any point leaves one of the two complete files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replace_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; once the block has written it, fsync it and rename it onto
    `path`. If the block raises, the temporary file is removed and `path` is untouched."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.chmod(temporary, _FILE_MODE)  # writers such as safetensors create 0600 files; bundles are shared
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    with replace_atomically(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomically(path, text.encode())


def json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars, without importing numpy
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def write_json_atomically(path: str | os.PathLike, data: Any, indent: int | None = 2, sort_keys: bool = False) -> None:
    """JSON (numpy scalars, tuples and sets allowed) written with `replace_atomically`."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=json_default)
    write_text_atomically(path, text + "\n")
