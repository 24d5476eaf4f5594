"""Atomic file writes: a reader sees the old file or the whole new one, never a part of it.

Every writer here puts its bytes in a temporary file beside the destination (same
directory, so same filesystem: `os.replace` is atomic only within one), fsyncs it, moves it
onto the destination with `os.replace`, and fsyncs the directory so the rename survives a
power cut. On any failure, KeyboardInterrupt included, the temporary file is removed and an
existing destination is left untouched. This is the library's one place that does that.

A full disk (ENOSPC) is raised as `DiskFullError`: it names the directory to free space in,
the space the file needed when the writer knows it, and the space that was free.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# With no size given, a failed write counts as a full disk when less than this is left.
_UNKNOWN_SIZE_ROOM = 1 << 20


class DiskFullError(OSError):
    """No space was left on the device while writing a file (errno ENOSPC)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


@contextlib.contextmanager
def atomic_output(path: str | Path, *, size: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary file beside `path`; on success move it onto `path`.

    For writers that need the path across a block (streams, memory maps); otherwise use
    `atomic_write`. Parent directories are created. `size`, the bytes the file will take
    if known, goes into the `DiskFullError` message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, unique, and ending in path's own suffix: some writers pick the format from it
    # (DVC's compose_and_dump), others append one when it is missing (np.save).
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        # Not tempfile.mkstemp: its 0600 mode would stick to the final file; touch honours umask.
        tmp.touch(exist_ok=False)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        full = _ran_out_of_space(err, tmp, size)  # before unlinking frees the space again
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path, size, err) from err
        raise
    _fsync_dir(path.parent)


def _ran_out_of_space(err: BaseException, tmp: Path, size: int | None) -> bool:
    """Whether writing `tmp` failed for want of space: ENOSPC, or any error while the
    device lacks the room still needed (`torch.save` reports a full disk as a
    RuntimeError, "unexpected pos ...", with no errno)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit
        return False
    try:
        written = tmp.stat().st_size if tmp.exists() else 0
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        return False
    return free < (size - written if size is not None else _UNKNOWN_SIZE_ROOM)


def atomic_write(
    path: str | Path, write: Callable[[Path], None], *, size: int | None = None
) -> Path:
    """Run `write(tmp)` on a temporary path beside `path`, then move it onto `path`; return
    `path`. `size`: the bytes the file will take, if known (see `atomic_output`)."""
    with atomic_output(path, size=size) as tmp:
        write(tmp)
    return Path(path)


def disk_full_error(path: Path, size: int | None, cause: BaseException) -> DiskFullError:
    """The `DiskFullError` for a failed write of `path`: where to free space, and how much."""
    directory = path.parent.resolve()
    try:
        free = f"{format_bytes(shutil.disk_usage(directory).free)} free"
    except OSError:
        free = "free space unknown"
    needed = f" needs {format_bytes(size)}" if size is not None else ""
    kept = f"; the existing {path.name} is unchanged" if path.exists() else ""
    return DiskFullError(
        f"no space left on the device of {directory} ({free}): writing {path.name}{needed}. "
        f"Free space there (or on its disk) and run again{kept}. "
        f"[{type(cause).__name__}: {cause}]"
    )


def format_bytes(n: int) -> str:
    """`n` bytes for people: `1.5 MiB (1572864 bytes)`."""
    if n < 1024:
        return f"{n} bytes"
    power = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024**power:.1f} {' KMGT'[power]}iB ({n} bytes)"


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
