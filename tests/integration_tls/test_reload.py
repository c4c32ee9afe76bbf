"""SIGHUP re-reads the certificates (``Reloader.reload``, in process): new handshakes get the new
ones, a connection made before keeps working on its own, and a broken certificate is refused
with the running ones kept."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import attrs
import pytest
import trio

from tests.helpers.smtp import LineClient
from trio_mta import app
from trio_mta.config import load_config
from trio_mta.reloader import Reloader
from trio_mta.server import TlsProvider

from .conftest import ONE, Certs, StartTlsMTA, TlsMTA

CAP = 15  # seconds, real time

CONF = """
[server]
hostname = "mail.example.test"

[[listener]]
name = "mx"
listen = "127.0.0.1:0"

[[listener]]
name = "smtps"
listen = "127.0.0.1:0"
kind = "smtps"

[timeouts]
drain = 2.0

[tls]
cert = "default.pem"
key = "default.key"
cert_dir = "sni"
generate_self_signed = false
"""


async def _peer_der(mta: TlsMTA, certs: Certs, name: str) -> tuple[bytes, LineClient]:
    raw = await trio.open_tcp_stream("127.0.0.1", mta.port("smtps"))
    tls = trio.SSLStream(raw, certs.client_context(), server_hostname=name)
    await tls.do_handshake()
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    client = LineClient(tls)
    await client.expect(220)
    return der, client


async def _reload(mta: TlsMTA) -> None:
    pinned = {"server.var_dir"}  # the test's var_dir, as --var-dir would be
    await Reloader(mta.config, mta.host, app.load_plugin_set, tls=mta.tls, pinned=pinned).reload()


def _file_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


async def _started(start_tls_mta: StartTlsMTA, certs: Certs, var_dir: Path) -> TlsMTA:
    (certs.conf_dir / "trio-mta.toml").write_text(CONF)
    config = load_config(certs.conf_dir)
    config = attrs.evolve(config, server=attrs.evolve(config.server, var_dir=var_dir))
    return await start_tls_mta(config)


async def test_sighup_reload_swaps_certificates_for_new_connections(
    start_tls_mta: StartTlsMTA, certs: Certs, var_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mta")
    mta = await _started(start_tls_mta, certs, var_dir)
    assert mta.tls is not None
    pem = certs.conf_dir / "sni" / f"{ONE}.pem"
    with trio.fail_after(CAP):
        old_der, old_client = await _peer_der(mta, certs, ONE)
        assert old_der == _file_der(pem)
        certs.write_pair(pem, pem.with_suffix(".key"), ONE)
        new_file = _file_der(pem)
        assert new_file != old_der
        await _reload(mta)
        new_der, new_client = await _peer_der(mta, certs, ONE)
        assert new_der == new_file
        # The connection made before the reload goes on with the certificate it got.
        await old_client.command("EHLO old.example", 250)
        await old_client.command("QUIT", 221)
        await new_client.command("QUIT", 221)
    assert any("tls reload: new certificates" in r.getMessage() for r in caplog.records)


async def test_broken_certificate_on_reload_keeps_the_running_ones(
    start_tls_mta: StartTlsMTA, certs: Certs, var_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mta = await _started(start_tls_mta, certs, var_dir)
    assert mta.tls is not None
    running = mta.tls.context
    pem = certs.conf_dir / "sni" / f"{ONE}.pem"
    good = _file_der(pem)
    pem.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    with trio.fail_after(CAP):
        await _reload(mta)
        assert mta.tls.context is running
        der, client = await _peer_der(mta, certs, ONE)
        await client.command("QUIT", 221)
    assert der == good
    refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert refused
    assert "tls.cert_dir" in refused[0]
    assert str(pem) in refused[0]


def test_provider_refuses_a_set_that_does_not_build(
    certs: Certs, var_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider's own guard, for what the loader cannot see (files changed after it)."""
    (certs.conf_dir / "trio-mta.toml").write_text(CONF)
    config = load_config(certs.conf_dir)
    provider = TlsProvider.from_config(config)
    assert provider is not None
    running = provider.context
    (certs.conf_dir / "default.key").write_text("not a key\n")
    assert provider.reload(config) is False
    assert provider.context is running
    messages = [r.getMessage() for r in caplog.records]
    assert any("tls reload refused" in m and "tls.key" in m for m in messages), messages
