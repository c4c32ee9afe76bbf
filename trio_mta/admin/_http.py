"""The little HTTP/1.1 the admin listener needs: read one request head, answer it, or hand the
connection (head included) to trio-websocket.

Why not trio-websocket alone: its server handshake (wsproto) answers only websocket upgrades,
and the same listener must serve ``GET /`` (the page) and ``GET /metrics``. So this module reads
the request head itself (bounded size, under the caller's deadline), answers plain GETs with one
``Connection: close`` response, and for an upgrade gives trio-websocket a ``PrefixedStream``
that replays the head it already read.
"""

from __future__ import annotations

import urllib.parse

import attrs
import trio

MAX_HEAD = 16 * 1024
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen
class RequestHead:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def is_websocket(self) -> bool:
        upgrade = (self.header("upgrade") or "").lower()
        connection = (self.header("connection") or "").lower()
        return upgrade == "websocket" and "upgrade" in connection

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


def parse_head(data: bytes) -> RequestHead:
    """Parse a request head (everything before the blank line).

    Raises:
        HttpError: 400 for anything that is not a well-formed HTTP/1.1 request head.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    split = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
    return RequestHead(method, target, split.path or "/", query, headers)


async def read_head(stream: trio.abc.ReceiveStream) -> tuple[RequestHead, bytes] | None:
    """Read one request head; returns it with every byte read (head and beyond), or None if
    the client closed first.

    Raises:
        HttpError: malformed (400) or larger than ``MAX_HEAD`` (431).
    """
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return parse_head(bytes(buf[:end])), bytes(buf)
        if len(buf) > MAX_HEAD:
            raise HttpError(431, "request head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        buf += chunk


def response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_response(status: int, message: str) -> bytes:
    extra = (("WWW-Authenticate", 'Bearer realm="trio-mta admin"'),) if status == 401 else ()
    return response(status, (message + "\n").encode("utf-8"), headers=extra)


class PrefixedStream(trio.abc.Stream):
    """``inner``, except that the first reads return ``prefix`` (bytes already read from it)."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self.inner = inner
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()
