"""Outbound hooks through the runner: get_mx, send_email, delivered, deferred, bounce, and
local delivery of bounces through the queue hook."""

from __future__ import annotations

import textwrap
from pathlib import Path

import trio
import trio.testing

from tests.queue.kit import FakeDeliverer, connection, make_service, started, until_empty
from trio_mta.config import RouteConfig
from trio_mta.hooks import HookRunner, PluginEnv, PluginSet, load_plugins

PLUGIN = """
from trio_mta import hooks

class Plugin(hooks.Plugin):
    def setup(self):
        self.seen = []

    async def hook_get_mx(self, conn, domain, hosts):
        if domain == "plugin.test":
            hosts.append(hooks.MXHost("192.0.2.99", port=2600))
            return hooks.OK
        return hooks.CONT

    async def hook_send_email(self, conn, report):
        if report.domain == "byplugin.test":
            return hooks.ok()
        if report.domain == "denied.test":
            return hooks.deny("Not to them", code=554, enhanced="5.7.1")
        return hooks.CONT

    async def hook_delivered(self, conn, report):
        self.seen.append(("delivered", conn.listener, report.recipients, report.host))

    async def hook_deferred(self, conn, report):
        self.seen.append(("deferred", conn.listener, report.recipients, report.reply.code))

    async def hook_bounce(self, conn, report):
        if report.recipients[0].startswith("quiet"):
            return hooks.OK
        return hooks.CONT

    async def hook_queue(self, conn):
        txn = conn.transaction
        self.seen.append(("queue", tuple(str(a) for a, _ in txn.recipients), txn.sender))
        return hooks.ok()
"""


def plugins(tmp_path: Path) -> PluginSet:
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "outbound.py").write_text(textwrap.dedent(PLUGIN))
    return load_plugins(["outbound"], directories=[directory], env=PluginEnv())


async def test_outbound_hooks(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    loaded = plugins(tmp_path)
    fake = FakeDeliverer()
    service = await started(
        nursery, make_service(tmp_path, fake, runner=lambda: HookRunner(loaded))
    )
    await service.submit(connection("a@sender.test", ["x@plugin.test", "y@byplugin.test"]))
    await service.submit(connection("a@sender.test", ["z@denied.test"]))
    await service.submit(connection("a@sender.test", ["quiet-reject@dest.test"]))
    await service.submit(connection("a@sender.test", ["late@dest.test"]))
    await service.submit(connection("me@example.test", ["reject@dest.test"]))  # a local sender
    await until_empty(service)
    seen = loaded.plugins[0].seen  # type: ignore[attr-defined]  # the test plugin's record
    # get_mx: routed where the plugin said; send_email OK: no connection at all.
    assert [c.hops for c in fake.calls if c.recipients == ("x@plugin.test",)] == [
        (("192.0.2.99", 2600),)
    ]
    assert all("y@byplugin.test" not in c.recipients for c in fake.calls)
    assert ("delivered", "queue", ("y@byplugin.test",), "plugin") in seen
    assert ("deferred", "queue", ("late@dest.test",), 451) in seen
    assert ("delivered", "queue", ("late@dest.test",), "mx.dest.test") in seen
    # Bounces: denied.test by the plugin's DENY; the quiet one suppressed by the bounce hook;
    # the local sender's through the queue hook (local delivery), not over SMTP.
    bounced_to = [c.recipients for c in fake.calls if c.sender is None]
    assert bounced_to == [("a@sender.test",)]
    assert ("queue", ("me@example.test",), None) in seen


async def test_a_smart_host_does_not_take_local_mail_or_our_bounces_to_local_users(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    loaded = plugins(tmp_path)
    fake = FakeDeliverer()
    smart = (RouteConfig(domain="*", host="192.0.2.25"),)
    service = await started(
        nursery, make_service(tmp_path, fake, runner=lambda: HookRunner(loaded), routes=smart)
    )
    # A relayed message to a local user and a remote one; a local sender's failed message.
    await service.submit(connection("a@sender.test", ["user@example.test", "x@dest.test"]))
    await service.submit(connection("me@example.test", ["reject@dest.test"]))
    await until_empty(service)
    seen = loaded.plugins[0].seen  # type: ignore[attr-defined]  # the test plugin's record
    # Remote mail goes to the smart host; local mail and the bounce to me@ are local.
    assert {c.recipients for c in fake.calls} == {("x@dest.test",), ("reject@dest.test",)}
    assert {c.hops for c in fake.calls} == {(("192.0.2.25", 25),)}
    assert [s[1] for s in seen if s[0] == "queue"] == [("user@example.test",), ("me@example.test",)]
    assert ("queue", ("me@example.test",), None) in seen
