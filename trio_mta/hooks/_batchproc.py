"""Group commit in a child process: the blocking work of many callers, a batch at a time,
without sharing the server's GIL.

Theory of operation
-------------------
A thread doing file work in the server process hands the GIL back and forth with the event
loop at every system call, and while the loop is busy each hand-back waits: under load a
Maildir writer thread managed a fraction of what the disk allows. Here the work runs in a child
(``trio_mta.storage.worker``) that owns its own interpreter; the server only sends bytes.

``submit(job, payload)`` pickles ``(seq, job)``, frames it with the payload (the message bytes,
sent as they are, never copied into the pickle) and sends it on a socket pair, then waits for
the answer to ``seq``. Sending is try-then-wait: when the socket takes the whole frame (the
common case) there is no task switch; otherwise the rest joins ``pending``, which one writer
task flushes in order, so frames never interleave. One reader task parses the child's answers,
one frame per batch, and wakes each caller. The child takes every frame waiting when it looks,
so batches grow with the load and a batch's syncs are shared by all of its jobs.

The child is started on first use and again after it dies. Its death (EOF) fails every job in
flight with ``BatchProcessError``: a caller hears a failure, never silence, and a job's result
is delivered at most once. A caller cancelled while waiting does not stop its job (the work is
not undone; only its answer is dropped). ``aclose`` sends what is pending, lets the child finish
and answer, and reaps it (killing it past a deadline). The two tasks are trio system tasks, so
the object can be made in synchronous plugin ``setup`` and used from any task of the run.

The factory must be a module-level callable; its module is imported by name in the child, or
loaded from its file under the same name when that fails (plugin modules), so job and result
classes defined there pickle by reference both ways.
"""

from __future__ import annotations

import collections
import itertools
import logging
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import trio

from ..storage.worker import JOB_HEAD, REPLY_HEAD
from ._sandbox import worker_env

log = logging.getLogger("trio_mta.batchproc")

J = TypeVar("J")
R = TypeVar("R")

WORKER_MAIN = "import sys; from trio_mta.storage.worker import main; main(sys.argv[1:])"
_START_DEADLINE = 30.0  # seconds for the child to import and build its processor
_STOP_DEADLINE = 30.0  # seconds for the child to finish its work once told to stop
STALL = 60.0  # seconds without any answer, jobs waiting, after which the child is replaced
_BUFFER = 4 << 20  # socket buffers: a batch of ordinary messages fits without waiting
_IOV_MAX = 512  # buffers per sendmsg, well under the kernel's IOV_MAX
_PICKLE = pickle.HIGHEST_PROTOCOL


class BatchProcessError(Exception):
    """The batch process could not start, died with jobs in flight, or is closed."""


