"""STARTTLS (RFC 3207) and implicit TLS (RFC 8314) over real sockets: what is offered when,
what is forgotten, what is discarded, and where the handshake deadline cuts."""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from tests.helpers.maildir import messages_in
from tests.helpers.smtp import LineClient
from trio_mta.config import ListenerConfig

from .conftest import DEFAULT_NAME, Certs, StartTlsMTA, TlsMTA, start_tls, tls_config

CAP = 15  # seconds, real time
INJECTED = b"RSET\r\nMAIL FROM:<a@b>\r\n"


async def _greeted(mta: TlsMTA) -> tuple[LineClient, tuple[str, ...]]:
    client = await mta.connect("mx")
    await client.expect(220)
    ehlo = await client.command("EHLO client.example", 250)
    return client, ehlo.lines


async def test_starttls_is_offered_until_tls_is_active(tls_mta: TlsMTA, certs: Certs) -> None:
    with trio.fail_after(CAP):
        client, before = await _greeted(tls_mta)
        assert "STARTTLS" in before
        secure, _ = await start_tls(client, certs.client_context(), DEFAULT_NAME)
        after = await secure.command("EHLO client.example", 250)
        assert "STARTTLS" not in after.lines
        assert "PIPELINING" in after.lines
        refused = await secure.command("STARTTLS", 503, "5.5.1")
        assert "already active" in refused.text
        await secure.command("QUIT", 221)


async def test_starttls_forgets_the_plaintext_session(tls_mta: TlsMTA, certs: Certs) -> None:
    with trio.fail_after(CAP):
        client, _ = await _greeted(tls_mta)
        secure, _ = await start_tls(client, certs.client_context(), DEFAULT_NAME)
        need_helo = await secure.command("MAIL FROM:<x@example.org>", 503, "5.5.1")
        assert "HELO/EHLO" in need_helo.text
        await secure.command("EHLO client.example", 250)
        await secure.command("MAIL FROM:<x@example.org>", 250)
        await secure.command("QUIT", 221)


async def test_plaintext_pipelined_after_starttls_is_discarded(
    tls_mta: TlsMTA, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """CVE-2011-0411 / aiosmtpd CVE-2024-34083: commands sent in the clear in the same packet as
    STARTTLS must not run, neither before the handshake nor after it."""
    with trio.fail_after(CAP):
        stream = await trio.open_tcp_stream("127.0.0.1", tls_mta.port("mx"))
        client = LineClient(stream)
        await client.expect(220)
        await client.command("EHLO client.example", 250)
        # One send, one segment: the server reads all of it with STARTTLS.
        await stream.send_all(b"STARTTLS\r\n" + INJECTED)
        await client.expect(220, "2.0.0")
        # Nothing answered RSET or MAIL in the clear.
        assert client._buf == b""
        tls = trio.SSLStream(stream, certs.client_context(), server_hostname=DEFAULT_NAME)
        await tls.do_handshake()
        secure = LineClient(tls)
        # Had the injected MAIL run, this would be a nested MAIL; had RSET run, a 250 would be
        # waiting first. The session is new: EHLO is needed.
        need_helo = await secure.command("MAIL FROM:<x@y.example>", 503, "5.5.1")
        assert "HELO/EHLO" in need_helo.text
        await secure.command("EHLO client.example", 250)
        await secure.command("MAIL FROM:<x@y.example>", 250)
        await secure.command("QUIT", 221)
    discarded = [r.getMessage() for r in caplog.records if "discarded" in r.getMessage()]
    assert len(discarded) == 1
    assert (
        f"discarded {len(INJECTED)} bytes of plaintext pipelined after STARTTLS" in (discarded[0])
    )
    assert "ip=127.0.0.1" in discarded[0]
    assert "MAIL" not in discarded[0]  # counted, never echoed


async def test_received_header_records_version_and_cipher(tls_mta: TlsMTA, certs: Certs) -> None:
    with trio.fail_after(CAP):
        client, _ = await _greeted(tls_mta)
        secure, stream = await start_tls(client, certs.client_context(), DEFAULT_NAME)
        body = b"Subject: over tls\r\n\r\nsecret\r\n"
        final = await secure.transaction(
            "a@example.org", ["tls@example.test"], body, ehlo="client.example"
        )
        assert final.code == 250, str(final)
        await secure.command("QUIT", 221)
    [stored] = messages_in(tls_mta.var_dir, "example.test", "tls")
    header = stored.split(b"\r\n\r\n", 1)[0].decode()
    assert " with ESMTPS id " in header
    version, cipher = stream.version(), stream.cipher()[0]
    assert f"(version={version} cipher={cipher})" in header
    assert re.search(r"version=TLSv1\.[23] cipher=[A-Z0-9_-]+\)", header)


def _smtplib_starttls(port: int, ctx: ssl.SSLContext) -> tuple[bool, bool, dict[str, object]]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=10) as smtp:
        smtp.ehlo()
        offered = smtp.has_extn("starttls")
        smtp.starttls(context=ctx)  # verifies the default certificate for 127.0.0.1
        smtp.ehlo()
        again = smtp.has_extn("starttls")
        refused = smtp.sendmail(
            "a@example.org", ["smtplib@example.test"], b"Subject: s\r\n\r\nx\r\n"
        )
        return offered, again, dict(refused)


