"""Events from the SMTP side: what the driver, the plugin runner and the loop watchdog publish.

The driver calls these at every step; each bumps the bus's plain counters (for /metrics) and
publishes an event only when ``bus.active`` (a watcher is connected), so an unwatched daemon
publishes none, except ``transaction.end`` while the bus retains events for replay. The
frequent ones are deferred (``bus.defer``): the SMTP path stores a function and its immutable
arguments; the function (``_mail``, ``_rcpt``…) returns the event's field values in the
class's declaration order, computed in the batch of the first subscriber that wants that
kind; a watcher forwarding JSON encodes those values without building the event object.

Plugin calls are reported through the runner's ``observe`` callback, which the ``PluginHost``
installs only while someone watches (or plugin metrics are on): the runner then times each
call, which it otherwise skips.

The plugin observer learns which session a call belongs to from ``CURRENT_SESSION``, which the
driver sets in its own task (each connection is a task, so the variable is per connection).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence

from ..events import (
    AuthAttempted,
    ConnectionClosed,
    ConnectionOpened,
    EventBus,
    HeloReceived,
    LoopBlocked,
    MailReceived,
    PluginBreaker,
    PluginCalled,
    PluginMoved,
    RcptReceived,
    TlsStarted,
    TransactionEnded,
)
from ..hooks import BreakerChange, HookCall, SlowStep, log_slow_step
from ..protocol import Address, Helo, RcptTo, Reply
from ._session import Session

CURRENT_SESSION: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "trio_mta_current_session", default=None
)


def reply_text(reply: Reply) -> str:
    """The first line of a reply with its enhanced code: ``2.1.0 Sender OK``."""
    first = reply.text[0] if reply.text else ""
    return f"{reply.enhanced} {first}" if reply.enhanced else first


def connection_opened(bus: EventBus, s: Session) -> None:
    bus.counters.connection_opened(s.listener)
    if not bus.active:
        return
    bus.defer(
        ConnectionOpened,
        _opened,
        (bus.clock(), s.id, s.client_ip, s.client_port, s.listener, s.local_ip, s.local_port),
    )


def _opened(
    ts: float, conn: str, ip: str, port: int, listener: str, local_ip: str, local_port: int
) -> tuple[object, ...]:
    # The values of ConnectionOpened's fields, in their declaration order (txn is None).
    return (ts, conn, None, ip, port, listener, local_ip, local_port)


def tls_started(bus: EventBus, s: Session) -> None:
    if not bus.active:
        return
    bus.publish(
        TlsStarted(
            ts=bus.clock(), conn=s.id, ip=s.client_ip, version=s.tls_version, cipher=s.tls_cipher
        )
    )


def auth_attempted(bus: EventBus, s: Session, mechanism: str | None, answer: Reply) -> None:
    """An AUTH exchange ended (not a 334 challenge). Never carries credentials; the user only
    when it succeeded."""
    if not bus.active:
        return
    success = answer.code == 235
    bus.publish(
        AuthAttempted(
            ts=bus.clock(),
            conn=s.id,
            ip=s.client_ip,
            mechanism=mechanism,
            success=success,
            code=answer.code,
            user=s.auth_user if success else None,
        )
    )


def helo_received(bus: EventBus, s: Session, event: Helo, answer: Reply) -> None:
    if not bus.active:
        return
    bus.defer(HeloReceived, _helo, (bus.clock(), s.id, s.client_ip, event, answer))


def _helo(ts: float, conn: str, ip: str, event: Helo, answer: Reply) -> tuple[object, ...]:
    return (ts, conn, None, ip, event.name, event.extended, answer.code, reply_text(answer))


def mail_received(bus: EventBus, s: Session, answer: Reply) -> None:
    txn = s.transaction
    if txn is None or not bus.active:
        return
    bus.defer(MailReceived, _mail, (bus.clock(), s.id, txn.id, s.client_ip, txn.sender, answer))


def _mail(
    ts: float, conn: str, txn: str, ip: str, sender: Address | None, answer: Reply
) -> tuple[object, ...]:
    return (ts, conn, txn, ip, str(sender or ""), answer.code, reply_text(answer))


def rcpt_received(bus: EventBus, s: Session, event: RcptTo, answer: Reply) -> None:
    if not bus.active:
        return
    txn = s.transaction
    bus.defer(
        RcptReceived,
        _rcpt,
        (
            bus.clock(),
            s.id,
            txn.id if txn is not None else None,
            s.client_ip,
            txn.sender if txn is not None else None,
            event.recipient,
            answer,
        ),
    )


def _rcpt(
    ts: float,
    conn: str,
    txn: str | None,
    ip: str,
    sender: Address | None,
    recipient: Address,
    answer: Reply,
) -> tuple[object, ...]:
    return (ts, conn, txn, ip, str(sender or ""), str(recipient), answer.code,
            reply_text(answer))  # fmt: skip


def transaction_ended(
    bus: EventBus,
    s: Session,
    outcome: str,
    answer: Reply | None,
    detail: str,
    duration: float,
    refused: tuple[str, ...] = (),
) -> None:
    txn = s.transaction
    if txn is None:
        return
    size = txn.notes.get("size", 0)
    size = size if isinstance(size, int) else 0
    bus.counters.transaction_ended(outcome, size)
    if not (bus.active or bus.retain):  # kept for replay even unwatched: one per transaction
        return
    reply = reply_text(answer) if answer is not None else _why(outcome, detail)
    # Values now, not deferred: this one is published unwatched too (for replay), and its
    # arguments would keep the transaction's addresses alive while the ring holds it.
    bus.publish_values(
        TransactionEnded,
        _ended(bus.clock(), s.id, txn.id, s.client_ip, s.helo, txn.sender, txn.recipients,
               size, outcome, answer.code if answer is not None else None, reply, duration,
               refused),
    )  # fmt: skip


def _ended(
    ts: float,
    conn: str,
    txn: str,
    ip: str,
    helo: str | None,
    sender: Address | None,
    recipients: Sequence[tuple[Address, object]],
    size: int,
    outcome: str,
    code: int | None,
    reply: str,
    duration: float,
    refused: tuple[str, ...],
) -> tuple[object, ...]:
    return (ts, conn, txn, ip, helo, str(sender or ""),
            tuple(str(address) for address, _ in recipients), size, outcome, code, reply,
            txn if outcome == "accepted" else None, duration, refused)  # fmt: skip


def _why(outcome: str, detail: str) -> str:
    # A reset (RSET, HELO, STARTTLS) happens on a live connection: the driver's detail is
    # then only its default close reason, which says nothing.
    return "reset by the client" if outcome == "reset" else detail


def connection_closed(bus: EventBus, s: Session, reason: str, duration: float) -> None:
    bus.counters.connection_closed(reason)
    if not bus.active:
        return
    bus.defer(
        ConnectionClosed,
        _closed,
        (bus.clock(), s.id, s.client_ip, reason, duration, s.transactions),
    )


def _closed(
    ts: float, conn: str, ip: str, reason: str, duration: float, transactions: int
) -> tuple[object, ...]:
    return (ts, conn, None, ip, reason, duration, transactions)


def plugin_observer(bus: EventBus) -> Callable[[HookCall], None]:
    """The runner's ``observe`` callback: one ``plugin.call`` event per plugin call."""
    get_session = CURRENT_SESSION.get

    def observe(call: HookCall) -> None:
        s = get_session()
        txn = s.transaction if s is not None else None
        bus.defer(
            PluginCalled,
            _plugin_called,
            (
                bus.clock(),
                s.id if s is not None else None,
                txn.id if txn is not None else None,
                s.client_ip if s is not None else None,
                call,
            ),
        )

    return observe


