"""The far side of the process sandbox: one worker process, one hook call at a time.

Theory of operation
-------------------
Started by ``_sandbox`` as ``python -P -c WORKER_MAIN MEMORY_MB CPU_SECONDS LOG_LEVEL``. Before
it reads a request the worker limits itself (RLIMIT_AS, both soft and hard, so plugin code
cannot lift it; RLIMIT_CPU soft), moves the protocol off fds 0/1 (a plugin's ``print`` goes to
stderr, never into the frame stream) and sends a ready frame. Then it serves one request at a
time from a single long-lived ``trio.run``: async hooks are awaited there, sync hooks are called
directly (blocking is the point of this process). Plugin state (``setup``/``startup``) persists
across calls in the same worker, as it would in the server.

Frames are ``>I`` length-prefixed. Requests (parent → worker) are pickled: the parent is the
trusted side. Replies are JSON: the parent never unpickles what ran next to plugin code, and
notes that cross the boundary must be JSON values anyway.

The CPU limit is a per-call budget: before each call the soft limit is moved to the CPU used so
far plus the budget, so a long-lived worker is not killed for the sum of its innocent calls.
Going over it delivers SIGXCPU, which ends the process: the parent sees EOF, a crash.

Plugin modules are cached per (path, mtime); a plugin instance per (parent token, mtime).
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import math
import os
import pickle
import resource
import signal
import struct
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import trio

from ._context import Connection, Message, Transaction
from ._plugin import HOOK_PREFIX, Plugin, PluginEnv
from ._registry import import_plugin_module
from ._result import Result

FRAME = struct.Struct(">I")
REQUEST_HEAD = struct.Struct(">QI")  # plugin token, length of the plugin spec (0: known)
MAX_FRAME = 256 * 1024 * 1024
_READ_SIZE = 65536
_MAX_SLOTS = 256

log = logging.getLogger("trio_mta.sandbox")


def read_frame(fd: int) -> bytes | None:
    """One frame from a blocking fd; None on a clean EOF between frames."""
    head = _read_exact(fd, FRAME.size)
    if head is None:
        return None
    (size,) = FRAME.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is too large")
    body = _read_exact(fd, size)
    if body is None:
        raise EOFError("pipe closed inside a frame")
    return body


def _read_exact(fd: int, size: int) -> bytes | None:
    parts: list[bytes] = []
    got = 0
    while got < size:
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            if got:
                raise EOFError("pipe closed inside a frame")
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def write_frame(fd: int, payload: bytes) -> None:
    view = memoryview(FRAME.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


class FileMessage(Message):
    """The parent's message, read-only, from the file it was spooled to."""

    def __init__(self, path: str, size: int, header_block: bytes, complete: bool) -> None:
        super().__init__()
        self._path = Path(path)
        self.size = size
        self._block = header_block
        self._complete = complete

    def write(self, data: bytes) -> None:
        raise RuntimeError("the message is read-only in the sandbox")

    @property
    def headers_complete(self) -> bool:
        return self._complete

    @property
    def header_block(self) -> bytes:
        return self._block

    def chunks(self) -> Iterator[bytes]:
        left = self.size
        with self._path.open("rb") as f:
            while left > 0 and (block := f.read(min(_READ_SIZE, left))):
                left -= len(block)
                yield block

    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        return None


class _Slot:
    """One plugin as this worker knows it: the spec the parent sent, and the live instance."""

    def __init__(self, spec: tuple[str, str, Mapping[str, object], PluginEnv]) -> None:
        self.name, path, self.config, self.env = spec
        self.path = Path(path)
        self.mtime = -1
        self.instance: Plugin | None = None
        self.is_async: dict[str, bool] = {}


class Worker:
    def __init__(self, fd_in: int, fd_out: int, cpu_seconds: int) -> None:
        self.fd_in = fd_in
        self.fd_out = fd_out
        self.cpu_seconds = cpu_seconds
        self.slots: dict[int, _Slot] = {}
        self.classes: dict[tuple[Path, int], type[Plugin]] = {}
        self.generations = itertools.count(1)

    async def serve(self) -> None:
        while (frame := read_frame(self.fd_in)) is not None:
            renew_cpu_budget(self.cpu_seconds)
            reply = await self.handle(frame)
            write_frame(self.fd_out, encode_reply(reply))

    async def handle(self, frame: bytes) -> dict[str, Any]:
        token, spec_len = REQUEST_HEAD.unpack_from(frame)
        offset = REQUEST_HEAD.size
        try:
            if spec_len:
                if len(self.slots) >= _MAX_SLOTS:
                    self.slots.clear()
                self.slots[token] = _Slot(pickle.loads(frame[offset : offset + spec_len]))
            slot = self.slots.get(token)
            if slot is None:
                raise RuntimeError(f"unknown plugin token {token}")
            plugin = await self.load(slot)
            hook, conn_view, txn_view, args = pickle.loads(frame[offset + spec_len :])
        except Exception:
            return {"error": traceback.format_exc()}
        return await call_hook(slot, plugin, hook, conn_view, txn_view, args)

    async def load(self, slot: _Slot) -> Plugin:
        mtime = slot.path.stat().st_mtime_ns
        if slot.instance is not None and slot.mtime == mtime:
            return slot.instance
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
        slot.instance, slot.mtime = instance, mtime
        return instance


