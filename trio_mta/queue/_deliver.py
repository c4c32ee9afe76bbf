"""One delivery attempt to one destination over SMTP, with ``hooks.open_smtp_client``.

Theory of operation: the route's hops (MX addresses, in order) are tried one after the other
until the recipients have an answer. A hop that cannot be reached, or whose session cannot be
set up (greeting, EHLO, required STARTTLS, AUTH) within ``connect_timeout``, moves on to the
next one; so does a session that breaks in the middle of the transaction, for the recipients it
had not answered. A reply to the transaction is final for this attempt: 2xx delivered, 5xx
failed, 4xx deferred (Postfix does the same; trying the next MX after a 4xx RCPT would hammer
every MX with the same greylisted message). When no hop answered at all the result says
``unreachable``, for the caller's dead-destination backoff.

A session that served a transaction is parked in a ``SessionCache`` for the next message to
the same hop (Postfix's connection cache) rather than closed.

A message with VERP (``Envelope.verp``) is sent as one transaction per recipient, each with its
own envelope sender (``Envelope.return_path``), one after the other on the same session: the
answers of the transactions done stand when the session breaks later, and only the recipients
left go on to a fresh session or the next hop.

DSN parameters (RFC 3461) go on when the next hop offers DSN; SMTPUTF8 and BODY=8BITMIME
when it offers them. The outcome of each recipient never raises: only bugs do.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Protocol

import attrs
import trio

from ..hooks import SMTPClient, SMTPClientError, StartTLS, open_smtp_client
from ..protocol import Address, Reply, parse_path
from ._records import Envelope, Recipient
from ._route import Hop, Route
from ._sessions import Session, SessionCache

log = logging.getLogger("trio_mta.queue")


@attrs.frozen
class Outcome:
    reply: Reply
    remote: str = ""  # the host that answered (or "" for our own diagnosis)


@attrs.frozen
class GroupResult:
    outcomes: dict[str, Outcome]  # by recipient address
    unreachable: bool = False  # no hop could be reached or set up


class Deliverer(Protocol):
    async def deliver(
        self, route: Route, envelope: Envelope, recipients: Sequence[Recipient], message: bytes
    ) -> GroupResult: ...


def xtext(text: str) -> str:
    """RFC 3461 §4 xtext: "+" and "=" and anything outside ! to ~ as +HH."""
    return "".join(
        c if "!" <= c <= "~" and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode())
        for c in text
    )


def _address(text: str | None) -> Address | None:
    if text is None:
        return None
    address, _ = parse_path(f"<{text}>", utf8=True, allow_null=False, allow_postmaster=True)
    return address


def transactions(
    envelope: Envelope, recipients: Sequence[Recipient]
) -> list[tuple[str | None, Sequence[Recipient]]]:
    """The transactions that carry ``recipients``: (envelope sender, their recipients). One
    for all of them; with VERP, one per recipient, each with its own sender."""
    if envelope.verp is None or envelope.sender is None:
        return [(envelope.sender, recipients)]
    out: list[tuple[str | None, Sequence[Recipient]]] = []
    for r in recipients:
        sender = envelope.return_path(r.address)
        if sender == envelope.sender:
            log.warning(
                "queue: %s to=<%s>: sent without VERP, from <%s>: the folded sender would "
                "pass 64 octets, and our own server would refuse a bounce to it",
                envelope.id,
                r.address,
                sender,
            )
        out.append((sender, [r]))
    return out


class SMTPDeliverer:
    def __init__(self, *, helo: str, connect_timeout: float, session_idle: float = 2.0) -> None:
        self.helo = helo
        self.connect_timeout = connect_timeout
        # Built once per policy: loading the CA store costs tens of milliseconds, far too much
        # for every connection (and it would hold the event loop while it loads).
        self._contexts: dict[StartTLS, ssl.SSLContext] = {}
        self.sessions = SessionCache(idle=session_idle)

    def _context(self, policy: StartTLS) -> ssl.SSLContext:
        context = self._contexts.get(policy)
        if context is None:
            context = ssl.create_default_context()
            if policy is not StartTLS.REQUIRED:  # Postfix's "may": encrypt, don't verify
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._contexts[policy] = context
        return context

    async def deliver(
        self,
        route: Route,
        envelope: Envelope,
        recipients: Sequence[Recipient],
        message: bytes,
        *,
        progress: dict[str, Outcome] | None = None,
    ) -> GroupResult:
        """``progress``: where each transaction's answers also land as soon as they are known,
        so that an attempt cut by its deadline keeps them (a VERP message's transactions come
        one at a time; without this, those already delivered would be sent again)."""
        outcomes: dict[str, Outcome] = {}
        remaining = list(recipients)
        last = Outcome(Reply(451, "4.4.1", "No host could be reached"))
        reached = False
        for hop in route.hops:
            if not remaining:
                break
            key = (hop.address, hop.port, route.starttls, route.auth)
            session = self.sessions.take(key)
            while True:
                reused = session is not None
                try:
                    if session is None:
                        session = await self._connect(route, hop)
                    reached = True
                    for sender, batch in transactions(envelope, remaining):
                        answers = await self._transaction(
                            session.client, hop, envelope, sender, batch, message
                        )
                        outcomes.update(answers)
                        if progress is not None:
                            progress.update(answers)
                except trio.TooSlowError:
                    text = f"{hop.name}[{hop.address}]: timed out"
                    last = Outcome(Reply(451, "4.4.1", text), hop.name)
                except SMTPClientError as exc:
                    if session is not None:
                        await self.sessions.close(session)
                        session = None
                    if reused:
                        # A parked session the remote had closed: connect afresh (for those
                        # left; a VERP message may have had transactions answered on it).
                        remaining = [r for r in remaining if r.address not in outcomes]
                        continue
                    # Setup failed, or the session broke: the next hop for whoever is left.
                    # Even a 5xx greeting or a refused AUTH only defers (Postfix's soft bounce).
                    text = " ".join(f"{hop.name}[{hop.address}]: {exc}".split())[:400]
                    last = Outcome(Reply(451, "4.4.2", text), hop.name)
                except BaseException:
                    if session is not None:
                        await self.sessions.close(session)
                    raise
                else:
                    self.sessions.park(key, session)
                remaining = [r for r in remaining if r.address not in outcomes]
                break
        for r in remaining:
            outcomes[r.address] = last
        return GroupResult(outcomes, unreachable=not reached)

    async def _connect(self, route: Route, hop: Hop) -> Session:
        """A new session to ``hop`` (greeted, EHLO, STARTTLS and AUTH per the route)."""
        stack = AsyncExitStack()
        try:
            with trio.fail_after(self.connect_timeout):
                client = await stack.enter_async_context(self._open(route, hop))
        except BaseException:
            await stack.aclose()
            raise
        return Session(client, stack)

    def _open(self, route: Route, hop: Hop) -> AbstractAsyncContextManager[SMTPClient]:
        auth = route.auth
        plaintext = route.config is not None and route.config.auth_allow_plaintext
        policy = StartTLS(route.starttls.value)
        return open_smtp_client(
            hop.address,
            hop.port,
            helo=self.helo,
            starttls=policy,
            tls=self._context(policy),
            server_hostname=hop.name,
            auth=auth,
            auth_require_tls=not plaintext,
        )

    async def _transaction(
        self,
        client: SMTPClient,
        hop: Hop,
        envelope: Envelope,
        sender: str | None,
        recipients: Sequence[Recipient],
        message: bytes,
    ) -> dict[str, Outcome]:
        caps = client.capabilities
        mail_params: list[str] = []
        rcpt_params: list[str] = []
        dsn = "DSN" in caps
        if envelope.smtputf8 and "SMTPUTF8" in caps:
            mail_params.append("SMTPUTF8")
        if envelope.body == "8BITMIME" and "8BITMIME" in caps:
            mail_params.append("BODY=8BITMIME")
        if dsn and envelope.ret:
            mail_params.append(f"RET={envelope.ret}")
        if dsn and envelope.envid:
            mail_params.append(f"ENVID={xtext(envelope.envid)}")
        for r in recipients:
            params = []
            if dsn and r.notify:
                params.append("NOTIFY=" + ",".join(r.notify))
            if dsn and r.orcpt:
                kind, _, addr = r.orcpt.partition(";")
                params.append(f"ORCPT={kind};{xtext(addr)}")
            rcpt_params.append(" ".join(params))
        addresses = [_address(r.address) for r in recipients]
        result = await client.send_message(
            _address(sender),
            [a for a in addresses if a is not None],
            [message],
            mail_params=" ".join(mail_params),
            rcpt_params=rcpt_params,
            size=len(message),
        )
        remote = f"{hop.name}[{hop.address}]"
        return {
            r.address: Outcome(reply or Reply(451, "4.4.2", "Transaction abandoned"), remote)
            for r, (_, reply) in zip(recipients, result.outcomes(), strict=True)
        }
