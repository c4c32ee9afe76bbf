"""XVERP (Postfix's MAIL parameter) and VERP addresses: parsing, refusals, encoding, decoding,
and properties (round trip; any input gets a clean verdict)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mta.protocol import (
    VERP_DEFAULT_DELIMITERS,
    VERP_DELIMITER_CHARS,
    Address,
    AddressError,
    MailFrom,
    MailParams,
    Rejected,
    Reply,
    parse_path,
    verp_decodable,
    verp_decode,
    verp_delimiters_ok,
    verp_encode,
)
from trio_mta.protocol._address import parse_mail_params

from .support import GREET, R, assert_same_events
from .test_properties import SETTINGS

LIST = Address("list-bounces", "example.test")
ALICE = Address("alice", "remote.example")
PAIRS = [a + b for a in VERP_DELIMITER_CHARS for b in VERP_DELIMITER_CHARS]


def mail(arg: str) -> object:
    events, _ = assert_same_events(GREET + b"MAIL FROM:" + arg.encode() + b"\r\n")
    assert len(events) == 2
    return events[1]


def address(text: str) -> Address:
    found, rest = parse_path(f"<{text}>", utf8=True, allow_null=False, allow_postmaster=False)
    assert found is not None
    assert not rest
    return found


# -- the XVERP parameter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "delimiters"),
    [
        (" XVERP", "+="),  # bare: Postfix's default_verp_delimiters
        (" xverp", "+="),
        (" XVERP=+=", "+="),  # "=" in the value breaks esmtp-value; Postfix takes it
        (" XVERP=-=", "-="),
        (" XVERP==+", "=+"),
        (" XVERP=++", "++"),
        (" SIZE=10 XVERP=+= BODY=8BITMIME", "+="),
    ],
)
def test_xverp_is_parsed(param: str, delimiters: str) -> None:
    event = mail(f"<list-bounces@example.test>{param}")
    assert isinstance(event, MailFrom)
    assert event.params.verp == delimiters
    assert event.sender == LIST


def test_mail_without_xverp_has_no_delimiters() -> None:
    event = mail("<list-bounces@example.test> SIZE=10")
    assert isinstance(event, MailFrom)
    assert event.params == MailParams(size=10, raw=(("SIZE", "10"),))
    assert event.params.verp is None


@pytest.mark.parametrize(
    "param",
    [" XVERP=", " XVERP=+", " XVERP=+=+", " XVERP=ab", " XVERP=@%", " XVERP=+\x01", " XVERP=é="],
)
def test_malformed_xverp_is_refused_with_555(param: str) -> None:
    event = mail(f"<list-bounces@example.test>{param}")
    assert event == Rejected("MAIL", R.XVERP_MALFORMED)
    assert str(R.XVERP_MALFORMED) == "555 5.5.4 XVERP needs two delimiter characters from -=+"


def test_xverp_needs_a_sender() -> None:
    assert mail("<> XVERP") == Rejected("MAIL", R.XVERP_NULL_SENDER)
    assert mail("<> XVERP=-=") == Rejected("MAIL", R.XVERP_NULL_SENDER)
    assert R.XVERP_NULL_SENDER.code == 555


def test_twice_is_a_duplicate() -> None:
    event = mail("<list-bounces@example.test> XVERP XVERP=+=")
    assert isinstance(event, Rejected)
    assert str(event.reply) == "501 5.5.4 Duplicate parameter XVERP"


def test_other_parameters_are_judged_as_before() -> None:
    # The "=" allowance is XVERP's alone; an unknown parameter is still refused.
    assert mail("<a@example.test> BODY=7BIT=") == Rejected("MAIL", R.BAD_PARAM)
    assert mail("<a@example.test> FOO=+=") == Rejected("MAIL", R.BAD_PARAM)
    unknown = mail("<a@example.test> XVERPX")
    assert isinstance(unknown, Rejected)
    assert str(unknown.reply) == "555 5.5.4 Unsupported parameter XVERPX"
    assert mail("<a@example.test> FOO") == Rejected(
        "MAIL", R.reply(555, "5.5.4", "Unsupported parameter FOO")
    )


def test_delimiter_rules() -> None:
    assert VERP_DEFAULT_DELIMITERS == "+="
    assert all(verp_delimiters_ok(p) for p in PAIRS)
    assert not any(verp_delimiters_ok(p) for p in ("", "+", "+=+", "a=", "+@", "%="))
    # "-" may occur in a domain: as the second delimiter it cannot be decoded.
    assert [p for p in PAIRS if not verp_decodable(p)] == ["--", "=-", "+-"]


def verdict(rest: str) -> MailParams | Reply:
    """What parsing MAIL's parameters gives: the parameters, or the refusal."""
    try:
        return parse_mail_params(rest)
    except AddressError as exc:
        return exc.reply


