"""The client against scripted trio servers: what aiosmtpd cannot be made to do."""

from __future__ import annotations

import pytest
import trio

from tests.smtpclient.peers import Peer, fake_server, unused_port
from trio_mta.hooks import SMTPClientError, SMTPConnectError, open_smtp_client
from trio_mta.protocol import Address

HOST = "127.0.0.1"
ALICE = Address("alice", "example.com")
BOB = Address("bob", "example.net")
CAROL = Address("carol", "example.net")
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


async def greet(peer: Peer, *keywords: str) -> None:
    await peer.send("220 fake.test ESMTP")
    assert (await peer.line()).startswith(b"EHLO ")
    await peer.send("250-fake.test", *(f"250-{k}" for k in keywords), "250 HELP")


async def take_message(peer: Peer) -> bytes:
    """After DATA: 354, the data up to the lone dot (still dot-stuffed), 250."""
    await peer.send("354 go ahead")
    lines = []
    while (line := await peer.line()) != b".":
        lines.append(line)
    await peer.send("250 2.0.0 queued")
    return b"".join(line + b"\r\n" for line in lines)


async def test_pipelining_sends_mail_and_every_rcpt_in_one_go() -> None:
    seen: list[bytes] = []

    async def serve(peer: Peer) -> None:
        await greet(peer, "PIPELINING")
        # No reply until MAIL and both RCPTs are here: a client waiting for MAIL's reply
        # would never send them, and this deadline fails the test.
        with trio.fail_after(2):
            await peer.fill(3)
        for _ in range(3):
            await peer.line()
        await peer.send("250 sender ok", "250 rcpt ok", "250 rcpt ok")
        assert await peer.line() == b"DATA"
        seen.append(await take_message(peer))
        assert await peer.line() == b"QUIT"
        await peer.send("221 bye")

    async with fake_server(serve) as port, open_smtp_client(HOST, port, helo="c") as client:
        result = await client.send_message(ALICE, [BOB, CAROL], [MESSAGE])
    assert result.delivered
    assert seen == [MESSAGE]


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    early: list[int] = []

    async def serve(peer: Peer) -> None:
        await greet(peer)
        for reply in ("250 sender ok", "250 rcpt ok", "250 rcpt ok"):
            await peer.line()
            await trio.sleep(0.05)  # time for a pipelining client to send more
            early.append(peer.buffered_lines())
            await peer.send(reply)
        assert await peer.line() == b"DATA"
        await take_message(peer)

    async with fake_server(serve) as port, open_smtp_client(HOST, port, helo="c") as client:
        result = await client.send_message(ALICE, [BOB, CAROL], [MESSAGE])
    assert result.delivered
    assert early == [0, 0, 0]


async def test_helo_fallback_when_ehlo_is_refused() -> None:
    async def serve(peer: Peer) -> None:
        await peer.send("220 old.test SMTP")
        assert (await peer.line()).startswith(b"EHLO ")
        await peer.send("500 5.5.1 what is EHLO")
        assert await peer.line() == b"HELO client.test"
        await peer.send("250 old.test")
        assert await peer.line() == b"MAIL FROM:<alice@example.com>"
        await peer.send("250 2.1.0 ok")
        assert await peer.line() == b"RCPT TO:<bob@example.net>"
        await peer.send("250 2.1.5 ok")
        assert await peer.line() == b"DATA"
        await take_message(peer)

    server = fake_server(serve)
    async with server as port, open_smtp_client(HOST, port, helo="client.test") as client:
        assert not client.extended
        assert "PIPELINING" not in client.capabilities
        result = await client.send_message(ALICE, [BOB], [MESSAGE])
    assert result.delivered
    # No ENHANCEDSTATUSCODES after HELO: "2.0.0" stays part of the text.
    assert result.data is not None
    assert result.data.enhanced is None


