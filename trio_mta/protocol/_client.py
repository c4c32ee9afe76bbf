"""Sans-I/O SMTP, client side: what the outbound queue (and the tests) speak to other servers.

The client role is simpler than the server's: the caller decides what to send next from the
replies it gets, so this class only frames commands, dot-stuffs message data (RFC 5321
§4.5.2), and parses replies, multi-line ones included, with their enhanced status codes when
the server advertised ENHANCEDSTATUSCODES (RFC 2034).
"""

from __future__ import annotations

import attrs

from ._address import Address
from ._events import NEED_DATA, NeedData
from ._replies import Reply

MAX_REPLY_LINE = 4096  # generous; RFC 5321 §4.5.3.1.5 says 512, real servers send more
MAX_REPLY_LINES = 1000


class ReplySyntaxError(Exception):
    """The server sent something that is not an SMTP reply."""


@attrs.frozen
class Capabilities:
    """The EHLO keywords (upper-cased) with their parameter text."""

    keywords: dict[str, str] = attrs.field(factory=dict, hash=False)

    def __contains__(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    def size_limit(self) -> int | None:
        value = self.keywords.get("SIZE", "")
        if not (value.isascii() and value.isdigit()):  # "²".isdigit() is True
            return None
        return int(value) if int(value) > 0 else None

    def auth_mechanisms(self) -> tuple[str, ...]:
        return tuple(self.keywords.get("AUTH", "").upper().split())


def parse_ehlo(reply: Reply) -> Capabilities:
    keywords: dict[str, str] = {}
    for line in reply.text[1:]:
        word, _, rest = line.partition(" ")
        if word:
            keywords[word.upper()] = rest.strip()
    return Capabilities(keywords)


def dot_stuff(message: bytes) -> bytes:
    """Message bytes → DATA payload including the terminating ``.CRLF``."""
    if message and not message.endswith(b"\r\n"):  # an empty message is just ".CRLF"
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def format_path(address: Address | None) -> str:
    return "<>" if address is None else f"<{address}>"


class ClientConnection:
    """The client role: ``command()`` renders lines, ``receive_data``/``next_reply`` parse."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lines: list[str] = []
        self._eof = False
        self.enhanced_codes = False

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def closed(self) -> bool:
        return self._eof and not self._buf

    def next_reply(self) -> Reply | NeedData:
        """One whole reply, or ``NEED_DATA``.

        Raises:
            ReplySyntaxError: the bytes are not an SMTP reply (or the server hung up mid-reply).
        """
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_REPLY_LINE:
                    raise ReplySyntaxError("reply line too long")
                if self._eof and (self._buf or self._lines):
                    raise ReplySyntaxError("connection closed in the middle of a reply")
                return NEED_DATA
            raw = bytes(self._buf[:nl]).rstrip(b"\r")
            del self._buf[: nl + 1]
            line = raw.decode("utf-8", errors="replace")
            if "\r" in line:  # a Reply can't hold it; it is no reply line anyway
                raise ReplySyntaxError(f"bare CR in a reply line: {line[:80]!r}")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise ReplySyntaxError(f"not an SMTP reply line: {line[:80]!r}")
            if self._lines and self._lines[0][:3] != line[:3]:
                raise ReplySyntaxError("reply code changed inside a multi-line reply")
            self._lines.append(line)
            if len(self._lines) > MAX_REPLY_LINES:
                raise ReplySyntaxError("too many reply lines")
            if line[3:4] != "-":
                lines, self._lines = self._lines, []
                return self._build(lines)

    def _build(self, lines: list[str]) -> Reply:
        code = int(lines[0][:3])
        if not 200 <= code <= 599:
            raise ReplySyntaxError(f"reply code out of range: {code}")
        texts = [line[4:] for line in lines]
        enhanced: str | None = None
        if self.enhanced_codes and code >= 200:
            first, _, rest = texts[0].partition(" ")
            if _is_enhanced(first, code):
                enhanced = first
                texts = [t.partition(" ")[2] if t.startswith(first) else t for t in texts]
                texts[0] = rest
        return Reply(code, enhanced, tuple(texts))

    @staticmethod
    def command(line: str) -> bytes:
        if "\r" in line or "\n" in line:
            raise ValueError("command must be a single line")
        return line.encode("utf-8") + b"\r\n"

    def ehlo(self, name: str) -> bytes:
        return self.command(f"EHLO {name}")

    def mail(self, sender: Address | None, params: str = "") -> bytes:
        return self.command(f"MAIL FROM:{format_path(sender)}{' ' + params if params else ''}")

    def rcpt(self, recipient: Address, params: str = "") -> bytes:
        return self.command(f"RCPT TO:{format_path(recipient)}{' ' + params if params else ''}")

    @staticmethod
    def data_payload(message: bytes) -> bytes:
        return dot_stuff(message)

    @staticmethod
    def bdat(chunk: bytes, *, last: bool) -> bytes:
        return f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk


def _is_enhanced(word: str, code: int) -> bool:
    parts = word.split(".")
    return (
        len(parts) == 3
        and all(p.isdigit() and 1 <= len(p) <= 3 for p in parts)
        and parts[0] == str(code)[0]
    )
