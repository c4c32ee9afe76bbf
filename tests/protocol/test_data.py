"""Message content: DATA framing (RFC 5321 §4.1.1.4, §4.5.2), SMTP smuggling, limits, BDAT
(RFC 3030)."""

from __future__ import annotations

import pytest

from trio_mta.protocol import (
    NEED_DATA,
    BareLineEndingPolicy,
    BdatCommand,
    ConnectionClosed,
    DataChunk,
    DataCommand,
    EndOfChunk,
    EndOfData,
    Event,
    Helo,
    MailFrom,
    Noop,
    ProtocolLimits,
    RcptTo,
    Rejected,
    Reply,
    Rset,
    ServerConnection,
    State,
)

from .support import (
    ENVELOPE,
    GREET,
    MAIL,
    RCPT,
    R,
    Seen,
    assert_same_events,
    feed,
    message_of,
    rejections,
    reply_codes,
    run_session,
    state,
)

DATA = ENVELOPE + b"DATA\r\n"
NORMALIZE = ProtocolLimits(bare_line_endings=BareLineEndingPolicy.NORMALIZE)


def ends(events: list[Seen]) -> list[EndOfData | EndOfChunk]:
    return [ev for ev in events if isinstance(ev, EndOfData | EndOfChunk)]


def deliver(body: bytes, limits: ProtocolLimits | None = None) -> tuple[bytes, EndOfData]:
    """Send ``body`` (already on the wire: dot-stuffed, with its terminator) after DATA; return
    the message the server read and its end event, checked across every feeding mode."""
    events, out = assert_same_events(DATA + body + b"NOOP\r\n", limits=limits)
    assert events[0] == Helo("client.example", True)
    assert isinstance(events[1], MailFrom)
    assert isinstance(events[2], RcptTo)
    assert events[3] == DataCommand()
    assert events[-1] == Noop(), "the session goes on after the message"
    (end,) = ends(events)
    assert isinstance(end, EndOfData)
    assert reply_codes(out)[3] == "354"
    return message_of(events), end


# -- DATA ---------------------------------------------------------------------------------------


def test_simple_message() -> None:
    msg, end = deliver(b"Subject: hi\r\n\r\nHello\r\n.\r\n")
    assert msg == b"Subject: hi\r\n\r\nHello\r\n"
    assert end == EndOfData(len(msg), None)


def test_dot_unstuffing() -> None:
    msg, end = deliver(b"..leading\r\n...\r\nmid.dle\r\n. \r\n..\r\n.x\r\n.\r\n")
    assert msg == b".leading\r\n..\r\nmid.dle\r\n \r\n.\r\nx\r\n"
    assert end.problem is None
    assert end.size == len(msg)


def test_first_line_dot_stuffed() -> None:
    msg, _ = deliver(b"..\r\n.\r\n")
    assert msg == b".\r\n"


def test_empty_message() -> None:
    msg, end = deliver(b".\r\n")
    assert msg == b""
    assert end == EndOfData(0, None)


def test_message_of_one_empty_line() -> None:
    msg, end = deliver(b"\r\n.\r\n")
    assert msg == b"\r\n"
    assert end == EndOfData(2, None)


def test_lone_dot_inside_a_line_does_not_end_data() -> None:
    msg, _ = deliver(b"a . b\r\na.\r\n.a\r\nx\r\n.\r\n")
    assert msg == b"a . b\r\na.\r\na\r\nx\r\n"


def test_message_ending_exactly_at_buffer_boundary() -> None:
    conn = ServerConnection()
    feed(conn, DATA)
    assert state(conn) is State.DATA
    conn.receive_data(b"line\r\n")
    assert conn.next_event() == DataChunk(b"line\r\n")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b".\r\n")
    assert conn.next_event() == EndOfData(6, None)
    conn.send(R.OK)
    assert state(conn) is State.READY
    assert conn.buffered == 0
    assert conn.next_event() is NEED_DATA


def test_terminator_split_at_every_boundary() -> None:
    body = b"one\r\n..two\r\nthree\r\n"
    for i in range(len(body) - 1, len(body) + 3):  # inside "\r\n.\r\n"
        wire = body + b".\r\n"
        conn = ServerConnection()
        events, _ = feed(conn, DATA + wire[:i])
        assert not ends(events)
        more, _ = feed(conn, wire[i:] + b"NOOP\r\n")
        assert message_of(events + more) == b"one\r\n.two\r\nthree\r\n"
        assert more[-2:] == [EndOfData(18, None), Noop()]


