"""The daemon in-process (``app.run``) with srs/batv, real aiosmtpd servers downstream on
loopback, and clients that may or may not relay.

``relay_acl`` lets 127.0.0.1 relay; a client connecting from 127.0.0.2 is an outside MTA
(another address of the loopback network, so the traffic never leaves the machine). Outbound
mail goes through the built-in queue to ``[[route]]``s naming the aiosmtpd servers' ports, so
no DNS is involved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import trio

from tests.helpers.config import make_config
from tests.helpers.maildir import as_received
from tests.helpers.smtp import LineClient, ServerReply
from tests.integration_plugins.kit import Running
from tests.smtpclient.peers import HOST, Received, Recorder
from trio_mta.config import Config, PluginsConfig, QueueConfig, RouteConfig

CAP = 20.0  # seconds of real time for a whole test
OUTSIDE = "127.0.0.2"  # a client that may not relay
SECRET = "integration secret, long enough"
BATV_KEY = "integration batv key, long enough"
HOSTNAME = "mx.example.test"
LOCAL = ("example.test",)


def message(tag: str, sender: str = "alice@sender.test") -> bytes:
    return (
        f"From: {sender}\r\nTo: someone\r\nSubject: {tag}\r\nMessage-ID: <{tag}@test>\r\n"
        f"\r\nbody of {tag}\r\n"
    ).encode()


def envelope_config(
    var_dir: Path,
    order: Sequence[str],
    plugin_configs: Mapping[str, Mapping[str, object]],
    routes: Mapping[str, int],
) -> Config:
    """``make_config`` (loopback port 0, Maildir under ``var_dir``) with this plugin order,
    relay_acl for 127.0.0.1, and a route to ``127.0.0.1:<port>`` per domain."""
    base = make_config(var_dir)
    configs = {name: dict(table) for name, table in base.plugin_configs.items()}
    configs["relay_acl"] = {"allow": ["127.0.0.1/32"]}
    configs.update({name: dict(table) for name, table in plugin_configs.items()})
    queue = attrs.evolve(
        QueueConfig(), fsync=False, starttls="never", dead_destination=0.0, connect_timeout=5.0
    )
    return attrs.evolve(
        base,
        server=attrs.evolve(base.server, hostname=HOSTNAME, local_domains=LOCAL),
        plugins=PluginsConfig(order=tuple(order)),
        plugin_configs=configs,
        queue=queue,
        routes=tuple(RouteConfig(domain=d, host=HOST, port=p) for d, p in routes.items()),
        tls=attrs.evolve(base.tls, generate_self_signed=False),
        admin=attrs.evolve(base.admin, enabled=False),
    )


async def connect(mta: Running, source: str = "127.0.0.1") -> LineClient:
    """A greeted client (EHLO done) connecting from ``source``."""
    stream = await trio.open_tcp_stream(mta.host, mta.port, local_address=source)
    client = LineClient(stream)
    await client.expect(220)
    await client.command("EHLO client.test", 250)
    return client


async def send(
    mta: Running,
    sender: str,
    recipients: Sequence[str],
    body: bytes,
    *,
    source: str = "127.0.0.1",
) -> ServerReply:
    """One transaction on a new connection (every RCPT must get 250); the reply to the data."""
    client = await connect(mta, source)
    answer = await client.transaction(sender, list(recipients), body)
    await client.command("QUIT", 221)
    await client.stream.aclose()
    return answer


async def rcpt_reply(mta: Running, sender: str, recipient: str, *, source: str) -> str:
    """The reply to one RCPT TO (then QUIT), as ``"550 5.7.1 text"``."""
    client = await connect(mta, source)
    await client.command(f"MAIL FROM:<{sender}>", 250)
    await client.send(f"RCPT TO:<{recipient}>\r\n")
    answer = await client.reply()
    await client.command("QUIT", 221)
    await client.stream.aclose()
    return f"{answer.code} {answer.text}"


async def wait_received(recorder: Recorder, count: int = 1) -> list[Received]:
    """Poll (real clock: aiosmtpd runs in its own thread) until ``count`` messages arrived."""
    with trio.fail_after(CAP):
        while len(recorder.received) < count:  # noqa: ASYNC110  # another thread appends
            await trio.sleep(0.02)
    return list(recorder.received)


def files_in(directory: Path) -> list[bytes]:
    """The contents of the files in ``directory`` (none if it does not exist), by name."""
    if not directory.is_dir():
        return []
    return [p.read_bytes() for p in sorted(directory.iterdir())]


async def wait_files(directory: Path, count: int = 1) -> list[bytes]:
    """Poll until ``directory`` (a Maildir ``new/``) holds ``count`` files; their messages as
    received (``as_received``: delivery lines checked and dropped, CRLF). (Small reads on the
    event loop: the files are a test's few messages.)"""
    with trio.fail_after(CAP):
        while len(found := files_in(directory)) < count:  # noqa: ASYNC110  # a child process writes
            await trio.sleep(0.02)
    return [as_received(raw) for raw in found]
