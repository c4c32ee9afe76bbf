"""The ``SessionHandler`` that runs plugin hooks: SMTP steps in, hook chains, replies out.

One instance per connection, bound to the plugin generation that was current when the
connection arrived (a SIGHUP reload never changes the plugins under a live session).

Decisions follow Haraka where it is sound: a recipient nobody said OK to is refused unless the
client may relay; a message nobody queued gets 451; a ``data_headers_end`` denial is remembered
and answered when the data ends (SMTP has no way to answer in the middle of DATA).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..hooks import (
    Action,
    Connection,
    Credentials,
    HookRunner,
    Message,
    OutboundQueue,
    Result,
    reply_for,
)
from ..protocol import Helo, MailFrom, RcptTo, Reply, Unrecognized, reply
from ..protocol import replies as R
from ._memguard import CONNECT_REFUSED, MAIL_REFUSED, MemoryGuard

RELAY_DENIED = reply(550, "5.7.1", "Relaying denied")
NOT_QUEUED = reply(451, "4.3.0", "Queueing declined or disabled, try again later")
AUTH_OK = reply(235, "2.7.0", "Authentication successful")
AUTH_UNAVAILABLE = reply(454, "4.7.0", "Temporary authentication failure")
QUEUE_FAILED = reply(451, "4.3.0", "Queueing failed, try again later")
log = logging.getLogger("trio_mta.queue")


class HookHandler:
    def __init__(
        self,
        runner: HookRunner,
        *,
        spill_dir: Path | None = None,
        queue: OutboundQueue | None = None,
        guard: MemoryGuard | None = None,
    ) -> None:
        self.runner = runner
        self.guard = guard  # [limits] memory_soft_mb: refuse connections and mail while over
        self.spill_dir = spill_dir
        # The built-in outbound queue: takes relayed mail that no queue_outbound plugin took.
        self.queue = queue
        self._headers_pending = runner.has("data_headers_end")
        self._early_verdict: tuple[Reply, str | None] | None = None
        # The plugin whose verdict the last reply was (None: a built-in rule). The driver
        # clears it before each step and names it when it logs a refusal.
        self.decided_by: str | None = None

    def _verdict(self, conn: Connection, hook: str, result: Result, plugin: str | None) -> Reply:
        if result.action.disconnects:
            conn.close_requested = True
        self.decided_by = plugin
        return reply_for(hook, result)

    def _takes_xverp(self, conn: Connection) -> bool:
        """XVERP only where the built-in queue delivers the client's mail: it is the queue
        that sends one transaction per recipient. Postfix likewise offers it only to
        ``smtpd_authorized_verp_clients``."""
        return self.queue is not None and conn.relaying

    async def capabilities(self, conn: Connection) -> list[str]:
        caps: list[str] = ["DSN"] if self.queue is not None else []
        if self._takes_xverp(conn):
            caps.append("XVERP")
        if self.runner.has("capabilities"):
            await self.runner.run_all("capabilities", conn, caps)
        return caps

    async def connect(self, conn: Connection) -> Reply | None:
        if self.guard is not None and self.guard.over:
            conn.close_requested = True
            return CONNECT_REFUSED
        await self.runner.run_all("connect_init", conn)
        result, plugin = await self.runner.run("connect", conn)
        if result.action.is_denial:
            conn.close_requested = True
            self.decided_by = plugin
            return reply_for("connect", result)
        return None

    async def helo(self, conn: Connection, event: Helo) -> Reply | None:
        hook = "ehlo" if event.extended else "helo"
        result, plugin = await self.runner.run(hook, conn, event.name)
        if result.action.is_denial:
            return self._verdict(conn, hook, result, plugin)
        return None

    def auth_mechanisms(self, conn: Connection) -> frozenset[str]:
        entries = self.runner.plugins.table.get("auth", ())
        if not entries:
            return frozenset()
        return frozenset.intersection(*(frozenset(e.plugin.auth_mechanisms) for e in entries))

    async def auth(self, conn: Connection, credentials: Credentials) -> Reply:
        """OK accepts (always 235, which is what authenticates); a soft refusal, a timeout or a
        plugin error is 454 4.7.0 (RFC 4954); a hard one, or nobody's OK, 535 5.7.8."""
        result, plugin = await self.runner.run("auth", conn, credentials)
        if result.action is Action.OK:
            return AUTH_OK
        self.decided_by = plugin  # None when nobody said OK: a built-in 535
        if result.action.disconnects:
            conn.close_requested = True
        if result.action in (Action.DENYSOFT, Action.DENYSOFTDISCONNECT):
            return Reply(454, "4.7.0", result.message or AUTH_UNAVAILABLE.text)
        return reply_for("auth", result if result.action.is_denial else Result(Action.DENY))

    async def mail(self, conn: Connection, event: MailFrom) -> Reply:
        if self.guard is not None and self.guard.over:
            return MAIL_REFUSED
        if event.params.verp is not None and not self._takes_xverp(conn):
            return R.XVERP_NOT_ALLOWED
        result, plugin = await self.runner.run("mail", conn, event.sender, event.params)
        if result.action.is_denial:
            return self._verdict(conn, "mail", result, plugin)
        if result.action is Action.OK and result.message:
            return reply_for("mail", result)
        return R.SENDER_OK

    async def rcpt(self, conn: Connection, event: RcptTo) -> Reply:
        result, plugin = await self.runner.run("rcpt", conn, event.recipient, event.params)
        if result.action.is_denial:
            return self._verdict(conn, "rcpt", result, plugin)
        if result.action is Action.CONT and not conn.relaying:
            return RELAY_DENIED
        ok, plugin = await self.runner.run("rcpt_ok", conn, event.recipient)
        if ok.action.is_denial:
            return self._verdict(conn, "rcpt_ok", ok, plugin)
        if result.action is Action.OK and result.message:
            return reply_for("rcpt", result)
        return R.RECIPIENT_OK

    async def data(self, conn: Connection) -> Reply:
        result, plugin = await self.runner.run("data", conn)
        if result.action.is_denial:
            return self._verdict(conn, "data", result, plugin)
        txn = conn.transaction
        assert txn is not None
        txn.message = Message(spill_dir=self.spill_dir)
        self._early_verdict = None
        self._headers_pending = self.runner.has("data_headers_end")
        return R.START_DATA

    async def data_chunk(self, conn: Connection, data: bytes) -> None:
        txn = conn.transaction
        assert txn is not None
        assert txn.message is not None
        message = txn.message
        message.write(data)
        if self._headers_pending and message.headers_complete:
            self._headers_pending = False
            result, plugin = await self.runner.run("data_headers_end", conn)
            if result.action.is_denial:
                verdict = self._verdict(conn, "data_headers_end", result, plugin)
                self._early_verdict = (verdict, plugin)

    async def message(self, conn: Connection) -> Reply:
        txn = conn.transaction
        assert txn is not None
        assert txn.message is not None
        if self._early_verdict is not None:
            verdict, self.decided_by = self._early_verdict
            return verdict
        if self._headers_pending:
            # The message ended inside its header section: the hook still gets its say.
            self._headers_pending = False
            result, plugin = await self.runner.run("data_headers_end", conn)
            if result.action.is_denial:
                return self._verdict(conn, "data_headers_end", result, plugin)
        result, plugin = await self.runner.run("data_post", conn)
        if result.action.is_denial:
            return self._verdict(conn, "data_post", result, plugin)
        hook = "queue_outbound" if conn.relaying or txn.relaying else "queue"
        result, plugin = await self.runner.run(hook, conn)
        if result.action.is_denial:
            return self._verdict(conn, hook, result, plugin)
        queued_as = txn.id
        if result.action is Action.CONT and hook == "queue_outbound" and self.queue is not None:
            try:
                queued_as = await self.queue.submit(conn)
            except Exception:  # the spool's failure: this message's 451, not the session's end
                log.exception(
                    "conn=%s txn=%s: the queue could not take the message", conn.id, txn.id
                )
                return QUEUE_FAILED
            result = Result(Action.OK)
        elif result.action is not Action.OK:
            return NOT_QUEUED
        answer = reply_for(hook, result, f"Message queued as {queued_as}")
        await self.runner.run_all("queue_ok", conn, answer)
        return answer

    async def unrecognized(self, conn: Connection, event: Unrecognized) -> Reply:
        result, plugin = await self.runner.run("unrecognized_command", conn, event.verb, event.line)
        if result.action is Action.CONT:
            return R.UNRECOGNIZED
        return self._verdict(conn, "unrecognized_command", result, plugin)

    async def reset(self, conn: Connection) -> None:
        txn = conn.transaction
        await self.runner.run_all("reset_transaction", conn)
        if txn is not None and txn.message is not None:
            txn.message.close()

    async def disconnect(self, conn: Connection) -> None:
        txn = conn.transaction
        if txn is not None and txn.message is not None:
            txn.message.close()
        await self.runner.run_all("disconnect", conn)

    def watch_blocking(self, on_block: Callable[[], None], on_unblock: Callable[[], None]) -> None:
        self.runner.on_block = on_block
        self.runner.on_unblock = on_unblock
