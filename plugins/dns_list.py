"""DNS block lists and allow lists for the client address (DNSBL/DNSWL, RFC 5782): Haraka's
``dns-list``, Postfix's ``reject_rbl_client`` and ``permit_dnswl_client``.

Theory of operation
-------------------
At ``connect`` the client's address is looked up in every zone at once, one trio task per zone,
as the A record of ``<reversed address>.<zone>``: the four octets of an IPv4 address reversed,
the 32 nibbles of an IPv6 address reversed (RFC 5782 §2.1, §2.4). An IPv4-mapped IPv6 client is
looked up as the IPv4 address it is. NXDOMAIN, or a name without A records, means "not listed".
An answer counts only if it is one of the zone's ``codes`` (default: any address in
127.0.0.0/8). The answers lists give when they refuse a query never count, whatever the codes
say (Spamhaus answers from 127.255.255.0/24, dnswl.org 127.0.0.255): counting them would refuse,
or let through, every client. Nor do answers outside 127.0.0.0/8. Both kinds are logged and
noted as ignored. A block zone that lists the client is then asked for its TXT record, quoted
to the client.

Every ten minutes (on the first connection after that), a zone is also asked about 127.0.0.1,
which RFC 5782 §5 forbids any list to list. A zone that lists it lists everyone (a list shut
down with a wildcard, or one refusing our queries with a "listed" answer): its answers are
ignored, with an error in the log, until a later check finds it sane again.

The lookups stop just short of the call's deadline, so the plugin itself decides what an
unanswered zone means: it is recorded as an error, like a SERVFAIL. What was found goes into
the connection's notes, and every later verdict is made from those notes alone:

1. Exempt clients are never refused: relaying or authenticated ones, those on a skipped
   listener, and those whitelisted by another plugin (the note ``whitelisted``).
2. A client listed on any allow zone is never refused by a block zone.
3. A client listed on a block zone is refused: 550 5.7.1 at RCPT, or 554 5.7.1 at connect with
   ``reject_at = "connect"``. If an allow zone failed to answer, the refusal is temporary
   (451 4.7.1; 421 at connect) instead: that allow list might have let the client in.
4. A block zone that failed: mail flows (logged), or, with ``soft_on_error``, 451 4.7.1 at
   RCPT (421 4.7.1 at connect).

At RCPT the verdict is given by both ``rcpt`` and ``rcpt_ok``: a plugin earlier in the order
that accepts the recipient (``rcpt_to_host_list``) ends the ``rcpt`` chain before this plugin,
but ``rcpt_ok`` still runs, so a listed client never gets a recipient accepted, whatever the
order.

Config (``conf/plugins/dns_list.toml``): ``zones`` (required; tables with ``zone``, ``type``
"block"/"allow", ``codes``, ``reason``, ``ipv6``), ``reject_at`` ("rcpt"/"connect"),
``soft_on_error``, ``check_loopback``, ``skip_listeners``, ``nameservers``. Unknown keys and bad
values are refused at load.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence

import attrs
import trio

from trio_mta import hooks
from trio_mta.protocol import Address, RcptParams

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CodeRange = tuple[int, int]  # first and last IPv4 address, as integers

LISTED = "dns_list.listed"  # {zone: [answers]} for the block zones that list the client
ALLOWED = "dns_list.allowed"  # the first allow zone (in configured order) that lists it
ERRORS = "dns_list.errors"  # {zone: why} for the zones that failed (SERVFAIL, no answer...)
IGNORED = "dns_list.ignored"  # {zone: why} for zones whose answers were not believed
TXT = "dns_list.txt"  # {zone: text} the TXT record of a listing block zone, if printable

LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")
REFUSED_ANSWERS: tuple[CodeRange, ...] = (
    (int(ipaddress.IPv4Address("127.255.255.0")), int(ipaddress.IPv4Address("127.255.255.255"))),
    (int(ipaddress.IPv4Address("127.0.0.255")), int(ipaddress.IPv4Address("127.0.0.255"))),
)
TEST_UNLISTED = ipaddress.IPv4Address("127.0.0.1")  # RFC 5782 §5: no list may list it
HEALTH_INTERVAL = 600.0  # seconds between two checks of a zone's test entry
HEALTH_RETRY = 60.0  # seconds before a check that got no answer is tried again
DEFAULT_REASON = "Client host [{ip}] blocked using {zone}"
MARGIN = 0.05  # seconds kept before the call's deadline to record and decide
MAX_TXT = 150  # characters of a list's TXT record quoted in a reply
MAX_REPLY_TEXT = 450  # a reply line is at most 512 octets with its code and CRLF (RFC 5321)
MAX_ZONE = 189  # 253 octets of a name, less 64 for the reversed IPv6 address and its dot
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")

_KEYS = (
    "zones",
    "reject_at",
    "check_loopback",
    "nameservers",
    "soft_on_error",
    "skip_listeners",
)
_ZONE_KEYS = ("zone", "type", "codes", "reason", "ipv6")


class Kind(enum.Enum):
    BLOCK = "block"
    ALLOW = "allow"


class RejectAt(enum.Enum):
    RCPT = "rcpt"
    CONNECT = "connect"


@attrs.frozen
class Zone:
    name: str
    kind: Kind
    codes: tuple[CodeRange, ...] | None  # None: any 127/8 answer (never a refusal code)
    reason: str | None
    ipv6: bool

    def counts(self, answer: ipaddress.IPv4Address) -> bool:
        value = int(answer)
        if answer not in LOOPBACK_NET or _within(value, REFUSED_ANSWERS):
            return False
        return self.codes is None or _within(value, self.codes)


def _within(value: int, ranges: Iterable[CodeRange]) -> bool:
    return any(low <= value <= high for low, high in ranges)


def reverse_name(ip: IPAddress) -> str:
    """The address as a DNS list wants it in front of its zone (RFC 5782 §2.1, §2.4)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


