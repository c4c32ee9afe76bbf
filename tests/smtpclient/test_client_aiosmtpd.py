"""The SMTP/LMTP client against aiosmtpd: pipelining or not, STARTTLS, AUTH, SIZE, refusals."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio

from tests.smtpclient.peers import Recorder, aiosmtpd_server, authenticator, tls_pair
from trio_mta.hooks import SMTPClientError, StartTLS, open_smtp_client
from trio_mta.protocol import Address

HOST = "127.0.0.1"
ALICE = Address("alice", "example.com")
BOB = Address("bob", "example.net")
CAROL = Address("carol", "example.net")
MESSAGE = (
    b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\n"
    b".leading dot\r\nbody\r\n..two dots\r\n.\r\nafter a lone dot\r\n"
)


def split(data: bytes, *cuts: int) -> list[bytes]:
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_message_arrives_byte_exact(pipelining: bool) -> None:
    extra = ("PIPELINING", "ENHANCEDSTATUSCODES") if pipelining else ()
    handler = Recorder(ehlo_extra=extra)
    # Cuts land just before dots at line starts and inside CRLF pairs.
    chunks = split(MESSAGE, MESSAGE.index(b".leading"), MESSAGE.index(b"\n..two"), 100, 101)
    async with aiosmtpd_server(handler) as port:
        with trio.fail_after(5):
            async with open_smtp_client(HOST, port, helo="client.test") as client:
                assert ("PIPELINING" in client.capabilities) is pipelining
                result = await client.send_message(ALICE, [BOB, CAROL], chunks)
    assert result.delivered
    assert result.mail.code == 250
    assert [r.code for r in result.rcpt] == [250, 250]
    assert result.data is not None
    assert result.data.code == 250
    # Enhanced codes are split off only when the server advertised ENHANCEDSTATUSCODES.
    assert result.data.enhanced == ("2.0.0" if pipelining else None)
    [got] = handler.received
    assert got.content == MESSAGE
    assert got.mail_from == "alice@example.com"
    assert got.rcpt_tos == ("bob@example.net", "carol@example.net")


async def test_message_without_final_crlf_gets_one() -> None:
    handler = Recorder()
    async with aiosmtpd_server(handler) as port, open_smtp_client(HOST, port, helo="c") as client:
        result = await client.send_message(None, [BOB], [b"Subject: x\r\n\r\nno newline", b""])
    assert result.delivered
    assert handler.received[0].content == b"Subject: x\r\n\r\nno newline\r\n"
    assert handler.received[0].mail_from == "<>"  # the null sender


async def test_starttls_then_auth_plain() -> None:
    tls = tls_pair()
    handler = Recorder()
    kwargs: dict[str, Any] = {
        "tls_context": tls.server,
        "require_starttls": True,
        "authenticator": authenticator("user", "s3cret"),
    }
    async with aiosmtpd_server(handler, **kwargs) as port:
        with trio.fail_after(5):
            async with open_smtp_client(
                HOST,
                port,
                helo="c",
                tls=tls.client,
                starttls="required",
                server_hostname="localhost",
                auth=("user", "s3cret"),
            ) as client:
                assert client.tls
                assert client.authenticated
                assert "STARTTLS" not in client.capabilities  # the second EHLO, inside TLS
                result = await client.send_message(ALICE, [BOB], [MESSAGE])
    assert result.delivered
    assert handler.received[0].content == MESSAGE


async def test_auth_login_when_plain_is_not_offered() -> None:
    tls = tls_pair()
    handler = Recorder()
    kwargs: dict[str, Any] = {
        "tls_context": tls.server,
        "authenticator": authenticator("user", "s3cret"),
        "auth_exclude_mechanism": ["PLAIN"],
    }
    async with (
        aiosmtpd_server(handler, **kwargs) as port,
        open_smtp_client(HOST, port, helo="c", tls=tls.client, auth=("user", "s3cret")) as client,
    ):
        assert client.capabilities.auth_mechanisms() == ("LOGIN",)
        assert client.authenticated
        result = await client.send_message(ALICE, [BOB], [MESSAGE])
    assert result.delivered


async def test_wrong_password_raises_with_the_reply() -> None:
    tls = tls_pair()
    kwargs: dict[str, Any] = {
        "tls_context": tls.server,
        "authenticator": authenticator("user", "right"),
    }
    async with aiosmtpd_server(Recorder(), **kwargs) as port:
        with pytest.raises(SMTPClientError) as info:
            async with open_smtp_client(HOST, port, helo="c", tls=tls.client, auth=("user", "x")):
                pytest.fail("authenticated with a wrong password")
    assert info.value.reply is not None
    assert info.value.reply.code == 535
    assert "x" not in str(info.value).split(":")[0]


async def test_required_tls_not_offered_raises() -> None:
    async with aiosmtpd_server(Recorder()) as port:
        with pytest.raises(SMTPClientError, match="TLS is required"):
            async with open_smtp_client(HOST, port, helo="c", starttls=StartTLS.REQUIRED):
                pytest.fail("went on without TLS")


async def test_required_tls_verifies_by_default() -> None:
    tls = tls_pair()  # trustme's CA is not among the system CAs
    async with aiosmtpd_server(Recorder(), tls_context=tls.server) as port:
        with pytest.raises(SMTPClientError, match="handshake"):
            async with open_smtp_client(HOST, port, helo="c", starttls="required"):
                pytest.fail("accepted an unverifiable certificate")


async def test_opportunistic_tls_encrypts_without_verifying() -> None:
    tls = tls_pair()
    handler = Recorder()
    server = aiosmtpd_server(handler, tls_context=tls.server)
    async with server as port, open_smtp_client(HOST, port, helo="c") as client:
        assert client.tls
        assert (await client.send_message(ALICE, [BOB], [MESSAGE])).delivered
    async with aiosmtpd_server(handler) as port, open_smtp_client(HOST, port, helo="c") as client:
        assert not client.tls  # not offered: plain text
        assert (await client.send_message(ALICE, [BOB], [MESSAGE])).delivered
    assert len(handler.received) == 2


async def test_never_starttls_meets_a_server_that_requires_it() -> None:
    tls = tls_pair()
    kwargs: dict[str, Any] = {"tls_context": tls.server, "require_starttls": True}
    server = aiosmtpd_server(Recorder(), **kwargs)
    async with server as port, open_smtp_client(HOST, port, helo="c", starttls="never") as client:
        result = await client.send_message(ALICE, [BOB], [MESSAGE])
    assert not client.tls
    assert result.mail.code == 530
    assert not result.delivered


async def test_size_limit_is_respected_before_sending() -> None:
    handler = Recorder()
    server = aiosmtpd_server(handler, data_size_limit=1000)
    async with server as port, open_smtp_client(HOST, port, helo="c") as client:
        assert client.capabilities.size_limit() == 1000
        big = await client.send_message(ALICE, [BOB], [b"x" * 2000], size=2000)
        assert handler.commands == []  # refused locally: not even MAIL went out
        small = await client.send_message(ALICE, [BOB], [MESSAGE], size=len(MESSAGE))
        # Without a declared size the server refuses at the end of the data.
        undeclared = await client.send_message(ALICE, [BOB], [b"y" * 78 + b"\r\n"] * 20)
    assert big.mail.code == 552
    assert big.mail.enhanced == "5.3.4"
    assert not big.delivered
    assert small.delivered
    assert handler.received[0].mail_options == (f"SIZE={len(MESSAGE)}",)
    assert undeclared.data is not None
    assert undeclared.data.code == 552
    assert not undeclared.delivered
    assert len(handler.received) == 1


async def test_refused_recipient_partial_and_all_or_nothing() -> None:
    handler = Recorder(rcpt={"carol@example.net": "550 5.1.1 no such user"})
    async with aiosmtpd_server(handler) as port, open_smtp_client(HOST, port, helo="c") as client:
        partial = await client.send_message(ALICE, [BOB, CAROL], [MESSAGE])
        strict = await client.send_message(
            ALICE, [BOB, CAROL], [MESSAGE], require_all_recipients=True
        )
        # The abandoned transaction was reset: the session takes the next one.
        after = await client.send_message(ALICE, [BOB], [MESSAGE])
    assert partial.accepted == (BOB,)
    assert not partial.delivered
    assert partial.sent
    outcomes = {a: (r.code, r.enhanced) if r else None for a, r in partial.outcomes()}
    assert outcomes == {BOB: (250, "2.0.0"), CAROL: (550, "5.1.1")}
    assert not strict.sent
    assert strict.data is None
    assert dict(strict.outcomes())[BOB] is None  # accepted, never sent
    assert after.delivered
    assert [r.rcpt_tos for r in handler.received] == [("bob@example.net",)] * 2


@pytest.mark.parametrize("pipelining", [True, False])
async def test_refused_sender(pipelining: bool) -> None:
    extra = ("PIPELINING",) if pipelining else ()
    handler = Recorder(ehlo_extra=extra, mail="553 5.7.1 sender refused")
    async with aiosmtpd_server(handler) as port, open_smtp_client(HOST, port, helo="c") as client:
        result = await client.send_message(ALICE, [BOB, CAROL], [MESSAGE])
    assert result.mail.code == 553
    assert not result.sent
    assert [r.code for _, r in result.outcomes() if r is not None] == [553, 553]
    # Pipelined, the RCPTs went out with MAIL (and were refused); otherwise they never did.
    assert [r.code for r in result.rcpt] == ([503, 503] if pipelining else [])


async def test_data_refused_after_the_dot() -> None:
    handler = Recorder(data="554 5.6.0 content refused")
    async with aiosmtpd_server(handler) as port, open_smtp_client(HOST, port, helo="c") as client:
        result = await client.send_message(ALICE, [BOB], [MESSAGE])
    assert result.sent
    assert not result.delivered
    assert result.data is not None
    assert (result.data.code, result.data.enhanced) == (554, "5.6.0")


async def test_lmtp_per_recipient_replies() -> None:
    handler = Recorder(lmtp={"carol@example.net": "452 4.2.2 mailbox full"})
    async with aiosmtpd_server(handler, lmtp=True) as port:
        with trio.fail_after(5):
            # aiosmtpd's LMTP answers EHLO with 500: getting here means LHLO was used.
            async with open_smtp_client(HOST, port, helo="c", lmtp=True) as client:
                result = await client.send_message(ALICE, [BOB, CAROL], [MESSAGE])
    assert result.sent
    assert not result.delivered
    assert [r.code for r in result.lmtp] == [250, 452]
    assert [(a, r.code if r else None) for a, r in result.outcomes()] == [(BOB, 250), (CAROL, 452)]
    assert handler.received[0].content == MESSAGE
