"""The far side of the process sandbox: one worker process serving many calls at once.

Theory of operation
-------------------
Started by the pool as ``python -P -c WORKER_MAIN FD MEMORY_MB CPU_SECONDS LOG_LEVEL STALL``
with one end of a Unix socket pair at ``FD``. It limits itself (RLIMIT_AS, soft and hard, so
plugin code cannot lift it; RLIMIT_CPU soft), moves stdin/stdout out of the way (a plugin's
``print`` goes to stderr) and sends READY. Then one ``trio.run`` serves every call the parent
sends (see ``_sandbox_wire``): an async hook runs as a task, so one that awaits holds nothing;
a sync hook runs inline on the loop when the parent gave it the worker to itself, or in a
thread when it shares the worker. Plugin state (``setup``/``startup``) persists across calls.

A CANCEL for a task cancels its scope; the task answers CANCELLED when it has unwound. A thread
cannot be stopped: it is abandoned and the answer says so (the parent then retires this worker).
An inline call blocks the loop, so its CANCEL is read only once it returns: the parent's grace
period runs out first and it kills the worker.

A watchdog thread sends STALLED when the loop has not ticked for ``STALL`` seconds (naming the
call whose frame is on the main thread's stack: the parent moves the other calls elsewhere) or
when a thread call burns CPU that long (the GIL it holds slows every call here).

A call that leaves threads running (not the ones the plugin's ``startup`` started) or ran out
of memory asks the parent in its reply to retire this worker. Replies are JSON: the parent never
unpickles what ran next to plugin code. The CPU limit is a budget renewed at every call.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import pickle
import resource
import signal
import socket
import sys
import threading
import time
import traceback
import types
from collections import deque
from collections.abc import Coroutine, Generator
from pathlib import Path
from types import FrameType
from typing import Any

import trio

from . import _sandbox_wire as wire
from ._plugin import Plugin
from ._registry import import_plugin_module
from ._sandbox_call import Prepared, Slot, error_reply, finish, prepare

log = logging.getLogger("trio_mta.sandbox")
_MAX_SLOTS = 256
_THREADS = 8  # sync calls sharing this worker at once, each in its own thread
_BURNING = 0.1  # of a CPU over the watchdog's last look: a stalled call is burning CPU


class Worker:
    def __init__(self, sock: socket.socket, cpu_seconds: int, stall: float) -> None:
        self.sock = sock
        self.cpu_seconds = cpu_seconds
        self.stall = stall
        self.send_lock = threading.Lock()
        self.slots: dict[int, Slot] = {}
        self.classes: dict[tuple[Path, int], type[Plugin]] = {}
        self.generations = itertools.count(1)
        self.scopes: dict[int, trio.CancelScope] = {}
        self.in_thread: dict[int, float] = {}  # thread calls: call id -> start
        self.limiter = trio.CapacityLimiter(_THREADS)
        self.known_threads: set[threading.Thread] = set()
        self.tick = time.monotonic()
        self.main_thread = threading.get_ident()
        self.nursery: trio.Nursery | None = None
        self.buffer = bytearray()
        self.frames: deque[bytes] = deque()
        self.budget_renewed = time.monotonic()
        self.background = 0  # run_task calls in progress

    def send(self, payload: bytes) -> None:
        data = wire.frame(payload)
        with self.send_lock:  # the watchdog thread sends too
            self.sock.sendall(data)

    async def serve(self) -> None:
        self.known_threads = set(threading.enumerate())
        threading.Thread(target=self.watch, name="sandbox-watchdog", daemon=True).start()
        self.known_threads = set(threading.enumerate())
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.heartbeat)
            await self.read()

    async def heartbeat(self) -> None:
        while True:
            self.tick = time.monotonic()
            await trio.sleep(self.stall / 4)

    async def read(self) -> None:
        """Read and dispatch frames. An async call is stepped right here, in this task; if it
        suspends, this task stays with it and a new reader takes over (no task per call that
        finishes at once, and the call's cancel scope lives in the task that entered it)."""
        while True:
            while self.frames:
                if await self.dispatch(self.frames.popleft()):
                    return  # a new reader runs
            if self.scopes or self.in_thread or self.background:
                await trio.lowlevel.wait_readable(self.sock)
            # else: nothing else here needs the loop, so a plain blocking read is cheaper.
            chunk = self.sock.recv(1 << 16)
            self.tick = time.monotonic()  # a blocking read is not a stall
            if not chunk:  # the parent retired us, or is gone
                assert self.nursery is not None
                self.nursery.cancel_scope.cancel()
                return
            self.buffer += chunk
            self.frames.extend(wire.split_frames(self.buffer))

    async def dispatch(self, frame: bytes) -> bool:
        """Handle one frame; True if this task went on with a suspended call."""
        kind, cid, mode, token, spec_len = wire.REQUEST_HEAD.unpack_from(frame)
        if kind == wire.CANCEL:
            scope = self.scopes.get(cid)
            if scope is not None:
                scope.cancel()
            return False
        now = time.monotonic()
        if now - self.budget_renewed >= 1.0:  # whole seconds anyway: once a second is enough
            renew_cpu_budget(self.cpu_seconds)
            self.budget_renewed = now
        offset = wire.REQUEST_HEAD.size
        try:
            if spec_len:
                if len(self.slots) >= _MAX_SLOTS:
                    self.slots.clear()
                self.slots[token] = Slot(pickle.loads(frame[offset : offset + spec_len]))
            slot = self.slots.get(token)
            if slot is None:
                raise RuntimeError(f"unknown plugin token {token}")
            request = pickle.loads(frame[offset + spec_len :])
        except Exception:
            self.reply(cid, error_reply(traceback.format_exc()))
            return False
        if not slot.ready():
            assert self.nursery is not None
            self.background += 1
            self.nursery.start_soon(self.run_task, cid, slot, request, mode)
            return False
        if mode == wire.INLINE:
            self.run_inline(cid, slot, request)
            return False
        if mode == wire.TASK:
            return await self.step(cid, slot, request)
        assert self.nursery is not None
        self.background += 1
        self.nursery.start_soon(self.run_task, cid, slot, request, mode)
        return False

    async def step(self, cid: int, slot: Slot, request: tuple[Any, ...]) -> bool:
        assert slot.instance is not None
        call = prepare(slot, slot.instance, request)
        value: object = None
        error: Exception | None = None
        handed = False
        with trio.CancelScope() as scope:
            self.scopes[cid] = scope
            try:
                coro = call.fn(call.conn, *call.args)
                try:
                    trap = coro.send(None)
                except StopIteration as done:
                    value = done.value
                else:
                    assert self.nursery is not None
                    self.nursery.start_soon(self.read)
                    handed = True
                    value = await _drive(coro, trap)
            except Exception as exc:
                error = exc
            finally:
                del self.scopes[cid]
        if scope.cancelled_caught:
            self.send(wire.NOTE.pack(wire.CANCELLED, cid, 0))
        else:
            self.reply(cid, finish(call, value, error))
        return handed

    def run_inline(self, cid: int, slot: Slot, request: tuple[Any, ...]) -> None:
        """A sync hook on a worker of its own: called right here, blocking the loop."""
        assert slot.instance is not None
        call = prepare(slot, slot.instance, request)
        try:
            value: object = call.fn(call.conn, *call.args)
        except BaseException as exc:  # reported to the parent
            self.reply(cid, finish(call, None, exc))
            return
        self.reply(cid, finish(call, value, None))

    async def run_task(self, cid: int, slot: Slot, request: tuple[Any, ...], mode: int) -> None:
        try:
            await self._run_task(cid, slot, request, mode)
        finally:
            self.background -= 1

    async def _run_task(self, cid: int, slot: Slot, request: tuple[Any, ...], mode: int) -> None:
        value: object = None
        error: BaseException | None = None
        call: Prepared | None = None
        with trio.CancelScope() as scope:
            self.scopes[cid] = scope
            try:
                call = prepare(slot, await self.load(slot), request)
                if mode == wire.TASK:
                    value = await call.fn(call.conn, *call.args)
                elif mode == wire.INLINE:
                    value = call.fn(call.conn, *call.args)
                else:
                    value = await self.in_a_thread(cid, call)
            except Exception as exc:
                error = exc
            finally:
                del self.scopes[cid]
        if scope.cancelled_caught:
            stuck = cid in self.in_thread
            self.in_thread.pop(cid, None)
            self.send(wire.NOTE.pack(wire.CANCELLED, cid, stuck))
            return
        if call is None:
            self.reply(cid, error_reply("".join(traceback.format_exception(error))))
            return
        self.reply(cid, finish(call, value, error))

    async def in_a_thread(self, cid: int, call: Prepared) -> object:
        self.in_thread[cid] = time.monotonic()

        def run() -> object:
            self.known_threads.add(threading.current_thread())  # Trio's, reused: not a leak
            return call.fn(call.conn, *call.args)

        value = await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self.limiter)
        del self.in_thread[cid]
        return value

    def reply(self, cid: int, reply: dict[str, Any]) -> None:
        if "recycle" not in reply and threading.active_count() > len(self.known_threads):
            left = self.stray_threads()
            if left:
                reply["recycle"] = f"the call left {len(left)} thread(s) running: {left[0]}"
        self.send(wire.REPLY_HEAD.pack(wire.REPLY, cid) + encode_reply(reply))

    def stray_threads(self) -> list[str]:
        """Threads neither known at startup nor Trio's cached ones (which run thread calls)."""
        return [
            t.name
            for t in threading.enumerate()
            if t not in self.known_threads and not t.name.startswith("Trio thread")
        ]

    async def load(self, slot: Slot) -> Plugin:
        if slot.ready():
            assert slot.instance is not None
            return slot.instance
        mtime = slot.path.stat().st_mtime_ns
        cls = self.classes.get((slot.path, mtime))
        if cls is None:
            cls = import_plugin_module(slot.name, slot.path, next(self.generations))
            self.classes[(slot.path, mtime)] = cls
        slot.instance = None
        slot.is_async.clear()
        instance = cls(
            slot.name, slot.config, slot.env, logging.getLogger(f"trio_mta.plugin.{slot.name}")
        )
        if type(instance).startup is not Plugin.startup:
            await instance.startup()
        slot.instance, slot.mtime, slot.checked = instance, mtime, time.monotonic()
        self.known_threads = set(threading.enumerate())  # startup may start its own threads
        return instance

    # -- the watchdog thread ---------------------------------------------------------------

    def watch(self) -> None:
        reported: dict[int, int] = {}  # call id -> flags already sent
        cpu_then, then = time.process_time(), time.monotonic()
        while True:
            time.sleep(self.stall / 4)
            now, cpu = time.monotonic(), time.process_time()
            # A share of a CPU, not all of it: a worker spinning on a loaded machine gets less.
            burning = (cpu - cpu_then) > _BURNING * (now - then)
            cpu_then, then = cpu, now
            stalled: list[tuple[int, int]] = []
            if now - self.tick > self.stall:
                cid = self.culprit()
                if cid is not None:
                    stalled.append((cid, 1 | (2 if burning else 0)))
            elif burning:
                stalled += [(c, 2) for c, t in list(self.in_thread.items()) if now - t > self.stall]
            for cid, flags in stalled:
                if flags & ~reported.get(cid, 0):  # something new to say about it
                    reported[cid] = reported.get(cid, 0) | flags
                    self.send(wire.NOTE.pack(wire.STALLED, cid, flags))
            if len(reported) > 1000:
                reported.clear()

    def culprit(self) -> int | None:
        """The call whose frame is on the loop thread's stack right now, if any."""
        frame: FrameType | None = sys._current_frames().get(self.main_thread)
        codes = (Worker.run_inline.__code__, Worker._run_task.__code__, Worker.step.__code__)
        while frame is not None:
            if frame.f_code in codes:
                cid = frame.f_locals.get("cid")
                return cid if isinstance(cid, int) else None
            frame = frame.f_back
        return None