async def call_hook(
    slot: _Slot,
    plugin: Plugin,
    hook: str,
    conn_view: tuple[Any, ...],
    txn_view: tuple[Any, ...] | None,
    args: tuple[object, ...],
) -> dict[str, Any]:
    conn, conn_notes, txn_notes = rebuild_connection(conn_view, txn_view)
    txn = conn.transaction
    txn_before = None
    if txn is not None:
        txn_before = (len(txn.added_headers), set(txn.removed_headers), set(txn.skip_plugins))
    lists = {i: list(a) for i, a in enumerate(args) if isinstance(a, list)}
    error: str | None = None
    value: object = None
    try:
        fn = getattr(plugin, HOOK_PREFIX + hook)
        is_async = slot.is_async.get(hook)
        if is_async is None:
            is_async = slot.is_async[hook] = inspect.iscoroutinefunction(fn)
        value = await fn(conn, *args) if is_async else fn(conn, *args)
    except MemoryError:
        error = "MemoryError: the sandbox memory limit was reached"
    except Exception:
        error = traceback.format_exc()
    reply: dict[str, Any] = {
        "relaying": conn.relaying,
        "notes": diff_notes(conn_notes, conn.notes),
    }
    if txn is not None and txn_before is not None and txn_notes is not None:
        added, removed, skipped = txn_before
        reply["txn"] = {
            "notes": diff_notes(txn_notes, txn.notes),
            "add": txn.added_headers[added:],
            "remove": sorted(txn.removed_headers - removed),
            "skip": sorted(txn.skip_plugins) if txn.skip_plugins != skipped else None,
        }
    changed = {str(i): args[i] for i, before in lists.items() if args[i] != before}
    if changed:
        reply["args"] = changed
    if error is None:
        if isinstance(value, Result):
            reply["result"] = [value.action.value, value.message, value.code, value.enhanced]
        elif value is not None:
            error = f"returned {type(value).__name__}, not a Result"
    if error is not None:
        reply["error"] = error
    return reply


def rebuild_connection(
    view: tuple[Any, ...], txn_view: tuple[Any, ...] | None
) -> tuple[Connection, dict[str, Any], dict[str, Any] | None]:
    """Real ``Connection``/``Transaction`` objects, and snapshots of their notes to diff."""
    (cid, listener, ip, port, local_ip, local_port, started, helo, extended, tls_version,
     tls_cipher, auth_user, relaying, transactions, notes) = view  # fmt: skip
    conn = Connection(
        id=cid,
        listener=listener,
        client_ip=ip,
        client_port=port,
        local_ip=local_ip,
        local_port=local_port,
        started=started,
        helo=helo,
        extended=extended,
        tls_version=tls_version,
        tls_cipher=tls_cipher,
        auth_user=auth_user,
        relaying=relaying,
        transactions=transactions,
        notes=json.loads(notes),
    )
    if txn_view is not None:
        (tid, sender, mail_params, tstarted, recipients, tnotes, added, removed, skip,
         message) = txn_view  # fmt: skip
        conn.transaction = Transaction(
            id=tid,
            sender=sender,
            mail_params=mail_params,
            started=tstarted,
            recipients=recipients,
            notes=json.loads(tnotes),
            message=FileMessage(*message) if message is not None else None,
            added_headers=added,
            removed_headers=set(removed),
            skip_plugins=set(skip),
        )
        return conn, json.loads(notes), json.loads(tnotes)
    return conn, json.loads(notes), None


def diff_notes(before: Mapping[str, Any], after: Mapping[Any, Any]) -> dict[str, Any]:
    """What changed: ``set`` (new or different values) and ``del`` (keys that went away)."""
    changed = {k: v for k, v in after.items() if k not in before or before[k] != v}
    removed = [k for k in before if k not in after]
    return {"set": changed, "del": removed} if changed or removed else {}


def encode_reply(reply: dict[str, Any]) -> bytes:
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
    memory_mb, cpu_seconds, level = int(argv[0]), int(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    fd_in, fd_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    logging.basicConfig(
        level=level, format=f"%(asctime)s sandbox[{os.getpid()}] %(name)s %(levelname)s %(message)s"
    )
    apply_memory_limit(memory_mb)
    renew_cpu_budget(cpu_seconds)
    write_frame(fd_out, json.dumps({"ready": os.getpid()}).encode())
    trio.run(Worker(fd_in, fd_out, cpu_seconds).serve)
