"""The parent's handle on one sandbox worker process: its socket, its calls, its end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from typing import Protocol

import trio


class SandboxError(Exception):
    """A sandboxed call failed: the plugin raised in its worker, or the sandbox is not running."""


class WorkerCrashed(SandboxError):
    """The worker died (or broke the frame protocol) during a call; it has been replaced."""


class Pending:
    __slots__ = ("mode", "task")

    def __init__(self, task: trio.lowlevel.Task, mode: int) -> None:
        self.task = task
        self.mode = mode


class ChildProcess(Protocol):
    """What the pool needs of a worker's process: ``trio.Process``, or one the fork server
    made (``_sandbox_zygote.ForkedProcess``)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int | None: ...


class PoolWorker:
    """The parent's handle on one worker process."""

    def __init__(self, process: ChildProcess, sock: socket.socket) -> None:
        self.process = process
        self.pid = process.pid
        self.sock = sock
        self.buffer = bytearray()
        self.outbox = bytearray()
        self.flushing = False
        self.known: set[int] = set()  # plugin tokens whose spec this worker has
        self.inflight: dict[int, Pending] = {}
        self.abandoned: dict[int, int] = {}  # cancelled calls not yet confirmed: id -> mode
        self.threads = 0
        self.inline = 0  # an inline sync call is running (or abandoned, unconfirmed)
        self.stalled: int | None = None  # the call holding the loop, reported by the worker
        self.draining: str | None = None  # why no new calls go here
        self.killed = False  # by the pool: its calls were moved before
        self.retiring = False  # asked to exit: its EOF is expected
        self.idle_since = 0.0

    def write(self, data: bytes) -> bool:
        """Send now if the socket takes it; True if the rest waits for ``flush``."""
        if not self.outbox:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return False  # dead: its reader sees EOF and settles the calls
            if sent == len(data):
                return False
            data = data[sent:]
        self.outbox += data
        if self.flushing:
            return False
        self.flushing = True
        return True

    async def flush(self) -> None:
        try:
            while self.outbox:
                await trio.lowlevel.wait_writable(self.sock)
                try:
                    sent = self.sock.send(self.outbox)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                del self.outbox[:sent]
        finally:
            self.flushing = False

    def kill(self) -> None:
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def reap(self) -> str:
        """Kill, wait for the exit status, close the socket; even when cancelled. Says how
        it ended."""
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            if not self.killed:
                with trio.move_on_after(1):
                    await self.process.wait()
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        self.sock.close()
        code = self.process.returncode
        if code is None:
            return f"sandbox worker {self.pid} closed its socket"
        if code < 0:
            return f"sandbox worker {self.pid} was killed by {signal.Signals(-code).name}"
        return f"sandbox worker {self.pid} exited with status {code}"


def renice(pid: int) -> None:
    """Lowest priority for every thread of ``pid`` (Linux sets nice per thread)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, 19)
