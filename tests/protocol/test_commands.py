"""Command parsing, the state table and the per-command replies of the server role."""

from __future__ import annotations

import pytest

import trio_mta.protocol
from trio_mta.protocol import (
    NEED_DATA,
    Address,
    Auth,
    AuthResponse,
    ConnectionClosed,
    DataCommand,
    Expn,
    Helo,
    Help,
    LocalProtocolError,
    MailFrom,
    MailParams,
    Noop,
    ProtocolLimits,
    Quit,
    RcptParams,
    RcptTo,
    Rejected,
    Rset,
    ServerConnection,
    StartTLS,
    State,
    Unrecognized,
    Vrfy,
)

from .support import (
    ENVELOPE,
    GREET,
    MAIL,
    RCPT,
    R,
    TlsStarted,
    assert_same_events,
    feed,
    rejections,
    reply_codes,
    run_session,
    state,
)

ALICE = Address("alice", "example.org")
BOB = Address("bob", "example.net")


def test_public_surface_is_curated() -> None:
    public = {name for name in dir(trio_mta.protocol) if not name.startswith("_")}
    assert public == {
        "NEED_DATA",
        "Address",
        "AddressError",
        "Auth",
        "AuthResponse",
        "BareLineEndingPolicy",
        "BdatCommand",
        "Capabilities",
        "ClientConnection",
        "ConnectionClosed",
        "DataChunk",
        "DataCommand",
        "EndOfChunk",
        "EndOfData",
        "Event",
        "Expn",
        "Helo",
        "Help",
        "LocalProtocolError",
        "MailFrom",
        "MailParams",
        "NeedData",
        "Noop",
        "ProtocolLimits",
        "Quit",
        "RcptParams",
        "RcptTo",
        "Rejected",
        "Reply",
        "ReplySyntaxError",
        "Rset",
        "ServerConnection",
        "StartTLS",
        "State",
        "Unrecognized",
        "VERP_DEFAULT_DELIMITERS",
        "VERP_DELIMITER_CHARS",
        "VerpAddress",
        "Vrfy",
        "dot_stuff",
        "make_address",
        "parse_ehlo",
        "parse_path",
        "replies",
        "reply",
        "verp_decodable",
        "verp_decode",
        "verp_delimiters_ok",
        "verp_encode",
        "xtext_decode",
    }


# -- HELO / EHLO --------------------------------------------------------------------------------


def test_ehlo_and_helo() -> None:
    events, out = assert_same_events(b"EHLO client.example\r\nHELO other.example\r\n")
    assert events == [Helo("client.example", True), Helo("other.example", False)]
    assert reply_codes(out) == ["250", "250"]


def test_ehlo_verb_is_case_insensitive() -> None:
    events, _ = assert_same_events(b"ehlo client.example\r\n")
    assert events == [Helo("client.example", True)]


@pytest.mark.parametrize("line", [b"EHLO\r\n", b"HELO \r\n", b"EHLO a b\r\n"])
def test_helo_without_a_single_argument_is_501(line: bytes) -> None:
    events, out = assert_same_events(line)
    assert rejections(events) == [R.SYNTAX_HELO]
    assert reply_codes(out) == ["501 5.5.4"]


def test_helo_refused_by_driver_does_not_greet() -> None:
    def answer(ev: object) -> trio_mta.protocol.Reply | None:
        if isinstance(ev, Helo):
            return R.reply(550, "5.7.1", "go away")
        return R.SENDER_OK

    events, _ = run_session(GREET + MAIL, answer)
    assert rejections(events) == [R.NEED_HELO]


def test_ehlo_in_a_transaction_resets_it() -> None:
    events, _ = assert_same_events(ENVELOPE + GREET + RCPT)
    assert rejections(events) == [R.NEED_MAIL]


# -- MAIL ---------------------------------------------------------------------------------------


