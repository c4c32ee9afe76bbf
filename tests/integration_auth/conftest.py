"""A real ``SMTPServer`` with AUTH on four loopback listeners, certificates made with trustme:

- ``mx``: kind mx, STARTTLS, AUTH only after TLS;
- ``submission``: kind submission, STARTTLS, AUTH only after TLS, AUTH before MAIL;
- ``smtps``: kind smtps, implicit TLS;
- ``plain``: kind submission with ``auth_allow_plaintext`` (for tests where TLS is not the point).

Plugins: ``auth_flat_file`` (the users below, in a file written the way ``trio-mta passwd``
writes it), ``rcpt_to_host_list``, ``queue_maildir`` (local mail) and ``queue_discard``
(``queue_outbound``: what authenticated clients relay is accepted and dropped).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from trio_mta import hooks
from trio_mta.app import load_plugin_set
from trio_mta.config import Config, ListenerConfig, ListenerKind, TlsConfig
from trio_mta.server import BoundListener, PluginHost, SMTPServer, TlsProvider

HOSTNAME = "mail.example.test"
USERS = {"alice@example.test": "s3cret-alice", "bob": "hunter2-bob"}
ORDER = ("auth_flat_file", "rcpt_to_host_list", "queue_maildir", "queue_discard")


@attrs.frozen
class Certs:
    ca_file: Path
    conf_dir: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    conf = tmp_path / "conf"
    conf.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf = ca.issue_cert(HOSTNAME, "127.0.0.1", common_name=HOSTNAME)
    (conf / "default.pem").write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(conf / "default.key"))
    return Certs(tmp_path / "ca.pem", conf)


def write_users(path: Path, users: Mapping[str, str]) -> Path:
    text = ""
    for user, password in users.items():
        text = hooks.update_users(text, user, hooks.hash_password(password, log2_n=4, r=1, p=1))
    path.write_text(text)
    return path


def auth_config(
    var_dir: Path,
    certs: Certs,
    *,
    order: tuple[str, ...] = ORDER,
    plugin_configs: Mapping[str, Mapping[str, Any]] | None = None,
    auth: Mapping[str, Any] | None = None,
) -> Config:
    base = make_config(var_dir, timeouts={"drain": 2.0})
    users = write_users(certs.conf_dir / "auth_users", USERS)
    configs: dict[str, dict[str, object]] = {
        "queue_maildir": {"fsync": False},
        "auth_flat_file": {"users_file": str(users)},
    }
    for name, table in (plugin_configs or {}).items():
        configs[name] = {**configs.get(name, {}), **table}
    listeners = (
        ListenerConfig(name="mx", host="127.0.0.1", port=0),
        ListenerConfig(name="submission", host="127.0.0.1", port=0, kind=ListenerKind.SUBMISSION),
        ListenerConfig(name="smtps", host="127.0.0.1", port=0, kind=ListenerKind.SMTPS),
        ListenerConfig(
            name="plain",
            host="127.0.0.1",
            port=0,
            kind=ListenerKind.SUBMISSION,
            auth_allow_plaintext=True,
        ),
    )
    return attrs.evolve(
        base,
        server=attrs.evolve(base.server, hostname=HOSTNAME),
        listeners=listeners,
        plugins=attrs.evolve(base.plugins, order=order),
        plugin_configs=configs,
        tls=TlsConfig(cert="default.pem", key="default.key", generate_self_signed=False),
        auth=attrs.evolve(base.auth, **(auth or {})),
        config_dir=certs.conf_dir,
    )


@attrs.define
class AuthMTA:
    server: SMTPServer
    config: Config
    bound: dict[str, BoundListener]
    stopped: trio.Event
    certs: Certs

    @property
    def var_dir(self) -> Path:
        return self.config.server.var_dir

    def port(self, name: str) -> int:
        return self.bound[name].port

    async def connect(self, name: str) -> LineClient:
        return LineClient(await trio.open_tcp_stream("127.0.0.1", self.port(name)))

    async def greeted(self, name: str) -> LineClient:
        client = await self.connect(name)
        await client.expect(220)
        await client.command("EHLO client.example", 250)
        return client


StartAuthMTA = Callable[..., Awaitable[AuthMTA]]


@pytest.fixture
async def start_auth_mta(
    nursery: trio.Nursery, var_dir: Path, certs: Certs
) -> AsyncIterator[StartAuthMTA]:
    """``await start_auth_mta(**auth_config_kwargs)``: the server above."""
    running: list[AuthMTA] = []

    async def start(**kwargs: Any) -> AuthMTA:
        config = auth_config(var_dir, certs, **kwargs)
        host = PluginHost(load_plugin_set(config))
        server = SMTPServer(config, host.handler, tls=TlsProvider.from_config(config))
        stopped = trio.Event()

        async def serve(*, task_status: trio.TaskStatus[list[BoundListener]]) -> None:
            try:
                await server.serve(task_status=task_status)
            finally:
                stopped.set()

        bound: list[BoundListener] = await nursery.start(serve)
        mta = AuthMTA(server, config, {b.name: b for b in bound}, stopped, certs)
        running.append(mta)
        return mta

    yield start
    for mta in running:
        mta.server.request_shutdown()
    with trio.fail_after(10):
        for mta in running:
            await mta.stopped.wait()


@pytest.fixture
async def auth_mta(start_auth_mta: StartAuthMTA) -> AuthMTA:
    return await start_auth_mta()


@pytest.fixture
async def default_mta(nursery: trio.Nursery, var_dir: Path) -> AsyncIterator[AuthMTA]:
    """The default plugins (rcpt_to_host_list, queue_maildir) on one MX listener, no TLS."""
    config = make_config(var_dir)
    server = SMTPServer(config, PluginHost(load_plugin_set(config)).handler)
    stopped = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[list[BoundListener]]) -> None:
        try:
            await server.serve(task_status=task_status)
        finally:
            stopped.set()

    bound: list[BoundListener] = await nursery.start(serve)
    yield AuthMTA(server, config, {b.name: b for b in bound}, stopped, Certs(Path(), Path()))
    server.request_shutdown()
    with trio.fail_after(10):
        await stopped.wait()
