"""Deliver local mail into Maildir folders: ``<maildir>/<domain>/<local-part>/new/``.

Durability: the message is written once under the first mailbox's ``tmp/``, synced, renamed
(one mailbox) or hard-linked (several) into every recipient's ``new/`` (atomic: readers see the
whole file or nothing), the ``new/`` entries are synced so they survive a crash, and only then
is OK returned, i.e. the client's 250 is sent. The disk work runs in one group-commit thread
(``hooks.BatchWorker``): every message that arrives while a batch is on disk joins the next
batch, and a batch costs two ``syncfs`` calls whatever its size (per-file ``fsync`` where
``syncfs`` is missing). The event loop never waits on the disk.

Config: ``maildir`` (default ``<var_dir>/maildir``), ``fsync`` (default true),
``postmaster_domain`` (where ``<postmaster>`` goes; default the first local domain).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

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


@attrs.frozen
class Delivery:
    message_id: str
    mailboxes: tuple[tuple[str, str], ...]  # (domain, local part)
    data: Iterable[bytes] = attrs.field(eq=False)


@attrs.define
class _Staged:
    delivery: Delivery
    boxes: list[Path]
    name: str
    tmp: Path


def _syncfs(path: Path) -> bool:
    """One sync for the whole file system holding ``path``: the group commit's single flush.
    False where the call is not available (then each file is fsynced)."""
    if _LIBC is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)
    return True


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs  # noqa: B018  # probe: AttributeError where the platform lacks it
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


class MaildirStore:
    """Maildir writing, a batch at a time (called from the group-commit thread)."""

    def __init__(self, root: Path, hostname: str, *, fsync: bool = True) -> None:
        self.root = root
        self.hostname = hostname.replace("/", "_").replace(":", "_")
        self.fsync = fsync
        self.pid = os.getpid()
        self._ready: set[Path] = set()

    def mailbox(self, domain: str, local_part: str) -> Path:
        return self.root / mailbox_dirname(domain) / mailbox_dirname(local_part)

    def _ensure(self, box: Path) -> None:
        if box not in self._ready:
            for sub in ("tmp", "new", "cur"):
                (box / sub).mkdir(parents=True, exist_ok=True)
            self._ready.add(box)

    def deliver(self, delivery: Delivery) -> list[Path]:
        """Store one message in each of its mailboxes; return the new files."""
        result = self.deliver_batch([delivery])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def deliver_batch(self, batch: Sequence[Delivery]) -> list[list[Path] | BaseException]:
        """Write every message to ``tmp/``, make the data durable with one sync, place each
        in its ``new/`` directories, and make those entries durable with one more."""
        results: list[list[Path] | BaseException] = [[] for _ in batch]
        staged: list[tuple[int, _Staged]] = []
        for index, delivery in enumerate(batch):
            try:
                staged.append((index, self._write(delivery)))
            except Exception as exc:
                results[index] = exc
        if not staged:
            return results
        synced = False
        try:
            if self.fsync:
                synced = _syncfs(self.root)
        except OSError as exc:
            for index, item in staged:
                item.tmp.unlink(missing_ok=True)
                results[index] = exc
            return results
        new_dirs: set[Path] = set()
        for index, item in staged:
            try:
                if self.fsync and not synced:
                    _fsync_file(item.tmp)
                results[index] = self._place(item)
                new_dirs.update(box / "new" for box in item.boxes)
            except Exception as exc:
                results[index] = exc
        if self.fsync:
            try:
                if not _syncfs(self.root):
                    for directory in new_dirs:
                        _fsync_dir(directory)
            except OSError as exc:
                for index, _ in staged:
                    if not isinstance(results[index], BaseException):
                        results[index] = exc
        return results

    def _write(self, delivery: Delivery) -> _Staged:
        boxes = list(dict.fromkeys(self.mailbox(d, lp) for d, lp in delivery.mailboxes))
        for box in boxes:
            self._ensure(box)
        now = time.time()
        name = (
            f"{int(now)}.M{int(now * 1e6) % 1000000}P{self.pid}"
            f"Q{delivery.message_id}.{self.hostname}"
        )
        tmp = boxes[0] / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for chunk in delivery.data:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return _Staged(delivery, boxes, name, tmp)

    @staticmethod
    def _place(item: _Staged) -> list[Path]:
        if len(item.boxes) == 1:
            target = item.boxes[0] / "new" / item.name
            try:
                os.rename(item.tmp, target)
            except BaseException:
                item.tmp.unlink(missing_ok=True)
                raise
            return [target]
        placed: list[Path] = []
        try:
            for box in item.boxes:
                target = box / "new" / item.name
                os.link(item.tmp, target)
                placed.append(target)
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
        finally:
            item.tmp.unlink(missing_ok=True)
        return placed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        root = self.config.get("maildir", str(self.env.var_dir / "maildir"))
        fsync = self.config.get("fsync", True)
        postmaster = self.config.get(
            "postmaster_domain",
            self.env.local_domains[0] if self.env.local_domains else "localhost",
        )
        if not isinstance(root, str):
            raise ValueError("maildir must be a path")
        if not isinstance(fsync, bool):
            raise ValueError("fsync must be true or false")
        if not isinstance(postmaster, str):
            raise ValueError("postmaster_domain must be a domain name")
        unknown = set(self.config) - {"maildir", "fsync", "postmaster_domain"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        self.store = MaildirStore(Path(root), self.env.hostname, fsync=fsync)
        self.postmaster_domain = postmaster.lower()
        # Group commit: one disk thread writes every message that arrives meanwhile and syncs
        # once per batch, so durability costs one flush per batch rather than per message.
        self.writer: hooks.BatchWorker[Delivery, list[Path]] = hooks.BatchWorker(
            self.store.deliver_batch, name="queue_maildir"
        )

    async def shutdown(self) -> None:
        await self.writer.aclose()

    async def hook_queue(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        boxes = tuple(
            (a.domain_lower or self.postmaster_domain, a.unquoted_local_part)
            for a, _ in txn.recipients
        )
        await self.writer.submit(Delivery(txn.id, boxes, txn.iter_message()))
        return hooks.ok(f"Message queued as {txn.id}")
