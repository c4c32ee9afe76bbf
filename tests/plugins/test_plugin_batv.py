"""batv: the prvs tag (computed here independently from the draft's formula), expiry and the
day wrap, hash case, key rotation, the hooks (bounce checks at RCPT in each mode, stripping the
tag, signing at queue_outbound, our own bounces), the configuration checks, and properties."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Protocol, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins._envelope_tags import DAY_SECONDS
from plugins.batv import Codec, Decoded, Status
from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams

from .plugin_kit import begin, config_error, connection, load, message, shipped_config, verdict

KEY0 = "the first key, long enough"
KEY1 = "the second key, long enough"
DAY = 20782
NOW = DAY * DAY_SECONDS + 60.0
UNSIGNED = "550 5.7.1 Bounce to an unsigned address refused (BATV)"
INVALID = "550 5.7.1 Bounce to an address with an invalid BATV signature refused"
EXPIRED = "550 5.7.1 Bounce to an expired BATV address refused"
OK = "250 2.1.5 Recipient OK"


class Clocked(Protocol):
    now: Callable[[], float]


def tag(local: str, domain: str, *, key: int = 0, keys: tuple[str, ...] = (KEY0, KEY1)) -> str:
    """The draft's prvs local part, from its definition: K, the expiry day DDD (mod 1000),
    the first 3 bytes of HMAC-SHA1(key K, "KDDD" + address), in hex."""
    expiry = f"{(DAY + 7) % 1000:03d}"
    source = f"{key}{expiry}{local}@{domain}".lower().encode()
    signature = hmac.new(keys[key].encode(), source, hashlib.sha1).digest()[:3].hex()
    return f"prvs={key}{expiry}{signature}={local}"


def clock(at: float) -> Callable[[], float]:
    return lambda: at


def codec(**kwargs: object) -> Codec:
    return Codec((KEY0.encode(), KEY1.encode()), **kwargs)  # type: ignore[arg-type]  # by name


def batv(config: dict[str, object] | None = None, *, now: float = NOW) -> hooks.HookRunner:
    loaded = load("batv", {"keys": [KEY0, KEY1], **(config or {})})
    cast(Clocked, loaded.plugins[0]).now = clock(now)
    return hooks.HookRunner(loaded)


def address(text: str) -> Address:
    local, _, domain = text.rpartition("@")
    return Address(local, domain)


# ------------------------------------------------------------------------------ the tag


def test_tag_layout_matches_the_draft() -> None:
    signed = codec().sign("alice", "example.test", DAY)
    assert signed == tag("alice", "example.test")
    assert signed.startswith(f"prvs=0{(DAY + 7) % 1000:03d}")
    assert len(signed.split("=")[1]) == 10
    assert codec(sign_key=1).sign("alice", "example.test", DAY) == tag(
        "alice", "example.test", key=1
    )


@pytest.mark.parametrize(
    ("age", "status"),
    [(0, Status.VALID), (7, Status.VALID), (8, Status.EXPIRED), (500, Status.EXPIRED)],
)
def test_expiry(age: int, status: Status) -> None:
    signed = codec().sign("alice", "example.test", DAY)
    assert codec().check(signed, "example.test", DAY + age).status is status
    # DDD wraps every 1000 days: signed on day 995, it expires on day 1002 (DDD "002").
    wrapped = codec().sign("alice", "example.test", 995)
    assert wrapped.startswith("prvs=0002")
    assert codec().check(wrapped, "example.test", 995 + age).status is status
    assert codec().check(signed, "example.test", DAY, check_age=False).status is Status.VALID
    assert codec().check(signed, "example.test", DAY + 900, check_age=False).status is (
        Status.VALID
    )


def test_case_keys_and_forgeries() -> None:
    signed = codec().sign("Alice", "Example.TEST", DAY)
    for variant in (signed, signed.upper().replace("PRVS", "prvs"), signed.lower()):
        assert codec().check(variant, "example.test", DAY).status is Status.VALID
    assert codec().check(signed, "example.test", DAY) == Decoded(Status.VALID, "Alice")
    assert codec().check(signed.replace("Alice", "bob"), "example.test", DAY) == Decoded(
        Status.INVALID, "bob"
    )
    assert codec().check(signed, "other.test", DAY).status is Status.INVALID
    # Key 1 signs; key 0 still verifies until it is retired ("").
    rotated = Codec((KEY0.encode(), KEY1.encode()), sign_key=1)
    assert rotated.check(signed, "example.test", DAY).status is Status.VALID
    retired = Codec((b"", KEY1.encode()), sign_key=1)
    assert retired.check(signed, "example.test", DAY).status is Status.INVALID
    unknown_key = "prvs=9" + signed[6:]
    assert codec().check(unknown_key, "example.test", DAY).status is Status.INVALID


@pytest.mark.parametrize(
    ("local", "status"),
    [
        ("alice", Status.UNSIGNED),
        ("prv=0123abcdef=alice", Status.UNSIGNED),
        ("prvs=", Status.INVALID),
        ("prvs=0123abcdef", Status.INVALID),
        ("prvs=0123abcdef=", Status.INVALID),
        ("prvs=0123abcde=alice", Status.INVALID),
        ("prvs=0123abcdeg=alice", Status.INVALID),
        ("prvs=a123abcdef=alice", Status.INVALID),
        ("prvs=0\u066123abcdef=alice", Status.INVALID),  # a non-ASCII digit (Arabic-Indic 1)
        ("prvs=0123abcdef=alice", Status.INVALID),
    ],
)
def test_malformed_tags(local: str, status: Status) -> None:
    assert codec().check(local, "example.test", DAY).status is status


DOT_ATOM = st.from_regex(r"[A-Za-z0-9_+-]{1,20}(\.[A-Za-z0-9_+=-]{1,10}){0,2}", fullmatch=True)


@given(DOT_ATOM, st.integers(0, 100_000), st.integers(0, 7), st.sampled_from([0, 1]))
def test_round_trip(local: str, day: int, age: int, key: int) -> None:
    signed = Codec((KEY0.encode(), KEY1.encode()), sign_key=key).sign(local, "example.test", day)
    assert codec().check(signed, "example.test", day + age) == Decoded(Status.VALID, local)
    assert codec().check(signed.swapcase(), "EXAMPLE.test", day + age).status is Status.VALID


@given(st.text(max_size=80), st.text(max_size=30), st.integers(-5000, 5000))
def test_any_text_gets_a_verdict(local: str, domain: str, day: int) -> None:
    decoded = codec().check(local, domain, day)
    assert isinstance(decoded.status, Status)
    assert decoded.status is not Status.VALID or decoded.local


@given(st.text(alphabet="0123456789abcdefABCDEF=xé\x00", max_size=30))
def test_prvs_shaped_text_gets_a_verdict(text: str) -> None:
    assert isinstance(codec().check("prvs=" + text, "example.test", DAY).status, Status)


# ------------------------------------------------------------------------------ checking


async def rcpt(
    run: hooks.HookRunner, to: str, sender: str | None = None
) -> tuple[str, hooks.Transaction]:
    conn = connection()
    txn = begin(conn, address(sender) if sender else None)
    _, reply = await verdict(run, "rcpt", conn, address(to), RcptParams())
    return ("cont" if reply is None else str(reply)), txn


async def test_bounces_need_a_valid_tag() -> None:
    run = batv()
    good = tag("alice", "example.test") + "@example.test"
    assert (await rcpt(run, good))[0] == "cont"  # accepted by the plugins after this one
    assert (await rcpt(run, "alice@example.test"))[0] == UNSIGNED
    assert (await rcpt(run, good.replace("alice", "bob")))[0] == INVALID
    assert (await rcpt(batv(now=NOW + 8 * DAY_SECONDS), good))[0] == EXPIRED
    assert (await rcpt(run, "prvs=0123@example.test"))[0] == INVALID
    # Other domains are not ours to judge.
    assert (await rcpt(run, "alice@far.test"))[0] == "cont"


async def test_mail_that_is_not_a_bounce_passes_and_loses_its_tag() -> None:
    run = batv()
    forged = "prvs=0123abcdef=alice@example.test"
    for to in (tag("alice", "example.test") + "@example.test", forged, "alice@example.test"):
        reply, txn = await rcpt(run, to, sender="vacation@far.test")
        assert reply == "cont"
        txn.recipients.append((address(to), RcptParams()))
        conn = connection()
        conn.transaction = txn
        await run.run("data", conn)
        assert [str(a) for a, _ in txn.recipients] == ["alice@example.test"]


async def test_a_valid_bounce_is_delivered_to_the_plain_address() -> None:
    run = batv()
    good = address(tag("alice", "example.test") + "@example.test")
    conn = connection()
    txn = begin(conn, None)
    await run.run("rcpt", conn, good, RcptParams(notify=("NEVER",)))
    txn.recipients = [
        (good, RcptParams(notify=("NEVER",))),
        (address("alice@example.test"), RcptParams()),
    ]
    await run.run("data", conn)
    # The tag comes off; the client named the plain address too: one delivery.
    assert [(str(a), p.notify) for a, p in txn.recipients] == [("alice@example.test", ("NEVER",))]
    assert txn.notes["batv"] == {str(good): "valid"}


async def test_bounces_from_clients_that_may_relay_are_not_checked() -> None:
    run = batv()
    conn = connection(relaying=True)
    begin(conn, None)
    _, reply = await verdict(run, "rcpt", conn, address("alice@example.test"), RcptParams())
    assert reply is None
    signed = address(tag("alice", "example.test") + "@example.test")
    await run.run("rcpt", conn, signed, RcptParams())
    assert conn.transaction is not None
    assert conn.transaction.notes["batv.strip"] == {str(signed): "alice@example.test"}


def test_hooks_stay_out_of_the_process_sandbox() -> None:
    loaded = load("batv", {"keys": [KEY0], "sandbox": "process"})
    entries = [e for hook_entries in loaded.table.values() for e in hook_entries]
    assert len(entries) == 6
    assert not any(e.sandbox for e in entries)


async def test_exempt_recipients_take_unsigned_bounces() -> None:
    run = batv({"exempt": ["abuse", "bounces@example.test"]})
    for to in ("postmaster@example.test", "abuse@example.test", "Bounces@Example.test"):
        assert (await rcpt(run, to))[0] == "cont", to
    assert (await rcpt(run, "bounces@other.example.test"))[0] == "cont"  # not a signed domain
    assert (await rcpt(run, "alice@example.test"))[0] == UNSIGNED
    # postmaster stays exempt even if the list leaves it out.
    assert (await rcpt(batv({"exempt": []}), "postmaster@example.test"))[0] == "cont"


async def test_sign_domains() -> None:
    run = batv({"sign_domains": ["Signed.Test."]})
    assert (await rcpt(run, "alice@signed.test"))[0] == UNSIGNED
    assert (await rcpt(run, "alice@example.test"))[0] == "cont"


async def test_tag_and_log_modes_accept_and_record() -> None:
    for mode in ("tag", "log"):
        run = batv({"mode": mode})
        conn = connection()
        txn = begin(conn, None)
        txn.message = message(b"X-BATV: pass\r\nSubject: bounce\r\n\r\nbody\r\n")
        good = address(tag("alice", "example.test") + "@example.test")
        for to in (address("bob@example.test"), good):
            result, _ = await run.run("rcpt", conn, to, RcptParams())
            assert result.action is hooks.Action.CONT
            txn.recipients.append((to, RcptParams()))
        await run.run("data", conn)
        await run.run("data_post", conn)
        assert txn.notes["batv"] == {"bob@example.test": "unsigned", str(good): "valid"}
        rendered = txn.message_bytes()
        if mode == "tag":
            # The received X-BATV header (a forgery) is replaced by ours.
            assert rendered.startswith(b"X-BATV: fail (unsigned)\r\nSubject: bounce")
        else:
            assert rendered.startswith(b"X-BATV: pass\r\nSubject")


async def test_tag_mode_says_pass_for_a_valid_bounce() -> None:
    run = batv({"mode": "tag"})
    conn = connection()
    txn = begin(conn, None)
    txn.message = message(b"Subject: bounce\r\n\r\nbody\r\n")
    good = address(tag("alice", "example.test") + "@example.test")
    await run.run("rcpt", conn, good, RcptParams())
    await run.run("data_post", conn)
    assert txn.message_bytes().startswith(b"X-BATV: pass\r\n")


# ------------------------------------------------------------------------------ signing


async def outbound(
    run: hooks.HookRunner, sender: str | None, recipients: list[str], hook: str = "queue_outbound"
) -> hooks.Transaction:
    conn = connection(relaying=True)
    txn = begin(conn, address(sender) if sender else None, MailParams())
    txn.recipients = [(address(r), RcptParams()) for r in recipients]
    result, _ = await run.run(hook, conn)
    assert result.action is hooks.Action.CONT
    return txn


async def test_outbound_mail_of_our_users_is_signed() -> None:
    txn = await outbound(batv(), "alice@example.test", ["bob@far.test", "carol@example.test"])
    assert str(txn.sender) == tag("alice", "example.test") + "@example.test"
    txn = await outbound(batv({"sign_key": 1}), "alice@example.test", ["bob@far.test"])
    assert str(txn.sender) == tag("alice", "example.test", key=1) + "@example.test"


@pytest.mark.parametrize(
    ("sender", "recipients", "hook"),
    [
        (None, ["bob@far.test"], "queue_outbound"),
        ("alice@far.test", ["bob@far.test"], "queue_outbound"),  # not one of our domains
        ("alice@example.test", ["carol@example.test"], "queue_outbound"),  # stays here
        ("alice@example.test", ["bob@far.test"], "queue"),  # not a relaying client's mail
        ("prvs=0123abcdef=alice@example.test", ["bob@far.test"], "queue_outbound"),
        ("SRS0=HHHH=TT=far.test=bob@example.test", ["bob@far.test"], "queue_outbound"),
        ('"al ice"@example.test', ["bob@far.test"], "queue_outbound"),
        ("a" * 50 + "@example.test", ["bob@far.test"], "queue_outbound"),  # over 64 tagged
    ],
)
async def test_senders_not_signed(sender: str | None, recipients: list[str], hook: str) -> None:
    txn = await outbound(batv(), sender, recipients, hook)
    assert (str(txn.sender) if txn.sender else None) == sender


async def test_our_own_bounces_and_notices_reach_the_plain_address() -> None:
    run = batv()
    signed = tag("alice", "example.test") + "@example.test"
    report = hooks.DeliveryReport("Q1", "far.test", ("bob@far.test",))
    for now in (NOW, NOW + 300 * DAY_SECONDS):  # expired: still ours
        conn = connection()
        conn.listener = "queue"
        txn = begin(conn, address(signed))
        cast(Clocked, run.plugins.plugins[0]).now = clock(now)
        await run.run("bounce", conn, report)
        assert str(txn.sender) == "alice@example.test"
    conn = connection()
    conn.listener = "queue"
    forged = "prvs=0123abcdef=alice@example.test"
    txn = begin(conn, address(forged))
    await run.run("bounce", conn, report)
    assert str(txn.sender) == forged
    # A notice the queue delivers locally (a success DSN to a tagged sender).
    conn = connection()
    conn.listener = "queue"
    txn = begin(conn, None)
    txn.recipients = [(address(signed), RcptParams()), (address(forged), RcptParams())]
    await run.run("queue", conn)
    assert [str(a) for a, _ in txn.recipients] == ["alice@example.test", forged]


# ------------------------------------------------------------------------------ configuration


def test_shipped_config_needs_only_keys() -> None:
    config = shipped_config("batv")
    assert "keys is required" in config_error("batv", config)
    loaded = load("batv", {**config, "keys": [KEY0]})
    plugin = vars(loaded.plugins[0])
    assert (plugin["mode"], plugin["codec"].max_age, plugin["codec"].sign_key) == ("reject", 7, 0)
    assert plugin["sign_domains"] == frozenset({"example.test"})


@pytest.mark.parametrize(
    ("config", "text"),
    [
        ({"keys": [KEY0], "key": "x"}, "unknown keys ['key']"),
        ({}, "keys is required"),
        ({"keys": KEY0}, "keys: must be a list of 1 to 10 secrets"),
        ({"keys": []}, "keys: must be a list of 1 to 10 secrets"),
        ({"keys": [KEY0] * 11}, "keys: must be a list of 1 to 10 secrets"),
        ({"keys": [KEY0, "short"]}, "keys[1]: must be at least 16 characters"),
        ({"keys": [KEY0, 42]}, "keys[1]: must be a string"),
        ({"keys": [KEY0], "sign_key": 1}, "sign_key: keys[1] does not exist or is retired"),
        ({"keys": ["", KEY1]}, "sign_key: keys[0] does not exist or is retired"),
        ({"keys": [KEY0], "sign_key": "0"}, "sign_key: must be the index of a key"),
        ({"keys": [KEY0], "sign_key": False}, "sign_key: must be the index of a key"),
        ({"keys": [KEY0], "max_age": 0}, "max_age: must be a whole number of days from 1 to 365"),
        ({"keys": [KEY0], "max_age": 400}, "max_age: must be a whole number of days"),
        ({"keys": [KEY0], "mode": "drop"}, 'mode: must be "reject" or "tag" or "log"'),
        ({"keys": [KEY0], "sign_domains": "example.test"}, "sign_domains: must be a list"),
        ({"keys": [KEY0], "sign_domains": ["bad domain"]}, "sign_domains: 'bad domain' is not"),
        ({"keys": [KEY0], "exempt": "postmaster"}, "exempt: must be a list of local parts"),
        ({"keys": [KEY0], "exempt": [""]}, "exempt: must be a list of local parts"),
    ],
)
def test_config_errors(config: dict[str, object], text: str) -> None:
    assert text in config_error("batv", config)


async def test_a_retired_key_keeps_its_place() -> None:
    run = batv({"keys": ["", KEY1], "sign_key": 1})
    txn = await outbound(run, "alice@example.test", ["bob@far.test"])
    assert str(txn.sender) == tag("alice", "example.test", key=1) + "@example.test"
    assert (await rcpt(run, str(txn.sender)))[0] == "cont"
    old = tag("alice", "example.test", key=0) + "@example.test"
    assert (await rcpt(run, old))[0] == INVALID
