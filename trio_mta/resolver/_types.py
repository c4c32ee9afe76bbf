"""The resolver Protocol and its value types."""

from __future__ import annotations

from typing import Protocol

import attrs


class DNSError(Exception):
    """The lookup failed in a way that may be temporary (timeout, SERVFAIL, REFUSED…)."""


class NXDomain(DNSError):
    """The name does not exist (RCODE 3): a permanent answer."""


@attrs.frozen(order=True)
class MX:
    """One MX record. ``exchange`` is lower-case without the trailing dot; a Null MX
    (RFC 7505: preference 0, exchange ``.``) has ``exchange == ""``."""

    preference: int
    exchange: str

    @property
    def is_null(self) -> bool:
        return self.exchange == ""


class Resolver(Protocol):
    async def mx(self, name: str) -> list[MX]: ...

    async def a(self, name: str) -> list[str]: ...

    async def aaaa(self, name: str) -> list[str]: ...

    async def txt(self, name: str) -> list[str]:
        """Each TXT record's strings joined (SPF and DKIM records split long values)."""
        ...

    async def ptr(self, address: str) -> list[str]:
        """Names for an IPv4 or IPv6 address (the reverse name is built here)."""
        ...


def normalize_name(name: str) -> str:
    return name.rstrip(".").lower()
