"""A real ``SMTPServer`` with TLS on two loopback listeners (``mx`` with STARTTLS and ``smtps``
with implicit TLS), certificates made with trustme:

- default: ``mail.example.test`` (and IP 127.0.0.1), in ``default.pem`` + ``default.key``;
- SNI directory ``sni/``: ``one.example.test.pem`` + ``.key``, and a wildcard
  ``_wildcard.two.example.test.pem`` with its key inside the ``.pem``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trustme

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from trio_mta.app import load_plugin_set
from trio_mta.config import Config, ListenerConfig, ListenerKind, TlsConfig
from trio_mta.server import BoundListener, PluginHost, SMTPServer, TlsProvider

DEFAULT_NAME = "mail.example.test"
ONE = "one.example.test"
WILDCARD = "*.two.example.test"


@attrs.frozen
class Certs:
    ca: trustme.CA
    ca_file: Path
    conf_dir: Path

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.check_hostname = check_hostname
        return ctx

    def write_pair(self, cert: Path, key: Path | None, *names: str) -> None:
        """A certificate for ``names`` (the first is its CN); key inside ``cert`` if None."""
        leaf = self.ca.issue_cert(*names, common_name=names[0])
        if key is None:
            leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
            return
        cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    conf = tmp_path / "conf"
    sni = conf / "sni"
    sni.mkdir(parents=True)
    ca = trustme.CA()
    found = Certs(ca, tmp_path / "ca.pem", conf)
    ca.cert_pem.write_to_path(str(found.ca_file))
    found.write_pair(conf / "default.pem", conf / "default.key", DEFAULT_NAME, "127.0.0.1")
    found.write_pair(sni / f"{ONE}.pem", sni / f"{ONE}.key", ONE)
    found.write_pair(sni / "_wildcard.two.example.test.pem", None, WILDCARD)
    return found


def tls_config(var_dir: Path, certs: Certs, **timeouts: float) -> Config:
    # A short drain: a test that leaves a transaction open must not hold up the teardown.
    base = make_config(var_dir, timeouts={"drain": 2.0, **timeouts})
    return attrs.evolve(
        base,
        listeners=(
            ListenerConfig(name="mx", host="127.0.0.1", port=0),
            ListenerConfig(name="smtps", host="127.0.0.1", port=0, kind=ListenerKind.SMTPS),
        ),
        tls=TlsConfig(
            cert="default.pem", key="default.key", cert_dir="sni", generate_self_signed=False
        ),
        config_dir=certs.conf_dir,
    )


@attrs.define
class TlsMTA:
    server: SMTPServer
    config: Config
    tls: TlsProvider | None
    host: PluginHost
    bound: dict[str, BoundListener]
    stopped: trio.Event

    @property
    def var_dir(self) -> Path:
        return self.config.server.var_dir

    def port(self, name: str) -> int:
        return self.bound[name].port

    async def connect(self, name: str = "mx") -> LineClient:
        return LineClient(await trio.open_tcp_stream("127.0.0.1", self.port(name)))


StartTlsMTA = Callable[..., Awaitable[TlsMTA]]


@pytest.fixture
async def start_tls_mta(
    nursery: trio.Nursery, var_dir: Path, certs: Certs
) -> AsyncIterator[StartTlsMTA]:
    """``await start_tls_mta(config=None, tls=True)``: the server above; ``tls=False`` runs it
    without a TlsProvider (its config must then have no smtps listener)."""
    running: list[TlsMTA] = []

    async def start(config: Config | None = None, *, tls: bool = True) -> TlsMTA:
        config = config or tls_config(var_dir, certs)
        provider = TlsProvider.from_config(config) if tls else None
        host = PluginHost(load_plugin_set(config))
        server = SMTPServer(config, host.handler, tls=provider)
        stopped = trio.Event()

        async def serve(*, task_status: trio.TaskStatus[list[BoundListener]]) -> None:
            try:
                await server.serve(task_status=task_status)
            finally:
                stopped.set()

        bound: list[BoundListener] = await nursery.start(serve)
        mta = TlsMTA(server, config, provider, host, {b.name: b for b in bound}, stopped)
        running.append(mta)
        return mta

    yield start
    for mta in running:
        mta.server.request_shutdown()
    with trio.fail_after(10):
        for mta in running:
            await mta.stopped.wait()


@pytest.fixture
async def tls_mta(start_tls_mta: StartTlsMTA) -> TlsMTA:
    return await start_tls_mta()


async def start_tls(
    client: LineClient, ctx: ssl.SSLContext, server_hostname: str | None = None
) -> tuple[LineClient, trio.SSLStream[trio.abc.Stream]]:
    """STARTTLS on ``client`` (after EHLO): the TLS client and its stream."""
    await client.command("STARTTLS", 220, "2.0.0")
    stream = trio.SSLStream(client.stream, ctx, server_hostname=server_hostname)
    await stream.do_handshake()
    return LineClient(stream), stream


def common_name(stream: trio.SSLStream[trio.abc.Stream]) -> str:
    cert = stream.getpeercert()
    assert cert, "no verified peer certificate"
    for rdn in cert["subject"]:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    raise AssertionError(f"no CN in {cert['subject']!r}")
