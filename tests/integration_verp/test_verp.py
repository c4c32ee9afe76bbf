"""VERP through the daemon (``app.run``) over real loopback sockets: the XVERP keyword and its
refusals; a VERP message reaching an aiosmtpd server as one transaction per recipient, each with
its own sender, on one connection; a VERP entry surviving a restart; a bounce to a VERP address
of ours (and our own queue's bounce) delivered to the base mailbox with the decoded recipient
noted; the plugin's ``senders`` without XVERP.
The spool tests reach the same delivery path from an entry written as ``submit`` writes it."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import trio

from tests.helpers.maildir import mailbox_new
from tests.integration_envelope.kit import (
    CAP,
    message,
    rcpt_reply,
    send,
    wait_files,
    wait_received,
)
from tests.integration_plugins.kit import running_app
from tests.smtpclient.peers import aiosmtpd_server
from trio_mta.queue import Envelope, Recipient

from .kit import (
    LIST,
    OUTSIDE,
    Downstream,
    connect,
    dead_port,
    mail_reply,
    send_xverp,
    store_in_spool,
    verp_config,
)

THREE = ("alice@remote.example", "bob@remote.example", "carol@remote.example")
BOUNCE = (
    b"From: MAILER-DAEMON@remote.example\r\nSubject: Undeliverable\r\n\r\n"
    b"Your message could not be delivered.\r\n"
)


def verp_of(recipient: str) -> str:
    local, _, domain = recipient.partition("@")
    return f"list-bounces+{local}={domain}@example.test"


async def test_xverp_is_offered_to_relaying_clients_only(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with running_app(verp_config(tmp_path / "var", dead_port())) as mta:
            ours = await connect(mta)
            await ours.send("EHLO client.test\r\n")
            assert "XVERP" in (await ours.reply()).lines
            await ours.stream.aclose()
            outside = await connect(mta, OUTSIDE)
            await outside.send("EHLO outside.test\r\n")
            assert "XVERP" not in (await outside.reply()).lines
            await outside.stream.aclose()


async def test_without_the_queue_nobody_is_offered_xverp(tmp_path: Path) -> None:
    config = verp_config(tmp_path / "var", dead_port())
    config = attrs.evolve(config, queue=attrs.evolve(config.queue, enabled=False))
    with trio.fail_after(CAP):
        async with running_app(config) as mta:
            ours = await connect(mta)
            await ours.send("EHLO client.test\r\n")
            assert "XVERP" not in (await ours.reply()).lines
            await ours.stream.aclose()
            assert await mail_reply(mta, f"MAIL FROM:<{LIST}> XVERP") == (
                "555 5.5.4 Unsupported parameter XVERP (clients that may relay only)"
            )


async def test_xverp_refusals(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with running_app(verp_config(tmp_path / "var", dead_port())) as mta:
            mail = f"MAIL FROM:<{LIST}>"
            assert await mail_reply(mta, f"{mail} XVERP") == "250 2.1.0 Sender OK"
            assert await mail_reply(mta, f"{mail} XVERP=-=") == "250 2.1.0 Sender OK"
            for bad in (" XVERP=", " XVERP=+", " XVERP=ab", " XVERP=+=+"):
                assert await mail_reply(mta, mail + bad) == (
                    "555 5.5.4 XVERP needs two delimiter characters from -=+"
                )
            assert await mail_reply(mta, "MAIL FROM:<> XVERP") == (
                "555 5.5.4 XVERP requires a non-null sender"
            )
            assert await mail_reply(mta, f"{mail} XVERP", source=OUTSIDE) == (
                "555 5.5.4 Unsupported parameter XVERP (clients that may relay only)"
            )
            assert await mail_reply(mta, f"{mail}", source=OUTSIDE) == "250 2.1.0 Sender OK"
            # Every other unknown parameter is refused as before.
            assert await mail_reply(mta, f"{mail} XFOO") == "555 5.5.4 Unsupported parameter XFOO"


async def test_a_verp_entry_in_the_spool_goes_out_one_transaction_per_recipient(
    tmp_path: Path,
) -> None:
    """What a daemon that accepted ``XVERP`` mail and stopped leaves behind is delivered after
    the restart: three transactions, one sender each, on one connection."""
    var = tmp_path / "var"
    downstream = Downstream()
    with trio.fail_after(CAP):
        async with aiosmtpd_server(downstream) as port:
            config = verp_config(var, port)
            entry = Envelope(
                id="verp1",
                sender=LIST,
                recipients=tuple(Recipient(r) for r in THREE),
                created=0.0,
                next_attempt=0.0,
                verp="+=",
            )
            await store_in_spool(config, entry, message("spooled", LIST))
            async with running_app(config):
                received = await wait_received(downstream, 3)
    assert sorted((r.mail_from, r.rcpt_tos) for r in received) == [
        (verp_of(r), (r,)) for r in THREE
    ]
    assert all(b"Subject: spooled" in r.content for r in received)
    assert downstream.sessions == 1


async def test_xverp_to_three_recipients_is_three_transactions(tmp_path: Path) -> None:
    downstream = Downstream()
    with trio.fail_after(CAP):
        async with aiosmtpd_server(downstream) as port:
            config = verp_config(tmp_path / "var", port)
            async with running_app(config) as mta:
                answer = await send_xverp(mta, THREE, message("list post", LIST))
                assert answer.startswith("250 2.0.0 Message queued as "), answer
                [first, *_] = await wait_received(downstream)
                assert first.mail_from != LIST  # at once, rather than wait for three in vain
                received = await wait_received(downstream, 3)
    assert sorted((r.mail_from, r.rcpt_tos) for r in received) == [
        (verp_of(r), (r,)) for r in THREE
    ]
    assert downstream.sessions == 1


async def test_xverp_survives_a_restart_between_acceptance_and_delivery(tmp_path: Path) -> None:
    var = tmp_path / "var"
    downstream = Downstream()
    with trio.fail_after(CAP):
        # First run: the destination is down, the message waits in the spool.
        async with running_app(verp_config(var, dead_port())) as mta:
            answer = await send_xverp(
                mta, THREE, message("before restart", LIST), param=" XVERP=-="
            )
            assert answer.startswith("250 "), answer
        [spooled] = (var / "queue" / "queue").glob("*.env")
        assert json.loads(spooled.read_bytes())["verp"] == "-="
        # Second run: it is up; the message goes out as it was asked for.
        async with aiosmtpd_server(downstream) as port, running_app(verp_config(var, port)):
            received = await wait_received(downstream, 3)
    assert sorted(r.mail_from for r in received) == [
        f"list-bounces-{r.replace('@', '=')}@example.test" for r in THREE
    ]


async def test_senders_get_verp_without_xverp(tmp_path: Path) -> None:
    downstream = Downstream()
    with trio.fail_after(CAP):
        async with aiosmtpd_server(downstream) as port:
            config = verp_config(tmp_path / "var", port, {"senders": [LIST]})
            async with running_app(config) as mta:
                answer = await send(mta, LIST, list(THREE[:2]), message("no xverp", LIST))
                assert answer.code == 250, answer
                [first, *_] = await wait_received(downstream)
                assert first.mail_from != LIST  # at once, rather than wait for more in vain
                answer = await send(mta, "alice@example.test", ["bob@remote.example"], message("x"))
                assert answer.code == 250, answer
                received = await wait_received(downstream, 3)
    assert (
        sorted((r.mail_from, r.rcpt_tos) for r in received)
        == sorted(
            [(verp_of(r), (r,)) for r in THREE[:2]]
            # Other senders are not touched (batv signs them as usual).
            + [(next(r.mail_from for r in received if r.mail_from.startswith("prvs=")), THREE[1:2])]
        )
    )


async def test_a_bounce_to_a_verp_address_reaches_the_base_mailbox(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with trio.fail_after(CAP):
        async with running_app(verp_config(var, dead_port())) as mta:
            # From an outside MTA, MAIL FROM:<>: batv refuses an unsigned bounce...
            assert await rcpt_reply(mta, "", "list-bounces+x@example.test", source=OUTSIDE) == (
                "550 5.7.1 Bounce to an unsigned address refused (BATV)"
            )
            # ...a VERP address of ours is taken, for the base mailbox.
            to = verp_of("alice@remote.example")
            answer = await send(mta, "", [to], BOUNCE, source=OUTSIDE)
            assert answer.code == 250, answer
            [stored] = await wait_files(mailbox_new(var, "example.test", "list-bounces"))
    assert b"\r\nX-VERP-Recipient: alice@remote.example\r\n" in stored
    assert stored.count(b"X-VERP-Recipient:") == 1
    assert stored.endswith(BOUNCE)
    assert b"for <list-bounces@example.test>" in stored  # the base, already in Received:
    assert not (var / "maildir" / "example.test" / to.split("@")[0]).exists()


async def test_our_own_bounce_goes_to_the_verp_address_and_back_to_the_base(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    downstream = Downstream(rcpt={"gone@remote.example": "550 5.1.1 No such user here"})
    with trio.fail_after(CAP):
        async with aiosmtpd_server(downstream) as port:
            config = verp_config(var, port)
            entry = Envelope(
                id="verp2",
                sender=LIST,
                recipients=(Recipient("alice@remote.example"), Recipient("gone@remote.example")),
                created=0.0,
                next_attempt=0.0,
                verp="+=",
            )
            await store_in_spool(config, entry, message("to a gone member", LIST))
            async with running_app(config):
                [delivered] = await wait_received(downstream)
                [dsn] = await wait_files(mailbox_new(var, "example.test", "list-bounces"))
    assert (delivered.mail_from, delivered.rcpt_tos) == (
        verp_of("alice@remote.example"),
        ("alice@remote.example",),
    )
    # The failure report went to list-bounces+gone=remote.example@example.test (ours, local):
    # delivered to the base, its recipient decoded.
    assert dsn.startswith(b"X-VERP-Recipient: gone@remote.example\r\n")
    assert dsn.count(b"X-VERP-Recipient:") == 1
    assert f"To: <{verp_of('gone@remote.example')}>".encode() in dsn
    assert b"Final-Recipient: rfc822; gone@remote.example" in dsn
    assert b"alice@remote.example" not in dsn.split(b"Subject: to a gone member")[0]
