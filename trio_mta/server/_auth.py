"""SMTP AUTH for one connection, the failure limit shared by all of them, and submission policy.

Theory of operation
-------------------
``ConnectionAuth`` answers the driver's ``Auth``/``AuthResponse`` events. It decides whether
AUTH is available at all (an auth plugin is loaded and the listener has ``auth``), refuses it
before TLS unless the listener has ``auth_allow_plaintext`` (538 5.7.11, RFC 4954 §4), runs the
SASL exchange (``_sasl``) and hands the credentials to the handler (the ``auth`` hook). 235
makes the session authenticated: ``auth_user`` is set and the client may relay.

Failures (a 5xx verdict on credentials) are counted per client IP (an IPv6 client by its /64)
in ``AuthFailures``, one per server, so they carry across connections: the n-th failure within
``failure_window`` of the previous one is answered after a delay of 0, then ``failure_delay``,
doubling up to ``max_failure_delay`` (a tarpit before the 535); the ``max_failures``-th is
answered ``421 4.7.0`` and the connection closes, and every AUTH from that address gets 421
until the window has passed. Cancelled or malformed exchanges and temporary failures (454)
reveal nothing about a password and are not counted.

Secrets: nothing here logs a password, a digest or a client line of the exchange; the log
names the user and the mechanism only.

Submission policy (``mail_refusal``): on submission and smtps listeners MAIL needs AUTH first
(530 5.7.0). An authenticated sender must own the MAIL FROM address unless ``[auth]
constrain_sender`` is false (553 5.7.1): a login with ``@`` must be the address (domain
case-insensitive); a login without is the local part of an address in a local domain. The null
sender is allowed (bounces and vacation replies).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time

import trio

from ..config import AuthConfig, Config, ListenerConfig, ListenerKind
from ..hooks import Credentials
from ..protocol import Address, Auth, AuthResponse, Reply, ServerConnection, reply
from ._exempt import Exemptions
from ._handler import SessionHandler
from ._sasl import MECHANISMS, Challenge, Mechanism, SaslExchange
from ._session import Session

log = logging.getLogger("trio_mta.auth")

NOT_AVAILABLE = reply(502, "5.5.1", "Command not implemented")
ENCRYPTION_REQUIRED = reply(538, "5.7.11", "Encryption required for requested authentication")
UNKNOWN_MECHANISM = reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_OK = reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = reply(535, "5.7.8", "Authentication credentials invalid")
TOO_MANY_FAILURES = reply(
    421, "4.7.0", "Too many failed authentication attempts, closing connection"
)
AUTH_REQUIRED = reply(530, "5.7.0", "Authentication required")
NOT_OWNER = reply(553, "5.7.1", "Sender address not owned by user")
MAX_TRACKED = 100_000  # client addresses remembered at once; the oldest go first


class AuthFailures:
    """Failed AUTH attempts per client address within a sliding window (one per server)."""

    def __init__(self, config: AuthConfig, *, exempt: Exemptions | None = None) -> None:
        self.config = config
        self.exempt = exempt if exempt is not None else Exemptions(())
        # key -> (failures, time of the last one); insertion order is the order of last failure
        self._seen: dict[str, tuple[int, float]] = {}

    @staticmethod
    def key(ip: str) -> str:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(ipaddress.IPv6Network((address, 64), strict=False))
        return str(address)

    def count(self, ip: str, now: float) -> int:
        if ip in self.exempt:
            return 0
        entry = self._seen.get(self.key(ip))
        if entry is None or now - entry[1] >= self.config.failure_window:
            return 0
        return entry[0]

    def blocked(self, ip: str, now: float) -> bool:
        return self.count(ip, now) >= self.config.max_failures

    def record(self, ip: str, now: float) -> int:
        """Count one failure; return how many there are now (an exempt client's: none)."""
        if ip in self.exempt:
            return 0
        failures = self.count(ip, now) + 1
        key = self.key(ip)
        self._seen.pop(key, None)
        self._seen[key] = (failures, now)
        self._expire(now)
        return failures

    def delay(self, failures: int) -> float:
        """Seconds to wait before answering the ``failures``-th failure."""
        if failures <= 1:
            return 0.0
        c = self.config
        return min(c.failure_delay * float(1 << min(failures - 2, 64)), c.max_failure_delay)

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if now - seen[oldest][1] < self.config.failure_window and len(seen) <= MAX_TRACKED:
                break
            del seen[oldest]

    @property
    def tracked(self) -> int:
        """How many addresses are remembered."""
        return len(self._seen)


def owns(login: str, sender: Address, local_domains: tuple[str, ...]) -> bool:
    """May the user ``login`` send as ``sender``?"""
    local = sender.unquoted_local_part
    domain = sender.domain_lower.rstrip(".")
    user, at, user_domain = login.rpartition("@")
    if at:
        return local == user and domain == user_domain.lower().rstrip(".")
    return local == login and domain in local_domains


def _listener(config: Config, name: str) -> ListenerConfig:
    for listener in config.listeners:
        if listener.name == name:
            return listener
    return ListenerConfig(name=name, host="127.0.0.1", port=0)


class ConnectionAuth:
    def __init__(
        self,
        session: Session,
        config: Config,
        handler: SessionHandler,
        failures: AuthFailures,
        conn: ServerConnection,
    ) -> None:
        self.session = session
        self.conn = conn
        self.config = config
        self.handler = handler
        self.failures = failures
        self.listener = _listener(config, session.listener)
        self._exchange: SaslExchange | None = None
        self._logged_in = False  # a 235 was given on this connection and not forgotten
        self._relaying_before = False

    # -- availability ---------------------------------------------------------------------------

    def mechanisms(self) -> tuple[Mechanism, ...]:
        if not self.listener.auth:
            return ()
        offered = self.handler.auth_mechanisms(self.session)
        return tuple(m for m in MECHANISMS if m.value in offered)

    def _encryption_missing(self) -> bool:
        return not self.session.tls_version and not self.listener.auth_allow_plaintext

    def ehlo_keywords(self) -> list[str]:
        self.forget_if_reset()
        mechanisms = self.mechanisms()
        if not mechanisms or self._encryption_missing():
            return []
        return ["AUTH " + " ".join(mechanisms)]

    def forget_if_reset(self) -> None:
        """After STARTTLS every earlier state is forgotten (RFC 3207 §4.2), the login too: the
        protocol layer has forgotten it, so the session follows (whoever else reset what)."""
        if self._logged_in and not self.conn.authenticated:
            log.info("conn=%s login forgotten", self.session.id)
            self._logged_in = False
            self.session.auth_user = None
            self.session.relaying = self._relaying_before
            self.session.notes.pop("auth_mechanism", None)

    # -- the exchange ---------------------------------------------------------------------------

    async def start(self, event: Auth) -> Reply:
        session = self.session
        self.forget_if_reset()
        mechanisms = self.mechanisms()
        if not mechanisms:
            return NOT_AVAILABLE
        if self._encryption_missing():
            return ENCRYPTION_REQUIRED
        if self.failures.blocked(session.client_ip, trio.current_time()):
            log.warning(
                "conn=%s ip=%s AUTH refused: too many failures", session.id, session.client_ip
            )
            return TOO_MANY_FAILURES
        try:
            mechanism = Mechanism(event.mechanism)
        except ValueError:
            return UNKNOWN_MECHANISM
        if mechanism not in mechanisms:
            return UNKNOWN_MECHANISM
        challenge = f"<{secrets.token_hex(8)}.{int(time.time())}@{self.config.server.hostname}>"
        self._exchange = SaslExchange(mechanism, challenge=challenge)
        return await self._step(self._exchange.start(event.initial))

    async def respond(self, event: AuthResponse) -> Reply:
        if self._exchange is None or self._exchange.done:
            raise AssertionError("an AUTH response without an exchange")
        return await self._step(self._exchange.respond(event.line))

    async def _step(self, step: Challenge | Credentials | Reply) -> Reply:
        if isinstance(step, Challenge):
            return step.reply()
        self._exchange = None
        if isinstance(step, Reply):
            return step
        return await self._verify(step)

    async def _verify(self, creds: Credentials) -> Reply:
        session = self.session
        answer = await self.handler.auth(session, creds)
        if answer.code == 235:
            self._relaying_before = session.relaying
            self._logged_in = True
            session.auth_user = creds.username
            session.relaying = True
            session.notes["auth_mechanism"] = creds.mechanism
            log.info(
                "conn=%s ip=%s authenticated user=%r mechanism=%s",
                session.id,
                session.client_ip,
                creds.username,
                creds.mechanism,
            )
            return answer
        if answer.code < 500:
            log.warning(
                "conn=%s ip=%s AUTH temporary failure user=%r mechanism=%s: %s",
                session.id,
                session.client_ip,
                creds.username,
                creds.mechanism,
                answer.code,
            )
            return answer
        failures = self.failures.record(session.client_ip, trio.current_time())
        delay = self.failures.delay(failures)
        log.warning(
            "conn=%s ip=%s AUTH failed user=%r mechanism=%s failures=%d delay=%.1fs",
            session.id,
            session.client_ip,
            creds.username,
            creds.mechanism,
            failures,
            delay,
        )
        await trio.sleep(delay)
        if failures >= self.config.auth.max_failures:
            self.handler.decided_by = None  # the tarpit's rule closes, not the auth plugin
            return TOO_MANY_FAILURES
        return answer

    # -- submission policy ----------------------------------------------------------------------

    def mail_refusal(self, sender: Address | None) -> Reply | None:
        """530 before AUTH on a submission listener; 553 for a sender the user doesn't own."""
        self.forget_if_reset()
        session = self.session
        user = session.auth_user
        if user is None:
            if self.listener.kind is not ListenerKind.MX:
                return AUTH_REQUIRED
            return None
        if sender is None or not self.config.auth.constrain_sender:
            return None
        if not owns(user, sender, self.config.server.local_domains):
            log.info("conn=%s user=%r may not send as <%s>", session.id, user, sender)
            return NOT_OWNER
        return None
