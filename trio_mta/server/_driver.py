"""The Trio driver of one inbound SMTP connection.

Theory of operation
-------------------
The driver pumps bytes between a ``Transport`` and the sans-I/O ``ServerConnection`` and asks its
``SessionHandler`` what to answer. It holds no SMTP rules of its own beyond deadlines and limits.

Deadlines: the whole connection runs inside one cancel scope whose deadline is re-armed before
every read, to the earliest of the phase deadline (banner, command, data block), the DATA-total
deadline while a message is being read, and the session cap. The banner and command deadlines
are fixed per line (from the greeting, or from our previous reply, to the line's CRLF), so bytes
that trickle in do not extend them; the data-block one is per read. One scope re-armed is
cheaper than a scope per read, and the phase recorded when arming names the one that fired: the
client gets ``421 4.4.2`` naming it, then the connection is closed.

Pipelining (RFC 2920): replies accumulate in one buffer and are written only when the parser
needs more input, so a pipelined group is answered with one write.

Shutdown: the server sets ``closing``; an idle connection (no transaction) is woken and told
``421 4.3.2``; one inside a transaction finishes it first. If the drain deadline passes, the
nursery is cancelled and each connection still says 421 on its way out.
"""

from __future__ import annotations

import logging
import math
import time

import trio

from ..config import Config
from ..events import EventBus
from ..protocol import (
    NEED_DATA,
    Address,
    Auth,
    AuthResponse,
    BdatCommand,
    ConnectionClosed,
    DataChunk,
    DataCommand,
    EndOfChunk,
    EndOfData,
    Event,
    Expn,
    Helo,
    Help,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Rejected,
    Reply,
    Rset,
    ServerConnection,
    StartTLS,
    State,
    Unrecognized,
    Vrfy,
    reply,
)
from ..protocol import replies as R
from . import _observe as observe
from ._auth import AuthFailures, ConnectionAuth
from ._exempt import Exemptions
from ._handler import SessionHandler
from ._hangup import HangupSweep
from ._received import received_header
from ._refusals import CONNECT, TOO_MANY_ERRORS, refusal_for, session_refused
from ._session import IdGenerator, Session, Transaction
from ._tls import TlsHandshakeError, TlsProvider, close_tls, forget_plaintext, handshake
from ._transport import Transport

log = logging.getLogger("trio_mta.smtp")
txlog = logging.getLogger("trio_mta.transaction")

FINAL_WRITE = 2.0  # seconds allowed for a last 421 to a client that may not be reading
NOT_IMPLEMENTED = reply(502, "5.5.1", "Command not implemented")
TLS_UNAVAILABLE = reply(454, "4.7.0", "TLS not available")  # RFC 3207 §4


# Why a transaction ended without its message, for its end line (the close reason otherwise).
_ABORTED = {
    "quit": "client quit before sending the message",
    "client closed": "client closed the connection before sending the message",
}


class Phase:
    BANNER = "banner"
    COMMAND = "command"
    DATA = "data"
    DATA_TOTAL = "data total"
    SESSION = "session"
    TLS = "tls handshake"


