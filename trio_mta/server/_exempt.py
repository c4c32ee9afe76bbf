"""Which client addresses ``[limits] exempt_networks`` frees from the per-client limits."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class Exemptions:
    """A set of networks, asked ``ip in exemptions`` with a client's address string."""

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(text) for text in networks)

    def __contains__(self, ip: object) -> bool:
        if not self._networks or not isinstance(ip, str):
            return False
        try:
            address = ipaddress.ip_address(ip.partition("%")[0])  # drop an IPv6 zone id
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
        return any(address in network for network in self._networks)