def mail_event(arg: bytes, limits: ProtocolLimits | None = None) -> object:
    events, _ = assert_same_events(GREET + b"MAIL FROM:" + arg + b"\r\n", limits=limits)
    assert events[0] == Helo("client.example", True)
    assert len(events) == 2
    return events[1]


def mail_params(arg: bytes) -> MailParams:
    ev = mail_event(arg)
    assert isinstance(ev, MailFrom), ev
    return ev.params


def mail_rejected(arg: bytes, limits: ProtocolLimits | None = None) -> str:
    ev = mail_event(arg, limits)
    assert isinstance(ev, Rejected), ev
    assert ev.command == "MAIL"
    return f"{ev.reply.code} {ev.reply.enhanced}"


def test_mail_plain() -> None:
    ev = mail_event(b"<alice@example.org>")
    assert ev == MailFrom(ALICE, MailParams())


def test_mail_null_sender() -> None:
    assert mail_event(b"<>") == MailFrom(None, MailParams())


def test_mail_space_after_colon_and_trailing_space_tolerated() -> None:
    assert mail_event(b" <alice@example.org> ") == MailFrom(ALICE, MailParams())


def test_mail_size() -> None:
    params = mail_params(b"<a@b.example> SIZE=12345")
    assert params.size == 12345
    assert params.raw == (("SIZE", "12345"),)


@pytest.mark.parametrize("body", ["7BIT", "8BITMIME", "8bitmime"])
def test_mail_body(body: str) -> None:
    params = mail_params(b"<a@b.example> BODY=" + body.encode())
    assert params.body == body.upper()


def test_mail_body_binarymime_refused() -> None:
    assert mail_rejected(b"<a@b.example> BODY=BINARYMIME") == "555 5.5.4"


def test_mail_smtputf8() -> None:
    params = mail_params(b"<a@b.example> SMTPUTF8")
    assert params.smtputf8
    assert mail_rejected(b"<a@b.example> SMTPUTF8=yes") == "501 5.5.4"


def test_mail_auth_param_xtext() -> None:
    assert mail_params(b"<a@b.example> AUTH=<>").auth == "<>"
    assert mail_params(b"<a@b.example> AUTH=joe+2Bx@b.example").auth == "joe+x@b.example"


@pytest.mark.parametrize(("value", "expected"), [("FULL", "FULL"), ("hdrs", "HDRS")])
def test_mail_ret(value: str, expected: str) -> None:
    assert mail_params(b"<a@b.example> RET=" + value.encode()).ret == expected


def test_mail_ret_bad_value() -> None:
    assert mail_rejected(b"<a@b.example> RET=BODY") == "501 5.5.4"


def test_mail_envid_xtext() -> None:
    params = mail_params(b"<a@b.example> ENVID=QQ+2B314+3D+20x RET=HDRS")
    assert params.envid == "QQ+314= x"
    assert params.ret == "HDRS"


@pytest.mark.parametrize("value", [b"bad+2", b"bad+zz", b"bad+2b"])
def test_mail_envid_bad_xtext(value: bytes) -> None:
    assert mail_rejected(b"<a@b.example> ENVID=" + value) == "501 5.5.4"


def test_mail_envid_too_long() -> None:
    assert mail_params(b"<a@b.example> ENVID=" + b"x" * 100).envid == "x" * 100
    assert mail_rejected(b"<a@b.example> ENVID=" + b"x" * 101) == "501 5.5.4"


def test_mail_all_parameters_together() -> None:
    params = mail_params(b"<a@b.example> size=10 body=8BITMIME SMTPUTF8 AUTH=<> RET=FULL ENVID=id1")
    assert params == MailParams(
        10,
        "8BITMIME",
        True,
        "<>",
        "FULL",
        "id1",
        (
            ("SIZE", "10"),
            ("BODY", "8BITMIME"),
            ("SMTPUTF8", None),
            ("AUTH", "<>"),
            ("RET", "FULL"),
            ("ENVID", "id1"),
        ),
    )


