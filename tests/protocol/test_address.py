"""RFC 5321 §4.1.2 paths (with RFC 6531 SMTPUTF8), through ``parse_path`` and through MAIL/RCPT."""

from __future__ import annotations

import pytest

from trio_mta.protocol import (
    Address,
    AddressError,
    MailFrom,
    MailParams,
    RcptTo,
    Rejected,
    Reply,
    parse_path,
    xtext_decode,
)

from .support import GREET, MAIL, R, assert_same_events, rejections


def parse(text: str, *, utf8: bool = False, null: bool = False) -> tuple[Address | None, str]:
    return parse_path(text, utf8=utf8, allow_null=null, allow_postmaster=True)


def refused(text: str, *, utf8: bool = False, null: bool = False) -> Reply:
    with pytest.raises(AddressError) as info:
        parse(text, utf8=utf8, null=null)
    return info.value.reply


@pytest.mark.parametrize(
    ("text", "local", "domain"),
    [
        ("<user@example.org>", "user", "example.org"),
        ("<first.last+tag@sub.example.org>", "first.last+tag", "sub.example.org"),
        ("<!#$%&'*+-/=?^_`{|}~@x.example>", "!#$%&'*+-/=?^_`{|}~", "x.example"),
        ('<"a b"@x.example>', '"a b"', "x.example"),
        ('<"user@other"@x.example>', '"user@other"', "x.example"),
        ('<"a\\"b\\\\c"@x.example>', '"a\\"b\\\\c"', "x.example"),
        ('<""@x.example>', '""', "x.example"),
        ("<u@[192.0.2.1]>", "u", "[192.0.2.1]"),
        ("<u@[IPv6:2001:db8::1]>", "u", "[IPv6:2001:db8::1]"),
        ("<u@[ipv6:::ffff:192.0.2.1]>", "u", "[ipv6:::ffff:192.0.2.1]"),
        ("<u@localhost>", "u", "localhost"),
        ("<u@123.example>", "u", "123.example"),
        ("<u@a-b.example>", "u", "a-b.example"),
    ],
)
def test_valid_paths(text: str, local: str, domain: str) -> None:
    addr, rest = parse(text + " SIZE=1")
    assert addr == Address(local, domain)
    assert rest == " SIZE=1"


def test_quoted_local_part_helpers() -> None:
    addr, _ = parse('<"a\\"b c"@X.Example>')
    assert addr is not None
    assert addr.is_quoted
    assert addr.unquoted_local_part == 'a"b c'
    assert addr.domain_lower == "x.example"
    assert str(addr) == '"a\\"b c"@X.Example'
    plain, _ = parse("<a@[192.0.2.1]>")
    assert plain is not None
    assert not plain.is_quoted
    assert plain.unquoted_local_part == "a"
    assert plain.is_address_literal


@pytest.mark.parametrize(
    "text",
    [
        "user@example.org",
        "<user@example.org",
        "<user>",
        "<@example.org>",
        "<user@>",
        "<.user@x.example>",
        "<user.@x.example>",
        "<us..er@x.example>",
        "<us er@x.example>",
        "<user@@x.example>",
        "<user@x..example>",
        "<user@.x.example>",
        "<user@x.example.>",
        "<user@-x.example>",
        "<user@x-.example>",
        "<user@x_y.example>",
        "<user@x.example >",
        '<"unterminated@x.example>',
        '<"a"b@x.example>',
        '<"a\\',
        "<user@" + "a" * 64 + ".example>",
        "<u@[192.0.2.1>",
        "<u@[192.0.2]>",
        "<u@[192.0.2.256]>",
        "<u@[192.0.2.01]>",
        "<u@[0x7f.0.0.1]>",
        "<u@[1.2.3.4.5]>",
        "<u@[IPv6:2001:db8::g]>",
        "<u@[IPv6:1:2:3:4:5:6:7:8:9]>",
        "<u@[IPv6:fe80::1%eth0]>",
        "<u@[2001:db8::1]>",
        "<u@[]>",
        "<u@[192.0.2.1]x>",
        "<@a.example,b.example:u@c.example>",
        "<@a.example;u@c.example>",
        "<@:u@c.example>",
    ],
)
def test_bad_paths(text: str) -> None:
    assert refused(text) == R.BAD_ADDRESS


