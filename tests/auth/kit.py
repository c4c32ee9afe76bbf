"""A ``ConnectionDriver`` over memory streams with AUTH test plugins (no threads, so the
autojump clock sees every wait), and the configurations the AUTH tests use."""

from __future__ import annotations

import base64
import hashlib
import hmac
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from trio_mta.app import load_plugin_set
from trio_mta.config import AuthConfig, Config, ListenerConfig, ListenerKind
from trio_mta.events import EventBus
from trio_mta.hooks import HookRunner
from trio_mta.protocol import ServerConnection
from trio_mta.server import (
    ConnectionDriver,
    CountedConnection,
    HookHandler,
    IdGenerator,
    Session,
    StreamTransport,
    protocol_limits,
)
from trio_mta.server._auth import AuthFailures

USERS = {"alice@example.test": "s3cret-alice", "bob": "hunter2-bob"}

# Knows USERS' plaintext secrets, so it can check CRAM-MD5 too. "mode" forces a verdict.
SECRETS_PLUGIN = """
from trio_mta import hooks

class Plugin(hooks.Plugin):
    auth_mechanisms = frozenset({"PLAIN", "LOGIN", "CRAM-MD5"})

    async def hook_auth(self, conn, creds):
        mode = self.config.get("mode", "check")
        if mode == "soft":
            return hooks.denysoft()
        if mode == "cont":
            return hooks.CONT
        if mode == "raise":
            raise RuntimeError("backend exploded")
        secret = self.config["users"].get(creds.username)
        if secret is None:
            return hooks.CONT
        return hooks.OK if creds.matches_secret(secret) else hooks.deny()

    async def hook_queue_outbound(self, conn):
        self.relayed = [*getattr(self, "relayed", []), conn.transaction.message_bytes()]
        return hooks.ok(f"Relayed as {conn.transaction.id}")
"""

# An auth plugin that can only check PLAIN and LOGIN (like auth_flat_file), and knows nobody.
PLAIN_ONLY_PLUGIN = """
from trio_mta import hooks

class Plugin(hooks.Plugin):
    async def hook_auth(self, conn, creds):
        return hooks.CONT
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def plain(user: str, password: str) -> str:
    return b64(f"\0{user}\0{password}")


def cram_response(challenge_b64: str, user: str, secret: str) -> str:
    challenge = base64.b64decode(challenge_b64)
    digest = hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest()
    return b64(f"{user} {digest}")


def write_plugins(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "secrets_auth.py").write_text(textwrap.dedent(SECRETS_PLUGIN))
    (directory / "plain_only_auth.py").write_text(textwrap.dedent(PLAIN_ONLY_PLUGIN))
    return directory


def auth_config(
    tmp_path: Path,
    *,
    kind: ListenerKind = ListenerKind.MX,
    plaintext: bool = False,
    listener_auth: bool = True,
    order: Sequence[str] = ("secrets_auth", "rcpt_to_host_list", "queue_discard"),
    mode: str = "check",
    auth: Mapping[str, Any] | None = None,
) -> Config:
    """One listener named "mx" of ``kind``; the test plugins found in ``tmp_path/plugins``."""
    base = make_config(tmp_path / "var")
    plugin_dir = write_plugins(tmp_path / "plugins")
    listener = ListenerConfig(
        name="mx",
        host="127.0.0.1",
        port=0,
        kind=kind,
        auth=listener_auth,
        auth_allow_plaintext=plaintext,
    )
    return attrs.evolve(
        base,
        listeners=(listener,),
        plugins=attrs.evolve(base.plugins, order=tuple(order), directories=(plugin_dir,)),
        plugin_configs={"secrets_auth": {"users": dict(USERS), "mode": mode}},
        auth=attrs.evolve(AuthConfig(), **(auth or {})),
    )


@attrs.define
class AuthHarness:
    client: LineClient
    driver: ConnectionDriver
    handler: HookHandler
    finished: trio.Event

    @property
    def session(self) -> Session:
        return self.driver.session

    async def ehlo(self) -> list[str]:
        """Read the greeting, say EHLO; the EHLO keywords."""
        await self.client.expect(220)
        answer = await self.client.command("EHLO client.example", 250)
        return list(answer.lines[1:])


async def start(
    nursery: trio.Nursery,
    config: Config,
    *,
    failures: AuthFailures | None = None,
    tls: str | None = None,
    ip: str = "192.0.2.10",
    bus: EventBus | None = None,
) -> AuthHarness:
    """A driver on the config's only listener; ``tls`` pretends TLS is active (its version)."""
    server_end, client_end = trio.testing.memory_stream_pair()
    transport = StreamTransport(server_end)
    session = Session(
        id="conn1",
        listener=config.listeners[0].name,
        client_ip=ip,
        client_port=40000,
        local_ip="127.0.0.1",
        local_port=25,
        started=0.0,
        tls_version=tls,
    )
    handler = HookHandler(HookRunner(load_plugin_set(config)))
    driver = ConnectionDriver(
        transport,
        session,
        config,
        handler,
        IdGenerator(),
        CountedConnection(bus.counters, protocol_limits(config), tls=tls is not None)
        if bus is not None
        else ServerConnection(protocol_limits(config), tls=tls is not None),
        is_closing=trio.Event(),
        auth_failures=failures,
        bus=bus,
    )
    finished = trio.Event()

    async def run() -> None:
        try:
            await driver.run()
        finally:
            finished.set()
            await transport.aclose()

    nursery.start_soon(run)
    return AuthHarness(LineClient(client_end), driver, handler, finished)
