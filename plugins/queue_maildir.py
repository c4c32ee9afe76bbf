"""Deliver local mail into Maildir folders: ``<maildir>/<domain>/<local-part>/new/``.

Durability: the message is written once under the first mailbox's ``tmp/``, fsynced,
hard-linked into every recipient's ``new/`` (a link is atomic: readers see the whole file or
nothing), the ``new/`` directories are fsynced so the links survive a crash, and only then is
OK returned, i.e. the client's 250 is sent. The disk work runs in worker threads, bounded by
``threads``, so the event loop never waits on the disk.

Config: ``maildir`` (default ``<var_dir>/maildir``), ``fsync`` (default true), ``threads``
(default 16), ``postmaster_domain`` (where ``<postmaster>`` goes; default the first local
domain).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import trio

from trio_mta import hooks

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._+-=")


def mailbox_dirname(name: str) -> str:
    """A file-system-safe, case-folded directory name for a local part or domain.

    Anything outside a small safe set (``/``, a leading dot that could make ``..``) is
    %-escaped byte by byte, so two distinct names never share a directory."""
    out: list[str] = []
    for i, ch in enumerate(name.lower()):
        if ch in _SAFE and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out) or "%00"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MaildirStore:
    def __init__(self, root: Path, hostname: str, *, fsync: bool = True) -> None:
        self.root = root
        self.hostname = hostname.replace("/", "_").replace(":", "_")
        self.fsync = fsync
        self._ready: set[Path] = set()

    def mailbox(self, domain: str, local_part: str) -> Path:
        return self.root / mailbox_dirname(domain) / mailbox_dirname(local_part)

    def _ensure(self, box: Path) -> None:
        if box not in self._ready:
            for sub in ("tmp", "new", "cur"):
                (box / sub).mkdir(parents=True, exist_ok=True)
            self._ready.add(box)

    def deliver(
        self, message_id: str, mailboxes: list[tuple[str, str]], data: Iterable[bytes]
    ) -> list[Path]:
        """Store the message in each ``(domain, local_part)`` mailbox; return the new files."""
        boxes = list(dict.fromkeys(self.mailbox(d, lp) for d, lp in mailboxes))
        for box in boxes:
            self._ensure(box)
        now = time.time()
        name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{message_id}.{self.hostname}"
        tmp = boxes[0] / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        placed: list[Path] = []
        try:
            try:
                for chunk in data:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
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


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        root = self.config.get("maildir", str(self.env.var_dir / "maildir"))
        fsync = self.config.get("fsync", True)
        threads = self.config.get("threads", 16)
        postmaster = self.config.get(
            "postmaster_domain",
            self.env.local_domains[0] if self.env.local_domains else "localhost",
        )
        if not isinstance(root, str):
            raise ValueError("maildir must be a path")
        if not isinstance(fsync, bool):
            raise ValueError("fsync must be true or false")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError("threads must be a positive integer")
        if not isinstance(postmaster, str):
            raise ValueError("postmaster_domain must be a domain name")
        self.store = MaildirStore(Path(root), self.env.hostname, fsync=fsync)
        self.postmaster_domain = postmaster.lower()
        # Bounds the disk threads so a burst of messages can't start a thread each.
        self.limiter = trio.CapacityLimiter(threads)

    async def hook_queue(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        boxes = [
            (a.domain_lower or self.postmaster_domain, a.unquoted_local_part)
            for a, _ in txn.recipients
        ]
        await trio.to_thread.run_sync(
            self.store.deliver, txn.id, boxes, txn.iter_message(), limiter=self.limiter
        )
        return hooks.ok(f"Message queued as {txn.id}")