def test_null_path_only_when_allowed() -> None:
    assert parse("<> SIZE=1", null=True) == (None, " SIZE=1")
    assert refused("<>") == R.BAD_ADDRESS


def test_postmaster_only_when_allowed() -> None:
    addr, rest = parse("<postmaster>")
    assert addr == Address("postmaster", "")
    assert addr.is_postmaster
    assert rest == ""
    with pytest.raises(AddressError):
        parse_path("<postmaster>", utf8=False, allow_null=False, allow_postmaster=False)
    assert refused("<@a.example:postmaster>") == R.BAD_ADDRESS
    assert refused("<webmaster>") == R.BAD_ADDRESS


def test_source_route_is_parsed_and_kept() -> None:
    addr, rest = parse("<@a.example,@[192.0.2.1],@b.example:u@c.example> NOTIFY=NEVER")
    assert addr == Address("u", "c.example", ("a.example", "[192.0.2.1]", "b.example"))
    assert str(addr) == "u@c.example"
    assert rest == " NOTIFY=NEVER"


def test_local_part_limit_is_64_octets() -> None:
    addr, _ = parse("<" + "a" * 64 + "@x.example>")
    assert addr is not None
    assert len(addr.local_part) == 64
    too_long = refused("<" + "a" * 65 + "@x.example>")
    assert (too_long.code, too_long.enhanced) == (501, "5.5.4")
    assert "local part" in str(too_long)
    # Octets, not characters: 32 two-octet characters fill it exactly.
    assert parse("<" + "é" * 32 + "@x.example>", utf8=True)[0] is not None
    assert refused("<" + "é" * 32 + "a@x.example>", utf8=True).code == 501


