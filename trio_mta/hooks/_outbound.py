"""What outbound-delivery plugins see, and the queue handle the server is given.

The queue's workers run five hooks through the same runner as the SMTP hooks, each with a
connection made for the delivery (``listener == "queue"``) whose transaction holds the
envelope:

``get_mx(conn, domain, hosts)``
    Append ``MXHost`` entries to ``hosts`` and return OK to route ``domain`` there instead of
    its MX records (DENY bounces the recipients, DENYSOFT defers them).
``send_email(conn, report)``
    Before a delivery: OK means the plugin delivered it, DENY bounces, DENYSOFT defers.
``delivered(conn, report)``, ``deferred(conn, report)``
    Notifications after an attempt (results ignored).
``bounce(conn, report)``
    A recipient failed for good: OK suppresses the bounce message (the plugin handled it);
    setting ``conn.transaction.sender`` to another address sends the bounce there instead.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from ..protocol import Reply
from ._context import Connection


@attrs.frozen
class MXHost:
    """A host to deliver to: a name (its A/AAAA records are looked up) or an IP literal."""

    host: str
    preference: int = 0
    port: int | None = None  # None: the route's or [queue] port


@attrs.frozen
class DeliveryReport:
    """One destination's outcome within one attempt."""

    queue_id: str
    domain: str
    recipients: tuple[str, ...]
    reply: Reply | None = None  # the last word: the remote's reply or our own diagnosis
    host: str | None = None  # the remote host that gave it
    attempts: int = 0


class OutboundQueue(Protocol):
    """The durable queue as the SMTP server sees it (injected; the server never imports it)."""

    async def submit(self, conn: Connection) -> str:
        """Make ``conn.transaction`` durable (fsynced) and return its queue id. Raises
        ``OSError`` (or another ``Exception``) when it could not: then no 2xx may be sent."""
        ...