def _plugin_called(
    ts: float, conn: str | None, txn: str | None, ip: str | None, call: HookCall
) -> tuple[object, ...]:
    return (ts, conn, txn, ip, call.plugin, call.hook, call.action.value, call.duration,
            call.timed_out, call.error)  # fmt: skip


def slow_step_reporter(bus: EventBus) -> Callable[[SlowStep], None]:
    """The loop watchdog's report: logged as before, and a ``plugin.watchdog`` event."""

    def report(step: SlowStep) -> None:
        log_slow_step(step)
        bus.publish(  # rare: always published (metrics count them)
            LoopBlocked(
                ts=bus.clock(),
                duration=step.duration,
                task=step.task,
                plugin=step.plugin,
                hook=step.hook,
            )
        )

    return report


def breaker_reporter(bus: EventBus) -> Callable[[BreakerChange], None]:
    """A circuit breaker's move (logged by the runner's health record): a ``plugin.breaker``
    event, always published (rare; the metrics count them)."""

    def report(change: BreakerChange) -> None:
        bus.publish(
            PluginBreaker(
                ts=bus.clock(),
                plugin=change.plugin,
                hook=change.hook,
                state=change.state.value,
                reason=change.reason,
            )
        )

    return report


def moved_reporter(bus: EventBus) -> Callable[[str, tuple[str, ...], str, str], None]:
    """The watchdog's strikes moved a plugin to the sandbox or tripped it: ``plugin.moved``."""

    def report(plugin: str, hooks: tuple[str, ...], why: str, to: str) -> None:
        bus.publish(PluginMoved(ts=bus.clock(), plugin=plugin, hooks=hooks, why=why, to=to))

    return report