def test_pipelined_commands_after_the_message_wait() -> None:
    events, _ = assert_same_events(DATA + b"x\r\n.\r\n" + MAIL + RCPT + b"DATA\r\ny\r\n.\r\n")
    assert [type(e).__name__ for e in events[3:]] == [
        "DataCommand",
        "DataChunk",
        "EndOfData",
        "MailFrom",
        "RcptTo",
        "DataCommand",
        "DataChunk",
        "EndOfData",
    ]
    assert message_of(events) == b"x\r\ny\r\n"


def test_data_refused_by_driver_reads_no_message() -> None:
    def answer(ev: Event) -> Reply | None:
        if isinstance(ev, DataCommand):
            return R.reply(554, "5.5.1", "no valid recipients")
        return R.OK

    events, _ = run_session(DATA + b"NOOP\r\n", answer)
    assert events[-1] == Noop()


def test_data_with_argument() -> None:
    events, _ = assert_same_events(ENVELOPE + b"DATA now\r\n")
    assert rejections(events) == [R.SYNTAX_NO_ARGS]


SMUGGLING = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r"]


@pytest.mark.parametrize("fake_end", SMUGGLING)
def test_smuggled_end_of_data_is_refused(fake_end: bytes) -> None:
    smuggled = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<v@x.example>\r\nDATA\r\nevil\r\n"
    body = b"Subject: hi\r\n\r\nhello" + fake_end + smuggled + b".\r\n"
    events, out = assert_same_events(DATA + body + MAIL)
    (end,) = ends(events)
    assert end == EndOfData(-1, R.BARE_LINE_ENDING)
    assert (R.BARE_LINE_ENDING.code, R.BARE_LINE_ENDING.enhanced) == (554, "5.6.0")
    # Nothing of the smuggled part became a command; the session goes on after the refusal.
    assert isinstance(events[-1], MailFrom)
    assert sum(isinstance(e, MailFrom) for e in events) == 2
    assert reply_codes(out)[-2:] == ["554 5.6.0", "250 2.1.0"]


@pytest.mark.parametrize("fake_end", SMUGGLING)
def test_smuggled_end_of_data_normalized_when_configured(fake_end: bytes) -> None:
    body = b"hello" + fake_end + b"MAIL FROM:<evil@x.example>\r\n.\r\n"
    msg, end = deliver(body, NORMALIZE)
    assert end.problem is None
    expected_mid = {
        b"\n.\n": b"\r\n.\r\n",
        b"\r.\r": b"\r\n.\r\n",
        b"\n.\r\n": b"\r\n.\r\n",
        b"\r\n.\n": b"\r\n\r\n",  # the "." followed CRLF at a line start: unstuffed
        b"\r.\r\n": b"\r\n.\r\n",
        b"\r\n.\r": b"\r\n\r\n",
    }[fake_end]
    assert msg == b"hello" + expected_mid + b"MAIL FROM:<evil@x.example>\r\n"
    assert end.size == len(msg)


def test_bare_lf_message_normalized() -> None:
    msg, end = deliver(b"a\nb\rc\r\n.\r\n", NORMALIZE)
    assert msg == b"a\r\nb\r\nc\r\n"
    assert end == EndOfData(len(msg), None)


def test_bare_lf_at_the_very_end_refused() -> None:
    _, end = deliver(b"a\n\r\n.\r\n")
    assert end.problem == R.BARE_LINE_ENDING


def test_text_line_limit_is_1000_with_crlf() -> None:
    line = b"x" * 998 + b"\r\n"
    msg, end = deliver(line + b".\r\n")
    assert (msg, end.problem) == (line, None)
    _, end = deliver(b"y" + line + b".\r\n")
    assert end.problem == R.TEXT_LINE_TOO_LONG


def test_stuffing_dot_is_not_counted_against_the_line_limit() -> None:
    # RFC 5321 §4.5.3.1.6: the limit is on the text, "not counting the leading dot
    # duplicated for transparency". A 998-octet line starting with "." arrives as 999 + CRLF.
    text = b"." + b"x" * 997
    msg, end = deliver(b"." + text + b"\r\n.\r\n")
    assert (msg, end.problem) == (text + b"\r\n", None)


