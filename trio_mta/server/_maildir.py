"""Maildir delivery (the Maildir format of qmail, as Dovecot and Courier read it).

Durability: the message is written once under ``tmp/``, fsynced, hard-linked into every
recipient's ``new/`` (a link is atomic: a reader sees the whole file or nothing), the ``new/``
directories are fsynced so the links survive a crash, and only then does the caller answer 250.
This module is synchronous on purpose: the caller runs it in a worker thread so the event loop
never waits on the disk.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._+-=")


def mailbox_dirname(local_part: str) -> str:
    """A file-system-safe, case-folded directory name for a local part.

    Anything outside a small safe set (including ``/`` and a leading dot, which would make
    ``..``) is %-escaped byte by byte, so two distinct local parts never share a directory.
    """
    folded = local_part.lower()
    out: list[str] = []
    for i, ch in enumerate(folded):
        if ch in _SAFE and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out) or "%00"


class MaildirStore:
    def __init__(self, root: Path, hostname: str, *, fsync: bool = True) -> None:
        self.root = root
        self.hostname = hostname.replace("/", "_").replace(":", "_")
        self.fsync = fsync
        self._ready: set[Path] = set()

    def mailbox(self, domain: str, local_part: str) -> Path:
        return self.root / mailbox_dirname(domain) / mailbox_dirname(local_part)

    def _ensure(self, box: Path) -> None:
        if box in self._ready:
            return
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        self._ready.add(box)

    def deliver(self, message_id: str, mailboxes: list[tuple[str, str]], data: bytes) -> list[Path]:
        """Store ``data`` in each ``(domain, local_part)`` mailbox; return the new files."""
        boxes = list(dict.fromkeys(self.mailbox(d, lp) for d, lp in mailboxes))
        for box in boxes:
            self._ensure(box)
        now = time.time()
        name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{message_id}.{self.hostname}"
        tmp = boxes[0] / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        placed: list[Path] = []
        try:
            for box in boxes:
                target = box / "new" / name
                os.link(tmp, target)
                placed.append(target)
            if self.fsync:
                for box in boxes:
                    _fsync_dir(box / "new")
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return placed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
