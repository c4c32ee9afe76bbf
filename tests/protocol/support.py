"""Synchronous drivers for the sans-I/O SMTP core (no trio, no sockets).

``feed`` pushes bytes into a ``ServerConnection`` in one of several ways (h11's ``tr()`` idea):
all at once, one byte at a time, split in two at a given position, or followed by trailing
bytes. After each piece it pulls every event it can and answers it, exactly as a driver would.
``assert_same_events`` runs one input through every feeding mode and checks that the events
and the reply bytes do not depend on where the packet boundaries fell.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import attrs

from trio_mta.protocol import (
    NEED_DATA,
    Auth,
    AuthResponse,
    BdatCommand,
    ClientConnection,
    ConnectionClosed,
    DataChunk,
    DataCommand,
    EndOfChunk,
    EndOfData,
    Event,
    Expn,
    Helo,
    Help,
    MailFrom,
    Noop,
    ProtocolLimits,
    Quit,
    RcptTo,
    Rejected,
    Reply,
    Rset,
    ServerConnection,
    StartTLS,
    State,
    Unrecognized,
    Vrfy,
    replies,
)

R = replies

GREET = b"EHLO client.example\r\n"
MAIL = b"MAIL FROM:<alice@example.org>\r\n"
RCPT = b"RCPT TO:<bob@example.net>\r\n"
ENVELOPE = GREET + MAIL + RCPT
# Trailing bytes with no CR or LF: they can never complete a line, so they must stay buffered.
TRAILING = b"\x00NO"

EHLO_OK = R.reply(250, None, "mx.example", "PIPELINING", "8BITMIME", "CHUNKING", "SMTPUTF8")
AUTH_CONTINUE = R.reply(334, None, "")
AUTH_OK = R.reply(235, "2.7.0", "Authentication successful")


@attrs.frozen
class TlsStarted:
    """Pseudo-event: the driver answered STARTTLS with 220 and called ``start_tls()``."""

    plaintext: bytes


Seen = Event | TlsStarted
Answer = Callable[[Event], Reply | None]
# A feeding mode: "whole", "bytes", "trailing", an int (split in two at that offset), or a
# tuple of offsets to cut at.
Mode = str | int | tuple[int, ...]


def default_answer(ev: Event) -> Reply | None:
    """What a permissive driver answers: OK for commands, 354 for DATA, the problem (or 250)
    at the end of a message, the protocol's own reply for ``Rejected``."""
    if isinstance(ev, Helo):
        return EHLO_OK if ev.extended else R.reply(250, None, "mx.example")
    if isinstance(ev, MailFrom):
        return R.SENDER_OK
    if isinstance(ev, RcptTo):
        return R.RECIPIENT_OK
    if isinstance(ev, DataCommand):
        return R.START_DATA
    if isinstance(ev, EndOfData | EndOfChunk):
        return ev.problem or R.OK
    if isinstance(ev, Rejected):
        return ev.reply
    if isinstance(ev, Unrecognized):
        return R.UNRECOGNIZED
    if isinstance(ev, Rset):
        return R.RESET_OK
    if isinstance(ev, Noop):
        return R.NOOP_OK
    if isinstance(ev, Quit):
        return R.BYE
    if isinstance(ev, Vrfy):
        return R.VRFY_CANNOT
    if isinstance(ev, Expn):
        return R.EXPN_DISABLED
    if isinstance(ev, Help):
        return R.HELP
    if isinstance(ev, StartTLS):
        return R.READY_TLS
    if isinstance(ev, Auth):
        return AUTH_CONTINUE if ev.initial is None else AUTH_OK
    if isinstance(ev, AuthResponse):
        return R.AUTH_CANCELLED if ev.line == "*" else AUTH_OK
    assert isinstance(ev, DataChunk | BdatCommand | ConnectionClosed)
    return None


def split_input(data: bytes, mode: Mode) -> Iterator[bytes]:
    if mode == "whole":
        yield data
    elif mode == "bytes":
        for i in range(len(data)):
            yield data[i : i + 1]
    elif mode == "trailing":
        yield data + TRAILING
    elif isinstance(mode, int):
        yield data[:mode]
        yield data[mode:]
    elif isinstance(mode, tuple):
        cuts = [0, *sorted(mode), len(data)]
        for start, end in itertools.pairwise(cuts):
            yield data[start:end]
    else:
        raise ValueError(mode)


def drain(conn: ServerConnection, answer: Answer, events: list[Seen], out: bytearray) -> bool:
    """Pull and answer events until ``NEED_DATA``; return False once the connection closed."""
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return True
        events.append(ev)
        if isinstance(ev, ConnectionClosed):
            return False
        reply = answer(ev)
        if reply is None:
            assert not conn.owes_reply, ev
            continue
        out += conn.send(reply)
        if isinstance(ev, StartTLS) and reply.code == 220:
            events.append(TlsStarted(conn.start_tls()))