def test_postfix_stuffed_998_octet_line_is_accepted() -> None:
    # The wire bytes Postfix's smtp(8) sends for such a message (smtp_line_length_limit = 998
    # leaves a 998-octet line whole; smtp_text_out doubles its leading dot).
    long_dot_line = b"." + b"=" * 997
    message = (
        b"Received: by mail.example.org (Postfix, from userid 1000)\r\n"
        b"\tid 4XyZ1a2b3c; Tue,  8 Dec 2026 00:00:00 +0000 (UTC)\r\n"
        b"Subject: ruler\r\n\r\n" + long_dot_line + b"\r\n" + b"x" * 998 + b"\r\n"
    )
    wire = message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    assert b"\r\n" + b"." * 2 + b"=" * 997 + b"\r\n" in wire
    msg, end = deliver(wire)
    assert (msg, end.problem) == (message, None)


def test_stuffed_line_over_the_limit_is_still_refused() -> None:
    # 999 octets of text after the stuffing dot: one too many.
    _, end = deliver(b".." + b"x" * 998 + b"\r\n.\r\n")
    assert end.problem == R.TEXT_LINE_TOO_LONG
    # A line that does not start with a dot gets no allowance.
    _, end = deliver(b"ok\r\nx" + b"." * 998 + b"\r\n.\r\n")
    assert end.problem == R.TEXT_LINE_TOO_LONG


def test_bdat_content_with_a_leading_dot_is_read_as_sent() -> None:
    # BDAT content is never stuffed (RFC 3030), so nothing is unstuffed either.
    content = b"." + b"x" * 998 + b"\r\n"
    events, _ = assert_same_events(
        ENVELOPE + b"BDAT %d LAST\r\n" % len(content) + content + b"NOOP\r\n"
    )
    assert message_of(events) == content


def test_over_long_text_line_refused_after_the_end() -> None:
    body = b"ok\r\n" + b"z" * 5000 + b"\r\nmore\r\n.\r\n"
    events, out = assert_same_events(DATA + body + b"NOOP\r\n")
    assert ends(events) == [EndOfData(-1, R.TEXT_LINE_TOO_LONG)]
    assert reply_codes(out)[-2:] == ["554 5.6.0", "250 2.0.0"]


def test_over_long_line_in_pieces_is_not_buffered_whole() -> None:
    conn = ServerConnection()
    feed(conn, DATA)
    for _ in range(100):
        conn.receive_data(b"z" * 999)
        assert conn.next_event() is NEED_DATA
    assert conn.buffered < 1000
    conn.receive_data(b"\r\n.\r\n")
    end = conn.next_event()
    assert isinstance(end, EndOfData)
    assert end.problem == R.TEXT_LINE_TOO_LONG


@pytest.mark.parametrize("tail", [b".", b"\r", b"\n", b".\r"])
def test_over_long_line_ending_in_a_dot_does_not_end_data(tail: bytes) -> None:
    # The long line is dropped while it streams in; what is kept of it must never look like
    # the start of a line, or ".\r\n" after it would end DATA (and the rest become commands).
    long_line = b"w" * 1500 + tail
    rest = b"\r\n" if tail != b".\r" else b"\n"
    smuggled = b"MAIL FROM:<evil@x.example>\r\n"
    body = long_line + rest + smuggled + b".\r\n"
    events, _ = assert_same_events(DATA + body + b"NOOP\r\n")
    assert ends(events) == [EndOfData(-1, R.TEXT_LINE_TOO_LONG)]
    assert events[-1] == Noop()
    assert sum(isinstance(e, MailFrom) for e in events) == 1
    conn = ServerConnection()
    first, _ = feed(conn, DATA + long_line)
    assert not ends(first)
    later, _ = feed(conn, rest + smuggled + b".\r\nNOOP\r\n")
    assert [type(e) for e in later if not isinstance(e, DataChunk)] == [EndOfData, Noop]


def test_problem_reported_does_not_depend_on_packet_boundaries() -> None:
    # A bare LF early and an over-long line later (or the reverse): the reply must be the
    # same however the bytes were cut. (assert_same_events compares the replies.)
    long_line = b"q" * 1200 + b"\r\n"
    for body in [b"a\nb\r\n" + long_line, long_line + b"a\nb\r\n"]:
        assert_same_events(DATA + body + b".\r\nNOOP\r\n")
    small = ProtocolLimits(max_message_size=50)
    for body in [b"x" * 40 + b"\r\n" + b"y" * 20 + b"\n\r\n", b"x" * 60 + b"\r\na\nb\r\n"]:
        assert_same_events(DATA + body + b".\r\nNOOP\r\n", limits=small)


