"""The Maildir format: ``<root>/<domain>/<local-part>/{tmp,new,cur}``, one file per message.

A batch is stored in three steps so that a crash never leaves a partial file where a reader
looks: every message is written under a mailbox's ``tmp/``; one sync makes the data durable;
each file is renamed (one mailbox) or hard-linked (several sharing one file) into ``new/``; one
more sync makes those names durable. Only then does the caller hear success. A delivery that
fails part-way takes back every name it placed: the client is told 451 and sends it again, so
a mailbox that kept a copy would get it twice.

What is written is the final delivery's view of the message (RFC 5321 §4.4, as Postfix's
local(8) and Dovecot's LDA write it): ``Return-Path: <sender>`` and ``Delivered-To: <mailbox>``
at the top, and LF line endings, the local convention every Maildir reader expects. With a
``Delivered-To`` each mailbox needs a file of its own; the message is converted once and only
the two header lines differ between the copies.
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
    # The envelope sender ("" for the null sender <>); None: no Return-Path line.
    return_path: str | None = None
    # Each mailbox's recipient address (as many as mailboxes), or () for no Delivered-To.
    delivered_to: tuple[str, ...] = ()


@attrs.define
class _Staged:
    name: str
    # Each file written under a tmp/, and the mailboxes whose new/ get it.
    files: list[tuple[Path, list[Path]]]


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
                _discard(item)
                results[index] = exc
            return results
        new_dirs: set[Path] = set()
        for index, item in staged:
            try:
                if self.fsync and not synced:
                    for tmp, _ in item.files:
                        fsync_path(tmp)
                results[index] = self._place(item)
                new_dirs.update(box / "new" for _, boxes in item.files for box in boxes)
            except Exception as exc:
                _discard(item)
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
        recipients = delivery.delivered_to
        if recipients and len(recipients) != len(delivery.mailboxes):
            raise ValueError("delivered_to must name one recipient per mailbox")
        # Mailbox -> its recipient; a mailbox named twice (other case) gets one copy.
        boxes: dict[Path, str] = {}
        for i, (domain, local_part) in enumerate(delivery.mailboxes):
            boxes.setdefault(self.mailbox(domain, local_part), recipients[i] if recipients else "")
        if not boxes:
            raise ValueError("a delivery needs at least one mailbox")
        for box in boxes:
            self._ensure(box)
        now = time.time()
        name = (
            f"{int(now)}.M{int(now * 1e6) % 1000000}P{self.pid}"
            f"Q{delivery.message_id}.{self.hostname}"
        )
        # One conversion of the whole message, in this child process, off the event loop.
        body = data.replace(b"\r\n", b"\n")
        head = b""
        if delivery.return_path is not None:
            head = b"Return-Path: <" + delivery.return_path.encode() + b">\n"
        staged = _Staged(name, [])
        try:
            if not recipients:  # the same bytes for all: one file, a hard link per mailbox
                tmp = next(iter(boxes)) / "tmp" / name
                write_file(tmp, (head, body))
                staged.files.append((tmp, list(boxes)))
                return staged
            for box, recipient in boxes.items():
                tmp = box / "tmp" / name
                write_file(tmp, (head + b"Delivered-To: " + recipient.encode() + b"\n", body))
                staged.files.append((tmp, [box]))
        except BaseException:
            _discard(staged)
            raise
        return staged

    @staticmethod
    def _place(item: _Staged) -> list[Path]:
        placed: list[Path] = []
        try:
            for tmp, boxes in item.files:
                if len(boxes) == 1:
                    target = boxes[0] / "new" / item.name
                    os.rename(tmp, target)
                    placed.append(target)
                    continue
                for box in boxes:
                    target = box / "new" / item.name
                    os.link(tmp, target)
                    placed.append(target)
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
        finally:
            _discard(item)
        return placed


def _discard(item: _Staged) -> None:
    """Remove what is left in tmp/ (a renamed file is already gone from there)."""
    for tmp, _ in item.files:
        tmp.unlink(missing_ok=True)
