"""What the driver asks of the policy and delivery side, one method per SMTP step.

The driver holds no policy: it parses, enforces protocol limits and deadlines, and asks its
handler what to answer. ``HookHandler`` implements this with the plugin hooks; tests may
implement it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..hooks import Credentials
from ..protocol import Helo, MailFrom, RcptTo, Reply, Unrecognized
from ._session import Session


class SessionHandler(Protocol):
    # The plugin whose verdict the last reply was; None for a built-in rule. The driver sets
    # it to None before each step and reads it when the step's reply is a refusal.
    decided_by: str | None

    async def capabilities(self, session: Session) -> list[str]:
        """Extra EHLO keywords for this session (beyond the engine's own)."""
        ...

    async def connect(self, session: Session) -> Reply | None:
        """None greets normally; a reply (554, 421) refuses the connection with it."""
        ...

    async def helo(self, session: Session, event: Helo) -> Reply | None:
        """None accepts with the engine's own HELO/EHLO reply."""
        ...

    def auth_mechanisms(self, session: Session) -> frozenset[str]:
        """The SASL mechanisms the verifier can check; empty: AUTH is not available."""
        ...

    async def auth(self, session: Session, credentials: Credentials) -> Reply:
        """Verify credentials: 235 accepts, 5xx refuses (counted as a failure), 4xx is a
        temporary failure. The server, not the handler, then marks the session."""
        ...

    async def mail(self, session: Session, event: MailFrom) -> Reply: ...

    async def rcpt(self, session: Session, event: RcptTo) -> Reply: ...

    async def data(self, session: Session) -> Reply:
        """354 to go on, anything else refuses the DATA command (or the first BDAT chunk).
        On 354 the handler must set ``session.transaction.message``."""
        ...

    async def data_chunk(self, session: Session, data: bytes) -> None:
        """A piece of the message as it arrives (dot-unstuffed)."""
        ...

    async def message(self, session: Session) -> Reply:
        """The message is complete. A 2xx reply is a promise: the message must be durable
        before it is returned."""
        ...

    async def unrecognized(self, session: Session, event: Unrecognized) -> Reply: ...

    async def reset(self, session: Session) -> None:
        """The transaction is ending (RSET, HELO, end of data, a refused message, hang-up)."""
        ...

    async def disconnect(self, session: Session) -> None: ...

    def watch_blocking(self, on_block: Callable[[], None], on_unblock: Callable[[], None]) -> None:
        """Call these when policy work starts and stops waiting (for hang-up detection)."""
        ...