def test_mail_unknown_parameter_is_555() -> None:
    ev = mail_event(b"<a@b.example> X-FOO=bar")
    assert isinstance(ev, Rejected)
    assert (ev.reply.code, ev.reply.enhanced) == (555, "5.5.4")
    assert "X-FOO" in str(ev.reply)


def test_mail_duplicate_parameter() -> None:
    assert mail_rejected(b"<a@b.example> SIZE=1 size=2") == "501 5.5.4"


@pytest.mark.parametrize(
    "arg",
    [
        b"<a@b.example> SIZE",
        b"<a@b.example> SIZE=",
        b"<a@b.example> SIZE=12x",
        b"<a@b.example> SIZE=-1",
        b"<a@b.example> SIZE=" + b"9" * 21,
        b"<a@b.example> BODY",
        b"<a@b.example> =x",
        b"<a@b.example> A=b=c",
    ],
)
def test_mail_bad_parameter_values(arg: bytes) -> None:
    assert mail_rejected(arg) == "501 5.5.4"


def test_mail_size_with_non_ascii_digits_is_refused_not_a_crash() -> None:
    # "²".isdigit() is True but int("²") raises: the parser must answer, never crash.
    assert mail_rejected("<a@b.example> SIZE=²".encode()) == "501 5.5.4"
    assert mail_rejected("<a@b.example> SIZE=١٢".encode()) == "501 5.5.4"


def test_mail_parameters_need_a_space_after_the_path() -> None:
    assert mail_rejected(b"<a@b.example>SIZE=10") == "553 5.1.7"


def test_mail_size_limit() -> None:
    limits = ProtocolLimits(max_message_size=1000)
    assert isinstance(mail_event(b"<a@b.example> SIZE=1000", limits), MailFrom)
    ev = mail_event(b"<a@b.example> SIZE=1001", limits)
    assert ev == Rejected("MAIL", R.MESSAGE_TOO_BIG)
    assert (R.MESSAGE_TOO_BIG.code, R.MESSAGE_TOO_BIG.enhanced) == (552, "5.3.4")


@pytest.mark.parametrize("arg", [b"", b"<a@b.example>", b"TO:<a@b.example>", b"FROM <a@b>"])
def test_mail_syntax(arg: bytes) -> None:
    events, _ = assert_same_events(GREET + b"MAIL " + arg + b"\r\n")
    assert rejections(events) == [R.SYNTAX_MAIL]


def test_mail_bad_sender_address_is_553_517() -> None:
    assert mail_rejected(b"<not an address>") == "553 5.1.7"
    assert mail_rejected(b"alice@example.org") == "553 5.1.7"


def test_mail_accepted_by_driver_enters_transaction() -> None:
    conn = ServerConnection()
    events, _ = run_session(GREET + MAIL)
    assert isinstance(events[-1], MailFrom)
    conn.receive_data(GREET + MAIL)
    assert isinstance(conn.next_event(), Helo)
    conn.send(R.OK)
    assert isinstance(conn.next_event(), MailFrom)
    assert conn.owes_reply
    conn.send(R.SENDER_OK)
    assert state(conn) is State.MAIL
    assert conn.in_transaction


def test_mail_refused_by_driver_opens_no_transaction() -> None:
    def answer(ev: object) -> trio_mta.protocol.Reply | None:
        if isinstance(ev, MailFrom):
            return R.reply(550, "5.7.1", "no")
        return R.OK

    events, _ = run_session(GREET + MAIL + RCPT + MAIL, answer)
    assert isinstance(events[1], MailFrom)
    assert events[2] == Rejected("RCPT", R.NEED_MAIL)
    assert isinstance(events[3], MailFrom)


# -- RCPT ---------------------------------------------------------------------------------------


