"""STARTTLS in the driver over memory streams (``StreamTransport``, no sockets): what the
session forgets, what it learns, and STARTTLS over a transport that is not a socket."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import trio
import trio.testing
import trustme

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from trio_mta.app import load_plugin_set
from trio_mta.config import Config, TlsConfig
from trio_mta.hooks import HookRunner
from trio_mta.protocol import ServerConnection
from trio_mta.server import (
    ConnectionDriver,
    HookHandler,
    IdGenerator,
    Session,
    StreamTransport,
    TlsProvider,
    protocol_limits,
)

CAP = 10


def _config(tmp_path: Path, ca: trustme.CA) -> Config:
    leaf = ca.issue_cert("mail.example.test")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    config = make_config(tmp_path / "var")
    return attrs.evolve(
        config,
        tls=TlsConfig(cert="server.pem", generate_self_signed=False),
        config_dir=tmp_path,
    )


def _what_the_client_said(session: Session) -> tuple[str | None, bool, str | None]:
    return session.helo, session.extended, session.auth_user


async def test_starttls_resets_what_the_client_said_and_records_the_cipher(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = trustme.CA()
    config = _config(tmp_path, ca)
    server_end, client_end = trio.testing.memory_stream_pair()
    session = Session(
        id="c1",
        listener="mx",
        client_ip="127.0.0.1",
        client_port=1,
        local_ip="127.0.0.1",
        local_port=25,
        started=0.0,
    )
    driver = ConnectionDriver(
        StreamTransport(server_end),
        session,
        config,
        HookHandler(HookRunner(load_plugin_set(config))),
        IdGenerator(),
        ServerConnection(protocol_limits(config)),
        is_closing=trio.Event(),
        tls=TlsProvider.from_config(config),
    )
    nursery.start_soon(driver.run)
    client = LineClient(client_end)
    ctx = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    with trio.fail_after(CAP):
        await client.expect(220)
        await client.command("EHLO before.example", 250)
        assert (session.helo, session.extended) == ("before.example", True)
        session.auth_user = "alice"  # as if AUTH had succeeded in the clear
        await client.command("STARTTLS", 220, "2.0.0")
        tls = trio.SSLStream(client_end, ctx, server_hostname="mail.example.test")
        await tls.do_handshake()
        secure = LineClient(tls)
        await secure.command("NOOP", 250)  # the server is past its side of the handshake
        assert _what_the_client_said(session) == (None, False, None)
        assert session.tls_version == tls.version()
        assert session.tls_cipher == tls.cipher()[0]
        assert driver.conn.tls
        await secure.command("EHLO after.example", 250)
        assert session.helo == "after.example"
        await secure.command("QUIT", 221)