@types.coroutine
def _drive(coro: Coroutine[Any, Any, Any], trap: object) -> Generator[object, object, object]:
    """Drive ``coro`` on from where it yielded ``trap``: what ``yield from`` would do."""
    while True:
        try:
            sent = yield trap
        except BaseException as exc:
            try:
                trap = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                trap = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def encode_reply(reply: dict[str, Any]) -> bytes:
    import json

    try:
        return json.dumps(reply, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        return json.dumps({"error": f"the plugin left a value that is not JSON: {exc}"}).encode()


def renew_cpu_budget(seconds: int) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + seconds
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def apply_memory_limit(megabytes: int) -> None:
    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv: list[str]) -> None:
    fd, memory_mb, cpu_seconds, level = (int(a) for a in argv[:4])
    stall = float(argv[4])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    logging.basicConfig(
        level=level, format=f"%(asctime)s sandbox[{os.getpid()}] %(name)s %(levelname)s %(message)s"
    )
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    apply_memory_limit(memory_mb)
    renew_cpu_budget(cpu_seconds)
    worker = Worker(sock, cpu_seconds, stall)
    worker.send(wire.NOTE.pack(wire.READY, os.getpid(), 0))
    trio.run(worker.serve)
    os._exit(0)  # abandoned threads must not hold the exit