def rcpt_event(arg: bytes, *, mail: bytes = MAIL) -> object:
    events, _ = assert_same_events(GREET + mail + b"RCPT TO:" + arg + b"\r\n")
    assert isinstance(events[1], MailFrom), events
    assert len(events) == 3
    return events[2]


def test_rcpt_plain() -> None:
    assert rcpt_event(b"<bob@example.net>") == RcptTo(BOB, RcptParams())


def test_rcpt_notify_and_orcpt() -> None:
    ev = rcpt_event(b"<bob@example.net> NOTIFY=success,FAILURE ORCPT=rfc822;bob+40example.net")
    assert ev == RcptTo(
        BOB,
        RcptParams(
            ("SUCCESS", "FAILURE"),
            "rfc822;bob@example.net",
            (("NOTIFY", "success,FAILURE"), ("ORCPT", "rfc822;bob+40example.net")),
        ),
    )


def test_rcpt_notify_never() -> None:
    ev = rcpt_event(b"<bob@example.net> NOTIFY=NEVER")
    assert isinstance(ev, RcptTo)
    assert ev.params.notify == ("NEVER",)


@pytest.mark.parametrize(
    "arg",
    [
        b"NOTIFY=NEVER,SUCCESS",
        b"NOTIFY=SOMETIMES",
        b"NOTIFY=SUCCESS,SUCCESS",
        b"NOTIFY=",
        b"NOTIFY",
        b"ORCPT=rfc822",
        b"ORCPT=;x",
        b"ORCPT=rfc822;",
    ],
)
def test_rcpt_bad_dsn_parameters(arg: bytes) -> None:
    ev = rcpt_event(b"<bob@example.net> " + arg)
    assert isinstance(ev, Rejected)
    assert (ev.reply.code, ev.reply.enhanced) == (501, "5.5.4")


def test_rcpt_unknown_parameter_is_555() -> None:
    ev = rcpt_event(b"<bob@example.net> SIZE=10")
    assert isinstance(ev, Rejected)
    assert (ev.reply.code, ev.reply.enhanced) == (555, "5.5.4")


def test_rcpt_postmaster() -> None:
    ev = rcpt_event(b"<Postmaster>")
    assert isinstance(ev, RcptTo)
    assert ev.recipient.is_postmaster
    assert str(ev.recipient) == "Postmaster"


def test_rcpt_null_path_refused() -> None:
    assert rcpt_event(b"<>") == Rejected("RCPT", R.BAD_ADDRESS)


@pytest.mark.parametrize("arg", [b"FROM:<a@b>", b"", b"TO <a@b>"])
def test_rcpt_syntax(arg: bytes) -> None:
    events, _ = assert_same_events(GREET + MAIL + b"RCPT " + arg + b"\r\n")
    assert rejections(events) == [R.SYNTAX_RCPT]


def test_mail_postmaster_without_domain_is_not_a_sender() -> None:
    assert mail_rejected(b"<postmaster>") == "553 5.1.7"


def test_too_many_recipients() -> None:
    limits = ProtocolLimits(max_recipients=3)
    rcpts = b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(5))
    events, out = assert_same_events(GREET + MAIL + rcpts, limits=limits)
    assert [type(e).__name__ for e in events] == ["Helo", "MailFrom"] + ["RcptTo"] * 3 + [
        "Rejected"
    ] * 2
    assert rejections(events) == [R.TOO_MANY_RECIPIENTS] * 2
    assert reply_codes(out)[-2:] == ["452 4.5.3", "452 4.5.3"]


def test_refused_recipients_do_not_count_against_the_limit() -> None:
    def answer(ev: object) -> trio_mta.protocol.Reply | None:
        if isinstance(ev, RcptTo) and ev.recipient.local_part.startswith("x"):
            return R.reply(550, "5.1.1", "unknown")
        return R.OK

    limits = ProtocolLimits(max_recipients=2)
    rcpts = b"RCPT TO:<x1@e.example>\r\nRCPT TO:<x2@e.example>\r\n"
    rcpts += b"RCPT TO:<a@e.example>\r\nRCPT TO:<b@e.example>\r\nRCPT TO:<c@e.example>\r\n"
    events, _ = run_session(GREET + MAIL + rcpts, answer, limits=limits)
    assert sum(isinstance(e, RcptTo) for e in events) == 4
    assert rejections(events) == [R.TOO_MANY_RECIPIENTS]


