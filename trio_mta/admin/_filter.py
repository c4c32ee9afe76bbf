"""What one watcher wants to see, from the ``/events`` query string.

Parameters (each repeatable, or comma-separated; all given ones must match):

``type``
    Event type or prefix: ``transaction.end``, ``transaction``, ``plugin``, ``delivery``.
``ip``
    Client address or CIDR (``192.0.2.7``, ``2001:db8::/32``); events without a client address
    (delivery, watchdog) do not match.
``sender_domain`` / ``rcpt_domain``
    Domain of MAIL FROM / of any RCPT TO, case-insensitive. These select transactions: an
    event matches when it names a matching address (``transaction.mail``/``rcpt``/``end``), and
    from then on every event of that transaction matches too (plugin calls, later
    recipients). Connection-level events do not match.
``replay``
    How many recent events to send first (at most ``[admin] replay``).

``gap`` events always pass: a watcher must know it lost events.
"""

from __future__ import annotations

import ipaddress

import attrs

from ..events import EVENT_TYPES, Event, Gap
from ._http import HttpError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAX_REMEMBERED = 10_000


def _values(query: dict[str, list[str]], name: str) -> tuple[str, ...]:
    out: list[str] = []
    for raw in query.get(name, ()):
        out.extend(v.strip() for v in raw.split(",") if v.strip())
    return tuple(out)


def _domains(query: dict[str, list[str]], name: str) -> frozenset[str]:
    return frozenset(d.lower().rstrip(".") for d in _values(query, name))


def _domain(address: object) -> str:
    if not isinstance(address, str):
        return ""
    return address.rpartition("@")[2].lower().rstrip(".")


@attrs.define
class EventFilter:
    types: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()
    sender_domains: frozenset[str] = frozenset()
    rcpt_domains: frozenset[str] = frozenset()
    replay: int = 0
    _matched: dict[str, None] = attrs.Factory(dict)  # transactions already selected
    _type_ok: dict[str, bool] = attrs.Factory(dict)  # the type test's answer, per type

    @classmethod
    def from_query(cls, query: dict[str, list[str]], max_replay: int) -> EventFilter:
        """Raises ``HttpError(400)`` naming the parameter that is wrong."""
        networks: list[Network] = []
        for text in _values(query, "ip"):
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise HttpError(400, f"admin: ip={text!r} is not an address or CIDR") from None
        replay_text = (query.get("replay") or ["0"])[-1]
        if not replay_text.isdigit():
            raise HttpError(400, f"admin: replay={replay_text!r} is not a number")
        return cls(
            types=_values(query, "type"),
            networks=tuple(networks),
            sender_domains=_domains(query, "sender_domain"),
            rcpt_domains=_domains(query, "rcpt_domain"),
            replay=min(int(replay_text), max_replay),
        )

    def wants_type(self, kind: str) -> bool:
        """Whether the type filter lets ``kind`` through: a type or a whole dotted prefix."""
        ok = self._type_ok.get(kind)
        if ok is None:
            ok = self._type_ok[kind] = not self.types or any(
                kind == t or kind.startswith(t + ".") for t in self.types
            )
        return ok

    @property
    def wants_plugin_calls(self) -> bool:
        return self.wants_type("plugin.call")

    def kinds(self) -> frozenset[type[Event]] | None:
        """The event classes the type filter lets through (None: no type filter), so the bus
        never builds a deferred event this watcher would drop."""
        if not self.types:
            return None
        return frozenset(cls for cls in EVENT_TYPES if self.wants_type(cls.TYPE))

    @property
    def needs_match(self) -> bool:
        """Whether ``match`` must see each event: the type filter alone is done by ``kinds``."""
        return bool(self.networks or self.sender_domains or self.rcpt_domains)

    def describe(self) -> dict[str, object]:
        return {
            "type": list(self.types),
            "ip": [str(n) for n in self.networks],
            "sender_domain": sorted(self.sender_domains),
            "rcpt_domain": sorted(self.rcpt_domains),
        }

    def match(self, event: Event) -> bool:
        if type(event) is Gap:
            return True
        if not self.wants_type(event.TYPE):
            return False
        if self.networks:
            ip = getattr(event, "ip", None)
            if not isinstance(ip, str):
                return False
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return False
            if not any(address in network for network in self.networks):
                return False
        if self.sender_domains or self.rcpt_domains:
            return self._domains_match(event)
        return True

    def _domains_match(self, event: Event) -> bool:
        txn = event.txn
        if txn is None:
            return False
        if txn in self._matched:
            return True
        sender_ok = (
            not self.sender_domains
            or _domain(getattr(event, "sender", None)) in self.sender_domains
        )
        rcpts: list[object] = []
        if hasattr(event, "recipient"):
            rcpts.append(event.recipient)
        if hasattr(event, "recipients"):
            rcpts.extend(event.recipients)
        rcpt_ok = not self.rcpt_domains or any(_domain(r) in self.rcpt_domains for r in rcpts)
        if sender_ok and rcpt_ok:
            if len(self._matched) >= _MAX_REMEMBERED:
                del self._matched[next(iter(self._matched))]
            self._matched[txn] = None
            return True
        return False
