"""The spool's disk work, a batch at a time: run in the spool's child process
(``hooks.BatchProcess``), or inline for tests on virtual time.

A batch writes every new file into ``tmp/``, syncs once (``syncfs`` of the spool's file system;
per-file ``fsync`` where it is missing), does every rename and unlink, and syncs ``queue/``
once. A store's message is renamed before its envelope, so an entry is complete once its
``.env`` exists. Blocking; no trio.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import attrs

from ..storage import fsync_path, syncfs, write_file
from ._records import Envelope, dumps


@attrs.frozen
class Store:
    envelope: Envelope  # the message itself travels as the job's payload


@attrs.frozen
class Update:
    envelope: Envelope


@attrs.frozen
class Remove:
    id: str


Job = Store | Update | Remove
Result = Envelope | BaseException | None


class SpoolDisk:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self.tmp = root / "tmp"
        self.queue = root / "queue"
        self._names = itertools.count(1)

    def __call__(self, batch: Sequence[tuple[Job, bytes]]) -> list[Result]:
        results: list[Result] = [None] * len(batch)
        staged: list[tuple[int, list[tuple[Path, Path]]]] = []
        for index, (job, payload) in enumerate(batch):
            try:
                env, moves = self._stage(job, payload)
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
                job = batch[index][0]
                if isinstance(job, Remove):
                    (self.queue / f"{job.id}.env").unlink(missing_ok=True)
                    (self.queue / f"{job.id}.msg").unlink(missing_ok=True)
                for tmp, target in moves:  # the message first, the envelope last
                    os.rename(tmp, target)
            except Exception as exc:
                results[index] = exc
        try:
            if self.fsync:
                fsync_path(self.queue, directory=True)
        except OSError as exc:
            results = [exc for _ in results]
        return results

    def _stage(self, job: Job, payload: bytes) -> tuple[Envelope | None, list[tuple[Path, Path]]]:
        """Write the job's files into ``tmp/``; return the envelope written and the
        (tmp, final) renames, in order."""
        if isinstance(job, Remove):
            return None, []
        env = job.envelope
        moves: list[tuple[Path, Path]] = []
        try:
            if isinstance(job, Store):
                msg_tmp = self.tmp / f"{env.id}.msg"
                moves.append((msg_tmp, self.queue / f"{env.id}.msg"))
                size = write_file(msg_tmp, (payload,))
                env = attrs.evolve(env, size=size)
            env_tmp = self.tmp / f"{env.id}.env.{os.getpid()}.{next(self._names)}"
            moves.append((env_tmp, self.queue / f"{env.id}.env"))
            write_file(env_tmp, [dumps(env)])
        except BaseException:
            for tmp, _ in moves:
                tmp.unlink(missing_ok=True)
            raise
        return env, moves

    def _sync(self, files: list[Path]) -> None:
        if not self.fsync or not files:
            return
        if syncfs(self.root):
            return
        for path in files:
            fsync_path(path)
