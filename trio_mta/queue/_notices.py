"""Which delivery status notifications an attempt calls for, made ready for the spool.

Failures go to the envelope sender for the recipients whose NOTIFY asks for failures (all of
them without NOTIFY), unless a ``bounce`` plugin says OK (or readdresses the report by setting
the transaction's sender, as srs and batv do to undo their rewriting); never to ``<>``: a
failing message from ``<>`` (a bounce, or relayed mail with a null sender) is reported to the
postmaster as a double bounce, and a failing double bounce is logged and dropped.
NOTIFY=SUCCESS gets a "relayed" report (or "delivered", for local delivery).

Delay warnings: a message still pending after ``[queue] delay_warning`` seconds (for recipients
without NOTIFY; off when 0, as Postfix's ``delay_warning_time``) or after that, else
``DELAY_NOTIFY_DEFAULT``, for recipients that asked NOTIFY=DELAY, gets one "delayed" report per
message, checked after each attempt; ``Envelope.delay_warned`` records it, so a restart never
sends it again. Never for NOTIFY=NEVER (or a NOTIFY without DELAY), never to ``<>``, never
about our own reports; the ``bounce`` hook may readdress or suppress it, as a failure report.

A message sent with VERP has one return path per recipient, so its notices go per recipient
to the address that recipient's copy was sent from (``Envelope.return_path``), as Postfix does
by default: the list software learns from the address alone whom a bounce is about. The
``bounce`` hook runs once per notice, with that address as the transaction's sender.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import attrs

from ..config import Config
from ..hooks import Action, Connection, DeliveryReport, HookRunner
from ._attempt import outbound_connection
from ._dsn import DsnAction, build_dsn
from ._records import Envelope, Kind, Recipient

log = logging.getLogger("trio_mta.queue")

Notice = tuple[Envelope, bytes]
DELAY_NOTIFY_DEFAULT = 4 * 3600.0  # NOTIFY=DELAY with delay_warning = 0 (Postfix's usual 4h)


class Notices:
    def __init__(
        self,
        config: Config,
        *,
        ids: Callable[[], str],
        now: Callable[[], float],
        runner: Callable[[], HookRunner | None],
    ) -> None:
        self.hostname = config.server.hostname
        self.bounces = config.queue.bounces
        self.postmaster = config.queue.postmaster or f"postmaster@{self.hostname}"
        self.delay_warning = config.queue.delay_warning
        self.give_up = config.queue.give_up
        self.ids = ids
        self.now = now
        self.runner = runner

    def delay_due(self, r: Recipient) -> float | None:
        """Seconds after arrival at which ``r`` (pending) is reported delayed; None: never."""
        if not r.notify:
            return self.delay_warning or None
        if "DELAY" in r.notify:
            return self.delay_warning or DELAY_NOTIFY_DEFAULT
        return None

    async def for_delay(self, env: Envelope, message: bytes) -> tuple[bool, list[Notice]]:
        """Whether ``env``'s warning is due now (at most once per message, ever), and the
        "delayed" reports it makes. The ``bounce`` hook runs for it as for a failure report:
        srs and batv readdress it, an OK suppresses it (due all the same: decided)."""
        if env.delay_warned or env.sender is None or env.kind is not Kind.MESSAGE:
            return False, []
        age = self.now() - env.created
        late = [r for r in env.pending if (due := self.delay_due(r)) is not None and age >= due]
        notices: list[Notice] = []
        for return_path, group in _by_return_path(env, late).items():
            suppressed, to = await self._bounce_hook(attrs.evolve(env, sender=return_path), group)
            if suppressed or to is None:
                continue
            rows = [(r, DsnAction.DELAYED) for r in group]
            notices.append(self.make(env, rows, message, to, Kind.BOUNCE))
        if notices:
            log.info("queue: %s delayed %.0fs: warning sent to the sender", env.id, age)
        return bool(late), notices

    async def for_attempt(
        self,
        env: Envelope,
        failed: list[Recipient],
        delivered: list[Recipient],
        message: bytes,
    ) -> list[Notice]:
        notices: list[Notice] = []
        if failed and self.bounces:
            for return_path, group in _by_return_path(env, failed).items():
                notices += await self._failures(
                    attrs.evolve(env, sender=return_path), group, message
                )
        successes = [r for r in delivered if r.notify and r.wants("SUCCESS")]
        if successes and env.sender is not None and env.kind is Kind.MESSAGE:
            for return_path, group in _by_return_path(env, successes).items():
                rows = [
                    (r, DsnAction.DELIVERED if r.remote == "local" else DsnAction.RELAYED)
                    for r in group
                ]
                to = return_path if return_path is not None else env.sender
                notices.append(self.make(env, rows, message, to, Kind.BOUNCE))
        return notices

    async def _failures(
        self, env: Envelope, failed: list[Recipient], message: bytes
    ) -> list[Notice]:
        """The failure notice for ``failed``, which share the return path ``env.sender``."""
        suppressed, to = await self._bounce_hook(env, failed)
        if suppressed:
            return []
        if env.kind is Kind.DOUBLE_BOUNCE:
            log.error("queue: %s: double bounce to the postmaster failed; dropped", env.id)
            return []
        if to is None:  # never a bounce to <>: the postmaster hears of it
            rows = [(r, DsnAction.FAILED) for r in failed]
            return [self.make(env, rows, message, self.postmaster, Kind.DOUBLE_BOUNCE)]
        wanted = [(r, DsnAction.FAILED) for r in failed if r.wants("FAILURE")]
        return [self.make(env, wanted, message, to, Kind.BOUNCE)] if wanted else []

    async def _bounce_hook(
        self, env: Envelope, recipients: list[Recipient]
    ) -> tuple[bool, str | None]:
        """Whether a ``bounce`` plugin suppressed our report about ``recipients`` (OK), and
        where it goes: ``env.sender``, or where a plugin readdressed it."""
        runner = self.runner()
        if runner is None or not runner.has("bounce"):
            return False, env.sender
        addresses = tuple(r.address for r in recipients)
        report = DeliveryReport(env.id, recipients[0].domain, addresses)
        conn = outbound_connection(env, None)
        result, plugin = await runner.run("bounce", conn, report)
        if result.action is Action.OK:
            log.info("queue: %s bounce suppressed by plugin %s", env.id, plugin)
            return True, None
        return False, _readdressed(env, conn)

    def make(
        self,
        env: Envelope,
        recipients: list[tuple[Recipient, DsnAction]],
        message: bytes,
        to: str,
        kind: Kind,
    ) -> Notice:
        id = self.ids()
        now = self.now()
        data = build_dsn(
            env,
            recipients,
            message,
            hostname=self.hostname,
            to=to,
            message_id=id,
            now=datetime.fromtimestamp(now, tz=UTC),
            retry_until=datetime.fromtimestamp(env.created + self.give_up, tz=UTC),
        )
        notice = Envelope(
            id=id,
            sender=None,
            recipients=(Recipient(to),),
            created=now,
            next_attempt=now,
            kind=kind,
            smtputf8=env.smtputf8,
            size=len(data),
        )
        return notice, data


def _by_return_path(
    env: Envelope, recipients: list[Recipient]
) -> dict[str | None, list[Recipient]]:
    """``recipients`` by the envelope sender their copies carried: all under ``env.sender``,
    or, with VERP, each under its own."""
    groups: dict[str | None, list[Recipient]] = {}
    for r in recipients:
        groups.setdefault(env.return_path(r.address), []).append(r)
    return groups


def _readdressed(env: Envelope, conn: Connection) -> str | None:
    """Where the failure report goes: the envelope sender, unless a ``bounce`` plugin set the
    transaction's sender to another address (srs and batv undo their own rewriting of the
    sender, so our bounce goes straight to the original sender). A null sender stays null."""
    txn = conn.transaction
    if env.sender is None or txn is None or txn.sender is None:
        return env.sender
    to = str(txn.sender)
    if to != env.sender:
        log.info("queue: %s bounce readdressed from <%s> to <%s>", env.id, env.sender, to)
    return to
