"""Over a real socket through the server: the mail-auth plugins as configured by an operator
(``[resolver] nameservers`` pointing at dnsmasq), deciding at MAIL and at the final dot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio

from tests.helpers.config import make_config
from tests.helpers.maildir import as_received
from tests.helpers.smtp import LineClient
from tests.mailauth.conftest import DNS, Keys
from tests.mailauth.test_dkim import sign
from trio_mta.app import load_plugin_set
from trio_mta.config import ResolverConfig
from trio_mta.server import BoundListener, PluginHost, SMTPServer

ORDER = ("spf", "dkim_verify", "arc", "dmarc", "auth_results", "rcpt_to_host_list", "queue_maildir")

Connect = Callable[[], Awaitable[LineClient]]


@pytest.fixture
async def mta(nursery: trio.Nursery, dnsmasq: DNS, var_dir: Path) -> AsyncIterator[Connect]:
    base = make_config(var_dir)
    config = attrs.evolve(
        base,
        plugins=attrs.evolve(base.plugins, order=ORDER),
        resolver=ResolverConfig(nameservers=(dnsmasq.nameserver,)),
        plugin_configs={**base.plugin_configs, "auth_results": {"authserv_id": "mx.e2e.test"}},
    )
    server = SMTPServer(config, PluginHost(load_plugin_set(config)).handler)
    stopped = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[list[BoundListener]]) -> None:
        try:
            await server.serve(task_status=task_status)
        finally:
            stopped.set()

    [bound] = await nursery.start(serve)

    async def connect() -> LineClient:
        client = LineClient(await trio.open_tcp_stream(bound.host, bound.port))
        await client.expect(220)
        await client.command("EHLO helo.test", 250)
        return client

    yield connect
    server.request_shutdown()
    with trio.fail_after(10):
        await stopped.wait()


def delivered(var_dir: Path) -> list[bytes]:
    return [as_received(p.read_bytes()) for p in sorted((var_dir / "maildir").rglob("new/*"))]


async def test_spf_fail_at_mail_and_dmarc_at_the_dot(
    mta: Connect, keys: Keys, tmp_path: Path, var_dir: Path
) -> None:
    client = await mta()
    # 127.0.0.1 is not in fail.test's SPF record: refused at MAIL.
    await client.command("MAIL FROM:<a@fail.test>", 550, "5.7.23")
    # soft.test softfails (accepted), but From: sender.test (p=reject) has no aligned pass.
    unsigned = b"From: a@sender.test\r\nTo: bob@example.test\r\nSubject: x\r\n\r\nhi\r\n"
    reply = await client.transaction("a@soft.test", ["bob@example.test"], unsigned)
    assert (reply.code, reply.enhanced) == (550, "5.7.1")
    # The same From, DKIM-signed by sender.test: aligned pass, accepted and stored with our
    # Authentication-Results (and a forged one for our id dropped).
    _, signed = await sign(tmp_path, keys)
    forged = b"Authentication-Results: mx.e2e.test; dmarc=pass header.from=sender.test\r\n"
    reply = await client.transaction("a@soft.test", ["bob@example.test"], forged + signed)
    assert reply.code == 250, reply
    [stored] = delivered(var_dir)
    assert stored.count(b"Authentication-Results:") == 1
    assert (
        b"Authentication-Results: mx.e2e.test; spf=softfail smtp.mailfrom=soft.test;"
        b" dkim=pass header.d=sender.test header.s=ed" in stored
    )
    assert b"dmarc=pass policy.dmarc=reject header.from=sender.test; arc=none\r\n" in stored
    await client.command("QUIT", 221)
