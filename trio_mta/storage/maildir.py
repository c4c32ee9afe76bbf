"""The Maildir format: ``<root>/<domain>/<local-part>/{tmp,new,cur}``, one file per message.

A batch is stored in three steps so that a crash never leaves a partial file where a reader
looks: every message is written under its first mailbox's ``tmp/``; one sync makes the data
durable; each file is renamed (one mailbox) or hard-linked (several) into every ``new/``; one
more sync makes those names durable. Only then does the caller hear success.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from ._sync import fsync_path, syncfs, write_file

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


@attrs.frozen
class MaildirDelivery:
    message_id: str
    mailboxes: tuple[tuple[str, str], ...]  # (domain, local part)


@attrs.define
class _Staged:
    boxes: list[Path]
    name: str
    tmp: Path


Batch = Sequence[tuple[MaildirDelivery, bytes]]


class MaildirStore:
    """Maildir writing, a batch at a time; blocking (run it in a group-commit worker).

    Calling the store with a batch of (delivery, message bytes) returns, per delivery, the
    list of files it now has in ``new/`` or the exception that stopped it."""

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

    def deliver(self, delivery: MaildirDelivery, data: bytes) -> list[Path]:
        """Store one message in each of its mailboxes; return the new files."""
        result = self([(delivery, data)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def __call__(self, batch: Batch) -> list[list[Path] | BaseException]:
        self.pid = os.getpid()  # a store built in one process may run in a child
        results: list[list[Path] | BaseException] = [[] for _ in batch]
        staged: list[tuple[int, _Staged]] = []
        for index, (delivery, data) in enumerate(batch):
            try:
                staged.append((index, self._write(delivery, data)))
            except Exception as exc:
                results[index] = exc
        if not staged:
            return results
        synced = False
        try:
            if self.fsync:
                synced = syncfs(self.root)
        except OSError as exc:
            for index, item in staged:
                item.tmp.unlink(missing_ok=True)
                results[index] = exc
            return results
        new_dirs: set[Path] = set()
        for index, item in staged:
            try:
                if self.fsync and not synced:
                    fsync_path(item.tmp)
                results[index] = self._place(item)
                new_dirs.update(box / "new" for box in item.boxes)
            except Exception as exc:
                results[index] = exc
        if self.fsync:
            try:
                if not syncfs(self.root):
                    for directory in new_dirs:
                        fsync_path(directory, directory=True)
            except OSError as exc:
                for index, _ in staged:
                    if not isinstance(results[index], BaseException):
                        results[index] = exc
        return results

    def _write(self, delivery: MaildirDelivery, data: bytes) -> _Staged:
        boxes = list(dict.fromkeys(self.mailbox(d, lp) for d, lp in delivery.mailboxes))
        if not boxes:
            raise ValueError("a delivery needs at least one mailbox")
        for box in boxes:
            self._ensure(box)
        now = time.time()
        name = (
            f"{int(now)}.M{int(now * 1e6) % 1000000}P{self.pid}"
            f"Q{delivery.message_id}.{self.hostname}"
        )
        tmp = boxes[0] / "tmp" / name
        write_file(tmp, (data,))
        return _Staged(boxes, name, tmp)

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
