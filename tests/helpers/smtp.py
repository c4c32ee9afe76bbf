"""A minimal SMTP client over any ``trio.abc.Stream``: send raw bytes, read whole replies.

Deliberately dumb (no pipelining logic, no dot-stuffing): the tests decide every byte on the
wire, so what reaches the server is exactly what the test wrote.
"""

from __future__ import annotations

import attrs
import trio


@attrs.frozen
class ServerReply:
    code: int
    lines: tuple[str, ...]  # each line without its "250-" / "250 " prefix
    raw: bytes

    @property
    def enhanced(self) -> str | None:
        first = self.lines[0].split(" ", 1)[0] if self.lines else ""
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return first
        return None

    @property
    def text(self) -> str:
        return " / ".join(self.lines)

    def __str__(self) -> str:
        return self.raw.decode("utf-8", "replace").strip()


class ReplyStreamClosed(Exception):
    """The server closed the connection before a whole reply arrived."""


class LineClient:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buf = bytearray()
        self.eof = False

    async def send(self, data: bytes | str) -> None:
        await self.stream.send_all(data.encode("utf-8") if isinstance(data, str) else data)

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.eof = True
            raise ReplyStreamClosed(bytes(self._buf))
        self._buf += data

    async def read_line(self) -> bytes:
        while True:
            nl = self._buf.find(b"\r\n")
            if nl >= 0:
                line = bytes(self._buf[: nl + 2])
                del self._buf[: nl + 2]
                return line
            await self._fill()

    async def reply(self) -> ServerReply:
        raw = b""
        lines: list[str] = []
        while True:
            line = await self.read_line()
            raw += line
            text = line[:-2].decode("utf-8")
            assert text[:3].isdigit(), f"not a reply line: {line!r}"
            lines.append(text[4:])
            if len(text) == 3 or text[3] == " ":
                return ServerReply(int(text[:3]), tuple(lines), raw)
            assert text[3] == "-", f"bad continuation: {line!r}"

    async def expect(self, code: int, enhanced: str | None = None) -> ServerReply:
        answer = await self.reply()
        assert answer.code == code, f"expected {code}, got {answer}"
        if enhanced is not None:
            assert answer.enhanced == enhanced, f"expected {code} {enhanced}, got {answer}"
        return answer

    async def command(self, line: str, code: int, enhanced: str | None = None) -> ServerReply:
        await self.send(line + "\r\n")
        return await self.expect(code, enhanced)

    async def read_to_eof(self) -> bytes:
        """Everything the server still sends, up to its close."""
        while not self.eof:
            try:
                await self._fill()
            except ReplyStreamClosed:
                break
        data = bytes(self._buf)
        self._buf.clear()
        return data

    async def expect_eof(self) -> None:
        rest = await self.read_to_eof()
        assert rest == b"", f"unexpected bytes before close: {rest!r}"

    async def transaction(
        self, sender: str, recipients: list[str], body: bytes, *, ehlo: str | None = None
    ) -> ServerReply:
        """One plain DATA transaction; ``body`` is sent as is (already dot-stuffed, ending in
        CRLF), followed by ``.CRLF``. Returns the final reply."""
        if ehlo is not None:
            await self.command(f"EHLO {ehlo}", 250)
        await self.command(f"MAIL FROM:<{sender}>", 250)
        for rcpt in recipients:
            await self.command(f"RCPT TO:<{rcpt}>", 250)
        await self.command("DATA", 354)
        await self.send(body + b".\r\n")
        return await self.reply()