def lookup_address(client_ip: str) -> IPAddress | None:
    """The address to look up for ``client_ip`` (IPv4 for an IPv4-mapped one), or None."""
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id is not None:  # fe80::1%eth0: link-local, and not a list's business
            return ipaddress.IPv6Address(str(ip).partition("%")[0])
    return ip


# ----------------------------------------------------------------------------- configuration


def _bool(config: Mapping[str, object], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key}: must be true or false, not {value!r}")
    return value


def _strings(where: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: must be a list of strings")
    return value


def _zone_name(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: must be a DNS name such as 'zen.example.net'")
    name = value.strip().lower().rstrip(".")
    if not name or len(name) > MAX_ZONE:
        raise ValueError(f"{where}: {value!r} must be a DNS name of 1 to {MAX_ZONE} characters")
    bad = [label for label in name.split(".") if not _LABEL.fullmatch(label)]
    if bad:
        raise ValueError(f"{where}: {value!r} is not a DNS name (bad label {bad[0]!r})")
    return name


def _loopback_int(where: str, text: str) -> int:
    try:
        address = ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an IPv4 address") from None
    if address not in LOOPBACK_NET:
        raise ValueError(f"{where}: {text!r} is outside 127.0.0.0/8, where lists answer")
    return int(address)


def _code_range(where: str, text: str) -> CodeRange:
    if "/" in text:
        try:
            net = ipaddress.IPv4Network(text.strip())
        except ValueError as exc:
            raise ValueError(f"{where}: {text!r} is not an IPv4 network ({exc})") from None
        if not net.subnet_of(LOOPBACK_NET):
            raise ValueError(f"{where}: {text!r} is outside 127.0.0.0/8, where lists answer")
        return int(net.network_address), int(net.broadcast_address)
    first, dash, last = text.partition("-")
    low = _loopback_int(where, first)
    high = _loopback_int(where, last) if dash else low
    if high < low:
        raise ValueError(f"{where}: {text!r} is a range whose end comes before its start")
    return low, high


def _codes(where: str, value: object) -> tuple[CodeRange, ...] | None:
    if value is None:
        return None
    items = _strings(where, value)
    if not items:
        raise ValueError(f"{where}: must name at least one code (leave it out for the default)")
    return tuple(_code_range(where, item) for item in items)


def _reason(where: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: must be a non-empty string")
    if not (value.isascii() and value.isprintable()) or len(value) > 200:
        raise ValueError(f"{where}: must be one line of printable ASCII, at most 200 characters")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc} (write {{{{ and }}}} for literal braces)") from None
    unknown = sorted(set(fields) - {"ip", "zone"})
    if unknown:
        raise ValueError(f"{where}: unknown placeholders {unknown}; known: ['ip', 'zone']")
    return value


def _zone(index: int, table: object) -> Zone:
    where = f"zones[{index}]"
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: must be a table such as {{ zone = 'bl.example' }}")
    unknown = set(table) - set(_ZONE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {list(_ZONE_KEYS)}")
    if "zone" not in table:
        raise ValueError(f"{where}: 'zone' (the list's DNS zone) is required")
    kind = table.get("type", "block")
    if kind not in ("block", "allow"):
        raise ValueError(f"{where}.type: must be 'block' or 'allow', not {kind!r}")
    ipv6 = _bool(table, "ipv6", True)
    return Zone(
        name=_zone_name(f"{where}.zone", table["zone"]),
        kind=Kind(kind),
        codes=_codes(f"{where}.codes", table.get("codes")),
        reason=_reason(f"{where}.reason", table.get("reason")),
        ipv6=ipv6,
    )


def _zones(value: object) -> tuple[Zone, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("zones: at least one zone is needed, as [[zones]] tables")
    zones = tuple(_zone(i, table) for i, table in enumerate(value))
    seen: set[str] = set()
    for zone in zones:
        if zone.name in seen:
            raise ValueError(f"zones: {zone.name!r} is configured twice")
        seen.add(zone.name)
    return zones


def _resolver(plugin: hooks.Plugin) -> hooks.Resolver:
    servers = _strings("nameservers", plugin.config.get("nameservers", []))
    try:
        parsed = [hooks.parse_nameserver(s) for s in servers]
    except ValueError as exc:
        raise ValueError(f"nameservers: {exc} (want 'IP' or 'IP:PORT')") from None
    if parsed:
        return hooks.DNSResolver(parsed)
    return plugin.env.resolver or hooks.DNSResolver()


# ----------------------------------------------------------------------------- lookups


@attrs.define
class Outcome:
    """What one connection's lookups found, as they come in."""

    waiting: set[str]  # zones that have not answered yet
    listed: dict[str, list[str]] = attrs.Factory(dict)
    allowed: set[str] = attrs.Factory(set)
    errors: dict[str, str] = attrs.Factory(dict)
    ignored: dict[str, str] = attrs.Factory(dict)
    txt: dict[str, str] = attrs.Factory(dict)


@attrs.define
class Health:
    """Whether a zone answers as RFC 5782 §5 says it must: 127.0.0.1 is never listed. A list
    that lists it lists everyone (a list shut down with a wildcard, or refusing our queries
    with a "listed" answer); believing it would refuse, or let through, every client."""

    due: float = -math.inf  # trio time of the next check
    broken: str | None = None  # why the zone's answers are not believed, while they are not


def printable_txt(records: Sequence[str]) -> str | None:
    """The first TXT record fit for a reply line: printable ASCII, shortened."""
    for record in records:
        text = " ".join(record.split())
        if text and text.isascii() and text.isprintable():
            return shorten(text, MAX_TXT)
    return None


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Plugin(hooks.Plugin):
    # The lookups stop before the deadline by themselves; should the runner's deadline or a
    # bug strike anyway, a list must not stop the mail.
    timeout = 5.0
    on_timeout = hooks.CONT
    on_error = hooks.CONT

    def setup(self) -> None:
        unknown = set(self.config) - set(_KEYS)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {list(_KEYS)}")
        self.zones = _zones(self.config.get("zones"))
        self.by_name = {zone.name: zone for zone in self.zones}
        reject_at = self.config.get("reject_at", "rcpt")
        if reject_at not in ("rcpt", "connect"):
            raise ValueError(f"reject_at: must be 'rcpt' or 'connect', not {reject_at!r}")
        self.reject_at = RejectAt(reject_at)
        self.check_loopback = _bool(self.config, "check_loopback", False)
        self.soft_on_error = _bool(self.config, "soft_on_error", False)
        skip = self.config.get("skip_listeners", ["submission", "smtps"])
        self.skip_listeners = frozenset(_strings("skip_listeners", skip))
        self.resolver = _resolver(self)
        self.health = {zone.name: Health() for zone in self.zones}

    # ------------------------------------------------------------------------- hooks

    async def hook_connect(self, conn: hooks.Connection) -> hooks.Result:
        ip = self._address_to_check(conn)
        if ip is None:
            return hooks.CONT
        zones = [z for z in self.zones if ip.version == 4 or z.ipv6]
        if not zones:
            return hooks.CONT
        outcome = await self._look_up(conn, ip, zones)
        self._record(conn, outcome)
        if self.reject_at is RejectAt.CONNECT:
            return self._verdict(conn, "connect")
        return hooks.CONT

    async def hook_rcpt(
        self, conn: hooks.Connection, rcpt: Address, params: RcptParams
    ) -> hooks.Result:
        return self._verdict(conn, f"RCPT <{rcpt}>")

    async def hook_rcpt_ok(self, conn: hooks.Connection, rcpt: Address) -> hooks.Result:
        return self._verdict(conn, f"RCPT <{rcpt}>")

    # ------------------------------------------------------------------------- looking up

    def _exempt(self, conn: hooks.Connection) -> str | None:
        """Why this client is never refused here, or None."""
        txn = conn.transaction
        if conn.relaying:
            return "relaying"
        if conn.auth_user:
            return "authenticated"
        if conn.listener in self.skip_listeners:
            return f"listener {conn.listener}"
        if conn.notes.get("whitelisted") or (txn is not None and txn.notes.get("whitelisted")):
            return "whitelisted"
        return None

    def _address_to_check(self, conn: hooks.Connection) -> IPAddress | None:
        why = self._exempt(conn)
        if why is not None:
            self.log.debug("conn=%s dns_list: not checked (%s)", conn.id, why)
            return None
        ip = lookup_address(conn.client_ip)
        if ip is None:
            return None
        # Private, loopback, link-local... addresses are in no public list; asking would only
        # tell the list's operator about the inside of the network.
        if not ip.is_global and not self.check_loopback:
            return None
        return ip

    async def _look_up(
        self, conn: hooks.Connection, ip: IPAddress, zones: Sequence[Zone]
    ) -> Outcome:
        outcome = Outcome(waiting={z.name for z in zones})
        # The runner arms the call's deadline when the call first blocks.
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        deadline = trio.current_effective_deadline()
        checks = [z for z in zones if self.health[z.name].due <= now]
        for zone in checks:  # one check at a time; one that gets no answer is retried
            self.health[zone.name].due = now + HEALTH_RETRY
        with trio.move_on_at(deadline - min(MARGIN, max(deadline - now, 0.0) / 10)):
            async with trio.open_nursery() as nursery:
                for zone in zones:
                    nursery.start_soon(self._look_up_zone, conn, ip, zone, outcome)
                for zone in checks:
                    nursery.start_soon(self._check_health, zone)
        for name in sorted(outcome.waiting):
            outcome.errors[name] = "no answer before the deadline"
            self.log.warning("conn=%s dns_list: %s did not answer in time", conn.id, name)
        for zone in zones:
            broken = self.health[zone.name].broken
            if broken is not None and zone.name not in outcome.errors:
                outcome.listed.pop(zone.name, None)
                outcome.txt.pop(zone.name, None)
                outcome.allowed.discard(zone.name)
                outcome.ignored[zone.name] = broken
        return outcome

    async def _look_up_zone(
        self, conn: hooks.Connection, ip: IPAddress, zone: Zone, outcome: Outcome
    ) -> None:
        query = f"{reverse_name(ip)}.{zone.name}"
        try:
            answers = await self.resolver.a(query)
        except hooks.NXDomain:
            answers = []
        except hooks.DNSError as exc:
            outcome.waiting.discard(zone.name)
            outcome.errors[zone.name] = str(exc)
            self.log.warning("conn=%s dns_list: %s failed: %s", conn.id, zone.name, exc)
            return
        outcome.waiting.discard(zone.name)
        hits = self._hits(conn, zone, answers, outcome)
        if not hits:
            return
        self.log.info(
            "conn=%s dns_list: %s listed in %s (%s): %s",
            conn.id,
            ip,
            zone.name,
            zone.kind.value,
            ", ".join(hits),
        )
        if zone.kind is Kind.ALLOW:
            outcome.allowed.add(zone.name)
            return
        outcome.listed[zone.name] = hits
        try:
            text = printable_txt(await self.resolver.txt(query))
        except hooks.DNSError:
            return  # the listing stands; only its explanation is missing
        if text is not None:
            outcome.txt[zone.name] = text

    def _hits(
        self, conn: hooks.Connection, zone: Zone, answers: Sequence[str], outcome: Outcome
    ) -> list[str]:
        """The answers that count as a listing; the others are logged (and noted as ignored
        when they say the list refused the query)."""
        hits = set()
        for answer in answers:
            address = ipaddress.IPv4Address(answer)
            if zone.counts(address):
                hits.add(address)
                continue
            if address not in LOOPBACK_NET:
                why = f"answered {answer}, outside 127.0.0.0/8: not a listing"
            elif _within(int(address), REFUSED_ANSWERS):
                why = f"answered {answer}: the list refuses our queries (public resolver? limit?)"
            else:
                self.log.debug("conn=%s dns_list: %s answered %s", conn.id, zone.name, answer)
                continue
            outcome.ignored[zone.name] = why
            self.log.warning("conn=%s dns_list: %s %s", conn.id, zone.name, why)
        return [str(a) for a in sorted(hits)]

    async def _check_health(self, zone: Zone) -> None:
        query = f"{reverse_name(TEST_UNLISTED)}.{zone.name}"
        try:
            answers = await self.resolver.a(query)
        except hooks.NXDomain:
            answers = []
        except hooks.DNSError as exc:
            self.log.debug("dns_list: %s: test entry not checked: %s", zone.name, exc)
            return
        health = self.health[zone.name]
        health.due = trio.current_time() + HEALTH_INTERVAL
        wrong = [a for a in answers if zone.counts(ipaddress.IPv4Address(a))]
        if wrong and health.broken is None:
            health.broken = f"lists 127.0.0.1 ({', '.join(wrong)}), so it lists everyone"
            self.log.error(
                "dns_list: %s %s (RFC 5782 §5): its answers are ignored until it stops",
                zone.name,
                health.broken,
            )
        elif not wrong and health.broken is not None:
            health.broken = None
            self.log.warning("dns_list: %s no longer lists 127.0.0.1: its answers count", zone.name)

    def _record(self, conn: hooks.Connection, outcome: Outcome) -> None:
        """Write the outcome into the notes (JSON values, zones in configured order)."""
        order = [z.name for z in self.zones]
        tables: dict[str, Mapping[str, object]] = {
            LISTED: outcome.listed,
            TXT: outcome.txt,
            ERRORS: outcome.errors,
            IGNORED: outcome.ignored,
        }
        for note, table in tables.items():
            if table:
                conn.notes[note] = {z: table[z] for z in order if z in table}
        allowed = [z for z in order if z in outcome.allowed]
        if allowed:
            conn.notes[ALLOWED] = allowed[0]

    # ------------------------------------------------------------------------- deciding

    def _verdict(self, conn: hooks.Connection, where: str) -> hooks.Result:
        if self._exempt(conn) is not None or conn.notes.get(ALLOWED):
            return hooks.CONT
        ip = lookup_address(conn.client_ip)
        shown = str(ip) if ip is not None else conn.client_ip
        blocking = self._zones_in(conn, LISTED, Kind.BLOCK)
        if blocking:
            zone = blocking[0]
            txt = _note_dict(conn, TXT).get(zone.name)
            text = self._refusal_text(zone, shown, txt if isinstance(txt, str) else None)
            failed_allow = self._zones_in(conn, ERRORS, Kind.ALLOW)
            if failed_allow:
                text += f" (allow list {failed_allow[0].name} did not answer; try again later)"
            return self._refuse(conn, where, text, soft=bool(failed_allow))
        failed_block = self._zones_in(conn, ERRORS, Kind.BLOCK)
        if failed_block and self.soft_on_error:
            text = f"Cannot check [{shown}] against {failed_block[0].name} now; try again later"
            return self._refuse(conn, where, text, soft=True)
        return hooks.CONT

    def _zones_in(self, conn: hooks.Connection, note: str, kind: Kind) -> list[Zone]:
        zones = (self.by_name.get(name) for name in _note_dict(conn, note))
        return [zone for zone in zones if zone is not None and zone.kind is kind]

    def _refusal_text(self, zone: Zone, ip: str, txt: str | None) -> str:
        text = (zone.reason or DEFAULT_REASON).format(ip=ip, zone=zone.name)
        return f"{text}; {txt}" if txt else text

    def _refuse(self, conn: hooks.Connection, where: str, text: str, *, soft: bool) -> hooks.Result:
        text = shorten(text, MAX_REPLY_TEXT)
        self.log.info("conn=%s dns_list: %s %s: %s", conn.id, where, _DONE[soft], text)
        at_connect = where == "connect"
        if soft:
            # A greeting can only be refused for now with 421 (RFC 5321 §3.1, §4.2.5).
            return hooks.denysoft(text, code=421 if at_connect else 451, enhanced="4.7.1")
        # RFC 5321 §3.1: a server that refuses the session greets with 554.
        return hooks.deny(text, code=554 if at_connect else 550, enhanced="5.7.1")


_DONE = {True: "deferred", False: "refused"}


def _note_dict(conn: hooks.Connection, key: str) -> dict[str, object]:
    value = conn.notes.get(key)
    return value if isinstance(value, dict) else {}
