"""The client role: reply parsing, EHLO capabilities, dot-stuffing, and client↔server pairs."""

from __future__ import annotations

import pytest

from trio_mta.protocol import (
    NEED_DATA,
    Address,
    BdatCommand,
    ClientConnection,
    DataCommand,
    EndOfData,
    Helo,
    MailFrom,
    RcptTo,
    Reply,
    ReplySyntaxError,
    ServerConnection,
    dot_stuff,
    parse_ehlo,
)

from .support import EHLO_OK, R, Seen, feed, message_of


def replies_from(data: bytes, *, enhanced: bool = False, bytewise: bool = False) -> list[Reply]:
    client = ClientConnection()
    client.enhanced_codes = enhanced
    got: list[Reply] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        client.receive_data(piece)
        while (r := client.next_reply()) is not NEED_DATA:
            got.append(r)
    return got


@pytest.mark.parametrize("bytewise", [False, True])
def test_single_and_multi_line_replies(bytewise: bool) -> None:
    data = b"220 mx.example ESMTP\r\n250-mx.example\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
    data += b"354 go ahead\r\n"
    assert replies_from(data, bytewise=bytewise) == [
        Reply(220, None, "mx.example ESMTP"),
        Reply(250, None, ("mx.example", "SIZE 1000", "8BITMIME")),
        Reply(354, None, "go ahead"),
    ]


def test_reply_without_text_and_with_bare_lf() -> None:
    assert replies_from(b"250\r\n221 bye\n") == [Reply(250, None, ""), Reply(221, None, "bye")]


@pytest.mark.parametrize("bytewise", [False, True])
def test_enhanced_codes(bytewise: bool) -> None:
    data = b"250-2.1.0 first\r\n250 2.1.0 second\r\n550 5.1.1 no such user\r\n"
    assert replies_from(data, enhanced=True, bytewise=bytewise) == [
        Reply(250, "2.1.0", ("first", "second")),
        Reply(550, "5.1.1", "no such user"),
    ]
    # Without ENHANCEDSTATUSCODES the code is text.
    assert replies_from(data)[1] == Reply(550, None, "5.1.1 no such user")


def test_enhanced_code_class_must_match() -> None:
    assert replies_from(b"250 5.1.1 odd\r\n", enhanced=True) == [Reply(250, None, "5.1.1 odd")]
    assert replies_from(b"250 2.1 short\r\n", enhanced=True) == [Reply(250, None, "2.1 short")]


def test_server_output_parses_back() -> None:
    for reply in [R.OK, R.BARE_LINE_ENDING, EHLO_OK, R.reply(550, "5.7.1", "a", "b", "c")]:
        assert replies_from(reply.to_bytes(), enhanced=True) == [reply]
        assert replies_from(reply.to_bytes(), enhanced=True, bytewise=True) == [reply]


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",
        b"25\r\n",
        b"2500 x\r\n",
        b"250_x\r\n",
        b"abc def\r\n",
        b"250-one\r\n251 two\r\n",
        b"199 too low\r\n",
        b"600 too high\r\n",
        b"250 a\rb\r\n",
    ],
)
def test_malformed_replies_raise(data: bytes) -> None:
    with pytest.raises(ReplySyntaxError):
        replies_from(data)


def test_over_long_reply_line_raises() -> None:
    client = ClientConnection()
    client.receive_data(b"250 " + b"x" * 5000)
    with pytest.raises(ReplySyntaxError):
        client.next_reply()


def test_eof_mid_reply_raises_and_clean_eof_does_not() -> None:
    client = ClientConnection()
    client.receive_data(b"250-first\r\n")
    assert client.next_reply() is NEED_DATA
    client.receive_data(b"")
    with pytest.raises(ReplySyntaxError):
        client.next_reply()
    clean = ClientConnection()
    clean.receive_data(b"221 bye\r\n")
    clean.receive_data(b"")
    assert clean.next_reply() == Reply(221, None, "bye")
    assert clean.next_reply() is NEED_DATA
    assert clean.closed