class _Slot:
    __slots__ = ("done", "ok", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.ok = False
        self.value: Any = None


class _Child:
    """One running child: its socket, the jobs waiting for an answer, and the two tasks."""

    def __init__(
        self, owner: BatchProcess[Any, Any], process: trio.Process, sock: socket.socket
    ) -> None:
        self.owner = owner
        self.name = owner.name
        self.process = process
        self.sock = sock
        self.slots: dict[int, _Slot] = {}
        self.pending: collections.deque[memoryview] = collections.deque()
        self.wake = trio.Event()
        self.ready = trio.Event()
        self.hello: object = None
        self.finished = trio.Event()
        self.dead: BaseException | None = None
        self.closing = False
        self.progress = trio.current_time()  # when the child last answered (or started)

    # ------------------------------------------------------------------------ sending

    def send(self, buffers: list[bytes]) -> None:
        if self.dead is not None:
            raise BatchProcessError(str(self.dead))
        if not self.pending and len(buffers) <= _IOV_MAX:
            try:
                sent = self.sock.sendmsg(buffers)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.fail(BatchProcessError(f"{self.name}: cannot send to the child: {exc}"))
                raise BatchProcessError(str(self.dead)) from exc
            for buffer in buffers:
                if sent >= len(buffer):
                    sent -= len(buffer)
                    continue
                self.pending.append(memoryview(buffer)[sent:])
                sent = 0
        else:  # empty buffers stay out: sendmsg of only those sends 0 and the writer would spin
            self.pending.extend(memoryview(b) for b in buffers if len(b))
        if self.pending:
            self.wake.set()

    async def writer(self) -> None:
        try:
            while self.dead is None:
                await self.wake.wait()
                self.wake = trio.Event()
                while self.pending:
                    try:
                        sent = self.sock.sendmsg(list(itertools.islice(self.pending, _IOV_MAX)))
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(self.sock)
                        continue
                    self._consume(sent)
                if self.closing:
                    self.sock.shutdown(socket.SHUT_WR)
                    return
        except (OSError, trio.ClosedResourceError) as exc:
            self.fail(BatchProcessError(f"{self.name}: cannot send to the child: {exc}"))

    def _consume(self, sent: int) -> None:
        pending = self.pending
        while sent:
            head = pending[0]
            if sent >= len(head):
                sent -= len(head)
                pending.popleft()
            else:
                pending[0] = head[sent:]
                sent = 0

    # ---------------------------------------------------------------------- receiving

    async def reader(self) -> None:
        buf = bytearray()
        head = REPLY_HEAD.size
        try:
            while True:
                try:
                    data = self.sock.recv(1 << 16)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self.sock)
                    continue
                if not data:
                    break
                buf += data
                offset = 0
                while len(buf) - offset >= head:
                    (size,) = REPLY_HEAD.unpack_from(buf, offset)
                    if len(buf) - offset - head < size:
                        break
                    self._dispatch(pickle.loads(buf[offset + head : offset + head + size]))
                    offset += head + size
                del buf[:offset]
            self.fail(BatchProcessError(f"{self.name}: the child process exited"))
        except OSError as exc:
            self.fail(BatchProcessError(f"{self.name}: lost the child process: {exc}"))
        except Exception as exc:  # an answer that does not unpickle here: never crash the run
            self.fail(BatchProcessError(f"{self.name}: unreadable answer from the child: {exc!r}"))
            self.process.kill()
        finally:
            trio.lowlevel.notify_closing(self.sock)  # wakes a writer waiting on it
            self.sock.close()
            self.finished.set()
        await self.reap()

    def _dispatch(self, reply: Any) -> None:
        if not self.ready.is_set():
            self.hello = reply
            self.ready.set()
            return
        self.progress = trio.current_time()
        self.owner.batches += 1
        self.owner.jobs += len(reply)
        slots = self.slots
        for seq, ok, value in reply:
            slot = slots.pop(seq, None)
            if slot is not None:  # None: its caller was cancelled and gave up
                slot.ok = ok
                slot.value = value
                slot.done.set()

    def fail(self, error: BatchProcessError) -> None:
        """Every job in flight hears ``error``; the child is not used again."""
        if self.dead is None:
            self.dead = error
            if self.slots and not self.closing:
                log.error("%s; %d job(s) in flight failed", error, len(self.slots))
        slots, self.slots = self.slots, {}
        for slot in slots.values():
            slot.value = error
            slot.done.set()
        self.pending.clear()
        self.wake.set()
        self.ready.set()

    async def reap(self) -> None:
        with trio.move_on_after(_STOP_DEADLINE):
            await self.process.wait()
            return
        self.process.kill()
        await self.process.wait()


