"""srs: the SRS0/SRS1 encoding (against vectors made by postsrsd, i.e. libsrs2's construction),
time stamps and expiry, hash case and separators, the hooks (reverse at RCPT, forward at the
queue hooks, our own bounces), the configuration checks, and properties of the decoder."""

from __future__ import annotations

import logging
import string
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins._envelope_tags import DAY_SECONDS, is_srs_local
from plugins.srs import (
    BASE32,
    Codec,
    Decoded,
    Status,
    _split_srs1,
    decode_timestamp,
    encode_timestamp,
)
from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams, make_address

from .plugin_kit import (
    ENV,
    begin,
    config_error,
    connection,
    load,
    shipped_config,
    verdict,
)

SECRET = "0123456789abcdef0123"
KEY = SECRET.encode()
DAY = 20782  # 302 modulo 1024, "JO": the day the postsrsd vectors below were made
NOW = DAY * DAY_SECONDS + 3600.0
OURS = "mx.example.test"  # the plugin's default domain: plugin_kit's hostname

# postsrsd 1.10 (-a+ -d srs.example) with SECRET on DAY: sender -> its SRS local part.
POSTSRSD = [
    ("alice", "sender.example", "SRS0+0Gwo=JO=sender.example=alice"),
    ("Alice.Smith", "Sender.Example", "SRS0+7SNw=JO=Sender.Example=Alice.Smith"),
    ("b+ob=x", "sub.sender.example", "SRS0++OO7=JO=sub.sender.example=b+ob=x"),
    (
        "SRS0=abcd=RA=sender.example=alice",
        "fwd.example",
        "SRS1+Cqs2=fwd.example==abcd=RA=sender.example=alice",
    ),
    (
        "SRS1=XYZW=first.example==abcd=RA=sender.example=alice",
        "fwd.example",
        "SRS1+49jZ=first.example==abcd=RA=sender.example=alice",
    ),
]


class Clocked(Protocol):
    now: Callable[[], float]


def codec(**kwargs: object) -> Codec:
    return Codec((KEY,), **kwargs)  # type: ignore[arg-type]  # separator / max_age by name


def srs(config: dict[str, object] | None = None, *, now: float = NOW) -> hooks.HookRunner:
    loaded = load("srs", {"secret": SECRET, **(config or {})})
    cast(Clocked, loaded.plugins[0]).now = lambda: now
    return hooks.HookRunner(loaded)


def srs_address(sender: str, *, day: int = DAY, secret: bytes = KEY, sep: str = "=") -> str:
    local, _, domain = sender.rpartition("@")
    return Codec((secret,), separator=sep).forward(local, domain, day) + "@" + OURS


def address(text: str) -> Address:
    local, _, domain = text.rpartition("@")
    return Address(local, domain)


# ------------------------------------------------------------------------------ encoding


@pytest.mark.parametrize(("local", "domain", "expected"), POSTSRSD)
def test_forward_matches_postsrsd(local: str, domain: str, expected: str) -> None:
    assert codec(separator="+").forward(local, domain, DAY) == expected


@pytest.mark.parametrize(("local", "domain", "srs_local"), POSTSRSD)
def test_reverse_of_postsrsd_addresses(local: str, domain: str, srs_local: str) -> None:
    decoded = codec().reverse(srs_local, DAY)
    assert decoded.status is Status.VALID
    if srs_local.startswith("SRS0"):
        assert (decoded.local, decoded.domain) == (local, domain)
    else:  # SRS1 goes back to the first forwarder, as its SRS0
        assert decoded.local.startswith("SRS0=abcd=RA=sender.example=alice")
        assert decoded.domain in ("fwd.example", "first.example")


def test_srs0_layout_and_separators() -> None:
    for sep in "=+-":
        local = codec(separator=sep).forward("alice", "sender.example", DAY)
        tag, signature, stamp, domain, user = local[:4], local[5:9], *local[10:].split("=", 2)
        assert (tag, local[4], stamp, domain, user) == (
            "SRS0",
            sep,
            "JO",
            "sender.example",
            "alice",
        )
        assert len(signature) == 4
        # Whatever we are configured with, every separator is accepted back.
        assert codec(separator="=").reverse(local, DAY) == Decoded(
            Status.VALID, "alice", "sender.example"
        )


