"""The control protocol's framing, shared by the server and the clients.

A Unix socket path is limited to about 107 bytes (``sun_path``); a deep ``var_dir`` (a test's
temporary directory, a long install prefix) would make it unusable. ``short_path`` then names
the same file through ``/proc/self/fd/<dir fd>/``, which Linux resolves for bind and connect.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024  # one request line; commands are small, a longer line is refused
MAX_REPLY = 64 * 1024 * 1024  # a listing of a large queue is big, but not unbounded
_SUN_PATH = 107


def socket_path(var_dir: Path) -> Path:
    return Path(var_dir) / SOCKET_NAME


@contextlib.contextmanager
def short_path(path: Path) -> Iterator[str]:
    """A name for ``path`` that fits in ``sun_path`` (the path itself when it does)."""
    text = os.fsdecode(path)
    if len(os.fsencode(text)) <= _SUN_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode("utf-8") + b"\n"


def error_reply(text: str) -> dict[str, Any]:
    # One line, as the contract says: a traceback or a multi-line message never leaks out.
    return {"ok": False, "error": " ".join(text.split())[:500] or "error"}


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]