async def test_smtplib_starttls_delivers(tls_mta: TlsMTA, certs: Certs) -> None:
    with trio.fail_after(CAP):
        offered, again, refused = await trio.to_thread.run_sync(
            _smtplib_starttls, tls_mta.port("mx"), certs.client_context()
        )
    assert (offered, again, refused) == (True, False, {})
    [stored] = messages_in(tls_mta.var_dir, "example.test", "smtplib")
    assert b" with ESMTPS id " in stored
    assert b"(version=TLSv1.3 cipher=" in stored


def _smtplib_implicit(port: int, ctx: ssl.SSLContext) -> tuple[int, bool, int, int]:
    with smtplib.SMTP_SSL(
        "127.0.0.1", port, local_hostname="client.example", timeout=10, context=ctx
    ) as smtp:
        code, _ = smtp.ehlo()
        offered = smtp.has_extn("starttls")
        noop, _ = smtp.noop()
        again, _ = smtp.docmd("STARTTLS")
        return code, offered, noop, again


async def test_smtplib_smtp_ssl_on_the_implicit_listener(tls_mta: TlsMTA, certs: Certs) -> None:
    with trio.fail_after(CAP):
        result = await trio.to_thread.run_sync(
            _smtplib_implicit, tls_mta.port("smtps"), certs.client_context()
        )
    assert result == (250, False, 250, 503)


async def test_implicit_tls_banner_comes_after_the_handshake(tls_mta: TlsMTA, certs: Certs) -> None:
    with trio.fail_after(CAP):
        stream = await trio.open_tcp_stream("127.0.0.1", tls_mta.port("smtps"))
        # Plain text would see nothing: the server waits for a ClientHello.
        with trio.move_on_after(0.3):
            early = await stream.receive_some(100)
            pytest.fail(f"the implicit listener spoke before TLS: {early!r}")
        tls = trio.SSLStream(stream, certs.client_context(), server_hostname=DEFAULT_NAME)
        await tls.do_handshake()
        client = LineClient(tls)
        await client.expect(220)
        await client.command("QUIT", 221)


async def test_starttls_without_a_certificate_is_454(
    start_tls_mta: StartTlsMTA, var_dir: Path, certs: Certs
) -> None:
    config = tls_config(var_dir, certs)
    config = attrs.evolve(config, listeners=(ListenerConfig(name="mx", host="127.0.0.1", port=0),))
    mta = await start_tls_mta(config, tls=False)
    with trio.fail_after(CAP):
        client, lines = await _greeted(mta)
        assert "STARTTLS" not in lines
        await client.command("STARTTLS", 454, "4.7.0")
        # The session goes on in the clear, unharmed.
        await client.command("MAIL FROM:<a@example.org>", 250)
        await client.command("QUIT", 221)


async def test_failed_handshake_closes_without_a_reply(
    tls_mta: TlsMTA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mta")
    with trio.fail_after(CAP):
        client, _ = await _greeted(tls_mta)
        await client.command("STARTTLS", 220)
        await client.send(b"EHLO not-a-client-hello\r\n")
        rest = await client.read_to_eof()
    # At most a TLS alert record (content type 21), never an SMTP reply in the clear.
    assert rest == b"" or rest[0] == 21, rest
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)


async def test_silent_client_is_cut_at_the_handshake_deadline(
    autojump_clock: trio.testing.MockClock,
    start_tls_mta: StartTlsMTA,
    var_dir: Path,
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mta")
    mta = await start_tls_mta(tls_config(var_dir, certs, tls_handshake=30.0))
    client, _ = await _greeted(mta)
    await client.command("STARTTLS", 220)
    start = trio.current_time()
    with trio.fail_after(100):
        rest = await client.read_to_eof()
    waited = trio.current_time() - start
    assert rest == b""  # no 421 in the clear where the client expects TLS records
    assert 30.0 <= waited < 31.0
    assert any("timeout phase=tls handshake" in r.getMessage() for r in caplog.records)


async def test_silent_client_on_the_implicit_listener_is_cut_at_the_handshake_deadline(
    autojump_clock: trio.testing.MockClock,
    start_tls_mta: StartTlsMTA,
    var_dir: Path,
    certs: Certs,
) -> None:
    mta = await start_tls_mta(tls_config(var_dir, certs, tls_handshake=20.0, banner=300.0))
    client = await mta.connect("smtps")
    start = trio.current_time()
    with trio.fail_after(100):
        rest = await client.read_to_eof()
    assert rest == b""
    assert 20.0 <= trio.current_time() - start < 21.0