def test_srs1_of_srs0_keeps_the_first_forwarder_and_reverses_to_it() -> None:
    first = codec(separator="-").forward("alice", "sender.example", DAY)
    assert first.startswith("SRS0-")
    second = codec().forward(first, "fwd.example", DAY)
    assert second.startswith("SRS1=")
    assert "=fwd.example=-" in second
    # A third forwarder keeps the first forwarder, and signs anew with its own secret.
    third = Codec((b"another secret, 16+",)).forward(second, "hop2.example", DAY)
    assert third.split("=", 2)[2] == second.split("=", 2)[2]
    assert codec().reverse(second, DAY + 900) == Decoded(Status.VALID, first, "fwd.example")


def test_timestamps_round_trip_case_insensitively() -> None:
    for day in range(0, 3000, 7):
        stamp = encode_timestamp(day)
        assert len(stamp) == 2
        assert set(stamp) <= set(BASE32)
        assert decode_timestamp(stamp) == day % 1024
        assert decode_timestamp(stamp.lower()) == day % 1024
    assert encode_timestamp(DAY) == "JO"
    for bad in ("", "A", "ABC", "1A", "A!", "Aé", "ß"):
        assert decode_timestamp(bad) is None


@pytest.mark.parametrize(
    ("age", "status"),
    [(0, Status.VALID), (21, Status.VALID), (22, Status.EXPIRED), (1000, Status.EXPIRED)],
)
def test_expiry_after_max_age_days(age: int, status: Status) -> None:
    local = codec().forward("alice", "sender.example", DAY)
    assert codec().reverse(local, DAY + age).status is status
    # The slot wraps every 1024 days: counted modulo, across the wrap too.
    wrapped = codec().forward("alice", "sender.example", 1020)
    assert codec().reverse(wrapped, 1020 + age).status is status
    # A stamp from the "future" is as good as expired (libsrs2 counts it the same way).
    assert codec().reverse(local, DAY - 1).status is Status.EXPIRED
    assert codec(max_age=7).reverse(local, DAY + 8).status is Status.EXPIRED


def test_hash_compared_case_insensitively_and_any_secret_verifies() -> None:
    local = codec().forward("Alice", "Sender.Example", DAY)
    for variant in (local, local.lower(), local.upper()):
        assert codec().reverse(variant, DAY).status is Status.VALID
    signature = local[5:9]
    flipped = local.replace(signature, ("B" if signature[0] != "B" else "C") + signature[1:], 1)
    assert codec().reverse(flipped, DAY).status is Status.BAD_HASH
    rotated = Codec((b"the new secret, 16+", KEY))
    assert rotated.reverse(local, DAY).status is Status.VALID  # the old secret still verifies
    assert rotated.forward("alice", "sender.example", DAY) != codec().forward(
        "alice", "sender.example", DAY
    )
    assert Codec((b"a stranger's secret",)).reverse(local, DAY).status is Status.BAD_HASH


@pytest.mark.parametrize(
    ("local", "status"),
    [
        ("alice", Status.NOT_SRS),
        ("SRS", Status.NOT_SRS),
        ("SRS0", Status.NOT_SRS),
        ("SRS0x0Gwo=JO=sender.example=alice", Status.NOT_SRS),
        ("SRS2=0Gwo=JO=sender.example=alice", Status.NOT_SRS),
        ("SRS0=", Status.MALFORMED),
        ("SRS0=0Gwo=JO=sender.example", Status.MALFORMED),
        ("SRS0=0Gwo=JO==alice", Status.MALFORMED),
        ("SRS0=0Gwo=J1=sender.example=alice", Status.MALFORMED),
        ("SRS0=0Gwo=JOO=sender.example=alice", Status.MALFORMED),
        ("SRS0=0Gw=JO=sender.example=alice", Status.BAD_HASH),
        ("SRS0=0Gwoo=JO=sender.example=alice", Status.BAD_HASH),
        ("SRS1=Cqs2=fwd.example=", Status.MALFORMED),
        ("SRS1=Cqs2=fwd.example=abcd=RA=x=y", Status.MALFORMED),
        ("SRS1=Cqs2==", Status.MALFORMED),
        ("SRS1=Cqs3=fwd.example==abcd=RA=sender.example=alice", Status.BAD_HASH),
    ],
)
def test_malformed_and_forged_addresses(local: str, status: Status) -> None:
    assert codec().reverse(local, DAY).status is status


