"""The durable spool: a directory of ``<id>.msg`` (the message) and ``<id>.env`` (its envelope).

Theory of operation
-------------------
Layout under the spool root: ``tmp/`` (files being written), ``queue/`` (entries), ``corrupt/``
(entries that could not be read back).

An entry exists once its ``.env`` is in ``queue/``. ``store`` writes both files to ``tmp/``,
makes their data durable, renames the message and then the envelope into ``queue/`` and makes
the directory durable, and only then returns (so the caller's 250 follows a durable entry). A
crash before the envelope's rename leaves at most a ``.msg`` without ``.env`` in ``queue/``,
which was never acknowledged and is deleted at recovery. ``update`` replaces an envelope by a
rename (readers see the old or the new one, never half), ``remove`` unlinks the envelope first.

Group commit: every job goes through one child process (``hooks.BatchProcess`` running
``SpoolDisk``). A batch writes every file, syncs once (``syncfs`` of the spool's file system;
per-file ``fsync`` where it is missing), does every rename and unlink, and syncs ``queue/``
once. The event loop never waits on the disk, and never trades the GIL with a disk thread.

Recovery (``recover``) runs before anything is scheduled: ``tmp/`` is emptied, orphaned
messages deleted, every envelope read; one that fails to parse, or whose message is missing,
is moved to ``corrupt/`` and reported, and never blocks the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import trio

from ..hooks import BatchProcess
from ..storage import fsync_path
from ._records import CorruptEntry, Envelope, loads
from ._spooldisk import Job, Remove, SpoolDisk, Store, Update

log = logging.getLogger("trio_mta.queue")


class Spool:
    """The spool directory; writes go through the group-commit child process."""

    def __init__(self, root: Path, *, fsync: bool = True, inline: bool = False) -> None:
        self.root = root
        self.fsync = fsync
        # Tests under autojump_clock: do the disk work on the event loop (a child process is
        # invisible to the clock, which would jump while the child works).
        self.inline = inline
        self.tmp = root / "tmp"
        self.queue = root / "queue"
        self.corrupt = root / "corrupt"
        self.disk = SpoolDisk(root, fsync=fsync)
        self.writer: BatchProcess[Job, Envelope | None] = BatchProcess(
            SpoolDisk, root, fsync=fsync, name="spool"
        )

    def create(self) -> None:
        for directory in (self.tmp, self.queue, self.corrupt):
            directory.mkdir(parents=True, exist_ok=True)

    def message_path(self, id: str) -> Path:
        return self.queue / f"{id}.msg"

    def envelope_path(self, id: str) -> Path:
        return self.queue / f"{id}.env"

    async def store(self, envelope: Envelope, chunks: Iterable[bytes]) -> Envelope:
        """A new entry, durable when this returns; the envelope as stored (with its size)."""
        stored = await self._run(Store(envelope), list(chunks))
        assert stored is not None
        return stored

    async def update(self, envelope: Envelope) -> None:
        await self._run(Update(envelope))

    async def remove(self, id: str) -> None:
        await self._run(Remove(id))

    async def _run(self, job: Job, payload: list[bytes] | None = None) -> Envelope | None:
        if not self.inline:
            return await self.writer.submit(job, payload or ())
        await trio.lowlevel.checkpoint()
        [result] = self.disk([(job, b"".join(payload or ()))])
        if isinstance(result, BaseException):
            raise result
        return result

    async def aclose(self) -> None:
        await self.writer.aclose()

    def _sync_dir(self) -> None:
        if self.fsync:
            fsync_path(self.queue, directory=True)

    # ---------------------------------------------------------------- recovery and reading

    def recover(self) -> tuple[list[Envelope], list[tuple[str, str]]]:
        """Blocking. Every readable entry, and (name, why) for each one moved to ``corrupt/``."""
        self.create()
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        names = {p.name for p in self.queue.iterdir()}
        envelopes: list[Envelope] = []
        corrupt: list[tuple[str, str]] = []
        for name in sorted(names):
            stem, _, suffix = name.rpartition(".")
            if suffix == "msg" and f"{stem}.env" not in names:
                (self.queue / name).unlink(missing_ok=True)  # never acknowledged
                continue
            if suffix != "env":
                continue
            try:
                envelope = self.read(stem)
            except CorruptEntry as exc:
                corrupt.append((stem, str(exc)))
                self._set_aside(stem)
                continue
            envelopes.append(envelope)
        if corrupt:
            self._sync_dir()
        return envelopes, corrupt

    def read(self, id: str) -> Envelope:
        """Blocking. Raises CorruptEntry (and FileNotFoundError when there is no entry)."""
        data = self.envelope_path(id).read_bytes()
        envelope = loads(data)
        if envelope.id != id:
            raise CorruptEntry(f"envelope id {envelope.id!r} in file {id}.env")
        if not self.message_path(id).is_file():
            raise CorruptEntry("the message file is missing")
        return envelope

    def _set_aside(self, id: str) -> None:
        for path in (self.message_path(id), self.envelope_path(id)):
            if path.exists():
                os.replace(path, self.corrupt / path.name)
        log.error("queue: entry %s is corrupt, moved to %s", id, self.corrupt)

    def ids(self) -> list[str]:
        """Blocking. The ids of the entries in ``queue/``, sorted."""
        try:
            return sorted(p.name[:-4] for p in self.queue.iterdir() if p.name.endswith(".env"))
        except FileNotFoundError:
            return []
