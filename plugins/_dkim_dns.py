"""dkimpy's key lookups (``dnsfunc(name, timeout=5)``) answered by the server's resolver, for
``dkim_verify`` and ``arc``."""

from __future__ import annotations

from collections.abc import Callable

import dkim

from trio_mta import hooks


def dnsfunc(dns: hooks.SyncDNS) -> Callable[..., bytes | None]:
    """None means no such key; a lookup that may work later raises dkimpy's temporary error."""

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        # The name is built from the signature's d= and s= tags: attacker bytes, maybe not UTF-8
        # (the resolver answers a name that cannot exist with NXDomain).
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        try:
            records = dns.txt(text.rstrip("."))
        except hooks.NXDomain:
            return None
        except hooks.DNSError as exc:
            raise dkim.DnsTimeoutError(str(exc)) from None
        for record in records:
            if "p=" in record:  # a name may hold other TXT records beside the key
                return record.encode()
        return records[0].encode() if records else None

    return lookup