# ------------------------------------------------------------------------------ properties

DOT_ATOM = st.from_regex(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(\.[A-Za-z0-9_+-]{1,8}){0,2}", fullmatch=True
)
DOMAIN = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,2}\.[a-z]{2,6}", fullmatch=True)


SRS_LOCAL = st.builds(
    lambda local, domain, day: codec().forward(local, domain, day),
    DOT_ATOM,
    DOMAIN,
    st.integers(0, 5000),
)


@given(
    st.one_of(DOT_ATOM, SRS_LOCAL),
    DOMAIN,
    st.integers(0, 100_000),
    st.integers(0, 21),
    st.sampled_from("=+-"),
)
def test_round_trip(local: str, domain: str, day: int, age: int, sep: str) -> None:
    encoded = codec(separator=sep).forward(local, domain, day)
    decoded = codec().reverse(encoded, day + age)
    swapped = codec().reverse(encoded.swapcase(), day + age)  # a relay that changed case
    assert swapped.status is Status.VALID
    assert (swapped.local.lower(), swapped.domain.lower()) == (
        decoded.local.lower(),
        decoded.domain.lower(),
    )
    if is_srs_local(local) and local[:4].upper() == "SRS1" and _split_srs1(local[5:]):
        # An SRS1 stays one, pointing at the same first forwarder.
        _, first, rest = local[5:].split("=", 2)
        assert decoded == Decoded(Status.VALID, "SRS0" + rest, first)
    elif is_srs_local(local) and local[:4].upper() == "SRS0":
        assert decoded == Decoded(Status.VALID, "SRS0" + local[4:], domain)
    else:
        assert decoded == Decoded(Status.VALID, local, domain)


@given(st.text(max_size=80), st.integers(-5000, 5000))
def test_any_text_decodes_to_a_verdict(text: str, day: int) -> None:
    decoded = codec().reverse(text, day)
    assert isinstance(decoded.status, Status)
    if decoded.status is not Status.VALID:
        assert (decoded.local, decoded.domain) == ("", "")


@given(
    st.text(alphabet=st.sampled_from("SRSsrs01=+-" + string.ascii_letters + "é\x00"), max_size=40)
)
def test_srs_shaped_text_decodes_to_a_verdict(text: str) -> None:
    assert isinstance(codec().reverse("SRS0=" + text, DAY).status, Status)
    assert isinstance(codec().reverse("SRS1=" + text, DAY).status, Status)


@given(st.text(max_size=70), st.text(max_size=70))
def test_any_text_makes_an_address_or_none(local: str, domain: str) -> None:
    made = make_address(local, domain)
    assert made is None or isinstance(made, Address)


# ------------------------------------------------------------------------------ hooks


async def rcpt(run: hooks.HookRunner, rcpt: str, sender: str | None = "mailer@far.test") -> str:
    conn = connection()
    begin(conn, address(sender) if sender else None)
    _, reply = await verdict(run, "rcpt", conn, address(rcpt), RcptParams())
    return "cont" if reply is None else str(reply)


