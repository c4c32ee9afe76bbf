"""The server hands relayed mail to the injected queue (``hooks.OutboundQueue``) and answers
250 only once ``submit`` returned; a failing queue is a 451, never a lost message."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from trio_mta.app import load_plugin_set
from trio_mta.config import Config, PluginsConfig
from trio_mta.hooks import Connection
from trio_mta.server import PluginHost, SMTPServer


class FakeQueue:
    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.taken: list[tuple[str | None, list[str], bytes]] = []

    async def submit(self, conn: Connection) -> str:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise OSError(28, "No space left on device")
        txn = conn.transaction
        assert txn is not None
        sender = str(txn.sender) if txn.sender else None
        self.taken.append((sender, [str(a) for a, _ in txn.recipients], txn.message_bytes()))
        return f"Q{len(self.taken)}"


def relay_config(var_dir: Path, allow: str) -> Config:
    return attrs.evolve(
        make_config(var_dir),
        plugins=PluginsConfig(order=("relay_acl",)),
        plugin_configs={"relay_acl": {"allow": [allow]}},
    )


async def session(
    nursery: trio.Nursery, var_dir: Path, queue: FakeQueue, allow: str = "127.0.0.1/32"
) -> LineClient:
    config = relay_config(var_dir, allow)
    host = PluginHost(load_plugin_set(config), queue=queue)
    [bound] = await nursery.start(SMTPServer(config, host.handler).serve)
    client = LineClient(await trio.open_tcp_stream(bound.host, bound.port))
    await client.expect(220)
    return client


async def test_relayed_mail_is_queued_then_answered(nursery: trio.Nursery, var_dir: Path) -> None:
    queue = FakeQueue()
    with trio.fail_after(10):
        client = await session(nursery, var_dir, queue)
        ehlo = await client.command("EHLO c.test", 250)
        assert "DSN" in ehlo.lines
        answer = await client.transaction("a@c.test", ["b@far.test"], b"Subject: s\r\n\r\nhi\r\n")
    assert answer.code == 250
    assert answer.lines[0].endswith("queued as Q1")
    [(sender, rcpts, data)] = queue.taken
    assert (sender, rcpts) == ("a@c.test", ["b@far.test"])
    assert data.startswith(b"Received: ")
    assert data.endswith(b"\r\n\r\nhi\r\n")


async def test_a_failing_queue_means_451(nursery: trio.Nursery, var_dir: Path) -> None:
    with trio.fail_after(10):
        client = await session(nursery, var_dir, FakeQueue(fail=True))
        await client.command("EHLO c.test", 250)
        answer = await client.transaction("a@c.test", ["b@far.test"], b"Subject: s\r\n\r\nhi\r\n")
        assert (answer.code, answer.enhanced) == (451, "4.3.0")
        await client.command("NOOP", 250)  # the session goes on


async def test_clients_that_may_not_relay_never_reach_the_queue(
    nursery: trio.Nursery, var_dir: Path
) -> None:
    queue = FakeQueue()
    with trio.fail_after(10):
        client = await session(nursery, var_dir, queue, allow="192.0.2.0/24")
        await client.command("EHLO c.test", 250)
        await client.command("MAIL FROM:<a@c.test>", 250)
        await client.command("RCPT TO:<b@far.test>", 550, "5.7.1")
    assert queue.taken == []
