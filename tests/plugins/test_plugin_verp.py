"""verp: turning VERP on for ``senders``, keeping batv and srs off such messages, the way back
(RCPT of a VERP address, the rewrite to the base, the note and the header, our own notices
delivered locally), the configuration checks, and a property (any recipient, a clean verdict)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams

from .plugin_kit import begin, config_error, connection, load, message, shipped_config, verdict

LIST = "list-bounces@example.test"
BASES = {"senders": [LIST]}
BATV_KEY = "a batv key, long enough"
SRS_SECRET = "an srs secret, long enough"
HEADER = "X-VERP-Recipient"


def address(text: str) -> Address:
    local, _, domain = text.rpartition("@")
    return Address(local, domain)


def verp(
    config: dict[str, object] | None = None, *, before: tuple[str, ...] = ()
) -> hooks.HookRunner:
    configs: dict[str, dict[str, object]] = {
        "batv": {"keys": [BATV_KEY]},
        "srs": {"secret": SRS_SECRET, "domain": "example.test"},
    }
    return hooks.HookRunner(
        load("verp", BASES if config is None else config, before=before, configs=configs)
    )


async def rcpt(
    run: hooks.HookRunner, to: str, *, sender: str | None = None, relaying: bool = False
) -> tuple[str, hooks.Connection]:
    """RCPT TO:<to> in a new transaction; the reply ("cont" when no plugin decided)."""
    conn = connection(relaying=relaying)
    txn = begin(conn, address(sender) if sender else None)
    _, reply = await verdict(run, "rcpt", conn, address(to), RcptParams())
    if reply is None or reply.code < 400:
        txn.recipients.append((address(to), RcptParams()))
    return ("cont" if reply is None else str(reply)), conn


# ------------------------------------------------------------------------------ the way back


async def test_a_verp_address_is_accepted_and_delivered_to_the_base() -> None:
    run = verp()
    reply, conn = await rcpt(run, "list-bounces+alice=remote.example@example.test")
    assert reply == "250 2.1.5 Recipient OK"
    txn = conn.transaction
    assert txn is not None
    assert txn.notes["verp.recipient"] == "alice@remote.example"
    assert txn.notes["verp.recipients"] == {
        "list-bounces+alice=remote.example@example.test": "alice@remote.example"
    }
    assert not txn.relaying  # the base is local: the queue hook delivers it
    await run.run("data", conn)
    assert [str(a) for a, _ in txn.recipients] == [LIST]
    txn.message = message(b"X-VERP-Recipient: forged@evil.example\r\nSubject: b\r\n\r\nx\r\n")
    await run.run("data_post", conn)
    rendered = txn.message_bytes()
    assert rendered.count(b"X-VERP-Recipient:") == 1
    assert rendered.startswith(b"X-VERP-Recipient: alice@remote.example\r\n")


@pytest.mark.parametrize(
    "to",
    [
        LIST,  # the base itself: the plugins after this one decide
        "list-bounces+alice@example.test",  # not a whole VERP address
        "other-bounces+alice=remote.example@example.test",  # not a base of ours
        "list-bounces+alice=remote.example@elsewhere.test",
        "bob@example.test",
    ],
)
async def test_other_recipients_are_left_to_the_next_plugins(to: str) -> None:
    reply, conn = await rcpt(verp(), to)
    assert reply == "cont"
    assert conn.transaction is not None
    assert "verp.recipient" not in conn.transaction.notes


async def test_plain_mail_to_a_base_loses_a_forged_header_and_other_mail_keeps_it() -> None:
    run = verp()
    for to, kept in ((LIST, False), ("bob@example.test", True)):
        _, conn = await rcpt(run, to)
        txn = conn.transaction
        assert txn is not None
        txn.message = message(b"X-VERP-Recipient: forged@evil.example\r\n\r\nx\r\n")
        await run.run("data_post", conn)
        assert (b"forged@evil.example" in txn.message_bytes()) is kept


async def test_wildcard_domains_other_delimiters_and_remote_bases() -> None:
    run = verp(
        {
            "addresses": ["@lists.example.test", "news-bounces@far.test", "news@far.test"],
            "delimiters": "-=",
        }
    )
    reply, conn = await rcpt(run, "dev-carol=remote.example@lists.example.test")
    assert reply.startswith("250")
    assert conn.transaction is not None
    assert conn.transaction.notes["verp.recipient"] == "carol@remote.example"
    # The longer base wins: news-bounces's, not news's with "bounces-dave" as local part.
    reply, conn = await rcpt(run, "news-bounces-dave=remote.example@far.test")
    assert reply.startswith("250")
    txn = conn.transaction
    assert txn is not None
    assert txn.notes["verp.recipients"] == {
        "news-bounces-dave=remote.example@far.test": "dave@remote.example"
    }
    assert txn.relaying  # a base outside our domains: relayed to it
    await run.run("data", conn)
    assert [str(a) for a, _ in txn.recipients] == ["news-bounces@far.test"]


async def test_several_verp_recipients_and_the_plain_base_deliver_once() -> None:
    run = verp()
    conn = connection()
    txn = begin(conn, None)
    for to in (
        "list-bounces+alice=remote.example@example.test",
        "list-bounces+bob=other.example@example.test",
        LIST,
    ):
        await run.run("rcpt", conn, address(to), RcptParams())
        txn.recipients.append((address(to), RcptParams()))
    await run.run("data", conn)
    assert [str(a) for a, _ in txn.recipients] == [LIST]
    assert txn.notes["verp.recipient"] == "alice@remote.example"
    txn.message = message(b"Subject: b\r\n\r\nx\r\n")
    await run.run("data_post", conn)
    assert txn.message_bytes().startswith(
        b"X-VERP-Recipient: bob@other.example\r\nX-VERP-Recipient: alice@remote.example\r\n"
    )


async def test_our_own_notices_delivered_locally_reach_the_base() -> None:
    run = verp()
    conn = connection()
    conn.listener = "queue"
    txn = begin(conn, None)
    txn.recipients = [(address("list-bounces+alice=remote.example@example.test"), RcptParams())]
    txn.message = message(b"Subject: Undelivered Mail Returned to Sender\r\n\r\nx\r\n")
    result, _ = await run.run("queue", conn)
    assert result.action is hooks.Action.CONT  # queue_maildir (after it) stores it
    assert [str(a) for a, _ in txn.recipients] == [LIST]
    assert txn.notes["verp.recipient"] == "alice@remote.example"
    assert txn.message_bytes().startswith(b"X-VERP-Recipient: alice@remote.example\r\n")


async def test_batv_does_not_refuse_a_bounce_to_a_verp_address() -> None:
    run = verp(before=("batv",))
    assert (await rcpt(run, "list-bounces+alice=remote.example@example.test"))[0].startswith("250")
    # Without verp's answer batv would refuse it (an unsigned bounce), as it does this one.
    reply, _ = await rcpt(run, "list-bounces+alice@example.test")
    assert reply == "550 5.7.1 Bounce to an unsigned address refused (BATV)"


# ------------------------------------------------------------------------------ the way out


async def outbound(
    run: hooks.HookRunner, sender: str, *, params: MailParams | None = None
) -> hooks.Transaction:
    conn = connection(relaying=True)
    txn = begin(conn, address(sender), params)
    txn.recipients = [(address("alice@remote.example"), RcptParams())]
    result, _ = await run.run("queue_outbound", conn)
    assert result.action is hooks.Action.CONT  # the built-in queue takes it
    return txn


async def test_senders_get_verp() -> None:
    run = verp()
    txn = await outbound(run, "List-Bounces@EXAMPLE.test")
    assert txn.mail_params.verp == "+="
    assert txn.skip_plugins == {"batv", "srs"}
    txn = await outbound(run, "alice@example.test")
    assert txn.mail_params.verp is None
    assert txn.skip_plugins == set()


async def test_the_clients_own_delimiters_stay() -> None:
    run = verp({"senders": [LIST], "delimiters": "-="})
    txn = await outbound(run, LIST, params=MailParams(verp="+="))
    assert txn.mail_params.verp == "+="
    txn = await outbound(run, LIST)
    assert txn.mail_params.verp == "-="
    # XVERP from a client, sender not in senders: still kept away from batv and srs.
    txn = await outbound(verp({}), "alice@example.test", params=MailParams(verp="+="))
    assert txn.skip_plugins == {"batv", "srs"}


async def test_batv_and_srs_leave_a_verp_sender_alone() -> None:
    run = verp(before=("batv", "srs"))
    txn = await outbound(run, LIST)
    assert str(txn.sender) == LIST  # not prvs-signed: the tag would not verify once folded
    txn = await outbound(run, "news@far.test", params=MailParams(verp="+="))
    assert str(txn.sender) == "news@far.test"  # not SRS-rewritten
    # Without VERP both do their work, as before.
    assert str((await outbound(run, "alice@example.test")).sender).startswith("prvs=")
    assert str((await outbound(run, "news@far.test")).sender).startswith("SRS0=")
    # skip_plugins = [] lets them run on VERP mail too.
    txn = await outbound(verp({**BASES, "skip_plugins": []}, before=("batv",)), LIST)
    assert str(txn.sender).startswith("prvs=")


def test_hooks_stay_out_of_the_process_sandbox() -> None:
    loaded = load("verp", {**BASES, "sandbox": "process"})
    entries = [e for hook_entries in loaded.table.values() for e in hook_entries]
    assert {e.hook for e in entries} == {"rcpt", "data", "data_post", "queue", "queue_outbound"}
    assert not any(e.sandbox for e in entries)


# ------------------------------------------------------------------------------ configuration


def test_shipped_config_loads_and_does_nothing_until_told() -> None:
    loaded = load("verp", shipped_config("verp"))
    plugin = vars(loaded.plugins[0])
    assert plugin["senders"] == frozenset()
    assert plugin["delimiters"] == "+="
    assert plugin["skip"] == frozenset({"batv", "srs"})


def test_addresses_default_to_senders() -> None:
    plugin = vars(load("verp", BASES).plugins[0])
    assert plugin["bases"].exact == {"example.test": ("list-bounces",)}
    plugin = vars(load("verp", {**BASES, "addresses": []}).plugins[0])
    assert plugin["bases"].exact == {}


@pytest.mark.parametrize(
    ("config", "text"),
    [
        ({"sender": [LIST]}, "unknown keys ['sender']"),
        ({"senders": LIST}, "senders: must be a list of strings"),
        ({"senders": ["list-bounces"]}, "senders: 'list-bounces' is not an address"),
        ({"senders": ["a@bad domain"]}, "senders: 'bad domain' is not a domain name"),
        ({"addresses": ["@"]}, "addresses: '' is not a domain name"),
        ({"addresses": [7]}, "addresses: must be a list of strings"),
        ({"delimiters": "+"}, 'delimiters: must be two characters from "-=+"'),
        ({"delimiters": "+-"}, "the second not"),
        ({"delimiters": "ab"}, 'delimiters: must be two characters from "-=+"'),
        ({"delimiters": ["+", "="]}, 'delimiters: must be two characters from "-=+"'),
        ({"skip_plugins": "batv"}, "skip_plugins: must be a list of strings"),
        ({"skip_plugins": ["no such"]}, "skip_plugins: must be a list of plugin names"),
    ],
)
def test_config_errors(config: dict[str, object], text: str) -> None:
    assert text in config_error("verp", config)


# ------------------------------------------------------------------------------ property


@given(st.text(max_size=40), st.sampled_from(["example.test", "EXAMPLE.test.", "x", ""]))
async def test_any_recipient_gets_a_clean_verdict(local: str, domain: str) -> None:
    run = verp({"addresses": [LIST, "@example.test"]})
    conn = connection()
    begin(conn, None)
    result, _ = await run.run("rcpt", conn, Address(local, domain), RcptParams())
    assert result.action in (hooks.Action.CONT, hooks.Action.OK)
