"""The elastic pool of sandbox worker processes: routing, deadlines that kill, spares, size.

Theory of operation
-------------------
Each worker (``_sandbox_worker``) serves many calls at once over one socket pair; a reader task
here per worker hands each reply to the task waiting for it (parked with
``wait_task_rescheduled``: no channel, no extra task hop).

Routing. An async call goes to the ready worker with the fewest calls in flight. A sync call
gets a worker of its own when one is idle (it then runs inline there, the cheapest way) and
otherwise a thread on the least-loaded worker. A worker that is *stalled* (its loop is held by
a call: the worker's watchdog said so), runs an inline call, or is *draining* gets nothing new.
When nothing fits, the call waits (counted and timed: ``stats``) and the pool grows.

Faults. The runner's deadline cancels a call: it returns at once and the worker is sent CANCEL.
A task that unwinds leaves the worker healthy. A thread that cannot be stopped, a call that
left threads running or ran out of memory: the worker drains (no new calls; killed once its
other calls are done). No answer within ``grace`` (the loop is held: a CPU loop, ``time.sleep``
inline): the worker is killed at once and its other calls are sent to another worker. So is
every other call of a worker that reports a stall, and a worker that burns CPU in a stalled call
is reniced (the daemon keeps the CPU) and drains. Only an unexpected death fails its calls.

Size. At least ``minimum`` workers, and ``spares`` idle ones on top of the busy ones (started
ahead, so a killed worker's replacement is already warm), never more than ``maximum`` ready or
starting; one idle longer than ``idle_seconds`` beyond those is retired.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import trio

from . import _sandbox_wire as wire
from ._sandbox_link import Pending, PoolWorker, SandboxError, WorkerCrashed, renice

log = logging.getLogger("trio_mta.sandbox")

START_DEADLINE = 30.0  # seconds for a new worker to import and report ready
_PER_WORKER = 256  # async calls in flight on one worker before another is preferred
_THREADS = 8  # sync calls in threads on one worker (as many as the worker's limiter)
_CROWDED = 32  # async calls in flight that make a worker no longer count as a spare
_RETRIES = 3
_RETRY = object()  # a call's outcome: send it to another worker


Spawner = Callable[[], Awaitable[PoolWorker]]
Reporter = Callable[[int, str, str, float], None]  # pid, action, reason, seconds waited


class Pool:
    def __init__(
        self,
        spawn: Spawner,
        *,
        minimum: int,
        maximum: int,
        spares: int,
        idle_seconds: float,
        grace: float,
        report: Reporter | None = None,
    ) -> None:
        self.spawn = spawn
        self.minimum, self.maximum, self.spares = minimum, maximum, spares
        self.idle_seconds = idle_seconds
        self.grace = grace
        self.report = report
        self.workers: list[PoolWorker] = []  # ready or draining
        self.alive: set[PoolWorker] = set()  # every worker not reaped yet
        self.starting = 0
        self.waiting = 0
        self.closed = False
        self.stats: dict[str, float] = dict.fromkeys(
            ("spawned", "killed", "recycled", "retired", "crashed", "retried", "waits",
             "wait_seconds"), 0)  # fmt: skip
        self._ids = itertools.count(1)
        self._changed = trio.Event()  # for calls waiting for a worker
        self._poked = trio.Event()  # for the maintainer: the pool's shape changed
        self._nursery: trio.Nursery | None = None

    # -- serving -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.closed:
            raise SandboxError("a sandbox serves once")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                async with trio.open_nursery() as starting:
                    for _ in range(self.minimum):
                        self.starting += 1
                        starting.start_soon(self._start_one, False)
                task_status.started()
                await self._maintain()
        finally:
            self.closed = True
            workers, self.workers = list(self.alive), []
            for worker in workers:
                self._settle(worker, "the sandbox stopped")
                worker.kill()
            for worker in workers:
                await worker.reap()
            self.alive.clear()
            self._wake()

    async def _maintain(self) -> None:
        while True:
            poked = self._poked
            self._grow()
            next_check = self._shrink()
            with trio.move_on_at(next_check):
                await poked.wait()

    def _poke(self) -> None:
        self._poked.set()
        self._poked = trio.Event()

    def _grow(self) -> None:
        ready = [w for w in self.workers if w.draining is None]
        spare = sum(1 for w in ready if self._spare(w))
        total = len(ready) + self.starting
        want = max(self.minimum - total, self.spares - spare - self.starting)
        if self.waiting:
            want = max(want, 1 - self.starting)
        want = min(want, self.maximum - total)
        for _ in range(max(want, 0)):
            self.starting += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._start_one, True)

    def _shrink(self) -> float:
        """Retire workers idle for too long beyond the minimum and the spares; return when
        to look again."""
        now = trio.current_time()
        ready = [w for w in self.workers if w.draining is None]
        idle = [w for w in ready if self._idle(w)]
        keep_idle = max(self.spares, self.minimum - (len(ready) - len(idle)))
        next_check = now + self.idle_seconds
        for worker in sorted(idle, key=lambda w: w.idle_since)[: max(len(idle) - keep_idle, 0)]:
            if now - worker.idle_since >= self.idle_seconds:
                self._retire(worker, "idle", "retire")
            else:
                next_check = min(next_check, worker.idle_since + self.idle_seconds)
        return next_check

    @staticmethod
    def _idle(worker: PoolWorker) -> bool:
        return not worker.inflight and not worker.inline and worker.stalled is None

    @staticmethod
    def _spare(worker: PoolWorker) -> bool:
        """Could take a new call at once, even a sync one: no sync call there, not stalled,
        not crowded (async calls awaiting cost a worker little)."""
        return (
            not worker.inline
            and not worker.threads
            and worker.stalled is None
            and len(worker.inflight) < _CROWDED
        )

    async def _start_one(self, retry: bool) -> None:
        delay = 0.1
        try:
            while True:
                try:
                    worker = await self.spawn()
                    break
                except (OSError, ValueError, SandboxError, trio.TooSlowError):
                    if not retry:
                        raise
                    log.exception("could not start a sandbox worker; retrying in %.1fs", delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)
        finally:
            self.starting -= 1
        worker.idle_since = trio.current_time()
        self.workers.append(worker)
        self.alive.add(worker)
        self.stats["spawned"] += 1
        self._event(worker.pid, "spawn", "started ahead" if retry else "pool start")
        assert self._nursery is not None
        self._nursery.start_soon(self._read, worker)
        self._wake()
        self._poke()

    def _wake(self) -> None:
        if self.waiting:
            self._changed.set()
            self._changed = trio.Event()

    def _write(self, worker: PoolWorker, data: bytes) -> None:
        if worker.write(data):
            assert self._nursery is not None
            self._nursery.start_soon(worker.flush)

    def _event(self, pid: int, action: str, reason: str, waited: float = 0.0) -> None:
        if action != "wait":
            log.info("sandbox worker %d: %s (%s)", pid, action, reason)
        if self.report is not None:
            self.report(pid, action, reason, waited)

    # -- calls -------------------------------------------------------------------------------

    def pick(self, sync: bool) -> tuple[PoolWorker | None, int]:
        best: PoolWorker | None = None
        best_load = _PER_WORKER
        for worker in self.workers:
            if worker.draining is not None or worker.stalled is not None or worker.inline:
                continue
            load = len(worker.inflight)
            if sync:
                if load == 0:
                    return worker, wire.INLINE
                if worker.threads >= _THREADS:
                    continue
            if load < best_load:
                best, best_load = worker, load
        return best, (wire.THREAD if sync else wire.TASK)

    async def request(self, token: int, spec: bytes, body: bytes, *, sync: bool) -> dict[str, Any]:
        """Run one call on some worker; its JSON reply. Cancellable at any point (the worker is
        told, and killed if it cannot stop)."""
        for _ in range(_RETRIES + 1):
            if self.closed:
                raise SandboxError("the plugin sandbox is not running")
            worker, mode = self.pick(sync)
            if worker is None:
                worker, mode = await self._wait_for_worker(sync)
            was_idle = not worker.inflight
            cid = next(self._ids)
            extra = b"" if token in worker.known else spec
            worker.known.add(token)
            pending = Pending(trio.lowlevel.current_task(), mode)
            worker.inflight[cid] = pending
            if mode == wire.INLINE:
                worker.inline = cid
            elif mode == wire.THREAD:
                worker.threads += 1
            if was_idle and not self._spare_left(worker):
                self._grow()  # this call takes the last spare: start another ahead
            head = wire.REQUEST_HEAD.pack(wire.CALL, cid, mode, token, len(extra))
            self._write(worker, wire.frame(head + extra + body))

            reply = await trio.lowlevel.wait_task_rescheduled(self._aborter(worker, cid))
            if reply is not _RETRY:
                return reply  # type: ignore[no-any-return]
            self.stats["retried"] += 1
        raise SandboxError("the call's workers kept failing under it")

    def _aborter(self, worker: PoolWorker, cid: int) -> Callable[[object], trio.lowlevel.Abort]:
        def abort(_: object) -> trio.lowlevel.Abort:
            self._abandon(worker, cid)
            return trio.lowlevel.Abort.SUCCEEDED

        return abort

    async def _wait_for_worker(self, sync: bool) -> tuple[PoolWorker, int]:
        started = trio.current_time()
        self.waiting += 1
        self._poke()
        try:
            while True:
                if self.closed:
                    raise SandboxError("the plugin sandbox is not running")
                await self._changed.wait()
                worker, mode = self.pick(sync)
                if worker is not None:
                    break
        finally:
            self.waiting -= 1
            waited = trio.current_time() - started
            self.stats["waits"] += 1
            self.stats["wait_seconds"] += waited
        self._event(worker.pid, "wait", "no worker was free", waited)
        return worker, mode

    def _done(self, worker: PoolWorker, cid: int) -> Pending | None:
        """Take a call off its worker's books."""
        pending = worker.inflight.pop(cid, None)
        if pending is not None:
            if pending.mode == wire.THREAD:
                worker.threads -= 1
            if worker.inline == cid:
                worker.inline = 0
            if not worker.inflight:
                worker.idle_since = trio.current_time()
        if worker.stalled == cid:
            worker.stalled = None
        if worker.draining is not None and not worker.inflight:
            self._kill(worker, worker.draining)
        self._wake()
        return pending

    def _abandon(self, worker: PoolWorker, cid: int) -> None:
        """The caller's deadline passed (or it was cancelled): tell the worker, keep the
        worker's inline flag until it answers, and give it ``grace`` to answer."""
        pending = worker.inflight.get(cid)
        if pending is None:
            return
        worker.abandoned[cid] = pending.mode
        inline, stalled = worker.inline == cid, worker.stalled == cid
        self._done(worker, cid)
        if worker.killed:
            return
        if inline:
            worker.inline = cid  # still blocking the worker until it answers or dies
        if stalled:
            worker.stalled = cid
        self._write(worker, wire.frame(wire.REQUEST_HEAD.pack(wire.CANCEL, cid, 0, 0, 0)))
        assert self._nursery is not None
        self._nursery.start_soon(self._grace, worker, cid)

    async def _grace(self, worker: PoolWorker, cid: int) -> None:
        await trio.sleep(self.grace)
        if cid in worker.abandoned and not worker.killed:
            self._kill(worker, f"call {cid} ran past its deadline and could not be stopped")

    def _kill(self, worker: PoolWorker, reason: str) -> None:
        """Kill now; its calls still in flight go to other workers."""
        if worker.killed:
            return
        worker.killed = True
        worker.draining = worker.draining or reason
        for cid in list(worker.inflight):
            self._resolve(worker, cid, _RETRY)
        worker.kill()
        self.stats["killed"] += 1
        self._event(worker.pid, "kill", reason)
        self._wake()
        self._poke()

    def _retire(self, worker: PoolWorker, reason: str, action: str) -> None:
        """Close the socket of an idle worker: it exits by itself."""
        if worker in self.workers:
            self.workers.remove(worker)
        worker.retiring = True
        self.stats["retired" if action == "retire" else "recycled"] += 1
        self._event(worker.pid, action, reason)
        with contextlib.suppress(OSError):
            worker.sock.shutdown(socket.SHUT_WR)  # the worker sees EOF and exits; its reader reaps
        self._poke()

    def _drain(self, worker: PoolWorker, reason: str) -> None:
        if worker.draining is None:
            worker.draining = reason
            self.stats["recycled"] += 1
            self._event(worker.pid, "recycle", reason)
        if not worker.inflight:
            self._kill(worker, reason)
        self._wake()
        self._poke()

    def _spare_left(self, worker: PoolWorker) -> bool:
        return any(self._spare(w) for w in self.workers if w is not worker and not w.draining)

    def _resolve(self, worker: PoolWorker, cid: int, value: object) -> None:
        pending = self._done(worker, cid)
        if pending is not None:
            trio.lowlevel.reschedule(pending.task, outcome.Value(value))

    def _settle(self, worker: PoolWorker, reason: str) -> None:
        """The worker is gone: its calls fail (or go elsewhere, if it was killed for another's
        sake: ``_kill`` already moved them)."""
        for cid in list(worker.inflight):
            pending = worker.inflight.pop(cid)
            trio.lowlevel.reschedule(pending.task, outcome.Error(WorkerCrashed(reason)))
        worker.inflight.clear()

    # -- the reader --------------------------------------------------------------------------

    async def _read(self, worker: PoolWorker) -> None:
        sock = worker.sock
        reason = ""
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    chunk = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                worker.buffer += chunk
                for frame in wire.split_frames(worker.buffer):
                    self._on_frame(worker, frame)
        except ValueError as exc:  # an oversized frame: the worker is broken
            reason = f"sandbox worker {worker.pid} broke the protocol: {exc}"
        if worker in self.workers:
            self.workers.remove(worker)
        unexpected = not (worker.killed or worker.retiring)
        if reason:
            worker.kill()
        how = await worker.reap()
        self.alive.discard(worker)
        if unexpected:
            self.stats["crashed"] += 1
            self._event(worker.pid, "exit", how)
        self._settle(worker, reason or how)
        self._wake()
        self._poke()

    def _on_frame(self, worker: PoolWorker, frame: bytes) -> None:
        kind = frame[:1]
        if kind == wire.REPLY:
            _, cid = wire.REPLY_HEAD.unpack_from(frame)
            try:
                reply = json.loads(frame[wire.REPLY_HEAD.size :])
            except ValueError:
                reply = {"error": f"sandbox worker {worker.pid} sent a bad reply"}
            if worker.abandoned.pop(cid, None) is not None and worker.inline == cid:
                worker.inline = 0
            recycle = reply.get("recycle") if isinstance(reply, dict) else None
            if recycle:
                worker.draining = worker.draining or str(recycle)
                self.stats["recycled"] += 1
                self._event(worker.pid, "recycle", str(recycle))
            self._resolve(worker, cid, reply)
            return
        _, cid, flags = wire.NOTE.unpack_from(frame)
        if kind == wire.CANCELLED:
            worker.abandoned.pop(cid, None)
            if worker.inline == cid:
                worker.inline = 0
            if worker.stalled == cid:
                worker.stalled = None
            if flags:
                self._drain(worker, f"call {cid} left a thread that cannot be stopped")
            self._wake()
        elif kind == wire.STALLED:
            self._stalled(worker, cid, flags)

    def _stalled(self, worker: PoolWorker, cid: int, flags: int) -> None:
        if cid not in worker.inflight and cid not in worker.abandoned:
            return
        if flags & 1:  # the loop is held: nothing else there can progress
            worker.stalled = cid
        if flags & 3:
            # Held, or slowed (a thread burning CPU holds the GIL, and the renice below would
            # starve them): the other calls go elsewhere. They had not answered, so nothing of
            # theirs was applied.
            for other in list(worker.inflight):
                if other != cid:
                    self._resolve(worker, other, _RETRY)
        if flags & 2:  # burning CPU: let the daemon have it, and do not keep this worker
            renice(worker.pid)
            self._drain(worker, f"call {cid} held the worker, burning CPU")
        self._wake()
