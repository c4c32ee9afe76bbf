"""The process sandbox: sandboxed plugin hooks run in a pool of worker processes.

Theory of operation
-------------------
``ProcessSandbox.serve`` (under ``nursery.start``, or ``open_sandbox``) starts N workers
(``_sandbox_worker``), reports ready once every one of them has said so, then replaces dead
workers for as long as it runs; when it stops, every worker is killed and reaped.

A call encodes a serialisable view *before* it takes a worker: the plugin (a token, and once per
worker its name, source file, config and env), the hook, the connection and transaction with
the notes that are JSON values, the message as the path of its spooled file, the hook args
(protocol objects pickle as they are). It then takes an idle worker from a channel, so waiting
for a free worker runs inside the runner's deadline like everything else. The worker replies
with the result and the changes: notes set or deleted, headers added or removed, ``relaying``,
mutated list arguments (``capabilities``). The parent applies those, then raises if the plugin
failed (so edits made before an exception land, as they would in-process).

Invariant: a worker goes back to the idle channel only after a complete, well-formed reply.
Any other exit from a call (the deadline's ``Cancelled``, EOF, a bad frame) SIGKILLs it
synchronously in ``finally`` and hands it to the replacer, which reaps it and starts a new one.
The killed call never waits for that: the deadline is the deadline.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ._context import Connection, Transaction
from ._plugin import Plugin
from ._registry import HookEntry
from ._result import CONT, Action, Result
from ._sandbox_worker import FRAME, MAX_FRAME, REQUEST_HEAD

if TYPE_CHECKING:
    from ..config import PluginsConfig

log = logging.getLogger("trio_mta.sandbox")

# Not ``-m``: the package imports the worker module, and runpy would then run a second copy.
# ``-P``: the server's working directory is not an import root for the worker.
WORKER_MAIN = "import sys; from trio_mta.hooks._sandbox_worker import main; main(sys.argv[1:])"
_START_DEADLINE = 30.0  # seconds for a new worker to import and report ready


class SandboxError(Exception):
    """A sandboxed call failed: the plugin raised in its worker, or the sandbox is not running."""


class WorkerCrashed(SandboxError):
    """The worker died (or broke the frame protocol) during a call; it has been replaced."""


class _Worker:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.buffer = bytearray()
        self.known: set[int] = set()  # plugin tokens whose spec this worker already has

    async def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send_all(data)
        except trio.BrokenResourceError as exc:  # it died while idle
            raise WorkerCrashed(await self._death()) from exc

    async def receive(self) -> bytes:
        stdout = self.process.stdout
        assert stdout is not None
        buf = self.buffer
        while True:
            if len(buf) >= FRAME.size:
                (size,) = FRAME.unpack_from(buf)
                if size > MAX_FRAME:
                    raise WorkerCrashed(f"sandbox worker {self.pid} sent a {size}-byte frame")
                end = FRAME.size + size
                if len(buf) >= end:
                    frame = bytes(buf[FRAME.size : end])
                    del buf[:end]
                    return frame
            chunk = await stdout.receive_some()
            if not chunk:
                raise WorkerCrashed(await self._death())
            buf += chunk

    async def _death(self) -> str:
        with trio.move_on_after(1):
            await self.process.wait()
        code = self.process.returncode
        if code is None:
            return f"sandbox worker {self.pid} closed its pipe"
        if code < 0:
            return f"sandbox worker {self.pid} was killed by {signal.Signals(-code).name}"
        return f"sandbox worker {self.pid} exited with status {code}"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone
            self.process.kill()

    async def reap(self) -> None:
        """Kill, wait for the exit status, close the pipes; even when cancelled."""
        self.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    await stream.aclose()


class ProcessSandbox:
    """A pool of worker processes implementing the runner's ``Sandbox`` protocol."""

    def __init__(
        self,
        *,
        workers: int = 2,
        memory_mb: int = 1024,
        cpu_seconds: int = 60,
        python: str = sys.executable,
    ) -> None:
        if workers < 1:
            raise ValueError("a sandbox needs at least one worker")
        self.size = workers
        self.memory_mb = memory_mb
        self.cpu_seconds = cpu_seconds
        self.python = python
        self._idle_send, self._idle_recv = trio.open_memory_channel[_Worker](math.inf)
        self._dead_send, self._dead_recv = trio.open_memory_channel[_Worker](math.inf)
        self._workers: set[_Worker] = set()
        self._tokens: weakref.WeakKeyDictionary[Plugin, tuple[int, bytes]] = (
            weakref.WeakKeyDictionary()
        )
        self._counter = itertools.count(1)
        self._closed = False

    @classmethod
    def from_config(cls, config: PluginsConfig) -> ProcessSandbox:
        return cls(
            workers=config.sandbox_workers,
            memory_mb=config.sandbox_memory_mb,
            cpu_seconds=config.sandbox_cpu_seconds,
        )

    def worker_pids(self) -> list[int]:
        """The process ids of the workers that are ready (idle or busy)."""
        return sorted(w.pid for w in self._workers)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers, report ready, then keep the pool full until cancelled."""
        if self._closed:
            raise SandboxError("a sandbox serves once")
        try:
            async with trio.open_nursery() as starting:
                for _ in range(self.size):
                    starting.start_soon(self._add_worker)
            task_status.started()
            async with trio.open_nursery() as nursery:
                async for dead in self._dead_recv:
                    nursery.start_soon(self._replace, dead)
        finally:
            self._closed = True
            self._idle_send.close()  # callers waiting for a worker get SandboxError
            workers, self._workers = list(self._workers), set()
            for worker in workers:
                worker.kill()
            for worker in workers:
                await worker.reap()

    async def call(self, entry: HookEntry, conn: Connection, args: tuple[object, ...]) -> Result:
        token, spec = self._plugin_ref(entry.plugin)
        body = pickle.dumps(
            (entry.hook, _conn_view(conn), _txn_view(conn.transaction), args),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        try:
            # An idle worker at hand skips a scheduler round trip; the pipe I/O below still
            # checkpoints, so the call stays cancellable.
            worker = self._idle_recv.receive_nowait()
        except trio.WouldBlock:
            worker = await self._receive_worker()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SandboxError("the plugin sandbox is not running") from None
        healthy = False
        try:
            extra = b"" if token in worker.known else spec
            head = REQUEST_HEAD.pack(token, len(extra))
            await worker.send(FRAME.pack(len(head) + len(extra) + len(body)) + head + extra + body)
            raw = await worker.receive()
            try:
                reply = json.loads(raw)
            except ValueError as exc:
                raise WorkerCrashed(f"sandbox worker {worker.pid} sent a bad reply") from exc
            worker.known.add(token)
            healthy = True
        finally:
            if healthy:
                self._release(worker)
            else:
                self._discard(worker)
        return _apply(reply, conn, args, entry)

    async def _receive_worker(self) -> _Worker:
        try:
            return await self._idle_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SandboxError("the plugin sandbox is not running") from None

    def _plugin_ref(self, plugin: Plugin) -> tuple[int, bytes]:
        ref = self._tokens.get(plugin)
        if ref is None:
            path = inspect.getfile(type(plugin))
            spec = (plugin.name, path, dict(plugin.config), plugin.env)
            ref = (next(self._counter), pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
            self._tokens[plugin] = ref
        return ref

    def _release(self, worker: _Worker) -> None:
        try:
            self._idle_send.send_nowait(worker)
        except trio.ClosedResourceError:  # shutting down: serve() has killed it already
            worker.kill()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.discard(worker)
        if not self._closed:
            self._dead_send.send_nowait(worker)  # an unbounded channel: never blocks

    async def _replace(self, dead: _Worker) -> None:
        await dead.reap()
        delay = 0.1
        while True:
            try:
                await self._add_worker()
                return
            except (OSError, ValueError, SandboxError, trio.TooSlowError):
                log.exception("could not start a sandbox worker; retrying in %.1fs", delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _add_worker(self) -> None:
        level = logging.getLogger("trio_mta").getEffectiveLevel()
        command = [self.python, "-P", "-c", WORKER_MAIN]
        command += [str(self.memory_mb), str(self.cpu_seconds), str(level)]
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=worker_env()
        )
        worker = _Worker(process)
        try:
            with trio.fail_after(_START_DEADLINE):
                ready = json.loads(await worker.receive())
            if ready != {"ready": worker.pid}:
                raise WorkerCrashed(f"sandbox worker {worker.pid} said {ready!r}, not ready")
        except BaseException:
            await worker.reap()
            raise
        self._workers.add(worker)  # from here on, serve() kills it when it stops
        self._idle_send.send_nowait(worker)


@asynccontextmanager
async def open_sandbox(
    *, workers: int = 2, memory_mb: int = 1024, cpu_seconds: int = 60
) -> AsyncIterator[ProcessSandbox]:
    """A running sandbox for the body of the ``async with``; every worker is killed on exit."""
    sandbox = ProcessSandbox(workers=workers, memory_mb=memory_mb, cpu_seconds=cpu_seconds)
    async with trio.open_nursery() as nursery:
        await nursery.start(sandbox.serve)
        try:
            yield sandbox
        finally:
            nursery.cancel_scope.cancel()


def worker_env() -> dict[str, str]:
    """The parent's environment, with the directory holding ``trio_mta`` first on the path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _json_notes(notes: Mapping[Any, object]) -> str:
    """The notes a worker may see: string keys with JSON values (the rest stay home)."""
    if not notes:
        return "{}"
    if all(type(k) is str for k in notes):
        try:
            return json.dumps(notes)
        except (TypeError, ValueError):
            pass
    sendable: dict[str, object] = {}
    for key, value in notes.items():
        if type(key) is str:
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue
            sendable[key] = value
    return json.dumps(sendable)