async def test_a_valid_srs_recipient_is_accepted_and_reversed_at_data() -> None:
    run = srs()
    conn = connection()
    txn = begin(conn, None)
    srs_rcpt = address(srs_address("alice@sender.example"))
    _result, reply = await verdict(run, "rcpt", conn, srs_rcpt, RcptParams(notify=("FAILURE",)))
    assert str(reply) == "250 2.1.5 Recipient OK"
    assert txn.relaying is True
    assert conn.relaying is False
    txn.recipients.append((srs_rcpt, RcptParams(notify=("FAILURE",))))
    txn.recipients.append((Address("bob", "example.test"), RcptParams()))
    await run.run("data", conn)
    assert [(str(a), p.notify) for a, p in txn.recipients] == [
        ("alice@sender.example", ("FAILURE",)),
        ("bob@example.test", ()),
    ]
    assert txn.notes["srs.reversed"] == {str(srs_rcpt): "alice@sender.example"}


async def test_refusals_of_forged_and_expired_addresses() -> None:
    run = srs()
    good = srs_address("alice@sender.example")
    forged = good.replace("alice@", "mallory@")
    assert await rcpt(run, forged) == "550 5.1.1 Invalid SRS address: bad signature"
    assert await rcpt(run, "SRS0=xx@" + OURS) == "550 5.1.1 Invalid SRS address: malformed"
    old = srs_address("alice@sender.example", day=DAY - 22)
    assert await rcpt(run, old) == "550 5.7.1 SRS address expired"
    assert await rcpt(run, srs_address("alice@sender.example", day=DAY - 21)) == (
        "250 2.1.5 Recipient OK"
    )
    # Someone else's secret: as forged as a changed address.
    theirs = srs_address("alice@sender.example", secret=b"not our secret at all")
    assert await rcpt(run, theirs) == "550 5.1.1 Invalid SRS address: bad signature"


async def test_other_addresses_are_left_to_other_plugins() -> None:
    run = srs()
    assert await rcpt(run, "bob@" + OURS) == "cont"
    assert await rcpt(run, srs_address("alice@sender.example").replace(OURS, "x.test")) == "cont"
    assert await rcpt(run, "bob@example.test") == "cont"


async def test_reverse_bounces_only() -> None:
    run = srs({"reverse": "bounces"})
    good = srs_address("alice@sender.example")
    assert await rcpt(run, good, sender=None) == "250 2.1.5 Recipient OK"
    assert await rcpt(run, good, sender="vacation@far.test") == (
        "550 5.7.1 SRS address accepts bounces only (MAIL FROM:<>)"
    )
    assert await rcpt(srs(), good, sender="vacation@far.test") == "250 2.1.5 Recipient OK"


async def test_runs_before_rcpt_to_host_list_for_a_local_srs_domain() -> None:
    # With `domain` one of the local domains, rcpt_to_host_list would accept anything there:
    # the srs hook runs first (priority -20) and refuses a forged address.
    loaded = load(
        "srs",
        {"secret": SECRET, "domain": "example.test"},
        before=["rcpt_to_host_list"],
    )
    cast(Clocked, loaded.plugins[1]).now = lambda: NOW
    run = hooks.HookRunner(loaded)
    forged = "SRS0=AAAA=JO=sender.example=alice@example.test"
    assert await rcpt(run, forged) == "550 5.1.1 Invalid SRS address: bad signature"
    assert await rcpt(run, "bob@example.test") == "250 2.1.5 Recipient OK"


async def queued(
    run: hooks.HookRunner,
    sender: str | None,
    recipients: list[str],
    *,
    hook: str = "queue_outbound",
    listener: str = "mx",
) -> tuple[hooks.Result, hooks.Transaction]:
    conn = connection()
    conn.listener = listener
    txn = begin(conn, address(sender) if sender else None, MailParams())
    txn.recipients = [(address(r), RcptParams()) for r in recipients]
    result, _ = await run.run(hook, conn)
    return result, txn


@pytest.mark.parametrize("hook", ["queue", "queue_outbound"])
async def test_forwarded_sender_is_rewritten(hook: str) -> None:
    result, txn = await queued(srs(), "alice@sender.example", ["bob@far.test"], hook=hook)
    assert result.action is hooks.Action.CONT
    assert str(txn.sender) == srs_address("alice@sender.example")
    assert txn.notes["srs.original_sender"] == "alice@sender.example"
    assert codec().reverse(str(txn.sender).rsplit("@", 1)[0], DAY) == Decoded(
        Status.VALID, "alice", "sender.example"
    )