class BatchProcess(Generic[J, R]):
    """Run ``factory(*args, **kwargs)(batch)`` in a child process for batches of submitted jobs.

    The processor gets a sequence of ``(job, payload bytes)`` and returns one result or
    exception per job, in order; jobs, results and exceptions must pickle."""

    def __init__(
        self,
        factory: Callable[..., Callable[[Sequence[tuple[J, bytes]]], Sequence[R | BaseException]]],
        *args: object,
        name: str = "batch-process",
        stall: float = STALL,
        **kwargs: object,
    ) -> None:
        module = factory.__module__
        file = getattr(sys.modules.get(module), "__file__", None)
        self.name = name
        self.stall = stall
        self._init = pickle.dumps((module, factory.__qualname__, file, args, kwargs), _PICKLE)
        self._child: _Child | None = None
        self._start_lock = trio.Lock()
        self._seq = itertools.count()
        self._closed = False
        self.started = 0  # children started so far (a restart count for operators and tests)
        self.batches = 0  # batches answered, all children together
        self.jobs = 0  # jobs answered

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child is not None and child.dead is None else None

    async def start(self) -> None:
        """Start the child now rather than with the first job (which would wait for it).

        Raises:
            BatchProcessError: it could not start.
        """
        child = self._child
        if child is None or child.dead is not None:
            await self._start()

    async def submit(self, job: J, payload: Sequence[bytes] = ()) -> R:
        """Run ``job`` (with ``payload`` as its bytes) in the next batch; return its result or
        raise its exception (``BatchProcessError`` if the child died first)."""
        child = self._child
        if child is None or child.dead is not None:
            child = await self._start()
        seq = next(self._seq)
        meta = pickle.dumps((seq, job), _PICKLE)
        slot = _Slot()
        child.slots[seq] = slot
        try:
            child.send([JOB_HEAD.pack(len(meta), sum(map(len, payload))) + meta, *payload])
            await slot.done.wait()
        finally:
            if not slot.done.is_set():  # our caller gave up (its deadline, a hang-up)
                self._replace_if_stalled(child)
                child.slots.pop(seq, None)
        if slot.ok:
            return slot.value  # type: ignore[no-any-return]
        raise slot.value

    def _replace_if_stalled(self, child: _Child) -> None:
        """A child that has answered nothing for ``stall`` seconds while jobs wait is killed
        (its jobs fail) and the next job starts another. Checked when a caller gives up, so
        the hot path carries no timer: callers have deadlines (the plugin timeout), and the
        first to expire after ``stall`` seconds of silence does it."""
        if child.dead is None and trio.current_time() - child.progress >= self.stall:
            error = BatchProcessError(f"{self.name}: no answer from the child for {self.stall:g}s")
            log.error("%s; killing pid %d", error, child.process.pid)
            child.fail(error)
            child.process.kill()

    async def _start(self) -> _Child:
        async with self._start_lock:
            if self._closed:
                raise BatchProcessError(f"{self.name} is closed")
            child = self._child
            if child is not None and child.dead is None:
                return child
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                for sock in (ours, theirs):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
                command = [sys.executable, "-P", "-c", WORKER_MAIN, str(theirs.fileno())]
                process = await trio.lowlevel.open_process(
                    command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                    env=worker_env(),
                )  # fmt: skip
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            ours.setblocking(False)
            child = _Child(self, process, ours)
            trio.lowlevel.spawn_system_task(child.reader, name=f"{self.name}-reader")
            trio.lowlevel.spawn_system_task(child.writer, name=f"{self.name}-writer")
            self._child = child
            self.started += 1
            child.send([REPLY_HEAD.pack(len(self._init)) + self._init])
            ok = False
            try:
                with trio.fail_after(_START_DEADLINE):
                    await child.ready.wait()
                hello = child.hello
                if not (isinstance(hello, tuple) and hello[:1] == ("ready",)):
                    detail = hello[1] if isinstance(hello, tuple) else child.dead
                    raise BatchProcessError(f"{self.name}: the child did not start: {detail}")
                ok = True
            except trio.TooSlowError:
                raise BatchProcessError(f"{self.name}: the child did not start in time") from None
            finally:
                if not ok:
                    child.fail(BatchProcessError(f"{self.name}: the child did not start"))
                    process.kill()
            return child

    async def aclose(self) -> None:
        """Stop taking jobs, let the child finish and answer what it has, and reap it."""
        self._closed = True
        async with self._start_lock:
            child = self._child
        if child is None:
            return
        child.closing = True
        child.wake.set()
        with trio.move_on_after(_STOP_DEADLINE):
            await child.finished.wait()
        if not child.finished.is_set():
            child.process.kill()
            child.fail(BatchProcessError(f"{self.name}: the child did not stop in time"))
        with trio.move_on_after(_STOP_DEADLINE):
            await child.process.wait()