def _conn_view(conn: Connection) -> tuple[object, ...]:
    return (conn.id, conn.listener, conn.client_ip, conn.client_port, conn.local_ip,
            conn.local_port, conn.started, conn.helo, conn.extended, conn.tls_version,
            conn.tls_cipher, conn.auth_user, conn.relaying, conn.transactions,
            _json_notes(conn.notes))  # fmt: skip


def _txn_view(txn: Transaction | None) -> tuple[object, ...] | None:
    if txn is None:
        return None
    message = None
    if txn.message is not None:
        m = txn.message
        message = (str(m.path()), m.size, m.header_block, m.headers_complete)
    return (txn.id, txn.sender, txn.mail_params, txn.started, txn.recipients,
            _json_notes(txn.notes), txn.added_headers, sorted(txn.removed_headers),
            sorted(txn.skip_plugins), message)  # fmt: skip


def _apply_notes(notes: dict[str, object], diff: Mapping[str, Any] | None) -> None:
    if diff:
        for key in diff.get("del", ()):
            notes.pop(key, None)
        notes.update(diff.get("set", {}))


def _apply(
    reply: Mapping[str, Any], conn: Connection, args: tuple[object, ...], entry: HookEntry
) -> Result:
    """Carry the worker's edits over to the real objects; return its result or raise its error."""
    _apply_notes(conn.notes, reply.get("notes"))
    if "relaying" in reply:
        conn.relaying = bool(reply["relaying"])
    txn, edits = conn.transaction, reply.get("txn")
    if txn is not None and edits:
        _apply_notes(txn.notes, edits.get("notes"))
        for name, value in edits.get("add", ()):
            txn.add_header(name, value)
        for name in edits.get("remove", ()):
            txn.remove_header(name)
        if edits.get("skip") is not None:
            txn.skip_plugins.clear()
            txn.skip_plugins.update(edits["skip"])
    for index, value in reply.get("args", {}).items():
        target = args[int(index)]
        if isinstance(target, list):
            target[:] = value
    error = reply.get("error")
    if error is not None:
        raise SandboxError(f"plugin {entry.plugin.name} on {entry.hook}, in the sandbox: {error}")
    result = reply.get("result")
    if result is None:
        return CONT
    action, message, code, enhanced = result
    return Result(Action(action), tuple(message) if message else None, code, enhanced)
