"""Property tests: packet boundaries never matter, the parser never crashes, dot-stuffing
round-trips, path parsing fails only with ``AddressError``."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_mta.protocol import NEED_DATA as NEED
from trio_mta.protocol import (
    Address,
    AddressError,
    BareLineEndingPolicy,
    ClientConnection,
    ConnectionClosed,
    EndOfData,
    ProtocolLimits,
    Reply,
    ReplySyntaxError,
    ServerConnection,
    dot_stuff,
    parse_path,
    replies,
)

from .support import ENVELOPE, client_replies, feed, message_of, normalize, run_session

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- generators ---------------------------------------------------------------------------------

ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_+", min_size=1, max_size=8)
DOMAIN = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8),
    min_size=1,
    max_size=3,
).map(".".join)
MAILBOX = st.builds(lambda local, domain: f"<{local}@{domain}>", ATOM, DOMAIN)
MAIL_PARAMS = st.lists(
    st.sampled_from(
        [" SIZE=100", " BODY=8BITMIME", " BODY=7BIT", " RET=HDRS", " ENVID=x+2By", " AUTH=<>"]
    ),
    unique_by=lambda p: p.split("=")[0],
    max_size=3,
).map("".join)
RCPT_PARAMS = st.sampled_from(["", " NOTIFY=NEVER", " NOTIFY=SUCCESS,DELAY", " ORCPT=rfc822;a"])

# Message lines that are valid on the wire (dot-stuffed when they start with a dot).
TEXT_LINE = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"", b".", b"..", b".x", b"Subject: hi", b" . ", b"\x00\xff"]),
)
BODY = st.lists(TEXT_LINE, max_size=12).map(lambda lines: b"".join(x + b"\r\n" for x in lines))


@st.composite
def transaction(draw: st.DrawFn) -> bytes:
    out = b"MAIL FROM:" + draw(st.one_of(st.just("<>"), MAILBOX)).encode()
    out += draw(MAIL_PARAMS).encode() + b"\r\n"
    for _ in range(draw(st.integers(1, 3))):
        out += f"RCPT TO:{draw(MAILBOX)}{draw(RCPT_PARAMS)}\r\n".encode()
    if draw(st.booleans()):
        return out + b"DATA\r\n" + dot_stuff(draw(BODY))
    # BDAT carries CRLF text too (no BINARYMIME), cut anywhere: a CRLF may straddle two chunks.
    body = draw(BODY)
    cut_at = sorted(draw(st.lists(st.integers(0, len(body)), max_size=2)))
    chunks = [body[i:j] for i, j in zip([0, *cut_at], [*cut_at, len(body)], strict=True)]
    for i, chunk in enumerate(chunks):
        last = " LAST" if i == len(chunks) - 1 else ""
        out += f"BDAT {len(chunk)}{last}\r\n".encode() + chunk
    return out


SIMPLE = st.sampled_from(
    [b"NOOP\r\n", b"RSET\r\n", b"HELP\r\n", b"VRFY bob\r\n", b"EXPN list\r\n", b"XYZZY\r\n"]
)


@st.composite
def valid_session(draw: st.DrawFn) -> bytes:
    out = draw(st.sampled_from([b"EHLO a.example\r\n", b"HELO a.example\r\n"]))
    for _ in range(draw(st.integers(0, 4))):
        out += draw(st.one_of(transaction(), SIMPLE))
    if draw(st.booleans()):
        out += b"QUIT\r\n"
    return out


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> tuple[int, ...]:
    if not data:
        return ()
    return tuple(draw(st.lists(st.integers(0, len(data)), max_size=8)))


def same_across_feeds(
    data: bytes, cut_at: tuple[int, ...], limits: ProtocolLimits | None = None
) -> None:
    events, out = run_session(data, limits=limits)
    got, got_out = run_session(data, mode=cut_at, limits=limits)
    assert normalize(got) == normalize(events)
    assert got_out == out


# -- (a) packet boundaries never matter ---------------------------------------------------------


@SETTINGS
@given(st.data())
def test_valid_sessions_split_anywhere_give_the_same_events(data: st.DataObject) -> None:
    session = data.draw(valid_session())
    same_across_feeds(session, data.draw(cuts(session)))
    # Valid sessions are refused nowhere: every message is delivered.
    events, _ = run_session(session)
    assert not any(isinstance(e, EndOfData) and e.problem for e in events)


@SETTINGS
@given(st.data())
def test_valid_sessions_byte_by_byte(data: st.DataObject) -> None:
    session = data.draw(valid_session())
    events, out = run_session(session)
    got, got_out = run_session(session, mode="bytes")
    assert normalize(got) == normalize(events)
    assert got_out == out


MESSY_LINE = st.one_of(
    TEXT_LINE.map(lambda b: b + b"\r\n"),
    st.sampled_from([b"\n", b"\r", b"\r\r\n", b".\n", b"\n.\n", b"\r.\r", b"..\r\n"]),
    st.integers(0, 60).map(lambda n: b"L" * n + b"\r\n"),
    st.integers(0, 60).map(lambda n: b"." * n),
)
LIMITS = st.builds(
    ProtocolLimits,
    command_line=st.integers(40, 512),
    text_line=st.integers(10, 60),
    max_message_size=st.integers(0, 300),
    max_recipients=st.integers(1, 3),
    bare_line_endings=st.sampled_from(BareLineEndingPolicy),
)


@SETTINGS
@given(st.data())
def test_messy_messages_split_anywhere_give_the_same_events(data: st.DataObject) -> None:
    """Bare CR/LF, long lines, oversized messages, tight limits: the events and every reply
    (the refusal reason included) still do not depend on the packet boundaries."""
    body = b"".join(data.draw(st.lists(MESSY_LINE, max_size=15)))
    session = ENVELOPE + b"DATA\r\n" + body + b"\r\n.\r\nNOOP\r\n" + ENVELOPE
    limits = data.draw(LIMITS)
    same_across_feeds(session, data.draw(cuts(session)), limits)


# -- (b) the parser never crashes ---------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        b"EHLO x\r\n",
        b"HELO x\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"MAIL FROM:<> SMTPUTF8 SIZE=10\r\n",
        b"RCPT TO:<c@d.example>\r\n",
        b"RCPT TO:<postmaster>\r\n",
        b"DATA\r\n",
        b"BDAT 5\r\n",
        b"BDAT 3 LAST\r\n",
        b"BDAT 0 LAST\r\n",
        b"RSET\r\n",
        b"QUIT\r\n",
        b"STARTTLS\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN dXNlcg==\r\n",
        b"*\r\n",
        b"\r\n.\r\n",
        b".\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"<",
        b">",
        b"@",
        b'"',
        b"\x00",
        b"\xff",
        "é".encode(),
        "\u00b2".encode(),
        b"BDAT ",
        b"MAIL FROM:<a@b.example> SIZE=",
        b"x" * 600,
    ]
)
NOISE = st.lists(st.one_of(FRAGMENTS, st.binary(max_size=12)), max_size=25).map(b"".join)


@SETTINGS
@given(NOISE, st.data())
def test_arbitrary_bytes_never_crash_the_server(noise: bytes, data: st.DataObject) -> None:
    limits = data.draw(st.one_of(st.just(ProtocolLimits()), LIMITS))
    conn = ServerConnection(limits, tls=data.draw(st.booleans()))
    events, out = feed(conn, noise, data.draw(cuts(noise)), eof=True)
    assert events[-1] == ConnectionClosed()
    assert conn.buffered <= max(limits.auth_line, limits.command_line) + 1
    # Whatever came in, what goes out is well-formed SMTP.
    assert all(200 <= r.code <= 599 for r in client_replies(out))


@SETTINGS
@given(st.binary(max_size=200), st.data())
def test_arbitrary_bytes_in_data_and_bdat(payload: bytes, data: st.DataObject) -> None:
    for opening in [b"DATA\r\n", b"BDAT %d LAST\r\n" % len(payload), b"BDAT 100\r\n"]:
        session = ENVELOPE + opening + payload + b"\r\n.\r\nNOOP\r\n"
        conn = ServerConnection(data.draw(st.one_of(st.just(ProtocolLimits()), LIMITS)))
        events, out = feed(conn, session, data.draw(cuts(session)), eof=True)
        assert events[-1] == ConnectionClosed()
        client_replies(out)


REPLY_LINE = st.tuples(
    st.sampled_from(["250", "550", "354", "199", "600", "25", "abc"]),
    st.sampled_from(["", " ", "-", "_"]),
    st.sampled_from(["", "2.0.0 ", "5.1.1 ", "2.1 ", "4.4.4"]),
    st.text(alphabet="ab \r\x00.é", max_size=6),
    st.sampled_from(["\r\n", "\n", ""]),
).map(lambda parts: "".join(parts).encode())
REPLYISH = st.lists(st.one_of(REPLY_LINE, st.binary(max_size=4)), max_size=8).map(b"".join)


@SETTINGS
@given(st.one_of(REPLYISH, st.binary(max_size=300)))
def test_arbitrary_bytes_never_crash_the_client(data: bytes) -> None:
    client = ClientConnection()
    client.enhanced_codes = True
    client.receive_data(data)
    client.receive_data(b"")
    try:
        while client.next_reply() is not NEED:
            pass
    except ReplySyntaxError:
        pass


# -- (c) dot-stuffing round-trips ---------------------------------------------------------------

CRLF_LINES = st.lists(
    st.one_of(
        st.binary(max_size=100).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        st.sampled_from([b".", b"..", b".\x00", b""]),
    ),
    max_size=20,
).map(lambda lines: b"".join(x + b"\r\n" for x in lines))


@SETTINGS
@given(CRLF_LINES, st.data())
def test_dot_stuff_then_server_read_returns_the_original(body: bytes, data: st.DataObject) -> None:
    wire = ENVELOPE + b"DATA\r\n" + dot_stuff(body)
    events, out = run_session(wire, mode=data.draw(cuts(wire)))
    assert message_of(events) == body
    assert events[-1] == EndOfData(len(body), None)
    assert out.endswith(b"250 2.0.0 OK\r\n")


@SETTINGS
@given(CRLF_LINES)
def test_dot_stuff_output_has_exactly_one_terminator(body: bytes) -> None:
    wire = dot_stuff(body)
    assert (b"\r\n" + wire).count(b"\r\n.\r\n") == 1
    assert (b"\r\n" + wire).endswith(b"\r\n.\r\n")


# A text line of the given length: it starts with a dot or not, with no CR or LF in it.
def _text_line(length: int, dot: bool) -> bytes:
    return (b"." if dot else b"") + b"t" * (length - dot)


@SETTINGS
@given(
    text_line=st.integers(10, 60),
    # Mostly near the limit (text_line - 2 octets of text), where an off-by-one would show.
    sizes=st.lists(
        st.tuples(st.one_of(st.integers(-3, 1), st.integers(-60, 10)), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    data=st.data(),
)
def test_line_limit_applies_to_the_text_not_the_stuffing(
    text_line: int, sizes: list[tuple[int, bool]], data: st.DataObject
) -> None:
    """RFC 5321 §4.5.3.1.6: a message is accepted exactly when each line's text (what the
    sender wrote, before dot-stuffing) fits in ``text_line`` octets with its CRLF, wherever
    the packets were cut; the stuffing dot never counts."""
    lengths = [(max(0, text_line - 2 + delta), dot) for delta, dot in sizes]
    lines = [_text_line(n, dot) for n, dot in lengths if n or not dot]
    body = b"".join(line + b"\r\n" for line in lines)
    wire = ENVELOPE + b"DATA\r\n" + dot_stuff(body) + b"NOOP\r\n"
    limits = ProtocolLimits(text_line=text_line)
    events, _ = run_session(wire, mode=data.draw(cuts(wire)), limits=limits)
    [end] = [e for e in events if isinstance(e, EndOfData)]
    fits = all(len(line) + 2 <= text_line for line in lines)
    assert end.problem is (None if fits else replies.TEXT_LINE_TOO_LONG)
    if fits:
        assert message_of(events) == body


# -- (d) parse_path fails only with AddressError ------------------------------------------------

PATHISH = st.text(alphabet='<>@.,:;"\\[] abcIPv6:0123456789é日-\x00\x7f\udcff\u200b', max_size=40)
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)
WEIRD = st.text(alphabet='a."\\@\udcff\u200bé \x00[]:,->', max_size=6)


@st.composite
def pathlike(draw: st.DrawFn) -> str:
    """Almost-paths: every part of the grammar, with odd characters in each."""
    route = draw(st.sampled_from(["", "@a.example:", "@a,@b:", "@[1.2.3.4]:", "@"]))
    local = draw(st.one_of(WEIRD, WEIRD.map(lambda w: f'"{w}"'), st.just("x" * 70)))
    domain = draw(
        st.one_of(
            WEIRD,
            st.sampled_from(["x.example", "[192.0.2.1]", "[IPv6:::1]", "é.example"]),
            WEIRD.map(lambda w: f"[{w}]"),
            WEIRD.map(lambda w: f"[IPv6:{w}]"),
            WEIRD.map(lambda w: f"{w}.example"),
        )
    )
    rest = draw(st.sampled_from(["", " SIZE=1", ">", " é"]))
    return f"<{route}{local}@{domain}>{rest}"


@settings(SETTINGS, max_examples=400)
@given(
    st.one_of(PATHISH, pathlike(), ANY_TEXT, MAILBOX), st.booleans(), st.booleans(), st.booleans()
)
def test_parse_path_raises_only_address_error(
    text: str, utf8: bool, allow_null: bool, allow_postmaster: bool
) -> None:
    refusal: Reply | None = None
    try:
        addr, rest = parse_path(
            text, utf8=utf8, allow_null=allow_null, allow_postmaster=allow_postmaster
        )
    except AddressError as exc:
        refusal = exc.reply
    if refusal is not None:
        assert refusal.code in (501, 553)
        return
    assert text.endswith(rest)
    path = text[: len(text) - len(rest)]
    assert path.startswith("<")
    assert path.endswith(">")
    assert len(path.encode("utf-8", "surrogatepass")) <= 256
    if not utf8:
        assert path.isascii()
    if addr is None:
        assert allow_null
        assert path == "<>"
    else:
        assert isinstance(addr, Address)
        assert addr.domain or (allow_postmaster and addr.is_postmaster)


@pytest.mark.parametrize("utf8", [False, True])
def test_parse_path_generated_mailboxes_round_trip(utf8: bool) -> None:
    @SETTINGS
    @given(MAILBOX)
    def check(text: str) -> None:
        addr, rest = parse_path(text, utf8=utf8, allow_null=False, allow_postmaster=False)
        assert rest == ""
        assert f"<{addr}>" == text

    check()
