"""The daemon's side of the control socket: a command registry and a Unix-socket server.

Theory of operation
-------------------
``serve`` binds ``<var_dir>/control.sock`` (a stale file from a crashed daemon is replaced: the
caller holds the state directory's lock, so no live daemon owns it), makes it mode 0600 before
``listen`` (until then no client can connect), then reports ready. Each connection is a task in
the server's nursery; it reads newline-delimited requests, each at most ``MAX_REQUEST`` octets,
and answers each in order. The reading of a request and the handler's run are both bounded by
``deadline``: a silent client or a stuck handler costs one task for that long, never the daemon.
Anything wrong with a request (not JSON, not an object, no ``cmd``, unknown command, bad
arguments, a handler's exception) is answered ``{"ok": false, "error": ...}`` on that request
alone; an over-long line is answered and the connection closed (its end cannot be found).
On exit the socket file is removed if it is still the one this server bound.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ._wire import MAX_REQUEST, encode, error_reply, send_all, short_path

log = logging.getLogger("trio_mta.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_CONNECTIONS = 32  # a control socket serves an operator and a few tools, not a crowd


class ControlServer:
    def __init__(self, path: Path, *, deadline: float = 30.0) -> None:
        self.path = Path(path)
        self.deadline = deadline
        self._handlers: dict[str, Handler] = {}
        self._connections = 0

    def register(self, name: str, handler: Handler) -> None:
        """``handler(args)`` answers ``{"cmd": name, **args}``; what it returns (JSON-able) is
        the ``result``. A ``ValueError``/``LookupError`` it raises is the caller's mistake and
        its message is the ``error``; any other exception is logged as a bug and answered."""
        self._handlers[name] = handler

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    async def serve(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        # Bound with the plain socket, on the event loop: trio's bind of a Unix socket goes
        # through a thread, during which a test's autojump clock would leap ahead.
        plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener = trio.socket.from_stdlib_socket(plain)
        bound: os.stat_result | None = None
        try:
            with short_path(self.path) as name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
                plain.bind(name)
                os.chmod(name, 0o600)
                bound = os.stat(name)
            listener.listen(16)
            async with trio.open_nursery() as nursery:
                task_status.started(self.path)
                while True:
                    conn, _ = await listener.accept()
                    if self._connections >= MAX_CONNECTIONS:
                        conn.close()
                        continue
                    nursery.start_soon(self._connection, conn, name="control connection")
        finally:
            listener.close()
            if bound is not None:
                self._remove(bound)

    def _remove(self, bound: os.stat_result) -> None:
        try:
            with short_path(self.path) as name:
                now = os.stat(name)
                if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):
                    os.unlink(name)
        except OSError:
            pass

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        self._connections += 1
        buffer = bytearray()
        try:
            with conn:
                while True:
                    line = None
                    with trio.move_on_after(self.deadline):
                        line = await _read_line(conn, buffer)
                    if line is None:
                        return  # closed, or silent past the deadline
                    if len(line) > MAX_REQUEST:
                        await send_all(
                            conn, encode(error_reply(f"request longer than {MAX_REQUEST} octets"))
                        )
                        return
                    await send_all(conn, encode(await self.answer(line)))
        except OSError:
            return  # the client went away mid-reply
        finally:
            self._connections -= 1

    async def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line (never raises, but for cancellation)."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            return error_reply(f"malformed request: {exc}")
        if not isinstance(request, dict):
            return error_reply("malformed request: not a JSON object")
        cmd = request.pop("cmd", None)
        if not isinstance(cmd, str):
            return error_reply('malformed request: no "cmd"')
        handler = self._handlers.get(cmd)
        if handler is None:
            return error_reply(f"unknown command {cmd!r} (known: {', '.join(self.commands)})")
        with trio.move_on_after(self.deadline):
            try:
                return {"ok": True, "result": await handler(request)}
            except (ValueError, LookupError, TypeError) as exc:
                # str() of a KeyError is its repr; the message itself reads better.
                said = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                return error_reply(f"{cmd}: {said}")
            except Exception as exc:  # the isolation boundary of one request
                log.exception("control: %s failed", cmd)
                return error_reply(f"{cmd}: internal error: {exc!r}")
        return error_reply(f"{cmd}: no answer within {self.deadline:g} s")


async def _read_line(conn: trio.socket.SocketType, buffer: bytearray) -> bytes | None:
    """The next line (without its newline), an over-long prefix (> MAX_REQUEST), or None
    when the client closed."""
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            return line
        if len(buffer) > MAX_REQUEST:
            return bytes(buffer)
        data = await conn.recv(65536)
        if not data:
            return None
        buffer += data
