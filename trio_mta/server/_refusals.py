"""Every refusal, once: one greppable log line and a ``transaction.refused`` event.

A refusal is a 4xx/5xx reply to HELO/EHLO, AUTH, MAIL, RCPT, DATA (or BDAT) or to the end of
the message, or a connection refused before or at the greeting. The line is modelled on
Postfix's ``NOQUEUE: reject: RCPT from ...``, what operators grep for::

    <txn|NOQUEUE>: reject: RCPT from [192.0.2.7]: 550 5.7.1 Relaying denied;
        from=<a@example.org> to=<b@elsewhere.example> helo=<client.example> plugin=core conn=...

(one line). ``plugin`` names the plugin whose verdict it was (its deadline's 451 included), or
``core`` for the server's own rules: protocol syntax and sequence, relaying denied, limits,
AUTH policy.
"""

from __future__ import annotations

import logging

import attrs

from ..events import EventBus, TransactionRefused
from ..protocol import (
    Address,
    Auth,
    AuthResponse,
    DataCommand,
    EndOfChunk,
    EndOfData,
    Event,
    Helo,
    MailFrom,
    RcptTo,
    Rejected,
    Reply,
)
from ._observe import reply_text
from ._session import Session, Transaction

log = logging.getLogger("trio_mta.reject")

CORE = "core"


@attrs.frozen
class Refusal:
    """What was refused: the stage (the event's), the SMTP step as Postfix names it in its
    line (``RCPT``, ``END-OF-MESSAGE``...), and the addresses involved."""

    stage: str
    step: str
    sender: Address | None = None
    has_sender: bool = False  # False: before MAIL, or MAIL could not be parsed
    recipients: tuple[Address, ...] = ()
    helo: str | None = None  # the name given, when HELO/EHLO itself is refused


def report(
    bus: EventBus,
    *,
    conn: str | None,
    txn: str | None,
    ip: str,
    helo: str | None,
    what: Refusal,
    answer: Reply,
    plugin: str | None,
) -> None:
    decider = plugin or CORE
    sender = ("" if what.sender is None else str(what.sender)) if what.has_sender else None
    # from= and to= only when known: "from=<>" is the null sender, never "not yet given".
    envelope = "" if sender is None else f" from=<{sender}>"
    if what.recipients:
        envelope += " to=" + ",".join(f"<{r}>" for r in what.recipients)
    name = what.helo or helo
    log.info(
        "%s: reject: %s from [%s]: %s;%s%s plugin=%s conn=%s",
        txn or "NOQUEUE",
        what.step,
        ip,
        answer,
        envelope,
        "" if name is None else f" helo=<{name}>",
        decider,
        conn or "-",
    )
    # Rare next to the rest (at most one per command) and what an operator watches for:
    # kept for replay like transaction.end, so the page's refusal chart has a history.
    if not (bus.active or bus.retain):
        return
    rcpt = str(what.recipients[0]) if what.stage == "rcpt" and what.recipients else None
    bus.publish(
        TransactionRefused(
            ts=bus.clock(),
            conn=conn,
            txn=txn,
            ip=ip,
            stage=what.stage,
            sender=sender,
            recipient=rcpt,
            code=answer.code,
            reply=reply_text(answer),
            plugin=decider,
        )
    )


def session_refused(
    bus: EventBus,
    s: Session,
    txn: Transaction | None,
    what: Refusal,
    answer: Reply,
    plugin: str | None,
) -> None:
    """``report`` for a live session; ``txn`` is the transaction the refused step belonged
    to (taken before the step: refusing the end of the data ends it)."""
    report(
        bus,
        conn=s.id,
        txn=txn.id if txn is not None else None,
        ip=s.client_ip,
        helo=s.helo,
        what=what,
        answer=answer,
        plugin=plugin,
    )


# Connection-level refusals: at connect (the limits, an early talker, a connect hook's
# verdict), and the close after too many bad commands.
CONNECT = Refusal("connect", "CONNECT")
TOO_MANY_ERRORS = Refusal("connect", "COMMAND")

# The stage of a command the protocol layer refused itself (syntax, sequence, limits).
_VERB_STAGE = {
    "HELO": "helo",
    "EHLO": "helo",
    "AUTH": "auth",
    "MAIL": "mail",
    "RCPT": "rcpt",
    "DATA": "data",
    "BDAT": "data",
}


def refusal_for(ev: Event, txn: Transaction | None) -> Refusal | None:
    """What a refusing reply to ``ev`` refused; None for steps that are not logged as
    refusals (an unknown command, NOOP, VRFY, STARTTLS: the error count covers those).
    ``txn`` is the transaction before the step."""
    sender = txn.sender if txn is not None else None
    has_sender = txn is not None
    accepted = tuple(a for a, _ in txn.recipients) if txn is not None else ()
    if isinstance(ev, RcptTo):
        return Refusal("rcpt", "RCPT", sender, has_sender, (ev.recipient,))
    if isinstance(ev, MailFrom):
        return Refusal("mail", "MAIL", ev.sender, True)
    if isinstance(ev, Helo):
        return Refusal("helo", "EHLO" if ev.extended else "HELO", helo=ev.name)
    if isinstance(ev, Auth | AuthResponse):
        return Refusal("auth", "AUTH")
    if isinstance(ev, DataCommand):
        return Refusal("data", "DATA", sender, has_sender, accepted)
    if isinstance(ev, EndOfData | EndOfChunk):
        step = "END-OF-MESSAGE" if isinstance(ev, EndOfData) else "BDAT"
        return Refusal("data", step, sender, has_sender, accepted)
    if isinstance(ev, Rejected):
        stage = _VERB_STAGE.get(ev.command)
        if stage is None:
            return None
        return Refusal(stage, ev.command, sender, has_sender, accepted if stage == "data" else ())
    return None
