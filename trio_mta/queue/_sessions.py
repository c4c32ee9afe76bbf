"""Idle outbound SMTP sessions, kept for the next message to the same hop.

Theory of operation (Postfix's connection cache): after a transaction the client's session is
ready for another (``send_message`` leaves it so), so instead of QUIT it is parked under its
hop's key (address, port, TLS policy, credentials) for ``idle`` seconds; the next delivery to
that hop takes it instead of connecting. A session carries at most ``max_uses`` messages.
``reap`` sleeps until the earliest expiry (or until woken by a new park) and closes what
expired: it never polls. A parked session the remote closed meanwhile fails at its first
command; the deliverer then connects afresh.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from contextlib import AsyncExitStack

import attrs
import trio

from ..hooks import SMTPClient


@attrs.define(eq=False)
class Session:
    client: SMTPClient
    stack: AsyncExitStack  # holds open_smtp_client: closing it says QUIT
    uses: int = 0
    expires: float = 0.0


class SessionCache:
    def __init__(self, *, idle: float = 2.0, max_uses: int = 100) -> None:
        self.idle = idle
        self.max_uses = max_uses
        self._parked: dict[Hashable, list[Session]] = {}
        self._doomed: list[Session] = []
        self._wake = trio.Event()
        self.reused = 0

    def take(self, key: Hashable) -> Session | None:
        """A parked session for ``key``, if one is still fresh."""
        parked = self._parked.get(key)
        now = trio.current_time()
        while parked:
            session = parked.pop()
            if session.expires > now:
                self.reused += 1
                return session
            self._doomed.append(session)
            self._wake.set()
        return None

    def park(self, key: Hashable, session: Session) -> None:
        session.uses += 1
        if session.uses >= self.max_uses or self.idle <= 0:
            self._doomed.append(session)
        else:
            session.expires = trio.current_time() + self.idle
            self._parked.setdefault(key, []).append(session)
        self._wake.set()

    @staticmethod
    async def close(session: Session) -> None:
        """QUIT (two seconds at most), then the socket; never interrupted by cancellation."""
        with trio.move_on_after(2, shield=True) as polite:
            await session.stack.aclose()
        if polite.cancelled_caught:
            with trio.CancelScope(shield=True):
                await session.client.aclose()

    def _expired(self) -> list[Session]:
        now = trio.current_time()
        found, self._doomed = self._doomed, []
        for key, parked in list(self._parked.items()):
            keep = [s for s in parked if s.expires > now]
            found += [s for s in parked if s.expires <= now]
            if keep:
                self._parked[key] = keep
            else:
                del self._parked[key]
        return found

    async def reap(self) -> None:
        """Close sessions as they expire, forever (run it in the queue's supervisor)."""
        try:
            while True:
                self._wake = trio.Event()
                for session in self._expired():
                    await self.close(session)
                earliest = min(
                    (s.expires for parked in self._parked.values() for s in parked),
                    default=math.inf,
                )
                with trio.move_on_at(earliest):
                    await self._wake.wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        sessions = self._doomed + [s for parked in self._parked.values() for s in parked]
        self._doomed, self._parked = [], {}
        for session in sessions:
            await self.close(session)
