"""What plugins see: the connection, its transaction, and the message as it arrives.

The message is kept in memory up to a threshold and spilled to a temporary file beyond it, so
a 35 MB message never needs 35 MB of RAM per plugin; plugins read it as chunks. Header edits
are recorded, not applied: the queue plugins render the final message once, with
``Transaction.iter_message``.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs

from ..protocol import Address, MailParams, RcptParams

SPILL_THRESHOLD = 1024 * 1024
_READ_SIZE = 65536


class Message:
    """The message body as received (dot-unstuffed), without our trace header."""

    def __init__(self, *, spill_dir: Path | None = None, threshold: int = SPILL_THRESHOLD) -> None:
        self._chunks: list[bytes] = []
        self._memory = 0
        self._file: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._spill_dir = spill_dir
        self._threshold = threshold
        self.size = 0
        self._header_end = -1  # offset just past the blank line, once seen
        self._scan = b""  # the tail of what was seen, to find CRLFCRLF across chunks
        self._head = bytearray()  # the header block as it accumulates
        self._parsed: email.message.Message | None = None

    def write(self, data: bytes) -> None:
        if self._header_end < 0:
            self._track_headers(data)
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        self._memory += len(data)
        if self._memory > self._threshold:
            self._spill()

    def _track_headers(self, data: bytes) -> None:
        window = self._scan + data
        if self.size == 0 and data.startswith(b"\r\n"):
            self._header_end = 2  # no header section at all
            return
        found = window.find(b"\r\n\r\n")
        if found >= 0:
            end = self.size - len(self._scan) + found + 4
            self._head += data[: end - self.size]
            self._header_end = end
        else:
            self._head += data
            self._scan = window[-3:]
            if len(self._head) > 1024 * 1024:  # absurd header block: treat as body
                self._header_end = 0

    def _spill(self) -> None:
        self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115  # lives as long as the message
            prefix="msg-", dir=self._spill_dir, delete=True
        )
        for chunk in self._chunks:
            self._file.write(chunk)
        self._chunks.clear()
        self._memory = 0

    @property
    def headers_complete(self) -> bool:
        return self._header_end >= 0

    @property
    def header_block(self) -> bytes:
        """The header section including its blank line; a message that ended without a blank
        line is all header section (RFC 5322 §3.5 makes the body optional)."""
        if self._header_end < 0:
            return bytes(self._head)
        return bytes(self._head[: self._header_end])

    @property
    def headers(self) -> email.message.Message:
        """The header section, parsed once on first use (the body is never parsed here)."""
        if self._parsed is None:
            parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
            self._parsed = parser.parsebytes(self.header_block)
        return self._parsed

    def chunks(self) -> Iterator[bytes]:
        """The message bytes, in order, in chunks of bounded size."""
        if self._file is None:
            yield from self._chunks
            return
        self._file.flush()
        with open(self._file.name, "rb") as f:
            while block := f.read(_READ_SIZE):
                yield block

    def as_bytes(self) -> bytes:
        return b"".join(self.chunks())

    def path(self) -> Path:
        """A file holding the message (spilled on demand), e.g. for sandboxed plugins."""
        if self._file is None:
            self._spill()
        assert self._file is not None
        self._file.flush()
        return Path(self._file.name)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._chunks.clear()


@attrs.define
class Transaction:
    id: str
    sender: Address | None
    mail_params: MailParams
    started: float
    recipients: list[tuple[Address, RcptParams]] = attrs.Factory(list)
    notes: dict[str, object] = attrs.Factory(dict)
    message: Message | None = None
    trace_header: bytes = b""  # our Received: line(s), prepended at render time
    added_headers: list[tuple[str, str]] = attrs.Factory(list)
    removed_headers: set[str] = attrs.Factory(set)
    skip_plugins: set[str] = attrs.Factory(set)
    # Set by a plugin that accepted a recipient for relaying in this transaction only (the srs
    # plugin, for a valid bounce address): the message goes to queue_outbound, as a relaying
    # client's does, while ``Connection.relaying`` (what later RCPTs are judged by) is unchanged.
    relaying: bool = False

    def add_header(self, name: str, value: str) -> None:
        """Prepend ``name: value`` to the message (after our trace header)."""
        if not name or any(c in name for c in ": \r\n") or "\r" in value or "\n" in value:
            raise ValueError("header name or value contains forbidden characters")
        self.added_headers.append((name, value))

    def remove_header(self, name: str) -> None:
        """Drop every ``name`` header of the received message (added ones are kept)."""
        self.removed_headers.add(name.lower())

    def iter_message(self) -> Iterator[bytes]:
        """The message as it should be queued: trace header, header edits, then the body."""
        yield self.trace_header
        for name, value in reversed(self.added_headers):
            yield f"{name}: {value}\r\n".encode()
        if self.message is None:
            return
        chunks = self.message.chunks()
        if not self.removed_headers or not self.message.headers_complete:
            yield from chunks
            return
        head = self.message.header_block
        yield _strip_headers(head, self.removed_headers)
        skip = len(head)
        for chunk in chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            yield chunk[skip:]
            skip = 0

    def message_bytes(self) -> bytes:
        return b"".join(self.iter_message())


def _strip_headers(head: bytes, names: set[str]) -> bytes:
    out: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and line:
            if not dropping:
                out.append(line)
            continue
        field = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        dropping = bool(line) and field in names
        if not dropping:
            out.append(line)
    return b"\r\n".join(out) + b"\r\n"


@attrs.define
class Connection:
    id: str
    listener: str
    client_ip: str
    client_port: int
    local_ip: str
    local_port: int
    started: float
    helo: str | None = None
    extended: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None
    auth_user: str | None = None
    relaying: bool = False
    # Plugins skipped for the rest of the connection (whitelisting), like Transaction's.
    skip_plugins: set[str] = attrs.Factory(set)
    # Set when a plugin's verdict ends the session (…DISCONNECT): the driver closes after
    # sending the reply.
    close_requested: bool = False
    transaction: Transaction | None = None
    transactions: int = 0
    notes: dict[str, object] = attrs.Factory(dict)
