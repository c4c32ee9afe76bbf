"""The clients' side of the control socket: ``request`` (blocking, for the CLI) and
``arequest`` (for a Trio program: the admin child process)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import trio

from ._wire import MAX_REPLY, encode, send_all, short_path, socket_path


class NotRunning(Exception):
    """No daemon answers on the control socket (none runs, or an old one left the file)."""


class ControlError(Exception):
    """The daemon answered ``{"ok": false}``; the message is its one-line error."""


def _result(line: bytes) -> Any:
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"unreadable reply from the daemon: {exc}") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlError("unreadable reply from the daemon")
    if not reply["ok"]:
        raise ControlError(str(reply.get("error", "error")))
    return reply.get("result")


def request(var_dir: Path, cmd: str, *, wait: float = 60.0, **args: Any) -> Any:
    """Blocking. Send ``{"cmd": cmd, **args}`` to the daemon of ``var_dir``, return its result.

    Raises:
        NotRunning: nothing listens on the socket.
        ControlError: the daemon refused the request, or did not answer within ``wait``.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(wait)
    try:
        with short_path(socket_path(var_dir)) as name:
            try:
                sock.connect(name)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise NotRunning(str(exc)) from None
        sock.sendall(encode({"cmd": cmd, **args}))
        buffer = bytearray()
        while b"\n" not in buffer:
            data = sock.recv(1 << 20)
            if not data:
                raise ControlError("the daemon closed the connection without an answer")
            buffer += data
            if len(buffer) > MAX_REPLY:
                raise ControlError("the daemon's reply is too long")
    except TimeoutError:
        raise ControlError(f"the daemon did not answer within {wait:g} s") from None
    except OSError as exc:  # reset, broken pipe: the daemon went away under us
        raise ControlError(f"the daemon's control socket failed: {exc}") from None
    finally:
        sock.close()
    return _result(bytes(buffer).partition(b"\n")[0])


async def arequest(var_dir: Path, cmd: str, **args: Any) -> Any:
    """``request`` for Trio code; the caller bounds it (``trio.fail_after``)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        with short_path(socket_path(var_dir)) as name:
            try:
                await sock.connect(name)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise NotRunning(str(exc)) from None
        await send_all(sock, encode({"cmd": cmd, **args}))
        buffer = bytearray()
        while b"\n" not in buffer:
            data = await sock.recv(1 << 20)
            if not data:
                raise ControlError("the daemon closed the connection without an answer")
            buffer += data
            if len(buffer) > MAX_REPLY:
                raise ControlError("the daemon's reply is too long")
    return _result(bytes(buffer).partition(b"\n")[0])
