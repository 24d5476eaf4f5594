"""Atomic file writes: a reader sees the old file or the whole new one, never a part of it.

Every writer here puts its bytes in a temporary file beside the destination (same
directory, so same filesystem: `os.replace` is atomic only within one), fsyncs it, moves it
onto the destination with `os.replace`, and fsyncs the directory so the rename survives a
power cut. On any failure, KeyboardInterrupt included, the temporary file is removed and an
existing destination is left untouched. This is the library's one place that does that.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary file beside `path`; on success move it onto `path`.

    For writers that need the path across a block (streams, memory maps); otherwise use
    `atomic_write`. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, unique, and ending in path's own suffix: some writers pick the format from it
    # (DVC's compose_and_dump), others append one when it is missing (np.save).
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    # Not tempfile.mkstemp: its 0600 mode would stick to the final file; touch honours umask.
    tmp.touch(exist_ok=False)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` on a temporary path beside `path`, then move it onto `path`; return `path`."""
    with atomic_output(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; return `path`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as sorted, indented JSON to `path`, atomically; return `path`.

    Sorted keys and no timestamps: the same data gives the same bytes, which DVC relies on.
    NumPy scalars and arrays, tuples and paths are written as the JSON values they stand for.
    """
    return write_text(
        path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, np.ndarray)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON serialisable")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); some filesystems refuse fsync on a directory."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # The file is already in place; only its durability across a power cut is unknown.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
