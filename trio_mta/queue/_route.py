"""Where a domain's mail goes: configured routes, MX records, addresses to connect to.

Theory of operation (RFC 5321 §5.1, RFC 7505)
---------------------------------------------
A ``[[route]]`` whose ``domain`` is the recipient domain wins, then the longest ``.suffix``
route, then ``*`` (a smart host), which applies to non-local mail only (Postfix's
``relayhost``): a domain of ``[server] local_domains`` with no route of its own is delivered
locally (the ``queue`` hook), our own bounces to local users included.
A route with a ``host`` goes there; otherwise (and with no route) the hosts come from a
``get_mx`` plugin or from DNS: MX records sorted by preference, shuffled among equal
preferences; no MX records at all means the domain itself is the one "implicit" MX (its A/AAAA
records); a Null MX (a single ``MX 0 .``) means the domain accepts no mail: a permanent failure.
A domain that does not exist (NXDOMAIN) fails permanently; a DNS failure that may be temporary
defers. Every host name becomes its IPv4 then IPv6 addresses, up to ``MAX_ADDRESSES`` hops in
all; the caller tries them in order.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence

import attrs

from ..config import Config, RouteConfig, TlsPolicy
from ..hooks import MXHost
from ..protocol import Reply
from ..resolver import DNSError, NXDomain, Resolver

MAX_ADDRESSES = 10


class RouteError(Exception):
    """No hop to try; ``reply`` says why (5xx: bounce, 4xx: defer)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@attrs.frozen
class Hop:
    name: str  # the host name (TLS SNI, logs); an IP for literals
    address: str
    port: int


@attrs.frozen
class Route:
    """How one destination is reached (hops are filled in by ``Router.plan``)."""

    key: str  # what the per-destination limit counts: the domain, or the fixed host
    domain: str
    config: RouteConfig | None
    starttls: TlsPolicy
    port: int
    hops: tuple[Hop, ...] = ()

    @property
    def auth(self) -> tuple[str, str] | None:
        if self.config is not None and self.config.auth_user:
            return self.config.auth_user, self.config.auth_password
        return None


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip("[]").removeprefix("IPv6:")))
    except ValueError:
        return None


class Router:
    def __init__(
        self, config: Config, resolver: Resolver, *, rng: random.Random | None = None
    ) -> None:
        self.routes = {r.domain: r for r in config.routes}
        self.local_domains = frozenset(config.server.local_domains)
        self.port = config.queue.port
        self.starttls = config.queue.starttls
        self.resolver = resolver
        self.rng = rng or random.Random()

    def route(self, domain: str) -> Route:
        """The configured route for ``domain`` (no DNS yet)."""
        domain = domain.lower()
        found = self.routes.get(domain)
        if found is None:
            labels = domain.split(".")
            for i in range(1, len(labels)):
                found = self.routes.get("." + ".".join(labels[i:]))
                if found is not None:
                    break
        if found is None and domain not in self.local_domains:
            found = self.routes.get("*")
        port = (found.port if found is not None else 0) or self.port
        policy = TlsPolicy(found.starttls) if found is not None and found.starttls else None
        key = f"{found.host}:{port}" if found is not None and found.host else domain
        return Route(key, domain, found, policy or self.starttls, port)

    async def plan(self, route: Route, hosts: Sequence[MXHost] | None = None) -> Route:
        """``route`` with its hops. ``hosts`` (from a get_mx plugin) replace the MX lookup.

        Raises:
            RouteError: nowhere to go (permanent or temporary, as its reply says).
        """
        if route.config is not None and route.config.host:
            hosts = [MXHost(route.config.host)]
        elif hosts is None:
            hosts = await self._mx_hosts(route.domain)
        hops: list[Hop] = []
        temporary: list[str] = []
        for host in hosts:
            if len(hops) >= MAX_ADDRESSES:
                break
            port = host.port or route.port
            literal = _ip(host.host)
            if literal is not None:
                hops.append(Hop(host.host, literal, port))
                continue
            try:
                addresses = await self._addresses(host.host)
            except NXDomain:
                continue
            except DNSError as exc:
                temporary.append(str(exc))
                continue
            hops.extend(Hop(host.host, a, port) for a in addresses)
        if not hops:
            if temporary:
                raise RouteError(Reply(451, "4.4.3", f"DNS failure: {temporary[0]}"))
            names = ", ".join(h.host for h in hosts) or route.domain
            raise RouteError(Reply(550, "5.4.4", f"Host not found: no address for {names}"))
        return attrs.evolve(route, hops=tuple(hops[:MAX_ADDRESSES]))

    async def _mx_hosts(self, domain: str) -> list[MXHost]:
        literal = _ip(domain) if domain.startswith("[") else None
        if literal is not None:
            return [MXHost(literal)]
        try:
            records = await self.resolver.mx(domain)
        except NXDomain:
            raise RouteError(Reply(550, "5.1.2", f"Domain {domain} does not exist")) from None
        except DNSError as exc:
            raise RouteError(Reply(451, "4.4.3", f"DNS failure looking up MX: {exc}")) from None
        if any(r.is_null for r in records):
            # RFC 7505 §3: a Null MX is the only record; a stray one still means "no mail".
            raise RouteError(Reply(556, "5.1.10", f"Domain {domain} accepts no mail (null MX)"))
        if not records:
            return [MXHost(domain)]  # implicit MX, RFC 5321 §5.1
        by_pref: dict[int, list[str]] = {}
        for record in records:
            by_pref.setdefault(record.preference, []).append(record.exchange)
        hosts: list[MXHost] = []
        for preference in sorted(by_pref):
            names = list(dict.fromkeys(by_pref[preference]))
            self.rng.shuffle(names)
            hosts.extend(MXHost(name, preference) for name in names)
        return hosts

    async def _addresses(self, name: str) -> list[str]:
        """IPv4 then IPv6; NXDomain only if the name does not exist at all."""
        found: list[str] = []
        errors: list[DNSError] = []
        for lookup in (self.resolver.a, self.resolver.aaaa):
            try:
                found.extend(await lookup(name))
            except NXDomain:
                raise
            except DNSError as exc:
                errors.append(exc)
        if not found and errors:
            raise errors[0]
        return found