NO_SPACE = st.characters(blacklist_characters=" ")


@SETTINGS
@given(st.text(NO_SPACE, max_size=6))
def test_any_xverp_value_gets_a_clean_verdict(value: str) -> None:
    found = verdict(f" XVERP={value}")
    if verp_delimiters_ok(value):
        assert isinstance(found, MailParams)
        assert found.verp == value
    else:
        assert found == R.XVERP_MALFORMED


@SETTINGS
@given(st.text(alphabet=" =+-XVERPxverp9\t\x00é", max_size=20))
def test_any_parameter_text_gets_a_clean_verdict(rest: str) -> None:
    found = verdict(" " + rest)
    if isinstance(found, MailParams):
        assert found.verp is None or verp_delimiters_ok(found.verp)
    else:
        assert found.code in (501, 555)


# -- VERP addresses -----------------------------------------------------------------------------


def test_encode_folds_the_recipient_into_the_sender() -> None:
    assert str(verp_encode(LIST, ALICE, "+=")) == "list-bounces+alice=remote.example@example.test"
    assert str(verp_encode(LIST, ALICE, "-=")) == "list-bounces-alice=remote.example@example.test"
    # A recipient that is no dot-atom makes a sender that must be quoted.
    quoted = verp_encode(LIST, address('"a b"@remote.example'), "+=")
    assert str(quoted) == '"list-bounces+a b=remote.example"@example.test'
    literal = verp_encode(LIST, address("bob@[192.0.2.1]"), "+=")
    assert str(literal) == '"list-bounces+bob=[192.0.2.1]"@example.test'


def test_encode_gives_none_when_there_is_nothing_to_make() -> None:
    long = address("a" * 40 + "@remote.example")  # 12 + 1 + 40 + 1 + 14 > 64 octets
    assert verp_encode(LIST, long, "+=") is None
    assert verp_encode(LIST, Address("postmaster", ""), "+=") is None
    assert verp_encode(LIST, ALICE, "+") is None
    assert verp_encode(LIST, ALICE, "ab") is None


def test_decode_takes_the_address_apart() -> None:
    verp = address("list-bounces+alice=remote.example@example.test")
    found = verp_decode(verp, "+=", base="list-bounces")
    assert found is not None
    assert (found.base, found.recipient) == (LIST, ALICE)
    assert verp_decode(verp, "+=") == found  # the base ends at the first "+"
    # The base is matched case-insensitively and keeps the address's own case.
    upper = verp_decode(
        address("List-Bounces+alice=remote.example@example.test"), "+=", base="list-bounces"
    )
    assert upper is not None
    assert str(upper.base) == "List-Bounces@example.test"


def test_decode_with_delimiters_inside_the_parts() -> None:
    # "-" as first delimiter, inside the base: only a known base finds the cut.
    verp = address("list-bounces-bob=remote.example@example.test")
    found = verp_decode(verp, "-=", base="list-bounces")
    assert found is not None
    assert str(found.recipient) == "bob@remote.example"
    wrong = verp_decode(verp, "-=")
    assert wrong is not None
    assert str(wrong.base) == "list@example.test"  # what a guess without the base gives
    # Delimiters in the recipient's local part: the domain starts after the last "=".
    found = verp_decode(address("list-bounces+a=b+c=remote.example@example.test"), "+=")
    assert found is not None
    assert str(found.recipient) == "a=b+c@remote.example"
    # A quoted one.
    found = verp_decode(address('"list-bounces+a b=remote.example"@example.test'), "+=")
    assert found is not None
    assert found.recipient == address('"a b"@remote.example')


