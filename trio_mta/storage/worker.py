"""The child side of ``hooks.BatchProcess``: a group commit in its own process.

Theory of operation
-------------------
Started as ``python -P -c WORKER_MAIN FD`` with one end of a socket pair on ``FD``. The first
frame names the processor: ``(module, qualname, file, args, kwargs)``; the child imports the
module (from ``file`` under the same name when it is not importable, as plugin modules are not),
builds ``processor = factory(*args, **kwargs)`` and answers ``("ready", pid)`` or
``("error", text)``.

Then it loops: block until bytes arrive, take everything else already waiting without
blocking, cut it into whole job frames, and hand every whole job to ``processor(batch)`` in one
call, so a batch (and its syncs) grows with the load. One result frame answers each batch.

Frames: parent → child ``>IQ`` (meta length, payload length), the pickled ``(seq, job)``,
then the payload bytes (the message, sent as it is, never pickled); child → parent ``>I``
length and a pickled list of ``(seq, ok, value)``. The parent is the only peer and is trusted.

The child ignores SIGINT, SIGTERM and SIGHUP: a signal to the whole process group (Ctrl-C,
a service manager stopping the unit) must not kill it under the server's drain. It exits when
the parent closes its end (or dies): EOF, after finishing and answering what it had.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

JOB_HEAD = struct.Struct(">IQ")
REPLY_HEAD = struct.Struct(">I")
_RECV = 1 << 20

Processor = Callable[[Sequence[tuple[Any, bytes]]], Sequence[Any]]


def load_factory(module: str, qualname: str, file: str | None) -> Callable[..., Processor]:
    try:  # an importable module is imported as such (its package first)
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if file is None or exc.name != module:
            raise
        spec = importlib.util.spec_from_file_location(module, file)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {module} from {file}") from exc
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module] = mod  # so pickles that name the module's classes resolve
        spec.loader.exec_module(mod)
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _reply(sock: socket.socket, value: object) -> None:
    try:
        body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        body = pickle.dumps(_picklable(value), protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(REPLY_HEAD.pack(len(body)) + body)


def _picklable(value: object) -> object:
    """A reply whose exceptions would not pickle, with each replaced by a RuntimeError."""
    if not isinstance(value, list):
        return repr(value)
    out = []
    for seq, ok, item in value:
        try:
            pickle.dumps(item)
        except Exception:
            ok, item = False, RuntimeError(repr(item))
        out.append((seq, ok, item))
    return out


def _frames(buf: bytearray) -> tuple[list[tuple[int, Any, bytes]], int]:
    """The whole job frames at the front of ``buf`` and how many bytes they took."""
    jobs: list[tuple[int, Any, bytes]] = []
    offset = 0
    size = len(buf)
    head = JOB_HEAD.size
    while size - offset >= head:
        meta_len, payload_len = JOB_HEAD.unpack_from(buf, offset)
        end = offset + head + meta_len + payload_len
        if end > size:
            break
        meta_end = offset + head + meta_len
        seq, job = pickle.loads(buf[offset + head : meta_end])
        jobs.append((seq, job, bytes(buf[meta_end:end])))
        offset = end
    return jobs, offset


def serve(sock: socket.socket, processor: Processor) -> None:
    buf = bytearray()
    scratch = bytearray(_RECV)
    view = memoryview(scratch)
    eof = False
    while not eof:
        n = sock.recv_into(view)
        if n == 0:
            return
        buf += view[:n]
        while True:  # everything already waiting joins this batch
            try:
                n = sock.recv_into(view, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if n == 0:
                eof = True
                break
            buf += view[:n]
        jobs, used = _frames(buf)
        del buf[:used]
        if not jobs:
            continue
        try:
            results = list(processor([(job, payload) for _, job, payload in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError("the batch processor returned the wrong number of results")
            reply = [
                (seq, not isinstance(r, BaseException), r)
                for (seq, _, _), r in zip(jobs, results, strict=True)
            ]
        except Exception as exc:  # the whole batch failed: every job hears it
            reply = [(seq, False, exc) for seq, _, _ in jobs]
        _reply(sock, reply)


def main(argv: Sequence[str]) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    head = _recv_exact(sock, REPLY_HEAD.size)
    if head is None:
        return
    body = _recv_exact(sock, REPLY_HEAD.unpack(head)[0])
    if body is None:
        return
    try:
        module, qualname, file, args, kwargs = pickle.loads(body)
        processor = load_factory(module, qualname, file)(*args, **kwargs)
    except Exception as exc:
        _reply(sock, ("error", f"{type(exc).__name__}: {exc}"))
        return
    _reply(sock, ("ready", os.getpid()))
    try:
        serve(sock, processor)
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent went away


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
