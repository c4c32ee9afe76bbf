"""A fork server for sandbox workers: a new worker in milliseconds instead of a Python start.

Theory of operation
-------------------
Starting a worker as a fresh interpreter costs about 0.3 s of CPU (Python, Trio, trio_mta
imports), and seconds of wall clock on a loaded 2-core machine: too slow to replace a worker
killed every second for a hung call. So the sandbox starts one *zygote* process that imports all
that once and then forks a worker for each request. The zygote runs no Trio loop and no thread,
so forking it is safe. Its parent sends ``SPAWN`` with the worker's end of a fresh socket pair
(SCM_RIGHTS) and the worker's settings; the zygote forks, and the child becomes a worker
(``_sandbox_worker.main``) on that socket. The zygote answers ``P`` with the child's pid, and
``X`` with its exit status when it ends (the zygote is its parent, so it reaps it).

If the zygote dies, the sandbox starts workers the slow way.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
from collections import deque

import trio

from . import _sandbox_worker

ZYGOTE_MAIN = "import sys; from trio_mta.hooks._sandbox_zygote import main; main(sys.argv[1:])"
RECORD = struct.Struct(">cii")  # kind (P: forked, X: exited, R: ready), pid, exit status


def main(argv: list[str]) -> None:
    ctl = socket.socket(fileno=int(argv[0]))
    ctl.setblocking(True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake select() via the pipe
    ctl.sendall(RECORD.pack(b"R", os.getpid(), 0))
    while True:
        try:
            readable, _, _ = select.select([ctl.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        _reap(ctl)
        if ctl.fileno() not in readable:
            continue
        message, fds, _, _ = socket.recv_fds(ctl, 1024, 1)
        if not message:
            os._exit(0)  # the daemon is gone; each worker sees EOF on its own socket
        pid = os.fork()
        if pid == 0:
            ctl.close()
            os.close(wake_r)
            os.close(wake_w)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 1
            try:
                _sandbox_worker.main([str(fds[0]), *message.decode().split()])
                code = 0
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        ctl.sendall(RECORD.pack(b"P", pid, 0))


def _reap(ctl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        ctl.sendall(RECORD.pack(b"X", pid, os.waitstatus_to_exitcode(status)))


class Zygote:
    """The parent's side: ``fork()`` a worker, learn how each one ended."""

    def __init__(self, process: trio.Process, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.alive = True
        self.exits: dict[int, int | None] = {}
        self._ended: dict[int, trio.Event] = {}
        self._forked: deque[list[int]] = deque()
        self._lock = trio.Lock()
        self._got_pid = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[Zygote] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the zygote's records until it ends (``task_status`` gets this object once the
        zygote is ready)."""
        buffer = bytearray()
        started = False
        try:
            while True:
                await trio.lowlevel.wait_readable(self.sock)
                try:
                    chunk = self.sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= RECORD.size:
                    kind, pid, code = RECORD.unpack_from(buffer)
                    del buffer[: RECORD.size]
                    if kind == b"R" and not started:
                        started = True
                        task_status.started(self)
                    elif kind == b"P" and self._forked:
                        self._forked.popleft().append(pid)
                        self._got_pid.set()
                    elif kind == b"X":
                        self.exits[pid] = code
                        self._ended.pop(pid, trio.Event()).set()
        finally:
            self.alive = False
            self._got_pid.set()
            for event in self._ended.values():
                event.set()
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.sock.close()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.process.wait()

    async def fork(self, fd: int, args: list[str]) -> ForkedProcess:
        async with self._lock:
            if not self.alive:
                raise OSError("the sandbox's fork server is gone")
            slot: list[int] = []
            self._forked.append(slot)
            await trio.lowlevel.wait_writable(self.sock)
            socket.send_fds(self.sock, [" ".join(args).encode()], [fd])
            while not slot:
                if not self.alive:
                    raise OSError("the sandbox's fork server is gone")
                await self._got_pid.wait()
                self._got_pid = trio.Event()
        pid = slot[0]
        self._ended.setdefault(pid, trio.Event())
        return ForkedProcess(self, pid)


class ForkedProcess:
    """A worker forked by the zygote, with the bits of ``trio.Process`` the pool uses."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote = zygote
        self.pid = pid

    @property
    def returncode(self) -> int | None:
        return self.zygote.exits.get(self.pid)

    def kill(self) -> None:
        # Not once it is known to be reaped: its pid may belong to someone else by now.
        if self.pid not in self.zygote.exits:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> int | None:
        if self.pid not in self.zygote.exits and self.zygote.alive:
            await self.zygote._ended.setdefault(self.pid, trio.Event()).wait()
        return self.returncode
