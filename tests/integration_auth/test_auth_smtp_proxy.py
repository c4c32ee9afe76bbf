"""auth_smtp_proxy against aiosmtpd with an authenticator: the upstream decides, over plain
text (allow_plaintext) and over STARTTLS with a verified certificate."""

from __future__ import annotations

import base64
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from tests.plugins.plugin_kit import config_error
from tests.smtpclient.peers import Recorder, aiosmtpd_server, authenticator, unused_port

from .conftest import AuthMTA, StartAuthMTA

CAP = 20
USER, PASSWORD = "carol@example.test", "upstream-s3cret"
ORDER = ("auth_smtp_proxy", "rcpt_to_host_list", "queue_maildir", "queue_discard")


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def try_login(mta: AuthMTA, password: str, code: int, enhanced: str) -> None:
    with trio.fail_after(CAP):
        client = await mta.greeted("plain")
        assert "AUTH PLAIN LOGIN" in (await client.command("EHLO client.example", 250)).lines
        await client.command(f"AUTH PLAIN {plain(USER, password)}", code, enhanced)
        if code == 235:
            await client.command(f"MAIL FROM:<{USER}>", 250)
            await client.command("RCPT TO:<far@other.example>", 250)  # may relay now
        await client.command("QUIT", 221)


async def test_plaintext_upstream(
    start_auth_mta: StartAuthMTA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    kwargs: dict[str, Any] = {
        "authenticator": authenticator(USER, PASSWORD),
        "auth_require_tls": False,
    }
    async with aiosmtpd_server(Recorder(), **kwargs) as port:
        proxy = {"host": "127.0.0.1", "port": port, "tls": "never", "allow_plaintext": True}
        mta = await start_auth_mta(order=ORDER, plugin_configs={"auth_smtp_proxy": proxy})
        await try_login(mta, PASSWORD, 235, "2.7.0")
        await try_login(mta, "wrong", 535, "5.7.8")
    for secret in (PASSWORD, plain(USER, PASSWORD), plain(USER, "wrong")):
        assert secret not in caplog.text


async def test_starttls_upstream_with_a_verified_certificate(
    start_auth_mta: StartAuthMTA, tmp_path: Path
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    kwargs: dict[str, Any] = {
        "authenticator": authenticator(USER, PASSWORD),
        "tls_context": server,
        "require_starttls": True,
    }
    async with aiosmtpd_server(Recorder(), **kwargs) as port:
        proxy = {"host": "127.0.0.1", "port": port, "tls_ca_file": str(ca_file)}
        mta = await start_auth_mta(order=ORDER, plugin_configs={"auth_smtp_proxy": proxy})
        await try_login(mta, PASSWORD, 235, "2.7.0")
        await try_login(mta, "wrong", 535, "5.7.8")


async def test_untrusted_upstream_certificate_is_a_temporary_failure(
    start_auth_mta: StartAuthMTA,
) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server)  # a CA we don't trust
    kwargs: dict[str, Any] = {"authenticator": authenticator(USER, PASSWORD), "tls_context": server}
    async with aiosmtpd_server(Recorder(), **kwargs) as port:
        proxy = {"host": "127.0.0.1", "port": port}  # tls = "required", system CAs
        mta = await start_auth_mta(order=ORDER, plugin_configs={"auth_smtp_proxy": proxy})
        await try_login(mta, PASSWORD, 454, "4.7.0")


async def test_unreachable_upstream_is_454_and_not_a_counted_failure(
    start_auth_mta: StartAuthMTA,
) -> None:
    proxy = {"host": "127.0.0.1", "port": unused_port(), "tls": "never", "allow_plaintext": True}
    mta = await start_auth_mta(
        order=ORDER, plugin_configs={"auth_smtp_proxy": proxy}, auth={"max_failures": 1}
    )
    for _ in range(3):  # with max_failures = 1, one counted failure would be a 421
        await try_login(mta, PASSWORD, 454, "4.7.0")


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({}, "host: required"),
        ({"host": "h", "port": 0}, "port: must be a port number"),
        ({"host": "h", "tls": "maybe"}, 'tls: must be "required"'),
        ({"host": "h", "tls": "never"}, "set allow_plaintext"),
        ({"host": "h", "password": "x"}, "unknown keys ['password']"),
    ],
)
def test_config_errors(config: dict[str, object], why: str) -> None:
    assert why in config_error("auth_smtp_proxy", config)
