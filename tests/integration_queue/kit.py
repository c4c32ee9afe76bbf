"""The test DNS zone, and aiosmtpd peers that record what they receive.

A peer answers a recipient by its local part: ``reject…`` gets 550 5.1.1, ``defer…`` gets
451 4.7.1 the first ``defer_times`` times it is seen, anything else is accepted.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import attrs
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

# pref.test: two MX hosts, the better one up.      fallback.test: the better one dark.
# implicit.test: no MX, an A record.               nullmx.test: MX 0 . (RFC 7505)
# sender.test: where bounces go.                   noaddr.test: an MX without an address.
# tls.test: an MX on 127.0.0.10, for a peer with STARTTLS (started by its test).
DNS_RECORDS = [
    "--mx-host=pref.test,mx2.pref.test,20",
    "--mx-host=pref.test,mx1.pref.test,10",
    "--host-record=mx1.pref.test,127.0.0.2",
    "--host-record=mx2.pref.test,127.0.0.3",
    "--mx-host=fallback.test,dead.fallback.test,10",
    "--mx-host=fallback.test,live.fallback.test,20",
    "--host-record=dead.fallback.test,127.0.0.4",
    "--host-record=live.fallback.test,127.0.0.5",
    "--host-record=implicit.test,127.0.0.6",
    "--mx-host=nullmx.test,.,0",
    "--mx-host=sender.test,mx.sender.test,10",
    "--host-record=mx.sender.test,127.0.0.7",
    "--mx-host=relay.test,mx.relay.test,10",
    "--host-record=mx.relay.test,127.0.0.8",
    "--mx-host=noaddr.test,nowhere.noaddr.test,10",
    "--mx-host=tls.test,mx.tls.test,10",
    "--host-record=mx.tls.test,127.0.0.10",
    # A TXT answer well over 512 octets: UDP says "truncated", the resolver asks over TCP.
    "--txt-record=long.test," + ",".join(["x" * 200] * 8),
    "--txt-record=spf.test,v=spf1 -all",
]


@attrs.frozen
class Received:
    peer: str
    sender: str | None
    recipients: tuple[str, ...]
    data: bytes
    session: int = 0  # which SMTP session brought it (connection reuse)
    tls: bool = False  # it came over TLS (STARTTLS)


class PeerHandler:
    def __init__(self, ip: str, *, defer_times: int = 1, delay: float = 0.0) -> None:
        self.ip = ip
        self.defer_times = defer_times
        self.delay = delay  # seconds before each DATA is answered (a slow peer)
        self.received: list[Received] = []
        self.rcpt_seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = address.split("@")[0].lower()
        with self.lock:
            seen = self.rcpt_seen[address] = self.rcpt_seen.get(address, 0) + 1
        if local.startswith("reject"):
            return "550 5.1.1 No such user here"
        if local.startswith("defer") and seen <= self.defer_times:
            return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        content = envelope.original_content or b""
        with self.arrived:
            self.received.append(
                Received(
                    self.ip,
                    envelope.mail_from,
                    tuple(envelope.rcpt_tos),
                    bytes(content),
                    id(session),
                    tls=session.ssl is not None,
                )
            )
            self.arrived.notify_all()
        return "250 2.0.0 Accepted"


@attrs.define
class Peer:
    ip: str
    port: int
    handler: PeerHandler
    controller: Controller

    @classmethod
    def start(cls, ip: str, port: int, handler: PeerHandler, **smtp: Any) -> Peer:
        controller = Controller(handler, hostname=ip, port=port, ready_timeout=5, **smtp)
        controller.start()
        return cls(ip, port, handler, controller)

    def stop(self) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)


class Authenticator:
    """aiosmtpd AUTH: one user, and every attempt remembered."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()
        self.attempts: list[bytes] = []

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        self.attempts.append(data.login)
        ok = data.login == self.user and data.password == self.password
        return AuthResult(success=ok, handled=False)  # handled=True: "I already replied"