async def test_refused_greeting_raises_with_the_reply() -> None:
    async def serve(peer: Peer) -> None:
        await peer.send("554 5.7.1 go away")

    async with fake_server(serve) as port:
        with pytest.raises(SMTPClientError) as info:
            async with open_smtp_client(HOST, port, helo="c"):
                pytest.fail("session set up despite a 554 greeting")
    assert info.value.reply is not None
    assert info.value.reply.code == 554
    assert info.value.is_permanent


async def test_connection_refused() -> None:
    with pytest.raises(SMTPConnectError):
        async with open_smtp_client(HOST, unused_port(), helo="c"):
            pytest.fail("connected to a closed port")


async def test_421_ends_the_session_without_error() -> None:
    async def serve(peer: Peer) -> None:
        await greet(peer, "PIPELINING")
        await peer.fill(2)
        await peer.send("421 4.3.2 shutting down")  # and hang up, as RFC 5321 §3.8 says

    async with fake_server(serve) as port, open_smtp_client(HOST, port, helo="c") as client:
        result = await client.send_message(ALICE, [BOB], [MESSAGE])
        with pytest.raises(SMTPClientError, match="session is over"):
            await client.send_message(ALICE, [BOB], [MESSAGE])
    assert result.mail.code == 421
    assert [r.code for r in result.rcpt] == [421]
    assert not result.sent


@pytest.mark.parametrize(
    ("script", "match"),
    [
        (["250 ok"], "connection closed"),  # hangs up instead of answering MAIL
        (["250 ok", "250-half a reply"], "closed in the middle"),
        (["250 ok", "hello there"], "protocol error"),
    ],
)
async def test_broken_server_raises(script: list[str], match: str) -> None:
    async def serve(peer: Peer) -> None:
        await peer.send("220 x")
        await peer.line()
        await peer.send(script[0])
        await peer.line()
        if script[1:]:
            await peer.send(*script[1:])

    async with fake_server(serve) as port:
        with pytest.raises(SMTPClientError, match=match):
            async with open_smtp_client(HOST, port, helo="c") as client:
                await client.send_message(ALICE, [BOB], [MESSAGE])


async def test_data_after_the_starttls_reply_is_refused() -> None:
    async def serve(peer: Peer) -> None:
        await greet(peer, "STARTTLS")
        assert await peer.line() == b"STARTTLS"
        await peer.send("220 go ahead", "250 injected")
        await trio.sleep_forever()

    async with fake_server(serve) as port:
        with trio.fail_after(5), pytest.raises(SMTPClientError, match="after its STARTTLS"):
            async with open_smtp_client(HOST, port, helo="c"):
                pytest.fail("went on after an injection")


async def test_opportunistic_handshake_failure_reconnects_in_plain_text() -> None:
    sessions: list[list[bytes]] = []

    async def serve(peer: Peer) -> None:
        sessions.append(peer.lines)
        await greet(peer, "STARTTLS")
        line = await peer.line()
        if line == b"STARTTLS":
            await peer.send("220 go ahead")
            await peer.stream.receive_some(65536)  # the client's hello
            await peer.stream.send_all(b"this is not a TLS server hello\r\n" * 4)
            return
        await peer.send("250 ok")
        await peer.line()
        await peer.send("250 ok")
        await peer.line()
        await take_message(peer)

    async with fake_server(serve) as port:
        with trio.fail_after(5):
            async with open_smtp_client(HOST, port, helo="c") as client:
                assert not client.tls
                result = await client.send_message(ALICE, [BOB], [MESSAGE])
    assert result.delivered
    assert len(sessions) == 2
    assert b"STARTTLS" in sessions[0]
    assert b"STARTTLS" not in sessions[1]


async def test_credentials_never_go_out_in_plain_text() -> None:
    lines: list[bytes] = []

    async def serve(peer: Peer) -> None:
        await greet(peer, "AUTH PLAIN LOGIN")
        lines.append(await peer.line())

    async with fake_server(serve) as port:
        with pytest.raises(SMTPClientError, match="credentials"):
            async with open_smtp_client(HOST, port, helo="c", auth=("user", "s3cret")):
                pytest.fail("authenticated in plain text")
    assert not any(line.startswith(b"AUTH") for line in lines)
