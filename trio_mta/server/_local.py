"""The engine's own policy when no plugins decide: accept mail for the local domains, refuse to
relay anything else, and store accepted mail in a Maildir (or discard it, for benchmarks)."""

from __future__ import annotations

import trio

from ..protocol import Helo, MailFrom, RcptTo, Reply, reply
from ..protocol import replies as R
from ._maildir import MaildirStore
from ._session import Session

RELAY_DENIED = reply(550, "5.7.1", "Relaying denied")


class LocalDeliveryHandler:
    """A ``SessionHandler``. ``store`` None means discard (the engine benchmark's mode)."""

    def __init__(
        self,
        local_domains: tuple[str, ...],
        store: MaildirStore | None,
        *,
        threads: int = 16,
    ) -> None:
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.postmaster_domain = local_domains[0].lower() if local_domains else "localhost"
        self.store = store
        # Bounds the disk threads so a burst of DATA can't start a thread per message.
        self._limiter = trio.CapacityLimiter(threads)

    def capabilities(self, session: Session) -> list[str]:
        return []

    async def connect(self, session: Session) -> Reply | None:
        return None

    async def helo(self, session: Session, event: Helo) -> Reply | None:
        return None

    async def mail(self, session: Session, event: MailFrom) -> Reply:
        return R.SENDER_OK

    async def rcpt(self, session: Session, event: RcptTo) -> Reply:
        rcpt = event.recipient
        if rcpt.is_postmaster or rcpt.domain_lower in self.local_domains:
            return R.RECIPIENT_OK
        return RELAY_DENIED

    async def data(self, session: Session) -> Reply:
        return R.START_DATA

    async def message(self, session: Session, message: bytes) -> Reply:
        txn = session.transaction
        assert txn is not None
        if self.store is not None:
            boxes = [
                (self.postmaster_domain if not a.domain else a.domain_lower, a.unquoted_local_part)
                for a, _ in txn.recipients
            ]
            await trio.to_thread.run_sync(
                self.store.deliver, txn.id, boxes, message, limiter=self._limiter
            )
        return reply(250, "2.0.0", f"OK queued as {txn.id}")

    async def reset(self, session: Session) -> None:
        return None

    async def disconnect(self, session: Session) -> None:
        return None