def domain_of_length(n: int) -> str:
    labels = ["a" * 63] * (n // 64)
    rest = n - 64 * len(labels)
    if rest:
        labels.append("b" * rest)
    domain = ".".join(labels)
    assert len(domain) == n or len(domain) == n - 1
    return domain if len(domain) == n else domain + "c"


def test_domain_limit_is_255_octets() -> None:
    # A 255-octet domain is fine for the domain check; the whole path is then over 256.
    over_path = refused("<a@" + domain_of_length(255) + ">")
    assert (over_path.code, over_path.enhanced) == (501, "5.5.4")
    assert "path" in str(over_path)
    assert refused("<a@" + domain_of_length(256) + ">") == R.BAD_ADDRESS


def test_path_limit_is_256_octets_with_brackets() -> None:
    domain = domain_of_length(251)
    ok = "<ab@" + domain + ">"
    assert len(ok) == 256
    assert parse(ok)[0] == Address("ab", domain)
    too_long = refused("<abc@" + domain + ">")
    assert (too_long.code, too_long.enhanced) == (501, "5.5.4")


def test_non_ascii_needs_smtputf8() -> None:
    for text in ["<jösé@x.example>", "<u@bücher.example>", '<"ü x"@x.example>']:
        assert refused(text) == R.NEED_SMTPUTF8
        addr, _ = parse(text, utf8=True)
        assert addr is not None
    assert (R.NEED_SMTPUTF8.code, R.NEED_SMTPUTF8.enhanced) == (553, "5.6.7")


def test_non_ascii_after_the_path_is_not_the_paths_business() -> None:
    assert parse("<u@x.example> ENVID=ü") == (Address("u", "x.example"), " ENVID=ü")


def test_utf8_control_and_unprintable_characters_refused() -> None:
    assert refused("<a\u200bb@x.example>", utf8=True) == R.BAD_ADDRESS
    assert refused("<ab@x\u0085.example>", utf8=True) == R.BAD_ADDRESS
    assert refused("<a\x01b@x.example>", utf8=True) == R.BAD_ADDRESS
    assert refused('<"a\u200bb"@x.example>', utf8=True) == R.BAD_ADDRESS


@pytest.mark.parametrize(
    "text",
    ['<"\udcff"@x.example>', "<a@b.example\udcff>", "<a@[IPv6:\udcff]>", '<"a\\\udcff"@x.example>'],
)
@pytest.mark.parametrize("utf8", [False, True])
def test_lone_surrogates_are_refused_not_a_crash(text: str, utf8: bool) -> None:
    # Not from the wire (lines are strict UTF-8), but xtext_decode can produce them
    # (ORCPT=rfc822;+FF@x), and a plugin may hand such a string to parse_path.
    assert refused(text, utf8=utf8) in (R.BAD_ADDRESS, R.NEED_SMTPUTF8)


def test_xtext_decode() -> None:
    assert xtext_decode("plain") == "plain"
    assert xtext_decode("a+2Bb+3D") == "a+b="
    assert xtext_decode("+C3+BC") == "ü"
    for bad in ["+", "+4", "+4g", "+2b"]:
        with pytest.raises(AddressError):
            xtext_decode(bad)


# -- the same, through the server ---------------------------------------------------------------


def mail(arg: str) -> object:
    events, _ = assert_same_events(GREET + b"MAIL FROM:" + arg.encode() + b"\r\n")
    assert len(events) == 2
    return events[1]


def rcpt(arg: str, *, mail_line: bytes = MAIL) -> object:
    events, _ = assert_same_events(GREET + mail_line + b"RCPT TO:" + arg.encode() + b"\r\n")
    assert isinstance(events[1], MailFrom), events
    return events[2]


def test_server_quoted_and_literal_paths() -> None:
    assert mail('<"a b"@x.example>') == MailFrom(Address('"a b"', "x.example"), MailParams())
    ev = rcpt("<u@[IPv6:2001:db8::1]>")
    assert isinstance(ev, RcptTo)
    assert ev.recipient.domain == "[IPv6:2001:db8::1]"
    ev = rcpt("<@a.example,@b.example:u@c.example>")
    assert isinstance(ev, RcptTo)
    assert ev.recipient.source_route == ("a.example", "b.example")


def test_server_non_ascii_without_smtputf8_is_553_567() -> None:
    assert mail("<jösé@x.example>") == Rejected("MAIL", R.NEED_SMTPUTF8)
    assert rcpt("<jösé@x.example>") == Rejected("RCPT", R.NEED_SMTPUTF8)


def test_server_non_ascii_with_smtputf8_is_accepted() -> None:
    ev = mail("<jösé@bücher.example> SMTPUTF8")
    assert isinstance(ev, MailFrom)
    assert ev.sender == Address("jösé", "bücher.example")
    assert ev.params.smtputf8
    utf8_mail = b"MAIL FROM:<a@b.example> SMTPUTF8\r\n"
    ev = rcpt("<日本@例え.jp>", mail_line=utf8_mail)
    assert isinstance(ev, RcptTo)
    assert ev.recipient == Address("日本", "例え.jp")


def test_smtputf8_inside_the_path_does_not_count_as_the_parameter() -> None:
    # The word SMTPUTF8 inside a quoted local part is not the ESMTP parameter.
    assert mail('<"ü SMTPUTF8"@x.example>') == Rejected("MAIL", R.NEED_SMTPUTF8)
    ev = mail('<"ü SMTPUTF8"@x.example> SMTPUTF8')
    assert isinstance(ev, MailFrom)
    assert ev.params.smtputf8


def test_smtputf8_of_a_previous_transaction_does_not_carry_over() -> None:
    data = GREET + b"MAIL FROM:<a@b.example> SMTPUTF8\r\n" + b"RSET\r\n" + MAIL
    data += "RCPT TO:<jösé@x.example>\r\n".encode()
    events, _ = assert_same_events(data)
    assert rejections(events) == [R.NEED_SMTPUTF8]


def test_server_bad_literal_and_lengths() -> None:
    assert mail("<u@[192.0.2.300]>") == Rejected("MAIL", R.BAD_SENDER)
    assert rcpt("<u@[192.0.2.300]>") == Rejected("RCPT", R.BAD_ADDRESS)
    ev = rcpt("<" + "a" * 65 + "@x.example>")
    assert isinstance(ev, Rejected)
    assert (ev.reply.code, ev.reply.enhanced) == (501, "5.5.4")


def test_server_null_path_only_for_mail() -> None:
    assert mail("<>") == MailFrom(None, MailParams())
    assert rcpt("<>") == Rejected("RCPT", R.BAD_ADDRESS)