@pytest.mark.parametrize(
    ("sender", "recipients", "config"),
    [
        (None, ["bob@far.test"], {}),  # the null sender
        ("carol@example.test", ["bob@far.test"], {}),  # one of ours
        ("carol@sub.partner.test", ["bob@far.test"], {"exclude_domains": ["SUB.partner.test."]}),
        ("carol@a.b.partner.test", ["bob@far.test"], {"exclude_domains": [".partner.test"]}),
        ("SRS0=x@" + OURS, ["bob@far.test"], {}),  # already at our SRS domain
        ("alice@sender.example", ["bob@example.test"], {}),  # stays here: rewrite = "remote"
        ('"al ice"@sender.example', ["bob@far.test"], {}),  # no SRS form for a quoted local
        ("alice@[192.0.2.1]", ["bob@far.test"], {}),
        ("a" * 40 + "@sender.example", ["bob@far.test"], {}),  # its SRS form: over 64 octets
    ],
)
async def test_senders_left_alone(
    sender: str | None, recipients: list[str], config: dict[str, object]
) -> None:
    _, txn = await queued(srs(config), sender, recipients)
    assert (str(txn.sender) if txn.sender else None) == sender
    assert "srs.original_sender" not in txn.notes


async def test_a_parent_exclusion_covers_subdomains_only() -> None:
    run = srs({"exclude_domains": [".partner.test"]})
    _, txn = await queued(run, "carol@partner.test", ["bob@far.test"])
    assert txn.sender is not None
    assert txn.sender.domain == OURS


async def test_rewrite_all_and_a_custom_domain() -> None:
    run = srs({"rewrite": "all", "domain": "SRS.Example.COM.", "separator": "-"})
    _, txn = await queued(run, "alice@sender.example", ["bob@example.test"], hook="queue")
    assert txn.sender is not None
    assert txn.sender.domain == "srs.example.com"
    assert txn.sender.local_part.startswith("SRS0-")


async def test_an_srs_address_is_not_delivered_locally() -> None:
    # The built-in queue's local delivery (listener "queue") of a notice to our SRS domain.
    good = srs_address("alice@sender.example")
    result, _ = await queued(srs(), None, [good], hook="queue", listener="queue")
    assert result.action is hooks.Action.DENY
    assert hooks.reply_for("queue", result).code == 550
    fine, _ = await queued(srs(), None, ["bob@example.test"], hook="queue", listener="queue")
    assert fine.action is hooks.Action.CONT


async def test_our_own_bounce_is_readdressed_to_the_original_sender() -> None:
    run = srs()
    report = hooks.DeliveryReport("Q1", "far.test", ("bob@far.test",))
    for day in (DAY, DAY - 300):  # expired for mail from outside, not for our own queue
        conn = connection()
        conn.listener = "queue"
        txn = begin(conn, address(srs_address("alice@sender.example", day=day)))
        await run.run("bounce", conn, report)
        assert str(txn.sender) == "alice@sender.example"
    conn = connection()
    conn.listener = "queue"
    forged = srs_address("alice@sender.example").replace("alice@", "eve@")
    txn = begin(conn, address(forged))
    await run.run("bounce", conn, report)
    assert str(txn.sender) == forged


# ------------------------------------------------------------------------------ configuration


def test_hooks_stay_out_of_the_process_sandbox() -> None:
    # Envelope edits do not cross back from a worker process: a top-level "process" is moot.
    loaded = load("srs", {"secret": SECRET, "sandbox": "process"})
    entries = [e for hook_entries in loaded.table.values() for e in hook_entries]
    assert len(entries) == 5
    assert not any(e.sandbox for e in entries)