def test_rset_clears_the_recipient_count() -> None:
    limits = ProtocolLimits(max_recipients=1)
    data = GREET + MAIL + RCPT + b"RSET\r\n" + MAIL + RCPT + RCPT
    events, _ = assert_same_events(data, limits=limits)
    assert sum(isinstance(e, RcptTo) for e in events) == 2
    assert rejections(events) == [R.TOO_MANY_RECIPIENTS]


# -- sequence errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (MAIL, R.NEED_HELO),
        (RCPT, R.NEED_HELO),
        (b"DATA\r\n", R.NEED_HELO),
        (GREET + RCPT, R.NEED_MAIL),
        (GREET + b"DATA\r\n", R.NEED_MAIL),
        (GREET + MAIL + b"DATA\r\n", R.NEED_RCPT),
        (GREET + MAIL + MAIL, R.NESTED_MAIL),
        (ENVELOPE + MAIL, R.NESTED_MAIL),
    ],
)
def test_sequence_errors(data: bytes, expected: trio_mta.protocol.Reply) -> None:
    events, out = assert_same_events(data)
    assert rejections(events) == [expected]
    assert reply_codes(out)[-1] == "503 5.5.1"


def test_unrecognized_command() -> None:
    events, out = assert_same_events(b"FOO bar baz\r\n\r\n")
    assert events == [Unrecognized("FOO", "FOO bar baz"), Unrecognized("", "")]
    assert reply_codes(out) == ["500 5.5.1", "500 5.5.1"]


# -- RSET, NOOP, QUIT, VRFY, EXPN, HELP ---------------------------------------------------------


def test_rset_noop_help_vrfy_expn() -> None:
    data = b"RSET\r\nNOOP\r\nNOOP anything at all\r\nHELP\r\nHELP mail\r\n"
    data += b"VRFY bob\r\nEXPN staff\r\n"
    events, out = assert_same_events(data)
    assert events == [
        Rset(),
        Noop(),
        Noop(),
        Help(""),
        Help("mail"),
        Vrfy("bob"),
        Expn("staff"),
    ]
    assert reply_codes(out) == [
        "250 2.0.0",
        "250 2.0.0",
        "250 2.0.0",
        "214 2.0.0",
        "214 2.0.0",
        "252 2.5.0",
        "502 5.5.1",
    ]


@pytest.mark.parametrize("line", [b"RSET now\r\n", b"QUIT now\r\n", b"VRFY\r\n", b"EXPN \r\n"])
def test_argument_errors(line: bytes) -> None:
    events, out = assert_same_events(line)
    assert len(rejections(events)) == 1
    assert reply_codes(out) == ["501 5.5.4"]


def test_rset_ends_the_transaction() -> None:
    events, _ = assert_same_events(ENVELOPE + b"RSET\r\n" + RCPT + MAIL)
    assert rejections(events) == [R.NEED_MAIL]
    assert isinstance(events[-1], MailFrom)


def test_quit_closes_and_nothing_after_is_parsed() -> None:
    conn = ServerConnection()
    conn.receive_data(b"QUIT\r\nNOOP\r\n")
    assert conn.next_event() == Quit()
    assert conn.send(R.BYE) == b"221 2.0.0 Bye\r\n"
    assert state(conn) is State.CLOSED
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()


def test_421_closes_the_session() -> None:
    conn = ServerConnection()
    conn.receive_data(b"NOOP\r\nNOOP\r\n")
    assert conn.next_event() == Noop()
    conn.send(R.reply(421, "4.3.2", "shutting down"))
    assert conn.next_event() == ConnectionClosed()