def test_parse_ehlo() -> None:
    reply = Reply(250, None, ("mx.example", "SIZE 1000", "auth plain LOGIN", "8BITMIME"))
    caps = parse_ehlo(reply)
    assert "8bitmime" in caps
    assert "STARTTLS" not in caps
    assert caps.size_limit() == 1000
    assert caps.auth_mechanisms() == ("PLAIN", "LOGIN")
    assert parse_ehlo(Reply(250, None, ("mx", "SIZE"))).size_limit() is None
    assert parse_ehlo(Reply(250, None, ("mx", "SIZE 0"))).size_limit() is None


def test_size_limit_with_non_ascii_digits_is_none_not_a_crash() -> None:
    assert parse_ehlo(Reply(250, None, ("mx", "SIZE ²"))).size_limit() is None


def test_command_rendering() -> None:
    client = ClientConnection()
    assert client.ehlo("me.example") == b"EHLO me.example\r\n"
    assert client.mail(None) == b"MAIL FROM:<>\r\n"
    assert client.mail(Address("a", "b.example"), "SIZE=5") == b"MAIL FROM:<a@b.example> SIZE=5\r\n"
    assert client.rcpt(Address("c", "d.example")) == b"RCPT TO:<c@d.example>\r\n"
    assert ClientConnection.bdat(b"xyz", last=True) == b"BDAT 3 LAST\r\nxyz"
    with pytest.raises(ValueError):
        client.command("NOOP\r\nRSET")


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".a\r\n", b"..a\r\n.\r\n"),
        (b"a\r\n.\r\n..\r\n", b"a\r\n..\r\n...\r\n.\r\n"),
        (b"", b".\r\n"),
    ],
)
def test_dot_stuff(message: bytes, wire: bytes) -> None:
    assert dot_stuff(message) == wire
    assert ClientConnection.data_payload(message) == wire


# -- client → server pairs ----------------------------------------------------------------------


class ProtocolPair:
    """A client and a server connection wired back to back, in memory."""

    def __init__(self) -> None:
        self.client = ClientConnection()
        self.client.enhanced_codes = True
        self.server = ServerConnection()
        self.events: list[Seen] = []

    def send(self, data: bytes) -> list[Reply]:
        """Client bytes → server (answered by the default driver) → replies back to the client."""
        events, out = feed(self.server, data)
        self.events += events
        self.client.receive_data(out)
        got: list[Reply] = []
        while (r := self.client.next_reply()) is not NEED_DATA:
            got.append(r)
        return got


@pytest.mark.parametrize(
    "message",
    [
        b"Subject: x\r\n\r\nbody\r\n",
        b".\r\n",
        b"..\r\n.\r\n...\r\n",
        b".leading\r\nmiddle\r\n.trailing\r\n",
        b"",
        b"\r\n\r\n",
    ],
)
def test_dot_stuff_round_trips_through_the_server(message: bytes) -> None:
    pair = ProtocolPair()
    a, b = Address("a", "x.example"), Address("b", "y.example")
    assert [r.code for r in pair.send(pair.client.ehlo("c.example"))] == [250]
    assert [r.code for r in pair.send(pair.client.mail(a) + pair.client.rcpt(b))] == [250, 250]
    assert pair.send(b"DATA\r\n") == [R.START_DATA]
    assert pair.send(dot_stuff(message)) == [R.OK]
    assert message_of(pair.events) == message
    helo, mail, rcpt = pair.events[:3]
    assert helo == Helo("c.example", True)
    assert isinstance(mail, MailFrom)
    assert mail.sender == a
    assert isinstance(rcpt, RcptTo)
    assert rcpt.recipient == b
    assert pair.events[3] == DataCommand()
    assert pair.events[-1] == EndOfData(len(message), None)


def test_bdat_round_trip() -> None:
    pair = ProtocolPair()
    pair.send(pair.client.ehlo("c.example"))
    pair.send(pair.client.mail(Address("a", "x.example"), "BODY=8BITMIME"))
    pair.send(pair.client.rcpt(Address("b", "y.example")))
    payload = b"\x00\r\n.\r\n\xff"
    replies = pair.send(ClientConnection.bdat(payload[:3], last=False))
    replies += pair.send(ClientConnection.bdat(payload[3:], last=True))
    assert replies == [R.OK, R.OK]
    assert message_of(pair.events) == payload
    assert [e for e in pair.events if isinstance(e, BdatCommand)] == [
        BdatCommand(3, False),
        BdatCommand(4, True),
    ]
