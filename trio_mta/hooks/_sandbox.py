"""The process sandbox: sandboxed plugin hooks run in a pool of worker processes.

Theory of operation
-------------------
``ProcessSandbox.serve`` (under ``nursery.start``, or ``open_sandbox``) runs the elastic pool
(``_sandbox_pool``: routing, deadlines that kill only the hung call's worker, warm spares, growth
and shrinking) of workers (``_sandbox_worker``: one Trio loop serving many calls at once).

A call encodes a serialisable view *before* it takes a worker: the plugin (a token, and once per
worker its name, source file, config and env), the hook, the connection and transaction with
the notes that are JSON values, the message as the path of its spooled file, the hook args
(protocol objects pickle as they are). Waiting for a worker runs inside the runner's deadline
like everything else. The worker replies with the result and the changes: notes set or deleted,
headers added or removed, ``relaying``, mutated list arguments (``capabilities``). The parent
applies those, then raises if the plugin failed (so edits made before an exception land, as
they would in-process).
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ..events import SandboxWorker
from . import _sandbox_wire as wire
from ._context import Connection, Transaction
from ._plugin import Plugin
from ._registry import HookEntry
from ._result import CONT, Action, Result
from ._sandbox_link import ChildProcess, PoolWorker, SandboxError, WorkerCrashed
from ._sandbox_pool import START_DEADLINE, Pool, Reporter
from ._sandbox_zygote import ZYGOTE_MAIN, Zygote

if TYPE_CHECKING:
    from ..config import PluginsConfig
    from ..events import EventBus

__all__ = ["ProcessSandbox", "SandboxError", "WorkerCrashed", "open_sandbox", "worker_env"]

log = logging.getLogger("trio_mta.sandbox")

# Not ``-m``: the package imports the worker module, and runpy would then run a second copy.
# ``-P``: the server's working directory is not an import root for the worker.
WORKER_MAIN = "import sys; from trio_mta.hooks._sandbox_worker import main; main(sys.argv[1:])"


class ProcessSandbox:
    """A pool of worker processes implementing the runner's ``Sandbox`` protocol."""

    def __init__(
        self,
        *,
        workers: int = 2,
        max_workers: int | None = None,
        spares: int = 1,
        idle_seconds: float = 60.0,
        stall_seconds: float = 0.5,
        grace: float = 0.5,
        memory_mb: int = 1024,
        cpu_seconds: int = 60,
        python: str = sys.executable,
        report: Reporter | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a sandbox needs at least one worker")
        self.size = workers
        self.max_workers = max(max_workers if max_workers is not None else workers * 4, workers)
        self.spares = spares
        self.memory_mb = memory_mb
        self.cpu_seconds = cpu_seconds
        self.stall_seconds = stall_seconds
        self.python = python
        self.pool = Pool(
            self._spawn,
            minimum=workers,
            maximum=self.max_workers,
            spares=spares,
            idle_seconds=idle_seconds,
            grace=grace,
            report=report,
        )
        self._tokens: weakref.WeakKeyDictionary[Plugin, tuple[int, bytes]] = (
            weakref.WeakKeyDictionary()
        )
        self._counter = itertools.count(1)
        self._zygote: Zygote | None = None

    @classmethod
    def from_config(cls, config: PluginsConfig, bus: EventBus | None = None) -> ProcessSandbox:
        return cls(
            workers=config.sandbox_workers,
            max_workers=config.sandbox_workers_max,
            spares=config.sandbox_spares,
            idle_seconds=config.sandbox_idle_seconds,
            stall_seconds=config.sandbox_stall_seconds,
            memory_mb=config.sandbox_memory_mb,
            cpu_seconds=config.sandbox_cpu_seconds,
            report=bus_reporter(bus) if bus is not None else None,
        )

    def worker_pids(self) -> list[int]:
        """The process ids of the workers that take calls (idle or busy, not draining)."""
        return sorted(w.pid for w in self.pool.workers if w.draining is None)

    @property
    def stats(self) -> dict[str, float]:
        """Counters: workers spawned, killed, recycled, retired, crashed; calls retried; waits
        for a worker and the seconds spent waiting."""
        return self.pool.stats

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the fork server and the workers, report ready, then keep the pool in shape
        until cancelled."""
        # The fork server reaps the workers it made, so it outlives the pool's shutdown.
        keep = trio.CancelScope(shield=True)

        async def fork_server(task_status: trio.TaskStatus[Zygote]) -> None:
            with keep:
                zygote = await self._start_zygote()
                await zygote.run(task_status=task_status)

        async with trio.open_nursery() as nursery:
            try:
                self._zygote = await nursery.start(fork_server)
            except (OSError, RuntimeError):  # RuntimeError: it exited before it was ready
                log.exception("no fork server for the sandbox: workers start the slow way")
                self._zygote = None
            try:
                await self.pool.run(task_status=task_status)
            finally:
                keep.cancel()

    async def _start_zygote(self) -> Zygote:
        process, mine = await _start_child(self.python, ZYGOTE_MAIN, ())
        return Zygote(process, mine)

    async def call(self, entry: HookEntry, conn: Connection, args: tuple[object, ...]) -> Result:
        token, spec = self._plugin_ref(entry.plugin)
        body = pickle.dumps(
            (entry.hook, _conn_view(conn), _txn_view(conn.transaction), args),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        reply = await self.pool.request(token, spec, body, sync=not entry.is_async)
        return _apply(reply, conn, args, entry)

    def _plugin_ref(self, plugin: Plugin) -> tuple[int, bytes]:
        ref = self._tokens.get(plugin)
        if ref is None:
            path = inspect.getfile(type(plugin))
            spec = (plugin.name, path, dict(plugin.config), plugin.env)
            ref = (next(self._counter), pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
            self._tokens[plugin] = ref
        return ref

    async def _spawn(self) -> PoolWorker:
        level = logging.getLogger("trio_mta").getEffectiveLevel()
        settings = [str(self.memory_mb), str(self.cpu_seconds), str(level)]
        settings += [repr(self.stall_seconds)]
        process: ChildProcess
        zygote = self._zygote
        if zygote is not None and zygote.alive:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                process = await zygote.fork(theirs.fileno(), settings)
            except BaseException:
                mine.close()
                raise
            finally:
                theirs.close()
            mine.setblocking(False)
        else:
            process, mine = await _start_child(self.python, WORKER_MAIN, settings)
        worker = PoolWorker(process, mine)
        try:
            with trio.fail_after(START_DEADLINE):
                note = await _first_frame(worker)
            kind, pid, _ = wire.NOTE.unpack(note)
            if kind != wire.READY or pid != worker.pid:
                raise WorkerCrashed(f"sandbox worker {worker.pid} said {note!r}, not ready")
        except BaseException:
            worker.kill()
            await worker.reap()
            raise
        return worker


async def _start_child(
    python: str, main: str, args: Sequence[str]
) -> tuple[trio.Process, socket.socket]:
    """A fresh interpreter running ``main`` with our end of a socket pair as its first argument."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = await trio.lowlevel.open_process(
            [python, "-P", "-c", main, str(theirs.fileno()), *args],
            stdin=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            env=worker_env(),
        )
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    mine.setblocking(False)
    return process, mine


async def _first_frame(worker: PoolWorker) -> bytes:
    while True:
        frames = wire.split_frames(worker.buffer)
        if frames:
            return frames[0]  # a worker says nothing else before the first call
        await trio.lowlevel.wait_readable(worker.sock)
        chunk = worker.sock.recv(1 << 16)
        if not chunk:
            raise WorkerCrashed(await worker.reap())
        worker.buffer += chunk


def bus_reporter(bus: EventBus) -> Reporter:
    """Worker events on the bus, and the counters /metrics shows."""

    def report(pid: int, action: str, reason: str, waited: float) -> None:
        bus.counters.sandbox_event(action, waited)
        bus.publish(
            SandboxWorker(ts=time.time(), pid=pid, action=action, reason=reason, waited=waited)
        )

    return report


@asynccontextmanager
async def open_sandbox(**options: Any) -> AsyncIterator[ProcessSandbox]:
    """A running sandbox for the body of the ``async with`` (``options`` as for
    ``ProcessSandbox``); every worker is killed on exit."""
    sandbox = ProcessSandbox(**options)
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