def test_greeting_can_be_sent_without_an_owed_command() -> None:
    conn = ServerConnection()
    assert conn.send(R.reply(220, None, "mx.example ESMTP")) == b"220 mx.example ESMTP\r\n"
    assert state(conn) is State.CONNECTED


# -- STARTTLS -----------------------------------------------------------------------------------


def test_starttls_discards_pipelined_plaintext() -> None:
    conn = ServerConnection()
    trailing = b"RSET\r\nMAIL FROM:<a@b>\r\n"
    conn.receive_data(GREET + b"STARTTLS\r\n" + trailing)
    assert isinstance(conn.next_event(), Helo)
    conn.send(R.OK)
    assert conn.next_event() == StartTLS()
    assert conn.send(R.READY_TLS) == b"220 2.0.0 Ready to start TLS\r\n"
    assert state(conn) is State.TLS_PENDING
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    assert conn.start_tls() == trailing
    assert conn.tls
    assert conn.buffered == 0
    assert state(conn) is State.CONNECTED
    assert conn.helo is None
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"MAIL FROM:<a@b.example>\r\n")
    assert conn.next_event() == Rejected("MAIL", R.NEED_HELO)


def test_starttls_session_driver() -> None:
    data = GREET + b"STARTTLS\r\nRSET\r\nMAIL FROM:<a@b>\r\n"
    events, out = run_session(data)
    assert events == [
        Helo("client.example", True),
        StartTLS(),
        TlsStarted(b"RSET\r\nMAIL FROM:<a@b>\r\n"),
    ]
    assert reply_codes(out) == ["250", "220 2.0.0"]


def test_bytes_arriving_between_220_and_start_tls_are_plaintext_too() -> None:
    conn = ServerConnection()
    conn.receive_data(b"STARTTLS\r\n")
    assert conn.next_event() == StartTLS()
    conn.send(R.READY_TLS)
    conn.receive_data(b"NOOP\r\n")
    assert conn.start_tls() == b"NOOP\r\n"


def test_starttls_refused_by_driver_keeps_the_session() -> None:
    conn = ServerConnection()
    conn.receive_data(GREET + b"STARTTLS\r\n" + MAIL)
    assert isinstance(conn.next_event(), Helo)
    conn.send(R.OK)
    assert conn.next_event() == StartTLS()
    conn.send(R.reply(454, "4.7.0", "TLS not available"))
    with pytest.raises(LocalProtocolError):
        conn.start_tls()
    assert isinstance(conn.next_event(), MailFrom)


def test_starttls_errors() -> None:
    events, _ = assert_same_events(b"STARTTLS now\r\n")
    assert rejections(events) == [R.SYNTAX_NO_ARGS]
    events, _ = run_session(b"STARTTLS\r\n", tls=True)
    assert rejections(events) == [R.ALREADY_TLS]
    events, _ = assert_same_events(GREET + MAIL + b"STARTTLS\r\n")
    assert rejections(events) == [R.BAD_SEQUENCE]


def test_start_tls_without_accepted_starttls_raises() -> None:
    with pytest.raises(LocalProtocolError):
        ServerConnection().start_tls()


# -- AUTH ---------------------------------------------------------------------------------------


def test_auth_exchange() -> None:
    conn = ServerConnection(tls=True)
    conn.receive_data(GREET + b"AUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\n" + MAIL)
    assert isinstance(conn.next_event(), Helo)
    conn.send(R.OK)
    assert conn.next_event() == Auth("LOGIN", None)
    assert conn.send(R.reply(334, None, "VXNlcm5hbWU6")) == b"334 VXNlcm5hbWU6\r\n"
    assert state(conn) is State.AUTH
    assert conn.next_event() == AuthResponse("dXNlcg==")
    conn.send(R.reply(334, None, "UGFzc3dvcmQ6"))
    assert conn.next_event() == AuthResponse("cGFzcw==")
    conn.send(R.reply(235, "2.7.0", "ok"))
    assert conn.authenticated
    assert state(conn) is State.READY
    assert isinstance(conn.next_event(), MailFrom)


