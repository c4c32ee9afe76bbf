"""One daemon per state directory: an exclusive ``flock`` on ``<var_dir>/trio-mta.lock``.

Postfix's ``master.lock`` in miniature. The kernel drops the lock when the process dies, however
it dies, so a crash never leaves a stale lock; the file holds the owner's pid for the message a
second daemon prints. The file is never removed: removing it would let a third process lock a
new file while the second still holds the old one. ``trio-mta queue`` takes the same lock while
it changes a stopped spool, so a daemon cannot start in the middle of that.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "trio-mta.lock"


def lock_path(var_dir: Path) -> Path:
    return Path(var_dir) / LOCK_NAME


class AlreadyRunning(Exception):
    """Another process holds the state directory's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"{path.parent} is in use by another trio-mta ({who}; lock {path})")


class VarDirLock:
    """Held from ``acquire`` until ``release`` (or the process's end)."""

    def __init__(self, var_dir: Path) -> None:
        self.path = lock_path(var_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock at once, or raise.

        Raises:
            AlreadyRunning: naming the pid written by the process that holds it.
            OSError: the file cannot be made (the directory must exist).
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            writable = True
        except PermissionError:
            # Another user's file (the daemon's, seen by an operator's `trio-mta queue`):
            # flock needs no write access, so whether a daemon holds it can still be told.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise AlreadyRunning(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> VarDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