def test_shipped_config_needs_only_a_secret() -> None:
    config = shipped_config("srs")
    assert "secret" not in config
    assert "secret is required" in config_error("srs", config)
    loaded = load("srs", {**config, "secret": SECRET})
    plugin = loaded.plugins[0]
    assert vars(plugin)["domain"] == ENV.hostname
    # The plugin's module is loaded under a name of its own: compare values, not classes.
    loaded_codec = vars(plugin)["codec"]
    assert (loaded_codec.secrets, loaded_codec.separator, loaded_codec.max_age) == ((KEY,), "=", 21)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"secret": SECRET, "secrets": "x"}, "unknown keys ['secrets']"),
        ({}, "secret is required (or secret_file)"),
        ({"secret": SECRET, "secret_file": "f"}, "secret and secret_file: set one of them"),
        ({"secret": "short"}, "secret: must be at least 16 characters"),
        ({"secret": 1234567890123456789}, "secret: must be a string"),
        ({"secret": " " + SECRET}, "secret: must be at least 16 characters without"),
        ({"secret": SECRET, "separator": "/"}, 'separator: must be "=", "+" or "-"'),
        ({"secret": SECRET, "separator": "=="}, 'separator: must be "=", "+" or "-"'),
        ({"secret": SECRET, "max_age": 0}, "max_age: must be a whole number of days from 1"),
        ({"secret": SECRET, "max_age": 366}, "max_age: must be a whole number of days from 1"),
        ({"secret": SECRET, "max_age": True}, "max_age: must be a whole number"),
        ({"secret": SECRET, "max_age": "21"}, "max_age: must be a whole number"),
        ({"secret": SECRET, "domain": "not a domain"}, "domain: 'not a domain' is not a domain"),
        ({"secret": SECRET, "domain": "[192.0.2.1]"}, "domain: '[192.0.2.1]': an address literal"),
        ({"secret": SECRET, "exclude_domains": "a.test"}, "exclude_domains: must be a list"),
        ({"secret": SECRET, "exclude_domains": ["a..test"]}, "exclude_domains: 'a..test' is not"),
        ({"secret": SECRET, "exclude_domains": [".."]}, "exclude_domains: '.' is not"),
        ({"secret": SECRET, "exclude_domains": [7]}, "exclude_domains: must be a list"),
        ({"secret": SECRET, "rewrite": "always"}, 'rewrite: must be "remote" or "all"'),
        ({"secret": SECRET, "reverse": "none"}, 'reverse: must be "any" or "bounces"'),
    ],
)
def test_config_errors(config: dict[str, object], message: str) -> None:
    assert message in config_error("srs", config)


def test_secret_file_rotation(tmp_path: Path) -> None:
    secrets = tmp_path / "srs.secrets"
    secrets.write_text("# new first\n\nthe new secret, long enough\n" + SECRET + "\n")
    env = hooks.PluginEnv(hostname=OURS, local_domains=("example.test",), config_dir=tmp_path)
    loaded = hooks.load_plugins(["srs"], configs={"srs": {"secret_file": "srs.secrets"}}, env=env)
    plugin_codec = vars(loaded.plugins[0])["codec"]
    assert plugin_codec.secrets == (b"the new secret, long enough", KEY)
    old = codec().forward("alice", "sender.example", DAY)
    assert plugin_codec.reverse(old, DAY).status.value == "valid"
    assert plugin_codec.forward("alice", "sender.example", DAY) != old


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "secret_file: cannot read"),
        ("# nothing\n\n", "holds no secret"),
        ("short\n", "line 1: must be at least 16 characters"),
        (b"\xff\xfe not utf-8 at all", "not UTF-8 text"),
    ],
)
def test_secret_file_errors(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    path = tmp_path / "srs.secrets"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    env = hooks.PluginEnv(hostname=OURS, config_dir=tmp_path)
    with pytest.raises(hooks.PluginLoadError, match="configuration refused") as info:
        hooks.load_plugins(["srs"], configs={"srs": {"secret_file": "srs.secrets"}}, env=env)
    assert message in str(info.value)


def test_secrets_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    srs()
    assert SECRET not in caplog.text