def test_auth_lines_are_not_commands() -> None:
    events, _ = assert_same_events(GREET + b"AUTH PLAIN\r\nQUIT\r\n")
    assert events[1:] == [Auth("PLAIN", None), AuthResponse("QUIT")]


def test_auth_with_initial_response_and_failure() -> None:
    def answer(ev: object) -> trio_mta.protocol.Reply | None:
        if isinstance(ev, Auth):
            return R.reply(535, "5.7.8", "bad credentials")
        return R.OK

    conn = ServerConnection()
    events, _ = feed(conn, GREET + b"AUTH plain AGpvZQBwdw==\r\nNOOP\r\n", answer=answer)
    assert events[1:] == [Auth("PLAIN", "AGpvZQBwdw=="), Noop()]
    assert not conn.authenticated
    assert state(conn) is State.READY


def test_auth_cancel_returns_to_commands() -> None:
    events, out = assert_same_events(GREET + b"AUTH LOGIN\r\n*\r\nNOOP\r\n")
    assert events[1:] == [Auth("LOGIN", None), AuthResponse("*"), Noop()]
    assert reply_codes(out) == ["250", "334", "501 5.0.0", "250 2.0.0"]


def test_auth_sequence_errors() -> None:
    events, _ = assert_same_events(b"AUTH PLAIN\r\n")
    assert rejections(events) == [R.NEED_HELO]
    events, _ = assert_same_events(GREET + MAIL + b"AUTH PLAIN\r\n")
    assert rejections(events) == [R.AUTH_IN_TRANSACTION]
    events, _ = assert_same_events(GREET + b"AUTH PLAIN =\r\nAUTH PLAIN =\r\n")
    assert rejections(events) == [R.ALREADY_AUTH]
    events, out = assert_same_events(GREET + b"AUTH\r\nAUTH A B C\r\n")
    assert reply_codes(out)[1:] == ["501 5.5.4", "501 5.5.4"]


def test_auth_line_may_be_longer_than_a_command_line() -> None:
    blob = b"A" * 12000
    events, _ = assert_same_events(GREET + b"AUTH PLAIN " + blob + b"\r\nNOOP\r\n")
    assert events[1:] == [Auth("PLAIN", blob.decode()), Noop()]
    line = b"B" * 12286
    events, _ = assert_same_events(GREET + b"AUTH LOGIN\r\n" + line + b"\r\nNOOP\r\n")
    assert events[1:] == [Auth("LOGIN", None), AuthResponse(line.decode()), Noop()]


def test_auth_line_over_12288_is_500() -> None:
    line = b"AUTH PLAIN " + b"A" * (12288 - 12)  # 12289 octets with the CRLF
    events, _ = assert_same_events(GREET + line + b"\r\nNOOP\r\n")
    assert events[1:] == [Rejected("", R.LINE_TOO_LONG), Noop()]
    response = b"B" * 12287
    events, _ = assert_same_events(GREET + b"AUTH LOGIN\r\n" + response + b"\r\n*\r\n")
    assert events[1:] == [Auth("LOGIN", None), Rejected("", R.LINE_TOO_LONG), AuthResponse("*")]


# -- line limits and encoding ----------------------------------------------------------------


def test_command_line_limit_is_512_with_crlf() -> None:
    ok = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(ok) == 512
    events, _ = assert_same_events(ok)
    assert events == [Noop()]
    too_long = b"NOOP " + b"x" * (512 - 6) + b"\r\n"
    events, out = assert_same_events(too_long + b"NOOP\r\n")
    assert events == [Rejected("", R.LINE_TOO_LONG), Noop()]
    assert reply_codes(out) == ["500 5.5.2", "250 2.0.0"]


