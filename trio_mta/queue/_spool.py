"""The durable spool: a directory of ``<id>.msg`` (the message) and ``<id>.env`` (its envelope).

Theory of operation
-------------------
Layout under the spool root: ``tmp/`` (files being written), ``queue/`` (entries), ``corrupt/``
(entries that could not be read back), ``control/`` (commands from ``trio-mta queue``).

An entry exists once its ``.env`` is in ``queue/``. ``store`` writes both files to ``tmp/``,
makes their data durable, renames the message and then the envelope into ``queue/`` and makes
the directory durable, and only then returns (so the caller's 250 follows a durable entry). A
crash before the envelope's rename leaves at most a ``.msg`` without ``.env`` in ``queue/``,
which was never acknowledged and is deleted at recovery. ``update`` replaces an envelope by a
rename (readers see the old or the new one, never half), ``remove`` unlinks the envelope first.

Group commit: every job goes through one ``BatchWorker`` thread. A batch writes every file,
syncs once (``syncfs`` of the spool's file system; per-file ``fsync`` where it is missing),
does every rename and unlink, and syncs ``queue/`` once. The event loop never waits on the disk.

Recovery (``recover``) runs before anything is scheduled: ``tmp/`` is emptied, orphaned
messages deleted, every envelope read; one that fails to parse, or whose message is missing,
is moved to ``corrupt/`` and reported, and never blocks the others.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import trio

from ..hooks import BatchWorker
from ._records import CorruptEntry, Envelope, dumps, loads

log = logging.getLogger("trio_mta.queue")


@attrs.frozen
class _Store:
    envelope: Envelope
    chunks: Iterable[bytes] = attrs.field(eq=False)


@attrs.frozen
class _Update:
    envelope: Envelope


@attrs.frozen
class _Remove:
    id: str


_Job = _Store | _Update | _Remove


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs  # noqa: B018  # probe: AttributeError where the platform lacks it
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, chunks: Iterable[bytes]) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            size += len(view)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return size


class Spool:
    """The spool directory; blocking work happens in the group-commit thread."""

    def __init__(self, root: Path, *, fsync: bool = True, inline: bool = False) -> None:
        self.root = root
        self.fsync = fsync
        # Tests under autojump_clock: do the disk work on the event loop (a thread is invisible
        # to the clock, which would jump while the thread works).
        self.inline = inline
        self.tmp = root / "tmp"
        self.queue = root / "queue"
        self.corrupt = root / "corrupt"
        self.control = root / "control"
        self._names = itertools.count(1)
        self.writer: BatchWorker[_Job, Envelope | None] = BatchWorker(self._commit, name="spool")

    def create(self) -> None:
        for directory in (self.tmp, self.queue, self.corrupt, self.control):
            directory.mkdir(parents=True, exist_ok=True)

    def message_path(self, id: str) -> Path:
        return self.queue / f"{id}.msg"

    def envelope_path(self, id: str) -> Path:
        return self.queue / f"{id}.env"

    async def store(self, envelope: Envelope, chunks: Iterable[bytes]) -> Envelope:
        """A new entry, durable when this returns; the envelope as stored (with its size)."""
        stored = await self._run(_Store(envelope, chunks))
        assert stored is not None
        return stored

    async def update(self, envelope: Envelope) -> None:
        await self._run(_Update(envelope))

    async def remove(self, id: str) -> None:
        await self._run(_Remove(id))

    async def _run(self, job: _Job) -> Envelope | None:
        if not self.inline:
            return await self.writer.submit(job)
        await trio.lowlevel.checkpoint()
        [result] = self._commit([job])
        if isinstance(result, BaseException):
            raise result
        return result

    async def aclose(self) -> None:
        await self.writer.aclose()

    # ---------------------------------------------------------------- the writer thread

    def _commit(self, batch: Sequence[_Job]) -> list[Envelope | BaseException | None]:
        results: list[Envelope | BaseException | None] = [None] * len(batch)
        staged: list[tuple[int, list[tuple[Path, Path]]]] = []
        for index, job in enumerate(batch):
            try:
                env, moves = self._stage(job)
                staged.append((index, moves))
                results[index] = env
            except Exception as exc:
                results[index] = exc
        try:
            self._sync([tmp for _, moves in staged for tmp, _ in moves])
        except OSError as exc:
            for index, moves in staged:
                for tmp, _ in moves:
                    tmp.unlink(missing_ok=True)
                results[index] = exc
            return results
        for index, moves in staged:
            try:
                job = batch[index]
                if isinstance(job, _Remove):
                    self.envelope_path(job.id).unlink(missing_ok=True)
                    self.message_path(job.id).unlink(missing_ok=True)
                for tmp, target in moves:  # the message first, the envelope last
                    os.rename(tmp, target)
            except Exception as exc:
                results[index] = exc
        try:
            self._sync_dir()
        except OSError as exc:
            results = [exc for _ in results]
        return results

    def _stage(self, job: _Job) -> tuple[Envelope | None, list[tuple[Path, Path]]]:
        """Write the job's files into ``tmp/``; return the envelope written and the
        (tmp, final) renames, in order."""
        if isinstance(job, _Remove):
            return None, []
        env = job.envelope
        moves: list[tuple[Path, Path]] = []
        try:
            if isinstance(job, _Store):
                msg_tmp = self.tmp / f"{env.id}.msg"
                moves.append((msg_tmp, self.message_path(env.id)))
                size = _write_file(msg_tmp, job.chunks)
                env = attrs.evolve(env, size=size)
            env_tmp = self.tmp / f"{env.id}.env.{next(self._names)}"
            moves.append((env_tmp, self.envelope_path(env.id)))
            _write_file(env_tmp, [dumps(env)])
        except BaseException:
            for tmp, _ in moves:
                tmp.unlink(missing_ok=True)
            raise
        return env, moves

    def _sync(self, files: list[Path]) -> None:
        if not self.fsync or not files:
            return
        if _LIBC is not None:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _LIBC.syncfs(fd) != 0:
                    raise OSError(ctypes.get_errno(), "syncfs failed")
            finally:
                os.close(fd)
            return
        for path in files:
            _fsync_path(path)

    def _sync_dir(self) -> None:
        if self.fsync:
            _fsync_path(self.queue, directory=True)

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
