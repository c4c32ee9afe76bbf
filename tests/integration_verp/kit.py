"""The daemon in-process (``app.run``) with the verp plugin, an aiosmtpd server downstream on
loopback, and clients that may (127.0.0.1, ``relay_acl``) or may not (127.0.0.2) relay.

Outbound mail for ``remote.example`` goes through the built-in queue to a ``[[route]]`` naming
the aiosmtpd server's port (or a port nobody listens on, for a destination that is down), so
no DNS is involved. ``store_in_spool`` writes an entry as a daemon that accepted it and then
stopped would have left it.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.integration_envelope.kit import OUTSIDE, connect, envelope_config
from tests.integration_plugins.kit import Running
from tests.smtpclient.peers import HOST, Recorder
from trio_mta.config import Config, QueueConfig
from trio_mta.queue import Envelope as QueueEnvelope
from trio_mta.queue import Spool, spool_root

__all__ = ["OUTSIDE", "connect"]

LIST = "list-bounces@example.test"
ORDER = ("relay_acl", "verp", "batv", "rcpt_to_host_list", "queue_maildir")
BATV_KEY = "integration batv key, long enough"
RETRY = 0.5  # seconds before a deferred message is tried again


@attrs.define
class Downstream(Recorder):
    """aiosmtpd's recorder that also counts sessions (one EHLO each)."""

    sessions: int = 0

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.sessions += 1
        return await super().handle_EHLO(server, session, envelope, hostname, responses)


def dead_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def verp_config(
    var_dir: Path,
    port: int,
    verp: Mapping[str, object] | None = None,
    *,
    order: Sequence[str] = ORDER,
) -> Config:
    """Relaying for 127.0.0.1, ``remote.example`` routed to ``127.0.0.1:<port>``, the verp
    plugin with ``verp`` (default: ``addresses = [LIST]``), batv rejecting unsigned bounces,
    and deferred mail retried after ``RETRY`` seconds."""
    config = envelope_config(
        var_dir,
        order,
        {"verp": dict(verp or {"addresses": [LIST]}), "batv": {"keys": [BATV_KEY]}},
        {"remote.example": port},
    )
    queue = attrs.evolve(config.queue, retry_first=RETRY, retry_max=RETRY)
    assert isinstance(queue, QueueConfig)
    return attrs.evolve(config, queue=queue)


async def store_in_spool(config: Config, envelope: QueueEnvelope, message: bytes) -> None:
    """``envelope`` and ``message`` in the daemon's spool, before the daemon starts."""
    spool = Spool(spool_root(config), fsync=False, inline=True)
    spool.create()
    await spool.store(envelope, [message])


async def mail_reply(mta: Running, line: str, *, source: str = "127.0.0.1") -> str:
    """The reply to ``line`` (a MAIL command) on a new connection, as ``"555 5.5.4 text"``."""
    client = await connect(mta, source)
    await client.send(line + "\r\n")
    answer = await client.reply()
    await client.command("QUIT", 221)
    await client.stream.aclose()
    return f"{answer.code} {answer.text}"


async def send_xverp(
    mta: Running, recipients: Sequence[str], body: bytes, *, param: str = " XVERP"
) -> str:
    """One message from ``LIST`` with ``param`` on MAIL, relayed; the reply to the data."""
    client = await connect(mta)
    await client.command(f"MAIL FROM:<{LIST}>{param}", 250)
    for rcpt in recipients:
        await client.command(f"RCPT TO:<{rcpt}>", 250)
    await client.command("DATA", 354)
    await client.send(body + b".\r\n")
    answer = await client.reply()
    await client.command("QUIT", 221)
    await client.stream.aclose()
    return f"{answer.code} {answer.text}"
