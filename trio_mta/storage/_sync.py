"""The few blocking calls every durable writer needs: write a new file, make data durable."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs  # noqa: B018  # probe: AttributeError where the platform lacks it
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()
_WRITEV_MAX = 64  # well under any IOV_MAX (1024 on Linux)


def syncfs(path: Path) -> bool:
    """One flush of the whole file system holding ``path``: a group commit's single sync.

    False where the call is missing (the caller then fsyncs each file and directory)."""
    if _LIBC is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)
    return True


def fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, chunks: Iterable[bytes]) -> int:
    """Create ``path`` (it must not exist) holding ``chunks``; return its size. On failure the
    file is removed, so a half-written file is never left under its name."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    try:
        done = 0
        if isinstance(chunks, list | tuple) and 1 < len(chunks) <= _WRITEV_MAX:
            # A few chunks already in memory (a header line and the message): one system call
            # for all, no joined copy. What a short write left is written below.
            done = os.writev(fd, chunks)
        for chunk in chunks:
            view = memoryview(chunk)
            size += len(view)
            if done >= len(view):
                done -= len(view)
                continue
            view, done = view[done:], 0
            while view:
                view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return size