class ConnectionDriver:
    # One per connection, thousands held idle: slots keep each one small.
    __slots__ = (
        "_auth_mechanism",
        "_banner_deadline",
        "_bdat_refusal",
        "_blocked",
        "_command_deadline",
        "_data_deadline",
        "_handshaking",
        "_implicit_tls",
        "_refused_rcpts",
        "_seen_command",
        "_session_deadline",
        "_t_block",
        "_t_command",
        "_watch_scope",
        "_watching",
        "auth",
        "bus",
        "close_reason",
        "closing",
        "config",
        "conn",
        "errors",
        "handler",
        "hangups",
        "hung_up",
        "idle",
        "ids",
        "nursery",
        "out",
        "phase",
        "scope",
        "session",
        "tls",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        session: Session,
        config: Config,
        handler: SessionHandler,
        ids: IdGenerator,
        conn: ServerConnection,
        *,
        is_closing: trio.Event,
        nursery: trio.Nursery | None = None,
        hangups: HangupSweep | None = None,
        tls: TlsProvider | None = None,
        implicit_tls: bool = False,
        auth_failures: AuthFailures | None = None,
        bus: EventBus | None = None,
    ) -> None:
        # Events for watchers (built only while someone watches) and counters for /metrics.
        self.bus = bus if bus is not None else EventBus()
        self._auth_mechanism: str | None = None
        self.transport = transport
        self.nursery = nursery
        self.hangups = hangups  # None: a hang-up is noticed only when the plugin call returns
        self.hung_up = False
        self._blocked = 0
        self._watching = False
        self._watch_scope: trio.CancelScope | None = None
        if nursery is not None and hangups is not None:
            handler.watch_blocking(self._on_block, self._on_unblock)
        self.session = session
        self.config = config
        self.handler = handler
        self.ids = ids
        self.conn = conn
        # Failed AUTH attempts are counted per server (across connections) when it passes
        # its tracker; a driver on its own counts only its own.
        if auth_failures is None:
            exempt = Exemptions(config.limits.exempt_networks)
            auth_failures = AuthFailures(config.auth, exempt=exempt)
        failures = auth_failures
        self.auth = ConnectionAuth(session, config, handler, failures, conn)
        self.closing = is_closing
        self.scope = trio.CancelScope()
        self.idle = False
        self.phase = Phase.BANNER
        self.out: list[bytes] = []
        self.errors = 0
        self.close_reason = "quit"
        t = config.timeouts
        self._t_command = t.command
        self._t_block = t.data_block
        self._session_deadline = trio.current_time() + t.session
        self._data_deadline = math.inf
        # Unset (inf) until the first read after a reply: the clock for the next command line.
        self._command_deadline = math.inf
        self._banner_deadline = trio.current_time() + t.banner
        self._seen_command = False
        # Recipients refused in the current transaction, with the reply (for its end line).
        self._refused_rcpts: list[tuple[Address, Reply]] = []
        # A refusal of the first BDAT chunk is answered at the chunk's end (RFC 3030 §3).
        self._bdat_refusal: Reply | None = None
        self.tls = tls  # None: STARTTLS is not offered (454)
        self._implicit_tls = implicit_tls
        self._handshaking = False

    # -- deadlines ------------------------------------------------------------------------------

    def _arm(self) -> None:
        now = trio.current_time()
        conn = self.conn
        if conn.state is State.DATA or conn.state is State.BDAT:
            phase, deadline = Phase.DATA, now + self._t_block
            if self._data_deadline < deadline:
                phase, deadline = Phase.DATA_TOTAL, self._data_deadline
        elif self._seen_command:
            # One deadline for the whole line, from our last reply to its CRLF: re-arming it
            # per read would let a client that trickles a byte at a time hold its slot until
            # the session cap.
            if self._command_deadline == math.inf:
                self._command_deadline = now + self._t_command
            phase, deadline = Phase.COMMAND, self._command_deadline
        else:
            phase, deadline = Phase.BANNER, self._banner_deadline
        if self._session_deadline < deadline:
            phase, deadline = Phase.SESSION, self._session_deadline
        self.phase = phase
        self.scope.deadline = deadline

    # -- hang-up while a plugin blocks ----------------------------------------------------------

    def _on_block(self) -> None:
        self._blocked += 1
        if self._blocked == 1 and self.hangups is not None and not self.hung_up:
            self.hangups.blocked(self)

    def _on_unblock(self) -> None:
        self._blocked -= 1
        if self._blocked == 0:
            if self.hangups is not None:
                self.hangups.unblocked(self)
            if self._watch_scope is not None:
                self._watch_scope.cancel()

    def watch_hangup(self) -> None:
        """Called by the server's sweep once a plugin call has blocked for a while."""
        if self._blocked and not self._watching and not self.hung_up and self.nursery is not None:
            self._watching = True
            self.nursery.start_soon(self._watch_hangup)

    async def _watch_hangup(self) -> None:
        """While a plugin call blocks (once it has for the sweep's grace), a client that hangs
        up cancels the session at once (the chain with it); the cleanup hooks still run.
        Pipelined input ends the watch: a client that is still talking has not hung up."""
        try:
            with trio.CancelScope() as self._watch_scope:
                if self._blocked:
                    await self.transport.wait_input()
                    if self.transport.at_eof():
                        self.hung_up = True
                        self.scope.cancel()
        finally:
            self._watch_scope = None
            self._watching = False

    def wake_for_shutdown(self) -> None:
        """Called by the server on shutdown: an idle connection stops waiting at once."""
        if self.idle:
            self.scope.cancel()

    # -- main loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        opened = trio.current_time()
        observe.CURRENT_SESSION.set(self.session)  # names the session in plugin events
        observe.connection_opened(self.bus, self.session)
        try:
            with self.scope:
                self.scope.deadline = self._banner_deadline
                await self._serve()
            if self.scope.cancelled_caught:
                if self.hung_up:
                    self.close_reason = "client hung up"
                    log.info(
                        "conn=%s ip=%s hung up during a plugin call",
                        self.session.id,
                        self.session.client_ip,
                    )
                elif self.closing.is_set() and self.idle:
                    self.close_reason = "shutdown"
                    await self._final(R.reply(421, "4.3.2", self._text("Service shutting down")))
                else:
                    self.close_reason = f"timeout ({self.phase})"
                    log.info(
                        "conn=%s ip=%s timeout phase=%s",
                        self.session.id,
                        self.session.client_ip,
                        self.phase,
                    )
                    await self._final(
                        R.reply(421, "4.4.2", self._text(f"Timeout ({self.phase}), closing"))
                    )
            if self.session.tls_version is not None and not self.hung_up:
                # close_notify after the last reply: the client sees a clean end of TLS.
                with trio.move_on_after(FINAL_WRITE):
                    await close_tls(self.transport)
        except trio.Cancelled:
            self.close_reason = "shutdown"
            with trio.CancelScope(shield=True):
                await self._final(R.reply(421, "4.3.2", self._text("Service shutting down")))
            raise
        except Exception as exc:
            self.close_reason = f"error ({type(exc).__name__})"
            raise
        finally:
            if self._watch_scope is not None:
                self._watch_scope.cancel()
            # Cleanup hooks run even when the connection is being cancelled, under their own
            # bounded deadline.
            with trio.move_on_after(self.config.plugins.cleanup_timeout, shield=True):
                if self.session.transaction is not None:
                    await self._end_transaction("aborted", None)
                await self.handler.disconnect(self.session)
            duration = trio.current_time() - opened
            observe.connection_closed(self.bus, self.session, self.close_reason, duration)

    def _text(self, text: str) -> str:
        return f"{self.config.server.hostname} {text}"

    async def _final(self, last: Reply) -> None:
        if self._handshaking:  # the client expects TLS records now, not a reply
            return
        self.out.append(self.conn.send(last))
        with trio.move_on_after(FINAL_WRITE):
            await self._flush()

    async def _flush(self) -> None:
        if self.out:
            data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
            self.out.clear()
            try:
                await self.transport.send_all(data)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                self.conn.receive_data(b"")
                self.close_reason = "send failed"

    async def _greet(self) -> bool:
        delay = self.config.timeouts.greeting_delay
        early = False
        if delay > 0:
            with trio.move_on_after(delay):
                await self.transport.wait_input()
                early = True
        refused = None if early else await self.handler.connect(self.session)
        # Checked after the connect hooks too: a plugin that pauses there (early_talker,
        # tarpit) extends the window in which a client that talks first is caught.
        if early or (refused is None and self.transport.has_pending_input()):
            self.close_reason = "early talker"
            answer = R.reply(554, "5.5.0", self._text("Protocol error: talked first"))
            session_refused(self.bus, self.session, None, CONNECT, answer, None)
            self.out.append(self.conn.send(answer))
            await self._flush()
            return False
        if refused is not None:
            self.close_reason = f"refused {refused.code}"
            session_refused(self.bus, self.session, None, CONNECT, refused, self.handler.decided_by)
            self.out.append(self.conn.send(refused))
            await self._flush()
            return False
        banner = f"{self.config.server.hostname} {self.config.server.banner}"
        self.out.append(self.conn.send(R.reply(220, None, banner)))
        return True

    async def _serve(self) -> None:
        if self._implicit_tls and not await self._start_tls():
            return
        if not await self._greet():
            return
        conn = self.conn
        max_errors = self.config.limits.max_unrecognized_commands
        while True:
            ev = conn.next_event()
            if ev is not NEED_DATA:
                self._command_deadline = math.inf  # a line is complete: the next one is timed anew
            if ev is NEED_DATA:
                await self._flush()
                if self.closing.is_set() and not conn.in_transaction:
                    self.close_reason = "shutdown"
                    await self._final(R.reply(421, "4.3.2", self._text("Service shutting down")))
                    return
                self._arm()
                self.idle = not conn.in_transaction
                data = await self.transport.receive()
                self.idle = False
                conn.receive_data(data)
                continue
            if isinstance(ev, DataChunk):
                if self.session.transaction is not None and self._bdat_refusal is None:
                    await self.handler.data_chunk(self.session, ev.data)
                continue
            if isinstance(ev, ConnectionClosed):
                if self.close_reason == "quit":
                    self.close_reason = "client closed"
                await self._flush()
                return
            if isinstance(ev, BdatCommand):
                if self._data_deadline == math.inf:
                    refusal = await self._start_data()
                    if refusal is not None:
                        self._bdat_refusal = refusal
                continue
            if self.phase is Phase.COMMAND:
                # Answering gets the command budget again, as when the deadline was re-armed
                # per read: a line that came in late must not leave its plugins no time.
                self.scope.deadline = min(
                    trio.current_time() + self._t_command, self._session_deadline
                )
            self._seen_command = True
            txn = self.session.transaction  # refusing the end of the data ends it
            self.handler.decided_by = None
            answer = await self._dispatch(ev)
            if answer.code >= 400:
                self._refused(ev, txn, answer)
            # A transient refusal (452 for recipients past the limit) is flow control the
            # client is told to retry later, not a bad command (Postfix's recipient overshoot).
            if isinstance(ev, Unrecognized) or (isinstance(ev, Rejected) and answer.code >= 500):
                self.errors += 1
                if self.errors > max_errors:
                    self.close_reason = "too many errors"
                    self.out.append(conn.send(answer))
                    last = R.reply(421, "4.7.0", self._text("Too many errors"))
                    session_refused(self.bus, self.session, None, TOO_MANY_ERRORS, last, None)
                    await self._final(last)
                    return
            self.out.append(conn.send(answer))
            if conn.state is State.TLS_PENDING and not await self._start_tls():
                return
            if isinstance(ev, Quit) or answer.code == 421 or self.session.close_requested:
                self.close_reason = "quit" if isinstance(ev, Quit) else f"closed by {answer}"
                await self._flush()
                return

    def _refused(self, ev: Event, txn: Transaction | None, answer: Reply) -> None:
        what = refusal_for(ev, txn)
        if what is None:
            return
        if isinstance(ev, RcptTo) and txn is not None:
            self._refused_rcpts.append((ev.recipient, answer))
        session_refused(self.bus, self.session, txn, what, answer, self.handler.decided_by)

    # -- TLS ------------------------------------------------------------------------------------

    async def _start_tls(self) -> bool:
        """After STARTTLS's 220 (or at once, for implicit TLS): forget the plaintext session,
        drop whatever the client pipelined behind STARTTLS unread, and shake hands under the
        tls_handshake deadline. False: the connection is to be closed (already logged)."""
        session = self.session
        assert self.tls is not None
        if self.conn.state is State.TLS_PENDING:
            if session.transaction is not None:
                await self._end_transaction("reset", None)
            await self._flush()
            if self.close_reason == "send failed":
                return False
            forget_plaintext(self.conn, session)
        self._handshaking = True
        self.phase = Phase.TLS
        self.scope.deadline = min(
            trio.current_time() + self.config.timeouts.tls_handshake, self._session_deadline
        )
        try:
            self.transport, session.tls_version, session.tls_cipher = await handshake(
                self.transport, self.tls.context
            )
        except TlsHandshakeError as exc:
            self.close_reason = "tls handshake failed"
            log.info("conn=%s ip=%s TLS handshake failed: %s", session.id, session.client_ip, exc)
            return False
        self._handshaking = False
        log.debug("conn=%s tls=%s cipher=%s", session.id, session.tls_version, session.tls_cipher)
        observe.tls_started(self.bus, session)
        return True

    # -- dispatch -------------------------------------------------------------------------------

    async def _dispatch(self, ev: Event) -> Reply:
        session = self.session
        handler = self.handler
        if isinstance(ev, MailFrom):
            return await self._mail(ev)
        if isinstance(ev, RcptTo):
            answer = await handler.rcpt(session, ev)
            if answer.code < 400 and session.transaction is not None:
                session.transaction.recipients.append((ev.recipient, ev.params))
            observe.rcpt_received(self.bus, session, ev, answer)
            return answer
        if isinstance(ev, DataCommand):
            refusal = await self._start_data()
            return refusal if refusal is not None else R.START_DATA
        if isinstance(ev, EndOfData):
            return await self._end_of_data(ev)
        if isinstance(ev, EndOfChunk):
            refusal = self._bdat_refusal or ev.problem
            if refusal is not None:
                await self._end_transaction("refused", refusal)
                self._bdat_refusal = None
                return refusal
            return reply(250, "2.0.0", f"{ev.size} octets received")
        if isinstance(ev, Helo):
            return await self._helo(ev)
        if isinstance(ev, Rset):
            await self._end_transaction("reset", None)
            return R.RESET_OK
        if isinstance(ev, Noop):
            return R.NOOP_OK
        if isinstance(ev, Quit):
            return R.reply(221, "2.0.0", self._text("closing connection"))
        if isinstance(ev, Rejected):
            return ev.reply
        if isinstance(ev, Unrecognized):
            return await handler.unrecognized(session, ev)
        if isinstance(ev, Vrfy):
            return R.VRFY_CANNOT
        if isinstance(ev, Expn):
            return R.EXPN_DISABLED
        if isinstance(ev, Help):
            return R.HELP
        if isinstance(ev, Auth):
            self._auth_mechanism = ev.mechanism
            return self._auth_event(await self.auth.start(ev))
        if isinstance(ev, AuthResponse):
            return self._auth_event(await self.auth.respond(ev))
        if isinstance(ev, StartTLS):
            return R.READY_TLS if self.tls is not None else TLS_UNAVAILABLE
        if isinstance(ev, StartTLS | Auth | AuthResponse):
            return NOT_IMPLEMENTED
        raise AssertionError(f"unhandled event {ev!r}")

    async def _ehlo_lines(self) -> list[str]:
        limits = self.config.limits
        lines = [
            "PIPELINING",
            f"SIZE {limits.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
        ]
        if self.tls is not None and not self.conn.tls:
            lines.append("STARTTLS")
        lines.extend(self.auth.ehlo_keywords())
        lines.extend(await self.handler.capabilities(self.session))
        return lines

    def _auth_event(self, answer: Reply) -> Reply:
        if answer.code != 334:  # 334: the exchange goes on
            observe.auth_attempted(self.bus, self.session, self._auth_mechanism, answer)
        return answer

    async def _helo(self, ev: Helo) -> Reply:
        answer = await self._helo_reply(ev)
        observe.helo_received(self.bus, self.session, ev, answer)
        return answer

    async def _helo_reply(self, ev: Helo) -> Reply:
        session = self.session
        if session.transaction is not None:
            await self._end_transaction("reset", None)
        answer = await self.handler.helo(session, ev)
        if answer is not None and answer.code >= 400:
            return answer
        session.helo = ev.name
        session.extended = ev.extended
        greeting = f"{self.config.server.hostname} Hello {ev.name} [{session.client_ip}]"
        if ev.extended:
            return Reply(250, None, (greeting, *(await self._ehlo_lines())))
        return Reply(250, None, (greeting,))

    async def _mail(self, ev: MailFrom) -> Reply:
        session = self.session
        session.transaction = Transaction(
            id=self.ids(), sender=ev.sender, mail_params=ev.params, started=time.monotonic()
        )
        self._refused_rcpts.clear()
        refusal = self.auth.mail_refusal(ev.sender)  # submission policy, sender ownership
        answer = refusal if refusal is not None else await self.handler.mail(session, ev)
        observe.mail_received(self.bus, session, answer)
        if answer.code >= 400:
            self._log_transaction("refused", str(answer))
            session.transaction = None
        return answer

    async def _start_data(self) -> Reply | None:
        self._data_deadline = trio.current_time() + self.config.timeouts.data_total
        answer = await self.handler.data(self.session)
        if answer.code != 354:
            # Not started: a later BDAT must ask the handler again, not find the data phase
            # already open (it would bypass this refusal).
            self._data_deadline = math.inf
            return answer
        return None

    async def _end_of_data(self, ev: EndOfData) -> Reply:
        txn = self.session.transaction
        refusal = self._bdat_refusal or ev.problem
        self._bdat_refusal = None
        if txn is None:
            # A BDAT LAST out of sequence: the protocol layer already decided.
            assert refusal is not None
            return refusal
        if refusal is not None:
            await self._end_transaction("refused", refusal)
            return refusal
        if self.config.server.received_header:
            txn.trace_header = received_header(
                self.session, self.config.server.hostname, now=time.time()
            )
        txn.notes["size"] = ev.size
        # The queue hooks have deadlines of their own; the one armed for reading the data no
        # longer applies. Cutting the connection now could drop the reply to a message already
        # stored (the client would send it again). Only the session cap still stands.
        self.phase = Phase.SESSION
        self.scope.deadline = self._session_deadline
        try:
            answer = await self.handler.message(self.session)
        except Exception:
            log.exception("conn=%s delivery failed", self.session.id)
            answer = R.reply(451, "4.3.0", "Temporary failure storing the message")
        await self._end_transaction("accepted" if answer.code < 300 else "refused", answer)
        return answer

    async def _end_transaction(self, outcome: str, answer: Reply | None) -> None:
        self._data_deadline = math.inf
        session = self.session
        if session.transaction is None:
            return
        if answer is not None:
            detail = str(answer)
        elif outcome == "aborted" and not session.transaction.recipients and self._refused_rcpts:
            # Nothing was ever accepted: the transaction was refused, whatever the client
            # did next (QUIT, hang up). Its end names the refusal, not the QUIT.
            outcome, detail = "refused", f"every recipient refused: {self._refused_rcpts[-1][1]}"
        else:
            detail = _ABORTED.get(self.close_reason, self.close_reason)
        self._log_transaction(outcome, detail, answer)
        # The reset hooks still see the transaction that is ending.
        await self.handler.reset(session)
        session.transaction = None
        session.transactions += 1

    def _log_transaction(self, outcome: str, detail: str, answer: Reply | None = None) -> None:
        txn = self.session.transaction
        refused = tuple(str(a) for a, _ in self._refused_rcpts)
        self._refused_rcpts.clear()
        if txn is not None:
            duration = time.monotonic() - txn.started
            observe.transaction_ended(
                self.bus, self.session, outcome, answer, detail, duration, refused
            )
        if txn is None or not self.config.log.transaction_log:
            return
        s = self.session
        txlog.info(
            "txn=%s conn=%s ip=%s helo=%s from=<%s> rcpts=%s refused=%s size=%s outcome=%s"
            " reply=%r duration_ms=%.1f",
            txn.id,
            s.id,
            s.client_ip,
            s.helo,
            txn.sender or "",
            ",".join(f"<{a}>" for a, _ in txn.recipients),
            ",".join(f"<{a}>" for a in refused),
            txn.notes.get("size", 0),
            outcome,
            detail,
            (time.monotonic() - txn.started) * 1000,
        )