def test_message_over_the_size_limit() -> None:
    limits = ProtocolLimits(max_message_size=100)
    ok_body = b"x" * 98 + b"\r\n"
    msg, end = deliver(ok_body + b".\r\n", limits)
    assert (msg, end) == (ok_body, EndOfData(100, None))
    session = DATA + ok_body + b"y\r\n" * 50 + b".\r\nNOOP\r\n"
    events, out = assert_same_events(session, limits=limits)
    assert ends(events) == [EndOfData(-1, R.MESSAGE_TOO_BIG)]
    assert reply_codes(out)[-2:] == ["552 5.3.4", "250 2.0.0"]
    # Not one octet past the limit reaches the driver, however the bytes arrive.
    for mode in ("whole", "bytes", len(DATA) + 50):
        raw, _ = run_session(session, limits=limits, mode=mode)
        assert len(message_of(raw)) <= 100
        assert ends(raw)[0].problem == R.MESSAGE_TOO_BIG


def test_size_limit_counts_unstuffed_octets() -> None:
    limits = ProtocolLimits(max_message_size=4)
    msg, end = deliver(b"..a\r\n.\r\n", limits)
    assert (msg, end) == (b".a\r\n", EndOfData(4, None))


def test_refused_message_resets_the_transaction() -> None:
    events, _ = assert_same_events(DATA + b"a\nb\r\n.\r\n" + RCPT)
    assert rejections(events) == [R.NEED_MAIL]


def test_driver_answer_to_end_of_data_ends_the_transaction() -> None:
    def answer(ev: Event) -> Reply | None:
        if isinstance(ev, EndOfData):
            return R.reply(451, "4.3.0", "try later")
        return R.OK if not isinstance(ev, DataCommand) else R.START_DATA

    events, _ = run_session(DATA + b"x\r\n.\r\n" + RCPT, answer)
    assert rejections(events) == [R.NEED_MAIL]


# -- BDAT ---------------------------------------------------------------------------------------


def test_bdat_chunks() -> None:
    data = ENVELOPE + b"BDAT 5\r\nhelloBDAT 8 LAST\r\n world\r\n" + b"NOOP\r\n"
    events, out = assert_same_events(data)
    assert events[3:] == [
        BdatCommand(5, False),
        DataChunk(b"hello"),
        EndOfChunk(5, None),
        BdatCommand(8, True),
        DataChunk(b" world\r\n"),
        EndOfData(13, None),
        Noop(),
    ]
    assert reply_codes(out)[3:] == ["250 2.0.0", "250 2.0.0", "250 2.0.0"]


def test_bdat_zero_last() -> None:
    events, _ = assert_same_events(ENVELOPE + b"BDAT 3\r\nabcBDAT 0 LAST\r\n" + MAIL)
    assert events[3:-1] == [
        BdatCommand(3, False),
        DataChunk(b"abc"),
        EndOfChunk(3, None),
        BdatCommand(0, True),
        EndOfData(3, None),
    ]
    assert isinstance(events[-1], MailFrom)


def test_bdat_only_chunk_empty() -> None:
    events, _ = assert_same_events(ENVELOPE + b"BDAT 0 last\r\n")
    assert events[3:] == [BdatCommand(0, True), EndOfData(0, None)]


def test_bdat_binary_data_is_opaque() -> None:
    payload = b"a\r\n.\r\nMAIL FROM:<x@y.example>\r\n\x00\xff\r\n..\r\n"
    data = ENVELOPE + b"BDAT %d LAST\r\n" % len(payload) + payload + b"NOOP\r\n"
    events, _ = assert_same_events(data)
    assert message_of(events) == payload  # no unstuffing, no end of data inside
    assert ends(events) == [EndOfData(len(payload), None)]
    assert events[-1] == Noop()
    assert sum(isinstance(e, MailFrom) for e in events) == 1


def bdat(*chunks: bytes) -> bytes:
    return b"".join(
        b"BDAT %d%s\r\n" % (len(c), b" LAST" if i == len(chunks) - 1 else b"") + c
        for i, c in enumerate(chunks)
    )


