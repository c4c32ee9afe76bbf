"""Blocking libraries (pyspf, dkimpy) doing their DNS through the server's async resolver.

Theory of operation: ``run_with_dns(fn, resolver)`` runs ``fn(SyncDNS)`` in a worker thread
(``trio.to_thread.run_sync``, abandoned on cancel). Each ``SyncDNS`` lookup goes back to the
event loop with ``trio.from_thread.run`` and awaits the resolver there, inside a cancel scope
the bridge owns. When the caller is cancelled (the plugin's deadline), the thread is abandoned,
every lookup in flight is cancelled, and every later lookup raises ``Abandoned`` (a
``BaseException``, so library code catching ``Exception`` cannot swallow it): the thread ends
at its next lookup instead of doing DNS for nobody.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ..resolver import MX, Resolver

T = TypeVar("T")
R = TypeVar("R")


class Abandoned(BaseException):
    """The caller of ``run_with_dns`` was cancelled; the thread should stop."""


class SyncDNS:
    """Synchronous lookups for code running in a ``run_with_dns`` thread.

    Raise the resolver's ``NXDomain``/``DNSError`` like the async methods."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._abandoned = False
        self._scopes: set[trio.CancelScope] = set()
        self.queries: list[tuple[str, str]] = []

    def _call(self, fn: Callable[[str], Awaitable[R]], name: str) -> R:
        if self._abandoned:
            raise Abandoned

        async def guarded() -> R:
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    return await fn(name)
                finally:
                    self._scopes.discard(scope)
            raise Abandoned

        return trio.from_thread.run(guarded)

    def abandon(self) -> None:
        """Called in the event loop when the caller was cancelled."""
        self._abandoned = True
        for scope in list(self._scopes):
            scope.cancel()

    def txt(self, name: str) -> list[str]:
        self.queries.append(("TXT", name))
        return self._call(self._resolver.txt, name)

    def a(self, name: str) -> list[str]:
        self.queries.append(("A", name))
        return self._call(self._resolver.a, name)

    def aaaa(self, name: str) -> list[str]:
        self.queries.append(("AAAA", name))
        return self._call(self._resolver.aaaa, name)

    def mx(self, name: str) -> list[MX]:
        self.queries.append(("MX", name))
        return self._call(self._resolver.mx, name)

    def ptr(self, address: str) -> list[str]:
        self.queries.append(("PTR", address))
        return self._call(self._resolver.ptr, address)


async def run_with_dns(fn: Callable[[SyncDNS], T], resolver: Resolver) -> T:
    """``fn(dns)`` in a worker thread, its lookups answered by ``resolver``; see the module."""
    dns = SyncDNS(resolver)
    try:
        return await trio.to_thread.run_sync(fn, dns, abandon_on_cancel=True)
    except trio.Cancelled:
        dns.abandon()
        raise
