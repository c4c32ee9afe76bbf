"""Let clients relay by IP address (Haraka's relay ``acl``, qpsmtpd's ``relay``).

A client whose address is inside one of the ``allow`` networks gets ``conn.relaying = True`` at
``connect_init``: the server then accepts recipients no plugin said OK to, and hands their
messages to the ``queue_outbound`` hook. Nothing else is decided here; other clients are left
alone, unless ``deny_outside`` is set.

Config (``conf/plugins/relay_acl.toml``):

``allow`` (default ``[]``: nobody relays by address)
    Networks in CIDR form (``"10.0.0.0/8"``, ``"2001:db8::/32"``) or single addresses
    (``"::1"``). Host bits are allowed (``"127.0.0.1/8"`` means ``127.0.0.0/8``). IPv4 clients
    seen as IPv4-mapped IPv6 (``::ffff:192.0.2.1``) match IPv4 networks.
``deny_outside`` (default ``false``)
    Refuse every other client at ``connect`` (554 5.7.1): for a listener or a server that only
    serves its own machines, e.g. a smarthost for a LAN.
``message`` (default ``"Relaying not permitted from your address"``)
    The text of that refusal.

The note ``conn.notes["relay_acl"]`` holds the matching network, for logs and other plugins.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from trio_mta import hooks

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_KEYS = frozenset({"allow", "deny_outside", "message"})


def parse_networks(key: str, value: object) -> tuple[IPNetwork, ...]:
    """A TOML list of CIDR strings, or ValueError naming the key and the bad entry."""
    if not isinstance(value, list):
        raise ValueError(f"{key}: must be a list of networks, e.g. ['10.0.0.0/8', '::1']")
    networks: list[IPNetwork] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{key}: {item!r} is not a string")
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{key}: {item!r} is not an IP network ({exc})") from None
    return tuple(networks)


def client_address(text: str) -> IPAddress | None:
    """The client's IP, IPv4-mapped IPv6 unwrapped; None if it is not an IP (a Unix socket)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def first_match(address: IPAddress | None, networks: Iterable[IPNetwork]) -> IPNetwork | None:
    if address is None:
        return None
    return next((n for n in networks if address.version == n.version and address in n), None)


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        unknown = set(self.config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        self.allow = parse_networks("allow", self.config.get("allow", []))
        deny_outside = self.config.get("deny_outside", False)
        if not isinstance(deny_outside, bool):
            raise ValueError("deny_outside: must be true or false")
        self.deny_outside = deny_outside
        message = self.config.get("message", "Relaying not permitted from your address")
        if not isinstance(message, str) or not message.strip() or not message.isprintable():
            raise ValueError("message: must be one non-empty line of printable text")
        self.message = message

    async def hook_connect_init(self, conn: hooks.Connection) -> None:
        network = first_match(client_address(conn.client_ip), self.allow)
        if network is not None:
            conn.relaying = True
            conn.notes["relay_acl"] = str(network)

    async def hook_connect(self, conn: hooks.Connection) -> hooks.Result:
        if self.deny_outside and first_match(client_address(conn.client_ip), self.allow) is None:
            return hooks.deny(self.message, code=554, enhanced="5.7.1")
        return hooks.CONT