@pytest.mark.parametrize(
    "chunks",
    [
        # The SMTP smuggling payload: stored as it is, it would end the next hop's DATA if
        # that server reads a bare LF as a line end.
        (b"hi\n.\nMAIL FROM:<evil@x.example>\r\n",),
        (b"a\rb\r\n",),
        (b"a\r\n", b"b\r"),  # the message ends in a bare CR
        (b"a\r", b"b\r\n"),  # a CR ends one chunk, no LF opens the next
        (b"a\r", b"\rb\r\n"),
        (b"a\r\n\n",),
    ],
)
def test_bdat_bare_line_endings_refused(chunks: tuple[bytes, ...]) -> None:
    events, out = assert_same_events(ENVELOPE + bdat(*chunks) + b"NOOP\r\n")
    assert ends(events)[-1].problem == R.BARE_LINE_ENDING
    assert not any(isinstance(e, DataChunk) and b"evil" in e.data for e in events)
    assert reply_codes(out)[-2:] == ["554 5.6.0", "250 2.0.0"]


@pytest.mark.parametrize(
    "chunks",
    [(b"a\r", b"\nb\r\n"), (b"a\r", b"\n"), (b"a\r", b"", b"\n"), (b"\r", b"\n\r", b"\n")],
)
def test_bdat_crlf_split_between_chunks_is_fine(chunks: tuple[bytes, ...]) -> None:
    events, _ = assert_same_events(ENVELOPE + bdat(*chunks))
    assert ends(events)[-1].problem is None
    assert message_of(events) == b"".join(chunks)


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ((b"a\nb\r", b"\nc\r"), b"a\r\nb\r\nc\r\n"),
        ((b"a\r", b"b\n"), b"a\r\nb\r\n"),
        ((b"hi\n.\nX\r\n",), b"hi\r\n.\r\nX\r\n"),
        ((b"a\r\r\n",), b"a\r\n\r\n"),
    ],
)
def test_bdat_bare_line_endings_normalized(chunks: tuple[bytes, ...], message: bytes) -> None:
    events, _ = assert_same_events(ENVELOPE + bdat(*chunks), limits=NORMALIZE)
    assert ends(events)[-1].problem is None
    assert message_of(events) == message


def test_bdat_line_end_state_does_not_leak_into_the_next_transaction() -> None:
    # A refused transaction that ended on a CR must not make the next one's first LF look fine,
    # nor its first byte look bare.
    again = ENVELOPE[len(GREET) :]
    data = ENVELOPE + b"BDAT 2\r\na\rRSET\r\n" + again + bdat(b"\nb\r\n")
    events, _ = assert_same_events(data)
    assert ends(events)[-1].problem == R.BARE_LINE_ENDING
    data = ENVELOPE + bdat(b"a\r") + again + bdat(b"b\r\n")
    events, _ = assert_same_events(data)
    assert ends(events)[-2].problem == R.BARE_LINE_ENDING
    assert ends(events)[-1] == EndOfData(3, None)


def test_bdat_before_rcpt_consumes_the_chunk() -> None:
    data = GREET + MAIL + b"BDAT 12 LAST\r\nRSET\r\nQUIT\r\n" + RCPT
    events, out = assert_same_events(data)
    assert events[2] == EndOfData(-1, R.NEED_RCPT)
    assert isinstance(events[3], RcptTo)
    assert len(events) == 4
    assert reply_codes(out)[2:] == ["503 5.5.1", "250 2.1.5"]


@pytest.mark.parametrize(
    ("before", "expected"),
    [(b"", R.NEED_HELO), (GREET, R.NEED_MAIL), (GREET + MAIL, R.NEED_RCPT)],
)
def test_bdat_out_of_sequence(before: bytes, expected: Reply) -> None:
    data = before + b"BDAT 6\r\nNOOP\r\nBDAT 0 LAST\r\nNOOP\r\n"
    events, _ = assert_same_events(data)
    problems = [e.problem for e in ends(events)]
    assert problems == [expected, expected]
    assert events[-1] == Noop()
    assert not any(isinstance(e, DataChunk | BdatCommand) for e in events)


def test_data_after_bdat_is_503() -> None:
    data = ENVELOPE + b"BDAT 2\r\nabDATA\r\nBDAT 1 LAST\r\nc"
    events, _ = assert_same_events(data)
    assert rejections(events) == [R.DATA_AFTER_BDAT]
    assert message_of(events) == b"abc"
    assert ends(events)[-1] == EndOfData(3, None)


