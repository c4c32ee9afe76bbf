"""Open-relay defence (RFC 5321 §3.6.1): an unauthenticated stranger on the MX listener, with the
default plugins, cannot get mail forwarded by any of the old addressing tricks. Each case is a
real socket; nothing may be stored for a refused recipient, and nothing is ever relayed."""

from __future__ import annotations

import pytest
import trio

from tests.helpers.maildir import all_messages, bodies_in

from .conftest import AuthMTA

CAP = 20
STRANGER = "stranger@other.example"
ROUTING = "550 5.7.1 Relaying denied: routing characters (% ! @) in the local part"
RELAY_DENIED = "550 5.7.1 Relaying denied"
SYNTAX = "553 5.1.3 Invalid address syntax"
MESSAGE = b"Subject: relay test\r\n\r\nbody\r\n"


async def rcpt(mta: AuthMTA, recipient: str) -> str:
    """The reply to RCPT TO:<recipient> (the path as given, brackets included if any)."""
    with trio.fail_after(CAP):
        client = await mta.greeted("mx")
        await client.command(f"MAIL FROM:<{STRANGER}>", 250)
        await client.send(f"RCPT TO:{recipient}\r\n")
        answer = await client.reply()
        if answer.code >= 400:
            # Nothing was accepted, so there is nothing to send.
            await client.command("DATA", 503, "5.5.1")
        else:
            await client.command("DATA", 354)
            await client.send(MESSAGE + b".\r\n")
            await client.expect(250)
        await client.command("QUIT", 221)
    return str(answer)


@pytest.mark.parametrize(
    "recipient",
    [
        "<user%other.example@example.test>",  # the percent hack
        "<other.example!user@example.test>",  # a UUCP bang path
        '<"user@other.example"@example.test>',  # a quoted @
        '<"user%other.example"@example.test>',
    ],
)
async def test_routing_characters_are_refused(default_mta: AuthMTA, recipient: str) -> None:
    assert await rcpt(default_mta, recipient) == ROUTING
    assert all_messages(default_mta.var_dir) == []


@pytest.mark.parametrize(
    "recipient",
    [
        "<@example.test:user@other.example>",  # a source route through us
        "<@example.test,@localhost:user@other.example>",
        "<@EXAMPLE.TEST:user@other.example>",
        "<user@[192.0.2.1]>",  # an address literal is never local
    ],
)
async def test_source_routes_are_stripped_then_the_mailbox_is_judged(
    default_mta: AuthMTA, recipient: str
) -> None:
    assert await rcpt(default_mta, recipient) == RELAY_DENIED
    assert all_messages(default_mta.var_dir) == []


async def test_a_source_route_to_a_local_mailbox_is_delivered_locally(
    default_mta: AuthMTA,
) -> None:
    # The route is stripped (RFC 5321 §3.6.1): other.example never sees the message.
    assert await rcpt(default_mta, "<@other.example:user@example.test>") == (
        "250 2.1.5 Recipient OK"
    )
    assert bodies_in(default_mta.var_dir, "example.test", "user") == [MESSAGE]
    assert len(all_messages(default_mta.var_dir)) == 1


@pytest.mark.parametrize(
    "recipient",
    [
        "<user@other.example@example.test>",  # two @: a syntax error
        "<user>",  # unqualified
        "user@example.test",  # no angle brackets
    ],
)
async def test_syntax_errors(default_mta: AuthMTA, recipient: str) -> None:
    answer = await rcpt(default_mta, recipient)
    assert answer == SYNTAX
    assert all_messages(default_mta.var_dir) == []


@pytest.mark.parametrize("recipient", ["<postmaster>", "<Postmaster>", "<POSTMASTER>"])
async def test_the_bare_postmaster_is_accepted(default_mta: AuthMTA, recipient: str) -> None:
    assert await rcpt(default_mta, recipient) == "250 2.1.5 Recipient OK"
    assert bodies_in(default_mta.var_dir, "localhost", "postmaster") == [MESSAGE]


async def test_plain_relay_is_refused(default_mta: AuthMTA) -> None:
    assert await rcpt(default_mta, "<user@other.example>") == RELAY_DENIED
    assert all_messages(default_mta.var_dir) == []