def test_over_long_line_in_pieces_keeps_the_session_in_sync() -> None:
    conn = ServerConnection()
    events: list[object] = []
    conn.receive_data(GREET)
    assert isinstance(conn.next_event(), Helo)
    conn.send(R.OK)
    for _ in range(10):  # 10 x 300 octets, never a line end
        conn.receive_data(b"MAIL FROM:<" + b"a" * 289)
        assert conn.next_event() is NEED_DATA
    assert conn.buffered < 512  # the over-long line is not kept
    conn.receive_data(b"@b>\r\n" + MAIL)
    events.append(conn.next_event())
    conn.send(R.LINE_TOO_LONG)
    events.append(conn.next_event())
    assert events == [Rejected("", R.LINE_TOO_LONG), MailFrom(ALICE, MailParams())]


def test_over_long_line_ending_in_cr_then_lf() -> None:
    data = GREET + b"X" * 600 + b"\r\nNOOP\r\n"
    events, _ = assert_same_events(data)
    assert events[1:] == [Rejected("", R.LINE_TOO_LONG), Noop()]


def test_non_utf8_command_is_501() -> None:
    events, out = assert_same_events(b"NOOP \xff\xfe\r\nNOOP\r\n")
    assert events == [Rejected("", R.BAD_ENCODING), Noop()]
    assert reply_codes(out) == ["501 5.5.2", "250 2.0.0"]


@pytest.mark.parametrize("line", [b"NOOP a\x00b\r\n", b"NOOP a\rb\r\n", b"NO\rOP\r\n"])
def test_nul_or_bare_cr_in_command_is_500(line: bytes) -> None:
    events, out = assert_same_events(line + b"NOOP\r\n")
    assert len(rejections(events)) == 1
    assert events[-1] == Noop()
    assert reply_codes(out) == ["500 5.5.2", "250 2.0.0"]


def test_bare_lf_ends_a_command_line() -> None:
    events, _ = assert_same_events(b"NOOP\nRSET\n")
    assert events == [Noop(), Rset()]


# -- driver contract, EOF -----------------------------------------------------------------------


def test_next_event_with_a_reply_owed_raises() -> None:
    conn = ServerConnection()
    conn.receive_data(b"NOOP\r\nNOOP\r\n")
    assert conn.next_event() == Noop()
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.send(R.OK)
    assert conn.next_event() == Noop()


def test_pipelined_commands_wait_for_replies() -> None:
    conn = ServerConnection()
    conn.receive_data(ENVELOPE + b"DATA\r\n")
    assert conn.next_event() == Helo("client.example", True)
    assert conn.buffered == len(MAIL + RCPT + b"DATA\r\n")
    conn.send(R.OK)
    assert conn.next_event() == MailFrom(ALICE, MailParams())
    conn.send(R.SENDER_OK)
    assert conn.next_event() == RcptTo(BOB, RcptParams())
    conn.send(R.RECIPIENT_OK)
    assert conn.next_event() == DataCommand()


def test_eof_gives_connection_closed() -> None:
    events, _ = assert_same_events(b"NOOP\r\nNOO", eof=True)
    assert events == [Noop(), ConnectionClosed()]
    conn = ServerConnection()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert state(conn) is State.CLOSED
    assert conn.next_event() == ConnectionClosed()


def test_eof_in_data_gives_connection_closed() -> None:
    events, _ = assert_same_events(ENVELOPE + b"DATA\r\nhello\r\n", eof=True)
    assert events[-2:] == [trio_mta.protocol.DataChunk(b"hello\r\n"), ConnectionClosed()]


def test_need_data_before_a_line_end() -> None:
    conn = ServerConnection()
    conn.receive_data(b"NOOP")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\r")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\n")
    assert conn.next_event() == Noop()
