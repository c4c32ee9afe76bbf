"""DNS lookups with dnspython's message codec over trio sockets (``dns.asyncresolver`` has no
trio backend).

Theory of operation: a query is built with ``dns.message.make_query`` (EDNS0, 1232-octet
payload) and sent over UDP to each configured server in turn, ``tries`` rounds, waiting
``try_interval`` seconds for each answer. A reply counts only if it answers our query (id,
question: ``Message.is_response``), so a stray or spoofed datagram is ignored. A truncated
reply (TC) is asked again over TCP (RFC 7766), framed by a two-octet length. NOERROR gives the
records of the asked type found in the answer section (a CNAME chain is followed by the
recursive server; any owner name in the answer is accepted), NXDOMAIN raises ``NXDomain``, any
other RCODE moves on to the next server, and when every server failed, ``DNSError``.

Everything is cancellable: the caller's deadline cancels the socket waits. No state is shared
between lookups, so concurrent lookups need no locking.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.resolver
import dns.reversename
import trio
from dns.rdtypes.ANY.MX import MX as MXRecord
from dns.rdtypes.ANY.PTR import PTR as PTRRecord
from dns.rdtypes.ANY.TXT import TXT as TXTRecord
from dns.rdtypes.IN.A import A as ARecord
from dns.rdtypes.IN.AAAA import AAAA as AAAARecord

from ._types import MX, DNSError, NXDomain, normalize_name

Nameserver = tuple[str, int]
_PAYLOAD = 1232  # the EDNS buffer size of DNS flag day 2020: no IP fragmentation


def parse_nameserver(text: str) -> Nameserver:
    """``"127.0.0.1"``, ``"127.0.0.1:5353"``, ``"[::1]:53"`` or ``"::1"`` → (address, port)."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad nameserver {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)  # ValueError for a name: the resolver needs no resolver
    if not 0 < port < 65536:
        raise ValueError(f"bad port in nameserver {text!r}")
    return host, port


def system_nameservers() -> list[Nameserver]:
    """The servers of /etc/resolv.conf (as dnspython reads it), or 127.0.0.1 if none."""
    try:
        found = dns.resolver.Resolver(configure=True).nameservers
    except (dns.resolver.NoResolverConfiguration, OSError):
        found = []
    servers = []
    for item in found:
        try:
            servers.append((str(item), 53))
        except ValueError:
            continue
    return servers or [("127.0.0.1", 53)]


class DNSResolver:
    """Looks names up at ``nameservers``; see the module comment."""

    def __init__(
        self,
        nameservers: Sequence[Nameserver] | None = None,
        *,
        try_interval: float = 2.0,
        tries: int = 2,
    ) -> None:
        self.nameservers = list(nameservers) if nameservers else system_nameservers()
        self.try_interval = try_interval
        self.tries = tries

    async def mx(self, name: str) -> list[MX]:
        records = await self._query(name, dns.rdatatype.MX)
        return sorted(
            MX(int(r.preference), normalize_name(r.exchange.to_text(omit_final_dot=True)))
            for r in records
            if isinstance(r, MXRecord)
        )

    async def a(self, name: str) -> list[str]:
        records = await self._query(name, dns.rdatatype.A)
        return [r.address for r in records if isinstance(r, ARecord)]

    async def aaaa(self, name: str) -> list[str]:
        records = await self._query(name, dns.rdatatype.AAAA)
        return [r.address for r in records if isinstance(r, AAAARecord)]

    async def txt(self, name: str) -> list[str]:
        records = await self._query(name, dns.rdatatype.TXT)
        return [
            b"".join(r.strings).decode("utf-8", "replace")
            for r in records
            if isinstance(r, TXTRecord)
        ]

    async def ptr(self, address: str) -> list[str]:
        reverse = dns.reversename.from_address(address).to_text()
        records = await self._query(reverse, dns.rdatatype.PTR)
        return [normalize_name(r.target.to_text()) for r in records if isinstance(r, PTRRecord)]

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[dns.rdata.Rdata]:
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            # Names come from mail (From: domains, HELO, SPF macros): one that cannot be a DNS
            # name (bad IDNA, a 64-octet label, an empty label) exists nowhere, permanently.
            raise NXDomain(f"{name[:100]!r}: not a valid domain name ({exc})") from None
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=_PAYLOAD)
        problems: list[str] = []
        for _ in range(self.tries):
            for server in self.nameservers:
                query.id = random.randrange(65536)
                try:
                    answer = await self._exchange(query, server)
                except (OSError, dns.exception.DNSException) as exc:
                    problems.append(f"{server[0]}:{server[1]}: {exc!r}")
                    continue
                if answer is None:
                    problems.append(f"{server[0]}:{server[1]}: no answer")
                    continue
                rcode = answer.rcode()
                if rcode == dns.rcode.NXDOMAIN:
                    raise NXDomain(f"{name}: no such domain")
                if rcode != dns.rcode.NOERROR:
                    problems.append(f"{server[0]}:{server[1]}: {dns.rcode.to_text(rcode)}")
                    continue
                return [rd for rrset in answer.answer if rrset.rdtype == rdtype for rd in rrset]
        type_text = dns.rdatatype.to_text(rdtype)
        raise DNSError(f"{type_text} {name}: " + ("; ".join(problems[-3:]) or "no nameserver"))

    async def _exchange(
        self, query: dns.message.Message, server: Nameserver
    ) -> dns.message.Message | None:
        """One server's answer to ``query`` (TCP when UDP was truncated), None on silence."""
        answer = None
        with trio.move_on_after(self.try_interval):
            answer = await _udp(query, server)
        if answer is not None and answer.flags & dns.flags.TC:
            answer = None
            with trio.move_on_after(self.try_interval * 2):
                answer = await _tcp(query, server)
        return answer


class _BrokenAnswer(OSError):
    pass


def _family(address: str) -> int:
    return trio.socket.AF_INET6 if ":" in address else trio.socket.AF_INET


async def _udp(query: dns.message.Message, server: Nameserver) -> dns.message.Message:
    wire = query.to_wire()
    with trio.socket.socket(_family(server[0]), trio.socket.SOCK_DGRAM) as sock:
        await sock.connect(server)
        await sock.send(wire)
        while True:
            data = await sock.recv(65535)
            try:
                answer = dns.message.from_wire(data, ignore_trailing=True, one_rr_per_rrset=False)
            except dns.exception.DNSException:
                continue  # not a DNS message: ignore it, as a stray datagram
            if query.is_response(answer):
                return answer


async def _tcp(query: dns.message.Message, server: Nameserver) -> dns.message.Message:
    wire = query.to_wire()
    stream = await trio.open_tcp_stream(*server)
    async with stream:
        await stream.send_all(len(wire).to_bytes(2, "big") + wire)
        size = int.from_bytes(await _read_exactly(stream, 2), "big")
        answer = dns.message.from_wire(await _read_exactly(stream, size))
    if not query.is_response(answer):
        raise _BrokenAnswer("TCP answer does not match the query")
    return answer


async def _read_exactly(stream: trio.SocketStream, count: int) -> bytes:
    buf = bytearray()
    while len(buf) < count:
        chunk = await stream.receive_some(count - len(buf))
        if not chunk:
            raise _BrokenAnswer("connection closed in the middle of an answer")
        buf += chunk
    return bytes(buf)