def test_mail_and_rcpt_between_chunks_are_503() -> None:
    data = ENVELOPE + b"BDAT 2\r\nab" + MAIL + RCPT + b"BDAT 1 LAST\r\nc"
    events, _ = assert_same_events(data)
    assert rejections(events) == [R.BDAT_EXPECTED, R.BDAT_EXPECTED]
    assert message_of(events) == b"abc"


def test_rset_between_chunks() -> None:
    data = ENVELOPE + b"BDAT 2\r\nabRSET\r\nBDAT 1 LAST\r\nc" + MAIL
    events, _ = assert_same_events(data)
    assert [type(e) for e in events[3:]] == [
        BdatCommand,
        DataChunk,
        EndOfChunk,
        Rset,
        EndOfData,
        MailFrom,
    ]
    assert ends(events)[-1].problem == R.NEED_MAIL


def test_bdat_over_the_size_limit() -> None:
    limits = ProtocolLimits(max_message_size=10)
    data = ENVELOPE + b"BDAT 6\r\n123456BDAT 6 LAST\r\n789012" + MAIL
    events, out = assert_same_events(data, limits=limits)
    assert ends(events) == [EndOfChunk(6, None), EndOfData(-1, R.MESSAGE_TOO_BIG)]
    assert isinstance(events[-1], MailFrom)
    assert reply_codes(out)[-2:] == ["552 5.3.4", "250 2.1.0"]


def test_bdat_refused_chunk_ends_the_transaction() -> None:
    def answer(ev: Event) -> Reply | None:
        if isinstance(ev, EndOfChunk):
            return R.reply(452, "4.3.1", "disk full")
        return ev.problem if isinstance(ev, EndOfData) and ev.problem else R.OK

    data = ENVELOPE + b"BDAT 1\r\naBDAT 1 LAST\r\nb"
    events, _ = run_session(data, answer)
    assert [(type(e), e.problem) for e in ends(events)] == [
        (EndOfChunk, None),
        (EndOfData, R.NEED_MAIL),
    ]


@pytest.mark.parametrize(
    "line",
    [b"BDAT\r\n", b"BDAT x\r\n", b"BDAT 1 FIRST\r\n", b"BDAT 1 LAST x\r\n", b"BDAT -1\r\n"],
)
def test_bdat_syntax(line: bytes) -> None:
    events, out = assert_same_events(ENVELOPE + line + b"NOOP\r\n")
    assert rejections(events) == [R.SYNTAX_BDAT]
    assert events[-1] == Noop()
    assert reply_codes(out)[-2:] == ["501 5.5.4", "250 2.0.0"]


@pytest.mark.parametrize("size", ["\u00b2", "\u0661", "1" * 16])
def test_bdat_size_must_be_ascii_digits(size: str) -> None:
    # "\u00b2".isdigit() is True but int() of it raises; "\u0661" (Arabic-Indic one) reads as 1.
    events, _ = assert_same_events(ENVELOPE + f"BDAT {size}\r\n".encode() + b"NOOP\r\n")
    assert rejections(events) == [R.SYNTAX_BDAT]
    assert events[-1] == Noop()


def test_bdat_chunk_waits_for_all_its_bytes() -> None:
    conn = ServerConnection()
    feed(conn, ENVELOPE + b"BDAT 10 LAST\r\n")
    conn.receive_data(b"12345")
    assert conn.next_event() == DataChunk(b"12345")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"67890NOOP\r\n")
    assert conn.next_event() == DataChunk(b"67890")
    assert conn.next_event() == EndOfData(10, None)
    assert conn.owes_reply
    conn.send(R.OK)
    assert conn.next_event() == Noop()


def test_bdat_eof_in_chunk() -> None:
    events, _ = run_session(ENVELOPE + b"BDAT 10 LAST\r\nabc", eof=True)
    assert events[-2:] == [DataChunk(b"abc"), ConnectionClosed()]


def test_helo_between_chunks_resets() -> None:
    data = ENVELOPE + b"BDAT 1\r\naEHLO again.example\r\nBDAT 1 LAST\r\nb"
    events, _ = assert_same_events(data)
    assert ends(events)[-1] == EndOfData(-1, R.NEED_MAIL)
    assert not any(isinstance(e, Rejected) for e in events)