@pytest.mark.parametrize(
    "text",
    [
        "list-bounces@example.test",  # no delimiter
        "list-bounces+alice@example.test",  # no second delimiter
        "list-bounces+=remote.example@example.test",  # no recipient local part
        "list-bounces+alice=@example.test",  # no recipient domain
        "list-bounces+alice=-remote.example@example.test",  # not a domain
        "+alice=remote.example@example.test",  # no base
        "other+alice=remote.example@example.test",  # another base
    ],
)
def test_what_is_not_a_verp_address(text: str) -> None:
    assert verp_decode(address(text), "+=", base="list-bounces") is None


def test_decode_refuses_bad_delimiters_and_domainless_addresses() -> None:
    verp = address("list-bounces+alice=remote.example@example.test")
    assert verp_decode(verp, "+") is None
    assert verp_decode(verp, "+=", base="") is None
    assert verp_decode(Address("postmaster", ""), "+=") is None


LOCAL = st.text(
    alphabet='abcdefghijklmnopqrstuvwxyz0123456789.-_+=!#~ "\\é', min_size=1, max_size=20
)
DOMAIN = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8).filter(
        lambda label: label[0] != "-" and label[-1] != "-"
    ),
    min_size=1,
    max_size=3,
).map(".".join)
DECODABLE = st.sampled_from([p for p in PAIRS if verp_decodable(p)])


def _quote(local: str) -> str:
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def mailboxes(draw: st.DrawFn) -> Address:
    """Valid addresses, quoted when their local part is not a dot-atom."""
    local, domain = draw(LOCAL), draw(DOMAIN)
    for candidate in (local, _quote(local)):
        try:
            return address(f"{candidate}@{domain}")
        except AddressError:
            continue
    raise AssertionError("a quoted local part always parses")


def test_empty_recipient_local_part_is_not_folded() -> None:
    # hypothesis found '0-=0@0' for ""@0: encoded, but verp_decode could never take it apart
    empty = Address('""', "remote.example")
    assert empty.unquoted_local_part == ""
    assert verp_encode(LIST, empty, "+=") is None
    assert verp_encode(Address('""', "example.test"), ALICE, "+=") is None
    assert verp_encode(LIST, ALICE, "+=") is not None
    assert verp_decode(Address("list-bounces+=remote.example", "example.test"), "+=") is None


@SETTINGS
@given(mailboxes(), mailboxes(), DECODABLE)
def test_round_trip(sender: Address, recipient: Address, delimiters: str) -> None:
    folded = verp_encode(sender, recipient, delimiters)
    if folded is None and not (recipient.unquoted_local_part and sender.unquoted_local_part):
        return  # never folded: test_empty_recipient_local_part_is_not_folded
    if folded is None:  # only when even its quoted form would pass 64 octets
        first, second = delimiters[0], delimiters[1]
        local = (
            f"{sender.unquoted_local_part}{first}{recipient.unquoted_local_part}"
            f"{second}{recipient.domain}"
        )
        assert len(_quote(local).encode()) > 64
        return
    assert folded.domain == sender.domain
    found = verp_decode(folded, delimiters, base=sender.unquoted_local_part)
    assert found is not None
    assert found.base.unquoted_local_part == sender.unquoted_local_part
    assert found.base.domain == sender.domain
    assert found.recipient.unquoted_local_part == recipient.unquoted_local_part
    assert found.recipient.domain == recipient.domain


@SETTINGS
@given(st.text(max_size=40), st.text(max_size=20), st.text(max_size=2), st.text(max_size=10))
def test_any_address_gets_a_clean_verdict(
    local: str, domain: str, delimiters: str, base: str
) -> None:
    for candidate in (base, None):
        found = verp_decode(Address(local, domain), delimiters, base=candidate)
        assert found is None or verp_delimiters_ok(delimiters)