def feed(
    conn: ServerConnection,
    data: bytes,
    mode: Mode = "whole",
    answer: Answer = default_answer,
    *,
    eof: bool = False,
) -> tuple[list[Seen], bytes]:
    """Feed ``data`` to ``conn`` in pieces chosen by ``mode``, answering every event.

    Returns the events seen and the reply bytes the server would have written.
    """
    events: list[Seen] = []
    out = bytearray()
    open_ = True
    for piece in split_input(data, mode):
        if not piece:
            continue  # b"" would mean EOF
        conn.receive_data(piece)
        if open_:
            open_ = drain(conn, answer, events, out)
    if eof and open_:
        conn.receive_data(b"")
        drain(conn, answer, events, out)
    return events, bytes(out)


def run_session(
    data: bytes,
    answer: Answer = default_answer,
    *,
    mode: Mode = "whole",
    limits: ProtocolLimits | None = None,
    eof: bool = False,
    tls: bool = False,
) -> tuple[list[Seen], bytes]:
    """A fresh server connection fed ``data``: returns (events, output bytes)."""
    return feed(ServerConnection(limits, tls=tls), data, mode, answer, eof=eof)


def normalize(events: list[Seen]) -> list[Seen]:
    """Merge adjacent ``DataChunk`` events (their boundaries follow the packets). For a message
    the protocol layer refuses (``problem`` set) the data before the refusal and the size are
    not meaningful (the driver must not deliver it), so they are dropped."""
    out: list[Seen] = []
    for ev in events:
        if isinstance(ev, DataChunk) and out and isinstance(out[-1], DataChunk):
            out[-1] = DataChunk(out[-1].data + ev.data)
        elif isinstance(ev, EndOfData | EndOfChunk) and ev.problem is not None:
            if out and isinstance(out[-1], DataChunk):
                out.pop()
            out.append(attrs.evolve(ev, size=-1))
        else:
            out.append(ev)
    return out


def split_positions(n: int, limit: int = 400) -> range:
    """Every split position for short inputs; an even sample for long ones."""
    return range(1, n) if n <= limit else range(1, n, n // limit + 1)


def assert_same_events(
    data: bytes,
    answer: Answer = default_answer,
    *,
    limits: ProtocolLimits | None = None,
    trailing: bool = True,
    eof: bool = False,
) -> tuple[list[Seen], bytes]:
    """Feed ``data`` whole, byte by byte, split at every position and with trailing bytes;
    assert the (normalised) events and the output are the same each time. Returns the
    normalised events and the output of the whole feed."""
    events, out = run_session(data, answer, limits=limits, eof=eof)
    expected = normalize(events)
    modes: list[Mode] = ["bytes", *split_positions(len(data))]
    for mode in modes:
        got, got_out = run_session(data, answer, mode=mode, limits=limits, eof=eof)
        assert normalize(got) == expected, f"feeding mode {mode!r}"
        assert got_out == out, f"feeding mode {mode!r}"
    if trailing and not eof:
        conn = ServerConnection(limits)
        got, got_out = feed(conn, data, "trailing", answer)
        assert normalize(got) == expected, "with trailing bytes"
        assert got_out == out, "with trailing bytes"
        assert conn.buffered == len(TRAILING)
    return expected, out


def state(conn: ServerConnection) -> State:
    """``conn.state`` without mypy narrowing it across calls that change it."""
    return conn.state


def message_of(events: list[Seen]) -> bytes:
    """All message data in the events, concatenated."""
    return b"".join(ev.data for ev in events if isinstance(ev, DataChunk))


def rejections(events: list[Seen]) -> list[Reply]:
    return [ev.reply for ev in events if isinstance(ev, Rejected)]


def reply_codes(out: bytes) -> list[str]:
    """The final line of each reply in ``out`` as "code enhanced" (or just "code")."""
    heads: list[str] = []
    for line in out.decode("utf-8").split("\r\n"):
        if len(line) >= 3 and line[3:4] != "-":
            code, _, rest = line.partition(" ")
            first = rest.split(" ", 1)[0]
            is_enhanced = first.count(".") == 2 and first.replace(".", "").isdigit()
            heads.append(f"{code} {first}" if is_enhanced else code)
    return heads


def client_replies(out: bytes, *, enhanced: bool = True) -> list[Reply]:
    """Parse server output with the client role."""
    client = ClientConnection()
    client.enhanced_codes = enhanced
    client.receive_data(out)
    got: list[Reply] = []
    while (r := client.next_reply()) is not NEED_DATA:
        got.append(r)
    return got
